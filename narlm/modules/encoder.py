"""BERT encoder and vocabulary output head for NAG-BERT (Flax linen).

NAG-BERT (Su et al., 2021) reads the source with a BERT encoder and predicts
output token ``i`` from hidden state ``i``; a CRF (``narlm.modules.crf``) sits
on top of the vocabulary logits produced here.

The architecture is exactly Hugging Face's ``BertModel`` (post-LayerNorm,
absolute positions, token types, exact-erf GELU) so that checkpoints load with
``narlm.hf_bert.load_hf_bert`` and reproduce ``transformers`` to ~1e-5.

Every parameter is created with ``flax.linen.partitioning.param_with_axes`` so
its logical axis names land in the ``params_axes`` collection (read by t5x's
partitioner); activations are constrained with logical names (no-ops without
axis rules / a mesh). Parameter tree of ``BertWithHead`` (``D`` hidden size,
``H`` heads, ``Dh`` head dim, ``F`` MLP size, ``V`` vocab, ``P`` max positions,
``T`` token types)::

  encoder/
    embeddings/
      word_embeddings/embedding        [V, D]     ('vocab', 'embed')
      position_embeddings/embedding    [P, D]     ('length', 'embed')
      token_type_embeddings/embedding  [T, D]     ('type_vocab', 'embed')
      layer_norm/{scale,bias}          [D]        ('embed',)
    layers_{i}/                        i = 0 .. num_layers-1
      attention/{query,key,value}/kernel [D, H*Dh]  ('embed', 'joined_kv')
      attention/{query,key,value}/bias   [H*Dh]     ('joined_kv',)
      attention/out/kernel             [H*Dh, D]  ('joined_kv', 'embed')
      attention/out/bias               [D]        ('embed',)
      attention_layer_norm/{scale,bias} [D]       ('embed',)
      mlp/wi/kernel [D, F] ('embed', 'mlp');  mlp/wi/bias [F] ('mlp',)
      mlp/wo/kernel [F, D] ('mlp', 'embed');  mlp/wo/bias [D] ('embed',)
      mlp_layer_norm/{scale,bias}      [D]        ('embed',)
  head/
    transform/kernel [D, D] ('embed', 'mlp');  transform/bias [D] ('mlp',)
    layer_norm/{scale,bias}            [D]        ('embed',)
    output_bias                        [V]        ('vocab',)
    output_kernel                      [D, V]     ('embed', 'vocab')  untied only

Naming choices: q/k/v use a single joined ``H*Dh`` axis (``joined_kv``) so
Hugging Face ``Linear`` weights map by a plain transpose; the position table
uses ``length`` (DESIGN.md); the MLM transform's square kernel uses two
*different* names (``embed``, ``mlp``) so its two dimensions can never be
mapped onto the same mesh axis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

# The building blocks live in layers.py and attention.py; re-exported here,
# where the rest of narlm (and older code) imports them from.
from narlm.modules.attention import MultiHeadAttention  # noqa: E402,F401
from narlm.modules.layers import (Array, DType, Dense, Embed, Initializer,  # noqa: E402,F401
                                  LayerNorm, param_with_axes, with_sharding_constraint)

# Hugging Face `hidden_act` names we reproduce exactly.
_ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    # HF 'gelu' is the exact erf form, not the tanh approximation.
    'gelu': functools.partial(nn.gelu, approximate=False),
    'gelu_new': functools.partial(nn.gelu, approximate=True),
    'gelu_pytorch_tanh': functools.partial(nn.gelu, approximate=True),
    'relu': nn.relu,
}


def _canonical_dtype(x: DType) -> str:
  """'bfloat16' / jnp.bfloat16 / np.dtype -> 'bfloat16' (hashable, gin-friendly)."""
  try:
    return jnp.dtype(x).name
  except TypeError as e:
    raise ValueError(f'Unknown dtype {x!r}.') from e


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

# Named sizes: (num_layers, hidden_size, num_heads, intermediate_size).
SIZES: Mapping[str, Mapping[str, int]] = {
    'tiny': dict(num_layers=2, hidden_size=64, num_heads=2,
                 intermediate_size=256),
    # 'mini': the CPU-sized pretraining experiment (BENCHMARKS.md, "Does
    # pretraining help?"): 4 layers, d = 256.
    'mini': dict(num_layers=4, hidden_size=256, num_heads=4,
                 intermediate_size=1024),
    'small': dict(num_layers=4, hidden_size=512, num_heads=8,
                  intermediate_size=2048),
    'base': dict(num_layers=12, hidden_size=768, num_heads=12,
                 intermediate_size=3072),
    'large': dict(num_layers=24, hidden_size=1024, num_heads=16,
                  intermediate_size=4096),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of the BERT encoder and its output head.

  ``dtype`` is the compute dtype (activations, matmuls); ``param_dtype`` the
  storage dtype of parameters. Both accept a name ('float32', 'bfloat16') or a
  jnp dtype and are stored as the canonical name. Softmax, LayerNorm
  statistics and the output logits are always computed in float32.
  """
  vocab_size: int
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  head_dim: Optional[int] = None  # default hidden_size // num_heads
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  hidden_act: str = 'gelu'
  initializer_range: float = 0.02
  dtype: DType = 'float32'
  param_dtype: DType = 'float32'
  tie_output_embeddings: bool = True
  pad_id: int = 0

  def __post_init__(self):
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                 'intermediate_size', 'max_position_embeddings',
                 'type_vocab_size'):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'BertConfig.{name} must be a positive int, '
                         f'got {value!r}.')
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(
            f'hidden_size={self.hidden_size} is not divisible by '
            f'num_heads={self.num_heads}; pass head_dim explicitly.')
      object.__setattr__(self, 'head_dim', self.hidden_size // self.num_heads)
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f'Unsupported hidden_act {self.hidden_act!r}; '
                       f'supported: {sorted(_ACTIVATIONS)}.')
    for name in ('hidden_dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'BertConfig.{name} must be in [0, 1), '
                         f'got {getattr(self, name)!r}.')
    object.__setattr__(self, 'dtype', _canonical_dtype(self.dtype))
    object.__setattr__(self, 'param_dtype', _canonical_dtype(self.param_dtype))

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **overrides) -> 'BertConfig':
    return dataclasses.replace(self, **overrides)

  # Named sizes.
  @classmethod
  def from_size(cls, size: str, vocab_size: int, **overrides) -> 'BertConfig':
    if size not in SIZES:
      raise ValueError(f'Unknown BERT size {size!r}; known: {sorted(SIZES)}.')
    return cls(vocab_size=vocab_size, **{**SIZES[size], **overrides})

  @classmethod
  def tiny(cls, vocab_size: int, **overrides) -> 'BertConfig':
    return cls.from_size('tiny', vocab_size, **overrides)

  @classmethod
  def small(cls, vocab_size: int, **overrides) -> 'BertConfig':
    return cls.from_size('small', vocab_size, **overrides)

  @classmethod
  def base(cls, vocab_size: int, **overrides) -> 'BertConfig':
    return cls.from_size('base', vocab_size, **overrides)

  @classmethod
  def large(cls, vocab_size: int, **overrides) -> 'BertConfig':
    return cls.from_size('large', vocab_size, **overrides)

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **overrides) -> 'BertConfig':
    """Builds a config from a Hugging Face BERT ``config.json`` dict.

    ``overrides`` (e.g. ``dtype='bfloat16'``, ``hidden_dropout=0.0``) take
    precedence over the checkpoint's values.
    """
    model_type = hf.get('model_type', 'bert')
    if model_type != 'bert':
      # RoBERTa & co. offset their positions by pad_id + 1: not BERT.
      raise ValueError(f'Expected a BERT config (model_type "bert"), got '
                       f'model_type={model_type!r}.')
    pos_type = hf.get('position_embedding_type', 'absolute')
    if pos_type != 'absolute':
      raise ValueError(f'Only absolute position embeddings are supported, '
                       f'got position_embedding_type={pos_type!r}.')
    if hf.get('is_decoder', False) or hf.get('add_cross_attention', False):
      raise ValueError('Decoder / cross-attention BERT configs are not '
                       'supported.')
    kwargs = dict(
        vocab_size=hf['vocab_size'],
        hidden_size=hf['hidden_size'],
        num_layers=hf['num_hidden_layers'],
        num_heads=hf['num_attention_heads'],
        intermediate_size=hf['intermediate_size'],
        max_position_embeddings=hf.get('max_position_embeddings', 512),
        type_vocab_size=hf.get('type_vocab_size', 2),
        layer_norm_eps=hf.get('layer_norm_eps', 1e-12),
        hidden_dropout=hf.get('hidden_dropout_prob', 0.1),
        attention_dropout=hf.get('attention_probs_dropout_prob', 0.1),
        hidden_act=hf.get('hidden_act', 'gelu'),
        initializer_range=hf.get('initializer_range', 0.02),
        tie_output_embeddings=hf.get('tie_word_embeddings', True),
        pad_id=hf.get('pad_token_id', 0) or 0,
    )
    if hf.get('head_dim') is not None:
      kwargs['head_dim'] = hf['head_dim']
    kwargs.update(overrides)
    return cls(**kwargs)


