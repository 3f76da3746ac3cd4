"""Tests for the registered narlm tasks and mixtures (offline data)."""

import itertools
import os
import unicodedata

import numpy as np
import pytest
import seqio
import tensorflow as tf

import narlm.tasks as tasks
from narlm import feature_converters as fc
from narlm import vocabularies
from narlm.tasks import preprocessors as prep
from narlm.tasks import sources
from narlm.tasks import text_files

LENGTHS = {"inputs": 64, "targets": 66}


def _take(name, split, n, lengths=LENGTHS, **kw):
  task = tasks.get_task_or_mixture(name)
  kw.setdefault("shuffle", False)
  ds = task.get_dataset(lengths, split=split, **kw)
  return list(ds.take(n).as_numpy_iterator())


def _read_lines(*parts, n):
  with open(os.path.join(vocabularies.data_dir(), *parts), encoding="utf-8") as f:
    return [l.strip() for l in itertools.islice(f, n)]


def test_everything_is_registered():
  for name in tasks.FINETUNING_TASKS + tasks.PRETRAINING_TASKS:
    assert isinstance(tasks.get_task_or_mixture(name), seqio.Task), name
  for name in tasks.MIXTURES:
    assert isinstance(tasks.get_task_or_mixture(name), seqio.Mixture), name
  assert isinstance(tasks.get_task_or_mixture("gigaword_tfds_bert").source, seqio.TfdsDataSource)
  assert isinstance(tasks.get_task_or_mixture("wikipedia_bert").source, seqio.TfdsDataSource)


def test_unknown_task_lists_close_matches():
  with pytest.raises(ValueError, match=r"'sentcomp_bret'.*Close matches: \['sentcomp_bert'"):
    tasks.get_task_or_mixture("sentcomp_bret")


def test_sentcomp_bert_examples_decode_to_source():
  bert = vocabularies.bert_vocabulary()
  exs = _take("sentcomp_bert", "validation", 5)
  srcs = _read_lines("sentcomp", "dev.src", n=5)
  tgts = _read_lines("sentcomp", "dev.tgt", n=5)
  assert len(exs) == 5
  for ex, src, tgt in zip(exs, srcs, tgts):
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key].ndim == 1 and ex[key].size > 0
      assert bert.eos_id not in ex[key] and 0 not in ex[key]  # no eos: converter adds it
    assert ex["inputs_pretokenized"].decode() == src
    assert ex["targets_pretokenized"].decode() == tgt
    assert bert.decode(ex["inputs"]) == prep.normalize_text(src, bert)
    assert bert.decode(ex["targets"]) == prep.normalize_text(tgt, bert)
    assert bert.decode(ex["inputs"]).split()[:3] == src.lower().replace(",", " ,").split()[:3]
  source = tasks.get_task_or_mixture("sentcomp_bert").source
  root = os.path.join(vocabularies.data_dir(), "sentcomp")
  for split, stem, n in [("train", "train", 8000), ("validation", "dev", 1000), ("test", "test", 1000)]:
    assert source.files(split) == (os.path.join(root, f"{stem}.src"), os.path.join(root, f"{stem}.tgt"))
    assert source.num_input_examples(split) == n


def test_iwslt_and_t5_variants():
  ex = _take("iwslt14_de_en_bert", "test", 1, lengths=None)[0]
  de = _read_lines("iwslt14_de_en", "test.de-en.de", n=1)[0]
  en = _read_lines("iwslt14_de_en", "test.de-en.en", n=1)[0]
  bert = vocabularies.bert_vocabulary()

  def strip_accents(s):  # uncased BERT drops combining marks
    return "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))

  assert bert.decode(ex["inputs"]) == strip_accents(de)  # already tokenised text
  assert bert.decode(ex["targets"]) == en
  source = tasks.get_task_or_mixture("iwslt14_de_en_bert").source
  # The valid files minus a held-out dev set of their last 500 pairs.
  assert source.num_input_examples("train") == 6969 - 500
  assert source.num_input_examples("validation") == 500
  train = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
  dev = list(source.get_dataset("validation", shuffle=False).as_numpy_iterator())
  valid_en = _read_lines("iwslt14_de_en", "valid.de-en.en", n=6969)
  assert [ex["targets"].decode() for ex in train] == valid_en[:6469]
  assert [ex["targets"].decode() for ex in dev] == valid_en[6469:]
  assert source.num_input_examples("test") == 6750

  t5 = vocabularies.t5_vocabulary()
  ex = _take("sentcomp_t5", "validation", 1)[0]
  src = _read_lines("sentcomp", "dev.src", n=1)[0]
  assert ex["inputs"].dtype == np.int32 and t5.eos_id not in ex["inputs"]
  assert t5.decode(ex["inputs"]) == src
  assert tasks.get_task_or_mixture("iwslt14_de_en_t5").output_features["targets"].vocabulary is t5


