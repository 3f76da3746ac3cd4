"""The autoregressive (AR) baseline of equal size, with NagBertModel's interface.

`ArSeq2SeqNetwork` is the same BERT encoder and output head as NAG-BERT
(`narlm.modules.encoder.BertWithHead`, params under ``bert/``) plus a
left-to-right Transformer decoder (`narlm.modules.decoder`, params under
``decoder/``) that shares the encoder's word embeddings; the decoder's hidden
states go through the BERT output head (tied to the word embeddings by
default), so the logits are computed exactly as NAG-BERT's. Only the decoder
(and no CRF) is extra; ``num_decoder_layers=1`` gives the deep-encoder /
shallow-decoder baseline of Kasai et al. (2021).

`ArSeq2SeqModel` follows the same t5x `BaseModel` duck-typed contract as
`narlm.models.NagBertModel` (constructor, `FEATURE_CONVERTER_CLS`,
`get_initial_variables`, `loss_fn`, `eval_fn`, `predict_batch`,
`predict_batch_with_aux`, `score_batch`, `warm_start_from_hf_bert`), so
`narlm.train` trains it unchanged.

Data and training conventions:

* Features come from `narlm.feature_converters.NarFeatureConverter`:
  ``encoder_input_tokens`` [B, S], ``decoder_target_tokens`` [B, T] =
  ``y_1 … y_m, eos, eos, pad…`` and ``decoder_loss_weights`` [B, T]. Unlike
  NAG-BERT, S and T may differ (the converter makes them equal).
* Decoder inputs are built inside the model, as t5x does: the targets shifted
  right by one with BOS = ``pad_id`` (0) first, so ``y_t`` is predicted from
  ``BOS, y_1 … y_{t-1}``.
* **Only the first eos is trained on**: loss weights after a row's first eos
  are set to 0 (the second eos exists for NAG-BERT's CRF; for an AR model
  "eos after eos" carries no information and would only dilute the
  per-token loss). Targets with a single eos (t5x-style) work the same way.
  The loss is the (label-smoothed) token NLL per trained target token, the
  metrics are clu `Average`s like NagBertModel's.
* Prediction is greedy decoding with a key/value cache inside
  `jax.lax.while_loop` (one new token per step, stops as soon as every row
  has produced eos). Outputs are cut at the first eos like NAG-BERT's.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, MutableMapping, Optional

import clu.metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm import decoding
from narlm import losses
from narlm.model_base import Batch, GeneratorModel, PyTree, check_encoder_input
from narlm.model_metrics import average_metric
from narlm.modules.decoder import TransformerDecoder
from narlm.modules.encoder import BertConfig, BertWithHead


GREEDY_DECODE_METHODS = (None, "greedy", "argmax")


# ------------------------------------------------------------------ network
class ArSeq2SeqNetwork(nn.Module):
  """BERT encoder + Transformer decoder sharing word embeddings and head.

  Attributes:
    config: the BERT configuration (the decoder uses its hidden size, heads,
      MLP size, activation, dropout, dtypes and max positions).
    num_decoder_layers: decoder depth; None = as many as the encoder.

  Param tree: ``{'bert': {'encoder', 'head'}, 'decoder': ...}`` (the ``bert``
  subtree is identical to NagBertNetwork's, so a Hugging Face BERT checkpoint
  loads into it the same way).
  """
  config: BertConfig
  num_decoder_layers: Optional[int] = None

  @property
  def decoder_layers(self) -> int:
    n = self.config.num_layers if self.num_decoder_layers is None else self.num_decoder_layers
    if not isinstance(n, int) or n < 1:
      raise ValueError(f"num_decoder_layers must be a positive int or None, got {n!r}")
    return n

  def setup(self):
    self.bert = BertWithHead(self.config)
    self.decoder = TransformerDecoder(self.config, self.decoder_layers)

  def _word_embedding(self) -> jnp.ndarray:
    return self.bert.encoder.embeddings.word_embeddings.embedding

  def encode(self, encoder_input_tokens: jnp.ndarray, deterministic: bool = True):
    """int [B, S] -> (encoded [B, S, D], encoder_mask bool [B, S])."""
    mask = encoder_input_tokens != self.config.pad_id
    encoded = self.bert.encode(encoder_input_tokens, attention_mask=mask,
                               deterministic=deterministic)
    return encoded, mask

  def decode(self, decoder_input_tokens: jnp.ndarray, encoded: jnp.ndarray,
             encoder_mask: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    """Teacher-forced decoder: int [B, T] -> float32 logits [B, T, V]."""
    hidden = self.decoder(decoder_input_tokens, encoded, encoder_mask,
                          word_embedding=self._word_embedding(),
                          deterministic=deterministic)
    return self.bert.logits(hidden)

  def __call__(self, encoder_input_tokens: jnp.ndarray, decoder_input_tokens: jnp.ndarray,
               deterministic: bool = True) -> jnp.ndarray:
    """int [B, S], int [B, T] -> float32 logits [B, T, V] (teacher forcing)."""
    encoded, mask = self.encode(encoder_input_tokens, deterministic)
    return self.decode(decoder_input_tokens, encoded, mask, deterministic)

  def init_cache(self, encoded: jnp.ndarray, max_length: int) -> PyTree:
    """Decoder key/value cache for up to `max_length` tokens (see decoder.py)."""
    return self.decoder.init_cache(encoded, max_length)

  def decode_step(self, tokens: jnp.ndarray, cache: PyTree, index: jnp.ndarray,
                  encoder_mask: jnp.ndarray):
    """int [B] input tokens at position `index` -> (float32 logits [B, V], cache)."""
    hidden, cache = self.decoder.decode_step(tokens, cache, index, encoder_mask,
                                             word_embedding=self._word_embedding())
    return self.bert.logits(hidden)[:, 0], cache


# -------------------------------------------------------------------- model
def check_batch(batch: Batch, need_targets: bool = True) -> None:
  """Clear errors for a malformed batch (static shapes, so fine under jit)."""
  tokens = check_encoder_input(batch)
  if not need_targets:
    return
  if "decoder_target_tokens" not in batch:
    raise KeyError(f"batch has no 'decoder_target_tokens' (features: {sorted(batch)})")
  targets = batch["decoder_target_tokens"]
  if targets.ndim != 2:
    raise ValueError(f"decoder_target_tokens must be [batch, length], got shape {targets.shape}")
  if targets.shape[0] != tokens.shape[0]:
    raise ValueError(f"decoder_target_tokens batch size {targets.shape[0]} differs from "
                     f"encoder_input_tokens batch size {tokens.shape[0]}")
  weights = batch.get("decoder_loss_weights")
  if weights is not None and weights.shape != targets.shape:
    raise ValueError(f"decoder_loss_weights shape {weights.shape} differs from "
                     f"decoder_target_tokens shape {targets.shape}")


def shift_right(targets: jnp.ndarray, bos_id: int = 0) -> jnp.ndarray:
  """[B, T] targets -> [B, T] decoder inputs: BOS, then targets[:, :-1]."""
  bos = jnp.full(targets.shape[:1] + (1,), bos_id, targets.dtype)
  return jnp.concatenate([bos, targets[:, :-1]], axis=1)


def weights_up_to_first_eos(targets: jnp.ndarray, weights: jnp.ndarray,
                            eos_id: int) -> jnp.ndarray:
  """Zeroes the weights of every position after a row's first eos."""
  is_eos = (targets == eos_id).astype(jnp.int32)
  eos_before = (jnp.cumsum(is_eos, axis=-1) - is_eos) > 0
  return jnp.where(eos_before, 0.0, weights.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("module", "max_length", "pad_id", "bos_id"))