def bert_config(size: str, vocab_size: int, **overrides) -> BertConfig:
  """``BertConfig`` of a named size ('tiny', 'mini', 'small', 'base', 'large')."""
  return BertConfig.from_size(size, vocab_size, **overrides)


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
  """Word + absolute position + token-type embeddings, LayerNorm, dropout."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    embed = functools.partial(
        Embed, features=cfg.hidden_size, dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype, embedding_init=init)
    self.word_embeddings = embed(cfg.vocab_size, axes=('vocab', 'embed'))
    self.position_embeddings = embed(cfg.max_position_embeddings,
                                     axes=('length', 'embed'))
    self.token_type_embeddings = embed(cfg.type_vocab_size,
                                       axes=('type_vocab', 'embed'))
    self.layer_norm = LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype,
                                cfg.params_dtype)
    self.dropout = nn.Dropout(cfg.hidden_dropout)

  def __call__(self, input_tokens: Array, token_type_ids: Array,
               deterministic: bool, positions: Optional[Array] = None) -> Array:
    """int [B, L], int [B, L] (, int [B, L] positions; default 0..L-1) -> [B, L, D]."""
    if positions is None:
      positions = jnp.arange(input_tokens.shape[1])[None, :]
    # Sum in float32 (it is cheap) so bf16 compute only rounds once, in LN.
    x = (self.word_embeddings(input_tokens).astype(jnp.float32)
         + self.position_embeddings(positions).astype(jnp.float32)
         + self.token_type_embeddings(token_type_ids).astype(jnp.float32))
    x = self.layer_norm(x)
    x = self.dropout(x, deterministic=deterministic)
    return with_sharding_constraint(x, ('batch', 'length', 'embed'))


class BertMlp(nn.Module):
  """``wo(act(wi(x)))`` with biases; ``act`` is ``config.hidden_act``."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, L, D] -> [B, L, D]."""
    cfg = self.config
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    h = Dense(cfg.intermediate_size, ('embed', 'mlp'), cfg.compute_dtype,
              cfg.params_dtype, init, name='wi')(x)
    h = _ACTIVATIONS[cfg.hidden_act](h)
    h = with_sharding_constraint(h, ('batch', 'length', 'mlp'))
    return Dense(cfg.hidden_size, ('mlp', 'embed'), cfg.compute_dtype,
                 cfg.params_dtype, init, name='wo')(h)


