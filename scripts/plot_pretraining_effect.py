"""Curves of the pretraining experiment (BENCHMARKS.md, "Does NAR pretraining
help fine-tuning?"): the pretraining arms' validation loss, and every arm's
sentcomp dev ROUGE-L on a total-compute axis (a fine-tuning run that starts
from a pretraining run is shifted right by that run's CPU seconds). Arms whose
run directory is not under RUNS are left out, so one script draws every
session's subset of the arms.

  python scripts/plot_pretraining_effect.py RUNS docs/pretraining_effect.png
"""
import json
import pathlib
import sys

from narlm import plots

runs, out = pathlib.Path(sys.argv[1]), sys.argv[2]


def cpu_seconds(run):
  rows = [json.loads(l) for l in (run / "train_metrics.jsonl").read_text().splitlines() if l]
  return rows[-1]["train/cpu_seconds"]


pretraining = {"(b) NAR denoising": "pretrain_nar", "(c) both-ways": "pretrain_both_ways",
               "(d) plain MLM": "pretrain_mlm",
               "(d') masking, all positions": "pretrain_mlm_allpos"}
finetuning = {"(a) from scratch": ("tagger_scratch", None),
              "(e) from scratch, long": ("tagger_scratch_long", None),
              "(b) NAR denoising": ("tagger_nar", "pretrain_nar"),
              "(b) NAR denoising, to convergence": ("tagger_nar_long", "pretrain_nar"),
              "(c) both-ways": ("tagger_both_ways", "pretrain_both_ways"),
              "(d) plain MLM": ("tagger_mlm", "pretrain_mlm"),
              "(d') masking, all positions": ("tagger_mlm_allpos", "pretrain_mlm_allpos"),
              "(d') 2nd seed": ("tagger_mlm_allpos_seed1", "pretrain_mlm_allpos")}
# Seeded runs (tagger_nar_s0, _s1, ...) are drawn as one curve per seed.
seeded = [(label, ft, pre, seed) for label, (ft, pre) in finetuning.items() for seed in (None, 0, 1)]
finetuning = {label + ("" if seed is None else f", seed {seed}"):
              (name, pre) for label, ft, pre, seed in seeded
              for name in [ft if seed is None else f"{ft}_s{seed}"] if (runs / name).is_dir()}
pretraining = {k: v for k, v in pretraining.items() if (runs / v).is_dir()}
panels = {
    "pretraining: validation loss (each objective its own)": {
        "metric": "eval/loss", "ylabel": "validation loss",
        "runs": {k: (runs / v, 0.0) for k, v in pretraining.items()}},
    "tagger probe: sentcomp dev ROUGE-L (x: pretraining + fine-tuning)": {
        "metric": "eval/sentcomp_bert/rougeL", "ylabel": "dev ROUGE-L (1,000 pairs)",
        "runs": {k: (runs / ft, cpu_seconds(runs / pre) if pre else 0.0)
                 for k, (ft, pre) in finetuning.items()}},
}
print(plots.plot_training_curves(panels, out))
