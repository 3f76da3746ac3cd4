"""What narlm's command-line tools print for people, and where the rest goes.

The console gets a header, one line per log period and evaluation summaries
with a few samples (all written through the ``narlm.console`` logger), plus
narlm's own warnings and every error. Everything else that the libraries log
at INFO (orbax option dumps, seqio feature listings, clu progress notes,
per-example truncation notices) goes to the run's log file only
(``MODEL_DIR/train.log``); ``--verbosity=1`` sends it to the console too.
TensorBoard events and the JSONL files are unchanged.

Usage (as `narlm.train.console_main` does)::

  console.setup(verbosity)            # before heavy imports
  console.log_to_file(model_dir)      # once the run directory is known
  console.say("...")                  # a line for people
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from typing import Any, Mapping, Optional, Sequence

CONSOLE_LOGGER = "narlm.console"
LOG_FILE_NAME = "train.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

console_logger = logging.getLogger(CONSOLE_LOGGER)


class _ForPeople(logging.Filter):
  """Console filter at verbosity 0: narlm's console lines, narlm's own
  warnings (the root logger, which narlm's modules log to) and any error."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == CONSOLE_LOGGER or record.levelno >= logging.ERROR:
      return True
    return record.levelno >= logging.WARNING and record.name == "root"


class _ConsoleFormatter(logging.Formatter):
  """Console lines as written; warnings and errors prefixed by their level in
  lower case (``error: ...``, ``warning: ...``), the prefix every narlm entry
  point uses (narlm.cli_errors)."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.name != CONSOLE_LOGGER and record.levelno >= logging.WARNING:
      message = f"{record.levelname.lower()}: {message}"
    return message


def setup(verbosity: int = 0, stream=None) -> None:
  """Configures logging for a command-line run.

  verbosity 0: the console shows what `_ForPeople` lets through; 1: every
  INFO record as well (the old behaviour). Also quiets TensorFlow's and
  XLA's C++ logging: at verbosity 0 it goes to the log file
  (`capture_native_stderr`), with TF_CPP_MIN_LOG_LEVEL=2 unless set.
  """
  if verbosity <= 0:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    capture_native_stderr()
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  for handler in list(root.handlers):
    if getattr(handler, "_narlm_console", False):
      root.removeHandler(handler)
  # Lines for people on stdout; warnings and errors on stderr (the terminal's,
  # also when native stderr is captured).
  out = logging.StreamHandler(stream or sys.stdout)
  out.addFilter(lambda record: record.levelno < logging.WARNING)
  err = logging.StreamHandler(stream or sys.stderr)
  err.setLevel(logging.WARNING)
  for handler in (out, err):
    handler._narlm_console = True  # pylint: disable=protected-access
    if verbosity <= 0:
      handler.addFilter(_ForPeople())
      handler.setFormatter(_ConsoleFormatter())
    else:
      handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
  try:  # absl (orbax, clu) otherwise warns about logging before absl.app
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging._warn_preinit_stderr = False  # pylint: disable=protected-access
  except ImportError:
    pass


# Native (C++) logging of TensorFlow, XLA and absl writes straight to file
# descriptor 2 and ignores TF_CPP_MIN_LOG_LEVEL for its start-up lines. At
# verbosity 0, `capture_native_stderr` points descriptor 2 at a temporary file
# (then at the run's log file), while Python's `sys.stderr` keeps the real
# terminal: tracebacks and Python warnings still reach the user.
_native = {"fd": None, "path": None}


def capture_native_stderr() -> None:
  if _native["fd"] is not None:
    return
  sys.stderr.flush()
  terminal = os.dup(2)
  sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")
  fd, path = tempfile.mkstemp(prefix="narlm-native-", suffix=".log")
  os.dup2(fd, 2)
  os.close(fd)
  _native.update(fd=terminal, path=path)
  atexit.register(_drop_early_native_log)


def _drop_early_native_log() -> None:
  """At exit before a log file existed (e.g. a refused flag): the start-up
  chatter in the temporary file is not kept."""
  if _native["path"] is not None and os.path.exists(_native["path"]):
    os.unlink(_native["path"])


def _move_native_stderr_to(log_path: str) -> None:
  """Appends what native code wrote so far to `log_path` and sends the rest there."""
  if _native["fd"] is None or _native["path"] is None:
    return
  with open(log_path, "ab") as out, open(_native["path"], "rb") as early:
    out.write(early.read())
  fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
  os.dup2(fd, 2)
  os.close(fd)
  os.unlink(_native["path"])
  _native["path"] = None


def log_to_file(model_dir: Optional[str]) -> Optional[str]:
  """Appends every INFO+ record (and, at verbosity 0, native libraries'
  output) to MODEL_DIR/train.log (local directories only; returns the path,
  or None)."""
  if not model_dir or "://" in model_dir:
    return None
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, LOG_FILE_NAME)
  root = logging.getLogger()
  for handler in root.handlers:
    if getattr(handler, "baseFilename", None) == os.path.abspath(path):
      return path
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter(_FORMAT))
  handler.setLevel(logging.INFO)
  root.addHandler(handler)
  _move_native_stderr_to(path)
  return path


def stop_log_file(model_dir: Optional[str]) -> None:
  """Closes the MODEL_DIR/train.log handler that `log_to_file` added (a
  process that trains several runs, e.g. tests, does not keep writing to
  earlier runs' logs)."""
  if not model_dir:
    return
  path = os.path.abspath(os.path.join(model_dir, LOG_FILE_NAME))
  root = logging.getLogger()
  for handler in list(root.handlers):
    if getattr(handler, "baseFilename", None) == path:
      root.removeHandler(handler)
      handler.close()


def say(message: str, *args: Any) -> None:
  """One line (or a few) for people, on the console and in the log file."""
  console_logger.info(message, *args)


def format_duration(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def progress_line(step: int, total: int, metrics: Mapping[str, float], steps_per_sec: float,
                  remaining_steps: int, budget_eta_seconds: Optional[float] = None) -> str:
  """'step  25/125 (20%)  loss 3.646  tok-acc 0.41  0.13 steps/s  ETA 12m50s'.

  `budget_eta_seconds`: when a compute budget (MAX_TRAIN_CPU_SECONDS) will
  stop the run before its last step, the wall time left until it does; the
  ETA is then that, marked '(CPU budget)'."""
  width = len(str(total))
  parts = [f"step {step:>{width}}/{total} ({100 * step // max(total, 1):>3d}%)"]
  if "train/loss" in metrics:
    parts.append(f"loss {metrics['train/loss']:.3f}")
  if "train/token_accuracy" in metrics:
    parts.append(f"tok-acc {metrics['train/token_accuracy']:.2f}")
  parts.append(f"{steps_per_sec:.2f} steps/s")
  if steps_per_sec > 0 and remaining_steps > 0:
    eta = remaining_steps / steps_per_sec
    if budget_eta_seconds is not None and 0 <= budget_eta_seconds < eta:
      parts.append(f"ETA {format_duration(budget_eta_seconds)} (CPU budget)")
    else:
      parts.append(f"ETA {format_duration(eta)}")
  return "  ".join(parts)


def eval_lines(step: int, results: Mapping[str, float],
               samples: Sequence[tuple[str, str, str]] = (), max_samples: int = 2,
               max_chars: int = 160) -> list[str]:
  """An evaluation summary: the loss, each task metric, a few samples."""
  metrics = [f"{name.split('/', 1)[1]} {value:.2f}" for name, value in sorted(results.items())
             if name.startswith("eval/") and name.count("/") == 2
             and not name.endswith(("_ratio",))]
  head = f"eval @ step {step}:"
  if "eval/loss" in results:
    head += f" loss {results['eval/loss']:.3f}"
  lines = [head + ("  " + "  ".join(metrics) if metrics else "")]

  def cut(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"

  for source, prediction, target in list(samples)[:max_samples]:
    lines += [f"  input:      {cut(source)}", f"  prediction: {cut(prediction)}",
              f"  reference:  {cut(target)}"]
  return lines


def pop_verbosity(argv: Sequence[str]) -> tuple[list[str], int]:
  """Removes `--verbosity=N` (or `-v`) from argv; returns (rest, N)."""
  rest, verbosity = [], 0
  for arg in argv:
    if arg.startswith("--verbosity="):
      value = arg.split("=", 1)[1]
      if not value.lstrip("-").isdigit():
        raise SystemExit(f"--verbosity must be an integer, got {value!r}")
      verbosity = int(value)
    elif arg == "-v":
      verbosity = 1
    else:
      rest.append(arg)
  return rest, verbosity
