"""Device mesh and logical-axis partitioning (t5x-style, on flax's API).

Parameters carry logical axis names (the `params_axes` collection written by
`flax.linen.partitioning.param_with_axes`); a list of rules maps each logical
name to a mesh axis ('data', 'model') or None (replicated). The rules here are
t5x's standard rules plus narlm's own names, so the same model shards the
same way under t5x's PjitPartitioner and under narlm's trainer.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, Optional[str]]]


def standard_logical_axis_rules() -> list[tuple[str, Optional[str]]]:
  """t5x's standard 1-D (data) x 1-D (model) rules plus narlm's axis names.

  Embedding/LN axes stay replicated; vocab, mlp, heads are split over the
  model axis (Megatron-style tensor parallelism); the batch over data.
  """
  return [
      ("batch", "data"),
      ("vocab", "model"),
      ("embed", None),
      ("mlp", "model"),
      ("heads", "model"),
      ("kv", None),
      ("joined_kv", "model"),
      ("length", None),
      # narlm's own names: small tables that are cheaper replicated.
      ("crf_rank", None),
      ("type_vocab", None),
      ("tag_classes", None),
      ("length_classes", None),  # the canvas model's length head: small, replicated
      ("abspos_buckets", None),
      ("layers", None),
  ]


def create_mesh(num_model_partitions: int = 1,
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh over all (global) devices."""
  devices = list(jax.devices() if devices is None else devices)
  if num_model_partitions < 1 or len(devices) % num_model_partitions:
    raise ValueError(f"num_model_partitions={num_model_partitions} must divide the "
                     f"device count {len(devices)}")
  grid = np.asarray(devices).reshape(len(devices) // num_model_partitions, num_model_partitions)
  return Mesh(grid, ("data", "model"))


def logical_param_specs(params_axes: Any) -> Any:
  """The `params_axes` collection -> tree of logical PartitionSpecs."""
  return flax.core.unfreeze(flax_partitioning.get_axis_names(params_axes))


def check_params_have_axes(params: Any, logical_specs: Any) -> None:
  """Every parameter must have axis names, as t5x's partitioner requires."""
  params_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  spec_paths = {
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
          logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  }
  missing = sorted(params_paths - spec_paths)
  if missing:
    raise ValueError(f"parameters without logical axis names: {missing[:10]}")


def param_shardings(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Logical specs -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def optimizer_state_shardings(optimizer: optax.GradientTransformation, params_shapes: Any,
                              params_shardings: Any, mesh: Mesh) -> Any:
  """Optimizer state shards like the parameter it belongs to; the rest
  (counts, scalars) is replicated."""
  state_shapes = jax.eval_shape(optimizer.init, params_shapes)
  replicated_sharding = NamedSharding(mesh, PartitionSpec())

  def leaf_sharding(state_leaf, param_sharding):
    # Factored optimizers (Adafactor) keep state whose shape differs from the
    # parameter's: replicate those leaves instead of mis-sharding them.
    if isinstance(state_leaf, optax.MaskedNode):  # multi_transform's "not mine"
      return state_leaf
    return param_sharding if _fits(state_leaf, param_sharding) else replicated_sharding

  return optax.tree_map_params(
      optimizer, leaf_sharding, state_shapes, params_shardings,
      transform_non_params=lambda _: replicated_sharding,
      is_leaf=lambda x: isinstance(x, (NamedSharding, optax.MaskedNode)))


def _fits(shape_struct, sharding) -> bool:
  if not isinstance(sharding, NamedSharding):
    return False
  spec = sharding.spec
  shape = getattr(shape_struct, "shape", ())
  if len(spec) > len(shape):
    return False
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else axes
    size = int(np.prod([sharding.mesh.shape[a] for a in axes]))
    if dim % size:
      return False
  return True


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batch-major arrays: split the leading (batch) axis over 'data'."""
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
