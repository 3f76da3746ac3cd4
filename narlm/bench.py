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

Sections (see `SCHEMA` below for the keys):

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
import copy
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence

# No platform is forced: the bench measures whatever JAX finds (GPU/TPU when
# present) and records it in meta.backend / meta.device_kind; set
# JAX_PLATFORMS=cpu to measure the CPU on an accelerator host.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

PAD_ID = 0
EOS_ID = 102  # BERT WordPiece [SEP], as the sentcomp_bert task
VOCAB_SIZE = 30522
RATIO_FIRST_ALPHA = 0.6

# Preset run shapes. `--quick` must finish in < 90 s on 2 shared CPU cores.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    # vocab 8192 (not BERT's 30522) keeps the tiny model's work small.
    "quick": dict(size="tiny", vocab_size=8192, lengths=(32,), batches=(1,), repeats=3,
                  train_batch=8, train_length=32, crf_lengths=(16,), crf_full_beams=(16,),
                  crf_core_beams=(), crf_tokens=128, encoder_batch=8, encoder_length=32,
                  pipeline_batches=10, crf_beam_size=16, cell_budget_s=3.0,
                  decode_methods=("nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first",
                                  "ar_greedy"),
                  torch_attn_implementations=("sdpa",), torch_threads=(1,),
                  compiled_init=False),
    "full": dict(size="small", vocab_size=VOCAB_SIZE, lengths=(16, 32, 64, 128),
                 batches=(1, 32), repeats=5, train_batch=16, train_length=64,
                 crf_lengths=(128, 512), crf_full_beams=(64,), crf_core_beams=(16, 32, 64),
                 crf_tokens=512, encoder_batch=16, encoder_length=64, pipeline_batches=30,
                 crf_beam_size=64, cell_budget_s=30.0,
                 decode_methods=("nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first",
                                 "nar_crf_ratio_first_truncated", "ar_greedy",
                                 "ar_greedy_shallow"),
                 torch_attn_implementations=("sdpa", "eager"), torch_threads=(1, None),
                 compiled_init=True),
}

# Keys every result document has, in both presets (tests/test_bench.py checks
# them; the decode methods and torch variants depend on the preset).
SCHEMA = {
    "meta": ["argv", "preset", "size", "config", "versions", "devices", "cpu_threads",
             "load_avg_start", "load_avg_end", "wall_time_s", "notes"],
    "decode": ["alpha", "ar_forced_full_length", "methods", "cells"],
    "train": ["batch", "length", "with_crf", "without_crf", "crf_overhead",
              "with_over_without_ratio", "load_avg"],
    "crf_forward": ["tokens_per_batch", "vocab_size", "cells", "load_avg"],
    "encoder_vs_torch": ["batch", "length", "narlm", "torch", "narlm_over_torch_ratio",
                         "torch_threads", "attn_implementation", "load_avg"],
    "pipeline": ["task", "batch", "length", "pipeline_tokens_per_s", "trainer_tokens_per_s",
                 "pipeline_over_trainer_ratio", "load_avg"],
    "targets": ["ratio_first_10x_faster_than_ar_b1_L64", "crf_train_overhead_le_15pct",
                "encoder_no_slower_than_torch"],
    "summary": [],
}
NAR_METHODS = ("nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first",
               "nar_crf_ratio_first_truncated")
AR_METHODS = ("ar_greedy", "ar_greedy_shallow")
# Measured in every preset: the contenders of the headline speedups.
REQUIRED_DECODE_METHODS = ("nar_argmax", "nar_crf_viterbi", "nar_crf_ratio_first", "ar_greedy")
TORCH_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
TORCH_THREADS = (1, None)  # None: as many as JAX uses


# ---------------------------------------------------------------- utilities
def log(msg: str) -> None:
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:  # pragma: no cover
    return [float("nan")] * 3


def malloc_in_use() -> str:
  """Which allocator the process uses: 'tcmalloc', 'jemalloc' or 'glibc'.

  It matters on CPU: XLA allocates its temporaries per call and glibc's
  malloc hands large ones back to the kernel, so every step page-faults them
  in again (~80k minor faults per small-encoder train step); a preloaded
  tcmalloc keeps them (see BENCHMARKS.md).
  """
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:  # not Linux
    return "unknown"
  for name in ("tcmalloc", "jemalloc"):
    if f"lib{name}" in maps:
      return name
  return "glibc"


def cpu_threads() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover
    return os.cpu_count() or 1


