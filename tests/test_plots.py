"""narlm.plots: PNGs from bench/quality JSON, clear errors on bad input."""

import copy
import json
import pathlib

import pytest

from narlm import plots

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METHODS = ("nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first")


def _assert_png(path):
  path = pathlib.Path(path)
  assert path.is_file(), path
  data = path.read_bytes()
  assert len(data) > 1000, f"{path} has only {len(data)} bytes"
  assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"


def _bench(lengths=(16, 32), batches=(1, 32)):
  cells = {}
  for b in batches:
    for n in lengths:
      cells[f"batch_{b}_length_{n}"] = {
          "batch": b, "length": n,
          "speedup": {"ar_greedy": {m: {"ratio": n / 4 + i, "paired_median_ratio": n / 4}
                                    for i, m in enumerate(METHODS)}}}
  return {"meta": {"size": "tiny", "preset": "quick"}, "decode": {"cells": cells}}


def _quality():
  def system(score, latency):
    return {"test": {"rougeL": score, "bleu": score / 2},
            "latency_ms_batch1": latency}
  return {"tasks": {
      "sentcomp": {"metric": "rougeL",
                   "systems": {"nar_argmax": system(50.0, 9.1), "ar_greedy": system(60.0, 80.0)}},
      "iwslt14": {"metric": "bleu",
                  "systems": {"nar_crf_viterbi": system(30.0, 12.0),
                              "ar_greedy": system(40.0, 150.0)}}}}


def _write(tmp_path, name, obj):
  path = tmp_path / name
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return path


def test_decode_speedups_groups_by_batch_and_sorts_lengths():
  bench = _bench(lengths=(64, 16, 32))
  series = plots.decode_speedups(bench)
  assert list(series) == [1, 32]
  assert list(series[1]) == list(METHODS)
  assert series[32]["nar_argmax"] == [(16, 4.0), (32, 8.0), (64, 16.0)]


def test_null_ratio_is_left_out():
  bench = _bench()
  bench["decode"]["cells"]["batch_1_length_16"]["speedup"]["ar_greedy"]["nar_argmax"][
      "ratio"] = None
  assert plots.decode_speedups(bench)[1]["nar_argmax"] == [(32, 8.0)]


def test_quality_points():
  pts = plots.quality_points(_quality())
  assert pts["sentcomp"] == {"metric": "rougeL",
                             "points": [("nar_argmax", 9.1, 50.0), ("ar_greedy", 80.0, 60.0)],
                             "baselines": []}
  assert pts["iwslt14"]["metric"] == "bleu"
  # model-free baselines (narlm.compare's copy / lead-k) are lines, not latency points
  quality = _quality()
  quality["tasks"]["sentcomp"]["systems"]["lead"] = {"kind": "baseline",
                                                     "test": {"rougeL": 61.7}}
  pts = plots.quality_points(quality)
  assert pts["sentcomp"]["baselines"] == [("lead", 61.7)]
  assert [p[0] for p in pts["sentcomp"]["points"]] == ["nar_argmax", "ar_greedy"]


def test_cli_writes_both_pngs(tmp_path, capsys):
  bench = _write(tmp_path, "bench.json", _bench())
  quality = _write(tmp_path, "quality.json", _quality())
  out = tmp_path / "out" / "plots"
  assert plots.main(["--bench", str(bench), "--quality", str(quality),
                     "--out_dir", str(out)]) == 0
  _assert_png(out / plots.SPEEDUP_PNG)
  _assert_png(out / plots.QUALITY_PNG)
  printed = capsys.readouterr().out.split()
  assert printed == [str(out / plots.SPEEDUP_PNG), str(out / plots.QUALITY_PNG)]


def test_without_quality_only_the_speedup_plot(tmp_path):
  bench = _write(tmp_path, "bench.json", _bench(lengths=(32,)))
  written = plots.make_plots(bench, tmp_path / "out")
  assert [p.name for p in written] == [plots.SPEEDUP_PNG]
  _assert_png(written[0])
  assert not (tmp_path / "out" / plots.QUALITY_PNG).exists()


def test_committed_full_bench_json(tmp_path):
  written = plots.make_plots(REPO / "docs" / "bench_small_cpu.json", tmp_path)
  _assert_png(written[0])
  series = plots.decode_speedups(plots.load_json(REPO / "docs" / "bench_small_cpu.json"))
  assert set(series) == {1, 32}
  assert all(len(points) == 4 for per in series.values() for points in per.values())


def _del(obj, path):
  obj = copy.deepcopy(obj)
  cur = obj
  for key in path[:-1]:
    cur = cur[key]
  del cur[path[-1]]
  return obj


