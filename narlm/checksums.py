"""Checksums of the arrays in a checkpoint, so damage inside array data is
caught when the checkpoint is restored, not later as a NaN.

Orbax's OCDBT files carry no checksums of the values: garbage written into a
data file can restore without any error. At every save the trainer computes,
on the devices, one 32-bit checksum per array over its exact bits (a
position-weighted sum modulo 2**32: integer arithmetic, so the result does
not depend on how the devices split the reduction) and writes them to
``<root>.checksums/<step>.json`` (atomically, process 0). A restore recomputes
them and names every array that differs. A checkpoint without the file (an
older run) restores unverified, with a log line saying so.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _key_name(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_name(path) -> str:
  """'params/crf/E1' for a jax key path (dict keys, indices, attribute names)."""
  return "/".join(_key_name(k) for k in path)


def _array_checksum(x: jax.Array) -> jax.Array:
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32)
  bits = bits.reshape(-1)
  weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)  # wraps modulo 2**32


def compute(tree: Any) -> dict[str, int]:
  """{leaf name: checksum} for every array leaf of `tree` (one jitted pass)."""
  named = [(leaf_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
           if hasattr(x, "dtype") and hasattr(x, "shape")]
  if not named:
    return {}
  values = jax.jit(lambda xs: [_array_checksum(jnp.asarray(x)) for x in xs])(
      [x for _, x in named])
  return {name: int(v) for (name, _), v in zip(named, jax.device_get(values))}


def _dir(root) -> str:
  return str(root).rstrip("/") + ".checksums"


def _path(root, step: int) -> str:
  return os.path.join(_dir(root), f"{int(step)}.json")


def write(root, step: int, tree: Any) -> None:
  """Writes the checksums of `tree` (the state saved as `step` under the
  orbax root `root`). Every process computes them (a collective); process 0
  writes. Files of steps older than `keep_from` are pruned by `prune`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sums = compute(tree)
  if jax.process_index() != 0:
    return
  from narlm.run_dirs import write_text_atomically  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(_dir(root))
  write_text_atomically(_path(root, step), json.dumps(sums, sort_keys=True))


def prune(root, keep_steps) -> None:
  """Removes the checksum files of steps no longer kept by orbax."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0 or not tf.io.gfile.isdir(_dir(root)):
    return
  keep = {int(s) for s in keep_steps}
  for name in tf.io.gfile.listdir(_dir(root)):
    stem = name.split(".")[0]
    if name.endswith(".json") and stem.isdigit() and int(stem) not in keep:
      tf.io.gfile.remove(os.path.join(_dir(root), name))


def read(root, step: int) -> Optional[Mapping[str, int]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = _path(root, step)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


def mismatches(expected: Mapping[str, int], tree: Any, prefix: str = "") -> list[str]:
  """Names of the arrays of `tree` whose checksum differs from `expected`
  (`prefix` + leaf name is looked up, e.g. 'params/' for a params-only tree)."""
  actual = compute(tree)
  return sorted(name for name, value in actual.items()
                if prefix + name in expected and expected[prefix + name] != value)


def verify(root, step: int, tree: Any, prefix: str = "") -> list[str]:
  """Mismatching array names ([] if all agree); logs when unverifiable."""
  expected = read(root, step)
  if expected is None:
    logging.info("checkpoint step %d under %s has no checksums (written by an older narlm): "
                 "restored unverified", step, root)
    return []
  return mismatches(expected, tree, prefix)

