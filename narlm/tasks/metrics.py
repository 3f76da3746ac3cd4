"""Metric functions for narlm tasks, in seqio's `metric_fn(targets, predictions)`
form (usable by `seqio.evaluation.Evaluator` and t5x). All return a dict of
floats, on a 0-100 scale except ratios.

A target is either a string or, for tasks whose postprocess_fn keeps the
source (`preprocessors.nar_postprocess`), a dict `{'text': ..., 'source': ...}`.
"""

from typing import Any, Dict, Sequence

import numpy as np


def _text(t: Any) -> str:
  if isinstance(t, dict):
    t = t["text"]
  if isinstance(t, bytes):
    t = t.decode("utf-8")
  return str(t)


def _check(targets: Sequence[Any], predictions: Sequence[Any]):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def rouge(targets: Sequence[Any], predictions: Sequence[Any]) -> Dict[str, float]:
  """Mean ROUGE-1/2/L F1 x 100 (rouge_score, Porter stemming)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  _check(targets, predictions)
  keys = ("rouge1", "rouge2", "rougeL")
  if not targets:
    return {k: 0.0 for k in keys}
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
  sums = dict.fromkeys(keys, 0.0)
  for t, p in zip(targets, predictions):
    scores = scorer.score(_text(t), _text(p))
    for k in keys:
      sums[k] += scores[k].fmeasure
  return {k: 100.0 * v / len(targets) for k, v in sums.items()}


def bleu(targets: Sequence[Any], predictions: Sequence[Any]) -> Dict[str, float]:
  """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exp smoothing)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  _check(targets, predictions)
  if not targets:
    return {"bleu": 0.0}
  result = sacrebleu.corpus_bleu([_text(p) for p in predictions],
                                 [[_text(t) for t in targets]])
  return {"bleu": float(result.score)}


def compression_ratio(targets: Sequence[Any],
                      predictions: Sequence[Any]) -> Dict[str, float]:
  """Mean words(prediction) / words(source), and the same for the references.

  Needs dict targets with a 'source' (see module doc); with plain string
  targets only `length_ratio` (words(prediction) / words(reference)) is
  returned. Empty sources are skipped.
  """
  _check(targets, predictions)
  pred_len = np.array([len(_text(p).split()) for p in predictions], np.float64)
  ref_len = np.array([len(_text(t).split()) for t in targets], np.float64)
  out = {}
  nonzero = ref_len > 0
  out["length_ratio"] = float(np.mean(pred_len[nonzero] / ref_len[nonzero])) if nonzero.any() else 0.0
  if targets and all(isinstance(t, dict) and "source" in t for t in targets):
    src_len = np.array([len(str(t["source"]).split()) for t in targets], np.float64)
    ok = src_len > 0
    if ok.any():
      out["compression_ratio"] = float(np.mean(pred_len[ok] / src_len[ok]))
      out["reference_compression_ratio"] = float(np.mean(ref_len[ok] / src_len[ok]))
  return out
