"""Tests for narlm.tasks.metrics and the postprocess function."""

import pytest

from narlm import vocabularies
from narlm.tasks import metrics
from narlm.tasks import preprocessors as prep


def test_rouge_identical_and_known_values():
  assert metrics.rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == {
      "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
  # P = 2/2, R = 2/3 -> F1 = 0.8; bigrams: 1 of 1 / 1 of 2 -> 2/3
  scores = metrics.rouge(["the cat sat"], ["the cat"])
  assert scores["rouge1"] == pytest.approx(80.0)
  assert scores["rouge2"] == pytest.approx(200 / 3)
  assert scores["rougeL"] == pytest.approx(80.0)
  assert metrics.rouge(["a b"], ["c d"])["rouge1"] == 0.0
  # mean over examples, dict targets accepted
  two = metrics.rouge([{"text": "x y", "source": "s"}, "x y"], ["x y", "z w"])
  assert two["rouge1"] == pytest.approx(50.0)


def test_bleu():
  refs = ["the quick brown fox jumps over the lazy dog .",
          "a second sentence that is long enough for four-grams ."]
  assert metrics.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
  assert metrics.bleu(refs, ["zz yy xx ww", "vv uu tt ss"])["bleu"] == pytest.approx(0.0)
  mid = metrics.bleu(refs, ["the quick brown fox jumps over a lazy dog .", refs[1]])["bleu"]
  assert 50.0 < mid < 100.0
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.bleu(refs, refs[:1])


def test_compression_ratio():
  targets = [{"text": "a b", "source": "a b c d"}, {"text": "x", "source": "x y"}]
  out = metrics.compression_ratio(targets, ["a b c", "x y"])
  assert out["compression_ratio"] == pytest.approx((3 / 4 + 2 / 2) / 2)
  assert out["reference_compression_ratio"] == pytest.approx((2 / 4 + 1 / 2) / 2)
  assert out["length_ratio"] == pytest.approx((3 / 2 + 2 / 1) / 2)
  assert set(metrics.compression_ratio(["a b"], ["a"])) == {"length_ratio"}


def test_postprocess_normalises_targets_like_decoded_predictions():
  bert = vocabularies.bert_vocabulary()
  post = prep.postprocess_for(bert)
  example = {"inputs_pretokenized": b"Hello, World! How are you?"}
  target = post("Hello, World!", example=example, is_target=True)
  assert target == {"text": "hello , world !", "source": "hello , world ! how are you ?"}
  pred = post(bert.decode(bert.encode("Hello, World!") + [102, 102]), example=example)
  assert pred == target["text"]
  assert metrics.rouge([target], [pred])["rouge1"] == 100.0
  assert metrics.compression_ratio([target], [pred])["compression_ratio"] == pytest.approx(4 / 8)
  assert post(b"Plain", is_target=True) == "plain"
