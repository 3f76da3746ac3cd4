r"""Plots of narlm's benchmark and quality results (matplotlib, Agg backend).

Usage:
  python -m narlm.plots --bench BENCH.json [--quality QUALITY.json] --out_dir DIR

Writes PNG files to DIR (created if absent):

* ``speedup_vs_length.png`` (from ``--bench``, the JSON written by
  ``python -m narlm.bench``): AR greedy time / NAR time against the output
  length, one line per NAR decoding method, one panel per batch size in the
  JSON (1 and 32 in a full run, 1 with --quick). The values are
  ``decode.cells.<cell>.speedup.ar_greedy.<method>.ratio`` (ratio of the
  medians); a dotted line marks 1x (no speedup).
* ``quality_vs_latency.png`` (only with ``--quality``): one point per system,
  x = latency in ms per sentence (log scale), y = the task's quality metric
  on the test split, one panel per task. Expected structure::

    {"tasks": {
       "sentcomp": {"metric": "rougeL",
                    "systems": {"nar_argmax": {"test": {"rougeL": 55.1, ...},
                                               "latency_ms_batch1": 9.1,
                                               ...},
                                ...}},
       "iwslt14": {"metric": "bleu", "systems": {...}}}}

Bad input (a missing or unreadable file, malformed JSON, a missing key, a
value that is not a finite number) raises `PlotInputError` naming the file
and the key path (e.g. ``q.json: missing key
'tasks.sentcomp.systems.nar_argmax.test.rougeL'``); the command line prints
it and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

# NAR methods in the order narlm.bench measures them (not imported from
# narlm.bench, which would import JAX); methods not listed here are plotted
# after these, in file order.
NAR_METHOD_ORDER = ("nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first",
                    "nar_crf_ratio_first_truncated")
AR_REFERENCE = "ar_greedy"
LATENCY_KEY = "latency_ms_batch1"
SPLIT = "test"
SPEEDUP_PNG = "speedup_vs_length.png"
QUALITY_PNG = "quality_vs_latency.png"


class PlotInputError(ValueError):
  """A results file is missing, malformed or lacks a key."""


# ------------------------------------------------------------- validation
def load_json(path: str | os.PathLike) -> dict:
  """The parsed JSON object in `path`, or PlotInputError naming the file."""
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise PlotInputError(f"{path}: file not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise PlotInputError(f"{path}: cannot read: {e}") from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise PlotInputError(f"{path}: malformed JSON: {e}") from None
  if not isinstance(obj, dict):
    raise PlotInputError(f"{path}: expected a JSON object at the top level, "
                         f"got {type(obj).__name__}")
  return obj


def _join(path: Sequence[str]) -> str:
  return ".".join(str(p) for p in path)


def _get(obj: Any, path: Sequence[str], source: str, kind: type | tuple = dict) -> Any:
  """obj[path[0]][path[1]]...; PlotInputError naming `source` and the key path
  if a key is missing, an intermediate value is not an object, or the value
  is not of `kind`."""
  cur = obj
  for i, key in enumerate(path):
    if not isinstance(cur, dict):
      raise PlotInputError(f"{source}: '{_join(path[:i])}' should be a JSON object, "
                           f"got {type(cur).__name__}")
    if key not in cur:
      raise PlotInputError(f"{source}: missing key '{_join(path[:i + 1])}'")
    cur = cur[key]
  if not isinstance(cur, kind) or (isinstance(cur, bool) and bool not in _kinds(kind)):
    raise PlotInputError(f"{source}: '{_join(path)}' should be {_describe(kind)}, "
                         f"got {_describe(type(cur))}")
  return cur


def _kinds(kind: type | tuple) -> tuple:
  return kind if isinstance(kind, tuple) else (kind,)


def _describe(kind: type | tuple) -> str:
  """JSON names: 'a JSON object', 'a number or null', ..."""
  names = {dict: "a JSON object", list: "a list", str: "a string", bool: "a boolean",
           int: "an integer", float: "a number", type(None): "null"}
  kinds = [k for k in _kinds(kind) if not (k is int and float in _kinds(kind))]
  return " or ".join(names.get(k, k.__name__) for k in kinds)


def _number(obj: Any, path: Sequence[str], source: str, positive: bool = False) -> float:
  value = _get(obj, path, source, (int, float))
  if not math.isfinite(value) or (positive and value <= 0):
    need = "a finite number > 0" if positive else "a finite number"
    raise PlotInputError(f"{source}: '{_join(path)}' should be {need}, got {value!r}")
  return float(value)


def _ordered_methods(names) -> list[str]:
  known = [m for m in NAR_METHOD_ORDER if m in names]
  return known + [m for m in names if m not in known]


def decode_speedups(bench: Mapping[str, Any],
                    source: str = "bench JSON") -> dict[int, dict[str, list[tuple[int, float]]]]:
  """{batch: {nar method: [(length, AR greedy / NAR speedup), ...]}} sorted by length.

  A cell's ratio may be null (the bench writes non-finite floats as null):
  that point is left out.
  """
  decode = _get(bench, ["decode"], source)
  if "error" in decode:
    raise PlotInputError(f"{source}: the bench's decode section failed: {decode['error']}")
  cells = _get(bench, ["decode", "cells"], source)
  if not cells:
    raise PlotInputError(f"{source}: 'decode.cells' is empty")
  out: dict[int, dict[str, list[tuple[int, float]]]] = {}
  for name in cells:
    base = ["decode", "cells", name]
    batch = _get(bench, base + ["batch"], source, int)
    length = _get(bench, base + ["length"], source, int)
    per_method = _get(bench, base + ["speedup", AR_REFERENCE], source)
    if not per_method:
      raise PlotInputError(f"{source}: '{_join(base + ['speedup', AR_REFERENCE])}' is empty")
    for method in per_method:
      value = _get(bench, base + ["speedup", AR_REFERENCE, method, "ratio"], source,
                   (int, float, type(None)))
      if value is None or not math.isfinite(value):
        continue
      out.setdefault(batch, {}).setdefault(method, []).append((length, float(value)))
  for per_batch in out.values():
    for points in per_batch.values():
      points.sort()
  if not out:
    raise PlotInputError(f"{source}: no finite 'decode.cells.*.speedup.{AR_REFERENCE}.*.ratio'")
  return {b: {m: out[b][m] for m in _ordered_methods(list(out[b]))} for b in sorted(out)}


def quality_points(quality: Mapping[str, Any], source: str = "quality JSON",
                   latency_key: str = LATENCY_KEY,
                   split: str = SPLIT) -> dict[str, dict[str, Any]]:
  """{task: {'metric': name, 'points': [(system, latency ms, metric value), ...],
  'baselines': [(system, metric value), ...]}}: model systems are points,
  model-free baselines (kind 'baseline': copy, lead-k) horizontal lines."""
  tasks = _get(quality, ["tasks"], source)
  if not tasks:
    raise PlotInputError(f"{source}: 'tasks' is empty")
  out = {}
  for task in tasks:
    metric = _get(quality, ["tasks", task, "metric"], source, str)
    systems = _get(quality, ["tasks", task, "systems"], source)
    if not systems:
      raise PlotInputError(f"{source}: 'tasks.{task}.systems' is empty")
    points, baselines = [], []
    for system in systems:
      base = ["tasks", task, "systems", system]
      if systems[system].get("kind") == "baseline" if isinstance(systems[system], dict) else False:
        baselines.append((system, _number(quality, base + [split, metric], source)))
        continue
      latency = _number(quality, base + [latency_key], source, positive=True)
      value = _number(quality, base + [split, metric], source)
      points.append((system, latency, value))
    out[task] = {"metric": metric, "points": points, "baselines": baselines}
  return out


# ------------------------------------------------------------------ plots
def _figure(n_panels: int, width_per_panel: float = 5.0, height: float = 4.0):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  # The object API with an explicit Agg canvas: no pyplot, no global backend.
  fig = Figure(figsize=(width_per_panel * n_panels, height), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, n_panels, squeeze=False)[0]
  return fig, list(axes)


def _save(fig, out_path: str | os.PathLike) -> pathlib.Path:
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, format="png", dpi=120)
  return out_path


def plot_speedup_vs_length(bench: Mapping[str, Any], out_path: str | os.PathLike,
                           source: str = "bench JSON") -> pathlib.Path:
  """Writes speedup_vs_length.png (one panel per batch size); returns its path."""
  series = decode_speedups(bench, source)
  meta = bench.get("meta") if isinstance(bench.get("meta"), dict) else {}
  fig, axes = _figure(len(series))
  all_lengths = sorted({n for per in series.values() for pts in per.values() for n, _ in pts})
  for ax, (batch, per_method) in zip(axes, series.items()):
    for method, points in per_method.items():
      lengths, speedups = zip(*points)
      ax.plot(lengths, speedups, marker="o", label=method)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_lengths, [str(n) for n in all_lengths])
    ax.set_xlabel("output length (tokens; source length = output length)")
    ax.set_ylabel(f"speedup ({AR_REFERENCE} time / NAR time)")
    ax.set_title(f"batch {batch}")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
  title = "NAR decoding speedup over AR greedy (KV cache)"
  if meta.get("size"):
    title += f", model size {meta['size']}"
  if meta.get("preset"):
    title += f", preset {meta['preset']}"
  fig.suptitle(title)
  return _save(fig, out_path)


def plot_quality_vs_latency(quality: Mapping[str, Any], out_path: str | os.PathLike,
                            source: str = "quality JSON", latency_key: str = LATENCY_KEY,
                            split: str = SPLIT) -> pathlib.Path:
  """Writes quality_vs_latency.png (one panel per task); returns its path."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  tasks = quality_points(quality, source, latency_key, split)
  fig, axes = _figure(len(tasks))
  for ax, (task, info) in zip(axes, tasks.items()):
    for system, latency, value in info["points"]:
      ax.scatter([latency], [value], label=system)
      ax.annotate(system, (latency, value), textcoords="offset points", xytext=(4, 4),
                  fontsize="small")
    for system, value in info.get("baselines", []):
      ax.axhline(value, linestyle="--", linewidth=1, color="grey")
      ax.annotate(f"{system} (no model)", (0.01, value), xycoords=("axes fraction", "data"),
                  textcoords="offset points", xytext=(0, 3), fontsize="small", color="grey")
    ax.set_xscale("log")
    # Plain numbers on the major ticks; no minor-tick labels (they overlap).
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.margins(x=0.25, y=0.15)  # room for the system names
    ax.set_xlabel(f"latency (ms per sentence; {latency_key})")
    ax.set_ylabel(f"{info['metric']} ({split})")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
  fig.suptitle("Quality vs latency")
  return _save(fig, out_path)


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except OSError as e:
    raise PlotInputError(f"{path}: cannot read ({e.strerror or e})") from e
  rows = []
  for number, line in enumerate(lines, 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise PlotInputError(f"{path}:{number}: not JSON ({e.msg})") from e
  return rows


def training_curve(run_dir: str | os.PathLike, metric: str,
                   cpu_offset: float = 0.0) -> list[tuple[float, float]]:
  """[(training CPU seconds, value)] of a narlm run directory's evaluations.

  `metric` is a key of MODEL_DIR/validation_curve.jsonl (e.g. 'eval/loss',
  'sentcomp_bert/rougeL') or, prefixed 'train/', of train_metrics.jsonl. The
  CPU seconds at an evaluation's step are interpolated from
  train_metrics.jsonl's 'train/cpu_seconds' (the trainer's compute budget
  clock); `cpu_offset` is added (e.g. the pretraining run's CPU seconds, to
  put fine-tuning on a total-compute axis).
  """
  run_dir = pathlib.Path(run_dir)
  train = [r for r in _read_jsonl(run_dir / "train_metrics.jsonl") if "train/cpu_seconds" in r]
  if not train:
    raise PlotInputError(f"{run_dir / 'train_metrics.jsonl'}: no 'train/cpu_seconds' rows")
  steps = [float(r["step"]) for r in train]
  cpu = [float(r["train/cpu_seconds"]) for r in train]
  source = run_dir / ("train_metrics.jsonl" if metric.startswith("train/")
                      else "validation_curve.jsonl")
  rows = train if metric.startswith("train/") else _read_jsonl(source)
  points = []
  for row in rows:
    if metric in row:
      value = _number(row, [metric], str(source))
      at = float(np.interp(float(row["step"]), [0.0] + steps, [0.0] + cpu))
      points.append((at + cpu_offset, value))
  if not points:
    raise PlotInputError(f"{source}: no row has '{metric}'")
  return points


def plot_training_curves(panels: Mapping[str, Mapping[str, Any]],
                         out_path: str | os.PathLike) -> pathlib.Path:
  """One panel per entry of `panels`: {title: {"metric": key, "ylabel": str,
  "runs": {label: (run_dir, cpu_offset)}, "hlines": {label: value}}}, x =
  training CPU seconds (plus each run's offset); returns the PNG's path."""
  fig, axes = _figure(len(panels), width_per_panel=6.0)
  for ax, (title, panel) in zip(axes, panels.items()):
    for label, (run_dir, offset) in panel["runs"].items():
      xs, ys = zip(*training_curve(run_dir, panel["metric"], offset))
      ax.plot(xs, ys, marker=".", label=label)
    for label, value in panel.get("hlines", {}).items():
      ax.axhline(value, linestyle="--", linewidth=1, color="grey")
      ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"),
                  textcoords="offset points", xytext=(0, 3), fontsize="small", color="grey")
    ax.set_xlabel("training CPU seconds")
    ax.set_ylabel(panel.get("ylabel", panel["metric"]))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
  return _save(fig, out_path)


