"""seqio data sources over plain-text files, and where narlm's data lives.

Paths are resolved when a dataset is built, not at import, so environment
variables set after `import narlm.tasks` still take effect:

* `NARLM_DATA_DIR`: root of the offline data (default `<repo>/../shared/data`).
* `NARLM_GIGAWORD_DIR`: Gigaword in `{train,dev,test}.{src,tgt}` text format
  (default `$NARLM_DATA_DIR/gigaword`).
* `NARLM_BOOKCORPUS_DIR`: a directory of BookCorpus `.txt` files, searched
  recursively (default `$NARLM_DATA_DIR/bookcorpus`).
* `NARLM_DISTILLED_DIR`: root of sequence-level distillation outputs
  (`python -m narlm.distill --out $NARLM_DISTILLED_DIR/sentcomp`). No default:
  the shared data dir is read-only, so an unset or missing directory is a
  `FileNotFoundError` naming the variable.

Bad-input policy
----------------
`PairedTextFileSource` (aligned supervised data) is strict: before the first
example is produced, both files of a split are scanned once (cached per
process by path, size and mtime) and

* a missing file raises `FileNotFoundError` naming it,
* different line counts raise `ValueError` naming both files and counts,
* a line that is not valid UTF-8 raises `ValueError` naming file, line number
  and byte offset -- a bad byte in aligned data usually means a wrong encoding
  or a corrupt/misaligned file, and skipping the line would silently hide it;
* pairs whose source line is blank (ASCII whitespace only) are skipped and
  counted (logged warning, `SOURCE_STATS['empty_input_pairs_skipped']`).
  Blank *targets* are kept (the converter turns them into `eos eos`).

`TextFileSource` (raw pretraining text, often scraped) is lenient: a line that
is not valid UTF-8 is skipped, counted (`SOURCE_STATS['non_utf8_lines_skipped']`)
and logged (the first 10 times); no files matching a split's patterns raises
`FileNotFoundError` naming the patterns. A file that yields no text at all
(empty, blank, or every line too short or not UTF-8) is skipped with a
warning naming it (`SOURCE_STATS['text_files_without_text']`), and a file
most of whose lines are not UTF-8 (another encoding, or not text: a
compressed or binary file) gets a warning naming it and the count, whatever
else it yields: neither is ever tokenised as garbage.
"""

import fnmatch
import os
import random
import threading
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
import seqio
import tensorflow as tf

from narlm.tasks import text_files
from narlm.vocabularies import data_dir, DATA_DIR_ENV  # pylint: disable=unused-import

GIGAWORD_DIR_ENV = "NARLM_GIGAWORD_DIR"
BOOKCORPUS_DIR_ENV = "NARLM_BOOKCORPUS_DIR"
DISTILLED_DIR_ENV = "NARLM_DISTILLED_DIR"

PathLike = Union[str, os.PathLike]
DirSpec = Union[None, PathLike, Callable[[], PathLike]]

_ASCII_WS = b" \t\n\r\f\v"


def _env_dir(env: str, default_subdir: str) -> str:
  value = os.environ.get(env)
  if value:
    return os.path.abspath(os.path.expanduser(value))
  return os.path.join(data_dir(), default_subdir)


def gigaword_dir() -> str:
  return _env_dir(GIGAWORD_DIR_ENV, "gigaword")


def bookcorpus_dir() -> str:
  return _env_dir(BOOKCORPUS_DIR_ENV, "bookcorpus")


def distilled_dir(*parts: str) -> Callable[[], str]:
  """Lazy `$NARLM_DISTILLED_DIR/parts` for use as a source's `base_dir`.

  Raises (when called, i.e. when a dataset is built) FileNotFoundError naming
  the variable if it is unset or the directory does not exist.
  """
  def resolve() -> str:
    root = os.environ.get(DISTILLED_DIR_ENV)
    hint = (f"point ${DISTILLED_DIR_ENV} at the root of the distilled data "
            f"(written by `python -m narlm.distill --out ${DISTILLED_DIR_ENV}/"
            f"{'/'.join(parts)}`)")
    if not root:
      raise FileNotFoundError(f"${DISTILLED_DIR_ENV} is not set: {hint}")
    path = os.path.join(os.path.abspath(os.path.expanduser(root)), *parts)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"distilled data dir {path!r} (from ${DISTILLED_DIR_ENV}="
                              f"{root!r}) does not exist: {hint}")
    return path
  return resolve


