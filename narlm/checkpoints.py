"""Checkpoint validation for narlm's orbax checkpoints.

Layout (written by `narlm.train` through an orbax CheckpointManager):

  MODEL_DIR/checkpoints/<step>/                    a committed checkpoint
      _CHECKPOINT_METADATA                         orbax's step metadata (JSON)
      commit_success.txt
      default/                                     the train state item
          _METADATA                                tree metadata (JSON)
          manifest.ocdbt, d/...                    OCDBT database (merged)
          ocdbt.process_<i>/...                    per-process OCDBT data
  MODEL_DIR/checkpoints/<step>.orbax-checkpoint-tmp/   an interrupted write

What can go wrong, and what this module does about it:

* A save interrupted by preemption, SIGKILL or a crash leaves a
  `<step>.orbax-checkpoint-tmp` directory. Orbax commits by renaming it to
  `<step>` once every process has written its part, so such a directory is
  never listed as a step, never restored, and is removed when that step is
  saved again. `uncommitted()` lists them; `restore()` logs a warning naming
  each. Nothing else is needed.
* A *committed* checkpoint whose files were later truncated, emptied or
  deleted (disk full on a copy, a bad sync, manual editing) cannot come from an
  interrupted save, so it means the storage was damaged. `check_step()` finds
  structural damage (missing/empty/unparsable metadata, missing OCDBT
  manifest, empty data files) without reading the arrays; damage inside the
  array data (e.g. a truncated data file) shows when the arrays are read, and
  `restore()` / `read_arrays()` turn the low-level tensorstore error into a
  `CorruptCheckpointError` naming the step, the path and the damaged array.
* A checkpoint written by another configuration (a changed CRF_RANK, optimizer
  or vocabulary) is not damage: before reading any array, `restore()` compares
  the checkpoint's orbax metadata (tree structure, shapes, dtypes) with the
  current model's abstract state (`config_mismatches()`) and reports the
  differences, with no advice to move anything aside. Only a read that fails
  after the metadata matched is called damage. No error text is parsed.

Policy (chosen for the trainer): a damaged latest checkpoint FAILS with a clear
message; it is not silently skipped. Resuming from an older step would quietly
throw away training and hide a storage fault, and in a multi-host job every
process must agree on the step. The message says how to resume from the
previous checkpoint on purpose: move the damaged step aside with
`quarantine()` (or `mv <step> <step>.corrupt`), which orbax then ignores.
Tools that prefer falling back (evaluation, export) can call
`latest_valid_step(..., on_corrupt="fallback")`, which logs a warning naming
each skipped step and returns the newest valid one.

Damage inside array data that still decodes (garbage or bit flips: OCDBT
stores no checksums of the values) is caught by the checksums the trainer
writes at every save (`narlm.checksums`), verified after each restore.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, Optional, Sequence

from etils import epath

TMP_MARKER = ".orbax-checkpoint-tmp"
DEFAULT_ITEM = "default"
_STEP_RE = re.compile(r"^\d+$")


def _is_aborted_read_callback(unraisable) -> bool:
  """A read of damaged files fails inside orbax; tensorstore's reads still in
  flight then complete on its own threads and post their results to the
  event loop orbax already closed. Python reports each as an unraisable
  `RuntimeError('Event loop is closed')`: a traceback on stderr with nothing
  lost (the read has already failed, and been reported by name)."""
  exc = getattr(unraisable, "exc_value", None)
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _quiet_aborted_read_callbacks() -> None:
  """Sends those reports to the log at DEBUG instead of the console (once per
  process; every other unraisable exception still goes to the previous hook)."""
  import sys  # pylint: disable=g-import-not-at-top
  previous = sys.unraisablehook
  if getattr(previous, "_narlm_aborted_reads", False):
    return

  def hook(unraisable):
    if _is_aborted_read_callback(unraisable):
      logging.debug("orbax read aborted after a damaged checkpoint: late tensorstore "
                    "callback (%r) dropped", unraisable.exc_value)
    else:
      previous(unraisable)

  hook._narlm_aborted_reads = True  # pylint: disable=protected-access
  sys.unraisablehook = hook

class CheckpointError(RuntimeError):
  """A checkpoint cannot be used; the message says which, where and why."""

  def __init__(self, message: str, *, step: Optional[int] = None, path: Any = None,
               problems: Sequence[str] = ()):
    super().__init__(message)
    self.step = step
    self.path = str(path) if path is not None else None
    self.problems = list(problems)


class CorruptCheckpointError(CheckpointError):
  """A committed checkpoint whose files are damaged or missing."""


# ------------------------------------------------------------------- listing
def checkpoint_root(model_dir: str) -> epath.Path:
  """MODEL_DIR/checkpoints (local paths made absolute), as narlm.train uses."""
  path = epath.Path(model_dir) / "checkpoints"
  return path if "://" in str(model_dir) else epath.Path(os.path.abspath(path))


def _root(root_or_model_dir) -> epath.Path:
  """Accepts the checkpoints directory itself or the model dir above it."""
  path = epath.Path(root_or_model_dir)
  if path.name != "checkpoints" and (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  return path


def committed_steps(root) -> list[int]:
  """Steps orbax considers committed: directories named by a bare integer."""
  root = _root(root)
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if _STEP_RE.match(p.name) and p.is_dir())


def uncommitted(root) -> list[tuple[Optional[int], epath.Path]]:
  """(step, path) of interrupted writes (`<step>.orbax-checkpoint-tmp...`)."""
  root = _root(root)
  if not root.is_dir():
    return []
  out = []
  for p in root.iterdir():
    if TMP_MARKER in p.name:
      head = p.name.split(TMP_MARKER, 1)[0]
      out.append((int(head) if _STEP_RE.match(head) else None, p))
  return sorted(out, key=lambda sp: (sp[0] is None, sp[0] or 0, str(sp[1])))


def step_path(root, step: int) -> epath.Path:
  return _root(root) / str(step)


# ---------------------------------------------------------------- validation
def _size(path: epath.Path) -> int:
  return int(path.stat().length)


def _read_json(path: epath.Path, problems: list[str], what: str) -> Optional[dict]:
  if not path.exists():
    problems.append(f"{what} {path} is missing")
    return None
  if _size(path) == 0:
    problems.append(f"{what} {path} is empty (0 bytes)")
    return None
  try:
    value = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    problems.append(f"{what} {path} is not valid JSON (truncated?): {e}")
    return None
  if not isinstance(value, dict):
    problems.append(f"{what} {path} is not a JSON object")
    return None
  return value


def _item_names(step_dir: epath.Path) -> list[str]:
  meta_path = step_dir / "_CHECKPOINT_METADATA"
  names: list[str] = []
  if meta_path.exists():
    try:
      names = sorted(json.loads(meta_path.read_text()).get("item_handlers") or {})
    except (ValueError, UnicodeDecodeError, AttributeError):
      names = []
  if not names:  # fall back to the directories that look like items
    names = sorted(p.name for p in step_dir.iterdir()
                   if p.is_dir() and TMP_MARKER not in p.name and (p / "_METADATA").exists())
  return names


def _data_files(directory: epath.Path):
  if directory.is_dir():
    for p in directory.iterdir():
      if not p.is_dir():
        yield p


def check_item(item_dir: epath.Path) -> list[str]:
  """Structural problems of one orbax PyTree item directory (no array reads)."""
  problems: list[str] = []
  if not item_dir.is_dir():
    return [f"item directory {item_dir} is missing"]
  meta = _read_json(item_dir / "_METADATA", problems, "tree metadata")
  if meta is not None and "tree_metadata" not in meta:
    problems.append(f"tree metadata {item_dir / '_METADATA'} has no 'tree_metadata' entry")
  process_dirs = [p for p in item_dir.iterdir() if p.is_dir() and p.name.startswith("ocdbt.process_")]
  is_ocdbt = (item_dir / "manifest.ocdbt").exists() or bool(process_dirs)
  if is_ocdbt:
    manifest = item_dir / "manifest.ocdbt"
    if not manifest.exists():
      problems.append(f"OCDBT manifest {manifest} is missing")
    elif _size(manifest) == 0:
      problems.append(f"OCDBT manifest {manifest} is empty (0 bytes)")
    if not (item_dir / "d").is_dir() or not any(True for _ in _data_files(item_dir / "d")):
      problems.append(f"OCDBT data directory {item_dir / 'd'} is missing or empty")
    empty = [f for directory in [item_dir / "d"] + [p / "d" for p in process_dirs]
             for f in _data_files(directory) if _size(f) == 0]
    problems.extend(f"data file {f} is empty (0 bytes)" for f in empty[:5])
    if len(empty) > 5:
      problems.append(f"... and {len(empty) - 5} more empty data files under {item_dir}")
  return problems


def check_step(root, step: int) -> list[str]:
  """Structural problems of committed checkpoint `step` (empty list = looks
  complete). Cheap: reads only the small metadata files, not the arrays."""
  step_dir = step_path(root, step)
  if not step_dir.is_dir():
    return [f"checkpoint directory {step_dir} is missing"]
  problems: list[str] = []
  items = _item_names(step_dir)
  if not items:
    problems.append(f"{step_dir} holds no checkpoint item (no */_METADATA)")
  for name in items:
    problems.extend(check_item(step_dir / name))
  if not problems:
    for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
      if not (step_dir / name).exists():  # written by current orbax; not needed to restore
        logging.warning("checkpoint step %d at %s has no %s (written by an older orbax, or "
                        "removed)", step, step_dir, name)
  return problems


def _error_chain(error: BaseException) -> list[BaseException]:
  chain: list[BaseException] = []
  while error is not None and error not in chain and len(chain) < 10:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _short(error: BaseException) -> str:
  # tensorstore appends its whole JSON spec; keep the first line before it.
  text = str(error).split("See full TensorStore details")[0].strip()
  text = " | ".join(line.strip() for line in text.splitlines()[:4] if line.strip())
  return f"{type(error).__name__}: {text[:600]}"


def describe_error(error: BaseException) -> str:
  """One line per exception of the cause chain (the tensorstore error that
  names the damaged array is usually a cause of orbax's)."""
  return "\n      caused by ".join(_short(e) for e in _error_chain(error))


def _leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/crf/E1': (shape, dtype)} for every array leaf. Keys are
  normalised to names / indices, so a namedtuple field in the model's optax
  state and the dict key orbax wrote for it compare equal."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from narlm import checksums  # pylint: disable=g-import-not-at-top
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if leaf is None or not hasattr(leaf, "shape"):
      continue
    out[checksums.leaf_name(path)] = (tuple(int(d) for d in leaf.shape),
                                                 str(np.dtype(leaf.dtype)))
  return out


def config_mismatches(root, step: int, target: Any, item: str = DEFAULT_ITEM,
                      limit: int = 6) -> list[str]:
  """How checkpoint `step` differs from `target` (the current model's abstract
  train state) in tree structure, shapes and dtypes, read from orbax's
  metadata without reading any array. Empty when they agree.

  This, not the text of a failed restore, is what tells a changed config
  (CRF_RANK, the optimizer, the vocabulary) from damaged files.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = step_path(_root(root), step) / item
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  saved, wanted = _leaf_specs(tree), _leaf_specs(target)
  problems = []
  for name in sorted(set(wanted) - set(saved)):
    problems.append(f"{name}: in the current model, not in the checkpoint")
  for name in sorted(set(saved) - set(wanted)):
    problems.append(f"{name}: in the checkpoint, not in the current model")
  for name in sorted(set(saved) & set(wanted)):
    if saved[name] != wanted[name]:
      (s_shape, s_dtype), (w_shape, w_dtype) = saved[name], wanted[name]
      problems.append(f"{name}: checkpoint {s_dtype}{list(s_shape)}, current model "
                      f"{w_dtype}{list(w_shape)}")
  if len(problems) > limit:
    problems = problems[:limit] + [f"... and {len(problems) - limit} more differences"]
  return problems


def _previous(root, step: int) -> Optional[int]:
  older = [s for s in committed_steps(root) if s < step]
  return older[-1] if older else None


def corrupt_message(root, step: int, problems: Sequence[str], *,
                    cause: Optional[BaseException] = None) -> str:
  """The error text: what is wrong with which step, and how to go on."""
  path = step_path(root, step)
  lines = [f"checkpoint step {step} at {path} is damaged and cannot be restored:"]
  lines += [f"  - {p}" for p in problems]
  if cause is not None:
    lines.append(f"  - reading it failed: {describe_error(cause)}")
  lines.append("Orbax commits a checkpoint only once it is complete, so this is damage after "
               "the fact (storage, copy, manual edit), not an interrupted save; training does "
               "not silently fall back.")
  previous = _previous(root, step)
  if previous is not None:
    lines.append(f"To resume from the previous checkpoint (step {previous}), move this one "
                 f"aside: mv {path} {path}.corrupt  (or narlm.checkpoints.quarantine(root, "
                 f"{step})), then restart.")
  else:
    lines.append(f"There is no older checkpoint: move {path} aside to start from scratch.")
  return "\n".join(lines)


def read_arrays(root, step: int, item: str = DEFAULT_ITEM) -> dict[str, Any]:
  """Every array of `item` in checkpoint `step`, as host numpy arrays keyed by
  their tree path (e.g. "['params']['crf']['E1']"). Reads all the data, so it
  finds truncated/damaged data files; raises CorruptCheckpointError."""
  root = _root(root)
  _raise_if_damaged(root, step)
  return _read_arrays(root, step, item)


def _raise_if_damaged(root: epath.Path, step: int) -> None:
  problems = check_step(root, step)
  if problems:
    raise CorruptCheckpointError(corrupt_message(root, step, problems), step=step,
                                 path=step_path(root, step), problems=problems)


def _read_arrays(root: epath.Path, step: int, item: str) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = step_path(root, step) / item
  _quiet_aborted_read_callbacks()
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(path)
      tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
      if tree is None:
        raise ValueError(f"no tree metadata could be read from {path}")
      restore_args = jax.tree_util.tree_map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          restore_args=restore_args))
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(corrupt_message(root, step, [], cause=e), step=step,
                                 path=step_path(root, step)) from e
  if item == DEFAULT_ITEM:
    raise_on_checksum_mismatch(root, step, restored)
  return {jax.tree_util.keystr(p): v
          for p, v in jax.tree_util.tree_leaves_with_path(restored) if v is not None}


def read_params(root, step: int, item: str = DEFAULT_ITEM) -> Any:
  """The `params` subtree of checkpoint `step` as host numpy arrays, read
  alone (orbax partial restore: the optimizer state is neither read nor
  needed, so damage there does not matter), validated (structure first,
  then the checksums written at save time). CorruptCheckpointError if not."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = _root(root)
  _raise_if_damaged(root, step)
  path = step_path(root, step) / item
  _quiet_aborted_read_callbacks()
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.metadata(path).item_metadata.tree
      if "params" not in tree:
        raise ValueError(f"no 'params' in the checkpoint's tree (top level: {sorted(tree)})")
      params = tree["params"]
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item={"params": jax.tree_util.tree_map(lambda _: np.zeros(()), params)},
          restore_args={"params": jax.tree_util.tree_map(
              lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params)},
          partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(corrupt_message(root, step, [], cause=e), step=step,
                                 path=step_path(root, step)) from e
  raise_on_checksum_mismatch(root, step, restored)
  return restored["params"]


def latest_readable_params(root) -> tuple[int, Any]:
  """(step, params) of the newest committed step whose params read and verify;
  each damaged newer step is logged as a warning naming it. For tools that
  only need the parameters (serving, evaluation)."""
  root = _root(root)
  warn_uncommitted(root)
  steps = committed_steps(root)
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint under {root}")
  errors = []
  for step in reversed(steps):
    try:
      params = read_params(root, step)
    except CorruptCheckpointError as e:
      logging.warning("skipping damaged checkpoint step %d: %s", step, e)
      errors.append(str(e))
      continue
    if errors:
      logging.warning("using checkpoint step %d, the newest one whose parameters are intact "
                      "(newer steps are damaged, see above)", step)
    return step, params
  raise CorruptCheckpointError(f"every checkpoint under {root} is damaged:\n" + "\n".join(errors),
                               step=steps[-1], path=step_path(root, steps[-1]))


def verify_step(root, step: int, *, read_data: bool = True) -> None:
  """Raises CorruptCheckpointError unless checkpoint `step` is intact
  (structure always; every array too when `read_data`)."""
  root = _root(root)
  _raise_if_damaged(root, step)
  if read_data:
    for item in _item_names(step_path(root, step)):
      _read_arrays(root, step, item)


def latest_valid_step(root, *, on_corrupt: str = "raise", read_data: bool = False
                      ) -> Optional[int]:
  """The newest committed step that passes `verify_step`, or None.

  on_corrupt: "raise" (CorruptCheckpointError on a damaged latest step) or
  "fallback" (warn naming the damaged step and try the previous one).
  Interrupted writes (tmp directories) are never candidates; each is logged.
  """
  if on_corrupt not in ("raise", "fallback"):
    raise ValueError(f"on_corrupt must be 'raise' or 'fallback', got {on_corrupt!r}")
  root = _root(root)
  warn_uncommitted(root)
  for step in reversed(committed_steps(root)):
    try:
      verify_step(root, step, read_data=read_data)
      return step
    except CorruptCheckpointError as e:
      if on_corrupt == "raise":
        raise
      logging.warning("skipping damaged checkpoint: %s", e)
  return None


def warn_uncommitted(root) -> list[tuple[Optional[int], epath.Path]]:
  found = uncommitted(root)
  for step, path in found:
    logging.warning("ignoring the incomplete checkpoint write %s (the save of step %s was "
                    "interrupted before orbax committed it; it is never restored and is "
                    "replaced when that step is saved again)", path, step)
  return found


def quarantine(root, step: int) -> epath.Path:
  """Renames checkpoint `step` to `<step>.corrupt-<unix time>`, which orbax
  ignores, so training resumes from the previous step. Call it from ONE process
  (or by hand) while no trainer runs."""
  src = step_path(root, step)
  if not src.is_dir():
    raise FileNotFoundError(f"no checkpoint directory {src}")
  dst = src.parent / f"{step}.corrupt-{int(time.time())}"
  src.rename(dst)
  logging.warning("moved checkpoint step %d aside: %s -> %s", step, src, dst)
  return dst


# ------------------------------------------------------------------- restore
def restore(manager, step: int, target: Any) -> Any:
  """`manager.restore(step)` into `target` (ShapeDtypeStructs with shardings)
  with validation: warns about interrupted writes, checks the step's
  structure first, and turns a failing read into a CheckpointError naming the
  step and its path. Every process calls it (collective restore)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = epath.Path(manager.directory)
  warn_uncommitted(root)
  path = step_path(root, step)
  _raise_if_damaged(root, step)
  _quiet_aborted_read_callbacks()
  try:
    mismatches = config_mismatches(root, step, target)
  except Exception as e:  # pylint: disable=broad-except  (unreadable metadata is damage)
    raise CorruptCheckpointError(corrupt_message(root, step, [], cause=e), step=step,
                                 path=path) from e
  if mismatches:
    raise CheckpointError(
        f"checkpoint step {step} at {path} was written by a different configuration than "
        "the current one (its files are fine):\n" + "\n".join(f"  - {m}" for m in mismatches)
        + "\nResume with the config the run was started with (MODEL_DIR/config.gin), or "
        "use a new MODEL_DIR.", step=step, path=path)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # pylint: disable=broad-except
    # Structure, shapes and dtypes matched: what fails now is reading the files.
    raise CorruptCheckpointError(corrupt_message(root, step, [], cause=e), step=step,
                                 path=path) from e
  raise_on_checksum_mismatch(root, step, restored)
  return restored


def raise_on_checksum_mismatch(root, step: int, restored: Any, prefix: str = "") -> None:
  """CorruptCheckpointError naming the arrays of `restored` whose values differ
  from the checksums written when step `step` was saved (narlm.checksums)."""
  from narlm import checksums  # pylint: disable=g-import-not-at-top
  bad = checksums.verify(root, step, restored, prefix)
  if bad:
    shown = bad[:6] + ([f"... and {len(bad) - 6} more"] if len(bad) > 6 else [])
    problems = [f"array {name}: its values differ from the checksum written at save time"
                for name in shown]
    raise CorruptCheckpointError(corrupt_message(_root(root), step, problems), step=step,
                                 path=step_path(_root(root), step), problems=problems)
