"""Pure `jnp` maths of the linear-chain CRF and the dynamic (low-rank, beam) CRF.

The dynamic CRF (Sun et al. 2019, "Fast Structured Decoding for Sequence
Models") scores a target sequence y_1..y_T given per-position emission scores
s_t(v) and a transition matrix M [V, V]:

    score(y) = sum_t s_t(y_t) + sum_{t>=1} M[y_{t-1}, y_t]
    log p(y) = score(y) - log Z,   Z = sum_{y'} exp(score(y')).

Two approximations make this tractable for a 30k vocabulary:

* low rank: M = E1 @ E2^T with E1, E2 [V, R]; M[a, b] = e1[a] . e2[b].
  Optionally plus a learned diagonal d [V] ("self transition"):
  M[a, b] = e1[a] . e2[b] + [a == b] d[a].  A rank-R product cannot express
  a vocabulary-wide "do not repeat the previous token" (that needs a full-rank
  -c * I); the diagonal adds it for V extra parameters.  Every function
  taking (e1, e2) takes it as the keyword ``self_transition`` ([V] float or
  None = no diagonal).
* beam: Z is summed only over paths whose token at each position is among the
  K tokens with the highest emission at that position.  In training the gold
  token is forced into the beam so that log p(gold) <= 0 stays a proper bound.

Conventions shared by every function here:

* ``emissions`` [B, T, V], any float dtype, finite (mask unwanted tokens
  with a large negative number, not -inf: an all -inf slice has NaN
  gradients).  Everything that sums or
  log-sum-exps (transition dot products, forward algorithm, path scores) runs
  in (at least) float32 even when emissions/factors are bfloat16: a T-step
  forward recursion in bf16 (8 bits of mantissa) loses most of log Z's
  precision.
* ``mask`` [B, T], bool or 0/1 (any nonzero entry counts as valid).  Masks are
  assumed LEFT-ALIGNED: the valid positions of a row are a prefix 0..L-1.
  Masked positions contribute nothing and carry the forward state over
  unchanged, so a row's result equals the computation on the unpadded row.
  A row with no valid position (L = 0) has, by definition, log Z = 0,
  numerator = 0, Viterbi score = 0 and all-pad tokens (the empty sequence has
  exactly one path, of score 0); this keeps log-likelihoods of empty rows at
  0 and their gradients at 0.  Masks with holes are not supported (the result
  is finite but unspecified).
* ``targets`` [B, T] integer; values at masked positions are ignored (but are
  still used as gather indices, so keep them in [0, V)).
* Results are float32 [B] arrays (token outputs int32 [B, T]); float64
  inputs (with jax_enable_x64) are computed and returned in float64.

Internally both the beam CRF and the exact CRF reduce to one generic core
(`narlm.crf_core`): "K candidates per position, with candidate emissions ``cand_em`` [B, T, K] and
K x K transitions per step ``trans`` ([B, T-1, K, K], or a shared [K, K])".
The beam CRF builds the candidates with top-k; the exact CRF uses all V tokens
as candidates with the dense transition matrix.

Each core has a sequential ``lax.scan`` path (O(T) depth, O(T K^2) work) and a
``parallel=True`` path built on ``lax.associative_scan`` over semiring matrix
products (O(log T) depth, O(T K^3) work and O(T K^3) temporary memory, since
a log-semiring product is materialised as a [.., K, K, K] broadcast before
the reduction).  The parallel path only pays off for long sequences with a
small K on an accelerator; the two paths agree to float rounding.

All argument checks look only at static shapes/dtypes, so the functions can
be jitted (``beam_size`` and ``parallel`` must then be static).
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from narlm import crf_core

Array = jax.Array


def _acc_dtype(*arrays) -> jnp.dtype:
  """Accumulation dtype: float32, or float64 if an input is float64."""
  return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


# ---------------------------------------------------------------------------
# Input checks (static shapes only: they run at trace time under jit).
# ---------------------------------------------------------------------------


def _check_emissions(emissions) -> Tuple[int, int, int]:
  if emissions.ndim != 3:
    raise ValueError(
        f'`emissions` must have shape [B, T, V]; got shape {emissions.shape}.')
  if not jnp.issubdtype(emissions.dtype, jnp.floating):
    raise ValueError(
        f'`emissions` must be a float array; got dtype {emissions.dtype}.')
  b, t, v = emissions.shape
  if t == 0:
    raise ValueError(
        f'`emissions` has an empty sequence axis (T == 0, shape '
        f'{emissions.shape}); the CRF needs T >= 1 (mask rows out instead).')
  if v == 0:
    raise ValueError(
        f'`emissions` has an empty vocabulary axis (V == 0, shape '
        f'{emissions.shape}).')
  return b, t, v


def _check_mask(mask, emissions) -> Array:
  mask = jnp.asarray(mask)
  if mask.shape != emissions.shape[:2]:
    raise ValueError(
        f'`mask` shape {mask.shape} does not match emissions [B, T] = '
        f'{emissions.shape[:2]} (emissions shape {emissions.shape}).')
  # Any nonzero weight (e.g. decoder_loss_weights == 1.0) marks a valid step.
  return mask.astype(bool)


def _check_targets(targets, emissions) -> Array:
  targets = jnp.asarray(targets)
  if targets.shape != emissions.shape[:2]:
    raise ValueError(
        f'`targets` shape {targets.shape} does not match emissions [B, T] = '
        f'{emissions.shape[:2]} (emissions shape {emissions.shape}).')
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(
        f'`targets` must be an integer array; got dtype {targets.dtype}.')
  return targets.astype(jnp.int32)


def _check_factors(e1, e2, vocab_size: int) -> Tuple[Array, Array]:
  e1 = jnp.asarray(e1)
  e2 = jnp.asarray(e2)
  if e1.ndim != 2 or e2.ndim != 2:
    raise ValueError(
        f'`e1` and `e2` must have shape [V, R]; got e1 {e1.shape}, '
        f'e2 {e2.shape}.')
  if e1.shape != e2.shape:
    raise ValueError(
        f'`e1` and `e2` must have the same shape [V, R]; got e1 {e1.shape} '
        f'!= e2 {e2.shape}.')
  if e1.shape[0] != vocab_size:
    raise ValueError(
        f'`e1`/`e2` vocab size {e1.shape[0]} (shape {e1.shape}) does not '
        f'match the emissions vocab size V = {vocab_size}.')
  return e1, e2


def _check_self_transition(self_transition,
                           vocab_size: int) -> Optional[Array]:
  """None, or the [V] float diagonal d of M[a, b] = e1[a].e2[b] + [a==b] d[a]."""
  if self_transition is None:
    return None
  d = jnp.asarray(self_transition)
  if d.shape != (vocab_size,):
    raise ValueError(
        f'`self_transition` must have shape [V] = ({vocab_size},) to match '
        f'the vocab size V = {vocab_size}; got shape {d.shape}.')
  if not jnp.issubdtype(d.dtype, jnp.floating):
    raise ValueError(
        f'`self_transition` must be a float array; got dtype {d.dtype}.')
  return d


def _check_transitions(transitions, vocab_size: int) -> Array:
  transitions = jnp.asarray(transitions)
  if transitions.shape != (vocab_size, vocab_size):
    raise ValueError(
        f'`transitions` must have shape [V, V] = ({vocab_size}, {vocab_size}) '
        f'to match the emissions vocab size; got {transitions.shape}.')
  return transitions


def _check_beam_size(beam_size, vocab_size: int) -> int:
  if isinstance(beam_size, bool) or not isinstance(beam_size,
                                                   numbers.Integral):
    raise ValueError(
        f'`beam_size` must be a static Python int; got {beam_size!r} '
        f'({type(beam_size).__name__}).')
  beam_size = int(beam_size)
  if not 1 <= beam_size <= vocab_size:
    raise ValueError(
        f'`beam_size` must satisfy 1 <= beam_size <= V = {vocab_size}; got '
        f'beam_size = {beam_size}.')
  return beam_size


# ---------------------------------------------------------------------------
# Building blocks.
# ---------------------------------------------------------------------------


def low_rank_transitions(e1: Array,
                         e2: Array,
                         self_transition: Optional[Array] = None) -> Array:
  """Dense transition matrix of the low-rank factors (+ optional diagonal).

  Args:
    e1: [V, R] left factor (the "from" token's embedding).
    e2: [V, R] right factor (the "to" token's embedding).
    self_transition: optional [V] float diagonal d.

  Returns:
    [V, V] float32 (float64 for float64 input),
    M[a, b] = e1[a] . e2[b] + [a == b] d[a].  Only sensible for small V.
  """
  e1 = jnp.asarray(e1)
  e2 = jnp.asarray(e2)
  if e1.ndim != 2 or e1.shape != e2.shape:
    raise ValueError(
        f'`e1` and `e2` must both have shape [V, R]; got e1 {e1.shape}, '
        f'e2 {e2.shape}.')
  d = _check_self_transition(self_transition, e1.shape[0])
  dtype = _acc_dtype(e1, e2, *(() if d is None else (d,)))
  trans = jnp.einsum('ar,br->ab', e1.astype(dtype), e2.astype(dtype),
                     precision=lax.Precision.HIGHEST)
  if d is not None:
    trans = trans + jnp.diag(d.astype(dtype))
  return trans


def beam_candidates(emissions: Array,
                    beam_size: int,
                    targets: Optional[Array] = None) -> Tuple[Array, Array]:
  """The beam: top-k tokens per position by emission score.

  Args:
    emissions: [B, T, V] float.
    beam_size: K, static int in [1, V].
    targets: optional [B, T] int; if given, the gold token of every position
      is forced into the beam (so the beam log Z covers the gold path and
      log-likelihood = numerator - log Z <= 0).

  Returns:
    cand_tokens: [B, T, K] int32 token ids of the beam, in descending order of
      (boosted) emission.
    cand_em: [B, T, K] float32 emissions of those tokens (real, un-boosted
      values).
  """
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  beam_size = _check_beam_size(beam_size, v)
  scores = emissions
  if targets is not None:
    targets = _check_targets(targets, emissions)
    # +inf guarantees the gold token survives top_k whatever its emission.
    # The boost stays in the input dtype (bf16 has inf) so that the [B, T, V]
    # tensor is never up-cast; only the K gathered values are.
    is_gold = (jnp.arange(v, dtype=jnp.int32)[None, None, :] ==
               targets[:, :, None])
    scores = jnp.where(is_gold, jnp.asarray(jnp.inf, emissions.dtype),
                       emissions)
  # top_k indices carry no gradient; the gradient reaches the emissions
  # through the gather below.
  _, cand_tokens = lax.top_k(lax.stop_gradient(scores), beam_size)
  # The barrier materialises the beam once. Without it XLA:CPU fuses top_k
  # into the consumers' gathers and recomputes it per element: measured 0.74 s
  # vs 0.065 s for candidates + transitions at B=64, T=48, V=1029, K=16.
  cand_tokens = lax.optimization_barrier(cand_tokens.astype(jnp.int32))
  cand_em = jnp.take_along_axis(emissions, cand_tokens, axis=-1)
  return cand_tokens, cand_em.astype(_acc_dtype(emissions))


def beam_transitions(cand_tokens: Array,
                     e1: Array,
                     e2: Array,
                     self_transition: Optional[Array] = None) -> Array:
  """Transition scores between the beams of consecutive positions.

  Args:
    cand_tokens: [B, T, K] int token ids of the beam.
    e1, e2: [V, R] low-rank factors.
    self_transition: optional [V] float diagonal d.

  Returns:
    [B, T-1, K, K] float32; entry [b, t, i, j] is the score of moving from
    candidate i at position t to candidate j at position t+1:
    e1[c_i] . e2[c_j] + [c_i == c_j] d[c_i]  (c = cand_tokens).
  """
  e1 = jnp.asarray(e1)
  e2 = jnp.asarray(e2)
  d = _check_self_transition(self_transition, e1.shape[0])
  dtype = _acc_dtype(e1, e2, *(() if d is None else (d,)))
  from_tokens, to_tokens = cand_tokens[:, :-1], cand_tokens[:, 1:]
  left = jnp.take(e1, from_tokens, axis=0).astype(dtype)
  right = jnp.take(e2, to_tokens, axis=0).astype(dtype)
  # [B, T-1, K, R] x [B, T-1, K, R] -> [B, T-1, K, K], accumulated in f32.
  trans = jnp.einsum('btir,btjr->btij', left, right,
                     precision=lax.Precision.HIGHEST)
  if d is not None:
    # Only K gathered values per position and a [K, K] equality pattern: the
    # [V, V] diagonal matrix is never built.
    same = from_tokens[..., :, None] == to_tokens[..., None, :]
    diag = jnp.take(d, from_tokens, axis=0).astype(dtype)  # [B, T-1, K]
    trans = trans + jnp.where(same, diag[..., :, None], 0.0)
  return trans


def _path_score(target_em: Array, target_trans: Array, mask: Array) -> Array:
  """Score of one path given its per-position emissions and transitions.

  target_em [B, T] f32, target_trans [B, T-1] f32, mask [B, T] bool -> [B].
  Transition t-1 -> t counts iff position t is valid (left-aligned masks).
  """
  score = jnp.sum(jnp.where(mask, target_em, 0.0), axis=-1)
  score += jnp.sum(jnp.where(mask[:, 1:], target_trans, 0.0), axis=-1)
  return score


def crf_numerator(emissions: Array,
                  targets: Array,
                  mask: Array,
                  e1: Array,
                  e2: Array,
                  *,
                  self_transition: Optional[Array] = None) -> Array:
  """Unnormalised score of the target path under the low-rank CRF.

  Args:
    emissions: [B, T, V] float.
    targets: [B, T] int.
    mask: [B, T] bool/0-1, left-aligned.
    e1, e2: [V, R] low-rank transition factors.
    self_transition: optional [V] float diagonal d.

  Returns:
    [B] float32: sum_t s_t(y_t) + sum_{t>=1} (e1[y_{t-1}] . e2[y_t]
    + [y_{t-1} == y_t] d[y_t]) over the valid positions.
  """
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  mask = _check_mask(mask, emissions)
  targets = _check_targets(targets, emissions)
  e1, e2 = _check_factors(e1, e2, v)
  d = _check_self_transition(self_transition, v)
  target_em = jnp.take_along_axis(emissions, targets[..., None], axis=-1)
  target_em = target_em[..., 0].astype(_acc_dtype(emissions))
  dtype = _acc_dtype(e1, e2, *(() if d is None else (d,)))
  left = jnp.take(e1, targets[:, :-1], axis=0).astype(dtype)
  right = jnp.take(e2, targets[:, 1:], axis=0).astype(dtype)
  target_trans = jnp.sum(left * right, axis=-1)
  if d is not None:
    repeat = targets[:, :-1] == targets[:, 1:]
    target_trans += jnp.where(
        repeat, jnp.take(d, targets[:, :-1], axis=0).astype(dtype), 0.0)
  return _path_score(target_em, target_trans, mask)


def exact_numerator(emissions: Array, targets: Array, mask: Array,
                    transitions: Array) -> Array:
  """Like `crf_numerator` with a dense `transitions` [V, V] matrix. -> [B]."""
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  mask = _check_mask(mask, emissions)
  targets = _check_targets(targets, emissions)
  transitions = _check_transitions(transitions, v)
  dtype = _acc_dtype(emissions, transitions)
  transitions = transitions.astype(dtype)
  target_em = jnp.take_along_axis(emissions, targets[..., None], axis=-1)
  target_em = target_em[..., 0].astype(dtype)
  target_trans = transitions[targets[:, :-1], targets[:, 1:]]
  return _path_score(target_em, target_trans, mask)


# ---------------------------------------------------------------------------
# Public API: beam (dynamic) CRF.
# ---------------------------------------------------------------------------


def beam_log_partition(emissions: Array,
                       mask: Array,
                       e1: Array,
                       e2: Array,
                       beam_size: int,
                       targets: Optional[Array] = None,
                       parallel: bool = False,
                       *,
                       self_transition: Optional[Array] = None) -> Array:
  """Beam approximation of log Z under the low-rank CRF.

  Sums exp(score) over the K^L paths whose token at each position is in that
  position's beam (top-`beam_size` tokens by emission).  It is a lower bound
  of the exact log Z, equal to it when beam_size == V.

  Args:
    emissions: [B, T, V] float.
    mask: [B, T] bool/0-1, left-aligned.
    e1, e2: [V, R] low-rank transition factors.
    beam_size: K, static int in [1, V].
    targets: optional [B, T] int gold tokens, forced into the beam (training).
    parallel: use an associative scan (O(log T) depth) instead of lax.scan.
    self_transition: optional [V] float diagonal d.

  Returns:
    [B] float32 log Z~ (0 for rows without valid positions).
  """
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  mask = _check_mask(mask, emissions)
  e1, e2 = _check_factors(e1, e2, v)
  d = _check_self_transition(self_transition, v)
  cand_tokens, cand_em = beam_candidates(emissions, beam_size, targets)
  trans = beam_transitions(cand_tokens, e1, e2, self_transition=d)
  return crf_core.log_partition(cand_em, mask, trans, parallel)


def crf_log_likelihood(emissions: Array,
                       targets: Array,
                       mask: Array,
                       e1: Array,
                       e2: Array,
                       beam_size: int,
                       parallel: bool = False,
                       *,
                       self_transition: Optional[Array] = None) -> Array:
  """log p(targets) = numerator - beam log Z (gold forced into the beam).

  Args: as `crf_numerator` and `beam_log_partition`.

  Returns:
    [B] float32 log-likelihood, <= 0 up to rounding (0 for empty rows).
  """
  numerator = crf_numerator(emissions, targets, mask, e1, e2,
                            self_transition=self_transition)
  log_z = beam_log_partition(
      emissions, mask, e1, e2, beam_size, targets=targets, parallel=parallel,
      self_transition=self_transition)
  return numerator - log_z


def viterbi_decode(emissions: Array,
                   mask: Array,
                   e1: Array,
                   e2: Array,
                   beam_size: int,
                   parallel: bool = False,
                   *,
                   self_transition: Optional[Array] = None
                  ) -> Tuple[Array, Array]:
  """Best path within the beam (top-`beam_size` tokens per position).

  Args:
    emissions: [B, T, V] float.
    mask: [B, T] bool/0-1, left-aligned.
    e1, e2: [V, R] low-rank transition factors.
    beam_size: K, static int in [1, V].
    parallel: max-plus associative scan for the forward scores and an
      associative scan of composed back-pointer maps for the backtrack.
    self_transition: optional [V] float diagonal d.

  Returns:
    tokens: [B, T] int32 best path; 0 (pad) at masked positions.
    score: [B] float32 score of that path (0 for empty rows).
  """
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  mask = _check_mask(mask, emissions)
  e1, e2 = _check_factors(e1, e2, v)
  d = _check_self_transition(self_transition, v)
  cand_tokens, cand_em = beam_candidates(emissions, beam_size)
  trans = beam_transitions(cand_tokens, e1, e2, self_transition=d)
  states, score = crf_core.viterbi(cand_em, mask, trans, parallel)
  tokens = jnp.take_along_axis(cand_tokens, states[..., None], axis=-1)[..., 0]
  return jnp.where(mask, tokens, 0).astype(jnp.int32), score


# ---------------------------------------------------------------------------
# Public API: exact CRF with a dense transition matrix (small V only).
# ---------------------------------------------------------------------------


def exact_log_partition(emissions: Array,
                        mask: Array,
                        transitions: Array,
                        parallel: bool = False) -> Array:
  """Exact log Z over all V^L paths (dense `transitions` [V, V]).

  Args:
    emissions: [B, T, V] float.
    mask: [B, T] bool/0-1, left-aligned.
    transitions: [V, V] float, transitions[a, b] = score of a -> b.
    parallel: associative scan instead of lax.scan.

  Returns:
    [B] float32 log Z (0 for rows without valid positions).
  """
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  mask = _check_mask(mask, emissions)
  transitions = _check_transitions(transitions, v)
  dtype = _acc_dtype(emissions, transitions)
  return crf_core.log_partition(
      emissions.astype(dtype), mask, transitions.astype(dtype), parallel)


def exact_viterbi_decode(emissions: Array,
                         mask: Array,
                         transitions: Array,
                         parallel: bool = False) -> Tuple[Array, Array]:
  """Exact best path over the full vocabulary (dense `transitions` [V, V]).

  Returns:
    tokens: [B, T] int32 best path; 0 (pad) at masked positions.
    score: [B] float32 score of that path (0 for empty rows).
  """
  emissions = jnp.asarray(emissions)
  _, _, v = _check_emissions(emissions)
  mask = _check_mask(mask, emissions)
  transitions = _check_transitions(transitions, v)
  dtype = _acc_dtype(emissions, transitions)
  states, score = crf_core.viterbi(
      emissions.astype(dtype), mask, transitions.astype(dtype), parallel)
  return jnp.where(mask, states, 0).astype(jnp.int32), score
