"""Curves of the pretraining experiment (BENCHMARKS.md, "Does NAR pretraining
help fine-tuning?"): the pretraining arms' validation loss, and every arm's
sentcomp dev ROUGE-L on a total-compute axis (a fine-tuning run that starts
from a pretraining run is shifted right by that run's CPU seconds).

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
               "(d) plain MLM": "pretrain_mlm"}
finetuning = {"(a) from scratch": ("ft_scratch", None),
              "(e) from scratch, long": ("ft_scratch_long", None),
              "(b) NAR denoising": ("ft_nar", "pretrain_nar"),
              "(c) both-ways": ("ft_both_ways", "pretrain_both_ways"),
              "(d) plain MLM": ("ft_mlm", "pretrain_mlm")}
for extra in sorted(runs.glob("ft_*_seed1")):
  start = extra.name.replace("ft_", "pretrain_").replace("_seed1", "")
  finetuning[f"{extra.name} (2nd seed)"] = (extra.name, start if (runs / start).exists() else None)
panels = {
    "pretraining: validation loss (each objective its own)": {
        "metric": "eval/loss", "ylabel": "validation loss",
        "runs": {k: (runs / v, 0.0) for k, v in pretraining.items()}},
    "fine-tuning: sentcomp dev ROUGE-L (x: pretraining + fine-tuning)": {
        "metric": "eval/sentcomp_bert/rougeL", "ylabel": "dev ROUGE-L (1,000 pairs)",
        "runs": {k: (runs / ft, cpu_seconds(runs / pre) if pre else 0.0)
                 for k, (ft, pre) in finetuning.items()}},
}
print(plots.plot_training_curves(panels, out))
