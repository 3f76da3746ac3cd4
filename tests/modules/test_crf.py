"""Tests of narlm.modules.crf.DynamicCRF (parameters, axes, wiring to crf_ops).

The maths itself is tested against enumeration in tests/test_crf_ops.py; here
we check the module owns the right parameters and forwards to crf_ops.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import partitioning

from narlm import crf_ops
from narlm.modules.crf import DynamicCRF

B, T, V = 3, 5, 6


@pytest.fixture(scope='module', autouse=True)
def _fast_compiles():
  """Tiny programs: skip most XLA optimisation passes (restored after)."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  emissions = rng.normal(size=(B, T, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  mask = np.arange(T)[None, :] < np.array([5, 3, 0])[:, None]
  return emissions, targets, mask


def _init(module, batch=None):
  # Parameters are created in setup(), so initialising through the cheap
  # `transitions` method needs no example input and no forward pass.
  del batch
  return module.init(jax.random.PRNGKey(0), method=DynamicCRF.transitions)


def test_parameters_and_logical_axes(batch):
  module = DynamicCRF(vocab_size=V, rank=4, param_dtype=jnp.bfloat16)
  variables = _init(module, batch)
  assert set(variables) == {'params', 'params_axes'}
  for name in ('E1', 'E2'):
    assert variables['params'][name].shape == (V, 4)
    assert variables['params'][name].dtype == jnp.bfloat16
  # What t5x's partitioner reads: logical PartitionSpecs per parameter.
  specs = partitioning.get_axis_names(variables['params_axes'])
  assert dict(specs) == {
      'E1': jax.sharding.PartitionSpec('vocab', 'crf_rank'),
      'E2': jax.sharding.PartitionSpec('vocab', 'crf_rank'),
  }
  # The two factors are initialised independently.
  assert not np.array_equal(variables['params']['E1'],
                            variables['params']['E2'])


def test_initial_transition_scores_are_small():
  module = DynamicCRF(vocab_size=128, rank=32)
  variables = module.init(jax.random.PRNGKey(1), method=DynamicCRF.transitions)
  trans = np.asarray(module.apply(variables, method=DynamicCRF.transitions))
  assert trans.shape == (128, 128)
  # std(E1 E2^T) ~ 1/sqrt(rank) = 0.18: small against emission log-prob gaps,
  # yet nonzero (a zero init would give zero gradients to both factors).
  assert 0.1 < trans.std() < 0.3
  assert np.abs(trans).max() < 2.0


def test_log_likelihood_matches_crf_ops(batch):
  emissions, targets, mask = batch
  # beam_size > vocab_size is clipped to the full vocabulary, i.e. the exact
  # CRF with transitions E1 E2^T.
  module = DynamicCRF(vocab_size=V, rank=4, beam_size=64)
  variables = _init(module, batch)
  params = variables['params']
  ll = jax.jit(module.apply)(variables, emissions, targets, mask)
  assert ll.shape == (B,) and ll.dtype == jnp.float32

  @jax.jit
  def reference(e1, e2):
    trans = crf_ops.low_rank_transitions(e1, e2)
    exact = (crf_ops.exact_numerator(emissions, targets, mask, trans) -
             crf_ops.exact_log_partition(emissions, mask, trans))
    beam2 = crf_ops.crf_log_likelihood(emissions, targets, mask, e1, e2, 2)
    return exact, beam2

  exact, want = reference(params['E1'], params['E2'])
  np.testing.assert_allclose(ll, exact, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(ll)[:2] < 0) and ll[2] == 0.0  # empty row

  # A real beam (k = 2 < V), parallel path: equals crf_ops with the same k.
  small_beam = DynamicCRF(vocab_size=V, rank=4, beam_size=2, parallel=True)
  ll2 = jax.jit(small_beam.apply)(variables, emissions, targets, mask)
  np.testing.assert_allclose(ll2, want, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(ll2) >= np.asarray(ll) - 1e-5)  # smaller Z~

  # Gradients reach both factors.
  grads = jax.jit(jax.grad(lambda p: module.apply(
      {'params': p}, emissions, targets, mask).sum()))(params)
  assert all(np.all(np.isfinite(g)) for g in grads.values())
  assert all(np.any(np.asarray(g) != 0) for g in grads.values())


def test_decode_under_jit(batch):
  emissions, _, mask = batch
  module = DynamicCRF(vocab_size=V, rank=4, beam_size=3)
  # Initialising through `decode` gives the same parameters.
  variables = jax.jit(functools.partial(module.init, method=DynamicCRF.decode))(
      jax.random.PRNGKey(0), emissions, mask)
  jax.tree.map(np.testing.assert_array_equal, variables['params'],
               _init(module)['params'])
  decode = jax.jit(
      lambda v, e, m: module.apply(v, e, m, method=DynamicCRF.decode))
  tokens, scores = decode(variables, emissions, mask)
  assert tokens.shape == (B, T) and tokens.dtype == jnp.int32
  assert scores.shape == (B,)
  want_tokens, want_scores = jax.jit(crf_ops.viterbi_decode, static_argnums=4)(
      emissions, mask, variables['params']['E1'], variables['params']['E2'], 3)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(tokens)[~mask], 0)


def test_bf16_compute_dtype(batch):
  emissions, targets, mask = batch
  module = DynamicCRF(vocab_size=V, rank=4, beam_size=3, dtype=jnp.bfloat16)
  variables = _init(module, batch)
  ll = jax.jit(module.apply)(variables, jnp.asarray(emissions, jnp.bfloat16),
                             targets, mask)
  assert ll.dtype == jnp.float32 and np.all(np.isfinite(ll))
  # Same module in float32 (same parameters).
  want = jax.jit(module.clone(dtype=jnp.float32).apply)(
      variables, emissions, targets, mask)
  np.testing.assert_allclose(ll, want, rtol=0.02, atol=0.05)


