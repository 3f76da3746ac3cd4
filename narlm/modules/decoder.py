"""Transformer decoder (Flax linen) for the autoregressive baseline.

The autoregressive (AR) baseline of equal size (``narlm.ar_models``) reads the
source with the same BERT encoder as NAG-BERT and generates left to right with
this decoder. It is built from the encoder's blocks (``Dense``, ``LayerNorm``,
``Embed``, ``BertMlp`` of ``narlm.modules.encoder``) and shares the encoder's
``BertConfig`` (hidden size, heads, MLP size, activation, dropout, dtypes), so
a decoder layer is a BERT layer plus one cross-attention block. Like BERT it
is post-LayerNorm::

  x = LN(x + SelfAttn(x, causal))
  x = LN(x + CrossAttn(x, encoded))
  x = LN(x + MLP(x))

Word embeddings are *not* owned here: the caller passes the shared
``[vocab, embed]`` table (the encoder's), and projects the hidden states onto
the vocabulary itself (``narlm.ar_models`` uses the BERT output head, tied to
the same table by default).

Incremental decoding uses an explicit cache pytree (no mutable ``cache``
collection)::

  cache = decoder.init_cache(encoded, max_length)       # once per batch
  hidden, cache = decoder.decode_step(tokens, cache, i, encoder_mask, ...)

``init_cache`` projects the encoder states to cross-attention keys/values
once and allocates zero self-attention key/value buffers of ``max_length``;
each ``decode_step`` projects only the new token, writes its key/value at
position ``i`` and attends to the cache, so a new token never re-runs the
prefix. Cache of one layer (``B`` batch, ``S`` source length, ``L``
max_length, ``H`` heads, ``Dh`` head dim, all in the compute dtype)::

  {'self_key', 'self_value': [B, L, H, Dh], 'cross_key', 'cross_value': [B, S, H, Dh]}

and the decoder's cache is ``{'layers_0': ..., 'layers_1': ..., ...}``.

Parameter tree (``D`` hidden, ``F`` MLP size, ``P`` max positions)::

  position_embeddings/embedding        [P, D]       ('length', 'embed')
  embedding_layer_norm/{scale,bias}    [D]          ('embed',)
  layers_{i}/                          i = 0 .. num_layers-1
    self_attention/{query,key,value}/kernel  [D, H*Dh]  ('embed', 'joined_kv')
    self_attention/{query,key,value}/bias    [H*Dh]     ('joined_kv',)
    self_attention/out/kernel          [H*Dh, D]    ('joined_kv', 'embed')
    self_attention/out/bias            [D]          ('embed',)
    self_attention_layer_norm/{scale,bias}   [D]    ('embed',)
    cross_attention/...                (as self_attention)
    cross_attention_layer_norm/{scale,bias}  [D]    ('embed',)
    mlp/wi/kernel [D, F] ('embed', 'mlp');  mlp/wi/bias [F] ('mlp',)
    mlp/wo/kernel [F, D] ('mlp', 'embed');  mlp/wo/bias [D] ('embed',)
    mlp_layer_norm/{scale,bias}        [D]          ('embed',)
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm.modules.attention import EMBED_AXES, HEADS_AXES, MultiHeadAttention
from narlm.modules.encoder import (BertConfig, BertMlp, Embed, LayerNorm,
                                   with_sharding_constraint)

Array = jax.Array
Cache = Dict[str, Any]


def causal_mask(length: int) -> Array:
  """bool [1, 1, T, T]: query i may attend to keys 0..i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


