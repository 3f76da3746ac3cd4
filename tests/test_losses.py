import numpy as np
import jax
import jax.numpy as jnp
import pytest

from narlm import losses


def _rand(seed=0, b=2, t=5, v=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
  weights = np.ones((b, t), np.float32)
  weights[1, 3:] = 0.0
  return logits, targets, weights


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_token_nll_matches_numpy():
  logits, targets, weights = _rand()
  got = np.asarray(losses.token_nll(logits, targets, weights))
  lp = _log_softmax(logits)
  want = -np.take_along_axis(lp, targets[..., None], -1)[..., 0] * weights
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[1, 3:].sum() == 0.0


def test_label_smoothing_matches_smoothed_cross_entropy():
  logits, targets, weights = _rand(1)
  eps = 0.1
  v = logits.shape[-1]
  got = np.asarray(losses.token_nll(logits, targets, weights, label_smoothing=eps))
  dist = np.full(logits.shape, eps / v, np.float32)
  np.put_along_axis(dist, targets[..., None], 1 - eps + eps / v, -1)
  want = -(dist * _log_softmax(logits)).sum(-1) * weights
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unlikelihood_brute_force():
  logits, targets, weights = _rand(2, b=2, t=6, v=5)
  targets[0, 2] = targets[0, 3]  # equal neighbours are not penalised
  window = 2
  got = np.asarray(losses.context_unlikelihood(logits, targets, weights, window))
  probs = np.exp(_log_softmax(logits))
  want = np.zeros(targets.shape)
  for b in range(2):
    for i in range(6):
      if not weights[b, i]:
        continue
      for j in range(max(0, i - window), min(6, i + window + 1)):
        if j != i and weights[b, j] and targets[b, j] != targets[b, i]:
          want[b, i] -= np.log(1 - probs[b, i, targets[b, j]])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_nag_loss_combines_terms_per_token():
  logits, targets, weights = _rand(3)
  crf_ll = jnp.array([-3.0, -5.0])
  loss, aux = losses.nag_loss(logits, targets, weights, crf_ll, token_nll_weight=0.5)
  n = weights.sum()
  tok = np.asarray(losses.token_nll(logits, targets, weights)).sum() / n
  np.testing.assert_allclose(aux["crf_nll"], 8.0 / n, rtol=1e-6)
  np.testing.assert_allclose(aux["token_nll"], tok, rtol=1e-6)
  np.testing.assert_allclose(loss, 8.0 / n + 0.5 * tok, rtol=1e-6)
  loss_no_crf, aux_no_crf = losses.nag_loss(logits, targets, weights, None)
  np.testing.assert_allclose(loss_no_crf, tok, rtol=1e-6)
  assert "crf_nll" not in aux_no_crf
  loss_ul, aux_ul = losses.nag_loss(logits, targets, weights, crf_ll, unlikelihood_weight=0.3)
  np.testing.assert_allclose(loss_ul, loss + 0.3 * aux_ul["unlikelihood"], rtol=1e-6)


def test_nag_loss_gradients_are_finite_and_jittable():
  logits, targets, weights = _rand(4)
  f = jax.jit(lambda l: losses.nag_loss(l, targets, weights, l.sum((1, 2)) * 0.0,
                                        unlikelihood_weight=1.0)[0])
  g = jax.grad(f)(jnp.asarray(logits))
  assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(targets=np.zeros((2, 4), np.int32)), "targets shape"),
    (dict(weights=np.ones((2, 4), np.float32)), "weights shape"),
    (dict(crf=jnp.zeros((3,))), "crf_log_likelihood"),
    (dict(label_smoothing=1.0), "label_smoothing"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
  logits, targets, weights = _rand(5)
  with pytest.raises(ValueError, match=match):
    losses.nag_loss(logits, kwargs.get("targets", targets), kwargs.get("weights", weights),
                    kwargs.get("crf"), label_smoothing=kwargs.get("label_smoothing", 0.0))