class IdVocabulary:
  """Stand-in vocabulary with BERT's ids (pad 0, eos [SEP] = 102): timing
  needs only the ids, not the WordPiece file."""
  pad_id = PAD_ID
  eos_id = EOS_ID
  unk_id = 100

  def __init__(self, size: int):
    self.vocab_size = size

  def encode(self, text):
    return [int(t) for t in text.split()]

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def aot(fn: Callable, *args, static_argnums=(), **jit_kwargs):
  """(compiled, compile seconds) of jax.jit(fn) for these arguments."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, static_argnums=static_argnums, **jit_kwargs).lower(*args).compile()
  return compiled, time.perf_counter() - t0


class JobPool:
  """Runs independent set-up jobs (tracing + XLA compilation, which releases
  the GIL) on a thread pool of one worker per CPU, in the order submitted.

  `wait()` returns (results, timings) with timings[key] = {'wall_s': wall
  time of the job (inflated when jobs share the CPUs), 'cpu_s': CPU time of
  the job's Python thread (tracing and lowering; XLA compiles on threads of
  its own, not counted)}; a job's exception is its result.
  """

  def __init__(self, workers: Optional[int] = None):
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers or cpu_threads())
    self._futures: dict[Any, Any] = {}

  @staticmethod
  def _run(fn):
    w0, c0 = time.perf_counter(), time.thread_time()
    try:
      out = fn()
    except Exception as e:  # pylint: disable=broad-except
      out = e
    return out, {"wall_s": time.perf_counter() - w0, "cpu_s": time.thread_time() - c0}

  def submit(self, key, fn: Callable[[], Any]) -> None:
    self._futures[key] = self._pool.submit(self._run, fn)

  def __len__(self) -> int:
    return len(self._futures)

  def wait(self) -> tuple[dict[Any, Any], dict[Any, dict]]:
    done = {key: f.result() for key, f in self._futures.items()}
    self._pool.shutdown()
    return {k: r[0] for k, r in done.items()}, {k: r[1] for k, r in done.items()}


def compile_job(fn: Callable, *args, **jit_kwargs) -> Callable[[], Any]:
  return lambda: jax.jit(fn, **jit_kwargs).lower(*args).compile()


def compile_info(timing: Mapping[str, float]) -> dict[str, float]:
  return {"compile_s": round(timing["wall_s"], 3), "compile_cpu_s": round(timing["cpu_s"], 3)}


def timed(fn: Callable[[], Any]) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def interleaved(contenders: Mapping[str, Callable[[], Any]], repeats: int,
                budget_s: Optional[float] = None, min_repeats: int = 3,
                warm: Optional[Mapping[str, float]] = None) -> dict[str, list[float]]:
  """Times every contender once per repeat, rotating the order each repeat.

  One untimed warm-up call each first (unless `warm` gives the times of
  warm-up calls the caller already made). With `budget_s`, the number of
  repeats is cut (not below `min_repeats`) so the cell fits the budget.
  """
  names = list(contenders)
  if warm is None:
    warm = {name: timed(contenders[name]) for name in names}
  if budget_s is not None:
    per_round = max(sum(warm.values()), 1e-9)
    repeats = max(min_repeats, min(repeats, int(budget_s / per_round)))
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(repeats):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      times[name].append(timed(contenders[name]))
  return times


def stats(times: Sequence[float], items: Optional[float] = None) -> dict[str, Any]:
  """Median/min/max in ms (+ items per second at the median)."""
  med = statistics.median(times)
  out = {"median_ms": round(med * 1e3, 4), "min_ms": round(min(times) * 1e3, 4),
         "max_ms": round(max(times) * 1e3, 4), "repeats": len(times)}
  if items is not None:
    out["items_per_s"] = round(items / med, 2)
  return out


def ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
  """num/den as ratio of medians, and median/min/max of the paired ratios."""
  paired = [a / b for a, b in zip(num, den)]
  return {"ratio": statistics.median(num) / statistics.median(den),
          "paired_median_ratio": statistics.median(paired),
          "paired_min_ratio": min(paired), "paired_max_ratio": max(paired)}


def _round_floats(obj, digits=4):
  if isinstance(obj, float):
    if not math.isfinite(obj):
      return None
    return float(f"{obj:.{digits}g}") if abs(obj) < 1e4 else round(obj, 1)
  if isinstance(obj, dict):
    return {k: _round_floats(v, digits) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_round_floats(v, digits) for v in obj]
  return obj


def random_tokens(rng: np.random.Generator, batch: int, length: int, vocab: int) -> jax.Array:
  """Random source ids without pad/special tokens (ids >= 1000 are words in BERT)."""
  return jnp.asarray(rng.integers(1000, vocab, size=(batch, length)).astype(np.int32))


def synthetic_train_batch(rng: np.random.Generator, batch: int, length: int,
                          vocab: int) -> dict[str, np.ndarray]:
  """DESIGN.md layout: source of n in [L/2, L] tokens, target of ~0.6 n + eos eos."""
  src = np.zeros((batch, length), np.int32)
  tgt = np.zeros((batch, length), np.int32)
  weights = np.zeros((batch, length), np.float32)
  for i in range(batch):
    n = int(rng.integers(length // 2, length + 1))
    m = min(max(1, int(0.6 * n)), length - 2)
    src[i, :n] = rng.integers(1000, vocab, size=n)
    tgt[i, :m] = rng.integers(1000, vocab, size=m)
    tgt[i, m:m + 2] = EOS_ID
    weights[i, :m + 2] = 1.0
  return {"encoder_input_tokens": src, "decoder_target_tokens": tgt,
          "decoder_loss_weights": weights}


# ------------------------------------------------------------------- models
def bert_cfg(size: str, vocab: int, dropout: float = 0.1):
  from narlm.modules import encoder  # pylint: disable=g-import-not-at-top
  return encoder.bert_config(size, vocab, hidden_dropout=dropout, attention_dropout=dropout)


def make_nar_model(size: str, vocab: int, *, use_crf: bool = True, beam: int = 64,
                   rank: int = 32, dropout: float = 0.1, optimizer=None):
  from narlm import models  # pylint: disable=g-import-not-at-top
  from narlm.modules.network import NagBertNetwork  # pylint: disable=g-import-not-at-top
  net = NagBertNetwork(bert_cfg(size, vocab, dropout), use_crf=use_crf, crf_rank=rank,
                       crf_beam_size=beam)
  v = IdVocabulary(vocab)
  return models.NagBertModel(net, v, v, optimizer, decode_method="viterbi",
                             ratio_first_alpha=RATIO_FIRST_ALPHA)


def make_ar_model(size: str, vocab: int, num_decoder_layers: Optional[int]):
  from narlm import ar_models  # pylint: disable=g-import-not-at-top
  net = ar_models.ArSeq2SeqNetwork(bert_cfg(size, vocab), num_decoder_layers=num_decoder_layers)
  v = IdVocabulary(vocab)
  return ar_models.ArSeq2SeqModel(net, v, v, None)


def _model_init(model):
  shapes = {"encoder_input_tokens": (1, 16)}
  return lambda r: model.get_initial_variables(r, shapes)["params"]


def init_params(model, seed: int = 0, compiled: bool = True):
  """Random parameters (the values are irrelevant for timing).

  compiled=True runs the model's initializer under jit (the 'unsafe_rbg' key
  only makes that program cheaper to compile); compiled=False (the quick
  preset) saves that XLA compile with `numpy_params` of its shapes.
  """
  key = jax.random.key(seed, impl="unsafe_rbg")
  if compiled:
    return jax.jit(_model_init(model))(key)
  return numpy_params(param_shapes(model, seed), seed)


def param_shapes(model, seed: int = 0):
  """ShapeDtypeStructs of `init_params(model)` (traced, not compiled)."""
  return jax.eval_shape(_model_init(model), jax.random.key(seed, impl="unsafe_rbg"))


def numpy_params(abstract, seed: int = 0):
  """Arrays of `abstract`'s shapes and dtypes made with numpy (no XLA
  program): LayerNorm scales 1, biases 0, every other parameter N(0, 0.02)."""
  rng = np.random.default_rng(seed)

  def leaf(path, spec):
    name = str(getattr(path[-1], "key", path[-1])) if path else ""
    if name == "scale":
      value = np.ones(spec.shape)
    elif name == "bias":
      value = np.zeros(spec.shape)
    else:
      value = rng.standard_normal(spec.shape) * 0.02
    return jnp.asarray(value.astype(spec.dtype))

  return jax.tree_util.tree_map_with_path(leaf, abstract)


# ------------------------------------------------------------------ decode
def nar_predict_fn(model, method: str):
  def fn(params, tokens):
    return model.predict_batch_with_aux(params, {"encoder_input_tokens": tokens},
                                        decode_method=method, alpha=RATIO_FIRST_ALPHA)
  return fn


def nar_ratio_first_truncated_fn(model, alpha: float = RATIO_FIRST_ALPHA):
  """Ratio-first that never computes the positions it cannot decode.

  Bench-local cross-check of NagBertModel's ratio-first truncation (see the
  module docstring): identical outputs to predict_batch_with_aux(decode_method='ratio_first').
  """
  from narlm import decoding  # pylint: disable=g-import-not-at-top

  def apply_fn(net, tokens, t_keep):
    hidden = net.bert.encode(tokens)
    logits = net.bert.logits(hidden[:, :t_keep])
    mask = decoding.ratio_first_mask(tokens, alpha, length=t_keep, pad_id=model.pad_id)
    out, scores = net.crf.decode(logits, mask)
    return out, scores, mask

  def fn(params, tokens):
    length = tokens.shape[1]
    t_keep = decoding.ratio_first_positions(length, alpha)
    out, scores, mask = model.module.apply({"params": params}, tokens, t_keep,
                                           method=apply_fn)
    out, lengths = decoding.cut_at_first_eos(out, model.eos_id, model.pad_id, mask)
    out = jnp.pad(out, ((0, 0), (0, length - t_keep)), constant_values=model.pad_id)
    return out, {"scores": scores, "length": lengths}
  return fn


def ar_forced_fn(model):
  """KV-cache greedy decoding forced to L steps (eos_id = -1 never matches)."""
  from narlm import ar_models  # pylint: disable=g-import-not-at-top
  from narlm import decoding  # pylint: disable=g-import-not-at-top

  def fn(params, tokens):
    out, scores = ar_models.greedy_decode(model.module, params, tokens, jnp.int32(-1),
                                          max_length=tokens.shape[1], pad_id=model.pad_id,
                                          bos_id=model.bos_id)
    out, lengths = decoding.cut_at_first_eos(out, -1, model.pad_id)
    return out, {"scores": scores, "length": lengths}
  return fn


DECODE_METHOD_DOCS = {
    "nar_argmax": "predict_batch_with_aux(decode_method='argmax')",
    "nar_crf_viterbi": "predict_batch_with_aux(decode_method='viterbi')",
    "nar_crf_ratio_first": f"predict_batch_with_aux(decode_method='ratio_first', "
                           f"alpha={RATIO_FIRST_ALPHA})",
    "nar_crf_ratio_first_truncated": (
        "bench-local: ratio-first with the head and CRF run only on the first "
        "floor(alpha*L)+2 positions (a cross-check of the model's own truncation)"),
    "ar_greedy": "greedy_decode, KV cache, decoder layers = encoder layers",
    "ar_greedy_shallow": "greedy_decode, KV cache, 1 decoder layer",
}


def decode_methods(p: Mapping[str, Any]) -> tuple[str, ...]:
  """The preset's decode contenders in NAR_METHODS + AR_METHODS order."""
  wanted = set(p.get("decode_methods", NAR_METHODS + AR_METHODS))
  unknown = wanted - set(NAR_METHODS + AR_METHODS)
  if unknown:
    raise ValueError(f"unknown decode methods {sorted(unknown)}")
  missing = set(REQUIRED_DECODE_METHODS) - wanted
  if missing:
    raise ValueError(f"decode methods {sorted(missing)} are required (headline speedups)")
  return tuple(m for m in NAR_METHODS + AR_METHODS if m in wanted)


