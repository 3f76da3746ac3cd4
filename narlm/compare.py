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
``greedy`` for ArSeq2SeqModel. For ``ratio_first`` the ratio alpha is chosen
on the *validation* split (the best ``--select_metric`` over ``--alphas``);
the test split is decoded once per system, with the chosen alpha, and never
used for a choice.

Reported per system and split (metrics on the task's normalised text, as in
training-time evaluation):

* the task's seqio metrics (ROUGE-1/2/L F1 for sentcomp, BLEU for IWSLT);
* ``token_f1``: mean per-sentence bag-of-words F1 x 100 between prediction
  and reference (whitespace tokens of the normalised text);
* ``repetition_rate``: share (%) of output tokens (the model's vocabulary
  ids) equal to the token before them; the references' rate is reported as
  ``reference_repetition_rate`` for scale;
* ``mean_output_tokens``;
* latency: ``latency_ms_batch1`` = median wall time of one sentence at batch
  1 over the first ``--latency_examples`` test sentences, and
  ``ms_per_sentence_batch32`` = wall time to decode the whole test split at
  batch 32 / number of sentences. Inputs are padded to the smallest length
  bucket (16/32/64/128, capped at the run's input length) that holds them,
  for every system alike; programs are compiled before timing. The AR model
  may generate as many tokens as the bucket has positions, like NAR.

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

NAR_METHODS = ("argmax", "viterbi", "ratio_first")
AR_METHODS = ("greedy",)
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
  if method not in NAR_METHODS + AR_METHODS:
    raise ValueError(f"--system {spec!r}: unknown method {method!r}; expected one of "
                     f"{NAR_METHODS + AR_METHODS}")
  return name, model_dir, method


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


class Decoder:
  """Jitted, length-bucketed decoding of one loaded run with one method."""

  def __init__(self, loaded, method: str, max_length: int):
    import jax  # pylint: disable=g-import-not-at-top
    kind = loaded.kind
    if method in AR_METHODS and kind != "ArSeq2SeqModel":
      raise ValueError(f"{loaded.model_dir}: method {method!r} needs an AR run, this is {kind}")
    if method in NAR_METHODS and kind == "ArSeq2SeqModel":
      raise ValueError(f"{loaded.model_dir}: method {method!r} needs a NAG-BERT run, "
                       "this is an AR run (use :greedy)")
    if method in ("viterbi", "ratio_first") and not loaded.model.module.use_crf:
      raise ValueError(f"{loaded.model_dir}: method {method!r} needs a CRF, the run has none")
    self.loaded, self.method, self.max_length = loaded, method, max_length
    self.buckets = tuple(b for b in LENGTH_BUCKETS if b < max_length) + (max_length,)
    self.pad_id = int(getattr(loaded.model.output_vocabulary, "pad_id", 0) or 0)
    model = loaded.model

    def predict(params, tokens, alpha):
      batch = {"encoder_input_tokens": tokens}
      if method in AR_METHODS:
        return model.predict_batch_with_aux(params, batch, decode_method="greedy")
      return model.predict_batch_with_aux(params, batch, decode_method=method, alpha=alpha)

    self._predict = jax.jit(predict, static_argnames=("alpha",))

  def __call__(self, inputs: Sequence[Sequence[int]], alpha: Optional[float] = None
               ) -> list[list[int]]:
    """One padded batch -> output id lists (cut at the first eos)."""
    import jax  # pylint: disable=g-import-not-at-top
    from narlm import decoding  # pylint: disable=g-import-not-at-top
    # Callers truncate inputs to max_length, the largest bucket.
    length = decoding.bucket(max(len(x) for x in inputs), self.buckets)
    tokens = np.full((len(inputs), length), self.pad_id, np.int32)
    for r, ids in enumerate(inputs):
      tokens[r, :len(ids)] = ids
    pred, aux = jax.block_until_ready(self._predict(self.loaded.params, tokens, alpha))
    pred, lengths = np.asarray(pred), np.asarray(aux["length"])
    return [pred[r, :lengths[r]].tolist() for r in range(len(inputs))]

  def warm(self, batch_sizes: Sequence[int], alpha: Optional[float]) -> float:
    """Compiles every (batch, bucket) program used; returns the seconds taken."""
    t0 = time.perf_counter()
    for b in batch_sizes:
      for length in self.buckets:
        self([[1] * length] * b, alpha)
    return time.perf_counter() - t0


def evaluate(decoder: Decoder, task, examples: Sequence[Mapping[str, Any]],
             alpha: Optional[float], batch_size: int = 32) -> dict[str, Any]:
  """Decodes `examples` at `batch_size`; returns metrics and timing."""
  vocab = decoder.loaded.model.output_vocabulary
  inputs = [ex["inputs"][:decoder.max_length].tolist() for ex in examples]
  outputs: list[list[int]] = []
  t0 = time.perf_counter()
  # Sorted by length so that batches share a bucket, as a server would batch.
  order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
  by_position: dict[int, list[int]] = {}
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    chunk = [inputs[i] for i in idx]
    rows = len(chunk)
    if rows < batch_size:  # pad the last batch to a compiled shape
      chunk = chunk + [chunk[-1]] * (batch_size - rows)
    for i, out in zip(idx, decoder(chunk, alpha)[:rows]):
      by_position[i] = out
  seconds = time.perf_counter() - t0
  outputs = [by_position[i] for i in range(len(inputs))]
  predictions = [task.postprocess_fn(vocab.decode(ids), is_target=False) for ids in outputs]
  targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
             for ex in examples]
  result: dict[str, Any] = {}
  for fn in task.metric_fns:
    result.update({k: float(v) for k, v in fn(targets, predictions).items()})
  ref_text = [t["text"] if isinstance(t, dict) else t for t in targets]
  result["token_f1"] = token_f1(ref_text, predictions)
  result["repetition_rate"] = repetition_rate(outputs)
  result["reference_repetition_rate"] = repetition_rate(
      [ex["targets"].tolist() for ex in examples])
  result["mean_output_tokens"] = float(np.mean([len(o) for o in outputs]))
  result["examples"] = len(examples)
  result["truncated_inputs"] = int(sum(len(ex["inputs"]) > decoder.max_length
                                       for ex in examples))
  result["ms_per_sentence_batch%d" % batch_size] = 1000.0 * seconds / len(examples)
  result["samples"] = [{"source": str(ex["inputs_pretokenized"], "utf-8"),
                        "reference": ref, "prediction": pred}
                       for ex, ref, pred in list(zip(examples, ref_text, predictions))[:3]]
  return result


