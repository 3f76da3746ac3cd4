"""The both-ways pretraining corruption (narlm/tasks/span_corruption.py) on fixed seeds."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

import narlm.tasks  # noqa: F401  (registers the tasks)

from narlm.tasks import span_corruption

MASK = 3
RANDOM_IDS = tf.range(1000, 2000)


def corrupt(tokens, seed, **kwargs):
  seeds = [tf.constant([seed, k], tf.int32) for k in range(span_corruption.NUM_SEEDS)]
  return span_corruption.corrupt_both_ways(
      tf.constant(tokens, tf.int32), seeds, mask_id=MASK, random_ids=RANDOM_IDS, **kwargs).numpy()


def is_subsequence(small, big):
  it = iter(big)
  return all(any(x == y for y in it) for x in small)


def test_both_shift_directions_occur():
  """Inputs shorter than the target (deletion: target j copies from input
  <= j) and longer (insertion: from input > j) both occur, and the length
  is kept on average."""
  target = list(range(10, 50))
  lengths = [len(corrupt(target, seed)) for seed in range(150)]
  assert sum(l < len(target) for l in lengths) > 25
  assert sum(l > len(target) for l in lengths) > 25
  assert abs(np.mean(lengths) - len(target)) < 2.0
  # Insertions only: the target survives in order (a subsequence) and the
  # inserted spans are stutters (copies) or random ids.
  for seed in range(50):
    out = corrupt(target, seed, delete_rate=0.0, insert_rate=0.3, mask_ratio_range=(0.0, 0.0))
    assert is_subsequence(target, out)
    assert all(t in target or 1000 <= t < 2000 for t in out)
  stutters = [corrupt(target, s, delete_rate=0.0, insert_rate=0.3, mask_ratio_range=(0.0, 0.0))
              for s in range(50)]
  assert any(len(o) > len(target) and all(t in target for t in o) for o in stutters)


def test_masking_ratio_is_drawn_per_example_from_the_range():
  target = list(range(10, 410))
  plain = dict(delete_rate=0.0, insert_rate=0.0)
  shares = []
  for seed in range(60):
    out = corrupt(target, seed, mask_ratio_range=(0.15, 0.8), **plain)
    shares.append(np.mean(out == MASK) / 0.8)  # 80% of the selected become [MASK]
  assert min(shares) > 0.15 - 0.07 and max(shares) < 0.8 + 0.07
  assert abs(np.mean(shares) - 0.475) < 0.06
  assert np.std(shares) > 0.12  # a ratio per example, not one for all
  fixed = [np.mean(corrupt(target, s, mask_ratio_range=(0.3, 0.3), **plain) == MASK) / 0.8
           for s in range(20)]
  assert abs(np.mean(fixed) - 0.3) < 0.04
  # Masks come in spans: adjacent masked positions are common at high ratios.
  out = corrupt(target, 0, mask_ratio_range=(0.6, 0.6), **plain)
  masked = out == MASK
  assert np.mean(masked[1:] & masked[:-1]) > 0.3


def test_inputs_are_never_empty_and_edges():
  for seed in range(100):
    assert len(corrupt([7], seed, delete_rate=0.9, mask_ratio_range=(0.8, 0.8))) >= 1
    assert len(corrupt([7, 8, 9], seed, delete_rate=0.99)) >= 1
  assert len(corrupt([], 0)) == 0
  np.testing.assert_array_equal(corrupt(list(range(10, 30)), 5), corrupt(list(range(10, 30)), 5))
  with pytest.raises(ValueError, match="mask_ratio_range"):
    corrupt([1, 2], 0, mask_ratio_range=(0.9, 0.1))
  with pytest.raises(ValueError, match="span"):
    corrupt([1, 2], 0, span=0)


def test_registered_tasks_yield_corrupted_pairs():
  import narlm.tasks  # noqa: F401  (registers the tasks)
  import seqio
  for name in ("wikitext2_local_bert_both_ways", "books_local_bert_both_ways"):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        {"inputs": 64, "targets": 64}, split="train", shuffle=False, seed=0)
    examples = list(ds.take(20).as_numpy_iterator())
    assert len(examples) == 20
    assert all(len(ex["targets"]) > 0 and len(ex["inputs"]) > 0 for ex in examples)
    assert any(not np.array_equal(ex["inputs"], ex["targets"]) for ex in examples)
  assert seqio.get_mixture_or_task("narlm_wiki_books_local_both_ways")
  assert seqio.get_mixture_or_task("narlm_wiki_books_both_ways")


def test_plain_mlm_keeps_the_length_and_weights_only_the_selected_positions():
  """The control objective: BERT masking without deletion; the loss weights
  mark exactly the selected positions (~15%); every example carries loss."""
  from narlm import feature_converters as fc
  from narlm.tasks import preprocessors as prep
  ds = seqio.get_mixture_or_task("wikitext2_local_bert_mlm").get_dataset(
      {"inputs": 64, "targets": 64}, split="train", shuffle=False, seed=3)
  examples = list(ds.take(200).as_numpy_iterator())
  selected = changed = positions = 0
  for ex in examples:
    weights = ex["targets_loss_weights"]
    assert len(ex["inputs"]) == len(ex["targets"]) == len(weights) > 0
    assert weights.sum() >= 1
    diff = ex["inputs"] != ex["targets"]
    assert not (diff & (weights == 0)).any()  # only selected positions change
    selected += weights.sum()
    changed += diff.sum()
    positions += len(weights)
  assert 0.12 < selected / positions < 0.18
  assert 0.75 < changed / selected < 0.95  # 80% [MASK] + most of the 10% random
  again = list(seqio.get_mixture_or_task("wikitext2_local_bert_mlm").get_dataset(
      {"inputs": 64, "targets": 64}, split="train", shuffle=False, seed=3).take(5)
      .as_numpy_iterator())
  assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(again, examples))
  # The converter turns the weights into decoder_loss_weights (eos weighted 0).
  converted = next(fc.NarFeatureConverter(cls_id=101, sep_id=102)(
      seqio.get_mixture_or_task("wikitext2_local_bert_mlm").get_dataset(
          {"inputs": 64, "targets": 64}, split="train", shuffle=False, seed=3).take(1),
      {"inputs": 64, "targets": 64}).as_numpy_iterator())
  # Through the mixture and the trainer's pipeline too (a seqio Mixture keeps
  # only its output features: the weights must be one).
  import types
  from narlm import train_data
  from narlm.train import DatasetConfig
  model = types.SimpleNamespace(FEATURE_CONVERTER_CLS=lambda pack: fc.NarFeatureConverter(
      pack=pack, cls_id=101, sep_id=102))
  batch = next(iter(train_data.get_dataset(
      DatasetConfig("narlm_wiki_books_local_mlm", {"inputs": 64, "targets": 64}, batch_size=8,
                    shuffle=False), model).as_numpy_iterator()))
  share = batch["decoder_loss_weights"].sum() / (batch["decoder_target_tokens"] > 0).sum()
  assert 0.05 < share < 0.3, share  # the selected positions, not every one
  n = len(examples[0]["targets"])
  np.testing.assert_array_equal(converted["decoder_loss_weights"][:n],
                                examples[0]["targets_loss_weights"])
  assert converted["decoder_loss_weights"][n:].sum() == 0
  assert converted["decoder_target_tokens"][n] == converted["decoder_target_tokens"][n + 1] == 102
  assert seqio.get_mixture_or_task("narlm_wiki_books_local_mlm")
  assert seqio.get_mixture_or_task("narlm_wiki_books_mlm")
