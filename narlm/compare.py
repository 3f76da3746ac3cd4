r"""Quality and latency of trained systems on one task, side by side.

Usage (the commands that produced BENCHMARKS.md's quality tables are there)::

  python -m narlm.compare --task sentcomp_bert --key sentcomp \
      --system nar=/tmp/cmp/sentcomp_nar:argmax \
      --system nar_crf=/tmp/cmp/sentcomp_crf:viterbi \
      --system nar_crf_ratio_first=/tmp/cmp/sentcomp_crf:ratio_first \
      --system ar=/tmp/cmp/sentcomp_ar:greedy \
      --alphas 0.3,0.4,0.5,0.6,0.7,0.8,1.0 --out quality.json
  python -m narlm.compare --markdown quality.json      # the tables

A system is ``NAME=MODEL_DIR:METHOD``: a narlm training run directory (its
``config.gin`` and newest checkpoint are loaded as by ``narlm.serve``) and a
decode method: ``argmax``, ``viterbi`` or ``ratio_first`` for NagBertModel,
``greedy`` for ArSeq2SeqModel, ``tag`` for the deletion tagger
(narlm.tagger.TaggerModel), ``mask_predict@T`` or ``mask_predict_crf@T``
(T refinement passes; ``@TxL`` adds a length beam of L) and
``refine_draft@T`` / ``refine_draft_crf@T`` (T passes from the
source-aligned draft, narlm.canvas_draft) for the canvas model
(narlm.canvas.CanvasModel). For ``ratio_first`` the ratio alpha is chosen
on the *validation* split (the best ``--select_metric`` over ``--alphas``);
the test split is decoded once per system, with the chosen alpha, and never
used for a choice. Sources are framed as the model was trained
(``model.frame_source``, e.g. ``[CLS] x [SEP]``) when the model frames them.

Model-free baselines (``--baselines copy,lead``; the default for ROUGE tasks,
see narlm.compare_baselines) are scored the same way: ``copy`` predicts the
source, ``lead`` its first ceil(r n) words with r chosen on validation over
``--lead_ratios``. ``--diff A,B`` (repeatable) reports the mean per-example
test difference A - B (sentence ROUGE-L F1, or sentence BLEU for BLEU tasks)
with a paired bootstrap 95% interval. A side may join several systems with
``+`` (``--diff crf_s0+crf_s1,nar_s0+nar_s1``): each example then scores the
mean of their sentence scores, the seed-averaged difference (the interval
resamples test examples, not seeds).

Bad input (a missing or empty run directory, a run whose vocabulary is not
the task's, an empty split, ...) is one ``error: ...`` line on stderr and
exit status 2.

Reported per system and split (metrics on the task's normalised text, as in
training-time evaluation):

* the task's seqio metrics (ROUGE-1/2/L F1 for sentcomp, BLEU for IWSLT);
* ``token_f1``: mean per-sentence bag-of-words F1 x 100 between prediction
  and reference (whitespace tokens of the normalised text);
* ``repetition_rate``: share (%) of output tokens (the model's vocabulary
  ids) equal to the token before them; the references' rate is reported as
  ``reference_repetition_rate`` for scale;
* ``mean_output_tokens``;
* ``per_example`` (test split): each example's sentence ROUGE-L F1 x 100 (or
  sentence BLEU), the input of ``--diff``;
* latency: ``latency_ms_batch1`` = median wall time of one sentence at batch
  1 over the first ``--latency_examples`` test sentences, and
  ``ms_per_sentence_batch32`` = wall time to decode the whole test split at
  batch 32 / number of sentences. Inputs are padded to the smallest length
  bucket (16/32/64/128, capped at the run's input length) that holds them,
  for every system alike (`narlm.predictor.Predictor`, the decoder training
  evaluation, serve and distill use too); programs are compiled before
  timing. An output that fills its bucket without an eos is decoded again in
  the next wider one, up to the run's input length (``cut_outputs`` counts
  those still full there).

Inputs longer than the run's input length are truncated (counted in
``truncated_inputs``), as training truncated them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from narlm import compare_baselines as baselines_lib
from narlm.compare_baselines import paired_bootstrap  # noqa: F401  (public API)
from narlm.compare_report import TABLE_METRICS, summary, to_json, to_markdown  # noqa: F401
from narlm.run_dirs import write_text_atomically

# Decode method -> the model class (run_dirs.LoadedModel.kind) that runs it.
METHOD_KINDS = {"argmax": "NagBertModel", "viterbi": "NagBertModel",
                "ratio_first": "NagBertModel", "greedy": "ArSeq2SeqModel", "tag": "TaggerModel",
                "mask_predict": "CanvasModel", "mask_predict_crf": "CanvasModel",
                "refine_draft": "CanvasModel", "refine_draft_crf": "CanvasModel"}
KIND_NAMES = {"NagBertModel": "a NAG-BERT run", "ArSeq2SeqModel": "an AR run",
              "TaggerModel": "a tagger run", "CanvasModel": "a canvas (mask-predict) run"}
NAR_METHODS = ("argmax", "viterbi", "ratio_first")
AR_METHODS = ("greedy",)
TAG_METHODS = ("tag",)
MASK_PREDICT_METHODS = ("mask_predict", "mask_predict_crf", "refine_draft", "refine_draft_crf")


def split_method(method: str) -> tuple[str, dict[str, int]]:
  """'mask_predict@4' -> ('mask_predict', {'iterations': 4}); 'mask_predict@4x3'
  adds {'length_beam': 3}; a tail 'r0.3' adds {'remask_ratio': 0.3} (the share
  the first refinement pass re-masks); any other method -> (method, {})."""
  base, at, tail = method.partition("@")
  if not at:
    return method, {}
  tail, r, ratio = tail.partition("r")
  if base not in MASK_PREDICT_METHODS:
    raise ValueError(f"method {method!r}: only {', '.join(MASK_PREDICT_METHODS)} take "
                     "@T (refinement passes)")
  passes, x, beam = tail.partition("x")
  try:
    kwargs = {"iterations": int(passes)}
    if x:
      kwargs["length_beam"] = int(beam)
    if r:
      kwargs["remask_ratio"] = float(ratio)
  except ValueError:
    raise ValueError(f"method {method!r}: expected {base}@T, {base}@TxL or {base}@TrR with "
                     "integers T (passes) and L (length beam) and a share R") from None
  if r and not 0.0 < kwargs["remask_ratio"] <= 1.0:
    raise ValueError(f"method {method!r}: R (the share re-masked) must be in (0, 1]")
  if kwargs["iterations"] < 1 or kwargs.get("length_beam", 1) < 1:
    raise ValueError(f"method {method!r}: T (passes) and L (length beam) must be >= 1")
  return base, kwargs
LENGTH_BUCKETS = (16, 32, 64, 128)


# ------------------------------------------------------------------ metrics
def token_f1(references: Sequence[str], predictions: Sequence[str]) -> float:
  """Mean per-sentence bag-of-words F1 x 100 (whitespace tokens)."""
  if len(references) != len(predictions):
    raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
  if not references:
    return 0.0
  total = 0.0
  for ref, pred in zip(references, predictions):
    r, p = Counter(ref.split()), Counter(pred.split())
    if not r and not p:
      total += 1.0
      continue
    overlap = sum((r & p).values())
    if overlap:
      precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
      total += 2 * precision * recall / (precision + recall)
  return 100.0 * total / len(references)


def repetition_rate(sequences: Sequence[Sequence[int]]) -> float:
  """Share (%) of tokens equal to their left neighbour, over all sequences."""
  repeats = sum(int(a == b) for seq in sequences for a, b in zip(seq[1:], seq[:-1]))
  tokens = sum(len(seq) for seq in sequences)
  return 100.0 * repeats / tokens if tokens else 0.0


# ------------------------------------------------------------------ systems
def parse_system(spec: str) -> tuple[str, str, str]:
  """'NAME=MODEL_DIR:METHOD' -> (name, model_dir, method)."""
  name, sep, rest = spec.partition("=")
  model_dir, sep2, method = rest.rpartition(":")
  if not sep or not sep2 or not name or not model_dir:
    raise ValueError(f"--system {spec!r}: expected NAME=MODEL_DIR:METHOD")
  if "," in name or "+" in name:
    raise ValueError(f"--system {spec!r}: a NAME may not contain ',' or '+' (--diff uses them)")
  try:
    base, _ = split_method(method)
  except ValueError as e:
    raise ValueError(f"--system {spec!r}: {e}") from None
  if base not in METHOD_KINDS:
    raise ValueError(f"--system {spec!r}: unknown method {method!r}; expected one of "
                     f"{tuple(METHOD_KINDS)} (mask_predict methods may add @T, e.g. "
                     "mask_predict@4)")
  return name, model_dir, method


def parse_diff(spec: str) -> tuple[str, str]:
  """'A,B' -> (A, B).

  A side may be a group 'A1+A2' (e.g. two seeds of one arm): its per-example
  score is the mean of its members' (narlm.compare_baselines.differences).
  """
  names = [n.strip() for n in spec.split(",")]
  if len(names) != 2 or not all(names) or names[0] == names[1]:
    raise ValueError(f"--diff {spec!r}: expected A,B (two different system names)")
  sides = []
  for side in names:
    members = [m.strip() for m in side.split("+")]
    if not all(members) or len(set(members)) != len(members):
      raise ValueError(f"--diff {spec!r}: {side!r} is not one system name or distinct "
                       "names joined by '+'")
    sides.append("+".join(members))
  if set(sides[0].split("+")) == set(sides[1].split("+")):
    raise ValueError(f"--diff {spec!r}: expected A,B (two different system names)")
  return sides[0], sides[1]


def load_examples(task_name: str, split: str, limit: Optional[int] = None) -> list[dict]:
  """Tokenised examples of a seqio task split, with their raw strings."""
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get_task_or_mixture(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  if limit:
    ds = ds.take(limit)
  examples = list(ds.as_numpy_iterator())
  if not examples:
    raise ValueError(f"task {task_name!r} split {split!r} has no examples")
  return examples


def check_run_dir(name: str, model_dir: str) -> None:
  """A clear error when a local run directory is missing or holds no run."""
  if "://" in model_dir:  # remote (gs://...): narlm.serve's load errors name it
    return
  where = f"--system {name}: run directory {model_dir}"
  if not os.path.exists(model_dir):
    raise FileNotFoundError(f"{where} does not exist")
  if not os.path.isdir(model_dir):
    raise ValueError(f"{where} is not a directory")
  if not os.path.exists(os.path.join(model_dir, "config.gin")):
    what = "is empty" if not os.listdir(model_dir) else "has no config.gin"
    raise FileNotFoundError(f"{where} {what}: not a narlm training run (narlm.train writes "
                            "config.gin and checkpoints/ there)")


def load_run(name: str, model_dir: str):
  """narlm.run_dirs.load_model with errors that name the --system."""
  from narlm import run_dirs  # pylint: disable=g-import-not-at-top
  try:
    return run_dirs.load_model(model_dir)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"--system {name}: run directory {model_dir}: {e}") from e


def check_vocabularies(name: str, loaded, task) -> None:
  """The run's input/output vocabularies must be the task's: otherwise its
  token ids would be read as other tokens."""
  from narlm import train_data  # pylint: disable=g-import-not-at-top
  mismatches = train_data.vocabulary_mismatches(loaded.model, task)
  if mismatches:
    raise ValueError(
        f"--system {name}: the run in {loaded.model_dir} has " + "; and ".join(mismatches)
        + "; compare it on a task with the run's vocabulary (e.g. sentcomp_bert for BERT "
        "WordPiece runs, sentcomp_t5 for T5 runs)")


def decode_kwargs(loaded, method: str) -> dict[str, Any]:
  """The `predict_batch_with_aux` arguments of a compare method ('viterbi',
  'mask_predict@4', ...), checked against the run's model class (alpha,
  chosen per call, is added by the caller for ratio_first)."""
  base, refine_kwargs = split_method(method)
  kind, expected = loaded.kind, METHOD_KINDS.get(base)
  if expected is None:
    raise ValueError(f"unknown method {base!r}; expected one of {tuple(METHOD_KINDS)}")
  # By class name, subclasses included (no model module imported here).
  lineage = [c.__name__ for c in type(loaded.model).__mro__]
  if expected not in lineage:
    usable = [m for m, k in METHOD_KINDS.items() if k in lineage]
    hint = f" (use :{' or :'.join(usable)})" if usable else ""
    raise ValueError(f"{loaded.model_dir}: method {base!r} needs "
                     f"{KIND_NAMES.get(expected, expected)}, this is {kind}{hint}")
  if base in ("viterbi", "ratio_first", "mask_predict_crf", "refine_draft_crf") and \
      not loaded.model.module.use_crf:
    raise ValueError(f"{loaded.model_dir}: method {base!r} needs a CRF, the run has none")
  if base.startswith("refine_draft"):
    loaded.model.check_decode_method(base)  # e.g. a run trained without a draft
  return {"decode_method": base, **refine_kwargs}


def make_predictor(loaded, batch_size: int):
  """The run's `narlm.predictor.Predictor` at compare's buckets: inputs up to
  the run's training input length, batches of 1 and `batch_size`."""
  from narlm import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  max_length = loaded.input_length or LENGTH_BUCKETS[-1]
  return predictor_lib.Predictor(loaded.model, loaded.params, max_length=max_length,
                                 length_buckets=LENGTH_BUCKETS, batch_buckets=(1, batch_size))