class BertLayer(nn.Module):
  """Post-LN transformer layer: LN(x + Attn(x)), then LN(x + MLP(x))."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, key_mask: Array, deterministic: bool,
               prefix_kv: Optional[Tuple[Array, Array]] = None,
               return_kv: bool = False):
    """[B, L, D], bool mask -> [B, L, D] (see MultiHeadAttention.self_attend for the
    mask, `prefix_kv` and `return_kv`, which adds the layer's own keys and
    values to the result)."""
    cfg = self.config
    layer_norm = functools.partial(LayerNorm, cfg.layer_norm_eps,
                                   cfg.compute_dtype, cfg.params_dtype)
    y = MultiHeadAttention(cfg, name='attention').self_attend(
        x, key_mask, deterministic, prefix_kv, return_kv)
    if return_kv:
      y, own_kv = y
    y = nn.Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)
    x = layer_norm(name='attention_layer_norm')(x + y)
    y = BertMlp(cfg, name='mlp')(x)
    y = nn.Dropout(cfg.hidden_dropout)(y, deterministic=deterministic)
    x = layer_norm(name='mlp_layer_norm')(x + y)
    x = with_sharding_constraint(x, ('batch', 'length', 'embed'))
    return (x, own_kv) if return_kv else x


# --------------------------------------------------------------------------
# Public modules
# --------------------------------------------------------------------------


class BertEncoder(nn.Module):
  """BERT encoder: embeddings followed by ``num_layers`` post-LN layers."""
  config: BertConfig

  def setup(self):
    self.embeddings = BertEmbeddings(self.config)
    self.layers = [BertLayer(self.config, name=f'layers_{i}')
                   for i in range(self.config.num_layers)]

  def __call__(self,
               input_tokens: Array,
               *,
               attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """Encodes a batch.

    Args:
      input_tokens: int [B, L] token ids.
      attention_mask: bool [B, L], True for *keys* that may be attended.
        Queries run at every position (padded positions still get a hidden
        state, which NAG-BERT uses to generate targets longer than the
        source). Default: ``input_tokens != pad_id``.
      token_type_ids: int [B, L] segment ids; default all 0.
      deterministic: if False, dropout is active (needs a 'dropout' rng).

    Returns:
      [B, L, D] hidden states in ``config.dtype``.
    """
    cfg = self.config
    input_tokens = jnp.asarray(input_tokens)
    if input_tokens.ndim != 2:
      raise ValueError(f'input_tokens must have shape [batch, length], got '
                       f'shape {input_tokens.shape}.')
    if not jnp.issubdtype(input_tokens.dtype, jnp.integer):
      raise ValueError(f'input_tokens must be integer ids, got dtype '
                       f'{input_tokens.dtype}.')
    length = input_tokens.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(
          f'Sequence length {length} exceeds max_position_embeddings='
          f'{cfg.max_position_embeddings}; truncate inputs or use a config '
          f'with more positions.')
    if attention_mask is None:
      attention_mask = input_tokens != cfg.pad_id
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != input_tokens.shape:
      raise ValueError(f'attention_mask shape {attention_mask.shape} != '
                       f'input_tokens shape {input_tokens.shape}.')
    attention_mask = attention_mask.astype(bool)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_tokens)
    token_type_ids = jnp.asarray(token_type_ids)
    if token_type_ids.shape != input_tokens.shape:
      raise ValueError(f'token_type_ids shape {token_type_ids.shape} != '
                       f'input_tokens shape {input_tokens.shape}.')

    x = self.embeddings(input_tokens, token_type_ids, deterministic)
    for layer in self.layers:
      x = layer(x, attention_mask, deterministic)
    return x


class OutputHead(nn.Module):
  """BERT MLM head: dense + act + LN, then projection onto the vocabulary.

  The projection is the word-embedding matrix (passed in) when
  ``config.tie_output_embeddings``, otherwise an own ``output_kernel``
  ``[D, V]`` ('embed', 'vocab'). A ``[V]`` ``output_bias`` ('vocab',) is
  always added.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, hidden: Array,
               embedding: Optional[Array] = None,
               output_ids: Optional[Array] = None,
               gathered: bool = False) -> Array:
    """Vocabulary logits.

    Args:
      hidden: [B, L, D] encoder hidden states.
      embedding: [V, D] word-embedding table; required iff tied.
      output_ids: optional int [V'] vocabulary ids: logits only for these
        (a restricted output vocabulary: the projection's rows / columns and
        the bias are gathered, so the parameters keep their [V] layout).
      gathered: the tied `embedding` is already the [V', D] rows of
        `output_ids` (a decoder that projects several times gathers once).

    Returns:
      float32 [B, L, V] logits ([B, L, V'] with output_ids).
    """
    cfg = self.config
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    x = Dense(cfg.hidden_size, ('embed', 'mlp'), cfg.compute_dtype,
              cfg.params_dtype, init, name='transform')(hidden)
    x = _ACTIVATIONS[cfg.hidden_act](x)
    x = LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.params_dtype,
                  name='layer_norm')(x)
    x = with_sharding_constraint(x, ('batch', 'length', 'embed'))
    if cfg.tie_output_embeddings:
      if embedding is None:
        raise ValueError('tie_output_embeddings=True needs the [vocab, embed] '
                         'word-embedding table.')
      kernel = jnp.asarray(embedding, cfg.compute_dtype)
      if output_ids is not None and not gathered:
        kernel = jnp.take(kernel, output_ids, axis=0)
      # Accumulate in float32: logits feed a softmax / CRF over V classes.
      logits = jnp.einsum('bld,vd->blv', x, kernel,
                          preferred_element_type=jnp.float32)
    else:
      if embedding is not None or gathered:
        raise ValueError('Got an embedding table but tie_output_embeddings '
                         'is False.')
      kernel = param_with_axes('output_kernel', init,
                               (cfg.hidden_size, cfg.vocab_size),
                               cfg.params_dtype, axes=('embed', 'vocab'))
      kernel = jnp.asarray(kernel, cfg.compute_dtype)
      if output_ids is not None:
        kernel = jnp.take(kernel, output_ids, axis=1)
      logits = jnp.einsum('bld,dv->blv', x, kernel,
                          preferred_element_type=jnp.float32)
    bias = param_with_axes('output_bias', nn.initializers.zeros,
                           (cfg.vocab_size,), cfg.params_dtype,
                           axes=('vocab',))
    bias = jnp.asarray(bias, jnp.float32)
    if output_ids is not None:
      bias = jnp.take(bias, output_ids)
    logits = logits.astype(jnp.float32) + bias
    return with_sharding_constraint(logits, ('batch', 'length', 'vocab'))


