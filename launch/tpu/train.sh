#!/usr/bin/env bash
# Runs narlm training with the same gin on every worker of a TPU VM slice.
set -euo pipefail
# shellcheck source=launch/tpu/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE --gin_file=GIN --model-dir=DIR [options] [-- TRAINER_ARGS...]

Starts the trainer on every worker (gcloud ... ssh --worker=all), detached
from the ssh session (nohup-like: closing your terminal or Ctrl-C does not
stop training), writing one log per worker on the worker
(~/$LOG_DIR/train-<hostname>.log), and streams all workers' logs back,
each line prefixed with [<hostname>], until the trainers exit; the exit
status is the trainers' (non-zero if any worker failed).

Re-running the same command after a preemption resumes from the latest
checkpoint in MODEL_DIR (the trainer does that by itself).

Trainer:
  --gin_file=GIN        experiment gin, as the trainer resolves it (repeatable)    (required)
  --model-dir=DIR       MODEL_DIR: checkpoints, TensorBoard, config.gin             (required)
                        (--gin.MODEL_DIR=\\"DIR\\" is accepted too)
  --gin.NAME=VALUE      extra gin bindings, passed through (e.g. --gin.BATCH_SIZE=512)
  --gin_bindings=B, --gin_search_paths=P   passed through
  --env KEY=VALUE       environment for the trainer (repeatable), e.g.
                        --env TFDS_DATA_DIR=gs://bucket/tfds --env NARLM_BOOKCORPUS_DIR=...
  --trainer narlm|t5x   narlm: python -m narlm.train (default)
                        t5x:   python <t5x-dir>/t5x/train.py (same experiment gin; setup.sh --with-t5x)
  --no-distributed      narlm trainer: do not bind train.distributed (by default
                        jax.distributed.initialize() runs, auto-detecting the TPU slice)
  -- ARGS...            appended to the trainer command line verbatim

Options:
  --detach              start and return; follow later with logs.sh --follow
  --remote-dir DIR      working dir on the workers (default: $REMOTE_DIR, under \$HOME)
  --venv DIR            virtualenv on the workers (default: $VENV_DIR)
  --log-dir DIR         log dir on the workers (default: $LOG_DIR)
  --t5x-dir DIR         t5x checkout on the workers (default: $T5X_DIR)

$TPU_COMMON_USAGE

Example (pretrain_base on a v4-32):
  $(basename "$0") --name narlm-v4-32 --zone us-central2-b \\
    --gin_file=narlm/gin/pretrain_base.gin --model-dir=gs://BUCKET/narlm/pretrain_base \\
    --env TFDS_DATA_DIR=gs://BUCKET/tfds --env NARLM_BOOKCORPUS_DIR=/mnt/bookcorpus
EOF
}

TRAINER=narlm
DISTRIBUTED=1
FOLLOW=1
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --trainer|--trainer=*) take_value "$@"; TRAINER=$VALUE ;;
    --no-distributed) DISTRIBUTED=0; SHIFT=1 ;;
    --detach) FOLLOW=0; SHIFT=1 ;;
    --remote-dir|--remote-dir=*) take_value "$@"; REMOTE_DIR=$VALUE ;;
    --venv|--venv=*) take_value "$@"; VENV_DIR=$VALUE ;;
    --log-dir|--log-dir=*) take_value "$@"; LOG_DIR=$VALUE ;;
    --t5x-dir|--t5x-dir=*) take_value "$@"; T5X_DIR=$VALUE ;;
    --) shift; TRAINER_EXTRA=("$@"); break ;;
    *) take_tpu_arg "$@" || take_trainer_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done

