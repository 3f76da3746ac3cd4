"""narlm.tasks.text_files (the tf.data text reader) against a plain Python
reading of the same bytes, and its iterator checkpoint."""

import os
import random

import pytest
import tensorflow as tf

from narlm.tasks import sources
from narlm.tasks import text_files


def python_reading(data: bytes, mode: str, min_chars: int, max_chars: int) -> list[str]:
  """The reference: drop every b'\\r' (TextLineDataset does), split on
  b'\\n', skip lines that are not UTF-8, drop a BOM on line 1, str.strip(),
  then lines or blank-line paragraphs."""
  out, chunk, chunk_chars = [], [], 0
  raw_lines = data.replace(b"\r", b"").split(b"\n")
  if raw_lines and raw_lines[-1] == b"":
    raw_lines.pop()
  for lineno, raw in enumerate(raw_lines, 1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    if lineno == 1:
      line = line.lstrip("\ufeff")
    line = line.strip()
    if mode == "line":
      if len(line) >= min_chars:
        out.append(line)
      continue
    if line:
      chunk.append(line)
      chunk_chars += len(line) + 1
    if chunk and (not line or chunk_chars >= max_chars):
      text = " ".join(chunk)
      chunk, chunk_chars = [], 0
      if len(text) >= min_chars:
        out.append(text)
  if chunk and len(" ".join(chunk)) >= min_chars:
    out.append(" ".join(chunk))
  return out


PIECES = [b"word", b"two words", b"", b"  ", b"\t", b"\r", b"\xc2\xa0", b"\xe3\x80\x80",
          b"\x0b", b"\x1c", b"\xc2\x85", b"\xef\xbb\xbf", b"caf\xc3\xa9", b"\xc3\x28",
          b"\xff\xfe", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"x" * 30, b"\x00", b"\xef\xbf\xbd"]


def random_file(rng: random.Random) -> bytes:
  lines = [b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
           for _ in range(rng.randint(0, 12))]
  data = b"\n".join(lines)
  return data + (b"\n" if rng.random() < 0.5 else b"")


@pytest.mark.parametrize("mode,min_chars,max_chars", [
    ("paragraph", 1, 100_000), ("paragraph", 5, 25), ("line", 1, 100_000), ("line", 4, 0)])
def test_tf_reader_matches_python_on_random_files(tmp_path, mode, min_chars, max_chars):
  rng = random.Random(f"{mode}{min_chars}")
  files, want = [], []
  for i in range(40):
    data = random_file(rng)
    path = tmp_path / f"f{i}.txt"
    path.write_bytes(data)
    files.append(str(path))
    want += python_reading(data, mode, min_chars, max_chars)
  got = [t.decode("utf-8") for t in
         text_files.read_text_files(files, mode, min_chars, sources.SOURCE_STATS,
                                    max_chars=max_chars).as_numpy_iterator()]
  assert got == want


def test_utf8_check_agrees_with_python():
  rng = random.Random(0)
  samples = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
  samples += [p for p in PIECES]
  got = text_files.is_valid_utf8(tf.constant(samples)).numpy().tolist()

  def valid(b):
    try:
      b.decode("utf-8")
      return True
    except UnicodeDecodeError:
      return False
  assert got == [valid(b) for b in samples]


def test_iterator_resumes_mid_file_from_a_checkpoint(tmp_path):
  """The point of the tf.data reader: its position can be saved and
  restored (a from_generator source raises 'does not support
  checkpointing'), mid-paragraph included."""
  for i in range(3):
    (tmp_path / f"b{i}.txt").write_text(
        "\n".join(f"line {i}.{j}" + ("\n" if j % 3 == 2 else "") for j in range(20)))
  files = sorted(str(p) for p in tmp_path.glob("b*.txt"))

  def dataset():
    return text_files.read_text_files(files, "paragraph", 1, sources.SOURCE_STATS)
  everything = [t.decode() for t in dataset().as_numpy_iterator()]
  it = iter(dataset())
  for _ in range(7):
    next(it)
  path = tf.train.Checkpoint(iterator=it).write(os.path.join(tmp_path, "ckpt", "it"))
  fresh = iter(dataset())
  tf.train.Checkpoint(iterator=fresh).read(path).assert_consumed()
  assert [t.numpy().decode() for t in fresh] == everything[7:]