def with_alpha(kwargs: Mapping[str, Any], alpha: Optional[float]) -> dict[str, Any]:
  """`kwargs` plus ratio-first's alpha (only ratio_first takes one)."""
  return dict(kwargs, alpha=alpha) if kwargs.get("decode_method") == "ratio_first" else dict(kwargs)


def score(task, examples: Sequence[Mapping[str, Any]], predictions: Sequence[str],
          outputs: Sequence[Sequence[int]], per_example: Optional[str] = None) -> dict[str, Any]:
  """The task's metrics and ours for postprocessed `predictions` (texts) and
  their `outputs` (output-vocabulary ids); `per_example` names the
  per-example score to keep ('rougeL' / 'sentence_bleu'), None for none."""
  targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
             for ex in examples]
  result: dict[str, Any] = {}
  for fn in task.metric_fns:
    result.update({k: float(v) for k, v in fn(targets, predictions).items()})
  ref_text = [t["text"] if isinstance(t, dict) else t for t in targets]
  result["token_f1"] = token_f1(ref_text, predictions)
  result["repetition_rate"] = repetition_rate(outputs)
  # Pads are not tokens of the reference (source-aligned targets are mostly pad).
  result["reference_repetition_rate"] = repetition_rate(
      [[t for t in ex["targets"].tolist() if t != 0] for ex in examples])
  result["mean_output_tokens"] = float(np.mean([len(o) for o in outputs]))
  result["examples"] = len(examples)
  if per_example:
    scores = baselines_lib.sentence_scores(per_example, ref_text, predictions)
    result["per_example"] = {"metric": per_example, "scores": [round(x, 4) for x in scores]}
  result["samples"] = [{"source": str(ex["inputs_pretokenized"], "utf-8"),
                        "reference": ref, "prediction": pred}
                       for ex, ref, pred in list(zip(examples, ref_text, predictions))[:3]]
  return result


