"""narlm.bench --quick: the JSON has every expected key and sane ratios; the
full preset's extra contenders run at toy sizes.

Only the structure is checked, never the speed (the machine may be shared).
"""

import json
import pathlib
import math
import numbers

import pytest

from narlm import bench

# ~3 minutes of compiling on 2 busy cores (--quick, then the toy full preset):
# in CI's slow pass, not the default suite.
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
  # Quick runs the contenders of the headline speedups only (module docstring).
  methods = set(preset["decode_methods"])
  assert methods == set(bench.REQUIRED_DECODE_METHODS)
  nar = methods & set(bench.NAR_METHODS)
  ar = methods & set(bench.AR_METHODS)
  assert set(res["decode"]["methods"]) == methods
  assert set(res["decode"]["ar_decoder_layers"]) == ar
  for cell in cells.values():
    assert set(cell["methods"]) == methods
    for timing in cell["methods"].values():
      for key in ("median_ms", "min_ms", "max_ms", "repeats", "compile_s", "tokens_per_s"):
        assert key in timing
    assert set(cell["speedup"]) == ar == {"ar_greedy"}
    for per_ar in cell["speedup"].values():
      assert set(per_ar) == nar == {"nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first"}
    assert "truncated_matches_ratio_first" not in cell
  for key in cells:
    assert set(res["summary"][f"decode_{key}_speedup_vs_ar_greedy"]) == nar
  for name in ("with_crf", "without_crf"):
    assert "median_ms" in res["train"][name]
  for cell in res["crf_forward"]["cells"].values():
    assert "full" in cell or "core" in cell
    for part in ("full", "core"):
      if part in cell:
        assert {"scan", "parallel", "parallel_over_scan_ratio"} <= set(cell[part])
  enc = res["encoder_vs_torch"]
  for name in ("narlm", "torch"):
    assert "median_ms" in enc[name]
  # Quick: PyTorch with sdpa attention and 1 thread only (module docstring).
  assert set(enc["attn_implementation"]) == {"torch_sdpa_1t"}
  assert enc["torch"]["variant"] == "torch_sdpa_1t"
  for key in ("train_crf_overhead", "encoder_narlm_over_torch_ratio",
              "pipeline_over_trainer_ratio"):
    assert key in res["summary"]
  assert any(k.startswith("crf_") and k.endswith("_parallel_over_scan_ratio")
             for k in res["summary"])
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


def test_full_preset_code_paths_at_toy_sizes(tmp_path, monkeypatch):
  """The full preset's contenders that --quick leaves out (truncated
  ratio-first, mask-predict at T = 1, 4, 10, shallow AR, eager attention, matched torch threads, CRF core
  cells, compiled initializers) run, at toy sizes."""
  toy = dict(bench.PRESETS["full"], size="tiny", vocab_size=1024, lengths=(16,), batches=(1,),
             crf_lengths=(8,), crf_full_beams=(4,), crf_core_beams=(4,), crf_tokens=16,
             encoder_batch=2, encoder_length=8, crf_beam_size=4, cell_budget_s=0.5)
  monkeypatch.setitem(bench.PRESETS, "full", toy)
  res = bench.main(["--sections", "decode,crf_forward,encoder_vs_torch",
                    "--out", str(tmp_path / "toy.json")])
  for section in ("decode", "crf_forward", "encoder_vs_torch"):
    assert "error" not in res[section], res[section].get("traceback")
  cell = res["decode"]["cells"]["batch_1_length_16"]
  assert set(cell["methods"]) == set(bench.NAR_METHODS + bench.AR_METHODS)
  assert set(cell["speedup"]) == set(bench.AR_METHODS)
  for per_ar in cell["speedup"].values():
    assert set(per_ar) == set(bench.NAR_METHODS)
  # The bench-local truncated ratio-first must decode exactly like narlm's.
  assert cell["truncated_matches_ratio_first"] is True
  assert res["decode"]["ar_decoder_layers"]["ar_greedy_shallow"] == 1
  # The canvas model's mask-predict contenders ran T passes each.
  assert cell["canvas_passes"] == {"canvas_t1": 1, "canvas_t4": 4, "canvas_t10": 10}
  assert {"full", "core"} <= set(res["crf_forward"]["cells"]["T8_K4"])
  enc = res["encoder_vs_torch"]
  threads = bench.cpu_threads()
  assert set(enc["attn_implementation"]) == {f"torch_{impl}_{nt}t" for impl in ("sdpa", "eager")
                                             for nt in {1, threads}}
  assert "torch_matched_threads" in enc and "narlm_over_torch_matched_threads_ratio" in enc
  targets = res["targets"]
  assert {"vs_shallow_ar", "with_truncation_fix"} <= set(
      targets["ratio_first_10x_faster_than_ar_b1_L64"])
  assert "vs_matched_threads" in targets["encoder_no_slower_than_torch"]
  assert "decode_batch_1_length_16_speedup_vs_ar_shallow" in res["summary"]
  assert res["meta"]["compile_phase_s"] > 0


