r"""What resuming costs the input pipeline: replaying the batches already
consumed vs continuing from the position saved with the checkpoint.

Usage:
  python -m narlm.bench_resume --gin_file=narlm/gin/pretrain_cpu.gin --step 10000 \
      [--out docs/bench_resume.json]

Builds the experiment's training stream exactly as `narlm.train` does (its
task or mixture, batch size, feature lengths, seed, length buckets), takes
`--step` batches from it once, and saves the position as the trainer does at
a checkpoint (`TrainInput.save`). Then, each in a fresh pipeline, it times
the two ways to the batch of step + 1:
* replay: produce and drop `--step` batches (every resume before positions
  were saved; still the fallback when none fits);
* restore: `TrainInput.restore` from the saved position.
Both must give the same batch (checked). No model is run: the model gin
only supplies its feature converter. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Sequence

import numpy as np


def _host_put(batch):
  return batch


def _stream(model, cfg, fingerprint):
  from narlm import train_data  # pylint: disable=g-import-not-at-top
  return train_data.TrainInput(train_data.get_dataset(cfg, model), _host_put, prefetch=2,
                               fingerprint=fingerprint)


def run(gin_files: Sequence[str], gin_bindings: Sequence[str], step: int) -> dict:
  import gin  # pylint: disable=g-import-not-at-top
  from narlm import run_dirs, train as train_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  # MODEL_DIR is required by the run gins; nothing is written there.
  train_lib.parse_gin(gin_files, ['MODEL_DIR = "unused"', *gin_bindings])
  # The trainer's own binding (`train_dataset_cfg = @train/...DatasetConfig()`).
  cfg = gin.query_parameter("train_lib.train.train_dataset_cfg").scoped_configurable_fn()
  model = run_dirs.model_from_parsed_gin(str(list(gin_files)))
  fingerprint = train_lib.input_fingerprint(cfg, 1)

  with tempfile.TemporaryDirectory() as model_dir:
    first = _stream(model, cfg, fingerprint)
    t0 = time.perf_counter()
    for _ in range(step):
      next(first)
    consume_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    first.save(model_dir, step)
    save_s = time.perf_counter() - t0
    saved_bytes = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, fs in os.walk(model_dir) for f in fs)
    want = next(first)

    t0 = time.perf_counter()
    replayed = _stream(model, cfg, fingerprint)
    replayed.replay(step)
    got_replay = next(replayed)
    replay_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    restored = _stream(model, cfg, fingerprint)
    why_not = restored.restore(model_dir, step)
    if why_not is not None:
      raise RuntimeError(f"restore failed: {why_not}")
    got_restore = next(restored)
    restore_s = time.perf_counter() - t0
  for name, got in (("replay", got_replay), ("restore", got_restore)):
    if sorted(got) != sorted(want) or any(not np.array_equal(got[k], want[k]) for k in want):
      raise AssertionError(f"{name} gave another batch {step + 1} than the uninterrupted stream")
  gin.clear_config()
  return {
      "gin_files": list(gin_files), "gin_bindings": list(gin_bindings),
      "task": cfg.mixture_or_task_name, "batch_size": cfg.batch_size,
      "feature_lengths": dict(cfg.task_feature_lengths), "step": step,
      "first_pass_seconds": round(consume_s, 2),
      "batches_per_second": round(step / consume_s, 1),
      "resume_replay_seconds": round(replay_s, 2),
      "resume_restore_seconds": round(restore_s, 3),
      "replay_over_restore": round(replay_s / restore_s, 1),
      "save_seconds": round(save_s, 3), "saved_bytes": saved_bytes,
      "same_batch_after_resume": True,
      "machine": {"processor": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count()},
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gin_file", action="append", required=True)
  parser.add_argument("--gin", action="append", default=[], dest="gin_bindings",
                      help="a gin binding, e.g. --gin BATCH_SIZE=32")
  parser.add_argument("--step", type=int, default=10_000,
                      help="resume after this many finished steps")
  parser.add_argument("--out", help="also write the JSON here")
  args = parser.parse_args(argv)
  if args.step < 1:
    parser.error(f"--step must be >= 1, got {args.step}")
  result = run(args.gin_file, args.gin_bindings, args.step)
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
