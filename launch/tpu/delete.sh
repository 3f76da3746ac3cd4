#!/usr/bin/env bash
# Deletes a TPU VM slice (or its queued resource).
set -euo pipefail
# shellcheck source=launch/tpu/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE [--queued] [--yes] [--async]

Deletes the TPU VM slice (gcloud compute tpus tpu-vm delete), or with
--queued the queued resource and its TPU (queued-resources delete --force).
Checkpoints in a gs:// MODEL_DIR are not touched; worker disks (and the logs
on them) are deleted.

  --queued           the slice was created with create.sh --queued
  --yes              no confirmation prompt (gcloud --quiet)
  --async            return without waiting for the deletion

$TPU_COMMON_USAGE
EOF
}

QUEUED=0
YES=0
ASYNC=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --queued) QUEUED=1; SHIFT=1 ;;
    --yes|-y) YES=1; SHIFT=1 ;;
    --async) ASYNC=1; SHIFT=1 ;;
    *) take_tpu_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done
check_tpu_args

if [[ $QUEUED == 1 ]]; then
  CMD=(gcloud compute tpus queued-resources delete "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --force)
else
  CMD=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_SCOPE[@]}")
fi
if [[ $YES == 1 ]]; then
  CMD+=(--quiet)
fi
if [[ $ASYNC == 1 ]]; then
  CMD+=(--async)
fi
run "${CMD[@]}"
