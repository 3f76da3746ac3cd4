r"""narlm speed benchmark: NAR vs AR decoding, CRF costs, encoder vs PyTorch, input pipeline.

Usage:
  python -m narlm.bench [--quick] [--size tiny|small|base] [--out FILE.json]

Prints one JSON document (also written to --out). Every figure is *warm*:
programs are compiled ahead of time (`jax.jit(f).lower(...).compile()`, the
time is reported separately as `compile_s`; the programs of all sections are
compiled first, on a pool of one thread per CPU, before anything is timed),
each call is timed up to `jax.block_until_ready`, and the reported time is
the median of the repeats.
The machine may be shared, so contenders that are compared are measured side
by side in the same run and *interleaved* (A, B, C, A, B, C, ... with the
order rotated every repeat), and every ratio is given both as the ratio of
the medians and as the median of the per-repeat (paired) ratios, with their
min/max. The load average is recorded at the start and end of the run and of
every section.

Sections (see `SCHEMA` in narlm/bench_common.py for the keys; the code of each
section is in narlm/bench_sections.py):

1. ``decode``: latency at batch 1 and throughput at batch 32 for output
   lengths 16/32/64/128 (source length = output length, random ids, no
   padding, one model size for everything) of

   * ``nar_argmax``: NagBertModel.predict_batch_with_aux, decode_method='argmax';
   * ``nar_crf_viterbi``: the same with 'viterbi' (beam Viterbi over all positions);
   * ``nar_crf_ratio_first``: the same with 'ratio_first', alpha=0.6 (the
     sentcomp fine-tuning gin's value): floor(0.6 n) + 2 of the n positions
     are decoded (the fraction is reported per length);
   * ``nar_crf_ratio_first_truncated``: a bench-local re-implementation
     that statically slices the positions ratio-first can ever decode
     (n <= L, so floor(alpha L) + 2 is a static bound) before the output
     head and the CRF, checked to return the same tokens. NagBertModel's
     ratio-first does the same since 2026-11-23, so the two time alike
     (docs/bench_small_cpu.json); it stays as an independent cross-check;
   * ``canvas_t1``, ``canvas_t4``, ``canvas_t10`` (full preset): the canvas
     model (narlm/canvas.py, no CRF) decoding with mask-predict at T = 1, 4
     and 10 passes over a canvas as wide as the input (the refinement dial;
     each cell records the passes run);
   * ``ar_greedy``: ArSeq2SeqModel's KV-cache greedy decoding
     (`narlm.ar_models.greedy_decode`), decoder as deep as the encoder;
   * ``ar_greedy_shallow``: the same with a 1-layer decoder (Kasai et al.).

   The AR models are forced to generate all L tokens: ArSeq2SeqModel has no
   min-length / no-eos mode, so the bench calls `greedy_decode` directly with
   ``eos_id = -1``, an id argmax can never return (ids are >= 0); its loop
   therefore never sees every row done and runs exactly L steps. speedup =
   AR time / NAR time.
2. ``train``: Trainer.train_step (narlm.train.Trainer, adamw with a separate
   CRF learning rate, dropout on, donated state) with vs without the CRF at
   the same size; crf_overhead = with / without - 1.
   ``crf_forward``: crf_ops.crf_log_likelihood + its gradient with
   ``parallel=False`` (lax.scan) vs ``parallel=True`` (associative scan) at
   T = 128 and 512 for beam K in 16/32/64, at a fixed number of tokens per
   batch; ``core`` isolates the forward algorithm (given candidate emissions
   and transitions), ``full`` includes top-k over the vocabulary and the
   transition gathers. The parallel path costs O(T K^3) work and memory.
3. ``encoder_vs_torch``: forward+backward (parameter gradients, loss = mean
   of squared hidden states) of narlm's BertEncoder vs Hugging Face
   `transformers.BertModel` (no pooler) with the same config and batch, both
   with dropout off. PyTorch runs with the 'sdpa' and 'eager' attention
   implementations, each with as many intra-op threads as JAX's CPU client
   uses (the CPUs this process may run on) and with 1 thread: on a loaded
   machine PyTorch's OpenMP regions with 2 threads can be 10-100x slower
   than with 1 (a descheduled thread stalls every barrier). The target is
   judged against the fastest PyTorch variant.
4. ``pipeline``: tokens/s (non-pad encoder_input_tokens) of
   `narlm.train.get_dataset` for 'sentcomp_bert' with the model's feature
   converter vs the tokens/s the train step consumes at the same batch and
   length; ratio > 1 means the input pipeline keeps up.

``targets`` holds the pass/fail of the three targets; ``summary`` the
headline figures.

Presets (``PRESETS``): the default (``full``) measures everything above at
size small. ``--quick`` (meant to take < 90 s on 2 cores; CI's slow pass
runs it, tests/test_bench.py) is a smoke run at size tiny (vocab 8192):

* ``decode``: one cell, batch 1 x length 32 (no batch-32 throughput), and
  no ``nar_crf_ratio_first_truncated`` and no ``ar_greedy_shallow`` (absent
  from ``decode.methods``, ``decode.ar_decoder_layers``, the cell's
  ``methods`` and ``speedup``, and the ``summary``; the cell has no
  ``truncated_matches_ratio_first``; the ratio-first target has no
  ``vs_shallow_ar`` / ``with_truncation_fix``);
* ``crf_forward``: one ``full`` cell, T = 16 and K = 16 (no ``core`` cells);
* ``encoder_vs_torch``: one PyTorch variant, 'sdpa' attention with 1 thread
  (``torch_sdpa_1t``; no ``torch_matched_threads``, no
  ``narlm_over_torch_matched_threads_ratio``, and the encoder target has no
  ``vs_matched_threads``);
* 3 repeats; the decode models and the encoder get numpy parameters of
  their initializers' shapes (`numpy_params`: no XLA compile; timings depend
  on the shapes only); the train section always uses Trainer.init_state.

Every headline ratio is still there: the three NAR speedups over
``ar_greedy``, the CRF train overhead, scan vs associative scan, encoder vs
torch and pipeline vs trainer. Quick figures are for checking that the bench
runs, not for conclusions (a tiny model on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from typing import Any, Optional, Sequence

# No platform is forced: the bench measures whatever JAX finds (GPU/TPU when
# present) and records it in meta.backend / meta.device_kind; set
# JAX_PLATFORMS=cpu to measure the CPU on an accelerator host.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

# Also narlm.bench's public names (tests and scripts read bench.PRESETS,
# bench.init_params, ...): the parts live in bench_common / bench_sections.
from narlm.bench_common import (  # noqa: E402,F401
    AR_METHODS,
    JobPool,
    NAR_METHODS,
    PAD_ID,
    PRESETS,
    REQUIRED_DECODE_METHODS,
    SCHEMA,
    TORCH_ATTN_IMPLEMENTATIONS,
    TORCH_THREADS,
    VOCAB_SIZE,
    _round_floats,
    cpu_threads,
    init_params,
    interleaved,
    load_avg,
    log,
    make_nar_model,
    malloc_in_use,
    random_tokens,
    ratio,
    timed,
)
from narlm.bench_sections import (  # noqa: E402,F401
    bench_pipeline,
    decode_methods,
    measure_crf_forward,
    measure_decode,
    measure_encoder_vs_torch,
    measure_train,
    nar_predict_fn,
    nar_ratio_first_truncated_fn,
    prepare_crf_forward,
    prepare_decode,
    prepare_encoder_vs_torch,
    prepare_train,
)


# --------------------------------------------------------------------- main
# name -> (prepare(p, vocab, rng) -> {'jobs': {key: set-up job}, ...},
#          measure(p, prepared, job results, job timings) -> section result).
SECTIONS = {
    "decode": (prepare_decode, measure_decode),
    "train": (prepare_train, measure_train),
    "crf_forward": (prepare_crf_forward, measure_crf_forward),
    "encoder_vs_torch": (prepare_encoder_vs_torch, measure_encoder_vs_torch),
}
# Compile-pool order: the sections with the longest jobs first (better packing).
COMPILE_ORDER = ("train", "crf_forward", "encoder_vs_torch", "decode")

def _target(value, threshold, passed, **extra) -> dict:
  return dict(value=value, threshold=threshold, passed=bool(passed), **extra)


def evaluate_targets(res: dict, lengths: Sequence[int]) -> dict:
  targets = {}
  dec = res.get("decode", {}).get("cells", {})
  length = 64 if 64 in lengths else max(lengths)
  cell = dec.get(f"batch_1_length_{length}")
  if cell:
    sp = cell["speedup"]["ar_greedy"]["nar_crf_ratio_first"]
    extra = {}  # contenders the quick preset does not run
    if "ar_greedy_shallow" in cell["speedup"]:
      extra["vs_shallow_ar"] = cell["speedup"]["ar_greedy_shallow"]["nar_crf_ratio_first"][
          "ratio"]
    if "nar_crf_ratio_first_truncated" in cell["speedup"]["ar_greedy"]:
      extra["with_truncation_fix"] = cell["speedup"]["ar_greedy"][
          "nar_crf_ratio_first_truncated"]["ratio"]
    targets["ratio_first_10x_faster_than_ar_b1_L64"] = _target(
        sp["ratio"], 10.0, sp["ratio"] >= 10.0, measured_at_length=length,
        paired_range=[sp["paired_min_ratio"], sp["paired_max_ratio"]], **extra)
  else:
    targets["ratio_first_10x_faster_than_ar_b1_L64"] = _target(None, 10.0, False,
                                                               error="not measured")
  tr = res.get("train")
  if tr and "crf_overhead" in tr:
    targets["crf_train_overhead_le_15pct"] = _target(
        tr["crf_overhead"], 0.15, tr["crf_overhead"] <= 0.15,
        paired=tr["crf_overhead_paired"])
  else:
    targets["crf_train_overhead_le_15pct"] = _target(None, 0.15, False, error="not measured")
  enc = res.get("encoder_vs_torch")
  if enc and "narlm_over_torch_ratio" in enc:
    r = enc["narlm_over_torch_ratio"]
    extra = {}
    if "narlm_over_torch_matched_threads_ratio" in enc:
      extra["vs_matched_threads"] = enc["narlm_over_torch_matched_threads_ratio"]["ratio"]
    targets["encoder_no_slower_than_torch"] = _target(
        r["ratio"], 1.0, r["ratio"] <= 1.0, vs=enc["torch"]["variant"],
        paired_range=[r["paired_min_ratio"], r["paired_max_ratio"]], **extra)
  else:
    targets["encoder_no_slower_than_torch"] = _target(None, 1.0, False, error="not measured")
  return targets


def summarize(res: dict) -> dict:
  s: dict[str, Any] = {}
  for key, cell in res.get("decode", {}).get("cells", {}).items():
    for ar, label in (("ar_greedy", "ar_greedy"), ("ar_greedy_shallow", "ar_shallow")):
      if ar in cell["speedup"]:
        s[f"decode_{key}_speedup_vs_{label}"] = {
            m: r["ratio"] for m, r in cell["speedup"][ar].items()}
  if "train" in res and "crf_overhead" in res["train"]:
    s["train_crf_overhead"] = res["train"]["crf_overhead"]
  for key, cell in res.get("crf_forward", {}).get("cells", {}).items():
    for part in ("full", "core"):
      if part in cell:
        s[f"crf_{key}_{part}_parallel_over_scan_ratio"] = cell[part][
            "parallel_over_scan_ratio"]["ratio"]
  if "narlm_over_torch_ratio" in res.get("encoder_vs_torch", {}):
    s["encoder_narlm_over_torch_ratio"] = res["encoder_vs_torch"]["narlm_over_torch_ratio"][
        "ratio"]
  if "pipeline_over_trainer_ratio" in res.get("pipeline", {}):
    s["pipeline_over_trainer_ratio"] = res["pipeline"]["pipeline_over_trainer_ratio"]
  return s


def parse_args(argv: Optional[Sequence[str]]):
  ap = argparse.ArgumentParser(prog="python -m narlm.bench", description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="smoke run (< 90 s): tiny model, one decode cell, fewer contenders "
                       "(see the module docstring)")
  ap.add_argument("--size", choices=("tiny", "small", "base"), default=None,
                  help="model size (default: tiny with --quick, else small)")
  ap.add_argument("--out", default=None, help="also write the JSON here")
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument("--lengths", default=None, help="comma-separated decode lengths")
  ap.add_argument("--vocab-size", type=int, default=None,
                  help=f"default {VOCAB_SIZE} (BERT), 8192 with --quick")
  ap.add_argument("--sections", default="decode,train,crf_forward,encoder_vs_torch,pipeline")
  ap.add_argument("--seed", type=int, default=0)
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  t_start = time.perf_counter()
  preset_name = "quick" if args.quick else "full"
  p = dict(PRESETS[preset_name])
  if args.size:
    p["size"] = args.size
  if args.repeats:
    p["repeats"] = args.repeats
  if args.lengths:
    try:
      p["lengths"] = tuple(int(x) for x in args.lengths.split(","))
    except ValueError:
      raise ValueError(f"--lengths {args.lengths!r}: expected comma-separated integers, "
                       "e.g. --lengths=32,64") from None
  sections = [s.strip() for s in args.sections.split(",") if s.strip()]
  if args.vocab_size:
    p["vocab_size"] = args.vocab_size
  vocab = p["vocab_size"]
  rng = np.random.default_rng(args.seed)
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  res: dict[str, Any] = {"meta": {
      "argv": list(argv) if argv is not None else sys.argv[1:], "preset": preset_name,
      "size": p["size"],
      "config": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
      "vocab_size": vocab,
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "flax": flax.__version__, "optax": optax.__version__},
      "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind, "cpu_threads": cpu_threads(),
      "malloc": malloc_in_use(), "platform": platform.platform(), "load_avg_start": load_avg(),
      "start_time": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "notes": [
          "times are warm medians (block_until_ready); every section's programs are "
          "compiled before anything is timed, up to cpu_threads at a time "
          "(meta.compile_phase_s: set-up and compiles of all sections); compile_s = wall time of a program's set-up job "
          "(AOT lower+compile, inflated by the jobs sharing the CPUs), compile_cpu_s = "
          "CPU time of its Python thread (tracing/lowering; XLA compiles on threads of "
          "its own)",
          "contenders interleaved with rotating order; ratios as ratio of medians "
          "and paired per-repeat median/min/max",
          "load average [1, 5, 15 min] recorded at start/end of the run and of each section",
          f"preset {preset_name}: vocab {vocab}, size {p['size']}",
      ]}}
  log(f"preset {preset_name} on {len(jax.devices())} x {res['meta']['device_kind']} "
      f"({res['meta']['backend']}): {p}, load {res['meta']['load_avg_start']}")
  unknown = [name for name in sections if name not in SECTIONS and name != "pipeline"]
  if unknown:
    raise ValueError(f"unknown sections {unknown}; known: {[*SECTIONS, 'pipeline']}")

  def failed(name, e):
    log(f"{name} failed: {e!r}")
    res[name] = {"error": repr(e), "traceback": traceback.format_exc()}

  # Set-up of every section first (models, inputs, the jobs that compile),
  # then all the set-up jobs on one pool, then the timing, section by section.
  # (Starting the jobs while later sections were still being prepared was
  # not faster in a trial on the busy 2-core machine.)
  prepared = {}
  t_compile = time.perf_counter()
  for name in [s for s in sections if s in SECTIONS]:
    try:
      prepared[name] = SECTIONS[name][0](p, vocab, rng)
    except Exception as e:  # pylint: disable=broad-except
      failed(name, e)
  pool = JobPool()
  for name in sorted(prepared, key=COMPILE_ORDER.index):
    for key, fn in prepared[name]["jobs"].items():
      pool.submit((name, key), fn)
  log(f"compiling: {len(pool)} set-up jobs (" +
      ", ".join(f"{n}: {len(prepared[n]['jobs'])}" for n in prepared) +
      f") on {cpu_threads()} threads")
  done, timing = pool.wait()
  res["meta"]["compile_phase_s"] = time.perf_counter() - t_compile
  log(f"set-up done in {res['meta']['compile_phase_s']:.1f}s")
  for name in [s for s in sections if s in prepared]:
    prep = prepared.pop(name)  # freed once measured
    try:
      sec_done = {key: done.pop((name, key)) for key in prep["jobs"]}
      for value in sec_done.values():
        if isinstance(value, Exception):
          raise value
      res[name] = SECTIONS[name][1](p, prep, sec_done,
                                    {key: timing[(name, key)] for key in prep["jobs"]})
    except Exception as e:  # pylint: disable=broad-except
      failed(name, e)
  if "pipeline" in sections:
    try:
      step_s = res.get("train", {}).pop("_median_with_crf_s", None)
      if step_s is None:
        raise RuntimeError("the pipeline comparison needs the 'train' section")
      res["pipeline"] = bench_pipeline(p, vocab, step_s)
    except Exception as e:  # pylint: disable=broad-except
      log(f"pipeline failed: {e!r}")
      res["pipeline"] = {"error": repr(e), "traceback": traceback.format_exc()}
  if isinstance(res.get("train"), dict):
    res["train"].pop("_median_with_crf_s", None)
  res["targets"] = evaluate_targets(res, p["lengths"])
  res["summary"] = summarize(res)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    res["meta"]["versions"].update(torch=torch.__version__,
                                   transformers=transformers.__version__)
  except ImportError:  # pragma: no cover
    pass
  res["meta"]["load_avg_end"] = load_avg()
  res["meta"]["wall_time_s"] = time.perf_counter() - t_start
  res = _round_floats(res)
  text = json.dumps(res, indent=1, sort_keys=False)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
  print(text)
  log(f"done in {res['meta']['wall_time_s']:.1f}s, load {res['meta']['load_avg_end']}")
  return res


if __name__ == "__main__":
  from narlm import cli_errors  # pylint: disable=g-import-not-at-top
  # Bad arguments (e.g. an unknown section): one `error:` line, exit 2.
  if cli_errors.run(main, sys.argv[1:]):
    sys.exit(2)
  # Everything is written (the --out file is closed): skip the interpreter's
  # teardown of TensorFlow and PyTorch, ~3 s on 2 cores.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)
