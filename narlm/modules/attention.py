"""Multi-head attention (Flax linen): the one attention module of narlm's
encoder (``self_attend``) and AR decoder (projections and ``attend`` called
separately, to cache keys/values)."""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm.modules.layers import Array, Dense, with_sharding_constraint

HEADS_AXES = ('batch', 'length', 'heads', 'kv')
EMBED_AXES = ('batch', 'length', 'embed')


class MultiHeadAttention(nn.Module):
  """Multi-head attention with q/k/v/out projections (all with bias).

  The one attention of narlm: the encoder's self-attention (``self_attend``,
  with an optional prefix of keys/values for the prefix LM) and the AR
  decoder's causal self- and cross-attention, which call the projection and
  attention methods separately to cache the projected keys/values.
  Parameters: ``query``, ``key``, ``value``, ``out`` (HF BERT's layout).
  """
  config: Any  # narlm.modules.encoder.BertConfig (not imported: encoder imports this)

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    dense = functools.partial(
        Dense, cfg.num_heads * cfg.head_dim, ('embed', 'joined_kv'),
        dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        kernel_init=init)
    self.query = dense()
    self.key = dense()
    self.value = dense()
    self.out = Dense(cfg.hidden_size, ('joined_kv', 'embed'),
                     dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                     kernel_init=init)
    self.dropout = nn.Dropout(cfg.attention_dropout)

  def _split_heads(self, y: Array) -> Array:
    batch, length, _ = y.shape
    y = y.reshape(batch, length, self.config.num_heads, self.config.head_dim)
    return with_sharding_constraint(y, HEADS_AXES)

  def project_query(self, x: Array) -> Array:
    """[B, T, D] -> [B, T, H, Dh]."""
    return self._split_heads(self.query(x))

  def project_key_value(self, x: Array) -> Tuple[Array, Array]:
    """[B, S, D] -> (keys, values), each [B, S, H, Dh]."""
    return self._split_heads(self.key(x)), self._split_heads(self.value(x))

  def attend(self, query: Array, key: Array, value: Array, mask: Array,
             deterministic: bool) -> Array:
    """Attention of projected queries to projected keys/values.

    Args:
      query: [B, T, H, Dh].
      key, value: [B, S, H, Dh].
      mask: bool, broadcastable to [B, H, T, S]; True where allowed.
      deterministic: disables attention-probability dropout.

    Returns:
      [B, T, D] output (after the ``out`` projection).
    """
    cfg = self.config
    batch, length = query.shape[:2]
    scores = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                        preferred_element_type=jnp.float32)
    scores = scores.astype(jnp.float32) / math.sqrt(cfg.head_dim)
    # `where`, not an additive bias: fully masked rows stay finite (uniform).
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
    probs = self.dropout(probs, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, value.astype(cfg.compute_dtype))
    out = with_sharding_constraint(out, HEADS_AXES)
    out = self.out(out.reshape(batch, length, cfg.num_heads * cfg.head_dim))
    return with_sharding_constraint(out, EMBED_AXES)

  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array,
               deterministic: bool = True) -> Array:
    """[B, T, D] queries, [B, S, D] keys/values, mask -> [B, T, D]."""
    key, value = self.project_key_value(inputs_kv)
    return self.attend(self.project_query(inputs_q), key, value, mask,
                       deterministic)

  def self_attend(self, x: Array, key_mask: Array, deterministic: bool,
                  prefix_kv: Optional[Tuple[Array, Array]] = None,
                  return_kv: bool = False):
    """Attends every position of ``x`` to the allowed keys.

    Args:
      x: [B, L, D] hidden states.
      key_mask: bool [B, K] (every query alike) or [B, L, K] (per query),
        True for keys that may be attended; K = P + L keys: the prefix's,
        then x's own.
      deterministic: disables attention-probability dropout.
      prefix_kv: optional (keys, values) [B, P, H, Dh] attended before x's
        own (a prefix LM's source, or a key/value cache).
      return_kv: also return x's own (keys, values) [B, L, H, Dh].

    Returns:
      [B, L, D] attention output (before residual and LayerNorm), and with
      `return_kv` the (keys, values) pair.
    """
    key, value = self.project_key_value(x)
    own_kv = (key, value)
    if prefix_kv is not None:
      key = jnp.concatenate([prefix_kv[0].astype(key.dtype), key], axis=1)
      value = jnp.concatenate([prefix_kv[1].astype(value.dtype), value], axis=1)
    if key_mask.shape[-1] != key.shape[1] or key_mask.ndim not in (2, 3):
      raise ValueError(f'key_mask shape {key_mask.shape} does not fit {key.shape[1]} keys')
    mask = key_mask[:, None, None, :] if key_mask.ndim == 2 else key_mask[:, None]
    out = self.attend(self.project_query(x), key, value, mask, deterministic)
    return (out, own_kv) if return_kv else out