@pytest.mark.parametrize("path", [
    ("decode",),
    ("decode", "cells"),
    ("decode", "cells", "batch_1_length_16", "batch"),
    ("decode", "cells", "batch_1_length_16", "length"),
    ("decode", "cells", "batch_32_length_32", "speedup"),
    ("decode", "cells", "batch_32_length_32", "speedup", "ar_greedy"),
    ("decode", "cells", "batch_1_length_32", "speedup", "ar_greedy", "nar_argmax", "ratio"),
])
def test_bench_missing_key_names_file_and_key(tmp_path, path):
  bench = _write(tmp_path, "bench.json", _del(_bench(), path))
  with pytest.raises(plots.PlotInputError) as e:
    plots.make_plots(bench, tmp_path / "out")
  assert str(bench) in str(e.value)
  assert f"missing key '{'.'.join(path)}'" in str(e.value)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", [
    ("tasks",),
    ("tasks", "sentcomp", "metric"),
    ("tasks", "iwslt14", "systems"),
    ("tasks", "sentcomp", "systems", "ar_greedy", "latency_ms_batch1"),
    ("tasks", "sentcomp", "systems", "nar_argmax", "test"),
    ("tasks", "iwslt14", "systems", "ar_greedy", "test", "bleu"),
])
def test_quality_missing_key_names_file_and_key(tmp_path, path):
  bench = _write(tmp_path, "bench.json", _bench())
  quality = _write(tmp_path, "quality.json", _del(_quality(), path))
  with pytest.raises(plots.PlotInputError) as e:
    plots.make_plots(bench, tmp_path / "out", quality)
  assert str(quality) in str(e.value)
  assert f"missing key '{'.'.join(path)}'" in str(e.value)
  # Validated before anything is written.
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda q: q["tasks"].clear(), "'tasks' is empty"),
    (lambda q: q["tasks"]["sentcomp"].update(systems={}), "'tasks.sentcomp.systems' is empty"),
    (lambda q: q["tasks"]["sentcomp"].update(systems=[1, 2]),
     "'tasks.sentcomp.systems' should be a JSON object, got a list"),
    (lambda q: q["tasks"]["iwslt14"]["systems"]["ar_greedy"].update(
        latency_ms_batch1=0), "should be a finite number > 0"),
    (lambda q: q["tasks"]["iwslt14"]["systems"]["ar_greedy"]["test"].update(bleu="high"),
     "'tasks.iwslt14.systems.ar_greedy.test.bleu' should be a number, got a string"),
    (lambda q: q["tasks"]["sentcomp"]["systems"]["nar_argmax"].update(
        latency_ms_batch1=True), "should be a number, got a boolean"),
    (lambda q: q["tasks"]["sentcomp"].update(metric=["rougeL"]),
     "'tasks.sentcomp.metric' should be a string, got a list"),
])
def test_quality_bad_values(tmp_path, mutate, message):
  q = _quality()
  mutate(q)
  quality = _write(tmp_path, "quality.json", q)
  with pytest.raises(plots.PlotInputError, match="quality.json") as e:
    plots.quality_points(plots.load_json(quality), str(quality))
  assert message in str(e.value)


def test_bench_section_error_is_reported(tmp_path):
  bench = _write(tmp_path, "bench.json", {"decode": {"error": "RuntimeError('boom')"}})
  with pytest.raises(plots.PlotInputError, match="decode section failed.*boom"):
    plots.make_plots(bench, tmp_path / "out")


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_unreadable_files(tmp_path, content, message):
  path = tmp_path / "bench.json"
  if content is not None:
    path.write_text(content)
  with pytest.raises(plots.PlotInputError) as e:
    plots.load_json(path)
  assert str(path) in str(e.value) and message in str(e.value)


def test_cli_bad_input_exits_non_zero(tmp_path, capsys):
  bench = _write(tmp_path, "bench.json", _bench())
  quality = _write(tmp_path, "quality.json", _del(_quality(), ("tasks", "iwslt14", "metric")))
  assert plots.main(["--bench", str(bench), "--quality", str(quality),
                     "--out_dir", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert str(quality) in err and "missing key 'tasks.iwslt14.metric'" in err
  assert plots.main(["--bench", str(tmp_path / "nope.json"),
                     "--out_dir", str(tmp_path / "out")]) == 2
  assert "nope.json: file not found" in capsys.readouterr().err


def _fake_run(path, evals, cpu_per_step=2.0):
  path.mkdir()
  (path / "train_metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "train/loss": 10.0 / s, "train/cpu_seconds": s * cpu_per_step}) + "\n"
      for s in (10, 20, 30, 40)))
  (path / "validation_curve.jsonl").write_text("".join(
      json.dumps({"step": s, "task/rougeL": v}) + "\n" for s, v in evals))
  return path


def test_training_curves_put_evaluations_on_the_cpu_clock(tmp_path):
  run = _fake_run(tmp_path / "a", [(20, 40.0), (40, 55.0)])
  assert plots.training_curve(run, "task/rougeL") == [(40.0, 40.0), (80.0, 55.0)]
  assert plots.training_curve(run, "task/rougeL", cpu_offset=100) == [(140.0, 40.0), (180.0, 55.0)]
  assert plots.training_curve(run, "train/loss")[0] == (20.0, 1.0)
  other = _fake_run(tmp_path / "b", [(10, 30.0), (30, 50.0)], cpu_per_step=3.0)
  out = plots.plot_training_curves(
      {"dev": {"metric": "task/rougeL", "runs": {"a": (run, 0.0), "b": (other, 50.0)},
               "hlines": {"lead": 45.0}}}, tmp_path / "curves.png")
  _assert_png(out)
  with pytest.raises(plots.PlotInputError, match="no row has 'task/bleu'"):
    plots.training_curve(run, "task/bleu")
  with pytest.raises(plots.PlotInputError, match="train_metrics.jsonl: cannot read"):
    plots.training_curve(tmp_path / "missing", "task/rougeL")
  (run / "validation_curve.jsonl").write_text('{"step": 20, "task/rougeL": 1}\n{oops\n')
  with pytest.raises(plots.PlotInputError, match=r"validation_curve.jsonl:2: not JSON"):
    plots.training_curve(run, "task/rougeL")