# The model each decode method runs.
DECODE_MODEL = {"nar_argmax": "nar", "nar_crf_viterbi": "nar", "nar_crf_ratio_first": "nar",
                "nar_crf_ratio_first_truncated": "nar", "ar_greedy": "ar",
                "ar_greedy_shallow": "ar1"}


def decode_fn(name: str, models: Mapping[str, Any]) -> Callable:
  """fn(params, tokens) of a decode method."""
  model = models[DECODE_MODEL[name]]
  if name in AR_METHODS:
    return ar_forced_fn(model)
  if name == "nar_crf_ratio_first_truncated":
    return nar_ratio_first_truncated_fn(model)
  return nar_predict_fn(model, {"nar_argmax": "argmax", "nar_crf_viterbi": "viterbi",
                                "nar_crf_ratio_first": "ratio_first"}[name])


def prepare_decode(p: Mapping[str, Any], vocab: int, rng: np.random.Generator) -> dict:
  size = p["size"]
  methods_run = decode_methods(p)
  log(f"decode: building models ({size}, vocab {vocab}, beam {p['crf_beam_size']}): "
      f"{', '.join(methods_run)}")
  models = {"nar": make_nar_model(size, vocab, beam=p["crf_beam_size"]),
            "ar": make_ar_model(size, vocab, None)}
  if "ar_greedy_shallow" in methods_run:
    models["ar1"] = make_ar_model(size, vocab, 1)
  # The programs are compiled for the parameters' shapes, so that they do not
  # wait for the (compiled) initializers, which are jobs of their own.
  abstract = {name: param_shapes(model) for name, model in models.items()}
  jobs: dict[Any, Callable[[], Any]] = {}
  params = {}
  for name, model in models.items():
    if p.get("compiled_init", True):
      jobs[("init", name)] = functools.partial(init_params, model)
    else:
      params[name] = numpy_params(abstract[name])
  fns = {name: decode_fn(name, models) for name in methods_run}
  shapes = [(b, n) for b in p["batches"] for n in p["lengths"]]
  inputs = {shape: random_tokens(rng, shape[0], shape[1], vocab) for shape in shapes}
  for shape in shapes:
    for name, fn in fns.items():
      jobs[(shape, name)] = compile_job(fn, abstract[DECODE_MODEL[name]], inputs[shape])
  return {"jobs": jobs, "models": models, "params": params, "fns": fns, "shapes": shapes,
          "inputs": inputs}


