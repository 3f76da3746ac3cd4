"""Tests of narlm.crf_ops against brute-force enumeration of all paths.

Shapes are tiny (V <= 5, T <= 4 for enumeration).  Every op goes through a
jitted wrapper (eager associative scans are very slow to dispatch) and the
tests share a few problem shapes, so each (function, shape) compiles once.
Padding positions of the test problems hold large garbage emissions, so the
brute-force comparisons (which only look at the valid prefix) also check that
padding contributes nothing.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narlm import crf_ops



@pytest.fixture(scope='module', autouse=True)
def _fast_compiles():
  """Skip most XLA optimisation passes: these tiny programs are dominated by
  compile time (this roughly halves the file's run time).  Restored after."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


# ----------------------------------------------------------------------------
# jitted entry points (static: beam_size / k, parallel).
# ----------------------------------------------------------------------------

exact_log_z = jax.jit(crf_ops.exact_log_partition, static_argnames='parallel')
exact_viterbi = jax.jit(crf_ops.exact_viterbi_decode,
                        static_argnames='parallel')
beam_log_z = jax.jit(crf_ops.beam_log_partition,
                     static_argnames=('beam_size', 'parallel'))
numerator = jax.jit(crf_ops.crf_numerator)


@functools.partial(jax.jit, static_argnames=('k', 'parallel'))
def ll_and_viterbi(em, targets, mask, e1, e2, k, parallel=False, d=None):
  """Numerator, log-likelihood, forced beam log Z, Viterbi path and score.

  `d`: optional [V] self-transition diagonal (None compiles without it).
  """
  num = crf_ops.crf_numerator(em, targets, mask, e1, e2, self_transition=d)
  ll = crf_ops.crf_log_likelihood(em, targets, mask, e1, e2, k,
                                  parallel=parallel, self_transition=d)
  # Forced-beam log Z recovered from the log-likelihood (one compile instead
  # of two); tests compare it with enumeration over the forced beam.
  log_z = num - ll
  tokens, score = crf_ops.viterbi_decode(em, mask, e1, e2, k,
                                         parallel=parallel, self_transition=d)
  return dict(num=num, log_z=log_z, ll=ll, tokens=tokens, score=score)


# ----------------------------------------------------------------------------
# Problems and brute force.
# ----------------------------------------------------------------------------


def _problem(seed, b, t, v, r, lengths, scale=1.0):
  """Random emissions/factors/targets with a left-aligned mask.

  Padding holds large emissions (they would dominate any result they leak
  into) and arbitrary targets.
  """
  rng = np.random.default_rng(seed)
  em = (scale * rng.normal(size=(b, t, v))).astype(np.float32)
  e1 = rng.normal(size=(v, r)).astype(np.float32)
  e2 = rng.normal(size=(v, r)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
  mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
  em[~mask] = 30.0 + rng.normal(size=((~mask).sum(), v))
  return em, e1, e2, targets, mask


def _dense(e1, e2):
  return np.asarray(e1, np.float64) @ np.asarray(e2, np.float64).T


def _brute_force(em, mask, trans, candidates=None):
  """Enumerate every path of every row (float64).

  Args:
    em: [B, T, V]; mask: [B, T] left-aligned; trans: [V, V].
    candidates: optional per-row, per-position lists of allowed tokens.

  Returns:
    log_z [B], best_tokens [B, T] (0-padded), best_score [B].
  """
  em = np.asarray(em, np.float64)
  trans = np.asarray(trans, np.float64)
  b, t, v = em.shape
  log_z = np.zeros(b)
  best_tokens = np.zeros((b, t), np.int32)
  best_score = np.zeros(b)
  for row in range(b):
    length = int(mask[row].sum())
    if length == 0:
      continue
    allowed = [range(v) if candidates is None else candidates[row][i]
               for i in range(length)]
    paths = np.array(list(itertools.product(*allowed)))  # [P, L]
    scores = em[row, np.arange(length), paths].sum(-1)
    scores += trans[paths[:, :-1], paths[:, 1:]].sum(-1)
    log_z[row] = np.logaddexp.reduce(scores)
    best = int(np.argmax(scores))
    best_tokens[row, :length] = paths[best]
    best_score[row] = scores[best]
  return log_z, best_tokens, best_score


def _gold_score(em, targets, mask, trans):
  """Hand-rolled path score of the targets (float64)."""
  em = np.asarray(em, np.float64)
  out = np.zeros(em.shape[0])
  for row in range(em.shape[0]):
    length = int(mask[row].sum())
    y = targets[row]
    out[row] = sum(em[row, i, y[i]] for i in range(length))
    out[row] += sum(trans[y[i - 1], y[i]] for i in range(1, length))
  return out


def _beam_sets(em, k, targets=None):
  """Per-row, per-position allowed tokens of the (gold-forced) beam."""
  order = np.argsort(-em, axis=-1, kind='stable')
  sets = []
  for row in range(em.shape[0]):
    row_sets = []
    for i in range(em.shape[1]):
      top = list(order[row, i, :k])
      if targets is not None and targets[row, i] not in top:
        top = top[:k - 1] + [targets[row, i]]
      row_sets.append(top)
    sets.append(row_sets)
  return sets


# B=7 rows of T=4 with every length 0..4 (incl. the empty row).
B, T, V, R = 7, 4, 4, 2
LENGTHS = [4, 0, 1, 2, 3, 4, 2]


@pytest.fixture(scope='module')
def small():
  em, e1, e2, targets, mask = _problem(0, B, T, V, R, lengths=LENGTHS)
  return dict(em=em, e1=e1, e2=e2, targets=targets, mask=mask,
              trans=_dense(e1, e2).astype(np.float32))


# ----------------------------------------------------------------------------
# Exact CRF vs enumeration.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('parallel', [False, True])
def test_exact_log_partition_matches_brute_force(small, parallel):
  want, _, _ = _brute_force(small['em'], small['mask'], small['trans'])
  got = exact_log_z(small['em'], small['mask'], small['trans'],
                    parallel=parallel)
  assert got.dtype == jnp.float32 and got.shape == (B,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert got[1] == 0.0  # empty row: log Z of the empty sequence.


@pytest.mark.parametrize('parallel', [False, True])
def test_exact_viterbi_matches_exhaustive_argmax(small, parallel):
  _, want_tokens, want_score = _brute_force(small['em'], small['mask'],
                                            small['trans'])
  tokens, score = exact_viterbi(small['em'], small['mask'], small['trans'],
                                parallel=parallel)
  assert tokens.dtype == jnp.int32 and tokens.shape == (B, T)
  np.testing.assert_array_equal(tokens, want_tokens)  # 0 at padding
  np.testing.assert_allclose(score, want_score, rtol=1e-5, atol=1e-5)


def test_exact_numerator_matches_hand_rolled(small):
  got = crf_ops.exact_numerator(small['em'], small['targets'], small['mask'],
                                small['trans'])
  want = _gold_score(small['em'], small['targets'], small['mask'],
                     small['trans'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Beam CRF.
# ----------------------------------------------------------------------------


def test_full_beam_equals_exact(small):
  args = (small['em'], small['mask'], small['e1'], small['e2'])
  want_z, _, _ = _brute_force(small['em'], small['mask'], small['trans'])
  np.testing.assert_allclose(beam_log_z(*args, beam_size=V), want_z,
                             rtol=1e-5, atol=1e-5)
  want_tokens, want_score = exact_viterbi(small['em'], small['mask'],
                                          small['trans'])
  out = ll_and_viterbi(small['em'], small['targets'], small['mask'],
                       small['e1'], small['e2'], k=V)
  np.testing.assert_array_equal(out['tokens'], want_tokens)
  np.testing.assert_allclose(out['score'], want_score, rtol=1e-5, atol=1e-5)
  # Forcing the gold into a full beam changes nothing.
  np.testing.assert_allclose(out['log_z'], want_z, rtol=1e-5, atol=1e-5)


def test_partial_beam_is_restricted_enumeration_and_lower_bound(small):
  em, mask, targets = small['em'], small['mask'], small['targets']
  trans = small['trans']
  exact, _, _ = _brute_force(em, mask, trans)
  gold = _gold_score(em, targets, mask, trans)
  previous = np.full(B, -np.inf)
  for k in (2, 3):
    got = np.asarray(beam_log_z(em, mask, small['e1'], small['e2'],
                                beam_size=k))
    want, _, _ = _brute_force(em, mask, trans, _beam_sets(em, k))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Nested top-k sets: log Z~ grows with k and never exceeds exact log Z.
    assert np.all(got <= exact + 1e-5)
    assert np.all(got >= previous - 1e-5)
    previous = got

    out = ll_and_viterbi(em, targets, mask, small['e1'], small['e2'], k=k)
    want_forced, _, _ = _brute_force(em, mask, trans,
                                     _beam_sets(em, k, targets))
    np.testing.assert_allclose(out['log_z'], want_forced, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(out['ll'], gold - want_forced, rtol=1e-5,
                               atol=1e-5)
    assert np.all(np.asarray(out['ll']) <= 1e-5)
    # The data is not degenerate: gold is outside the plain beam somewhere.
    assert np.any(np.asarray(out['log_z']) != got)
  # Strict bound somewhere for k < V.
  assert np.any(previous < exact - 1e-3)


def test_partial_beam_viterbi_is_restricted_argmax(small):
  em, mask = small['em'], small['mask']
  _, want_tokens, want_score = _brute_force(em, mask, small['trans'],
                                            _beam_sets(em, 2))
  out = ll_and_viterbi(em, small['targets'], mask, small['e1'], small['e2'],
                       k=2)
  np.testing.assert_array_equal(out['tokens'], want_tokens)
  np.testing.assert_allclose(out['score'], want_score, rtol=1e-5, atol=1e-5)
  # The reported score is the score of the returned path.
  np.testing.assert_allclose(
      numerator(em, out['tokens'], mask, small['e1'], small['e2']),
      out['score'], rtol=1e-5, atol=1e-5)


def test_numerator_hand_computed():
  # V = 3, R = 1: transition a -> b = e1[a] * e2[b].
  e1 = np.array([[1.0], [2.0], [-1.0]], np.float32)
  e2 = np.array([[0.5], [3.0], [1.0]], np.float32)
  em = np.array([[[0.1, 0.2, 0.3],
                  [1.0, 2.0, 3.0],
                  [-1.0, -2.0, -3.0]],
                 [[0.1, 0.2, 0.3],
                  [1.0, 2.0, 3.0],
                  [7.0, 7.0, 7.0]]], np.float32)
  targets = np.array([[2, 0, 1], [1, 1, 2]], np.int32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)  # 0/1 ints are accepted
  # Row 0: em 0.3 + 1.0 - 2.0; trans (2->0) -1*0.5 + (0->1) 1*3.
  # Row 1: em 0.2 + 2.0; trans (1->1) 2*3; position 2 is padding.
  want = [0.3 + 1.0 - 2.0 - 0.5 + 3.0, 0.2 + 2.0 + 6.0]
  np.testing.assert_allclose(numerator(em, targets, mask, e1, e2), want,
                             rtol=1e-6)


def test_padded_rows_equal_unpadded_computation(small):
  # Row 6 has length 2 inside T = 4: equal to the same row computed at T = 2,
  # whatever the padding holds.
  row, length = 6, 2
  args = [small[n] for n in ('em', 'targets', 'mask', 'e1', 'e2')]
  padded = ll_and_viterbi(*args, k=2)
  short = [a[row:row + 1, :length] for a in args[:3]] + args[3:]
  assert short[2].all()
  unpadded = ll_and_viterbi(*short, k=2)
  for name in ('num', 'log_z', 'll', 'score'):
    np.testing.assert_allclose(padded[name][row], unpadded[name][0],
                               rtol=1e-6, err_msg=name)
  np.testing.assert_array_equal(padded['tokens'][row, :length],
                                unpadded['tokens'][0])
  np.testing.assert_array_equal(padded['tokens'][row, length:], 0)
  # Exact path too.
  np.testing.assert_allclose(
      exact_log_z(small['em'], small['mask'], small['trans'])[row],
      exact_log_z(short[0], short[2], small['trans'])[0], rtol=1e-6)


def test_single_position_sequence():
  # T == 1: no transitions; log Z = logsumexp over the beam, Viterbi = argmax.
  em, e1, e2, targets, mask = _problem(1, 3, 1, V, R, lengths=[1, 0, 1])
  out = ll_and_viterbi(em, targets, mask, e1, e2, k=2)
  want_z, _, _ = _brute_force(em, mask, _dense(e1, e2),
                              _beam_sets(em, 2, targets))
  np.testing.assert_allclose(out['log_z'], want_z, rtol=1e-5)
  np.testing.assert_array_equal(out['tokens'][:, 0],
                                np.where(mask[:, 0], em[:, 0].argmax(-1), 0))
  np.testing.assert_allclose(out['score'],
                             np.where(mask[:, 0], em[:, 0].max(-1), 0),
                             rtol=1e-6)


# ----------------------------------------------------------------------------
# Self-transition diagonal: M[a, b] = e1[a] . e2[b] + [a == b] d[a].
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def diag(small):
  """`small` plus a diagonal d [V] large enough to change every result.

  Targets are rewritten so that repeats (where d enters the numerator) occur
  in valid positions of several rows.
  """
  rng = np.random.default_rng(11)
  d = (3.0 * rng.normal(size=V)).astype(np.float32)
  targets = small['targets'].copy()
  targets[0] = [1, 1, 2, 2]
  targets[5] = [3, 3, 3, 0]
  targets[6, :2] = [2, 2]
  trans = _dense(small['e1'], small['e2']) + np.diag(np.float64(d))
  return dict(small, d=d, targets=targets, trans=trans)


def test_low_rank_transitions_with_diagonal(diag):
  got = crf_ops.low_rank_transitions(diag['e1'], diag['e2'], diag['d'])
  assert got.shape == (V, V) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, diag['trans'], rtol=1e-5, atol=1e-5)
  # Off-diagonal entries are the plain low-rank ones.
  plain = crf_ops.low_rank_transitions(diag['e1'], diag['e2'])
  off = ~np.eye(V, dtype=bool)
  np.testing.assert_array_equal(np.asarray(got)[off], np.asarray(plain)[off])


def test_beam_transitions_with_diagonal_hand_built():
  # Beams with repeated ids across positions: d enters exactly where the
  # "from" and "to" candidates are the same token.
  e1 = np.array([[1.0], [2.0], [-1.0]], np.float32)
  e2 = np.array([[0.5], [3.0], [1.0]], np.float32)
  d = np.array([-4.0, 10.0, 0.25], np.float32)
  cand = np.array([[[0, 1], [1, 2], [2, 0]]], np.int32)  # [B=1, T=3, K=2]
  got = np.asarray(crf_ops.beam_transitions(cand, e1, e2, d))
  assert got.shape == (1, 2, 2, 2)
  dense = e1 @ e2.T + np.diag(d)
  want = np.stack([dense[np.ix_(cand[0, t], cand[0, t + 1])]
                   for t in range(2)])[None]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # 1 -> 1 at step 0 and 2 -> 2 at step 1 carry d.
  plain = np.asarray(crf_ops.beam_transitions(cand, e1, e2))
  np.testing.assert_allclose(got - plain, [[[[0, 0], [10.0, 0]],
                                            [[0, 0], [0.25, 0]]]])


def test_numerator_with_diagonal_matches_hand_rolled(diag):
  em, targets, mask = diag['em'], diag['targets'], diag['mask']
  got = numerator(em, targets, mask, diag['e1'], diag['e2'],
                  self_transition=diag['d'])
  want = _gold_score(em, targets, mask, diag['trans'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # d really contributes (the targets repeat inside valid positions).
  plain = numerator(em, targets, mask, diag['e1'], diag['e2'])
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 0.5


@pytest.mark.parametrize('parallel', [False, True])
def test_diagonal_exact_crf_matches_brute_force(diag, parallel):
  want_z, want_tokens, want_score = _brute_force(diag['em'], diag['mask'],
                                                 diag['trans'])
  trans = crf_ops.low_rank_transitions(diag['e1'], diag['e2'], diag['d'])
  np.testing.assert_allclose(
      exact_log_z(diag['em'], diag['mask'], trans, parallel=parallel),
      want_z, rtol=1e-5, atol=1e-5)
  tokens, score = exact_viterbi(diag['em'], diag['mask'], trans,
                                parallel=parallel)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_allclose(score, want_score, rtol=1e-5, atol=1e-5)
  # Non-vacuous: without d the exact answer is different.
  plain_z, _, _ = _brute_force(diag['em'], diag['mask'],
                               _dense(diag['e1'], diag['e2']))
  assert np.abs(plain_z - want_z).max() > 0.1


@pytest.mark.parametrize('parallel', [False, True])
def test_diagonal_full_beam_equals_brute_force(diag, parallel):
  em, mask, targets = diag['em'], diag['mask'], diag['targets']
  want_z, want_tokens, want_score = _brute_force(em, mask, diag['trans'])
  np.testing.assert_allclose(
      beam_log_z(em, mask, diag['e1'], diag['e2'], beam_size=V,
                 parallel=parallel, self_transition=diag['d']),
      want_z, rtol=1e-5, atol=1e-5)
  out = ll_and_viterbi(em, targets, mask, diag['e1'], diag['e2'], k=V,
                       parallel=parallel, d=diag['d'])
  np.testing.assert_allclose(out['log_z'], want_z, rtol=1e-5, atol=1e-5)
  gold = _gold_score(em, targets, mask, diag['trans'])
  np.testing.assert_allclose(out['ll'], gold - want_z, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out['tokens'], want_tokens)
  np.testing.assert_allclose(out['score'], want_score, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('parallel', [False, True])
def test_diagonal_partial_beam_is_restricted_enumeration(diag, parallel):
  em, mask, targets = diag['em'], diag['mask'], diag['targets']
  k = 2
  out = ll_and_viterbi(em, targets, mask, diag['e1'], diag['e2'], k=k,
                       parallel=parallel, d=diag['d'])
  want_forced, _, _ = _brute_force(em, mask, diag['trans'],
                                   _beam_sets(em, k, targets))
  np.testing.assert_allclose(out['log_z'], want_forced, rtol=1e-5, atol=1e-5)
  _, want_tokens, want_score = _brute_force(em, mask, diag['trans'],
                                            _beam_sets(em, k))
  np.testing.assert_array_equal(out['tokens'], want_tokens)
  np.testing.assert_allclose(out['score'], want_score, rtol=1e-5, atol=1e-5)


def test_negative_diagonal_stops_repeats():
  # Emissions favour the same token at every position, so the plain CRF
  # (tiny transitions) repeats it; a strongly negative diagonal forbids any
  # repeat, which no small rank-R E1 E2^T can do for all tokens at once.
  v, t = 5, 6
  rng = np.random.default_rng(3)
  em = rng.normal(scale=0.1, size=(2, t, v)).astype(np.float32)
  em[0, :, 2] += 3.0
  em[1, :, 4] += 3.0
  mask = np.ones((2, t), bool)
  e1 = np.full((v, 1), 0.01, np.float32)
  e2 = np.full((v, 1), 0.01, np.float32)
  plain, _ = crf_ops.viterbi_decode(em, mask, e1, e2, 3)
  assert np.all(np.asarray(plain) == [[2], [4]])
  d = np.full(v, -20.0, np.float32)
  for k in (3, v):
    tokens, _ = crf_ops.viterbi_decode(em, mask, e1, e2, k, self_transition=d)
    tokens = np.asarray(tokens)
    assert np.all(tokens[:, 1:] != tokens[:, :-1]), tokens


# ----------------------------------------------------------------------------
# Parallel (associative scan) == sequential scan on longer sequences.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def long_problem():
  lengths = [33, 31, 17, 1, 0, 8]
  em, e1, e2, targets, mask = _problem(4, 6, 33, 5, R, lengths=lengths,
                                       scale=2.0)
  return em, e1, e2, targets, mask


def test_parallel_equals_scan_long_sequences(long_problem):
  # The exact (shared [V, V] transitions) parallel path is checked against
  # enumeration above; this covers long, odd lengths with per-step beams.
  em, e1, e2, targets, mask = long_problem
  scan = ll_and_viterbi(em, targets, mask, e1, e2, k=3)
  par = ll_and_viterbi(em, targets, mask, e1, e2, k=3, parallel=True)
  for name in ('ll', 'log_z', 'score'):
    np.testing.assert_allclose(par[name], scan[name], rtol=1e-5, atol=1e-5,
                               err_msg=name)
  np.testing.assert_array_equal(par['tokens'], scan['tokens'])
  assert np.all(np.asarray(scan['tokens'])[~mask] == 0)
  assert np.asarray(scan['log_z'])[4] == 0.0  # empty row
  # Viterbi must beat e.g. the per-position argmax path (inside the beam).
  greedy = np.where(mask, em.argmax(-1), 0)
  assert np.all(np.asarray(scan['score']) >= np.asarray(
      numerator(em, greedy, mask, e1, e2)) - 1e-4)
  assert np.any(np.asarray(scan['tokens']) != greedy)  # transitions matter


def test_parallel_equals_scan_long_sequences_with_diagonal(long_problem):
  em, e1, e2, targets, mask = long_problem
  targets = targets.copy()
  targets[:, 5:9] = targets[:, 5:6]  # repeats inside every long row
  d = np.linspace(-3.0, 2.0, em.shape[-1]).astype(np.float32)
  scan = ll_and_viterbi(em, targets, mask, e1, e2, k=3, d=d)
  par = ll_and_viterbi(em, targets, mask, e1, e2, k=3, parallel=True, d=d)
  for name in ('ll', 'log_z', 'score'):
    np.testing.assert_allclose(par[name], scan[name], rtol=1e-5, atol=1e-5,
                               err_msg=name)
  np.testing.assert_array_equal(par['tokens'], scan['tokens'])
  plain = ll_and_viterbi(em, targets, mask, e1, e2, k=3)
  assert np.abs(np.asarray(plain['ll']) - np.asarray(scan['ll'])).max() > 0.1


# ----------------------------------------------------------------------------
# Gradients vs central finite differences (float64).
# ----------------------------------------------------------------------------


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize('parallel', [False, True])
def test_gradients_match_finite_differences(x64, parallel):
  em, e1, e2, targets, mask = _problem(6, 2, 3, 4, R, lengths=[3, 2])
  em, e1, e2 = (np.asarray(x, np.float64) for x in (em, e1, e2))
  # The self-transition diagonal is differentiated too; row 0 repeats a
  # token so d also enters the numerator.
  d = np.array([0.3, -0.5, 1.2, -0.1])
  targets = targets.copy()
  targets[0, 1] = targets[0, 0]

  shapes = [x.shape for x in (em, e1, e2, d)]
  sizes = [int(np.prod(sh)) for sh in shapes]
  theta = np.concatenate([x.ravel() for x in (em, e1, e2, d)])

  def loss(theta):
    parts = jnp.split(theta, np.cumsum(sizes)[:-1])
    em, e1, e2, d = (p.reshape(sh) for p, sh in zip(parts, shapes))
    # beam 2 < V: gold forced in, gradient flows through the beam gather.
    ll = crf_ops.crf_log_likelihood(em, targets, mask, e1, e2, 2,
                                    parallel=parallel, self_transition=d)
    return jnp.sum(ll * jnp.array([1.0, 0.7]))

  grad = jax.jit(jax.grad(loss))(theta)
  assert grad.dtype == jnp.float64
  # Central differences for every coordinate in one vmapped call.
  eps = 1e-6
  steps = eps * np.eye(theta.size)
  batched = jax.jit(jax.vmap(loss))
  numeric = (batched(theta + steps) - batched(theta - steps)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
  assert np.count_nonzero(np.asarray(grad)[sizes[0]:]) > 0  # e1/e2 move
  assert np.count_nonzero(np.asarray(grad)[-sizes[3]:]) > 0  # d moves
  grads = [np.asarray(g).reshape(sh) for g, sh in
           zip(jnp.split(grad, np.cumsum(sizes)[:-1]), shapes)]
  # Padding (row 1, position 2) gets no gradient.
  np.testing.assert_array_equal(grads[0][1, 2], 0.0)


# ----------------------------------------------------------------------------
# bfloat16 emissions.
# ----------------------------------------------------------------------------


def test_bf16_emissions_close_to_fp32(small):
  em, mask = small['em'] * 3.0, small['mask']
  args = (small['targets'], mask, small['e1'], small['e2'])
  em_bf16 = jnp.asarray(em, jnp.bfloat16)
  em_rounded = np.asarray(em_bf16.astype(jnp.float32))
  got = ll_and_viterbi(em_bf16, *args, k=3)
  assert got['ll'].dtype == jnp.float32 and got['score'].dtype == jnp.float32
  assert np.all(np.isfinite(got['ll'])) and np.all(np.isfinite(got['score']))
  # Same values in f32: the bf16 path loses nothing beyond the input
  # rounding (all accumulation happens in float32).
  rounded = ll_and_viterbi(em_rounded, *args, k=3)
  for name in ('ll', 'score'):
    np.testing.assert_allclose(got[name], rounded[name], rtol=1e-5,
                               atol=1e-5)
  np.testing.assert_array_equal(got['tokens'], rounded['tokens'])
  # And close to the unrounded computation (bf16 has ~3 significant digits).
  exact = ll_and_viterbi(em, *args, k=3)
  np.testing.assert_allclose(got['ll'], exact['ll'], rtol=0.02, atol=0.1)


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------

_EM = np.zeros((2, 3, 4), np.float32)
_MASK = np.ones((2, 3), bool)
_TGT = np.zeros((2, 3), np.int32)
_E = np.zeros((4, 2), np.float32)
_M = np.zeros((4, 4), np.float32)

_BAD_CASES = {
    'emissions_rank': (lambda: crf_ops.beam_log_partition(
        _EM[0], _MASK, _E, _E, 2), r'`emissions` must have shape \[B, T, V\]'),
    'empty_T': (lambda: crf_ops.beam_log_partition(
        _EM[:, :0], _MASK[:, :0], _E, _E, 2), r'T == 0'),
    'empty_T_exact': (lambda: crf_ops.exact_log_partition(
        _EM[:, :0], _MASK[:, :0], _M), r'T == 0'),
    'int_emissions': (lambda: crf_ops.exact_log_partition(
        _TGT[..., None], _MASK, _M[:1, :1]), r'`emissions` must be a float'),
    'mask_shape': (lambda: crf_ops.beam_log_partition(
        _EM, _MASK[:, :2], _E, _E, 2), r'`mask` shape \(2, 2\)'),
    'mask_shape_viterbi': (lambda: crf_ops.viterbi_decode(
        _EM, _MASK[:1], _E, _E, 2), r'`mask` shape \(1, 3\)'),
    'targets_shape': (lambda: crf_ops.crf_numerator(
        _EM, _TGT[:, :2], _MASK, _E, _E), r'`targets` shape \(2, 2\)'),
    'targets_shape_beam': (lambda: crf_ops.beam_log_partition(
        _EM, _MASK, _E, _E, 2, targets=_TGT.T), r'`targets` shape \(3, 2\)'),
    'float_targets': (lambda: crf_ops.crf_numerator(
        _EM, _TGT.astype(np.float32), _MASK, _E, _E),
                      r'`targets` must be an integer'),
    'factor_shapes_differ': (lambda: crf_ops.beam_log_partition(
        _EM, _MASK, _E, np.zeros((4, 3), np.float32), 2),
                             r'same shape.*\(4, 2\).*\(4, 3\)'),
    'factor_vocab': (lambda: crf_ops.crf_numerator(
        _EM, _TGT, _MASK, _E[:3], _E[:3]), r'vocab size 3.*V = 4'),
    'factor_rank': (lambda: crf_ops.viterbi_decode(
        _EM, _MASK, _E[0], _E[0], 2), r'`e1` and `e2` must have shape'),
    'beam_zero': (lambda: crf_ops.beam_log_partition(
        _EM, _MASK, _E, _E, 0), r'`beam_size`.*got beam_size = 0'),
    'beam_too_big': (lambda: crf_ops.viterbi_decode(
        _EM, _MASK, _E, _E, 5), r'`beam_size`.*V = 4.*beam_size = 5'),
    'beam_not_int': (lambda: crf_ops.beam_log_partition(
        _EM, _MASK, _E, _E, 2.0), r'`beam_size` must be a static Python int'),
    'transitions_shape': (lambda: crf_ops.exact_viterbi_decode(
        _EM, _MASK, _M[:3]), r'`transitions` must have shape \[V, V\]'),
    'self_transition_shape': (lambda: crf_ops.beam_log_partition(
        _EM, _MASK, _E, _E, 2, self_transition=np.zeros(3, np.float32)),
                              r'`self_transition` must have shape \[V\].*'
                              r'\(4,\).*\(3,\)'),
    'self_transition_2d_num': (lambda: crf_ops.crf_numerator(
        _EM, _TGT, _MASK, _E, _E, self_transition=_M),
                               r'`self_transition`.*got shape \(4, 4\)'),
    'self_transition_viterbi': (lambda: crf_ops.viterbi_decode(
        _EM, _MASK, _E, _E, 2, self_transition=np.zeros(5, np.float32)),
                                r'`self_transition`.*\(5,\)'),
    'self_transition_dense': (lambda: crf_ops.low_rank_transitions(
        _E, _E, np.zeros(2, np.float32)), r'`self_transition`.*\(2,\)'),
    'self_transition_beam_trans': (lambda: crf_ops.beam_transitions(
        np.zeros((1, 2, 2), np.int32), _E, _E, np.zeros(1, np.float32)),
                                   r'`self_transition`.*\(1,\)'),
    'self_transition_int': (lambda: crf_ops.crf_log_likelihood(
        _EM, _TGT, _MASK, _E, _E, 2, self_transition=np.zeros(4, np.int32)),
                            r'`self_transition` must be a float'),
    'transitions_shape_num': (lambda: crf_ops.exact_numerator(
        _EM, _TGT, _MASK, _M.T[:, :2]), r'`transitions`.*\(4, 2\)'),
}


@pytest.mark.parametrize('case', sorted(_BAD_CASES))
def test_bad_input_raises(case):
  fn, pattern = _BAD_CASES[case]
  with pytest.raises(ValueError, match=pattern):
    fn()


def test_checks_work_under_jit():
  fn = jax.jit(functools.partial(crf_ops.beam_log_partition, beam_size=9))
  with pytest.raises(ValueError, match='beam_size'):
    fn(_EM, _MASK, _E, _E)
  fn = jax.jit(crf_ops.crf_numerator)
  with pytest.raises(ValueError, match='`mask` shape'):
    fn(_EM, _TGT, _MASK[:, :1], _E, _E)