class BertWithHead(nn.Module):
  """``BertEncoder`` + ``OutputHead``: the NAG-BERT network below the CRF.

  Param tree: ``{'encoder': ..., 'head': ...}`` (see module docstring).
  """
  config: BertConfig

  def setup(self):
    self.encoder = BertEncoder(self.config)
    self.head = OutputHead(self.config)

  def encode(self, input_tokens: Array, *,
             attention_mask: Optional[Array] = None,
             token_type_ids: Optional[Array] = None,
             deterministic: bool = True) -> Array:
    """int [B, L] -> [B, L, D] hidden states (see ``BertEncoder``)."""
    return self.encoder(input_tokens, attention_mask=attention_mask,
                        token_type_ids=token_type_ids,
                        deterministic=deterministic)

  def logits(self, hidden: Array, output_ids: Optional[Array] = None,
             output_rows: Optional[Array] = None) -> Array:
    """[B, L, D] hidden -> float32 [B, L, V] logits ([B, L, V'] for the
    int [V'] `output_ids`). `output_rows`: `self.output_rows(output_ids)`,
    computed once by a caller that projects several times."""
    if output_rows is not None:
      return self.head(hidden, output_rows, output_ids, gathered=True)
    embedding = None
    if self.config.tie_output_embeddings:
      embedding = self.encoder.embeddings.word_embeddings.embedding
    return self.head(hidden, embedding, output_ids)

  def output_rows(self, output_ids: Optional[Array]) -> Optional[Array]:
    """The tied projection's [V', D] rows for `output_ids` (None when there is
    nothing to gather: no restricted vocabulary, or an untied head)."""
    if output_ids is None or not self.config.tie_output_embeddings:
      return None
    table = jnp.asarray(self.encoder.embeddings.word_embeddings.embedding,
                        self.config.compute_dtype)
    return jnp.take(table, output_ids, axis=0)

  def __call__(self, input_tokens: Array, *,
               attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """int [B, L] -> (hidden [B, L, D], float32 logits [B, L, V])."""
    hidden = self.encode(input_tokens, attention_mask=attention_mask,
                         token_type_ids=token_type_ids,
                         deterministic=deterministic)
    return hidden, self.logits(hidden)