def evaluate(predictor, kwargs: Mapping[str, Any], task, examples: Sequence[Mapping[str, Any]],
             batch_size: int = 32, per_example: Optional[str] = None) -> dict[str, Any]:
  """Decodes `examples` with `predictor` (chunks of `batch_size`, sorted by
  length so that batches share a bucket, as a server would batch) and
  `kwargs` (`decode_kwargs`, with alpha); returns metrics and timing."""
  vocab = predictor.output_vocab
  truncated, cut = predictor.num_truncated, predictor.num_cut
  inputs = [predictor.prepare(ex["inputs"]) for ex in examples]
  t0 = time.perf_counter()
  outputs = predictor.predict(inputs, **kwargs)
  seconds = time.perf_counter() - t0
  predictions = [task.postprocess_fn(vocab.decode(ids), is_target=False) for ids in outputs]
  result = score(task, examples, predictions, outputs, per_example)
  result["truncated_inputs"] = predictor.num_truncated - truncated
  result["cut_outputs"] = predictor.num_cut - cut
  result["ms_per_sentence_batch%d" % batch_size] = 1000.0 * seconds / len(examples)
  return result


def batch1_latency_ms(predictor, kwargs: Mapping[str, Any],
                      examples: Sequence[Mapping[str, Any]]) -> float:
  """Median wall time (ms) of decoding one sentence at batch 1."""
  times = []
  for ex in examples:
    ids = predictor.prepare(ex["inputs"])
    t0 = time.perf_counter()
    predictor.predict([ids], **kwargs)
    times.append(1000.0 * (time.perf_counter() - t0))
  return statistics.median(times)


