"""A narlm run directory: where checkpoints, the best checkpoint and the
JSON-lines logs live, and how parameters are read back from it.

  MODEL_DIR/checkpoints/<step>       orbax train states (keep-N, atomic)
  MODEL_DIR/best_checkpoint/<step>   params of the best validation score
  MODEL_DIR/train_metrics.jsonl      one record per log step
  MODEL_DIR/validation_curve.jsonl   one record per evaluation
  MODEL_DIR/config.gin               the run's gin config: `load_model` builds
                                     its MODEL and restores the parameters
                                     (the one run loader of serve, compare,
                                     distill and the t5x converter)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
  from narlm.train import CheckpointConfig


PyTree = Any


def _checkpoint_manager(model_dir: str, cfg: CheckpointConfig):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True,
                                         enable_async_checkpointing=cfg.async_save)
  return ocp.CheckpointManager(_checkpoint_dir(model_dir), options=options)


def _checkpoint_dir(model_dir: str):
  """model_dir/checkpoints; local paths made absolute, gs:// etc. kept as is."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(model_dir) / "checkpoints"
  return path if "://" in str(model_dir) else epath.Path(os.path.abspath(path))


def _best_checkpoint_dir(model_dir: str):
  """model_dir/best_checkpoint: the parameters of the best validation score."""
  return _checkpoint_dir(model_dir).parent / "best_checkpoint"


def is_run_dir(path: str) -> bool:
  """True for a narlm run directory (it has a checkpoints/ folder)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return (epath.Path(path) / "checkpoints").is_dir()


def best_checkpoint_step(model_dir: str) -> Optional[int]:
  """Step of the run's best-validation checkpoint, or None if it has none."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = _best_checkpoint_dir(model_dir)
  if not path.is_dir():
    return None
  with ocp.CheckpointManager(path) as manager:
    return manager.latest_step()


def restore_params(model_dir: str, step: Optional[int] = None,
                   prefer_best: bool = True, fallback: bool = False) -> PyTree:
  """Loads the parameters of a narlm run, on host, and only them (the
  optimizer state is not read): the best-validation checkpoint when the run
  kept one (see `train(best_metric=...)`) and `prefer_best`, else the latest;
  or the given `step`. Every read is validated (structure, then checksums).

  fallback: if the chosen checkpoint is damaged, log a warning naming it and
  use the newest intact one instead (serving); otherwise raise
  CorruptCheckpointError (the default: nothing is skipped silently).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from narlm import checkpoints  # pylint: disable=g-import-not-at-top
  if step is None and prefer_best:
    best = best_checkpoint_step(model_dir)
    if best is not None:
      logging.info("loading the best-validation checkpoint of %s (step %d)", model_dir, best)
      try:
        with ocp.CheckpointManager(_best_checkpoint_dir(model_dir)) as manager:
          restored = _read(manager, best)
        checkpoints.raise_on_checksum_mismatch(_best_checkpoint_dir(model_dir), best, restored)
        return restored["params"]
      except checkpoints.CorruptCheckpointError as e:
        if not fallback:
          raise
        logging.warning("the best-validation checkpoint is damaged, using the newest intact "
                        "training checkpoint instead: %s", e)
  path = _checkpoint_dir(model_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"no checkpoints under {path}")
  if step is not None:
    return checkpoints.read_params(path, step)
  if fallback:
    return checkpoints.latest_readable_params(path)[1]
  steps = checkpoints.committed_steps(path)
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint under {path}")
  return checkpoints.read_params(path, steps[-1])


def _read(manager, step: int) -> PyTree:
  """Restores `step` as it was saved (no target, so no config can mismatch:
  a failure is damaged files) -> CorruptCheckpointError naming the step."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from narlm import checkpoints  # pylint: disable=g-import-not-at-top
  root = manager.directory
  try:
    return manager.restore(step, args=ocp.args.StandardRestore())
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoints.CorruptCheckpointError(
        checkpoints.corrupt_message(root, step, [], cause=e), step=step,
        path=checkpoints.step_path(root, step)) from e