def measure_decode(p: Mapping[str, Any], prep: Mapping[str, Any], done: Mapping[Any, Any],
                   timing: Mapping[Any, dict]) -> dict:
  from narlm import decoding  # pylint: disable=g-import-not-at-top
  methods_run = decode_methods(p)
  nar_methods = [m for m in methods_run if m in NAR_METHODS]
  ar_methods = [m for m in methods_run if m in AR_METHODS]
  models, fns = prep["models"], prep["fns"]
  params = dict(prep["params"])
  params.update({key[1]: value for key, value in done.items() if key[0] == "init"})
  cells = {}
  for batch, length in prep["shapes"]:
    key = f"batch_{batch}_length_{length}"
    la0 = load_avg()
    tokens = prep["inputs"][(batch, length)]
    compiled = {name: done[((batch, length), name)] for name in fns}
    compile_s = {name: timing[((batch, length), name)] for name in fns}
    contenders = {name: functools.partial(compiled[name], params[DECODE_MODEL[name]], tokens)
                  for name in fns}
    outs, warm = {}, {}
    for name in fns:  # warm-up calls, whose outputs are checked below
      t0 = time.perf_counter()
      outs[name] = jax.block_until_ready(contenders[name]())
      warm[name] = time.perf_counter() - t0
    times = interleaved(contenders, p["repeats"], budget_s=p["cell_budget_s"], warm=warm)
    items = batch * length
    methods = {}
    for name in fns:
      methods[name] = dict(stats(times[name], items), **compile_info(compile_s[name]))
      methods[name]["tokens_per_s"] = methods[name].pop("items_per_s")
    speedup = {}
    positions = decoding.ratio_first_positions(length, RATIO_FIRST_ALPHA)
    for a in ar_methods:
      speedup[a] = {m: ratio(times[a], times[m]) for m in nar_methods}
    cells[key] = {
        "batch": batch, "length": length, "methods": methods, "speedup": speedup,
        "ratio_first_positions_decoded": positions,
        "ratio_first_fraction_decoded": positions / length,
    }
    if "nar_crf_ratio_first_truncated" in outs:
      ref, trunc = outs["nar_crf_ratio_first"], outs["nar_crf_ratio_first_truncated"]
      cells[key]["truncated_matches_ratio_first"] = bool(
          np.array_equal(np.asarray(ref[0]), np.asarray(trunc[0])))
    cells[key].update({
        "ar_output_nonpad_fraction": float(np.mean(np.asarray(outs["ar_greedy"][0]) != 0)),
        "load_avg_start": la0, "load_avg_end": load_avg(),
    })
    s = speedup["ar_greedy"]
    log(f"decode {key}: " + ", ".join(
        f"{n}={methods[n]['median_ms']:.1f}ms" for n in fns) +
        f" | ar/ratio_first={s['nar_crf_ratio_first']['ratio']:.2f}x")
  return {
      "alpha": RATIO_FIRST_ALPHA,
      "beam_size": p["crf_beam_size"], "crf_rank": 32,
      "ar_forced_full_length": (
          "ArSeq2SeqModel has no min-length/no-eos mode: the bench calls "
          "narlm.ar_models.greedy_decode directly with eos_id=-1, which argmax never "
          "returns, so the while_loop runs exactly L steps for every row"),
      "ar_decoder_layers": {name: models[DECODE_MODEL[name]].module.decoder_layers
                            for name in ar_methods},
      "methods": {name: DECODE_METHOD_DOCS[name] for name in methods_run},
      "speedup_definition": "AR time / NAR time (ratio of medians; paired_* per repeat)",
      "cells": cells,
  }


