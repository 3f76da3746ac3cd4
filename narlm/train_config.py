"""The trainer's gin handling: t5x-style flags, parsing with clear errors,
refusing bindings nobody uses, and MODEL_DIR/config.gin."""

from __future__ import annotations

import os
import re
import tokenize
from typing import Optional, Sequence

import jax


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin with clear errors for missing files and bad syntax.

  Experiment files are shared with t5x's trainer: their includes of t5x's
  run gins resolve to narlm's (narlm/gin_includes.py), and a t5x-only binding
  or a macro under its old narlm name is refused with a message naming it.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from narlm import gin_includes  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for path in [here, os.getcwd(), *search_paths]:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    candidates = [f] + [os.path.join(p, f) for p in [here, *search_paths]]
    if not any(os.path.exists(c) for c in candidates):
      raise FileNotFoundError(f"gin file not found: {f}")
  try:
    gin_includes.parse_files(list(gin_files), list(gin_bindings), [here, *search_paths])
  except (SyntaxError, ValueError, KeyError, ImportError, TypeError, IOError,
          tokenize.TokenError) as e:
    # tokenize.TokenError: e.g. an unclosed '(' (gin's parser does not wrap it).
    t5x_only = gin_includes.explain_unknown_binding(e)
    reason = f"{t5x_only}\n{e}" if t5x_only else str(e)
    raise ValueError(f"could not parse gin config {list(gin_files)} + {list(gin_bindings)}: "
                     f"{reason}") from e
  gin_includes.check_renamed_macros(gin_bindings)
  check_macro_bindings_are_used(gin_files, gin_bindings, gin.config_str())


def check_macro_bindings_are_used(gin_files: Sequence[str], gin_bindings: Sequence[str],
                                  config_text: str) -> None:
  """Refuses a command-line macro binding (`--gin.NAME=...`) that nothing uses.

  Gin accepts `NAME = 3` for any NAME (it just defines a macro), so a typo
  such as `--gin.LEARNIG_RATE=1e-3` would silently train with the default.
  A macro binding has an effect only if the parsed config references
  `%NAME`; otherwise this raises a ValueError naming the binding, the gin
  files and the closest macro names they do use.
  """
  import difflib  # pylint: disable=g-import-not-at-top
  used = set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", config_text))
  for binding in gin_bindings:
    name = binding.split("=", 1)[0].strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in used:
      continue  # a configurable's parameter (gin checks those) or a used macro
    close = difflib.get_close_matches(name, sorted(used), n=3, cutoff=0.6)
    if close:
      hint = f"; did you mean {', '.join(close)}?"
    else:  # nothing similar: show what can be set
      names = sorted(used)
      hint = (f"; the macros they use are {', '.join(names[:25])}"
              + (f" and {len(names) - 25} more" if len(names) > 25 else ""))
    raise ValueError(f"gin binding {binding!r}: no gin file in {list(gin_files)} uses the "
                     f"macro {name} (%{name}), so it would have no effect{hint}")


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """t5x-style flags: --gin_file=F (repeatable), --gin.NAME=VALUE,
  --gin_bindings=B, --gin_search_paths=a,b."""
  files, bindings, search = [], [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin_file="):
      files.append(arg.split("=", 1)[1])
    elif arg == "--gin_file":
      files.append(next(it))
    elif arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {value}")
    elif arg.startswith("--gin_bindings="):
      bindings.append(arg.split("=", 1)[1])
    elif arg.startswith("--gin_search_paths="):
      search.extend(p for p in arg.split("=", 1)[1].split(",") if p)
    else:
      raise ValueError(f"unknown argument {arg!r}; expected --gin_file=, --gin.NAME=VALUE, "
                       "--gin_bindings= or --gin_search_paths=")
  if not files:
    raise ValueError("no --gin_file given (e.g. --gin_file=narlm/gin/quickstart_cpu.gin)")
  return files, bindings, search


def write_config(model_dir: Optional[str], text: str) -> None:
  """Writes MODEL_DIR/config.gin atomically (temp file + rename), process 0 only."""
  if not model_dir or jax.process_index() != 0:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from narlm.run_dirs import write_text_atomically  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(model_dir)
  write_text_atomically(os.path.join(model_dir, "config.gin"), text)


def _bound_model_dir(fn) -> Optional[str]:
  """The gin-bound `model_dir` of `fn` (following a macro such as %MODEL_DIR)."""
  import gin  # pylint: disable=g-import-not-at-top
  value = gin.get_bindings(fn).get("model_dir")
  if isinstance(value, gin.config.ConfigurableReference):
    value = gin.query_parameter(str(value))
  return value if isinstance(value, str) else None