class DecoderLayer(nn.Module):
  """Post-LN decoder layer: causal self-attention, cross-attention, MLP."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    layer_norm = functools.partial(LayerNorm, cfg.layer_norm_eps,
                                   cfg.compute_dtype, cfg.params_dtype)
    self.self_attention = MultiHeadAttention(cfg)
    self.self_attention_layer_norm = layer_norm()
    self.cross_attention = MultiHeadAttention(cfg)
    self.cross_attention_layer_norm = layer_norm()
    self.mlp = BertMlp(cfg)
    self.mlp_layer_norm = layer_norm()
    self.dropout = nn.Dropout(cfg.hidden_dropout)

  def _cross_and_mlp(self, x: Array, cross_query: Array, cross_key: Array,
                     cross_value: Array, encoder_mask: Array,
                     deterministic: bool) -> Array:
    y = self.cross_attention.attend(cross_query, cross_key, cross_value,
                                    encoder_mask[:, None, None, :],
                                    deterministic)
    x = self.cross_attention_layer_norm(
        x + self.dropout(y, deterministic=deterministic))
    y = self.mlp(x)
    x = self.mlp_layer_norm(x + self.dropout(y, deterministic=deterministic))
    return with_sharding_constraint(x, EMBED_AXES)

  def __call__(self, x: Array, encoded: Array, encoder_mask: Array,
               deterministic: bool = True) -> Array:
    """Teacher-forced pass over all positions.

    Args:
      x: [B, T, D] decoder states.
      encoded: [B, S, D] encoder hidden states.
      encoder_mask: bool [B, S], True on real source tokens.
      deterministic: disables dropout.

    Returns:
      [B, T, D].
    """
    y = self.self_attention(x, x, causal_mask(x.shape[1]), deterministic)
    x = self.self_attention_layer_norm(
        x + self.dropout(y, deterministic=deterministic))
    cross_key, cross_value = self.cross_attention.project_key_value(encoded)
    return self._cross_and_mlp(x, self.cross_attention.project_query(x),
                               cross_key, cross_value, encoder_mask,
                               deterministic)

  def init_cache(self, encoded: Array, max_length: int) -> Cache:
    """Cross keys/values of ``encoded`` [B, S, D] and empty self-attn buffers."""
    cfg = self.config
    cross_key, cross_value = self.cross_attention.project_key_value(encoded)
    shape = (encoded.shape[0], max_length, cfg.num_heads, cfg.head_dim)
    empty = with_sharding_constraint(jnp.zeros(shape, cfg.compute_dtype),
                                     HEADS_AXES)
    return {'self_key': empty, 'self_value': empty,
            'cross_key': cross_key.astype(cfg.compute_dtype),
            'cross_value': cross_value.astype(cfg.compute_dtype)}

  def decode_step(self, x: Array, cache: Cache, index: Array,
                  encoder_mask: Array) -> Tuple[Array, Cache]:
    """One incremental step (deterministic).

    Args:
      x: [B, 1, D] state of the token at position ``index``.
      cache: this layer's cache (see ``init_cache``).
      index: int32 scalar, the position being decoded.
      encoder_mask: bool [B, S].

    Returns:
      ([B, 1, D], the cache with position ``index`` written).
    """
    cfg = self.config
    key, value = self.self_attention.project_key_value(x)
    start = (0, index, 0, 0)
    self_key = jax.lax.dynamic_update_slice(
        cache['self_key'], key.astype(cfg.compute_dtype), start)
    self_value = jax.lax.dynamic_update_slice(
        cache['self_value'], value.astype(cfg.compute_dtype), start)
    max_length = self_key.shape[1]
    mask = (jnp.arange(max_length) <= index)[None, None, None, :]
    y = self.self_attention.attend(self.self_attention.project_query(x),
                                   self_key, self_value, mask, True)
    x = self.self_attention_layer_norm(x + y)
    x = self._cross_and_mlp(x, self.cross_attention.project_query(x),
                            cache['cross_key'], cache['cross_value'],
                            encoder_mask, True)
    return x, dict(cache, self_key=self_key, self_value=self_value)


class TransformerDecoder(nn.Module):
  """Embeddings (shared word table + own positions, LN) and decoder layers.

  Attributes:
    config: the encoder's ``BertConfig`` (sizes, dropout, dtypes).
    num_layers: decoder depth (e.g. the encoder's, or 1 for the
      deep-encoder / shallow-decoder baseline of Kasai et al., 2021).
  """
  config: BertConfig
  num_layers: int = 1

  def setup(self):
    cfg = self.config
    if not isinstance(self.num_layers, int) or self.num_layers < 1:
      raise ValueError(f'TransformerDecoder.num_layers must be a positive '
                       f'int, got {self.num_layers!r}.')
    self.position_embeddings = Embed(
        cfg.max_position_embeddings, cfg.hidden_size, axes=('length', 'embed'),
        dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        embedding_init=nn.initializers.normal(stddev=cfg.initializer_range))
    self.embedding_layer_norm = LayerNorm(cfg.layer_norm_eps,
                                          cfg.compute_dtype, cfg.params_dtype)
    self.dropout = nn.Dropout(cfg.hidden_dropout)
    self.layers = [DecoderLayer(cfg, name=f'layers_{i}')
                   for i in range(self.num_layers)]

  def _embed(self, tokens: Array, positions: Array, word_embedding: Array,
             deterministic: bool) -> Array:
    cfg = self.config
    if word_embedding.shape != (cfg.vocab_size, cfg.hidden_size):
      raise ValueError(
          f'word_embedding must be [vocab, embed] = '
          f'{(cfg.vocab_size, cfg.hidden_size)}, got {word_embedding.shape}.')
    words = jnp.take(jnp.asarray(word_embedding, cfg.compute_dtype), tokens,
                     axis=0)
    x = (words.astype(jnp.float32)
         + self.position_embeddings(positions).astype(jnp.float32))
    x = self.embedding_layer_norm(x)
    x = self.dropout(x, deterministic=deterministic)
    return with_sharding_constraint(x, EMBED_AXES)

  def _check_length(self, length: int, what: str) -> None:
    limit = self.config.max_position_embeddings
    if length > limit:
      raise ValueError(f'{what} {length} exceeds max_position_embeddings='
                       f'{limit} of the decoder.')

  def __call__(self, decoder_input_tokens: Array, encoded: Array,
               encoder_mask: Array, *, word_embedding: Array,
               deterministic: bool = True) -> Array:
    """Teacher-forced decoding of all positions at once.

    Args:
      decoder_input_tokens: int [B, T] (targets shifted right, BOS first).
      encoded: [B, S, D] encoder hidden states.
      encoder_mask: bool [B, S], True on real source tokens.
      word_embedding: [V, D] shared word-embedding table.
      deterministic: if False, dropout is active (needs a 'dropout' rng).

    Returns:
      [B, T, D] hidden states; position t saw inputs 0..t only.
    """
    if decoder_input_tokens.ndim != 2:
      raise ValueError(f'decoder_input_tokens must be [batch, length], got '
                       f'shape {decoder_input_tokens.shape}.')
    if encoded.ndim != 3 or encoded.shape[0] != decoder_input_tokens.shape[0]:
      raise ValueError(f'encoded must be [batch, source_length, embed] with '
                       f'batch {decoder_input_tokens.shape[0]}, got shape '
                       f'{encoded.shape}.')
    if encoder_mask.shape != encoded.shape[:2]:
      raise ValueError(f'encoder_mask shape {encoder_mask.shape} != encoded '
                       f'[batch, source_length] {encoded.shape[:2]}.')
    length = decoder_input_tokens.shape[1]
    self._check_length(length, 'decoder length')
    positions = jnp.arange(length)[None, :]
    x = self._embed(decoder_input_tokens, positions, word_embedding,
                    deterministic)
    encoder_mask = encoder_mask.astype(bool)
    for layer in self.layers:
      x = layer(x, encoded, encoder_mask, deterministic)
    return x

  def init_cache(self, encoded: Array, max_length: int) -> Cache:
    """The cache for decoding up to ``max_length`` tokens after ``encoded``."""
    self._check_length(max_length, 'max decode length')
    return {f'layers_{i}': layer.init_cache(encoded, max_length)
            for i, layer in enumerate(self.layers)}

  def decode_step(self, tokens: Array, cache: Cache, index: Array,
                  encoder_mask: Array, *,
                  word_embedding: Array) -> Tuple[Array, Cache]:
    """Decodes one position for every row (deterministic).

    Args:
      tokens: int [B] (or [B, 1]) input token at position ``index``.
      cache: from ``init_cache`` / the previous step.
      index: int32 scalar position (< the cache's max_length).
      encoder_mask: bool [B, S].
      word_embedding: [V, D] shared word-embedding table.

    Returns:
      (hidden [B, 1, D], updated cache).
    """
    tokens = jnp.asarray(tokens).reshape(-1, 1)
    index = jnp.asarray(index, jnp.int32)
    x = self._embed(tokens, index[None, None], word_embedding, True)
    encoder_mask = encoder_mask.astype(bool)
    new_cache = {}
    for i, layer in enumerate(self.layers):
      name = f'layers_{i}'
      x, new_cache[name] = layer.decode_step(x, cache[name], index,
                                             encoder_mask)
    return x, new_cache