def _train_record(model_dir: str) -> dict[str, Any]:
  """The last line of the run's train_metrics.jsonl (steps, CPU seconds)."""
  path = os.path.join(model_dir, "train_metrics.jsonl")
  last: dict[str, Any] = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if "train/cpu_seconds" in record or "train/loss" in record:
          last.update(record)
  keep = ("step", "train/cpu_seconds", "train/loss", "train/stopped_by_cpu_budget")
  return {k: last[k] for k in keep if k in last}


def compare(task_name: str, systems: Sequence[tuple[str, str, str]], *,
            alphas: Sequence[float], select_metric: Optional[str] = None,
            latency_examples: int = 100, batch_size: int = 32,
            limit: Optional[int] = None, test_limit: Optional[int] = None,
            baselines: Optional[Sequence[str]] = None,
            lead_ratios: Sequence[float] = baselines_lib.LEAD_RATIOS,
            diffs: Sequence[tuple[str, str]] = (), bootstrap_samples: int = 2000,
            bootstrap_seed: int = 0, log=print) -> dict[str, Any]:
  """Evaluates every system and baseline; returns {'metric', 'systems': {name: ...},
  'differences': [...]}.

  `baselines` None: copy and lead for ROUGE tasks, none otherwise. Every
  input is checked (run directories, splits, vocabularies, --diff names)
  before anything is decoded.
  """
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get_task_or_mixture(task_name)
  default_metric = "bleu" if any(fn.__name__ == "bleu" for fn in task.metric_fns) else "rougeL"
  metric = select_metric or default_metric
  fn_names = {fn.__name__ for fn in task.metric_fns}
  per_example = ("sentence_bleu" if "bleu" in fn_names else
                 "rougeL" if "rouge" in fn_names else None)
  if baselines is None:
    baselines = baselines_lib.BASELINES if default_metric == "rougeL" else ()
  names = [s[0] for s in systems] + list(baselines)
  if not names:
    raise ValueError(f"nothing to compare on {task_name!r}: give --system and/or --baselines")
  if len(set(names)) != len(names):
    raise ValueError(f"system and baseline names must be unique, got {names}")
  for a, b in diffs:
    unknown = [n for n in a.split("+") + b.split("+") if n not in names]
    if unknown:
      raise ValueError(f"--diff {a},{b}: no system named {unknown[0]!r}; known: {names}")
  if diffs and per_example is None:
    raise ValueError(f"--diff needs per-example ROUGE or BLEU; task {task_name!r} has neither")
  for name, model_dir, _ in systems:
    check_run_dir(name, model_dir)
  dev = load_examples(task_name, "validation", limit)
  test = load_examples(task_name, "test", test_limit or limit)
  loaded_runs: dict[str, Any] = {}
  for name, model_dir, _ in systems:  # every run loads and fits the task first
    if model_dir not in loaded_runs:
      loaded_runs[model_dir] = load_run(name, model_dir)
    check_vocabularies(name, loaded_runs[model_dir], task)
  report: dict[str, Any] = {"task": task_name, "metric": metric, "systems": {},
                            "validation_examples": len(dev), "test_examples": len(test)}
  for name, model_dir, method in systems:
    loaded = loaded_runs[model_dir]
    kwargs = decode_kwargs(loaded, method)
    predictor = make_predictor(loaded, batch_size)
    entry: dict[str, Any] = {"model_dir": model_dir, "method": method, "kind": loaded.kind,
                             "train": _train_record(model_dir)}
    alpha = None
    if method == "ratio_first":
      sweep = {}
      for a in alphas:
        predictor.warm([batch_size], **with_alpha(kwargs, a))
        sweep[f"{a:g}"] = evaluate(predictor, with_alpha(kwargs, a), task, dev, batch_size)
        log(f"[compare] {name} alpha={a:g} validation {metric}={sweep[f'{a:g}'][metric]:.2f}")
      alpha = max(alphas, key=lambda a: sweep[f"{a:g}"][metric])
      entry["alpha"] = alpha
      entry["alpha_sweep"] = {a: {k: v for k, v in r.items() if k != "samples"}
                              for a, r in sweep.items()}
      entry["validation"] = sweep[f"{alpha:g}"]
    kwargs = with_alpha(kwargs, alpha)
    entry["compile_s"] = predictor.warm([1, batch_size], **kwargs)
    if method != "ratio_first":
      entry["validation"] = evaluate(predictor, kwargs, task, dev, batch_size)
    entry["test"] = evaluate(predictor, kwargs, task, test, batch_size, per_example)
    entry["latency_ms_batch1"] = batch1_latency_ms(predictor, kwargs, test[:latency_examples])
    entry["ms_per_sentence_batch%d" % batch_size] = entry["test"]["ms_per_sentence_batch%d"
                                                                  % batch_size]
    report["systems"][name] = entry
    log(f"[compare] {name}: test {metric}={entry['test'][metric]:.2f} "
        f"latency(b=1)={entry['latency_ms_batch1']:.1f}ms")
  for name in baselines:
    entry = baselines_lib.baseline_entry(
        name, task, dev, test, score_fn=score, metric=metric, ratios=lead_ratios,
        batch_size=batch_size, latency_examples=latency_examples, per_example=per_example,
        log=log)
    report["systems"][name] = entry
    log(f"[compare] {name}: test {metric}={entry['test'][metric]:.2f}")
  report["differences"] = baselines_lib.differences(report, diffs, bootstrap_samples,
                                                    bootstrap_seed)
  for d in report["differences"]:
    log(f"[compare] {d['a']} - {d['b']}: {d['metric']} {d['mean']:+.2f} "
        f"[{d['low']:+.2f}, {d['high']:+.2f}]")
  return report


