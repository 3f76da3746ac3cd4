#!/usr/bin/env bash
# Shows (or follows) the trainer logs that train.sh writes on each TPU worker.
set -euo pipefail
# shellcheck source=launch/tpu/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE [--worker all|N] [--lines N] [--follow]

Prints each worker's trainer status (running / exit status) and the end of
its log (~/$LOG_DIR/train-<hostname>.log), lines prefixed with [<hostname>].

  --worker all|N     which worker(s) (default: all; 0 is the one that writes
                     TensorBoard summaries and config.gin)
  --lines N          lines of each log to show (default: 100)
  --follow           keep streaming new lines (Ctrl-C to stop; training goes on)
  --log-dir DIR      log dir on the workers (default: $LOG_DIR)

$TPU_COMMON_USAGE

Example:
  $(basename "$0") --name narlm-v4-32 --zone us-central2-b --worker 0 --follow
EOF
}

WORKER=all
LINES=100
FOLLOW=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --worker|--worker=*) take_value "$@"; WORKER=$VALUE ;;
    --lines|--lines=*) take_value "$@"; LINES=$VALUE ;;
    --follow|-f) FOLLOW=1; SHIFT=1 ;;
    --log-dir|--log-dir=*) take_value "$@"; LOG_DIR=$VALUE ;;
    *) take_tpu_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done

check_tpu_args
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a worker number, got '$WORKER'"
require_int "$LINES" --lines

SETTINGS="log_dir=$(rpath "$LOG_DIR")
lines=$LINES
follow=$FOLLOW"
BODY=$(cat <<'EOF'
REMOTE_LOG_FILES
if [ ! -f "$log" ]; then
  echo "[$h] no log at $log (has train.sh run here?)"
  exit 0
fi
if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  echo "[$h] status: running (pid $(cat "$pid_file")), log: $log"
elif [ -f "$rc_file" ]; then
  echo "[$h] status: exited with status $(cat "$rc_file"), log: $log"
else
  echo "[$h] status: not running, no exit status (killed, or the VM restarted), log: $log"
fi
if [ "$follow" = 1 ]; then
  tail -n "$lines" -F "$log" | sed -u "s|^|[$h] |"
else
  tail -n "$lines" "$log" | sed "s|^|[$h] |"
fi
EOF
)
BODY=${BODY/REMOTE_LOG_FILES/$REMOTE_LOG_FILES}
tpu_ssh "$WORKER" "$SETTINGS
$BODY"