# ------------------------------------------------------------------- train
def make_trainer(size: str, vocab: int, use_crf: bool, beam: int):
  from narlm import optimizers  # pylint: disable=g-import-not-at-top
  from narlm import train as train_lib  # pylint: disable=g-import-not-at-top
  # narlm/gin/runs/train.gin's default: adamw, one learning rate, clipping 1.0.
  opt = optimizers.create_optimizer("adamw", 5e-5)
  model = make_nar_model(size, vocab, use_crf=use_crf, beam=beam, optimizer=opt)
  return train_lib.Trainer(model)


def prepare_train(p: Mapping[str, Any], vocab: int, rng: np.random.Generator) -> dict:
  batch, length = p["train_batch"], p["train_length"]
  np_batch = synthetic_train_batch(rng, batch, length, vocab)

  def setup(use_crf):
    trainer = make_trainer(p["size"], vocab, use_crf, p["crf_beam_size"])
    state = trainer.init_state((batch, length))
    gbatch = trainer.global_batch(np_batch)
    step = trainer.compiled_train_step()
    with trainer.mesh:
      compiled = step.lower(state, gbatch).compile()
    return {"trainer": trainer, "compiled": compiled, "state": state, "batch": gbatch}

  return {"jobs": {"with_crf": functools.partial(setup, True),
                   "without_crf": functools.partial(setup, False)}}


