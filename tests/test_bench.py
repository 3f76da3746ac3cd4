"""narlm.bench --quick: the JSON has every expected key and sane ratios.

Only the structure is checked, never the speed (the machine may be shared).
"""

import json
import math
import numbers

import pytest

from narlm import bench

# ~2 minutes of compiling on 2 cores: in CI's slow pass, not the default suite.
pytestmark = pytest.mark.slow


def _numeric_leaves(obj, path=()):
  if isinstance(obj, bool):
    return
  if isinstance(obj, numbers.Number):
    yield path, obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      yield from _numeric_leaves(v, path + (str(k),))
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      yield from _numeric_leaves(v, path + (str(i),))


def _is_ratio(path):
  """Keys named *ratio* (not the 'ratio_first' decode method) or under 'speedup'."""
  return any("ratio" in part.replace("ratio_first", "") or "speedup" in part
             for part in path)


@pytest.fixture(scope="module")
def result(tmp_path_factory, data_dir):  # data_dir: the pipeline section needs sentcomp
  del data_dir
  out = tmp_path_factory.mktemp("bench") / "quick.json"
  res = bench.main(["--quick", "--out", str(out)])
  return res, json.loads(out.read_text())


def test_written_json_equals_returned(result):
  res, written = result
  assert written == json.loads(json.dumps(res))


def test_every_expected_key(result):
  _, res = result
  for section, keys in bench.SCHEMA.items():
    assert section in res, f"missing section {section!r}"
    assert "error" not in res[section], f"section {section} failed: {res[section].get('error')}"
    for key in keys:
      assert key in res[section], f"missing {section}.{key}"
  cells = res["decode"]["cells"]
  preset = bench.PRESETS["quick"]
  assert set(cells) == {f"batch_{b}_length_{n}" for b in preset["batches"]
                        for n in preset["lengths"]}
  for cell in cells.values():
    assert set(cell["methods"]) == set(bench.NAR_METHODS + bench.AR_METHODS)
    for timing in cell["methods"].values():
      for key in ("median_ms", "min_ms", "max_ms", "repeats", "compile_s", "tokens_per_s"):
        assert key in timing
    assert set(cell["speedup"]) == set(bench.AR_METHODS)
    for per_ar in cell["speedup"].values():
      assert set(per_ar) == set(bench.NAR_METHODS)
    # The bench-local truncated ratio-first must decode exactly like narlm's.
    assert cell["truncated_matches_ratio_first"] is True
  for name in ("with_crf", "without_crf"):
    assert "median_ms" in res["train"][name]
  for cell in res["crf_forward"]["cells"].values():
    assert "full" in cell or "core" in cell
    for part in ("full", "core"):
      if part in cell:
        assert {"scan", "parallel", "parallel_over_scan_ratio"} <= set(cell[part])
  for name in ("narlm", "torch"):
    assert "median_ms" in res["encoder_vs_torch"][name]
  for target in res["targets"].values():
    assert {"value", "threshold", "passed"} <= set(target)
    assert isinstance(target["passed"], bool)
  assert res["meta"]["load_avg_start"] and res["meta"]["load_avg_end"]


def test_ratios_finite_and_positive(result):
  _, res = result
  ratios = [(p, v) for p, v in _numeric_leaves(res) if _is_ratio(p)]
  assert len(ratios) >= 20
  for path, value in ratios:
    assert math.isfinite(value) and value > 0, f"{'.'.join(path)} = {value}"
  for target in res["targets"].values():
    assert target["value"] is not None and math.isfinite(target["value"])


def test_static_ratio_first_bound_covers_the_mask():
  import jax.numpy as jnp
  from narlm import decoding
  for length in (1, 5, 16, 33, 64, 128):
    for alpha in (0.1, 0.6, 1.0, 2.0):
      keep = bench.ratio_first_static_length(alpha, length)
      mask = decoding.ratio_first_mask(jnp.ones((1, length), jnp.int32), alpha)
      assert int(mask.sum()) == keep
