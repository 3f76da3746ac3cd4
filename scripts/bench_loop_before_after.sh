#!/usr/bin/env bash
# Steady-state steps/s of the narlm trainer before (d3603e0^: host sync every
# step, no device prefetch) and after (HEAD) the pod-ready loop, same machine,
# runs interleaved. Rate between the log steps at 10 and N (compilation excluded).
set -uo pipefail
OUT=${OUT:-/tmp/narlm_sps}; mkdir -p "$OUT"
BEFORE=${BEFORE:?set BEFORE to a worktree of d3603e0^ (git worktree add ../before d3603e0^)}
HERE=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-60}
run() {  # tree name gin devices extra...
  local tree=$1 name=$2 gin=$3 dev=$4; shift 4
  local dir=$OUT/$name; rm -rf "$dir"
  (cd "$tree" && PYTHONPATH="$tree" JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$dev" \
    "$HERE"/.venv/bin/python -m narlm.train --gin_file="$gin" --gin.MODEL_DIR="\"$dir\"" \
    --gin.TRAIN_STEPS="$N" --gin.LOG_PERIOD=10 --gin.CHECKPOINT_PERIOD=1000 --gin.EVAL_PERIOD=0 \
    --gin.EVAL_STEPS=1 "$@" > "$OUT/$name.log" 2>&1)
  "$HERE"/.venv/bin/python - "$dir" "$name" <<'PY'
import json, sys
recs = {r["step"]: r for r in map(json.loads, open(sys.argv[1] + "/train_metrics.jsonl")) if "train/steps_per_sec" in r}
steps = sorted(recs); a, b = 10, steps[-1]
t = lambda s: s / recs[s]["train/steps_per_sec"]
print(json.dumps({"run": sys.argv[2], "steps": [a, b], "steady_steps_per_sec": round((b - a) / (t(b) - t(a)), 3)}))
PY
}
for rep in 1 2; do
  run "$BEFORE" before_tiny8_$rep narlm/gin/tiny_cpu.gin 8
  run "$HERE" after_tiny8_$rep narlm/gin/tiny_cpu.gin 8
  run "$BEFORE" before_quick_$rep narlm/gin/quickstart_cpu.gin 1 --gin.TRAIN_STEPS=40
  run "$HERE" after_quick_$rep narlm/gin/quickstart_cpu.gin 1 --gin.TRAIN_STEPS=40
done
