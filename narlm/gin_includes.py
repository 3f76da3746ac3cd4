"""One experiment file for both trainers: how narlm's trainer reads t5x includes.

An experiment gin (e.g. narlm/gin/pretrain_base.gin) includes a narlm run gin,
`narlm/gin/runs/pretrain.gin` or `finetune.gin`, and those include t5x's own
run gin (`t5x/configs/runs/pretrain.gin` / `finetune.gin`) followed by
narlm's t5x glue (`narlm/gin/t5x/runs/*.gin`). Under `t5x/train.py` gin reads
all of them as written. Under `python -m narlm.train` the same file is read
through `parse_files`, which resolves every include as gin would, except:

* t5x's run gins resolve to narlm's trainer run gin (`RUN_GIN_FOR_NARLM`),
  which reads the same macro names (MODEL_DIR, MIXTURE_OR_TASK_NAME,
  TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE, RANDOM_SEED, EVAL_PERIOD,
  EVAL_STEPS, EVALUATOR_NUM_EXAMPLES, SHUFFLE_TRAIN_EXAMPLES, ...);
* narlm's t5x glue (`T5X_ONLY_GINS`, which imports t5x) is skipped.

So there is no twin of an experiment per trainer. Only gin's public API is
used: every file is read by a file reader registered with
`gin.config.register_file_reader` under a private scheme
(`narlm-include:<path>`), which rewrites the include lines of the text it
returns so nested files come back through it too. Each file is still parsed by
its own `gin.parse_config` call (gin scopes `import` aliases per file), and
the parsed text carries the real path in gin's error locations.
"""

import io
import logging
import os
import re
from typing import Optional, Sequence

SCHEME = "narlm-include:"

# t5x's run gins -> narlm's trainer run gin (same macro names).
RUN_GIN_FOR_NARLM = "narlm/gin/runs/train.gin"
T5X_RUN_GINS = ("t5x/configs/runs/pretrain.gin", "t5x/configs/runs/finetune.gin")
# narlm's glue for t5x's trainer: imports t5x, so narlm's trainer skips it.
T5X_ONLY_GINS = ("narlm/gin/t5x/runs/common.gin", "narlm/gin/t5x/runs/finetune_restore.gin")

# Macro names narlm's trainer used before it read t5x's: a binding of one of
# these would now be silently unused, so it is refused with the new name.
RENAMED_MACROS = {
    "SEED": "RANDOM_SEED",
    "INFER_EVAL_EXAMPLES": "EVALUATOR_NUM_EXAMPLES",
    "SHUFFLE_TRAIN": "SHUFFLE_TRAIN_EXAMPLES",
}

# Module aliases t5x's run gins and narlm's t5x glue import: a binding through
# one of them (e.g. `trainer.Trainer.num_microbatches`) only means something
# under t5x's trainer; `T5X_EQUIVALENTS` names narlm's setting where one exists.
T5X_ALIASES = ("train_script", "trainer", "utils", "partitioning", "optimizers", "gin_utils",
               "adafactor", "infer_script", "eval_script")
T5X_EQUIVALENTS = {
    "trainer.Trainer.num_microbatches": "GRAD_ACCUM_STEPS",
    "utils.SaveCheckpointConfig.period": "CHECKPOINT_PERIOD",
    "utils.SaveCheckpointConfig.keep": "KEEP_CHECKPOINTS",
    "partitioning.PjitPartitioner.num_partitions": "NUM_MODEL_PARTITIONS",
    "train_script.train.eval_period": "EVAL_PERIOD",
    "train_script.train.eval_steps": "EVAL_STEPS",
    "train_script.train.stats_period": "LOG_PERIOD",
    "train_script.train.random_seed": "RANDOM_SEED",
}

_INCLUDE_RE = re.compile(r"""^(\s*)include\s+(['"])(.+?)\2(\s*(?:#.*)?)$""")
_search_paths: list[str] = []
_registered = False
_files_read: list[tuple[str, str]] = []  # (path, text) of the last parse_files


def _locate(path: str) -> str:
  """The file gin would read for `path`: as given (absolute or relative to the
  cwd), under a search path, or inside an importable package
  (`narlm/gin/x.gin` -> the installed narlm's file), in that order."""
  candidates = [path] if os.path.isabs(path) else [path] + [
      os.path.join(p, path) for p in _search_paths]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  if not os.path.isabs(path):
    from gin import resource_reader  # pylint: disable=g-import-not-at-top
    if resource_reader.system_path_file_exists(path):
      return resource_reader._parse_config_path(path)  # pylint: disable=protected-access
  raise IOError(f"gin file not found: {path} (searched the cwd and {_search_paths})")