def _machine() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpus": os.cpu_count(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()],
          "load_average": list(os.getloadavg())}


def _positive(flag: str):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = 0
    if value < 1:
      raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {text!r}")
    return value
  return parse


def main(argv: Sequence[str]) -> dict[str, Any]:
  if argv and argv[0] == "--markdown":
    if len(argv) != 2:
      raise ValueError("usage: python -m narlm.compare --markdown QUALITY.json")
    with open(argv[1], encoding="utf-8") as f:
      try:
        document = json.load(f)
      except ValueError as e:
        raise ValueError(f"{argv[1]} is not JSON: {e}") from e
    print(to_markdown(document))
    return document
  parser = argparse.ArgumentParser(prog="python -m narlm.compare", description=__doc__.split(
      "\n")[0])
  parser.add_argument("--task", required=True, help="seqio task, e.g. sentcomp_bert")
  parser.add_argument("--key", help="name of the task in the JSON (default: --task)")
  parser.add_argument("--system", action="append", default=[],
                      help="NAME=MODEL_DIR:METHOD (repeatable)")
  parser.add_argument("--baselines", help="comma-separated subset of copy,lead, or 'none' "
                      "(default: copy,lead for ROUGE tasks, none for BLEU tasks)")
  parser.add_argument("--lead_ratios", default=",".join(f"{r:g}" for r in
                                                        baselines_lib.LEAD_RATIOS),
                      help="lead-baseline ratios r tried on the validation split")
  parser.add_argument("--diff", action="append", default=[],
                      help="A,B: mean test difference A - B with a paired bootstrap 95%% "
                      "interval (repeatable); A or B may join systems with '+' (e.g. two "
                      "seeds: a+b,c+d), scored per example by their mean")
  parser.add_argument("--bootstrap_samples", type=_positive("--bootstrap_samples"),
                      default=2000)
  parser.add_argument("--bootstrap_seed", type=int, default=0)
  parser.add_argument("--alphas", default="0.4,0.5,0.6,0.7,0.8,1.0",
                      help="ratio-first alphas tried on the validation split")
  parser.add_argument("--select_metric",
                      help="metric that picks alpha and r (default: rougeL / bleu)")
  parser.add_argument("--latency_examples", type=_positive("--latency_examples"), default=100)
  parser.add_argument("--batch_size", type=_positive("--batch_size"), default=32)
  parser.add_argument("--limit", type=_positive("--limit"),
                      help="only the first N examples per split (smoke)")
  parser.add_argument("--test_limit", type=_positive("--test_limit"),
                      help="only the first N test examples (a documented subset)")
  parser.add_argument("--out", help="JSON file; an existing one is updated under tasks/KEY")
  parser.add_argument("--json", action="store_true",
                      help="print the whole report as JSON (default: a table and samples)")
  args = parser.parse_args(argv)
  # Checked before minutes of decoding, and as a ValueError (one line), not
  # the filesystem's error from the write at the end.
  out_dir = os.path.dirname(os.path.abspath(args.out)) if args.out else None
  if out_dir and not os.path.isdir(out_dir):
    raise ValueError(f"--out {args.out}: its directory {out_dir} does not exist")
  systems = [parse_system(s) for s in args.system]
  diffs = [parse_diff(d) for d in args.diff]
  baselines = (None if args.baselines is None else
               baselines_lib.parse_baselines(args.baselines, baselines_lib.BASELINES))
  try:
    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
  except ValueError as e:
    raise ValueError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from e
  if any(a <= 0 for a in alphas) or not alphas:
    raise ValueError(f"--alphas must be positive numbers, got {args.alphas!r}")
  t0 = time.time()
  report = compare(args.task, systems, alphas=alphas, select_metric=args.select_metric,
                   latency_examples=args.latency_examples, batch_size=args.batch_size,
                   limit=args.limit, test_limit=args.test_limit, baselines=baselines,
                   lead_ratios=baselines_lib.parse_ratios(args.lead_ratios), diffs=diffs,
                   bootstrap_samples=args.bootstrap_samples, bootstrap_seed=args.bootstrap_seed,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
  report["command"] = "python -m narlm.compare " + " ".join(argv)
  report["machine"] = _machine()
  report["wall_s"] = time.time() - t0
  document: dict[str, Any] = {"tasks": {}}
  if args.out and os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      try:
        document = json.load(f)
      except ValueError as e:
        raise ValueError(f"--out {args.out} exists but is not JSON: {e}") from e
    document.setdefault("tasks", {})
  document["tasks"][args.key or args.task] = report
  if args.out:
    write_text_atomically(args.out, to_json(document) + "\n")
  print(to_json(report) if args.json else summary(args.key or args.task, report, args.out))
  return report


def cli(argv: Sequence[str], quiet_native: bool = False) -> int:
  """main() with bad input as one line on stderr and exit status 2 (narlm.cli_errors).

  With `quiet_native` (the `python -m` entry point) TensorFlow's and XLA's
  native start-up logging is kept off the terminal
  (narlm.console.capture_native_stderr; `--verbosity=1` keeps it); Python
  errors still reach it."""
  from narlm import cli_errors, console  # pylint: disable=g-import-not-at-top
  if "--verbosity=1" in argv:
    argv = [a for a in argv if a != "--verbosity=1"]
  elif quiet_native:
    console.capture_native_stderr()
  return cli_errors.run(main, argv)


if __name__ == "__main__":
  sys.exit(cli(sys.argv[1:], quiet_native=True))