def greedy_decode(module: nn.Module, params: PyTree, encoder_input_tokens: jnp.ndarray,
                  eos_id: jnp.ndarray, *, max_length: int, pad_id: int = 0,
                  bos_id: int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy decoding with the key/value cache, inside `jax.lax.while_loop`.

  The source is encoded once and its cross-attention keys/values are cached;
  each iteration runs the decoder on one new token per row. Rows that
  produced eos keep emitting pad (score unchanged); the loop exits as soon as
  every row is done, or after `max_length` tokens. Jitted with the (hashable)
  network as a static argument and eos as a traced one, so every model
  object with the same network shares one compiled program per shape.

  Args:
    module: the network (ArSeq2SeqNetwork or narlm.prefix_lm.PrefixLmNetwork:
      anything with `encode`, `init_cache` and `decode_step`).
    params: its parameters.
    encoder_input_tokens: int [B, S].
    eos_id: int32 scalar.
    max_length: L, the number of output positions.
    pad_id, bos_id: padding id and the first decoder input.

  Returns:
    (tokens [B, L] int32, eos included, pad after it; scores [B] float32, the
    summed log-probabilities of the chosen tokens up to the first eos).
  """
  encoded, mask = module.apply({"params": params}, encoder_input_tokens,
                               method="encode")
  cache = module.apply({"params": params}, encoded, max_length,
                       method="init_cache")
  batch = encoder_input_tokens.shape[0]
  state = (jnp.zeros((), jnp.int32), jnp.full((batch,), bos_id, jnp.int32), cache,
           jnp.full((batch, max_length), pad_id, jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.float32))

  def cond(state):
    i, _, _, _, done, _ = state
    return (i < max_length) & ~jnp.all(done)

  def body(state):
    i, last, cache, tokens, done, scores = state
    logits, cache = module.apply({"params": params}, last, cache, i, mask,
                                 method="decode_step")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    best_lp = jnp.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0]
    scores = scores + jnp.where(done, 0.0, best_lp)
    new = jnp.where(done, pad_id, best)
    tokens = jax.lax.dynamic_update_slice(tokens, new[:, None], (jnp.int32(0), i))
    done = done | (best == eos_id)
    return i + 1, new, cache, tokens, done, scores

  _, _, _, tokens, _, scores = jax.lax.while_loop(cond, body, state)
  return tokens, scores


class ArSeq2SeqModel(GeneratorModel):
  """Autoregressive encoder-decoder with NagBertModel's (t5x BaseModel) interface.

  Attributes:
    module: the `ArSeq2SeqNetwork`.
    input_vocabulary / output_vocabulary: seqio vocabularies (usually equal).
    optimizer_def: whatever the trainer optimises with (an optax
      GradientTransformation for narlm's trainer).
    label_smoothing: epsilon of the token NLL (as in narlm.losses.token_nll).
  """

  NETWORK_CLS = ArSeq2SeqNetwork

  def __init__(self, module: ArSeq2SeqNetwork, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, label_smoothing: float = 0.0,
               init_decoder_from_encoder: bool = False,
               loss_normalizing_factor: Optional[float] = None):
    if not isinstance(module, self.NETWORK_CLS):
      raise TypeError(f"module must be a {self.NETWORK_CLS.__name__}, got {type(module).__name__}")
    if isinstance(module, ArSeq2SeqNetwork):
      module.decoder_layers  # pylint: disable=pointless-statement  (validates the depth)
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     why_eos="AR decoding stops at eos",
                     loss_normalizing_factor=loss_normalizing_factor)
    self.label_smoothing = label_smoothing
    self.init_decoder_from_encoder = init_decoder_from_encoder
    if self.eos_id == self.pad_id:
      raise ValueError(f"eos_id and pad_id must differ (pad is also BOS), both are {self.pad_id}")
    if self.pad_id != module.config.pad_id:
      raise ValueError(f"vocabulary pad id {self.pad_id} != BertConfig.pad_id "
                       f"{module.config.pad_id}")
    # BOS = pad, as in t5x (decoder inputs are the targets shifted right).
    self.bos_id = self.pad_id

  # ------------------------------------------------------------------ init
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    """Returns {'params': ..., 'params_axes': ...}.

    `input_shapes` needs 'encoder_input_tokens' [B, S]; 'decoder_target_tokens'
    (default: the same shape) only sets the length of the dummy init pass.
    """
    del input_types
    return self.init_variables(rng, input_shapes, with_targets=True)

  # ------------------------------------------------------------------ loss
  def _targets_and_weights(self, batch: Batch):
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets != self.pad_id).astype(jnp.float32)
    return targets, weights_up_to_first_eos(targets, weights, self.eos_id)

  def _logits(self, params, batch, targets, dropout_rng=None):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             shift_right(targets, self.bos_id),
                             deterministic=dropout_rng is None, rngs=rngs)

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> tuple[jnp.ndarray, MutableMapping[str, Any]]:
    """Loss per trained target token and clu metrics (t5x's signature)."""
    check_batch(batch)
    targets, weights = self._targets_and_weights(batch)
    logits = self._logits(params, batch, targets, dropout_rng)
    num_tokens = weights.sum()
    denom = jnp.maximum(num_tokens, 1.0)
    loss = (losses.token_nll(logits, targets, weights, self.label_smoothing).sum()
            / self.loss_normalizer(num_tokens))
    metrics = {
        "loss": average_metric(loss),
        "token_accuracy": average_metric(((jnp.argmax(logits, -1) == targets) * weights).sum(), denom),
        "num_tokens": clu_metrics.Average(total=num_tokens, count=jnp.float32(1.0)),
    }
    if self.label_smoothing:
      metrics["token_nll"] = average_metric(losses.token_nll(logits, targets, weights).sum() / denom)
    else:
      metrics["token_nll"] = average_metric(loss)
    return loss, metrics

  # ------------------------------------------------------------- inference
  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                             *, max_decode_length: Optional[int] = None,
                             decode_method: Optional[str] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False,
                             **unused_kwargs) -> tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """Greedy left-to-right decoding with a key/value cache.

    Args:
      params: model parameters.
      batch: needs 'encoder_input_tokens' [B, S].
      rng: unused (greedy decoding is deterministic); kept for t5x.
      max_decode_length: number of output positions L (default S, the
        NarFeatureConverter's row length); at most max_position_embeddings.
      decode_method: None, 'greedy' or 'argmax' (the same thing for an AR
        model); anything else is an error.
      return_all_decodes, num_decodes, prompt_with_targets: t5x arguments;
        greedy decoding yields one decode and is not prompted.

    Returns:
      tokens [B, L] int32 cut at the first eos (the eos and the tail are
      pad), and aux {'scores': [B] sum of the log-probabilities of the
      chosen tokens up to and including the first eos, 'length': [B] number
      of tokens before the first eos}.
    """
    del rng, unused_kwargs
    if decode_method not in GREEDY_DECODE_METHODS:
      raise ValueError(f"ArSeq2SeqModel decodes greedily; decode_method must be one of "
                       f"{GREEDY_DECODE_METHODS}, got {decode_method!r}")
    if num_decodes != 1:
      raise ValueError(f"greedy decoding produces one output per input; num_decodes={num_decodes}")
    if prompt_with_targets:
      raise NotImplementedError("ArSeq2SeqModel does not support prompt_with_targets")
    check_batch(batch, need_targets=False)
    tokens_in = batch["encoder_input_tokens"]
    length = tokens_in.shape[1] if max_decode_length is None else max_decode_length
    limit = self.module.config.max_position_embeddings
    if not isinstance(length, int) or not 1 <= length <= limit:
      raise ValueError(f"max_decode_length must be an int in [1, {limit}] "
                       f"(max_position_embeddings), got {length!r}")
    tokens, scores = greedy_decode(self.module, params, tokens_in, jnp.int32(self.eos_id),
                                   max_length=length, pad_id=self.pad_id, bos_id=self.bos_id)
    tokens, lengths = decoding.cut_at_first_eos(tokens, self.eos_id, self.pad_id)
    if return_all_decodes:
      tokens, scores = tokens[:, None], scores[:, None]
    return tokens, {"scores": scores, "length": lengths}

  def score_batch(self, params: PyTree, batch: Batch,
                  return_intermediates: bool = False) -> jnp.ndarray:
    """[B] log-likelihood of the targets up to and including the first eos."""
    if return_intermediates:
      raise NotImplementedError("narlm does not return intermediates from score_batch")
    check_batch(batch)
    targets, weights = self._targets_and_weights(batch)
    logits = self._logits(params, batch, targets)
    return -losses.token_nll(logits, targets, weights).sum(axis=-1)

  # ------------------------------------------------------------ warm start
  def warm_start_from_hf_bert(self, params: PyTree, checkpoint: str) -> PyTree:
    """Overlays a Hugging Face BERT checkpoint onto the encoder and head.

    Same checks and behaviour as NagBertModel's (the ``bert`` subtrees are
    identical). With ``init_decoder_from_encoder`` the decoder is then
    initialised from the loaded encoder as well (see
    `copy_encoder_into_decoder`); otherwise it keeps its initial values.
    """
    params = super().warm_start_from_hf_bert(params, checkpoint)
    if self.init_decoder_from_encoder:
      params = copy_encoder_into_decoder(params)
    return params


# Decoder sub-tree <- encoder sub-tree, per layer (see the parameter trees in
# narlm/modules/encoder.py and narlm/modules/decoder.py).
_LAYER_MAP = {
    "self_attention": "attention",
    "self_attention_layer_norm": "attention_layer_norm",
    "mlp": "mlp",
    "mlp_layer_norm": "mlp_layer_norm",
}


def copy_encoder_into_decoder(params: PyTree) -> PyTree:
  """BERT2BERT initialisation (Rothe et al., 2020) of the AR decoder.

  Decoder layer i takes encoder layer i's self-attention, MLP and their
  LayerNorms, and the decoder's position embeddings / embedding LayerNorm
  take the encoder's; cross-attention (which BERT does not have) keeps its
  random initialisation. A decoder shallower than the encoder takes the
  encoder's lowest layers. Without this, a pretrained encoder is paired with
  a decoder trained from scratch, which needs far more steps to become
  fluent; with it the AR baseline starts as pretrained as NAG-BERT does.

  Args:
    params: ArSeq2SeqNetwork params {'bert': ..., 'decoder': ...}.
  Returns:
    a new params tree (the input is not modified).
  Raises:
    ValueError: the decoder is deeper than the encoder, or shapes differ.
  """
  encoder = params["bert"]["encoder"]
  decoder = dict(params["decoder"])
  enc_layers = sum(1 for k in encoder if k.startswith("layers_"))
  dec_layers = sum(1 for k in decoder if k.startswith("layers_"))
  if dec_layers > enc_layers:
    raise ValueError(f"cannot initialise a {dec_layers}-layer decoder from a {enc_layers}-layer "
                     "encoder; use NUM_DECODER_LAYERS <= the encoder depth")

  def take(dst, src, what):
    src_shapes = jax.tree_util.tree_map(jnp.shape, src)
    dst_shapes = jax.tree_util.tree_map(jnp.shape, dst)
    if src_shapes != dst_shapes:
      raise ValueError(f"{what}: encoder shapes {src_shapes} != decoder shapes {dst_shapes}")
    return jax.tree_util.tree_map(lambda x: x, src)

  embeddings = encoder["embeddings"]
  decoder["position_embeddings"] = take(decoder["position_embeddings"],
                                        embeddings["position_embeddings"], "position_embeddings")
  decoder["embedding_layer_norm"] = take(decoder["embedding_layer_norm"],
                                         embeddings["layer_norm"], "embedding_layer_norm")
  for i in range(dec_layers):
    layer = dict(decoder[f"layers_{i}"])
    for dst, src in _LAYER_MAP.items():
      layer[dst] = take(layer[dst], encoder[f"layers_{i}"][src], f"layers_{i}/{dst}")
    decoder[f"layers_{i}"] = layer
  return dict(params, decoder=decoder)
