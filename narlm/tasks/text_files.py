"""Plain-text files -> paragraphs or lines, as a pure tf.data pipeline.

`TextFileSource` (sources.py) reads pretraining text through this module. It
is written with tf.data ops only (TextLineDataset, scan, filter), not a
Python generator, so the trainer can checkpoint the input iterator and
resume where it stopped instead of replaying everything already consumed
(a `from_generator` dataset cannot be checkpointed). The only Python calls
are the warnings (`tf.py_function` under `tf.cond`): they run when a line
is not UTF-8 and once at the end of each file, and keep no state of their
own, so restoring an iterator does not depend on them.

Semantics (tested against a line-by-line reading in Python):
* files are read through tf.io (local, gs://, ...) and split on b'\\n';
  every b'\\r' is dropped (TextLineDataset's reading: CRLF files read as
  LF files; a stray CR inside a line disappears);
* a line that is not valid UTF-8 is skipped, counted in
  `stats['non_utf8_lines_skipped']` (sources.SOURCE_STATS for
  TextFileSource) and logged the first 10 times;
* byte-order marks at the start of the first line are dropped; lines are stripped of
  the whitespace `str.strip()` removes;
* 'line' mode yields stripped lines of at least `min_chars` characters;
  'paragraph' mode joins consecutive non-blank lines with a space and yields
  the paragraph at a blank line, at the end of the file, or once it holds
  `max_chars` characters (so a file without blank lines is not one example);
* at the end of a file: a warning naming it if it yielded nothing
  (`stats['text_files_without_text']`) or if most of its lines are
  not UTF-8.
"""

from __future__ import annotations

import functools

from absl import logging
import tensorflow as tf

# What Python's str.strip() strips, in RE2 syntax (RE2's \s lacks \v and the
# Unicode spaces; \pZ is the Unicode separators, U+0020 included).
_PY_WHITESPACE = r"[\pZ\t\n\x{0b}\f\r\x{1c}-\x{1f}\x{85}]"
_BOM = "\ufeff"


def strip_like_python(texts: tf.Tensor) -> tf.Tensor:
  """str.strip() on UTF-8 strings (any shape)."""
  return tf.strings.regex_replace(texts, f"^{_PY_WHITESPACE}+|{_PY_WHITESPACE}+$", "")


def is_valid_utf8(raw: tf.Tensor) -> tf.Tensor:
  """True where `raw` (bytes, any shape) decodes as UTF-8: transcoding with
  replacement leaves valid text byte-identical and changes invalid text."""
  fixed = tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace",
                                       replacement_char=0xFFFD,
                                       replace_control_characters=False)
  return tf.equal(fixed, raw)


def _log_bad_line(stats, path, lineno) -> int:
  n = stats.add("non_utf8_lines_skipped")
  if n <= 10:
    logging.warning("%s:%d: skipping line that is not valid UTF-8; %d such line(s) so far",
                    path.numpy().decode("utf-8", "replace"), int(lineno), n)
  return 0


def _log_end_of_file(stats, path, lines, bad_lines, yielded, min_chars) -> int:
  path, lines, bad_lines = path.numpy().decode("utf-8", "replace"), int(lines), int(bad_lines)
  if bad_lines and bad_lines * 2 > lines:
    logging.warning("%s: %d of its %d lines are not valid UTF-8 (another encoding, or not a "
                    "text file?); they were skipped", path, bad_lines, lines)
  if not int(yielded):
    stats.add("text_files_without_text")
    logging.warning("%s: no text in this file (%s); skipped", path,
                    "empty" if not lines else
                    f"{lines} line(s), none valid UTF-8 text of >= {int(min_chars)} characters")
  return 0


def _python_call(fn, args) -> tf.Tensor:
  return tf.py_function(fn, args, Tout=tf.int32)