def shared_dir(*parts: str) -> Callable[[], str]:
  """Lazy `data_dir()/parts` for use as a source's `base_dir`."""
  return lambda: os.path.join(data_dir(), *parts)


def _resolve_dir(base_dir: DirSpec) -> str:
  if base_dir is None:
    return ""
  if callable(base_dir):
    base_dir = base_dir()
  return os.fspath(base_dir)


class _Stats:
  """Process-wide counters of what the sources skipped."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: Dict[str, int] = {}

  def add(self, key: str, n: int = 1) -> int:
    with self._lock:
      self._counts[key] = self._counts.get(key, 0) + n
      return self._counts[key]

  def __getitem__(self, key: str) -> int:
    with self._lock:
      return self._counts.get(key, 0)

  def as_dict(self) -> Dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def reset(self):
    with self._lock:
      self._counts.clear()

  def __repr__(self):
    return f"SourceStats({self.as_dict()})"


SOURCE_STATS = _Stats()


def _check_split(split: str, splits: Sequence[str], what: str):
  if split not in splits:
    raise ValueError(f"{what} has no split {split!r}; splits: {list(splits)}")


# ------------------------------------------------------------------- files
# Through tf.io.gfile, so data can live on any filesystem TensorFlow reads
# (local, gs://, ...), not only where Python's open() reaches.
class _RawLines:
  """Lines of a file as bytes, each with its b'\\n', like a binary Python
  file. GFile's own line iteration drops b'\\r' bytes, which would hide
  CR-only line endings, so lines are split here from raw blocks."""

  def __init__(self, path: str, block: int = 1 << 20):
    self._file = tf.io.gfile.GFile(path, "rb")
    self._block = block
    self._lines: list[bytes] = []
    self._rest = b""
    self._eof = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._file.close()

  def __iter__(self):
    return self

  def __next__(self) -> bytes:
    line = self.readline()
    if not line:
      raise StopIteration
    return line

  def readline(self) -> bytes:
    while not self._lines and not self._eof:
      data = self._file.read(self._block)
      if not data:
        self._eof = True
        if self._rest:
          self._lines.append(self._rest)
          self._rest = b""
        break
      parts = (self._rest + data).split(b"\n")
      self._rest = parts.pop()
      self._lines.extend(p + b"\n" for p in parts)
      self._lines.reverse()  # pop() from the end below
    return self._lines.pop() if self._lines else b""


def _open(path: str) -> _RawLines:
  return _RawLines(path)


def _is_file(path: str) -> bool:
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def _glob(pattern: str) -> list[str]:
  """tf.io.gfile.glob, plus `**` (any number of directories), which it lacks."""
  if "**" not in pattern:
    return tf.io.gfile.glob(pattern)
  root, rest = pattern.split("**", 1)
  root = root.rstrip("/") or "."
  rest = rest.lstrip("/")
  if not tf.io.gfile.isdir(root):
    return []
  found = []
  for directory, _, files in tf.io.gfile.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      relative = path[len(root):].lstrip("/")
      # `**/x` also matches `x` at the root, as in glob.glob(recursive=True).
      if fnmatch.fnmatch(relative, f"*/{rest}") or fnmatch.fnmatch(relative, rest):
        found.append(path)
  return found


# --------------------------------------------------------------- paired text
def _scan_pair(src: str, tgt: str) -> Dict[str, int]:
  """Validates a parallel file pair; returns counts (see module docstring)."""
  for path in (src, tgt):
    if not _is_file(path):
      raise FileNotFoundError(f"Data file not found: {path!r}")
  pairs = empty_inputs = 0
  with _open(src) as fs, _open(tgt) as ft:
    while True:
      ls, lt = fs.readline(), ft.readline()
      if not ls and not lt:
        break
      if not ls or not lt:
        n_src = pairs + (1 if ls else 0) + sum(1 for _ in fs)
        n_tgt = pairs + (1 if lt else 0) + sum(1 for _ in ft)
        raise ValueError(
            f"Parallel files have different line counts: {src!r} has {n_src} "
            f"lines, {tgt!r} has {n_tgt}")
      pairs += 1
      for path, line in ((src, ls), (tgt, lt)):
        try:
          line.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(
              f"{path}:{pairs}: line is not valid UTF-8 (byte {e.start} of the "
              f"line: {line[e.start:e.start + 4]!r}); fix or re-encode the "
              "file") from None
        if b"\r" in line.rstrip(b"\n").rstrip(b"\r"):
          # TextLineDataset splits on \n only: CR-only (old Mac) line endings
          # would make the whole file one giant example.
          raise ValueError(
              f"{path}:{pairs}: line contains a carriage return (\\r): the file has "
              "CR-only line endings or stray CRs; convert it to \\n line endings "
              "(e.g. `tr '\\r' '\\n'`)")
      if not ls.strip(_ASCII_WS):
        empty_inputs += 1
  return {"pairs": pairs, "empty_input_pairs_skipped": empty_inputs,
          "examples": pairs - empty_inputs}


_SCAN_CACHE: Dict[tuple, Dict[str, int]] = {}
_SCAN_LOCK = threading.Lock()


def scan_pair(src: str, tgt: str) -> Dict[str, int]:
  """Cached `_scan_pair` (key: paths, sizes and mtimes)."""
  def stamp(p):
    try:
      st = os.stat(p)
      return (st.st_size, st.st_mtime_ns)
    except OSError:
      return None
  key = (os.path.abspath(src), stamp(src), os.path.abspath(tgt), stamp(tgt))
  with _SCAN_LOCK:
    if key in _SCAN_CACHE:
      return _SCAN_CACHE[key]
  result = _scan_pair(src, tgt)
  with _SCAN_LOCK:
    _SCAN_CACHE[key] = result
  if result["empty_input_pairs_skipped"]:
    SOURCE_STATS.add("empty_input_pairs_skipped",
                     result["empty_input_pairs_skipped"])
    logging.warning("%s: skipping %d of %d pairs whose source line is blank",
                    src, result["empty_input_pairs_skipped"], result["pairs"])
  return result


class PairedTextFileSource(seqio.DataSource):
  """Line-aligned source/target text files -> {'inputs': str, 'targets': str}.

  Args:
    split_to_files: split -> (source file, target file) or (source file,
      target file, (start, stop)): the optional line range is a Python slice
      of the line pairs (negative values count from the end, stop None = to
      the end), e.g. a held-out dev set carved from a train file:
      ``{"train": (s, t, (0, -500)), "validation": (s, t, (-500, None))}``.
      Relative paths are joined to `base_dir`.
    base_dir: a directory, or a zero-argument callable returning one
      (resolved when a dataset is built).
    inputs_key, targets_key: output feature names.
  """

  def __init__(self,
               split_to_files: Mapping[str, tuple],
               base_dir: DirSpec = None,
               inputs_key: str = "inputs",
               targets_key: str = "targets"):
    self._split_to_files = {}
    self._line_ranges: Dict[str, Optional[Tuple[int, Optional[int]]]] = {}
    for split, spec in split_to_files.items():
      if len(spec) not in (2, 3):
        raise ValueError(f"split {split!r}: expected (source, target) or (source, target, "
                         f"(start, stop)), got {spec!r}")
      self._split_to_files[split] = (os.fspath(spec[0]), os.fspath(spec[1]))
      self._line_ranges[split] = tuple(spec[2]) if len(spec) == 3 else None
    self._base_dir = base_dir
    self._keys = (inputs_key, targets_key)
    super().__init__(splits=list(self._split_to_files))

  def files(self, split: str) -> Tuple[str, str]:
    _check_split(split, self.splits, repr(self))
    base = _resolve_dir(self._base_dir)
    return tuple(os.path.join(base, p) for p in self._split_to_files[split])

  def line_range(self, split: str) -> Tuple[int, int]:
    """[start, stop) line-pair indices of the split (after validating its files)."""
    counts = scan_pair(*self.files(split))
    start, stop, _ = slice(*(self._line_ranges[split] or (None, None))).indices(counts["pairs"])
    if stop <= start:
      raise ValueError(f"split {split!r}: line range {self._line_ranges[split]} of "
                       f"{self.files(split)[0]!r} ({counts['pairs']} lines) is empty")
    return start, stop

  def validate(self, split: str) -> Dict[str, int]:
    """Scans the split's files (raising on bad input); returns counts."""
    counts = scan_pair(*self.files(split))
    if self._line_ranges[split] is None:
      return counts
    start, stop = self.line_range(split)
    empty = 0
    with _open(self.files(split)[0]) as f:
      for i, line in enumerate(f):
        if i >= stop:
          break
        if i >= start and not line.strip(_ASCII_WS):
          empty += 1
    return {"pairs": stop - start, "empty_input_pairs_skipped": empty,
            "examples": stop - start - empty}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def num_input_examples(self, split: str) -> Optional[int]:
    return self.validate(split)["examples"]

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info=None, *,
                  sequence_length=None, use_cached=False, num_epochs=1):
    del shuffle, seed, sequence_length, use_cached, num_epochs  # one file
    src, tgt = self.files(split)
    self.validate(split)
    ds = tf.data.Dataset.zip((tf.data.TextLineDataset(src),
                              tf.data.TextLineDataset(tgt)))
    if self._line_ranges[split] is not None:
      start, stop = self.line_range(split)
      ds = ds.skip(start).take(stop - start)
    ds = ds.map(lambda s, t: (tf.strings.strip(s), tf.strings.strip(t)),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda s, t: tf.strings.length(s) > 0)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    ik, tk = self._keys
    return ds.map(lambda s, t: {ik: s, tk: t},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def __repr__(self):
    return (f"PairedTextFileSource(base_dir={_resolve_dir(self._base_dir)!r}, "
            f"split_to_files={self._split_to_files})")


# ---------------------------------------------------------------- plain text
class TextFileSource(seqio.DataSource):
  """Plain-text files -> {'text': str}, one example per paragraph or line.

  Args:
    split_to_patterns: split -> glob pattern(s) (`**` recurses); relative
      patterns are joined to `base_dir`.
    base_dir: a directory or zero-argument callable (resolved at use).
    mode: 'paragraph' (consecutive non-blank lines joined by a space; right
      for hard-wrapped books and for one-paragraph-per-line text) or 'line'.
    min_chars: drop shorter paragraphs/lines.
    text_key: output feature name.

  Shards are files: with `shard_info`, host i reads files i, i+n, ...;
  `shuffle` shuffles the file order (seeded).
  """

  def __init__(self,
               split_to_patterns: Mapping[str, Union[str, Sequence[str]]],
               base_dir: DirSpec = None,
               mode: str = "paragraph",
               min_chars: int = 1,
               text_key: str = "text"):
    if mode not in ("paragraph", "line"):
      raise ValueError(f"mode must be 'paragraph' or 'line', got {mode!r}")
    self._patterns = {
        k: ([v] if isinstance(v, (str, os.PathLike)) else list(v))
        for k, v in split_to_patterns.items()}
    self._base_dir = base_dir
    self._mode = mode
    self._min_chars = int(min_chars)
    self._text_key = text_key
    super().__init__(splits=list(self._patterns))

  def patterns(self, split: str) -> Sequence[str]:
    _check_split(split, self.splits, repr(self))
    base = _resolve_dir(self._base_dir)
    return [os.path.join(base, os.fspath(p)) for p in self._patterns[split]]

  def list_shards(self, split: str) -> Sequence[str]:
    pats = self.patterns(split)
    files = sorted({f for p in pats for f in _glob(p) if _is_file(f)})
    if not files:
      raise FileNotFoundError(
          f"No text files match {pats} (split {split!r}); set "
          f"${DATA_DIR_ENV} or the dataset's directory env var")
    return files

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info=None, *,
                  sequence_length=None, use_cached=False, num_epochs=1):
    del sequence_length, use_cached, num_epochs
    files = list(self.list_shards(split))
    if shard_info and shard_info.num_shards > 1:
      files = files[shard_info.index::shard_info.num_shards]
    if shuffle:
      random.Random(seed).shuffle(files)
    key = self._text_key
    # Pure tf.data (no Python generator): the trainer can checkpoint its
    # position in this stream and resume without replaying it.
    ds = text_files.read_text_files(files, self._mode, self._min_chars, SOURCE_STATS)
    return ds.map(lambda t: {key: t})

  def __repr__(self):
    return (f"TextFileSource(base_dir={_resolve_dir(self._base_dir)!r}, "
            f"patterns={self._patterns}, mode={self._mode!r})")
