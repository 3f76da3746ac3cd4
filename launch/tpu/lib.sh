# shellcheck shell=bash
# shellcheck disable=SC2034  # variables set here are used by the sourcing scripts
# Helpers for the Cloud TPU VM scripts in launch/tpu/ (sourced, never run).
# shellcheck source=launch/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../lib.sh"

# Defaults from the environment, overridden by flags.
TPU_NAME=${NARLM_TPU_NAME:-}
ZONE=${NARLM_TPU_ZONE:-}
PROJECT=${NARLM_TPU_PROJECT:-}
INTERNAL_IP=0
# Paths on the workers; relative ones are under the remote user's $HOME.
REMOTE_DIR=${NARLM_REMOTE_DIR:-narlm}          # the narlm checkout (working dir of the trainer)
VENV_DIR=${NARLM_REMOTE_VENV:-narlm-venv}      # virtualenv made by setup.sh
LOG_DIR=${NARLM_REMOTE_LOG_DIR:-narlm-logs}    # train-<hostname>.{log,pid,exit}
T5X_DIR=${NARLM_REMOTE_T5X_DIR:-t5x}           # t5x checkout (setup.sh --with-t5x)

TPU_COMMON_USAGE="TPU flags (environment defaults in brackets):
  --name NAME        TPU VM / slice name [NARLM_TPU_NAME]            (required)
  --zone ZONE        e.g. us-central2-b  [NARLM_TPU_ZONE]           (required)
  --project PROJECT  GCP project [NARLM_TPU_PROJECT; else gcloud's default]
  --internal-ip      ssh/scp over the internal IP (VPC without external IPs)
  --dry-run          print every external command instead of running it [DRY_RUN=1]
  -h, --help         this help"

# take_tpu_arg "$@": consumes one TPU flag (sets SHIFT); returns 1 otherwise.
take_tpu_arg() {
  case $1 in
    --name|--name=*) take_value "$@"; TPU_NAME=$VALUE ;;
    --zone|--zone=*) take_value "$@"; ZONE=$VALUE ;;
    --project|--project=*) take_value "$@"; PROJECT=$VALUE ;;
    --internal-ip) INTERNAL_IP=1; SHIFT=1 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    *) return 1 ;;
  esac
}

# check_tpu_args: required flags present; sets GCLOUD_SCOPE (zone/project flags).
check_tpu_args() {
  check_dry_run
  require "$TPU_NAME" --name "the TPU VM name, or set NARLM_TPU_NAME"
  require "$ZONE" --zone "e.g. us-central2-b, or set NARLM_TPU_ZONE"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name must be lower-case letters, digits and '-', starting with a letter: '$TPU_NAME'"
  GCLOUD_SCOPE=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    GCLOUD_SCOPE+=(--project="$PROJECT")
  fi
  if is_dry_run; then
    note "# dry run: printing commands instead of running them"
  fi
}

# tpu_ssh WORKER REMOTE_SCRIPT: runs REMOTE_SCRIPT (POSIX sh) on WORKER ('all' or N).
tpu_ssh() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --worker="$1")
  if [[ $INTERNAL_IP == 1 ]]; then
    cmd+=(--internal-ip)
  fi
  cmd+=(--command="$2")
  run "${cmd[@]}"
}

# tpu_scp_all LOCAL_FILE REMOTE_PATH: copies a file to every worker.
tpu_scp_all() {
  local cmd=(gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${GCLOUD_SCOPE[@]}" --worker=all)
  if [[ $INTERNAL_IP == 1 ]]; then
    cmd+=(--internal-ip)
  fi
  run "${cmd[@]}"
}

# rpath PATH: PATH for a remote sh script: relative paths (and ~/...) are
# under the remote $HOME, which only the remote shell can expand.
rpath() {
  local p=$1
  p=${p#\~/}
  if [[ $p == /* ]]; then
    dq "$p"
  else
    # shellcheck disable=SC2016  # $HOME is for the remote shell
    printf '"$HOME"/%s' "$(dq "$p")"
  fi
}

# The per-worker file names, shared by train.sh, logs.sh and stop.sh (remote sh).
# shellcheck disable=SC2016  # expanded by the remote shell
REMOTE_LOG_FILES='h=$(hostname)
log="$log_dir/train-$h.log"; pid_file="$log_dir/train-$h.pid"; rc_file="$log_dir/train-$h.exit"'