def write_text_atomically(path: str, text: str) -> None:
  """Writes `path` through a temp file and a rename: a kill leaves the old
  file or the new one, never half of one (atomic locally; object stores have
  no directory rename, but a file rename is still all-or-nothing)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _append_jsonl(path: str, record: Mapping[str, Any]) -> None:
  """One JSON line per log step: easy to read back (tests, plots)."""
  import json  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _train_cpu_seconds_logged(model_dir: str, step: int) -> float:
  """Training CPU seconds recorded in train_metrics.jsonl up to `step` (0 if none)."""
  import json  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(model_dir, "train_metrics.jsonl")
  spent = 0.0
  if not tf.io.gfile.exists(path):
    return spent
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      if record.get("step", step + 1) <= step and "train/cpu_seconds" in record:
        spent = max(spent, float(record["train/cpu_seconds"]))
  return spent


# ------------------------------------------------------------- the run loader
MODEL_KINDS = ("NagBertModel", "ArSeq2SeqModel", "TaggerModel", "CanvasModel")


@dataclasses.dataclass
class LoadedModel:
  """A model built from a run's config.gin, with its restored params."""
  model: Any
  params: Any
  model_dir: str
  # TASK_FEATURE_LENGTHS['inputs'] of the run, when its config binds it.
  input_length: Optional[int] = None

  @property
  def kind(self) -> str:
    """The model family: NagBertModel, ArSeq2SeqModel (PrefixLmModel is one)
    or TaggerModel; another class's own name."""
    for cls in type(self.model).__mro__:
      if cls.__name__ in MODEL_KINDS:
        return cls.__name__
    return type(self.model).__name__


def _read_text(path: str) -> str:
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).read_text()


def load_model(model_dir: str, step: Optional[int] = None) -> LoadedModel:
  """Builds `MODEL` from `model_dir/config.gin` and restores its parameters
  (see `build_model`)."""
  import jax  # pylint: disable=g-import-not-at-top
  model, input_length = build_model(model_dir)
  # Parameters only, validated; a damaged newest step falls back to the newest
  # intact one (logged as a warning naming it).
  params = restore_params(model_dir, step, fallback=step is None)
  # Once on the device, not on every call.
  params = jax.device_put(params)
  return LoadedModel(model=model, params=params, model_dir=model_dir, input_length=input_length)


def model_from_parsed_gin(what: str):
  """The MODEL macro of the gin config parsed now, built exactly as a
  `model = %MODEL` binding would be; `what` names the config in errors."""
  import gin  # pylint: disable=g-import-not-at-top
  try:
    gin.query_parameter("%MODEL")
  except ValueError as e:
    raise ValueError(f"{what} defines no MODEL macro (include a model gin, e.g. "
                     "narlm/gin/models/tiny.gin)") from e
  try:
    return gin.config.ConfigurableReference("MODEL/gin.macro", True).scoped_configurable_fn()
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (gin re-raises a proxy)
    raise ValueError(f"could not build MODEL from {what}: {e}") from e


def build_model(model_dir: str) -> tuple[Any, Optional[int]]:
  """(MODEL built from `model_dir/config.gin`, its TASK_FEATURE_LENGTHS
  ['inputs'] or None); no parameters are read.

  The global gin config is cleared before and after (gin is global state;
  the model object keeps what it needs).

  Raises:
    FileNotFoundError: no config.gin / no checkpoint (the message names it).
    ValueError: config.gin does not parse or defines no MODEL.
  """
  import gin  # pylint: disable=g-import-not-at-top

  config_path = os.path.join(model_dir, "config.gin")
  try:
    config_text = _read_text(config_path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{config_path} not found: --model_dir must be a narlm training "
                            "run directory (narlm.train writes config.gin there)") from e
  gin.clear_config()
  try:
    try:
      gin.parse_config(config_text)
    except (SyntaxError, ValueError, KeyError, ImportError, TypeError) as e:
      raise ValueError(f"could not parse {config_path}: {e}") from e
    model = model_from_parsed_gin(config_path)
    input_length = None
    try:
      lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
      if isinstance(lengths, Mapping) and isinstance(lengths.get("inputs"), int):
        input_length = int(lengths["inputs"])
    except ValueError:
      pass
  finally:
    gin.clear_config()
  return model, input_length
