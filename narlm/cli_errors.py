"""The entry points' error contract: a user error (bad flag, missing file,
unknown task, ...) is one `error: ...` line on stderr and exit status 2; a
bug keeps its traceback. Shared by `python -m narlm.compare` and
`python -m narlm.distill`."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

USER_ERRORS = (ValueError, FileNotFoundError)


def run(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> int:
  """main(argv) with user errors as one stderr line; returns the exit status."""
  try:
    main(argv)
  except USER_ERRORS as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2
  return 0