def read_text_file(path: tf.Tensor, mode: str, min_chars: int, stats,
                   max_chars: int = 100_000) -> tf.data.Dataset:
  """One file's texts (scalar tf.string elements); see the module docstring.
  `stats` counts with `.add(key) -> running total` (sources._Stats)."""
  if mode not in ("paragraph", "line"):
    raise ValueError(f"mode must be 'paragraph' or 'line', got {mode!r}")
  paragraphs = mode == "paragraph"
  lines = tf.data.TextLineDataset(path).enumerate(start=1)
  # A sentinel line number 0 marks the end of the file: it flushes the last
  # paragraph and triggers the per-file report.
  lines = lines.concatenate(tf.data.Dataset.from_tensors((tf.constant(0, tf.int64), "")))
  zero = tf.constant(0, tf.int64)
  # State: lines read, lines not UTF-8, texts yielded, paragraph so far, its characters.
  initial = (zero, zero, zero, tf.constant(""), zero)

  def step(state, element):
    n_lines, n_bad, n_yielded, chunk, chunk_chars = state
    lineno, raw = element
    eof = tf.equal(lineno, 0)
    valid = tf.logical_and(tf.logical_not(eof), is_valid_utf8(raw))
    bad = tf.logical_and(tf.logical_not(eof), tf.logical_not(valid))
    n_lines = tf.where(eof, n_lines, lineno)
    n_bad += tf.cast(bad, tf.int64)
    line = tf.where(tf.equal(lineno, 1),
                    tf.strings.regex_replace(raw, f"^{_BOM}+", ""), raw)
    line = tf.where(valid, strip_like_python(line), "")
    line_chars = tf.strings.length(line, unit="UTF8_CHAR")
    if paragraphs:
      extend = tf.logical_and(valid, line_chars > 0)
      chunk = tf.where(extend, tf.where(chunk_chars > 0,
                                        tf.strings.join([chunk, line], separator=" "), line),
                       chunk)
      chunk_chars += tf.where(extend, tf.cast(line_chars, tf.int64) + 1, zero)
      # A blank (valid) line, the end of the file or a full paragraph ends it.
      ends = tf.logical_or(tf.logical_and(valid, line_chars == 0), eof)
      flush = tf.logical_and(chunk_chars > 0,
                             tf.logical_or(ends, chunk_chars >= max_chars))
      text = chunk
      emit = tf.logical_and(flush, tf.strings.length(text, unit="UTF8_CHAR") >= min_chars)
      chunk = tf.where(flush, "", chunk)
      chunk_chars = tf.where(flush, zero, chunk_chars)
    else:
      text = line
      emit = tf.logical_and(valid, line_chars >= min_chars)
    n_yielded += tf.cast(emit, tf.int64)
    out = {"text": text, "emit": emit, "bad": bad, "eof": eof, "lineno": lineno,
           "lines": n_lines, "bad_lines": n_bad, "yielded": n_yielded}
    return (n_lines, n_bad, n_yielded, chunk, chunk_chars), out

  def report(out):
    bad = tf.cond(out["bad"], lambda: _python_call(functools.partial(_log_bad_line, stats), [path, out["lineno"]]),
                  lambda: tf.constant(0))
    eof = tf.cond(out["eof"],
                  lambda: _python_call(functools.partial(_log_end_of_file, stats), [path, out["lines"], out["bad_lines"],
                                                          out["yielded"], min_chars]),
                  lambda: tf.constant(0))
    with tf.control_dependencies([bad, eof]):
      return {"text": tf.identity(out["text"]), "emit": tf.identity(out["emit"])}

  return (lines.scan(initial, step)
          .map(report)
          .filter(lambda out: out["emit"])
          .map(lambda out: out["text"]))


def checkpointable(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` with tf.data allowed to save its iterator past `tf.py_function`s.

  tf.data refuses to serialise an iterator through a py_function ("EagerPyFunc
  is stateful") because it cannot see that the function keeps no state. Ours
  keep none (warnings here, HTML unescaping and target alignment in
  preprocessors.py), so their state is rightly ignored; a Python generator
  source would still fail loudly ("does not support checkpointing").
  """
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return ds.with_options(options)


def read_text_files(files, mode: str, min_chars: int, stats,
                    max_chars: int = 100_000) -> tf.data.Dataset:
  """Texts of `files` (a list of paths), file after file, in that order."""
  files = [str(f) for f in files]
  return checkpointable(tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)).flat_map(
      lambda path: read_text_file(path, mode, min_chars, stats, max_chars)))
