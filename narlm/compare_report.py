"""narlm.compare's reports for people: the Markdown table (BENCHMARKS.md and
the console), the compact JSON of --out, and the console summary."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional

from narlm import compare_baselines as baselines_lib

TABLE_METRICS = {"rougeL": ("rouge1", "rouge2", "rougeL"), "bleu": ("bleu",)}


def to_markdown(document: Mapping[str, Any]) -> str:
  """Markdown tables (one per task, then its differences) of a quality JSON
  written by --out."""
  lines = []
  for key, report in document.get("tasks", {}).items():
    if "systems" not in report:
      continue
    metrics = TABLE_METRICS.get(report.get("metric"), (report.get("metric"),))
    header = (["system", "method", "alpha / r", "train steps", "train CPU s"] + list(metrics) +
              ["token F1", "repetition %", "output tokens", "latency b=1 (ms)",
               "ms/sentence b=32", "speedup b=1 vs AR"])
    lines += [f"**{key}** ({report.get('test_examples', '?')} test examples; "
              f"alpha and r chosen on {report.get('validation_examples', '?')} validation "
              "examples)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ar = [e for e in report["systems"].values() if e.get("kind") == "ArSeq2SeqModel"]
    ar_latency = ar[0]["latency_ms_batch1"] if ar else None
    for name, entry in report["systems"].items():
      test, train = entry["test"], entry.get("train", {})
      batch_key = next((k for k in entry if k.startswith("ms_per_sentence_batch")), None)
      choice = entry.get("alpha", entry.get("ratio"))
      is_model = entry.get("kind") != "baseline"
      row = [name, entry["method"], f"{choice:g}" if choice is not None else "",
             str(train.get("step", "")), f"{train['train/cpu_seconds']:.0f}"
             if "train/cpu_seconds" in train else ""]
      row += [f"{test[m]:.2f}" for m in metrics]
      row += [f"{test['token_f1']:.2f}", f"{test['repetition_rate']:.2f}",
              f"{test['mean_output_tokens']:.1f}", f"{entry['latency_ms_batch1']:.1f}",
              f"{entry[batch_key]:.1f}" if batch_key else "",
              f"{ar_latency / entry['latency_ms_batch1']:.1f}×"
              if ar_latency and is_model else ""]
      lines.append("| " + " | ".join(row) + " |")
    ref = next(iter(report["systems"].values()))["test"].get("reference_repetition_rate")
    if ref is not None:
      lines += ["", f"Reference repetition rate: {ref:.2f}%."]
    lines.append("")
    lines += baselines_lib.differences_markdown(report.get("differences", ()))
  return "\n".join(lines)


def to_json(document: Any) -> str:
  """Indented JSON with every list of numbers on one line (per-example
  scores stay one line per system, not one line per example)."""
  text = json.dumps(document, indent=1, sort_keys=True)
  number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
  return re.sub(rf"\[\s*({number}(?:,\s*{number})*)\s*\]",
                lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def summary(key: str, report: Mapping[str, Any], out: Optional[str] = None,
            num_samples: int = 1) -> str:
  """What a person reads: the test table, the differences, a few test
  samples of each model system (the whole report goes to --out / --json)."""
  lines = [to_markdown({"tasks": {key: report}}).rstrip()]
  for name, entry in report["systems"].items():
    if entry.get("kind") == "baseline":
      continue
    for sample in entry["test"].get("samples", [])[:num_samples]:
      lines += ["", f"{name}:", f"  input:      {sample['source']}",
                f"  output:     {sample['prediction']}", f"  reference:  {sample['reference']}"]
  lines.append("")
  lines.append(f"whole report: {out}" if out else "whole report: rerun with --out FILE or --json")
  return "\n".join(lines)
