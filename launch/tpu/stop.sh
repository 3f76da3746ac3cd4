#!/usr/bin/env bash
# Stops the trainer that train.sh started on each TPU worker.
set -euo pipefail
# shellcheck source=launch/tpu/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE [--kill]

Sends SIGTERM to the trainer train.sh started on every worker (found through
~/$LOG_DIR/train-<hostname>.pid, not by name): narlm's trainer then saves a
checkpoint and exits, and the next train.sh run resumes from it.

  --kill             SIGKILL instead (no checkpoint; for a hung trainer)
  --log-dir DIR      log dir on the workers (default: $LOG_DIR)

$TPU_COMMON_USAGE
EOF
}

SIGNAL=TERM
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --kill) SIGNAL=KILL; SHIFT=1 ;;
    --log-dir|--log-dir=*) take_value "$@"; LOG_DIR=$VALUE ;;
    *) take_tpu_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done
check_tpu_args

SETTINGS="log_dir=$(rpath "$LOG_DIR")
signal=$SIGNAL"
BODY=$(cat <<'EOF'
REMOTE_LOG_FILES
if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  pkill -"$signal" -P "$(cat "$pid_file")" && echo "[$h] sent SIG$signal to the trainer (children of pid $(cat "$pid_file"))"
else
  echo "[$h] no running trainer"
fi
EOF
)
BODY=${BODY/REMOTE_LOG_FILES/$REMOTE_LOG_FILES}
tpu_ssh all "$SETTINGS
$BODY"
