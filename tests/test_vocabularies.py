"""Tests for narlm.vocabularies (needs the shared vocab files)."""

import copy
import itertools
import os
import pickle
import re

import pytest
import seqio
import tensorflow as tf

from narlm import vocabularies as V

TRICKY = [
    "Hello, world! Isn't this café naïve?",
    "jaguar-schamanen noch immer jenseits der milchstraße",
    "unbelievably 東京 x\u00a0y \t tab\u3000end",
    "zero\u200bwidth a\x00b \ufeffbom",
    "[MASK] and [SEP] are plain text here",
    "supercalifragilisticexpialidocious" * 4,
    "",
    "   ",
]


@pytest.fixture(scope="module")
def bert():
  return V.get_vocabulary("bert_uncased")


def _corpus_lines(n_per_file=60):
  root = V.data_dir()
  files = ["sentcomp/dev.src", "sentcomp/dev.tgt", "iwslt14_de_en/test.de-en.de",
           "pretrain/books/11-0.txt", "pretrain/wikitext2/test.txt"]
  lines = []
  for f in files:
    with open(os.path.join(root, f), encoding="utf-8-sig") as fh:
      lines += [l.rstrip("\r\n") for l in itertools.islice(fh, 200, 200 + n_per_file)]
  return lines


def test_special_ids_and_size(bert):
  assert isinstance(bert, seqio.Vocabulary)
  assert (bert.pad_id, bert.unk_id, bert.bos_id, bert.eos_id, bert.mask_id) == (0, 100, 101, 102, 103)
  assert bert.vocab_size == 30522
  assert bert.encode("the") == [1996]
  regular = set(bert.regular_ids)
  assert 1996 in regular and not regular & {0, 100, 101, 102, 103, 1}


def test_python_and_tf_encodings_agree(bert):
  lines = TRICKY + _corpus_lines()
  tf_ids = bert.encode_tf(tf.constant(lines)).to_list()
  mismatches = [(l, list(bert.encode(l)), t) for l, t in zip(lines, tf_ids)
                if list(bert.encode(l)) != t]
  assert not mismatches, mismatches[:3]
  # scalar path (what seqio's tokenize preprocessor uses)
  for l in TRICKY:
    scalar = bert.encode_tf(tf.constant(l))
    assert scalar.dtype == tf.int32 and scalar.shape.rank == 1
    assert scalar.numpy().tolist() == list(bert.encode(l))


def test_decode_matches_independent_normalisation(bert):
  # For ASCII text the WordPiece round trip is "lowercase, split off
  # punctuation, single spaces": check that against a regex version.
  lines = [l for l in _corpus_lines(40)[:80] if l.isascii() and l.strip()]
  assert len(lines) > 50
  for l in lines:
    expected = " ".join(re.findall(r"[a-z0-9]+|[^a-z0-9\s]", l.lower()))
    assert bert.decode(bert.encode(l)) == expected


def test_decode_drops_specials_and_cuts_at_eos(bert):
  ids = [101] + bert.encode("unaffable monkeys") + [102, 2088, 0]
  assert bert.decode(ids) == "unaffable monkeys"
  batch = tf.constant([ids, [7592, 1010, 102, 2088] + [0] * (len(ids) - 4)])
  assert bert.decode_tf(batch).numpy().tolist() == [b"unaffable monkeys", b"hello ,"]
  assert bert.decode_tf(tf.constant(ids)).numpy() == b"unaffable monkeys"
  assert bert.decode([103, 2003]) == "[MASK] is"
  # wordpiece continuations are joined
  assert [bert.id_to_token(i) for i in bert.encode("unaffable")][1].startswith("##")


def test_get_vocabulary_names_paths_and_cache(bert):
  assert V.get_vocabulary("bert_uncased") is bert is V.bert_vocabulary()
  path = V.data_path(*V.BERT_UNCASED_VOCAB)
  assert V.get_vocabulary(path) is bert
  t5 = V.get_vocabulary("t5")
  assert isinstance(t5, seqio.SentencePieceVocabulary)
  assert (t5.pad_id, t5.eos_id, t5.vocab_size) == (0, 1, 32000)
  assert t5.encode("Studies have shown that owning a dog is good for you") == [
      6536, 43, 2008, 24, 293, 53, 3, 9, 1782, 19, 207, 21, 25]
  assert V.get_vocabulary(V.data_path(*V.T5_SPM)) is t5
  assert V.sentencepiece_vocabulary(V.data_path(*V.T5_SPM)) is t5


def test_get_vocabulary_errors(tmp_path):
  with pytest.raises(ValueError, match="bert_uncasd.*bert_uncased"):
    V.get_vocabulary("bert_uncasd")
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    V.get_vocabulary(str(tmp_path / "nope.txt"))
  with pytest.raises(FileNotFoundError, match="nope.model"):
    V.get_vocabulary(str(tmp_path / "nope.model"))
  lazy = V.WordPieceVocabulary(str(tmp_path / "missing.txt"))  # lazy: no error yet
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    lazy.encode("x")


def _tiny_vocab(tmp_path, tokens):
  p = tmp_path / "vocab.txt"
  p.write_text("\n".join(tokens) + "\n", encoding="utf-8")
  return str(p)


def test_cased_vocab_and_python_tf_agree(tmp_path):
  path = _tiny_vocab(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                "Hello", "hello", "world", "##s", ",", "!"])
  cased = V.WordPieceVocabulary(path, lowercase=False)
  uncased = V.WordPieceVocabulary(path, lowercase=True)
  text = "Hello, worlds! HELLO"
  assert cased.encode(text) == [5, 9, 7, 8, 10, 1]
  assert uncased.encode(text) == [6, 9, 7, 8, 10, 6]
  for v in (cased, uncased):
    assert v.encode_tf(tf.constant(text)).numpy().tolist() == v.encode(text)
    assert v.eos_id == 3 and v.vocab_size == 11
  assert cased.decode(cased.encode(text)) == "Hello , worlds ! [UNK]"
  assert cased != uncased and cased == V.WordPieceVocabulary(path, lowercase=False)


def test_pad_must_be_zero(tmp_path):
  v = V.WordPieceVocabulary(_tiny_vocab(tmp_path, ["[UNK]", "[PAD]", "[SEP]", "a"]))
  with pytest.raises(ValueError, match=r"\[PAD\] has id 1"):
    v.encode("a")


def test_pickle_and_copy(bert):
  for clone in (pickle.loads(pickle.dumps(bert)), copy.deepcopy(bert)):
    assert clone == bert and hash(clone) == hash(bert)
    assert clone.encode("hello world") == [7592, 2088]