def batch1_latency_ms(decoder: Decoder, examples: Sequence[Mapping[str, Any]],
                      alpha: Optional[float]) -> float:
  """Median wall time (ms) of decoding one sentence at batch 1."""
  times = []
  for ex in examples:
    ids = ex["inputs"][:decoder.max_length].tolist()
    t0 = time.perf_counter()
    decoder([ids], alpha)
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
            log=print) -> dict[str, Any]:
  """Evaluates every system; returns {'metric', 'systems': {name: ...}}."""
  from narlm import serve  # pylint: disable=g-import-not-at-top
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get_task_or_mixture(task_name)
  dev = load_examples(task_name, "validation", limit)
  test = load_examples(task_name, "test", test_limit or limit)
  default_metric = "bleu" if any(fn.__name__ == "bleu" for fn in task.metric_fns) else "rougeL"
  metric = select_metric or default_metric
  loaded_runs: dict[str, Any] = {}
  report: dict[str, Any] = {"task": task_name, "metric": metric, "systems": {},
                            "validation_examples": len(dev), "test_examples": len(test)}
  for name, model_dir, method in systems:
    if model_dir not in loaded_runs:
      loaded_runs[model_dir] = serve.load_model(model_dir)
    loaded = loaded_runs[model_dir]
    max_length = loaded.input_length or LENGTH_BUCKETS[-1]
    decoder = Decoder(loaded, method, max_length)
    entry: dict[str, Any] = {"model_dir": model_dir, "method": method, "kind": loaded.kind,
                             "train": _train_record(model_dir)}
    alpha = None
    if method == "ratio_first":
      sweep = {}
      for a in alphas:
        decoder.warm([batch_size], a)
        sweep[f"{a:g}"] = evaluate(decoder, task, dev, a, batch_size)
        log(f"[compare] {name} alpha={a:g} validation {metric}={sweep[f'{a:g}'][metric]:.2f}")
      alpha = max(alphas, key=lambda a: sweep[f"{a:g}"][metric])
      entry["alpha"] = alpha
      entry["alpha_sweep"] = {a: {k: v for k, v in r.items() if k != "samples"}
                              for a, r in sweep.items()}
      entry["validation"] = sweep[f"{alpha:g}"]
    entry["compile_s"] = decoder.warm([1, batch_size], alpha)
    if method != "ratio_first":
      entry["validation"] = evaluate(decoder, task, dev, alpha, batch_size)
    entry["test"] = evaluate(decoder, task, test, alpha, batch_size)
    entry["latency_ms_batch1"] = batch1_latency_ms(decoder, test[:latency_examples], alpha)
    entry["ms_per_sentence_batch%d" % batch_size] = entry["test"]["ms_per_sentence_batch%d"
                                                                  % batch_size]
    report["systems"][name] = entry
    log(f"[compare] {name}: test {metric}={entry['test'][metric]:.2f} "
        f"latency(b=1)={entry['latency_ms_batch1']:.1f}ms")
  return report