check_tpu_args
check_trainer_args
warn_if_missing_gin
gin_argv
# TRAINER_PREFIX is already quoted for the remote shell (it expands $HOME
# there); TRAINER_ARGV is quoted when the remote script is built.
TRAINER_PREFIX="$(rpath "$VENV_DIR")/bin/python"
case $TRAINER in
  narlm)
    TRAINER_ARGV=(-m narlm.train "${GIN_ARGV[@]}")
    if [[ $DISTRIBUTED == 1 ]]; then
      TRAINER_ARGV+=("${DISTRIBUTED_BINDINGS[@]}")
    fi
    warn_if_remote_model_dir_unsupported ;;
  t5x)
    for f in "${GIN_FILES[@]}"; do
      local_gin=$(find_local_gin "$f")
      if [[ -n $local_gin ]] && grep -Eq 'runs/train\.gin|train_lib\.train' "$local_gin"; then
        die "$f includes narlm's own trainer gin (narlm/gin/runs/train.gin) directly; for both" \
            "trainers an experiment includes narlm/gin/runs/pretrain.gin or finetune.gin" \
            "(e.g. narlm/gin/pretrain_base.gin). Use --trainer=narlm for this file."
      fi
    done
    # t5x handles multi-host TPU itself; its gin_search_paths default '.' is
    # the narlm checkout (the working dir), so narlm/gin/... includes resolve.
    TRAINER_PREFIX+=" $(rpath "$T5X_DIR")/t5x/train.py"
    TRAINER_ARGV=(--alsologtostderr "${GIN_ARGV[@]}") ;;
  *) die "--trainer must be narlm or t5x, got '$TRAINER'" ;;
esac
TRAINER_ARGV+=(${TRAINER_EXTRA[@]+"${TRAINER_EXTRA[@]}"})

# The remote script (POSIX sh): settings, then a fixed body. The trainer's
# command line becomes the positional parameters ("$@"). The trainer runs
# detached from the ssh session (HUP ignored, stdin closed) so a dropped
# connection does not stop it; SIGTERM (VM preemption/shutdown, stop.sh)
# still reaches it, and it saves a checkpoint and exits.
SETTINGS="log_dir=$(rpath "$LOG_DIR")
workdir=$(rpath "$REMOTE_DIR")
follow=$FOLLOW
export PYTHONUNBUFFERED=1"
for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
  SETTINGS+="
export ${kv%%=*}=$(dq "${kv#*=}")"
done
SETTINGS+="
set -- $TRAINER_PREFIX $(join_quoted dq "${TRAINER_ARGV[@]}")"

BODY=$(cat <<'EOF'
mkdir -p "$log_dir"
REMOTE_LOG_FILES
if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  echo "error: [$h] a trainer is already running (pid $(cat "$pid_file")); follow it with launch/tpu/logs.sh --follow, stop it with launch/tpu/stop.sh" >&2
  exit 3
fi
cd "$workdir" || { echo "error: [$h] $workdir is missing: run launch/tpu/setup.sh first" >&2; exit 3; }
[ -x "$1" ] || { echo "error: [$h] $1 is missing: run launch/tpu/setup.sh first" >&2; exit 3; }
rm -f "$rc_file"
touch "$log"
start=$(wc -c < "$log")
echo "=== narlm launch $(date -u +%Y-%m-%dT%H:%M:%SZ) on $h in $workdir: $*" >> "$log"
( trap "" HUP; "$@"; echo $? > "$rc_file" ) >> "$log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pid_file"
echo "[$h] started (pid $pid), log: $log"
if [ "$follow" = 1 ]; then
  tail -c +$((start + 1)) -s 0.2 --pid="$pid" -F "$log" 2>/dev/null | sed -u "s|^|[$h] |"
  rc=$(cat "$rc_file" 2>/dev/null || echo 255)
  echo "[$h] trainer exited with status $rc"
  exit "$rc"
fi
EOF
)
BODY=${BODY/REMOTE_LOG_FILES/$REMOTE_LOG_FILES}

if [[ $FOLLOW == 1 ]] && ! is_dry_run; then
  note "streaming the workers' logs; Ctrl-C stops the streaming only (training goes on: logs.sh --follow, stop.sh)"
fi
tpu_ssh all "$SETTINGS
$BODY"