def test_gigaword_local_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("NARLM_GIGAWORD_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "train.src")):
    _take("gigaword_bert", "train", 1)
  for split in ("train", "dev", "test"):
    (tmp_path / f"{split}.src").write_text("australia 's current account deficit shrunk\n\n")
    (tmp_path / f"{split}.tgt").write_text("australian current account deficit narrows\nx\n")
  exs = _take("gigaword_bert", "validation", 5)
  assert len(exs) == 1  # the blank-source pair is skipped
  assert vocabularies.bert_vocabulary().decode(exs[0]["targets"]) == (
      "australian current account deficit narrows")


def test_converter_end_to_end_counts_truncation():
  fc.reset_truncation_stats()
  task = tasks.get_task_or_mixture("sentcomp_bert")
  lengths = {"inputs": 12, "targets": 8}
  ds = seqio.get_dataset("sentcomp_bert", lengths, dataset_split="validation", shuffle=False,
                         num_epochs=1, feature_converter=fc.NarFeatureConverter(pack=False),
                         trim_output_features=False)
  rows = list(ds.take(4).as_numpy_iterator())
  bert = task.output_features["inputs"].vocabulary
  srcs = _read_lines("sentcomp", "dev.src", n=4)
  tgts = _read_lines("sentcomp", "dev.tgt", n=4)
  for row, src, tgt in zip(rows, srcs, tgts):
    assert row["encoder_input_tokens"].shape == (12,)
    np.testing.assert_array_equal(row["encoder_input_tokens"], bert.encode(src)[:12])
    n = min(len(bert.encode(tgt)), 8)
    np.testing.assert_array_equal(row["decoder_target_tokens"],
                                  bert.encode(tgt)[:n] + [102, 102] + [0] * (10 - n))
    assert row["decoder_loss_weights"].sum() == n + 2
  assert fc.truncation_stats()["examples"] >= 4  # every dev sentence is longer than 12


def test_evaluator_with_gold_predictions_scores_100():
  evaluator = seqio.Evaluator("sentcomp_bert", fc.NarFeatureConverter(pack=False),
                              eval_split="validation", num_examples=8,
                              async_compute_metrics=False)

  def predict_fn(ds):
    return [(i, ex["decoder_target_tokens"]) for i, ex in ds.as_numpy_iterator()]

  future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  scores = future.result()["sentcomp_bert"]
  assert scores["rouge1"] == pytest.approx(100.0)
  assert scores["rougeL"] == pytest.approx(100.0)
  assert scores["compression_ratio"] == pytest.approx(scores["reference_compression_ratio"])
  assert 0.2 < scores["compression_ratio"] < 0.8


# ------------------------------------------------------------ pretraining
PRE_LENGTHS = {"inputs": 32, "targets": 34}


@pytest.fixture(scope="module")
def wikitext_seed11():
  return _take("wikitext2_local_bert", "train", 100, PRE_LENGTHS, seed=11)


def test_pretraining_corrupts_inputs(wikitext_seed11):
  bert = vocabularies.bert_vocabulary()
  exs = wikitext_seed11
  assert len(exs) == 100
  n_tgt = sum(ex["targets"].size for ex in exs)
  n_in = sum(ex["inputs"].size for ex in exs)
  n_mask = sum(int((ex["inputs"] == bert.mask_id).sum()) for ex in exs)
  for ex in exs:
    assert ex["inputs"].dtype == np.int32 and ex["targets"].dtype == np.int32
    assert 0 < ex["targets"].size <= 32 and 0 < ex["inputs"].size <= ex["targets"].size
    assert bert.mask_id not in ex["targets"]
  assert sum(ex["inputs"].size < ex["targets"].size for ex in exs) > 40  # deletions
  assert 0.05 < 1 - n_in / n_tgt < 0.16  # ~10% of tokens deleted
  assert 0.08 < n_mask / n_in < 0.16  # ~12% of tokens masked (15% x 80%)
  assert sum(not np.array_equal(ex["inputs"], ex["targets"]) for ex in exs) > 85


def test_pretraining_is_deterministic_given_seed(wikitext_seed11):
  again = _take("wikitext2_local_bert", "train", 20, PRE_LENGTHS, seed=11)
  other = _take("wikitext2_local_bert", "train", 20, PRE_LENGTHS, seed=12)
  first = [ex["inputs"].tolist() for ex in wikitext_seed11[:20]]
  assert [ex["inputs"].tolist() for ex in again] == first
  assert [ex["inputs"].tolist() for ex in other] != first
  # same clean targets, only the corruption depends on the seed
  assert [ex["targets"].tolist() for ex in other] == [
      ex["targets"].tolist() for ex in wikitext_seed11[:20]]


def test_books_local_and_splits():
  exs = _take("books_local_bert", "validation", 10, PRE_LENGTHS, seed=1)
  assert len(exs) == 10 and all(0 < ex["inputs"].size <= ex["targets"].size <= 32 for ex in exs)
  books = tasks.get_task_or_mixture("books_local_bert").source
  assert [os.path.basename(f) for f in books.list_shards("validation")] == ["botchan.txt"]
  assert len(books.list_shards("train")) == 7
  wiki = tasks.get_task_or_mixture("wikitext2_local_bert").source
  assert [os.path.basename(f) for f in wiki.list_shards("validation")] == ["test.txt"]


def test_pretraining_chunks_cover_the_text(wikitext_seed11):
  # targets are consecutive <= 32-token chunks of the first paragraphs
  bert = vocabularies.bert_vocabulary()
  path = os.path.join(vocabularies.data_dir(), "pretrain", "wikitext2", "valid.txt")
  first_para = next(text_files.read_text_files(
      [path], "paragraph", 40, sources.SOURCE_STATS).as_numpy_iterator()).decode("utf-8")
  ids = bert.encode(first_para)
  assert len(ids) > 64
  joined = [t for ex in wikitext_seed11 for t in ex["targets"].tolist()][:len(ids)]
  assert joined == ids
  assert [ex["targets"].size for ex in wikitext_seed11[:len(ids) // 32]] == [32] * (len(ids) // 32)


def test_mixture_local():
  exs = _take("narlm_wiki_books_local", "train", 10, PRE_LENGTHS, seed=2)
  assert len(exs) == 10 and all(ex["inputs"].size > 0 for ex in exs)


def test_corrupt_tokens_edge_cases():
  seeds = [tf.constant([i, 0]) for i in range(4)]
  ids = tf.constant([7, 8, 9], tf.int32)
  empty = prep.corrupt_tokens(tf.zeros([0], tf.int32), seeds, mask_id=3, random_ids=ids)
  assert empty.shape == (0,)
  one = prep.corrupt_tokens(tf.constant([5], tf.int32), seeds, mask_id=3, random_ids=ids,
                            delete_rate=0.99, mask_rate=0.0)
  assert one.numpy().tolist() == [5]  # never deletes everything
  everything = prep.corrupt_tokens(tf.range(10, 60), seeds, mask_id=3, random_ids=ids,
                                   delete_rate=0.0, mask_rate=1.0, random_frac=0.0,
                                   keep_frac=0.0)
  assert everything.numpy().tolist() == [3] * 50
  with pytest.raises(ValueError, match="mask token"):
    prep.corruption_ids(vocabularies.t5_vocabulary())


@pytest.mark.parametrize("name", ["gigaword_tfds_bert", "wikipedia_bert"])
def test_tfds_tasks_never_download(name):
  source = tasks.get_task_or_mixture(name).source
  assert source.tfds_dataset._read_only  # pylint: disable=protected-access
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_name = source.tfds_dataset.name.split(":")[0].split("/")[0]
  if os.path.isdir(os.path.join(os.path.expanduser(tfds.core.constants.DATA_DIR), tfds_name)):
    pytest.skip(f"TFDS {tfds_name} is prepared on this machine")
  with pytest.raises(AssertionError, match="could not find data"):
    _take(name, "validation", 1)
