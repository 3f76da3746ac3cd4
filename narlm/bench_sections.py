"""narlm.bench's sections: decode latency/throughput, the train step with and
without the CRF, the CRF forward algorithm, the encoder vs PyTorch, and the
input pipeline (see narlm/bench.py for what each measures and how)."""

from __future__ import annotations

import copy
import functools
import os
import statistics
import time
from typing import Any, Callable, Mapping

# No platform is forced: the bench measures whatever JAX finds (GPU/TPU when
# present) and records it in meta.backend / meta.device_kind; set
# JAX_PLATFORMS=cpu to measure the CPU on an accelerator host.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


from narlm.bench_common import (  # noqa: E402
    AR_METHODS,
    CANVAS_ITERATIONS,
    NAR_METHODS,
    PAD_ID,
    RATIO_FIRST_ALPHA,
    REQUIRED_DECODE_METHODS,
    TORCH_ATTN_IMPLEMENTATIONS,
    TORCH_THREADS,
    aot,
    bert_cfg,
    compile_info,
    compile_job,
    cpu_threads,
    init_params,
    interleaved,
    load_avg,
    log,
    make_ar_model,
    make_canvas_model,
    make_nar_model,
    numpy_params,
    param_shapes,
    random_tokens,
    ratio,
    stats,
    synthetic_train_batch,
)

# ------------------------------------------------------------------ decode
def nar_predict_fn(model, method: str):
  """The predictor's program (narlm.predictor.predict_program) for one method."""
  from narlm import predictor  # pylint: disable=g-import-not-at-top
  return predictor.predict_program(model, (("alpha", RATIO_FIRST_ALPHA),
                                           ("decode_method", method)))


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


def canvas_fn(model, iterations: int):
  """Mask-predict with T passes over a canvas as wide as the input (the
  predicted length only masks positions: the work per pass is the canvas
  width's, whatever the random parameters predict): the predictor's program."""
  from narlm import predictor  # pylint: disable=g-import-not-at-top
  return predictor.predict_program(model, (("decode_method", "mask_predict"),
                                           ("iterations", iterations)))


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
    **{name: f"canvas model, predict_batch_with_aux(decode_method='mask_predict', "
             f"iterations={t}), canvas width = input length"
       for name, t in CANVAS_ITERATIONS.items()},
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
                "ar_greedy_shallow": "ar1", **{name: "canvas" for name in CANVAS_ITERATIONS}}


def decode_fn(name: str, models: Mapping[str, Any]) -> Callable:
  """fn(params, tokens) of a decode method."""
  model = models[DECODE_MODEL[name]]
  if name in AR_METHODS:
    return ar_forced_fn(model)
  if name in CANVAS_ITERATIONS:
    return canvas_fn(model, CANVAS_ITERATIONS[name])
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
  if any(name in CANVAS_ITERATIONS for name in methods_run):
    models["canvas"] = make_canvas_model(size, vocab, max(p["lengths"]))
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
    canvas_run = [name for name in fns if name in CANVAS_ITERATIONS]
    if canvas_run:  # refinement passes each contender ran (T, counted by the model)
      cells[key]["canvas_passes"] = {name: int(np.max(np.asarray(outs[name][1]["passes"])))
                                     for name in canvas_run}
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
  from narlm import crf_core, crf_ops  # pylint: disable=g-import-not-at-top
  tokens = p["crf_tokens"]
  rank = 32
  core_fn = crf_core.log_partition
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
      if k in p["crf_core_beams"]:
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