def measure_train(p: Mapping[str, Any], prep: Mapping[str, Any], runs: Mapping[str, Any],
                  timing: Mapping[str, dict]) -> dict:
  del prep
  batch, length = p["train_batch"], p["train_length"]
  la0 = load_avg()
  log(f"train: Trainer.train_step with/without CRF, batch {batch} x length {length}")

  def make_call(run):
    def call():
      with run["trainer"].mesh:
        run["state"], metrics = run["compiled"](run["state"], run["batch"])
      return metrics["loss"]
    return call

  times = interleaved({name: make_call(runs[name]) for name in ("with_crf", "without_crf")},
                      p["repeats"], budget_s=p["cell_budget_s"])
  out = {"batch": batch, "length": length,
         "optimizer": "optimizers.create_optimizer('adamw', 5e-5) (clip 1.0)", "dropout": 0.1,
         "beam_size": p["crf_beam_size"], "crf_rank": 32}
  for name in ("with_crf", "without_crf"):
    out[name] = dict(stats(times[name], batch * length), **compile_info(timing[name]))
    out[name]["compile_includes"] = "Trainer.init_state + train step lower/compile"
    out[name]["positions_per_s"] = out[name].pop("items_per_s")
    out[name]["final_loss"] = float(jax.device_get(make_call(runs[name])()))
  r = ratio(times["with_crf"], times["without_crf"])
  out["with_over_without_ratio"] = r
  out["crf_overhead"] = r["ratio"] - 1.0
  out["crf_overhead_paired"] = r["paired_median_ratio"] - 1.0
  out["load_avg"] = [la0, load_avg()]
  log(f"train: with={out['with_crf']['median_ms']:.1f}ms "
      f"without={out['without_crf']['median_ms']:.1f}ms overhead={out['crf_overhead']:+.1%}")
  out["_median_with_crf_s"] = statistics.median(times["with_crf"])
  return out


