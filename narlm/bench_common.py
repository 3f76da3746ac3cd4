"""narlm.bench's shared parts: run shapes (presets), the result schema, timing
and statistics helpers, and the models a benchmark builds (see narlm/bench.py
for what is measured and how)."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
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
                                 "nar_crf_ratio_first_truncated", "canvas_t1", "canvas_t4",
                                 "canvas_t10", "ar_greedy", "ar_greedy_shallow"),
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
               "nar_crf_ratio_first_truncated", "canvas_t1", "canvas_t4", "canvas_t10")
# The canvas model's mask-predict contenders: name -> iterations T.
CANVAS_ITERATIONS = {"canvas_t1": 1, "canvas_t4": 4, "canvas_t10": 10}
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
  mask_id = 103  # [MASK], which the canvas model's decoding writes

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


def make_canvas_model(size: str, vocab: int, max_canvas_length: int):
  """The canvas model (narlm/canvas.py) without a CRF: its canvas holds
  `max_canvas_length` output tokens, so an input of L tokens decodes an
  L-token canvas when max_canvas_length >= L."""
  from narlm import canvas  # pylint: disable=g-import-not-at-top
  net = canvas.CanvasNetwork(bert_cfg(size, vocab), max_canvas_length=max_canvas_length)
  v = IdVocabulary(vocab)
  return canvas.CanvasModel(net, v, v, None, decode_method="mask_predict")


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