TABLE_METRICS = {"rougeL": ("rouge1", "rouge2", "rougeL"), "bleu": ("bleu",)}


def to_markdown(document: Mapping[str, Any]) -> str:
  """Markdown tables (one per task) of a quality JSON written by --out."""
  lines = []
  for key, report in document.get("tasks", {}).items():
    if "systems" not in report:
      continue
    metrics = TABLE_METRICS.get(report.get("metric"), (report.get("metric"),))
    header = (["system", "method", "alpha", "train steps", "train CPU s"] + list(metrics) +
              ["token F1", "repetition %", "output tokens", "latency b=1 (ms)",
               "ms/sentence b=32", "speedup b=1 vs AR"])
    lines += [f"**{key}** ({report.get('test_examples', '?')} test examples; "
              f"alpha chosen on {report.get('validation_examples', '?')} validation examples)",
              "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ar = [e for e in report["systems"].values() if e.get("kind") == "ArSeq2SeqModel"]
    ar_latency = ar[0]["latency_ms_batch1"] if ar else None
    for name, entry in report["systems"].items():
      test, train = entry["test"], entry.get("train", {})
      batch_key = next((k for k in entry if k.startswith("ms_per_sentence_batch")), None)
      row = [name, entry["method"], f"{entry['alpha']:g}" if "alpha" in entry else "",
             str(train.get("step", "")), f"{train['train/cpu_seconds']:.0f}"
             if "train/cpu_seconds" in train else ""]
      row += [f"{test[m]:.2f}" for m in metrics]
      row += [f"{test['token_f1']:.2f}", f"{test['repetition_rate']:.2f}",
              f"{test['mean_output_tokens']:.1f}", f"{entry['latency_ms_batch1']:.1f}",
              f"{entry[batch_key]:.1f}" if batch_key else "",
              f"{ar_latency / entry['latency_ms_batch1']:.1f}×" if ar_latency else ""]
      lines.append("| " + " | ".join(row) + " |")
    ref = next(iter(report["systems"].values()))["test"].get("reference_repetition_rate")
    if ref is not None:
      lines += ["", f"Reference repetition rate: {ref:.2f}%."]
    lines.append("")
  return "\n".join(lines)


def _machine() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpus": os.cpu_count(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()],
          "load_average": list(os.getloadavg())}


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
  parser.add_argument("--system", action="append", required=True,
                      help="NAME=MODEL_DIR:METHOD (repeatable)")
  parser.add_argument("--alphas", default="0.4,0.5,0.6,0.7,0.8,1.0",
                      help="ratio-first alphas tried on the validation split")
  parser.add_argument("--select_metric", help="metric that picks alpha (default: rougeL / bleu)")
  parser.add_argument("--latency_examples", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--limit", type=int, help="only the first N examples per split (smoke)")
  parser.add_argument("--test_limit", type=int,
                      help="only the first N test examples (a documented subset)")
  parser.add_argument("--out", help="JSON file; an existing one is updated under tasks/KEY")
  args = parser.parse_args(argv)
  systems = [parse_system(s) for s in args.system]
  names = [s[0] for s in systems]
  if len(set(names)) != len(names):
    raise ValueError(f"system names must be unique, got {names}")
  try:
    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
  except ValueError as e:
    raise ValueError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from e
  if any(a <= 0 for a in alphas) or not alphas:
    raise ValueError(f"--alphas must be positive numbers, got {args.alphas!r}")
  t0 = time.time()
  report = compare(args.task, systems, alphas=alphas, select_metric=args.select_metric,
                   latency_examples=args.latency_examples, batch_size=args.batch_size,
                   limit=args.limit, test_limit=args.test_limit, log=lambda m: print(m, file=sys.stderr, flush=True))
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
  text = json.dumps(document, indent=1, sort_keys=True)
  if args.out:
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text + "\n")
    os.replace(tmp, args.out)
  print(json.dumps(report, indent=1, sort_keys=True))
  return report


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
