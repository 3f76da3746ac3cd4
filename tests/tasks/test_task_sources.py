"""Tests for narlm.tasks.sources: good and bad input files."""

import os

import pytest
import seqio

from narlm.tasks import sources
from narlm.tasks import text_files


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


def _pairs(tmp_path, src: bytes, tgt: bytes, name="d"):
  _write(tmp_path / f"{name}.src", src)
  _write(tmp_path / f"{name}.tgt", tgt)
  return sources.PairedTextFileSource({"train": (f"{name}.src", f"{name}.tgt")},
                                      base_dir=str(tmp_path))


def _read(ds):
  return [{k: v.decode("utf-8") for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_paired_source_reads_strips_and_skips_blank_sources(tmp_path):
  sources.SOURCE_STATS.reset()
  src = _pairs(tmp_path, b"first source\r\n\n   \nlast source", b"t1\r\nt2\nt3\n\n")
  assert src.validate("train") == {"pairs": 4, "empty_input_pairs_skipped": 2, "examples": 2}
  assert src.num_input_examples("train") == 2
  assert _read(src.get_dataset("train", shuffle=False)) == [
      {"inputs": "first source", "targets": "t1"},
      {"inputs": "last source", "targets": ""}]  # blank target is kept
  assert sources.SOURCE_STATS["empty_input_pairs_skipped"] == 2


def test_paired_source_line_ranges_split_one_file_pair(tmp_path):
  _write(tmp_path / "v.src", b"s0\ns1\n\ns3\ns4\n")
  _write(tmp_path / "v.tgt", b"t0\nt1\nt2\nt3\nt4\n")
  src = sources.PairedTextFileSource(
      {"train": ("v.src", "v.tgt", (0, -2)), "validation": ("v.src", "v.tgt", (-2, None)),
       "empty": ("v.src", "v.tgt", (4, 4))}, base_dir=str(tmp_path))
  assert src.validate("train") == {"pairs": 3, "empty_input_pairs_skipped": 1, "examples": 2}
  assert src.num_input_examples("validation") == 2
  assert [e["inputs"] for e in _read(src.get_dataset("train"))] == ["s0", "s1"]
  assert [e["targets"] for e in _read(src.get_dataset("validation"))] == ["t3", "t4"]
  with pytest.raises(ValueError, match=r"split 'empty': line range \(4, 4\).*is empty"):
    src.get_dataset("empty")
  with pytest.raises(ValueError, match="expected \\(source, target\\)"):
    sources.PairedTextFileSource({"train": ("only_one",)})


def test_paired_source_mismatched_line_counts(tmp_path):
  src = _pairs(tmp_path, b"a\nb\nc\n", b"x\ny\n")
  with pytest.raises(ValueError, match=r"different line counts.*d\.src' has 3.*d\.tgt' has 2"):
    src.get_dataset("train")


def test_paired_source_non_utf8_names_file_and_line(tmp_path):
  src = _pairs(tmp_path, b"ok\nalso ok\n", b"fine\nbad \xff\xfe byte\n")
  with pytest.raises(ValueError, match=r"d\.tgt:2: line is not valid UTF-8"):
    src.get_dataset("train")


def test_paired_source_cr_only_line_endings_are_refused(tmp_path):
  src = _pairs(tmp_path, b"one\rtwo\rthree\r", b"1\r2\r3\r")
  with pytest.raises(ValueError, match=r"d\.src:1: line contains a carriage return"):
    src.get_dataset("train")


def test_paired_source_missing_file_and_unknown_split(tmp_path):
  _write(tmp_path / "d.src", b"a\n")
  src = sources.PairedTextFileSource({"train": ("d.src", "d.tgt")}, base_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="d.tgt"):
    src.get_dataset("train")
  with pytest.raises(ValueError, match="no split 'validation'"):
    src.get_dataset("validation")


def test_paired_source_sharding(tmp_path):
  src = _pairs(tmp_path, b"a\nb\nc\nd\n", b"1\n2\n3\n4\n")
  shard = src.get_dataset("train", shuffle=False, shard_info=seqio.ShardInfo(1, 2))
  assert [ex["inputs"] for ex in _read(shard)] == ["b", "d"]


def test_base_dir_is_resolved_lazily(tmp_path, monkeypatch):
  monkeypatch.setenv("NARLM_DATA_DIR", str(tmp_path))
  src = sources.PairedTextFileSource({"train": ("a", "b")}, base_dir=sources.shared_dir("sc"))
  assert src.files("train") == (str(tmp_path / "sc" / "a"), str(tmp_path / "sc" / "b"))
  monkeypatch.setenv("NARLM_GIGAWORD_DIR", str(tmp_path / "gw"))
  assert sources.gigaword_dir() == str(tmp_path / "gw")
  monkeypatch.delenv("NARLM_GIGAWORD_DIR")
  assert sources.gigaword_dir() == str(tmp_path / "gigaword")


def test_default_data_dir_is_next_to_repo(monkeypatch):
  monkeypatch.delenv("NARLM_DATA_DIR", raising=False)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert sources.data_dir() == os.path.abspath(os.path.join(repo, "..", "shared", "data"))


def test_text_source_paragraphs_bom_crlf_and_bad_bytes(tmp_path):
  sources.SOURCE_STATS.reset()
  _write(tmp_path / "a.txt",
         b"\xef\xbb\xbfTitle line\r\n\r\nPara one\r\ncontinues here.\r\n\r\n\r\n"
         b"bad \xc3\x28 line\r\nPara two.")
  _write(tmp_path / "b.txt", b"x\n\nshort\n")
  src = sources.TextFileSource({"train": "*.txt"}, base_dir=str(tmp_path))
  texts = [ex["text"] for ex in _read(src.get_dataset("train", shuffle=False))]
  assert texts == ["Title line", "Para one continues here.", "Para two.", "x", "short"]
  assert sources.SOURCE_STATS["non_utf8_lines_skipped"] == 1

  lines = sources.TextFileSource({"train": "a.txt"}, base_dir=str(tmp_path), mode="line",
                                 min_chars=9)
  assert [ex["text"] for ex in _read(lines.get_dataset("train", shuffle=False))] == [
      "Title line", "continues here.", "Para two."]


def test_text_source_file_sharding_and_shuffle(tmp_path):
  for i in range(4):
    _write(tmp_path / f"f{i}.txt", f"text {i}\n".encode())
  src = sources.TextFileSource({"train": "*.txt"}, base_dir=str(tmp_path))
  assert len(src.list_shards("train")) == 4
  shard = src.get_dataset("train", shuffle=False, shard_info=seqio.ShardInfo(0, 2))
  assert [ex["text"] for ex in _read(shard)] == ["text 0", "text 2"]
  a = _read(src.get_dataset("train", shuffle=True, seed=3))
  b = _read(src.get_dataset("train", shuffle=True, seed=3))
  assert a == b and sorted(ex["text"] for ex in a) == [f"text {i}" for i in range(4)]


def test_text_source_no_files(tmp_path):
  src = sources.TextFileSource({"train": "*.txt"}, base_dir=str(tmp_path / "none"))
  with pytest.raises(FileNotFoundError, match="No text files match"):
    src.get_dataset("train")


def test_paragraphs_are_cut_at_max_chars(tmp_path):
  path = _write(tmp_path / "nolines.txt", b"".join(b"sentence %d here.\n" % i for i in range(10)))
  ds = text_files.read_text_files([path], "paragraph", 1, sources.SOURCE_STATS, max_chars=40)
  chunks = [t.decode() for t in ds.as_numpy_iterator()]
  assert chunks[0] == "sentence 0 here. sentence 1 here. sentence 2 here."
  assert " ".join(chunks) == " ".join(f"sentence {i} here." for i in range(10))
  assert all(len(c) < 60 for c in chunks)


def test_sources_read_any_tf_filesystem(tmp_path):
  """Files go through tf.io.gfile, so data can live on gs:// as on local disk:
  here TensorFlow's in-memory filesystem (ram://) stands in for a bucket,
  with a recursive `**` pattern (which tf.io.gfile.glob lacks) and a pair."""
  import tensorflow as tf
  root = f"ram://narlm_test_{os.getpid()}"
  for path, data in ((f"{root}/books/a/one.txt", b"Para one.\n\nPara two.\n"),
                     (f"{root}/books/b/c/two.txt", b"Deep para.\n"),
                     (f"{root}/books/top.txt", b"Top para.\n"),
                     (f"{root}/books/skip.md", b"not text\n"),
                     (f"{root}/pair/d.src", b"a source\n\nlast\n"),
                     (f"{root}/pair/d.tgt", b"t1\nt2\nt3\n")):
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(data)
  books = sources.TextFileSource({"train": "books/**/*.txt"}, base_dir=root)
  assert books.list_shards("train") == [f"{root}/books/a/one.txt", f"{root}/books/b/c/two.txt",
                                        f"{root}/books/top.txt"]
  assert sorted(ex["text"] for ex in _read(books.get_dataset("train", shuffle=False))) == [
      "Deep para.", "Para one.", "Para two.", "Top para."]
  pair = sources.PairedTextFileSource({"train": ("pair/d.src", "pair/d.tgt")}, base_dir=root)
  assert pair.validate("train") == {"pairs": 3, "empty_input_pairs_skipped": 1, "examples": 2}
  with pytest.raises(FileNotFoundError, match="No text files match"):
    sources.TextFileSource({"train": "nothing/**/*.txt"}, base_dir=root).list_shards("train")


@pytest.mark.parametrize("block", [1, 2, 7, 1 << 20])
def test_raw_lines_match_a_binary_python_file(tmp_path, block):
  """GFile's own line iteration drops b'\\r' (hiding CR-only endings): the
  block reader must give exactly what a binary open() gives."""
  import random
  rng = random.Random(block)
  for data in (b"", b"a", b"a\n", b"one\rtwo\r", b"x\r\ny\n\nz",
               bytes(rng.choice(b"ab\n\r") for _ in range(3000))):
    path = _write(tmp_path / "f.bin", data)
    with sources._RawLines(str(path), block) as f:  # pylint: disable=protected-access
      got = list(f)
    with open(path, "rb") as f:
      assert got == list(f), (data[:20], block)


def test_text_source_names_empty_and_binary_files(tmp_path, caplog):
  """A corrupted or empty pretraining file is reported with its path and
  skipped; it never reaches the tokenizer as garbage."""
  import gzip
  import logging
  sources.SOURCE_STATS.reset()
  _write(tmp_path / "good.txt", b"A real paragraph of text.\n")
  _write(tmp_path / "empty.txt", b"")
  _write(tmp_path / "blank.txt", b"\n  \n\n")
  _write(tmp_path / "packed.txt", gzip.compress(bytes(range(256)) * 64, mtime=0))
  src = sources.TextFileSource({"train": "*.txt"}, base_dir=str(tmp_path))
  with caplog.at_level(logging.WARNING):
    texts = [ex["text"] for ex in _read(src.get_dataset("train", shuffle=False))]
  assert "A real paragraph of text." in texts
  log = caplog.text
  assert f"{tmp_path / 'empty.txt'}: no text in this file (empty); skipped" in log
  assert f"{tmp_path / 'blank.txt'}: no text in this file (3 line(s)" in log
  assert f"{tmp_path / 'packed.txt'}: " in log and "are not valid UTF-8" in log
  assert "good.txt" not in log
  assert sources.SOURCE_STATS["text_files_without_text"] >= 2
