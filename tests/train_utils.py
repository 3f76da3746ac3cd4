"""Helpers for trainer tests: run narlm.train.main in-process or in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small, fast overrides for CPU tests.
FAST = [
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.LOG_PERIOD=1",
    "--gin.EVAL_STEPS=1",
    "--gin.EVALUATOR_NUM_EXAMPLES=0",
    "--gin.CHECKPOINT_ASYNC=False",
]


def run_in_process(model_dir, *args, gin_file="narlm/gin/tiny_cpu.gin"):
  import gin
  from narlm import train
  gin.clear_config()
  try:
    return train.main([f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"', *args])
  finally:
    gin.clear_config()


def run_subprocess(model_dir, *args, gin_file="narlm/gin/tiny_cpu.gin", devices=1,
                   timeout=600, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "narlm.train", f"--gin_file={gin_file}",
         f'--gin.MODEL_DIR="{model_dir}"', *args]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def logged_losses(model_dir):
  """{step: loss} from train_metrics.jsonl (the last record per step wins)."""
  path = pathlib.Path(model_dir) / "train_metrics.jsonl"
  out = {}
  for line in path.read_text().splitlines():
    record = json.loads(line)
    out[record["step"]] = record["train/loss"]
  return out
