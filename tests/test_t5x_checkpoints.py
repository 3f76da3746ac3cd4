"""Checkpoints both ways between narlm's trainer and t5x's layout (no t5x here).

Round trip: a narlm run -> t5x's checkpoint_<step>/state -> narlm's trainer
resumes from it. The parameters read back are bit-equal and training then
continues exactly as the original run continues (same losses, same final
parameters), so the optimizer state and the step came through too. That t5x's
own train.py reads these checkpoints is checked with real t5x (docs/t5x.md,
"Verified runs").
"""

import os
import shutil

import jax
import numpy as np
import pytest

from narlm import t5x_checkpoints
from narlm import train
from train_utils import FAST, logged_losses, run_in_process

STEPS = ["--gin.CHECKPOINT_PERIOD=2", "--gin.WARMUP_STEPS=0", "--gin.DROPOUT_RATE=0.0"]


def _assert_trees_equal(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """A narlm run at step 2 (tests copy it before changing it)."""
  run = tmp_path_factory.mktemp("narlm") / "run"
  run_in_process(run, "--gin.TRAIN_STEPS=2", *FAST, *STEPS)
  return run


@pytest.mark.slow  # three short trainings (~2 min on 2 cores): CI's slow pass
def test_round_trip_through_t5x_layout_continues_the_run(two_steps, tmp_path):
  original = tmp_path / "narlm_run"
  shutil.copytree(two_steps, original)
  t5x_dir = tmp_path / "t5x_run"
  written = t5x_checkpoints.export(str(original), str(t5x_dir))
  assert written == str(t5x_dir / "checkpoint_2")
  assert t5x_checkpoints.steps(str(t5x_dir)) == [2]

  # What t5x reads: {'target': params, 'state': {'step', 'param_states'}}.
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as checkpointer:
    raw = checkpointer.restore(os.path.join(written, "state"))
  assert set(raw) == {"target", "state"} and int(raw["state"]["step"]) == 2
  _assert_trees_equal(raw["target"], train.restore_params(str(original), step=2))
  assert raw["state"]["param_states"]  # optimizer moments, not only parameters

  # narlm's trainer continues the t5x MODEL_DIR (same gin) to step 4 ...
  shutil.copy(original / "config.gin", t5x_dir / "config.gin")
  run_in_process(t5x_dir, "--gin.TRAIN_STEPS=4", *FAST, *STEPS)
  # ... exactly as the original narlm run continues.
  run_in_process(original, "--gin.TRAIN_STEPS=4", *FAST, *STEPS)
  continued, reference = logged_losses(t5x_dir), logged_losses(original)
  assert sorted(continued) == [3, 4]
  assert [continued[s] for s in (3, 4)] == [reference[s] for s in (3, 4)]
  _assert_trees_equal(train.restore_params(str(t5x_dir), step=4),
                      train.restore_params(str(original), step=4))
  # A later restart resumes from narlm's own (newer) checkpoint, not t5x's.
  from narlm import checkpoints, run_dirs
  assert checkpoints.committed_steps(run_dirs._checkpoint_dir(str(t5x_dir))) == [4]


def test_a_mismatched_optimizer_is_refused(two_steps, tmp_path):
  t5x_dir = tmp_path / "t5x_run"
  t5x_checkpoints.export(str(two_steps), str(t5x_dir))
  with pytest.raises(ValueError, match=r"t5x checkpoint .*checkpoint_2.*optimizer"):
    run_in_process(t5x_dir, "--gin.TRAIN_STEPS=3", *FAST, *STEPS, "--gin.OPTIMIZER_NAME='sgd'")


def test_export_bad_input(two_steps, tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match="config.gin not found"):
    t5x_checkpoints.export(str(tmp_path / "nowhere"), str(tmp_path / "out"))
  assert t5x_checkpoints.steps(str(tmp_path / "nowhere")) == []
  with pytest.raises(ValueError, match=r"--step 7: .* steps \[2\]"):
    t5x_checkpoints.export(str(two_steps), str(tmp_path / "out"), step=7)
  from narlm import cli_errors
  assert cli_errors.run(t5x_checkpoints.main, ["--model_dir", str(tmp_path / "nowhere"),
                                               "--out", str(tmp_path / "o")]) == 2
  assert "error: " in capsys.readouterr().err
