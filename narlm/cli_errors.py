"""The entry points' error contract: a user error (bad flag, missing file,
unknown task, ...) is one `error: ...` line on stderr and exit status 2; a
bug keeps its traceback. Shared by `python -m narlm.compare`,
`python -m narlm.distill` and `python -m narlm.t5x_checkpoints`. User errors:
bad values and missing files, an unusable checkpoint (narlm.checkpoints'
CheckpointError: damaged, or written by another configuration) and a
destination that cannot be written (permissions, read-only filesystem)."""

from __future__ import annotations

import errno
import sys
from typing import Any, Callable, Sequence

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def _user_errors() -> tuple[type, ...]:
  from narlm import checkpoints  # pylint: disable=g-import-not-at-top  (imports orbax)
  return USER_ERRORS + (checkpoints.CheckpointError,)


def run(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> int:
  """main(argv) with user errors as one stderr line; returns the exit status."""
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless a user error)
    if isinstance(e, OSError) and getattr(e, "errno", None) == errno.EROFS:
      pass  # a read-only filesystem is the user's to fix, like a permission
    elif not isinstance(e, _user_errors()):
      raise
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2
  return 0
