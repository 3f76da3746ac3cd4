"""Model-free baselines and paired statistics for `narlm.compare`.

* Trivial baselines that every quality table should beat: ``copy`` (the
  source as the prediction) and ``lead`` (the first ceil(r n) whitespace words
  of the n-word source; r is chosen on the validation split by
  `narlm.compare`).
* Per-example scores (sentence ROUGE-L F1, or sentence BLEU for BLEU tasks)
  and a paired bootstrap of the mean difference between two systems scored
  on the same examples.

Apart from `baseline_entry` (which is handed `narlm.compare.score`, so that
baselines are scored by exactly the systems' metrics) everything here is pure
Python / numpy on strings and floats.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

BASELINES = ("copy", "lead")
# 0.2, 0.25, ..., 1.0 (exact decimals: the grid is printed and used as keys).
LEAD_RATIOS = tuple(round(0.2 + 0.05 * i, 2) for i in range(17))
# The per-example metric of a task whose selection metric is ...
PER_EXAMPLE_METRIC = {"rougeL": "rougeL", "bleu": "sentence_bleu"}


# ------------------------------------------------------------ baselines
def parse_baselines(spec: Optional[str], default: Sequence[str]) -> tuple[str, ...]:
  """'copy,lead' / '' / 'none' / None (-> `default`) -> baseline names."""
  if spec is None:
    return tuple(default)
  names = tuple(n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none")
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"--baselines {spec!r}: unknown baseline(s) {unknown}; expected a "
                     f"comma-separated subset of {BASELINES} (or 'none')")
  if len(set(names)) != len(names):
    raise ValueError(f"--baselines {spec!r} names a baseline twice")
  return names


def parse_ratios(spec: str) -> tuple[float, ...]:
  """'0.2,0.5,1' -> (0.2, 0.5, 1.0); each in (0, 1]."""
  try:
    ratios = tuple(float(r) for r in spec.split(",") if r.strip())
  except ValueError as e:
    raise ValueError(f"--lead_ratios must be comma-separated numbers, got {spec!r}") from e
  if not ratios or any(not 0 < r <= 1 for r in ratios):
    raise ValueError(f"--lead_ratios must be numbers in (0, 1], got {spec!r}")
  return ratios


def lead_words(source: str, ratio: float) -> str:
  """The first ceil(ratio * n) of the n whitespace words of `source`."""
  words = source.split()
  # round(): 0.3 * 10 is 3.0000000000000004 in floating point, not 4 words.
  return " ".join(words[:math.ceil(round(ratio * len(words), 9))])


def baseline_fn(name: str, ratio: Optional[float] = None) -> Callable[[str], str]:
  """source text -> prediction text of baseline `name`."""
  if name == "copy":
    return lambda source: source
  if name == "lead":
    if ratio is None:
      raise ValueError("the lead baseline needs a ratio")
    return lambda source: lead_words(source, ratio)
  raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")


def run_baseline(fn: Callable[[str], str], sources: Sequence[str],
                 latency_examples: int) -> tuple[list[str], float, float]:
  """Predictions for `sources`, with timings measured like a model's.

  Returns:
    (predictions, ms per sentence over all sources, median ms of one
    sentence over the first `latency_examples`).
  """
  t0 = time.perf_counter()
  predictions = [fn(s) for s in sources]
  ms_per_sentence = 1000.0 * (time.perf_counter() - t0) / max(len(sources), 1)
  times = []
  for s in sources[:latency_examples]:
    t0 = time.perf_counter()
    fn(s)
    times.append(1000.0 * (time.perf_counter() - t0))
  return predictions, ms_per_sentence, statistics.median(times) if times else 0.0


def baseline_entry(name: str, task, dev, test, *, score_fn, metric: str,
                   ratios: Sequence[float], batch_size: int, latency_examples: int,
                   per_example: Optional[str], log=print) -> dict[str, Any]:
  """A baseline's report entry, shaped like a model system's (narlm.compare).

  Args:
    name: 'copy' or 'lead'.
    task: the seqio task; dev, test: its tokenised examples.
    score_fn: `narlm.compare.score` (the same metrics as the model systems).
    metric: the validation metric that chooses lead's r among `ratios`.
    batch_size: names the ms-per-sentence key like the systems' (baselines
      do not batch).
    latency_examples: test sources timed one by one.
    per_example: per-example test score to keep (see `sentence_scores`).
  """
  source_vocab = task.output_features["inputs"].vocabulary
  target_vocab = task.output_features["targets"].vocabulary

  def run(fn, examples, latency, per_example=None):
    # The source as a model that copied its input tokens would output it.
    sources = [source_vocab.decode(ex["inputs"].tolist()) for ex in examples]
    texts, ms, latency_ms = run_baseline(fn, sources, latency)
    predictions = [task.postprocess_fn(t, is_target=False) for t in texts]
    outputs = [list(target_vocab.encode(p)) for p in predictions]
    result = score_fn(task, examples, predictions, outputs, per_example)
    result["truncated_inputs"] = 0
    result["ms_per_sentence_batch%d" % batch_size] = ms
    return result, latency_ms

  entry: dict[str, Any] = {"model_dir": None, "method": name, "kind": "baseline", "train": {}}
  ratio = None
  if name == "lead":
    sweep = {f"{r:g}": run(baseline_fn(name, r), dev, 0)[0] for r in ratios}
    ratio = max(ratios, key=lambda r: sweep[f"{r:g}"][metric])
    log(f"[compare] {name}: r={ratio:g} validation {metric}={sweep[f'{ratio:g}'][metric]:.2f}")
    entry["ratio"] = ratio
    entry["ratio_sweep"] = {r: {k: v for k, v in res.items() if k != "samples"}
                            for r, res in sweep.items()}
    entry["validation"] = sweep[f"{ratio:g}"]
  fn = baseline_fn(name, ratio)
  entry["compile_s"] = 0.0
  if name != "lead":
    entry["validation"] = run(fn, dev, 0)[0]
  entry["test"], entry["latency_ms_batch1"] = run(fn, test, latency_examples, per_example)
  key = "ms_per_sentence_batch%d" % batch_size
  entry[key] = entry["test"][key]
  return entry


# ----------------------------------------------------- per-example scores
def sentence_scores(metric: str, references: Sequence[str],
                    predictions: Sequence[str]) -> list[float]:
  """Per-example scores x 100, with the task metric's settings.

  Args:
    metric: 'rougeL' (rouge_score ROUGE-L F1, Porter stemming, as
      `narlm.tasks.metrics.rouge`) or 'sentence_bleu' (sacrebleu's
      sentence_bleu, the defaults `metrics.bleu` uses for corpus BLEU).
    references, predictions: texts, aligned.
  """
  if len(references) != len(predictions):
    raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
  if metric == "rougeL":
    from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100.0 * scorer.score(r, p)["rougeL"].fmeasure
            for r, p in zip(references, predictions)]
  if metric == "sentence_bleu":
    import sacrebleu  # pylint: disable=g-import-not-at-top
    return [float(sacrebleu.sentence_bleu(p, [r]).score)
            for r, p in zip(references, predictions)]
  raise ValueError(f"unknown per-example metric {metric!r}; expected one of "
                   f"{sorted(set(PER_EXAMPLE_METRIC.values()))}")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], num_samples: int = 2000,
                     seed: int = 0) -> dict[str, float]:
  """Mean of a - b over paired examples with a percentile bootstrap 95% CI.

  Each resample draws n example indices with replacement (the same indices
  for both systems: the pairing is what makes small differences
  detectable) and takes the mean difference; the interval is the 2.5th and
  97.5th percentiles of `num_samples` such means.

  Returns:
    {'mean', 'low', 'high'}.
  """
  diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if diff.ndim != 1 or len(a) != len(b):
    raise ValueError(f"paired scores must be two equally long lists, got {len(a)} and "
                     f"{len(b)}")
  if not len(diff):
    raise ValueError("paired_bootstrap needs at least one example")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  rng = np.random.default_rng(seed)
  means = np.empty(num_samples)
  chunk = max(1, 2_000_000 // len(diff))  # bounds memory to ~16 MB of indices
  for start in range(0, num_samples, chunk):
    stop = min(start + chunk, num_samples)
    means[start:stop] = diff[rng.integers(0, len(diff), (stop - start, len(diff)))].mean(1)
  low, high = np.percentile(means, [2.5, 97.5])
  return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


def differences(report: dict[str, Any], pairs: Sequence[tuple[str, str]], num_samples: int,
                seed: int) -> list[dict[str, Any]]:
  """Paired bootstrap of each (A, B) on the systems' per-example test scores.

  A side named 'x+y' is a group (e.g. seeds of one arm): its score on an
  example is the mean of its members' scores there.
  """
  out = []
  for a, b in pairs:
    metrics, sides = set(), []
    for side in (a, b):
      members = []
      for name in side.split("+"):
        if name not in report["systems"]:
          raise ValueError(f"--diff {a},{b}: no system {name!r}; known: "
                           f"{sorted(report['systems'])}")
        per_example = report["systems"][name]["test"]["per_example"]
        metrics.add(per_example["metric"])
        members.append(np.asarray(per_example["scores"], np.float64))
      if len({len(m) for m in members}) != 1:
        raise ValueError(f"--diff {a},{b}: the systems of {side!r} were scored on "
                         "different numbers of test examples")
      sides.append(np.mean(members, axis=0))
    if len(metrics) != 1:
      raise ValueError(f"--diff {a},{b}: per-example metrics differ")
    result = paired_bootstrap(sides[0], sides[1], num_samples, seed)
    out.append({"a": a, "b": b, "metric": metrics.pop(), **result,
                "num_samples": num_samples, "seed": seed})
  return out


def differences_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
  """Lines of the markdown 'differences' table (empty when no rows)."""
  if not rows:
    return []
  lines = ["Differences (test, per-example mean A − B, paired bootstrap 95% interval):", "",
           "| A − B | metric | mean | 95% interval | resamples |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['a']} − {r['b']} | {r['metric']} | {r['mean']:+.2f} | "
                 f"[{r['low']:+.2f}, {r['high']:+.2f}] | {r['num_samples']} |")
  return lines + [""]
