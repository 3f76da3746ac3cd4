"""Checkpoints both ways between narlm's trainer and t5x's, without t5x.

The layouts (orbax both):
  narlm  MODEL_DIR/checkpoints/<step>/default  {'step', 'params', 'opt_state'}
  t5x    MODEL_DIR/checkpoint_<step>/state     {'target': params,
                                                'state': {'step', 'param_states'}}
where t5x's `param_states` is the optax state as a flax state dict with the
empty nodes (optax.EmptyState) removed: what `t5x.optimizers.OptaxWrapper`
writes for narlm's optimizer (`OPTIMIZER = OptaxWrapper(create_optimizer())`
in narlm/gin/t5x/runs/common.gin). Parameters, optimizer state and step
therefore carry over exactly, both ways:

* t5x -> narlm: narlm's trainer resumes a MODEL_DIR that holds only t5x
  checkpoints from the newest `checkpoint_<step>` (then writes its own
  layout beside it).
* narlm -> t5x: `python -m narlm.t5x_checkpoints --model_dir RUN --out DIR`
  writes DIR/checkpoint_<step>; t5x's train.py continues it with
  `--gin.MODEL_DIR=\\"DIR\\"` (same experiment gin, larger TRAIN_STEPS), or
  fine-tunes from it with `--gin.INITIAL_CHECKPOINT_PATH=\\"DIR/checkpoint_<step>\\"`.
"""

import argparse
import os
import re
import sys
from typing import Any, Optional, Sequence

import jax

PyTree = Any
STEP_DIR_RE = re.compile(r"^checkpoint_(\d+)$")
ITEM = "state"


def _drop_empty(state_dict: dict) -> dict:
  """t5x's OptaxWrapper.state_dict: nested dict without empty nodes."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.unflatten_dict(traverse_util.flatten_dict(state_dict, sep="/"), sep="/")


def to_t5x_tree(state: PyTree) -> dict:
  """narlm train state {'step', 'params', 'opt_state'} -> t5x's state dict."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  return {"target": serialization.to_state_dict(state["params"]),
          "state": {"step": state["step"],
                    "param_states": _drop_empty(serialization.to_state_dict(state["opt_state"]))}}


def from_t5x_tree(tree: dict, like: PyTree) -> PyTree:
  """t5x's state dict -> narlm train state shaped as `like` (empty optax
  states restored as t5x's OptaxWrapper.restore_state does)."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  reference = traverse_util.flatten_dict(serialization.to_state_dict(like["opt_state"]),
                                         keep_empty_nodes=True, sep="/")
  got = traverse_util.flatten_dict(tree["state"]["param_states"], sep="/")
  missing = sorted(k for k, v in reference.items()
                   if v is not traverse_util.empty_node and k not in got)
  extra = sorted(set(got) - set(reference))
  if missing or extra:
    raise ValueError("the t5x checkpoint's optimizer state does not match this run's optimizer "
                     f"(missing {missing[:5]}, unexpected {extra[:5]}): use the same "
                     "OPTIMIZER_NAME / CRF_LEARNING_RATE / WEIGHT_DECAY settings as the t5x run")
  merged = {k: ({} if v is traverse_util.empty_node else got[k]) for k, v in reference.items()}
  opt_state = serialization.from_state_dict(
      like["opt_state"], traverse_util.unflatten_dict(merged, sep="/"))
  return {"step": tree["state"]["step"],
          "params": serialization.from_state_dict(like["params"], tree["target"]),
          "opt_state": opt_state}


def steps(model_dir: str) -> list[int]:
  """Steps of the complete t5x checkpoints in `model_dir`, ascending."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(model_dir)
  if not root.is_dir():
    return []
  found = []
  for child in root.iterdir():
    match = STEP_DIR_RE.match(child.name)
    # orbax writes into a temporary name and renames when done, so a
    # checkpoint_<step>/state directory is a finished one.
    if match and (child / ITEM).is_dir():
      found.append(int(match.group(1)))
  return sorted(found)


def restore(checkpoint_dir: str, abstract_state: PyTree) -> PyTree:
  """Reads t5x's `checkpoint_<step>` into narlm's (sharded) train state.

  abstract_state: ShapeDtypeStructs with shardings (Trainer.abstract_state).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = to_t5x_tree(abstract_state)
  path = os.path.join(os.fspath(checkpoint_dir), ITEM)
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"could not read the t5x checkpoint {checkpoint_dir} into this run's "
                     f"model and optimizer: {e}") from e
  return from_t5x_tree(tree, abstract_state)


def save(out_dir: str, state: PyTree) -> str:
  """Writes `state` as t5x's OUT_DIR/checkpoint_<step>; returns its path."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = int(jax.device_get(state["step"]))
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True,
                                         enable_async_checkpointing=False)
  with ocp.CheckpointManager(os.path.abspath(out_dir), item_names=(ITEM,),
                             options=options) as manager:
    manager.save(step, args=ocp.args.Composite(**{ITEM: ocp.args.PyTreeSave(to_t5x_tree(state))}))
    manager.wait_until_finished()
  return os.path.join(os.path.abspath(out_dir), f"checkpoint_{step}")


def export(model_dir: str, out_dir: str, step: Optional[int] = None) -> str:
  """A narlm run's checkpoint (newest, or `step`) -> t5x layout in `out_dir`."""
  from narlm import checkpoints  # pylint: disable=g-import-not-at-top
  from narlm import run_dirs  # pylint: disable=g-import-not-at-top
  from narlm import train  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  model, _ = run_dirs.build_model(model_dir)
  if model.optimizer_def is None:
    raise ValueError(f"{model_dir}/config.gin binds no optimizer; t5x's state needs one")
  path = run_dirs._checkpoint_dir(model_dir)  # pylint: disable=protected-access
  available = checkpoints.committed_steps(path) if path.is_dir() else []
  if not available:
    raise FileNotFoundError(f"--model_dir {model_dir}: no complete checkpoint under {path}")
  if step is None:
    step = available[-1]
  elif step not in available:
    raise ValueError(f"--step {step}: {model_dir} has checkpoints at steps {available}")
  trainer = train.Trainer(model)
  with ocp.CheckpointManager(path) as manager:
    state = checkpoints.restore(manager, step, trainer.abstract_state((1, 8)))
  return save(out_dir, state)


def main(argv: Sequence[str]) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m narlm.t5x_checkpoints",
      description="Writes a narlm run's checkpoint (parameters, optimizer state, step) in "
                  "t5x's layout, OUT/checkpoint_<step>. The other way needs no tool: narlm's "
                  "trainer resumes a MODEL_DIR of t5x checkpoints.")
  parser.add_argument("--model_dir", required=True, help="a narlm training run")
  parser.add_argument("--out", required=True, help="t5x MODEL_DIR to write checkpoint_<step> in")
  parser.add_argument("--step", type=int, default=None, help="default: the newest")
  args = parser.parse_args(argv)
  written = export(args.model_dir, args.out, args.step)
  print(written)
  return written


if __name__ == "__main__":
  from narlm import cli_errors  # pylint: disable=g-import-not-at-top
  sys.exit(cli_errors.run(main, sys.argv[1:]))