def test_wrong_vocab_size_raises(batch):
  emissions, targets, mask = batch
  module = DynamicCRF(vocab_size=V + 1, rank=4)
  with pytest.raises(ValueError, match='vocab size 7.*V = 6'):
    jax.jit(module.init)(jax.random.PRNGKey(0), emissions, targets, mask)


# ----------------------------------------------------------------------------
# Self-transition diagonal.
# ----------------------------------------------------------------------------

EXEMPT = (0, 2)  # e.g. pad and eos


def _with_diagonal(variables, d):
  params = dict(variables['params'])
  params['self_transition'] = jnp.asarray(d, jnp.float32)
  return {'params': params}


def test_self_transition_parameter_axes_and_zero_init():
  module = DynamicCRF(vocab_size=V, rank=4, self_transition=True,
                      self_transition_exempt_ids=EXEMPT)
  variables = _init(module)
  assert set(variables['params']) == {'E1', 'E2', 'self_transition'}
  d = variables['params']['self_transition']
  assert d.shape == (V,) and d.dtype == jnp.float32
  np.testing.assert_array_equal(d, 0.0)
  specs = partitioning.get_axis_names(variables['params_axes'])
  assert specs['self_transition'] == jax.sharding.PartitionSpec('vocab')
  # Same E1/E2 as without the diagonal, and at init the same transitions.
  plain = DynamicCRF(vocab_size=V, rank=4)
  plain_vars = _init(plain)
  assert set(plain_vars['params']) == {'E1', 'E2'}
  np.testing.assert_array_equal(
      module.apply(variables, method=DynamicCRF.transitions),
      plain.apply(plain_vars, method=DynamicCRF.transitions))


def test_self_transition_exempt_ids_fixed_at_zero(batch):
  emissions, targets, mask = batch
  targets = targets.copy()
  targets[0, :4] = [1, 1, 2, 2]  # a repeat of a free id and of an exempt id
  module = DynamicCRF(vocab_size=V, rank=4, beam_size=3, self_transition=True,
                      self_transition_exempt_ids=EXEMPT)
  d = np.array([5.0, -2.0, 7.0, 1.5, -0.5, 3.0], np.float32)
  variables = _with_diagonal(_init(module), d)
  params = variables['params']
  masked = d.copy()
  masked[list(EXEMPT)] = 0.0

  trans = np.asarray(module.apply(variables, method=DynamicCRF.transitions))
  low_rank = np.asarray(crf_ops.low_rank_transitions(params['E1'],
                                                     params['E2']))
  np.testing.assert_allclose(trans, low_rank + np.diag(masked), rtol=1e-6,
                             atol=1e-6)
  # The exempt diagonal entries are exactly the low-rank ones.
  for i in EXEMPT:
    assert trans[i, i] == low_rank[i, i]

  @jax.jit
  def reference(params):
    args = (emissions, targets, mask, params['E1'], params['E2'], 3)
    return (crf_ops.crf_log_likelihood(*args, self_transition=masked),
            crf_ops.crf_log_likelihood(*args, self_transition=d))

  want, unmasked = reference(params)
  ll = jax.jit(module.apply)(variables, emissions, targets, mask)
  np.testing.assert_allclose(ll, want, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(ll) - np.asarray(unmasked)).max() > 0.1
  tokens, scores = jax.jit(lambda v: module.apply(
      v, emissions, mask, method=DynamicCRF.decode))(variables)
  want_tokens, want_scores = jax.jit(
      crf_ops.viterbi_decode, static_argnums=4)(
          emissions, mask, params['E1'], params['E2'], 3,
          self_transition=masked)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5)

  # The gradient reaches d at the free ids and is exactly 0 at exempt ones.
  grads = jax.jit(jax.grad(lambda p: module.apply(
      {'params': p}, emissions, targets, mask).sum()))(params)
  g = np.asarray(grads['self_transition'])
  np.testing.assert_array_equal(g[list(EXEMPT)], 0.0)
  free = [i for i in range(V) if i not in EXEMPT]
  assert np.all(g[free] != 0.0), g


def test_self_transition_is_learned_from_zero():
  # Zero init is not a stuck point: one gradient step moves d, towards
  # penalising a token that never repeats in the data.
  v = 4
  rng = np.random.default_rng(5)
  emissions = rng.normal(size=(2, 5, v)).astype(np.float32)
  targets = np.array([[1, 3, 1, 3, 1], [3, 1, 3, 1, 3]], np.int32)
  mask = np.ones((2, 5), bool)
  module = DynamicCRF(vocab_size=v, rank=2, self_transition=True)
  params = module.init(jax.random.PRNGKey(0),
                       method=DynamicCRF.transitions)['params']
  grad = jax.grad(lambda p: -module.apply(
      {'params': p}, emissions, targets, mask).sum())(params)
  # Loss gradient > 0 means gradient descent lowers d for tokens 1 and 3.
  assert np.all(np.asarray(grad['self_transition'])[[1, 3]] > 0)


def test_bad_exempt_ids_raise():
  module = DynamicCRF(vocab_size=V, rank=4, self_transition=True,
                      self_transition_exempt_ids=(1, V))
  with pytest.raises(ValueError, match=r'self_transition_exempt_ids \[6\]'):
    _init(module)
