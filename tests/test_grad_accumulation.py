"""Gradient accumulation is one big batch (t5x-style loss normalisation).

The micro-batches deliberately hold very different numbers of target tokens:
with equal token counts, averaging the micro-batch means equally would be
right by accident and these tests could not fail.
"""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import train

BATCH, LENGTH = 8, 24


def tiny_model(**overrides):
  gin.clear_config()
  try:
    train.parse_gin(["narlm/gin/tiny_cpu.gin"], ["MODEL_DIR='/unused'", "DROPOUT_RATE=0.0"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  for name, value in overrides.items():
    setattr(model, name, value)
  # Plain SGD at a constant, non-zero rate from step 1: every step moves the
  # parameters, and the update is linear in the gradient.
  model.optimizer_def = optax.sgd(0.5)
  return model


def uneven_batch(model):
  """Rows 0-3 (micro-batch 1 of 2) have 2-token targets, rows 4-7 have 18."""
  rng = np.random.default_rng(0)
  inputs = rng.integers(1000, 2000, size=(BATCH, LENGTH)).astype(np.int32)
  targets = np.zeros((BATCH, LENGTH), np.int32)
  for row in range(BATCH):
    n = 2 if row < BATCH // 2 else 18
    targets[row, :n] = rng.integers(1000, 2000, size=n)
    targets[row, n:n + 2] = model.eos_id
  weights = (targets != model.pad_id).astype(np.float32)
  return {"encoder_input_tokens": jnp.asarray(inputs),
          "decoder_target_tokens": jnp.asarray(targets),
          "decoder_loss_weights": jnp.asarray(weights)}


def train_params(model, grad_accum_steps, steps=3):
  trainer = train.Trainer(model, grad_accum_steps=grad_accum_steps, seed=0)
  state = trainer.init_state((BATCH, LENGTH))
  initial = jax.device_get(state["params"])
  batch = uneven_batch(model)
  step = jax.jit(trainer.train_step)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return initial, jax.device_get(state["params"]), losses


def max_relative_difference(a, b):
  """||a - b|| / ||b|| over the whole parameter tree."""
  diff = optax.global_norm(jax.tree_util.tree_map(lambda x, y: np.asarray(x) - np.asarray(y), a, b))
  return float(diff / (optax.global_norm(b) + 1e-12))


@pytest.mark.parametrize("loss_normalizing_factor",
                         [None, pytest.param(100.0, marks=pytest.mark.slow)])
def test_accumulated_micro_batches_update_like_the_whole_batch(loss_normalizing_factor):
  model = tiny_model(loss_normalizing_factor=loss_normalizing_factor)
  initial, full, full_losses = train_params(model, 1)
  _, accumulated, accumulated_losses = train_params(model, 2)
  moved = max_relative_difference(full, initial)
  assert moved > 1e-3  # three real updates happened
  assert max_relative_difference(accumulated, full) < 1e-5
  np.testing.assert_allclose(accumulated_losses, full_losses, rtol=1e-5)
  assert len(set(full_losses)) == 3  # the loss moves from step to step


@pytest.mark.slow  # ~60 s: CI's slow pass
def test_equal_weighting_of_micro_batch_means_would_be_caught():
  """The deliberate break: averaging the two micro-batches' per-token means
  (what narlm did before) gives a gradient far from the whole batch's, far
  outside the tolerance used above."""
  model = tiny_model()
  trainer = train.Trainer(model, seed=0)
  params = trainer.init_state((BATCH, LENGTH))["params"]
  batch = uneven_batch(model)
  rng = jax.random.PRNGKey(0)

  def grads_and_tokens(b):
    (_, metrics), g = jax.value_and_grad(lambda p: model.loss_fn(p, b, rng), has_aux=True)(params)
    return g, float(metrics["num_tokens"].total)

  whole, _ = grads_and_tokens(batch)
  (g1, n1), (g2, n2) = [
      grads_and_tokens(jax.tree_util.tree_map(lambda x, i=i: x[i * 4:(i + 1) * 4], batch))
      for i in range(2)]
  assert n2 > 4 * n1  # the micro-batches really are uneven
  equal_mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g1, g2)
  assert max_relative_difference(equal_mean, whole) > 0.05
  # Token-weighted means are the whole batch's gradient (what Trainer does).
  weighted = jax.tree_util.tree_map(lambda a, b: (n1 * a + n2 * b) / (n1 + n2), g1, g2)
  assert max_relative_difference(weighted, whole) < 1e-5


def test_loss_normalizing_factor_is_validated():
  with pytest.raises(ValueError, match="loss_normalizing_factor must be None or > 0"):
    gin.clear_config()
    try:
      train.parse_gin(["narlm/gin/tiny_cpu.gin"],
                      ["MODEL_DIR='/unused'", "models.NagBertModel.loss_normalizing_factor=0.0"])
      gin.query_parameter("%MODEL").scoped_configurable_fn()
    finally:
      gin.clear_config()
