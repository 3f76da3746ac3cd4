"""The generic core of `narlm.crf_ops`: a linear chain with K candidates per position.

Both CRFs of `crf_ops` reduce to this: candidate emissions ``cand_em``
[B, T, K] and K x K transitions per step ``trans`` ([B, T-1, K, K], or one
shared [K, K]); the beam CRF builds them with top-k, the exact CRF uses all V
tokens with the dense matrix.  `log_partition` is the forward algorithm,
`viterbi` the best path; each has a sequential ``lax.scan`` path and a
``parallel=True`` path on ``lax.associative_scan`` over semiring matrix
products (see the `crf_ops` docstring for their costs).  Inputs are already
checked and cast by `crf_ops` (float32 or wider, bool left-aligned masks).
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Stand-in for log(0) in the identity element of the (log / max-plus)
# semirings used by the parallel paths.  It is finite on purpose: with a true
# -inf, logsumexp over an all-(-inf) slice has gradient 0 * inf = nan.  It is
# so negative that exp(_NEG_INF - x) underflows to exactly 0 in float32 for any
# realistic score x (so identity products are exact), and a sum of two of them
# (-2e30) is still representable in float32.
_NEG_INF = -1e30


def _time_major_trans(trans: Array):
  """Per-step transitions as scan inputs; None if shared across steps."""
  if trans.ndim == 2:
    return None
  return jnp.swapaxes(trans, 0, 1)  # [T-1, B, K, K]


def _step_matrices(cand_em: Array, mask: Array, trans: Array) -> Array:
  """Semiring step matrices for the parallel paths.

  M_t[i, j] = trans_{t-1}[i, j] + cand_em_t[j] for a valid step t (1..T-1),
  and the semiring identity (0 on the diagonal, "-inf" elsewhere) for a
  masked step, so that masked steps carry the state over unchanged:
  alpha_t = alpha_{t-1} (x) M_t.

  Returns [B, T-1, K, K] float32.
  """
  k = cand_em.shape[-1]
  mats = trans + cand_em[:, 1:, None, :]  # trans broadcasts if [K, K]
  eye = jnp.where(jnp.eye(k, dtype=bool), 0.0, _NEG_INF).astype(mats.dtype)
  return jnp.where(mask[:, 1:, None, None], mats, eye)


def _log_matmul(a: Array, b: Array) -> Array:
  """Log-semiring product: out[..,i,j] = logsumexp_k a[..,i,k] + b[..,k,j]."""
  return jax.nn.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def _max_plus_matmul(a: Array, b: Array) -> Array:
  """Max-plus product: out[..,i,j] = max_k a[..,i,k] + b[..,k,j]."""
  return jnp.max(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def log_partition(cand_em: Array, mask: Array, trans: Array,
                        parallel: bool) -> Array:
  """Forward algorithm over K candidates per position.

  Args:
    cand_em: [B, T, K] float32 candidate emissions.
    mask: [B, T] bool, left-aligned.
    trans: [B, T-1, K, K] or shared [K, K] float32 transitions.
    parallel: associative scan instead of a sequential scan.

  Returns:
    [B] float32 log Z (0 for rows with no valid position).
  """
  t_len = cand_em.shape[1]
  alpha0 = cand_em[:, 0]  # [B, K]
  if t_len == 1:
    alpha = alpha0
  elif parallel:
    mats = _step_matrices(cand_em, mask, trans)  # [B, T-1, K, K]
    # Only the full product is needed for log Z; the last prefix is it.
    total = lax.associative_scan(_log_matmul, mats, axis=1)[:, -1]
    alpha = jax.nn.logsumexp(alpha0[:, :, None] + total, axis=1)
  else:
    trans_tm = _time_major_trans(trans)

    def step(alpha, xs):
      em_t, m_t, tr_t = xs
      tr_t = trans if tr_t is None else tr_t
      # new[b, j] = logsumexp_i alpha[b, i] + tr[b, i, j], then + em[b, j].
      new = jax.nn.logsumexp(alpha[:, :, None] + tr_t, axis=1) + em_t
      return jnp.where(m_t[:, None], new, alpha), None

    xs = (jnp.swapaxes(cand_em[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1),
          trans_tm)
    alpha, _ = lax.scan(step, alpha0, xs)
  log_z = jax.nn.logsumexp(alpha, axis=-1)
  return jnp.where(jnp.any(mask, axis=-1), log_z, 0.0)


def _backtrack_scan(bp: Array, last: Array) -> Array:
  """Sequential backtrack. bp [B, T-1, K] (maps state at t+1 -> t), last [B].

  Returns states [B, T] int32.
  """

  def step(s_next, bp_t):
    s_t = jnp.take_along_axis(bp_t, s_next[:, None], axis=-1)[:, 0]
    return s_t, s_t

  _, states = lax.scan(step, last, jnp.swapaxes(bp, 0, 1), reverse=True)
  return jnp.concatenate([jnp.swapaxes(states, 0, 1), last[:, None]], axis=1)


def _backtrack_parallel(bp: Array, last: Array) -> Array:
  """O(log T)-depth backtrack by composing back-pointer maps.

  bp[:, t] is an index map f_t: state at t+1 -> state at t.  The state at t
  is (f_t o f_{t+1} o ... o f_{T-2})(last); these suffix compositions are a
  reverse associative scan (function composition is associative).  With
  reverse=True, lax.associative_scan calls fn(later, earlier), so
  fn(g, f) = f o g, i.e. (f o g)[j] = f[g[j]].
  """

  def compose(later, earlier):
    return jnp.take_along_axis(earlier, later, axis=-1)

  suffix = lax.associative_scan(compose, bp, reverse=True, axis=1)
  states = jnp.take_along_axis(suffix, last[:, None, None], axis=-1)[..., 0]
  return jnp.concatenate([states, last[:, None]], axis=1)


def viterbi(cand_em: Array, mask: Array, trans: Array,
                  parallel: bool) -> Tuple[Array, Array]:
  """Viterbi over K candidates per position.

  Args: as `log_partition`.

  Returns:
    states: [B, T] int32 candidate index (into the K axis) of the best path;
      at masked positions the state of the last valid position is repeated
      (callers replace those tokens by pad).
    score: [B] float32 best path score (0 for empty rows).
  """
  b, t_len, k = cand_em.shape
  delta0 = cand_em[:, 0]  # [B, K]
  iota = jnp.arange(k, dtype=jnp.int32)
  if t_len == 1:
    last_delta = delta0
    bp = None
  elif parallel:
    mats = _step_matrices(cand_em, mask, trans)
    prefix = lax.associative_scan(_max_plus_matmul, mats, axis=1)
    # delta_t = delta_0 (x) M_1 ... M_t for t = 1..T-1: [B, T-1, K].
    deltas = jnp.max(delta0[:, None, :, None] + prefix, axis=2)
    prev = jnp.concatenate([delta0[:, None], deltas[:, :-1]], axis=1)
    # bp_t[j] = argmax_i delta_{t-1}[i] + trans_{t-1}[i, j]  (em_t[j] is a
    # constant over i).  Identity map at masked steps carries the state.
    bp = jnp.argmax(prev[..., :, None] + trans, axis=-2).astype(jnp.int32)
    bp = jnp.where(mask[:, 1:, None], bp, iota)
    last_delta = deltas[:, -1]
  else:
    trans_tm = _time_major_trans(trans)

    def step(delta, xs):
      em_t, m_t, tr_t = xs
      tr_t = trans if tr_t is None else tr_t
      scores = delta[:, :, None] + tr_t  # [B, K(from), K(to)]
      bp_t = jnp.argmax(scores, axis=1).astype(jnp.int32)
      new = jnp.max(scores, axis=1) + em_t
      delta = jnp.where(m_t[:, None], new, delta)
      bp_t = jnp.where(m_t[:, None], bp_t, iota)
      return delta, bp_t

    xs = (jnp.swapaxes(cand_em[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1),
          trans_tm)
    last_delta, bp = lax.scan(step, delta0, xs)
    bp = jnp.swapaxes(bp, 0, 1)  # [B, T-1, K]
  last = jnp.argmax(last_delta, axis=-1).astype(jnp.int32)
  score = jnp.max(last_delta, axis=-1)
  if bp is None:
    states = last[:, None]
  elif parallel:
    states = _backtrack_parallel(bp, last)
  else:
    states = _backtrack_scan(bp, last)
  score = jnp.where(jnp.any(mask, axis=-1), score, 0.0)
  return states, score