# ------------------------------------------------------------- crf forward
def prepare_crf_forward(p: Mapping[str, Any], vocab: int, rng: np.random.Generator) -> dict:
  from narlm import crf_ops  # pylint: disable=g-import-not-at-top
  tokens = p["crf_tokens"]
  rank = 32
  core_fn = getattr(crf_ops, "_log_partition_core", None)
  cells, jobs = [], {}
  for t_len in p["crf_lengths"]:
    batch = max(1, tokens // t_len)
    key_rng = np.random.default_rng(int(rng.integers(1 << 30)))
    em = jnp.asarray(key_rng.standard_normal((batch, t_len, vocab), np.float32))
    tgt = jnp.asarray(key_rng.integers(1000, vocab, size=(batch, t_len)).astype(np.int32))
    mask = jnp.asarray(np.arange(t_len)[None, :] < key_rng.integers(
        t_len // 2, t_len + 1, size=(batch, 1)))
    e1 = jnp.asarray(key_rng.standard_normal((vocab, rank), np.float32) / rank**0.5)
    e2 = jnp.asarray(key_rng.standard_normal((vocab, rank), np.float32) / rank**0.5)
    for k in sorted(set(p["crf_full_beams"]) | set(p["crf_core_beams"])):
      cell = {"T": t_len, "K": k, "batch": batch, "args": {}}
      if k in p["crf_full_beams"]:
        def full(parallel, em, e1, e2, k=k, tgt=tgt, mask=mask):
          def loss(em, e1, e2):
            return crf_ops.crf_log_likelihood(em, tgt, mask, e1, e2, k,
                                              parallel=parallel).sum()
          return jax.value_and_grad(loss, argnums=(0, 1, 2))(em, e1, e2)

        cell["args"]["full"] = (em, e1, e2)
        for name, par in (("scan", False), ("parallel", True)):
          jobs[(t_len, k, "full", name)] = compile_job(functools.partial(full, par), em, e1, e2)
      if core_fn is not None and k in p["crf_core_beams"]:
        cand_tokens, cand_em = crf_ops.beam_candidates(em, k, tgt)
        trans = crf_ops.beam_transitions(cand_tokens, e1, e2)
        cand_em, trans = jax.block_until_ready((cand_em, trans))

        def core(parallel, cand_em, trans, mask=mask):
          return jax.value_and_grad(
              lambda c, tr: core_fn(c, mask, tr, parallel).sum(), argnums=(0, 1))(cand_em, trans)

        cell["args"]["core"] = (cand_em, trans)
        for name, par in (("scan", False), ("parallel", True)):
          jobs[(t_len, k, "core", name)] = compile_job(functools.partial(core, par), cand_em,
                                                       trans)
      cells.append(cell)
  return {"jobs": jobs, "cells": cells, "tokens": tokens, "vocab": vocab, "rank": rank}


def measure_crf_forward(p: Mapping[str, Any], prep: Mapping[str, Any], done: Mapping[Any, Any],
                        timing: Mapping[Any, dict]) -> dict:
  la0 = load_avg()
  cells = {}
  for spec in prep["cells"]:
    t_len, k, batch = spec["T"], spec["K"], spec["batch"]
    log(f"crf_forward: T={t_len} K={k} batch={batch}")
    cell = {"T": t_len, "K": k, "batch": batch,
            "parallel_extra_bytes_estimate": batch * (t_len - 1) // 2 * k**3 * 4}
    for part, args in spec["args"].items():
      compiled = {n: done[(t_len, k, part, n)] for n in ("scan", "parallel")}
      compile_s = {n: timing[(t_len, k, part, n)] for n in compiled}
      if part == "full":
        res = {n: compiled[n](*args) for n in compiled}
        cell["full_values_agree"] = bool(np.allclose(np.asarray(res["scan"][0]),
                                                     np.asarray(res["parallel"][0]),
                                                     rtol=1e-4, atol=1e-2))
      times = interleaved({n: functools.partial(compiled[n], *args) for n in compiled},
                          p["repeats"], budget_s=p["cell_budget_s"] / 3)
      cell[part] = {n: dict(stats(times[n]), **compile_info(compile_s[n])) for n in compiled}
      cell[part]["parallel_over_scan_ratio"] = ratio(times["parallel"], times["scan"])
    log(f"crf_forward T={t_len} K={k}: " + ", ".join(
        f"{part} scan={cell[part]['scan']['median_ms']:.1f}ms "
        f"parallel={cell[part]['parallel']['median_ms']:.1f}ms"
        for part in ("full", "core") if part in cell))
    cells[f"T{t_len}_K{k}"] = cell
  return {"tokens_per_batch": prep["tokens"], "vocab_size": prep["vocab"],
          "crf_rank": prep["rank"],
          "what": "crf_log_likelihood + grad wrt emissions and E1/E2 (full); "
                  "forward algorithm + grad given beam emissions/transitions (core)",
          "model_beam_size": p["crf_beam_size"], "cells": cells,
          "load_avg": [la0, load_avg()]}


# --------------------------------------------------------- encoder vs torch
def prepare_encoder_vs_torch(p: Mapping[str, Any], vocab: int,
                             rng: np.random.Generator) -> dict:
  from narlm.modules.encoder import BertEncoder  # pylint: disable=g-import-not-at-top
  batch, length = p["encoder_batch"], p["encoder_length"]
  cfg = bert_cfg(p["size"], vocab, dropout=0.0)
  ids_np = rng.integers(1000, vocab, size=(batch, length)).astype(np.int32)
  enc = BertEncoder(cfg)
  ids = jnp.asarray(ids_np)

  def init(r):
    return enc.init(r, ids)["params"]

  def loss(params, ids):
    hidden = enc.apply({"params": params}, ids, deterministic=True)
    return jnp.mean(jnp.square(hidden.astype(jnp.float32)))

  def narlm_job():
    if p.get("compiled_init", True):
      params = jax.jit(init)(jax.random.PRNGKey(0))
    else:
      params = numpy_params(jax.eval_shape(init, jax.random.PRNGKey(0)))
    step, compile_s = aot(jax.value_and_grad(loss), params, ids)
    return params, step, compile_s

  def torch_job():
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    hf_cfg = transformers.BertConfig(
        vocab_size=vocab, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    tmodels = {}
    for impl in p.get("torch_attn_implementations", TORCH_ATTN_IMPLEMENTATIONS):
      torch.manual_seed(0)
      impl_cfg = copy.deepcopy(hf_cfg)  # models keep (and dispatch on) their config
      impl_cfg._attn_implementation = impl  # pylint: disable=protected-access
      tm = transformers.BertModel(impl_cfg, add_pooling_layer=False)
      tm.eval()  # dropout off (it is also 0.0); autograd stays on
      tmodels[f"torch_{impl}"] = tm
    return tmodels

  return {"jobs": {"narlm": narlm_job, "torch": torch_job}, "ids": ids, "ids_np": ids_np}


def measure_encoder_vs_torch(p: Mapping[str, Any], prep: Mapping[str, Any],
                             done: Mapping[str, Any], timing: Mapping[str, dict]) -> dict:
  del timing
  import torch  # pylint: disable=g-import-not-at-top
  la0 = load_avg()
  batch, length = p["encoder_batch"], p["encoder_length"]
  log(f"encoder_vs_torch: {p['size']} batch {batch} x length {length}")
  params, jax_step, jax_compile = done["narlm"]
  tmodels = done["torch"]
  threads = cpu_threads()
  prev_threads = torch.get_num_threads()
  tids = torch.from_numpy(prep["ids_np"].astype(np.int64))
  tmask = torch.ones_like(tids)

  def torch_step(tm):
    tm.zero_grad(set_to_none=True)
    hidden = tm(input_ids=tids, attention_mask=tmask).last_hidden_state
    loss_t = hidden.float().pow(2).mean()
    loss_t.backward()
    return loss_t.item()

  variants = {}  # name -> (model, intra-op threads)
  for name, tm in tmodels.items():
    for nt in p.get("torch_threads", TORCH_THREADS):
      nt = threads if nt is None else nt
      variants[f"{name}_{nt}t"] = (tm, nt)

  def torch_call(tm, nt):
    torch.set_num_threads(nt)
    return torch_step(tm)

  contenders = {"narlm": functools.partial(jax_step, params, prep["ids"])}
  contenders.update({name: functools.partial(torch_call, *v) for name, v in variants.items()})
  try:
    times = interleaved(contenders, p["repeats"], budget_s=p["cell_budget_s"])
  finally:
    torch.set_num_threads(prev_threads)
  items = batch * length
  out = {"batch": batch, "length": length, "size": p["size"],
         "narlm": dict(stats(times["narlm"], items), compile_s=round(jax_compile, 3),
                       threads=threads)}
  for name, (tm, nt) in variants.items():
    out[name] = dict(stats(times[name], items), threads=nt,
                     attn_implementation=getattr(tm.config, "_attn_implementation", None))
  # The target compares with the fastest PyTorch variant (the stricter test).
  best = min(variants, key=lambda n: statistics.median(times[n]))
  out["torch"] = dict(out[best], variant=best)
  out["narlm_over_torch_ratio"] = ratio(times["narlm"], times[best])
  matched = [n for n, (_, nt) in variants.items() if nt == threads]
  if matched:  # not in the quick preset (1 thread only) on a multi-core machine
    best_matched = min(matched, key=lambda n: statistics.median(times[n]))
    out["torch_matched_threads"] = dict(out[best_matched], variant=best_matched)
    out["narlm_over_torch_matched_threads_ratio"] = ratio(times["narlm"],
                                                          times[best_matched])
  for name in variants:
    out[f"narlm_over_{name}_ratio"] = ratio(times["narlm"], times[name])
  out.update({
      "torch_threads": threads, "jax_cpu_threads": threads,
      "attn_implementation": {n: out[n]["attn_implementation"] for n in variants},
      "what": "forward + backward to parameter grads, loss = mean(hidden^2), dropout off, "
              "no pooler, no optimizer update. 'torch' = the fastest PyTorch variant "
              "(attention implementation x intra-op threads); 'torch_matched_threads' = the "
              "fastest with as many threads as JAX's CPU client",
      "load_avg": [la0, load_avg()]})
  for n in ["narlm", "torch", "torch_matched_threads", *variants]:
    if n in out:
      out[n]["positions_per_s"] = out[n].pop("items_per_s")
  log("encoder_vs_torch: " + ", ".join(f"{n}={out[n]['median_ms']:.1f}ms"
                                        for n in ["narlm", *variants]))
  return out


# ----------------------------------------------------------------- pipeline
def bench_pipeline(p: Mapping[str, Any], vocab: int, train_step_s: float) -> dict:
  from narlm import train as train_lib  # pylint: disable=g-import-not-at-top
  la0 = load_avg()
  batch, length = p["train_batch"], p["train_length"]
  n_batches = p["pipeline_batches"]
  log(f"pipeline: sentcomp_bert batch {batch} x length {length}, {n_batches} batches")
  model = make_nar_model(p["size"], vocab, beam=p["crf_beam_size"])
  cfg = train_lib.DatasetConfig("sentcomp_bert", {"inputs": length, "targets": length},
                                split="train", batch_size=batch, shuffle=True, seed=0)
  t0 = time.perf_counter()
  ds = train_lib.get_dataset(cfg, model, num_epochs=None)
  it = ds.as_numpy_iterator()
  first = next(it)
  startup = time.perf_counter() - t0
  nonpad = []
  t1 = time.perf_counter()
  for _ in range(n_batches):
    b = next(it)
    nonpad.append(int((b["encoder_input_tokens"] != PAD_ID).sum()))
  steady = time.perf_counter() - t1
  del first
  mean_nonpad = float(np.mean(nonpad))
  pipe_tps = sum(nonpad) / steady
  trainer_tps = mean_nonpad / train_step_s
  out = {"task": "sentcomp_bert", "split": "train", "batch": batch, "length": length,
         "batches_timed": n_batches, "startup_s": startup,
         "mean_nonpad_tokens_per_batch": mean_nonpad,
         "pipeline_batches_per_s": n_batches / steady,
         "pipeline_tokens_per_s": pipe_tps,
         "trainer_step_s": train_step_s, "trainer_tokens_per_s": trainer_tps,
         "pipeline_over_trainer_ratio": pipe_tps / trainer_tps,
         "note": "pipeline measured alone (first batch, which fills the shuffle buffer, "
                 "excluded); in training it shares the same CPUs with the train step",
         "load_avg": [la0, load_avg()]}
  log(f"pipeline: {pipe_tps:.0f} tok/s vs trainer {trainer_tps:.0f} tok/s")
  return out


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
    p["lengths"] = tuple(int(x) for x in args.lengths.split(","))
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
  try:
    main()
  except ValueError as e:  # bad arguments (e.g. an unknown section), named in the message
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # Everything is written (the --out file is closed): skip the interpreter's
  # teardown of TensorFlow and PyTorch, ~3 s on 2 cores.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)
