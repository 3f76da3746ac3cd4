"""narlm.checksums: array damage that still decodes is caught at restore."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from narlm import checkpoints
from narlm import checksums
from narlm import train
from train_utils import FAST, run_in_process


def reference_checksum(x: np.ndarray) -> int:
  """Host re-statement of the device checksum: sum of bits * (2i + 1) mod 2**32."""
  x = np.asarray(x)
  bits = (x.astype(np.uint64) if x.dtype == np.bool_ else
          x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint64))
  bits = bits.reshape(-1)
  weights = np.arange(bits.shape[0], dtype=np.uint64) * 2 + 1
  return int((bits * weights % 2**32).sum() % 2**32)


def test_checksums_match_a_host_reference_and_see_one_flipped_bit():
  rng = np.random.default_rng(0)
  tree = {"a": rng.normal(size=(37, 5)).astype(np.float32),
          "b": {"c": rng.integers(0, 30000, size=(64,)).astype(np.int32),
                "d": np.asarray(rng.normal(size=(9,)), jnp.bfloat16),
                "e": rng.integers(0, 2, size=(7,)).astype(bool)}}
  sums = checksums.compute(tree)
  assert sums == {"a": reference_checksum(tree["a"]), "b/c": reference_checksum(tree["b"]["c"]),
                  "b/d": reference_checksum(tree["b"]["d"]),
                  "b/e": reference_checksum(tree["b"]["e"])}
  flipped = tree["a"].copy()
  flipped.view(np.uint32)[3, 2] ^= 1  # one bit of one float
  assert checksums.mismatches(sums, dict(tree, a=flipped)) == ["a"]
  swapped = tree["b"]["c"].copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # same values, other positions
  assert checksums.mismatches(sums, {"b": dict(tree["b"], c=swapped)}) == ["b/c"]


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "default").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run") / "model"
  run_in_process(model_dir, "--gin.TRAIN_STEPS=2", *FAST, "--gin.CHECKPOINT_PERIOD=1",
                 "--gin.EVAL_PERIOD=0")
  return model_dir


def test_a_tampered_array_is_named_at_restore(run_dir, tmp_path):
  import shutil
  model_dir = tmp_path / "model"
  shutil.copytree(run_dir, model_dir)
  train.restore_params(str(model_dir), prefer_best=False)  # intact: verifies silently
  sums_file = model_dir / "checkpoints.checksums" / "2.json"
  assert sorted(p.name for p in sums_file.parent.iterdir()) == ["1.json", "2.json"]
  sums = json.loads(sums_file.read_text())
  name = "params/crf/E1"
  sums[name] = (sums[name] + 1) % 2**32  # as if the array's data had changed on disk
  sums_file.write_text(json.dumps(sums))
  with pytest.raises(checkpoints.CorruptCheckpointError,
                     match="array params/crf/E1: its values differ from the checksum"):
    train.restore_params(str(model_dir), prefer_best=False)


# orbax leaves "Event loop is closed" noise behind a failed read.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_garbage_in_a_data_file_is_caught_at_restore(run_dir, tmp_path):
  """The reliability probe: 4 KB of garbage written into a checkpoint's data
  file used to restore silently (and show up later as a NaN)."""
  import shutil
  model_dir = tmp_path / "model"
  shutil.copytree(run_dir, model_dir)
  data = _largest_data_file(model_dir / "checkpoints" / "2")
  size = data.stat().st_size
  with open(data, "r+b") as f:
    f.seek(size // 2)
    f.write(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(checkpoints.CorruptCheckpointError, match="checkpoint step 2 .* is damaged"):
    checkpoints.verify_step(model_dir / "checkpoints", 2, read_data=True)  # every array


def test_serving_falls_back_to_the_newest_intact_parameters(run_dir, tmp_path, caplog):
  import logging
  import shutil
  model_dir = tmp_path / "model"
  shutil.copytree(run_dir, model_dir)
  step1 = train.restore_params(str(model_dir), step=1)
  sums_file = model_dir / "checkpoints.checksums" / "2.json"
  sums = json.loads(sums_file.read_text())
  sums["params/crf/E2"] = (sums["params/crf/E2"] + 1) % 2**32  # step 2's params damaged
  sums_file.write_text(json.dumps(sums))
  with pytest.raises(checkpoints.CorruptCheckpointError, match="params/crf/E2"):
    train.restore_params(str(model_dir), prefer_best=False)  # the default never skips
  with caplog.at_level(logging.WARNING):
    params = train.restore_params(str(model_dir), prefer_best=False, fallback=True)
  assert "skipping damaged checkpoint step 2" in caplog.text
  assert "using checkpoint step 1" in caplog.text
  np.testing.assert_array_equal(params["crf"]["E2"], step1["crf"]["E2"])
  # Damage in the optimizer state does not stop serving: only params are read.
  sums["params/crf/E2"] = (sums["params/crf/E2"] - 1) % 2**32
  opt_leaf = next(k for k in sums if k.startswith("opt_state/"))
  sums[opt_leaf] = (sums[opt_leaf] + 1) % 2**32
  sums_file.write_text(json.dumps(sums))
  train.restore_params(str(model_dir), prefer_best=False)


def test_late_callbacks_of_an_aborted_read_stay_off_the_console(monkeypatch, caplog):
  """A failed read of a damaged checkpoint leaves tensorstore reads in flight
  that later post to orbax's closed event loop; Python reports each as an
  unraisable RuntimeError (a traceback on stderr, seen in CI's server trial).
  narlm's read paths log those at DEBUG; any other unraisable exception still
  reaches the previous hook."""
  import logging
  import sys
  import types
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoints._quiet_aborted_read_callbacks()
  checkpoints._quiet_aborted_read_callbacks()  # installed once, not stacked
  late = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  with caplog.at_level(logging.DEBUG):
    sys.unraisablehook(late)
    sys.unraisablehook(other)
  assert seen == [other]
  assert "late tensorstore callback" in caplog.text
