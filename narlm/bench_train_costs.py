r"""What the cheaper-training options buy: MiniLM-sized NAG-BERT + CRF train
steps on real sentence-compression batches, with and without the restricted
output vocabulary and length-bucketed batches.

Usage:
  python -m narlm.bench_train_costs --out docs/bench_train_costs.json [--batches 6]

Four configurations train on the same examples (the first `--batches` x
BATCH of the shuffled sentcomp_bert train stream): rows padded to L = 64 or
grouped and cut to the length buckets (32, 48, 64); output head and CRF over
all 30,522 WordPieces or over the 12.6k ids of the training targets. Steps
are interleaved (each repeat runs every configuration once, rotating the
order) so that machine load hits all of them alike; compilation is excluded.
Reported: median ms per step and ms per example over the whole stream (the
bucketed stream has a different mix of shapes than the padded one, so the
per-example cost is the fair comparison), and the ratios to the baseline
(full vocabulary, padded rows). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Sequence

import numpy as np

BATCH = 32
LENGTH = 64
BUCKETS = (32, 48)


def _batches(model, buckets, n: int):
  from narlm import train as train_lib  # pylint: disable=g-import-not-at-top
  cfg = train_lib.DatasetConfig("sentcomp_bert", {"inputs": LENGTH, "targets": LENGTH},
                                batch_size=BATCH, seed=0, length_buckets=buckets)
  ds = train_lib.get_dataset(cfg, model)
  return list(ds.take(n).as_numpy_iterator())


def _trainer(output_vocab):
  from narlm import models, optimizers, train as train_lib, vocabularies  # pylint: disable=g-import-not-at-top
  from narlm.modules import encoder, network  # pylint: disable=g-import-not-at-top
  vocab = vocabularies.bert_vocabulary()
  config = encoder.bert_config("small", vocab.vocab_size, hidden_size=384, num_layers=6,
                               num_heads=12, intermediate_size=1536)
  net = network.NagBertNetwork(config, head_dropout=0.2, output_vocab=output_vocab)
  model = models.NagBertModel(net, vocab, vocab, optimizers.create_optimizer("adamw", 1e-4))
  return train_lib.Trainer(model)


def run(num_batches: int, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from narlm import bench, output_vocab  # pylint: disable=g-import-not-at-top
  subset = output_vocab.from_task("sentcomp_bert")
  configs = {}
  for vocab_name, ov in (("full_vocab", None), ("target_vocab", subset)):
    for batching, buckets in (("padded", None), ("bucketed", BUCKETS)):
      trainer = _trainer(ov)
      state = trainer.init_state((BATCH, LENGTH))
      batches = [trainer.global_batch(b) for b in _batches(trainer.model, buckets, num_batches)]
      step = trainer.compiled_train_step()
      t0 = time.perf_counter()
      for b in {tuple(x["encoder_input_tokens"].shape): x for x in batches}.values():
        with trainer.mesh:  # compile every shape once, outside the timing
          state, _ = step(state, b)
      jax.block_until_ready(state)
      configs[f"{vocab_name}/{batching}"] = {
          "trainer": trainer, "state": state, "batches": batches, "step": step,
          "compile_s": time.perf_counter() - t0,
          "shapes": sorted({int(b["encoder_input_tokens"].shape[1]) for b in batches})}
      bench.log(f"{vocab_name}/{batching}: compiled {configs[f'{vocab_name}/{batching}']['shapes']}")

  def epoch(run_cfg):
    def call():
      for b in run_cfg["batches"]:
        with run_cfg["trainer"].mesh:
          run_cfg["state"], metrics = run_cfg["step"](run_cfg["state"], b)
      return metrics["loss"]
    return call

  times = bench.interleaved({k: epoch(v) for k, v in configs.items()}, repeats)
  base = "full_vocab/padded"
  out = {"batch": BATCH, "row_length": LENGTH, "buckets": list(BUCKETS) + [LENGTH],
         "batches_per_repeat": num_batches, "repeats": repeats,
         "output_vocab_size": subset.size, "full_vocab_size": 30522,
         "model": "MiniLM-L6 shape (6 layers, d=384), CRF rank 32 beam 64, AdamW",
         "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                     "device": str(jax.devices()[0].device_kind)},
         "load_avg": bench.load_avg(), "configs": {}}
  for name, cfg in configs.items():
    med = float(np.median(times[name]))
    out["configs"][name] = {"ms_per_example": 1000 * med / (num_batches * BATCH),
                            "ms_per_step": 1000 * med / num_batches, "shapes": cfg["shapes"],
                            "compile_s": cfg["compile_s"]}
  for name in configs:
    r = bench.ratio(times[base], times[name])
    out["configs"][name]["speedup_vs_baseline"] = r["ratio"]
    out["configs"][name]["speedup_paired_range"] = [r["paired_min_ratio"], r["paired_max_ratio"]] \
        if "paired_min_ratio" in r else None
  return out


def main(argv: Sequence[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", type=int, default=6)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.batches < 1 or args.repeats < 1:
    parser.error("--batches and --repeats must be >= 1")
  result = run(args.batches, args.repeats)
  text = json.dumps(result, indent=1, default=str)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  print(text)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
