"""The canvas model's layout and re-masking schedule: pure functions.

`narlm.canvas` (the model) and `narlm.canvas_decoding` (mask-predict) share
them; shapes in the docstrings.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def target_lengths(targets: jnp.ndarray, eos_id: int, pad_id: int) -> jnp.ndarray:
  """int [B, T] ``y_1 .. y_m, eos, ..`` -> int [B] m (tokens before the first
  eos or pad)."""
  ends = (targets == eos_id) | (targets == pad_id)
  return jnp.where(ends.any(-1), jnp.argmax(ends, axis=-1), targets.shape[1]).astype(jnp.int32)


def make_canvas(tokens: jnp.ndarray, lengths: jnp.ndarray, masked: jnp.ndarray, *,
                mask_id: int, sep_id: int, pad_id: int) -> jnp.ndarray:
  """The canvas rows ``t_1 .. t_m [SEP] pad ..`` with masked positions [MASK].

  Args:
    tokens: int [B, W] target (or current) tokens; positions >= m ignored.
    lengths: int [B] m, at most W - 1 (room for [SEP]).
    masked: bool [B, W] positions to mask (ignored at positions >= m).
  Returns:
    int [B, W].
  """
  pos = jnp.arange(tokens.shape[1])[None, :]
  inside = pos < lengths[:, None]
  canvas = jnp.where(inside & masked, mask_id, tokens)
  canvas = jnp.where(pos == lengths[:, None], sep_id, canvas)
  return jnp.where(pos > lengths[:, None], pad_id, canvas).astype(jnp.int32)


def lowest_k(scores: jnp.ndarray, valid: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """bool [B, W]: the k[b] valid positions of row b with the lowest scores
  (ties: the earlier position)."""
  keyed = jnp.where(valid, scores, jnp.inf)
  rank = jnp.argsort(jnp.argsort(keyed, axis=-1, stable=True), axis=-1, stable=True)
  return valid & (rank < k[:, None])


def random_mask(rng: jax.Array, lengths: jnp.ndarray, width: int,
                counts: jnp.ndarray) -> jnp.ndarray:
  """bool [B, W]: counts[b] distinct random positions among row b's first m."""
  valid = jnp.arange(width)[None, :] < lengths[:, None]
  return lowest_k(jax.random.uniform(rng, (lengths.shape[0], width)), valid, counts)


def remask_count(lengths: jnp.ndarray, iteration: jnp.ndarray, iterations: int,
                 remask_ratio: Optional[float] = None) -> jnp.ndarray:
  """Tokens re-masked before pass `iteration` (1-based, 2 .. T):
  floor(m (T - iteration + 1) / T), mask-predict's linear decay; with a
  `remask_ratio` rho, floor(rho m (T - iteration + 1) / (T - 1)): the
  first re-masking takes the share rho, decaying linearly (rho = (T - 1) / T
  is the default)."""
  if remask_ratio is None:
    return (lengths * (iterations - iteration + 1)) // iterations
  share = remask_ratio * (iterations - iteration + 1) / (iterations - 1)
  return jnp.floor(lengths * share + 1e-4).astype(jnp.int32)


def check_remask_ratio(remask_ratio: Optional[float]) -> Optional[float]:
  if remask_ratio is None:
    return None
  if isinstance(remask_ratio, bool) or not isinstance(remask_ratio, (int, float)) or \
      not 0.0 < remask_ratio <= 1.0:
    raise ValueError(f"remask_ratio (the share of tokens the first refinement pass re-masks) "
                     f"must be a number in (0, 1], got {remask_ratio!r}")
  return float(remask_ratio)


def check_iterations(iterations: int) -> int:
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations (T, refinement passes) must be an int >= 1, got {iterations!r}")
  return iterations