def test_full_preset_measures_every_contender():
  full = bench.PRESETS["full"]
  assert bench.decode_methods(full) == bench.NAR_METHODS + bench.AR_METHODS
  assert tuple(full["torch_attn_implementations"]) == bench.TORCH_ATTN_IMPLEMENTATIONS
  assert tuple(full["torch_threads"]) == bench.TORCH_THREADS
  assert full["compiled_init"] is True
  with pytest.raises(ValueError, match="required"):
    bench.decode_methods({"decode_methods": ("nar_argmax", "ar_greedy")})
  with pytest.raises(ValueError, match="unknown"):
    bench.decode_methods({"decode_methods": bench.REQUIRED_DECODE_METHODS + ("nar_beam",)})


def test_truncated_ratio_first_decodes_like_ratio_first():
  """The full preset's bench-local variant (not run by --quick) must return
  exactly narlm's ratio-first tokens."""
  import jax
  import numpy as np
  model = bench.make_nar_model("tiny", 2048, beam=8)
  params = bench.init_params(model)
  tokens = bench.random_tokens(np.random.default_rng(0), 2, 24, 2048)
  # Rows of different lengths: ratio-first's limit depends on n.
  tokens = tokens.at[1, 15:].set(bench.PAD_ID)
  ref = jax.jit(bench.nar_predict_fn(model, "ratio_first"))(params, tokens)
  trunc = jax.jit(bench.nar_ratio_first_truncated_fn(model))(params, tokens)
  np.testing.assert_array_equal(np.asarray(ref[0]), np.asarray(trunc[0]))
  np.testing.assert_array_equal(np.asarray(ref[1]["length"]), np.asarray(trunc[1]["length"]))


def test_numpy_params_match_the_initializer():
  """--quick's compile-free parameters have the initializer's tree, shapes and dtypes."""
  import jax
  import numpy as np
  model = bench.make_nar_model("tiny", 512, beam=4)
  ref = bench.init_params(model)
  fast = bench.init_params(model, compiled=False)
  assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(fast)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref),
                          jax.tree_util.tree_leaves(fast)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype), jax.tree_util.keystr(path)
    name = str(getattr(path[-1], "key", ""))
    if name == "scale":
      assert np.all(np.asarray(b) == 1)
    elif name == "bias":
      assert np.all(np.asarray(b) == 0)


def test_static_ratio_first_bound_covers_the_mask():
  """The bound the bench reports and its truncated variant uses (narlm's own)."""
  import jax.numpy as jnp
  from narlm import decoding
  for length in (1, 5, 16, 33, 64, 128):
    for alpha in (0.1, 0.6, 1.0, 2.0):
      keep = decoding.ratio_first_positions(length, alpha)
      mask = decoding.ratio_first_mask(jnp.ones((1, length), jnp.int32), alpha)
      assert int(mask.sum()) == keep


def test_meta_names_the_allocator(result):
  _, res = result
  assert res["meta"]["malloc"] in ("glibc", "tcmalloc", "jemalloc", "unknown")
  # the device it ran on (the tests pin JAX_PLATFORMS=cpu; the bench does not)
  assert res["meta"]["backend"] == "cpu" and res["meta"]["device_kind"]


def test_bench_does_not_force_a_platform():
  import narlm  # noqa: F401
  source = (pathlib.Path(narlm.__file__).parent / "bench.py").read_text()
  assert "JAX_PLATFORMS\", \"cpu\"" not in source


@pytest.mark.parametrize("preload", ["", "tcmalloc", "jemalloc"])
def test_malloc_in_use_sees_a_preloaded_allocator(preload):
  import glob
  import os
  import subprocess
  import sys
  env = dict(os.environ)
  env.pop("LD_PRELOAD", None)
  if preload:
    libs = glob.glob(f"/usr/lib/*/lib{preload}*.so*") + glob.glob(f"/usr/lib/lib{preload}*.so*")
    if not libs:
      pytest.skip(f"lib{preload} is not installed")
    env["LD_PRELOAD"] = sorted(libs)[0]
  out = subprocess.run(
      [sys.executable, "-c", "from narlm import bench; print(bench.malloc_in_use())"],
      env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
  assert out == (preload or "glibc")


def test_unknown_section_is_a_one_line_error():
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "narlm.bench", "--sections", "decode,nosuch"],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert "error: unknown sections ['nosuch']" in proc.stderr
  assert "Traceback" not in proc.stderr
