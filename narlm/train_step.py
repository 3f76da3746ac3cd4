"""The train step: narlm.train.Trainer holds the device mesh, the shardings,
the jitted train/eval steps (with gradient accumulation) and the train
state; narlm.train.train runs the loop around it."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from narlm import partitioning

PyTree = Any


# -------------------------------------------------------------------- state
def dropout_root_key(seed: int) -> jax.Array:
  """The root of the dropout stream (step s uses fold_in(root, s)).

  Derived from PRNGKey(seed) by a fold_in with a fixed tag, so it is never
  the init key of another seed (PRNGKey(seed + 1) once was)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), DROPOUT_STREAM)


DROPOUT_STREAM = 0x64726F70  # "drop"


class Trainer:
  """Holds the mesh, shardings, jitted steps and the train state."""

  def __init__(self, model, *, num_model_partitions: int = 1,
               logical_axis_rules: Optional[partitioning.LogicalRules] = None,
               grad_accum_steps: int = 1, seed: int = 0):
    if model.optimizer_def is None:
      raise ValueError("the model has no optimizer_def; bind "
                       "NagBertModel.optimizer_def = @optimizers.create_optimizer()")
    if grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    self.model = model
    self.optimizer = model.optimizer_def
    self.rules = list(logical_axis_rules or partitioning.standard_logical_axis_rules())
    self.mesh = partitioning.create_mesh(num_model_partitions)
    self.grad_accum_steps = grad_accum_steps
    self.seed = seed
    self.state_shardings = None
    self._train_step = None
    self._eval_step = None
    self._predictors: dict[tuple, Any] = {}

  # -- initialisation
  def _init_fn(self, batch_shape: tuple[int, int]):
    input_shapes = {"encoder_input_tokens": batch_shape}

    def init(r):
      params = self.model.get_initial_variables(r, input_shapes)["params"]
      return {"step": jnp.zeros((), jnp.int32), "params": params,
              "opt_state": self.optimizer.init(params)}
    return init

  def _set_shardings(self, batch_shape: tuple[int, int]) -> None:
    """state_shardings from the parameters' logical axis names (shapes only)."""
    rng = jax.random.PRNGKey(self.seed)
    input_shapes = {"encoder_input_tokens": batch_shape}
    abstract = jax.eval_shape(lambda r: self.model.get_initial_variables(r, input_shapes), rng)
    if "params_axes" not in abstract:
      raise ValueError("the model's variables have no 'params_axes': every parameter needs "
                       "logical axis names")
    logical = partitioning.logical_param_specs(abstract["params_axes"])
    partitioning.check_params_have_axes(abstract["params"], logical)
    self.logical_param_specs = logical
    param_shardings = partitioning.param_shardings(logical, self.mesh, self.rules)
    opt_shardings = partitioning.optimizer_state_shardings(
        self.optimizer, abstract["params"], param_shardings, self.mesh)
    self.state_shardings = {
        "step": partitioning.replicated(self.mesh),
        "params": param_shardings,
        "opt_state": opt_shardings,
    }

  def init_state(self, batch_shape: tuple[int, int]) -> PyTree:
    """Sharded {'step', 'params', 'opt_state'} from a fresh initialisation."""
    self._set_shardings(batch_shape)
    with self.mesh:
      return jax.jit(self._init_fn(batch_shape), out_shardings=self.state_shardings)(
          jax.random.PRNGKey(self.seed))

  def abstract_state(self, batch_shape) -> PyTree:
    """ShapeDtypeStructs with shardings (the orbax restore target); allocates
    nothing, so a resume restores straight into the sharded state."""
    if self.state_shardings is None:
      self._set_shardings(batch_shape)
    shapes = jax.eval_shape(self._init_fn(batch_shape), jax.random.PRNGKey(self.seed))
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
        self.state_shardings)

  def put_params(self, state: PyTree, params: PyTree) -> PyTree:
    """Replaces the parameters (e.g. warm start), laid out as the rules say."""
    params = jax.device_put(params, self.state_shardings["params"])
    return dict(state, params=params)

  # -- steps
  def _grads(self, params, batch, rng):
    """(loss, clu metrics, gradients) of one optimizer step's batch.

    With grad_accum_steps = k the batch is split into k micro-batches and the
    result is exactly that of the whole batch (up to float rounding): with a
    constant `loss_normalizing_factor` the micro-batch losses and gradients
    are summed (what t5x's trainer does); with the default per-token
    normalisation each micro-batch's mean is weighted by its share of the
    batch's real tokens (the model reports them as NORMALIZER_METRIC), since
    averaging micro-batch means equally would over-weight short micro-batches.
    """
    def loss(p, b, r):
      return self.model.loss_fn(p, b, r)

    if self.grad_accum_steps == 1:
      (l, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, rng)
      return l, metrics, grads
    k = self.grad_accum_steps
    micro = jax.tree_util.tree_map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)
    per_token = getattr(self.model, "loss_normalizing_factor", None) is None
    normalizer_metric = getattr(self.model, "NORMALIZER_METRIC", "num_tokens")

    def body(carry, xs):
      b, i = xs
      (l, m), g = jax.value_and_grad(loss, has_aux=True)(params, b, jax.random.fold_in(rng, i))
      if per_token:
        if normalizer_metric not in m:
          raise KeyError(f"gradient accumulation needs the model's loss_fn to report its "
                         f"normaliser as metric {normalizer_metric!r} (got {sorted(m)})")
        weight = m[normalizer_metric].total.astype(jnp.float32)
      else:
        weight = jnp.float32(1.0)
      acc_g, acc_l, acc_w = carry
      acc_g = jax.tree_util.tree_map(lambda a, x: a + weight * x, acc_g, g)
      return (acc_g, acc_l + weight * l, acc_w + weight), m

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (grads, total_loss, total_weight), stacked = jax.lax.scan(
        body, (zeros, jnp.float32(0.0), jnp.float32(0.0)), (micro, jnp.arange(k)))
    if per_token:  # sum_m N_m * S_m / N_m / sum_m N_m = S / N, as for the whole batch
      total_weight = jnp.maximum(total_weight, 1.0)
      grads = jax.tree_util.tree_map(lambda g: g / total_weight, grads)
      total_loss = total_loss / total_weight
    # clu Average metrics are (total, count) pytrees: summing the stacked
    # micro-batch values merges them exactly.
    metrics = jax.tree_util.tree_map(lambda x: x.sum(axis=0), stacked)
    return total_loss, metrics, grads

  def train_step(self, state, batch):
    import optax  # pylint: disable=g-import-not-at-top
    rng = jax.random.fold_in(dropout_root_key(self.seed), state["step"])
    loss, metrics, grads = self._grads(state["params"], batch, rng)
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {k: v.compute() for k, v in metrics.items()}
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["loss"] = loss
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  def compiled_train_step(self):
    if self._train_step is None:
      batch_sharding = partitioning.data_sharding(self.mesh)
      self._train_step = jax.jit(
          self.train_step, in_shardings=(self.state_shardings, batch_sharding),
          out_shardings=(self.state_shardings, partitioning.replicated(self.mesh)),
          donate_argnums=(0,))
    return self._train_step

  def compiled_eval_step(self):
    if self._eval_step is None:
      def eval_step(params, batch):
        _, metrics = self.model.eval_fn(params, batch)
        return metrics
      self._eval_step = jax.jit(
          eval_step, in_shardings=(self.state_shardings["params"],
                                   partitioning.data_sharding(self.mesh)))
    return self._eval_step

  def predictor(self, width: int, batch_size: int):
    """The `narlm.predictor.Predictor` of training-time evaluation for rows of
    `width` positions and batches of `batch_size` (the one compare, distill
    and serve decode with); kept, with its compiled programs, across
    evaluations: set its `params` before use."""
    key = (width, batch_size)
    if key not in self._predictors:
      from narlm import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
      self._predictors[key] = predictor_lib.Predictor(self.model, None, max_length=width,
                                                      batch_buckets=(batch_size,))
    return self._predictors[key]

  def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> Mapping[str, jax.Array]:
    """Per-host numpy batch -> global arrays split over the 'data' axis."""
    sharding = partitioning.data_sharding(self.mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