def _rewrite(text: str, path: str) -> str:
  """`text` with each include routed back through this reader (t5x run gins
  swapped for narlm's, t5x-only glue dropped). Line numbers are kept."""
  out = []
  for line in text.split("\n"):
    match = _INCLUDE_RE.match(line)
    if match:
      indent, quote, target, rest = match.groups()
      if target in T5X_ONLY_GINS:
        line = f"{indent}# (narlm's trainer skips the t5x-only include {target}){rest}"
      else:
        if target in T5X_RUN_GINS:
          target = RUN_GIN_FOR_NARLM
        line = f"{indent}include {quote}{SCHEME}{target}{quote}{rest}"
    elif re.match(r"^\s*include\b", line):
      raise SyntaxError(f"{path}: cannot read the include statement {line.strip()!r} "
                        "(expected include 'path/to/file.gin')")
    out.append(line)
  return "\n".join(out)


class _NamedText(io.StringIO):
  """A file-like object with a `name`, so gin's errors name the real file."""

  def __init__(self, text: str, name: str):
    super().__init__(text)
    self.name = name


def _read(scheme_path: str):
  real = _locate(scheme_path[len(SCHEME):])
  try:
    with open(real, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise ValueError(f"gin file {real} is not UTF-8 text: {e}") from e
  _files_read.append((real, text))
  return _NamedText(_rewrite(text, real), real)


def _exists(scheme_path: str) -> bool:
  # Every scheme path is ours: a missing one fails in `_read` with its name
  # (gin adds the including file and line).
  return scheme_path.startswith(SCHEME)


def parse_files(gin_files: Sequence[str], gin_bindings: Sequence[str],
                search_paths: Sequence[str] = ()) -> None:
  """`gin.parse_config_files_and_bindings` for narlm's trainer: as gin, with
  t5x's run gins resolved to narlm's (module docstring)."""
  import gin  # pylint: disable=g-import-not-at-top
  global _registered
  for p in search_paths:
    if p not in _search_paths:
      _search_paths.append(p)
  if not _registered:
    gin.config.register_file_reader(_read, _exists)
    _registered = True
  for f in gin_files:
    _locate(f)  # a missing file is named before anything is parsed
  _files_read.clear()
  root = logging.getLogger()
  root.addFilter(_drop_resource_reader_misses)
  try:
    gin.parse_config_files_and_bindings([SCHEME + f for f in gin_files], list(gin_bindings))
  finally:
    root.removeFilter(_drop_resource_reader_misses)


def _drop_resource_reader_misses(record: logging.LogRecord) -> bool:
  """gin asks its package reader about every path before ours and logs each
  miss as an ERROR on the root logger ('Path not found: narlm-include:...');
  those are expected here, not problems."""
  return not (record.pathname.endswith("resource_reader.py") and SCHEME in record.getMessage())


def explain_unknown_binding(error: Exception) -> Optional[str]:
  """For gin's 'No configurable matching X' about a t5x-only binding: what it
  is and narlm's equivalent; None for any other error."""
  match = re.search(r"No configurable matching '([^']+)'", str(error))
  if not match:
    return None
  selector = match.group(1)
  alias = selector.split(".", 1)[0]
  if alias not in T5X_ALIASES:
    return None
  # gin names the configurable; the quoted line has the parameter too.
  full = re.search(rf"({re.escape(selector)}\.\w+)\s*=", str(error))
  selector = full.group(1) if full else selector
  equivalent = next((macro for name, macro in T5X_EQUIVALENTS.items()
                     if name.startswith(selector) or selector.startswith(name)), None)
  hint = f"; narlm's trainer reads {equivalent} instead" if equivalent else ""
  return (f"{selector} is a binding for t5x's trainer (t5x/train.py), which narlm's trainer "
          f"does not have{hint}")


def check_renamed_macros(gin_bindings: Sequence[str]) -> None:
  """Refuses a binding (file or command line) of a macro narlm renamed to
  t5x's name, naming the binding and where it comes from."""
  import gin  # pylint: disable=g-import-not-at-top
  for old, new in RENAMED_MACROS.items():
    try:
      gin.query_parameter(f"%{old}")
    except ValueError:
      continue
    where = next((b for b in gin_bindings if b.split("=", 1)[0].strip() == old), None)
    files = [path for path, text in _files_read
             if re.search(rf"^\s*{old}\s*=", text, flags=re.MULTILINE)]
    origin = (f"the command-line binding {where!r}" if where else
              f"{', '.join(files)}" if files else "a gin file")
    raise ValueError(f"{old} is bound by {origin}, but narlm's trainer now reads t5x's "
                     f"macro name {new} (one experiment file for both trainers): "
                     f"write {new} = ...")