def make_plots(bench_path: str | os.PathLike, out_dir: str | os.PathLike,
               quality_path: Optional[str | os.PathLike] = None,
               latency_key: str = LATENCY_KEY, split: str = SPLIT) -> list[pathlib.Path]:
  """Reads the JSON files and writes the PNGs into out_dir; returns their paths.

  Both inputs are read and validated before anything is written.
  """
  bench = load_json(bench_path)
  decode_speedups(bench, str(bench_path))
  quality = None
  if quality_path is not None:
    quality = load_json(quality_path)
    quality_points(quality, str(quality_path), latency_key, split)
  out_dir = pathlib.Path(out_dir)
  written = [plot_speedup_vs_length(bench, out_dir / SPEEDUP_PNG, str(bench_path))]
  if quality is not None:
    written.append(plot_quality_vs_latency(quality, out_dir / QUALITY_PNG, str(quality_path),
                                           latency_key, split))
  return written


def parse_args(argv: Optional[Sequence[str]]):
  ap = argparse.ArgumentParser(prog="python -m narlm.plots",
                               description=__doc__.split("\n")[0])
  ap.add_argument("--bench", required=True, help="JSON written by python -m narlm.bench")
  ap.add_argument("--quality", default=None, help="quality results JSON (optional)")
  ap.add_argument("--out_dir", "--out-dir", dest="out_dir", required=True,
                  help="directory for the PNG files")
  ap.add_argument("--latency_key", "--latency-key", dest="latency_key", default=LATENCY_KEY,
                  help=f"per-system latency key in the quality JSON (default {LATENCY_KEY})")
  ap.add_argument("--split", default=SPLIT,
                  help=f"split whose metric is plotted (default {SPLIT})")
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    written = make_plots(args.bench, args.out_dir, args.quality, args.latency_key, args.split)
  except PlotInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
