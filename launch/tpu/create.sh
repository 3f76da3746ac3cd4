#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (v2/v3/v4/v5e/v5p/v6e) for narlm.
set -euo pipefail
# shellcheck source=launch/tpu/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE --accelerator-type TYPE [options] [-- EXTRA_GCLOUD_FLAGS...]

Creates a TPU VM slice with \`gcloud compute tpus tpu-vm create\` (or, with
--queued, a queued resource: \`gcloud compute tpus queued-resources create\`).

  --accelerator-type TYPE  v3-8, v4-32, v5litepod-16 (alias v5e-16), v5p-64, v6e-8, ...  (required)
  --version VERSION        TPU software (runtime) version; default by generation:
                           v2/v3/v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite,
                           v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e (alias --runtime-version)
  --spot                   Spot VM (can be preempted at any time; cheapest)
  --preemptible            legacy preemptible VM (v2/v3/v4; use --spot on v5e/v5p/v6e)
  --queued                 request through queued resources (waits for capacity;
                           the usual way to get v5e/v5p/v6e and large slices)
  --reserved               use the project's reservation
  --network NET, --subnetwork SUBNET
  -- FLAGS...              passed to gcloud unchanged (e.g. -- --labels=team=nlp)

$TPU_COMMON_USAGE

Example:
  $(basename "$0") --name narlm-v4-32 --zone us-central2-b --accelerator-type v4-32 --spot
Next: launch/tpu/setup.sh --name narlm-v4-32 --zone us-central2-b
EOF
}

ACCELERATOR_TYPE=""
VERSION=""
SPOT=0
PREEMPTIBLE=0
QUEUED=0
RESERVED=0
NETWORK=""
SUBNETWORK=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --accelerator-type|--accelerator-type=*) take_value "$@"; ACCELERATOR_TYPE=$VALUE ;;
    --version|--version=*|--runtime-version|--runtime-version=*) take_value "$@"; VERSION=$VALUE ;;
    --spot) SPOT=1; SHIFT=1 ;;
    --preemptible) PREEMPTIBLE=1; SHIFT=1 ;;
    --queued) QUEUED=1; SHIFT=1 ;;
    --reserved) RESERVED=1; SHIFT=1 ;;
    --network|--network=*) take_value "$@"; NETWORK=$VALUE ;;
    --subnetwork|--subnetwork=*) take_value "$@"; SUBNETWORK=$VALUE ;;
    --) shift; EXTRA=("$@"); break ;;
    *) take_tpu_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done

check_tpu_args
require "$ACCELERATOR_TYPE" --accelerator-type "e.g. v4-32, v5litepod-16, v5p-8"
if [[ $ACCELERATOR_TYPE =~ ^v5e-([0-9]+)$ ]]; then
  ACCELERATOR_TYPE=v5litepod-${BASH_REMATCH[1]}
fi
[[ $ACCELERATOR_TYPE =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-[1-9][0-9]*$ ]] \
  || die "--accelerator-type must look like v3-8, v4-32, v5litepod-16 (v5e-16), v5p-8 or v6e-8; got '$ACCELERATOR_TYPE'"
GENERATION=${BASH_REMATCH[1]}
if [[ -z $VERSION ]]; then
  case $GENERATION in
    v2|v3|v4) VERSION=tpu-ubuntu2204-base ;;
    v5litepod) VERSION=v2-alpha-tpuv5-lite ;;
    v5p) VERSION=v2-alpha-tpuv5 ;;
    v6e) VERSION=v2-alpha-tpuv6e ;;
  esac
fi
if [[ $SPOT == 1 && $PREEMPTIBLE == 1 ]]; then
  die "--spot and --preemptible are exclusive"
fi
if [[ $PREEMPTIBLE == 1 && $QUEUED == 1 ]]; then
  die "queued resources take --spot, not --preemptible"
fi
if [[ $PREEMPTIBLE == 1 && $GENERATION != v2 && $GENERATION != v3 && $GENERATION != v4 ]]; then
  warn "--preemptible is the legacy option; $GENERATION slices are preemptible through --spot"
fi

if [[ $QUEUED == 1 ]]; then
  CMD=(gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME"
       "${GCLOUD_SCOPE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION")
else
  CMD=(gcloud compute tpus tpu-vm create "$TPU_NAME"
       "${GCLOUD_SCOPE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
fi
[[ $SPOT == 1 ]] && CMD+=(--spot)
[[ $PREEMPTIBLE == 1 ]] && CMD+=(--preemptible)
[[ $RESERVED == 1 ]] && CMD+=(--reserved)
[[ -n $NETWORK ]] && CMD+=(--network="$NETWORK")
[[ -n $SUBNETWORK ]] && CMD+=(--subnetwork="$SUBNETWORK")
CMD+=(${EXTRA[@]+"${EXTRA[@]}"})

run "${CMD[@]}"
if [[ $QUEUED == 1 ]]; then
  note "queued: watch it with gcloud compute tpus queued-resources describe $TPU_NAME ${GCLOUD_SCOPE[*]} (state ACTIVE = ready)"
fi
note "next: launch/tpu/setup.sh --name $TPU_NAME ${GCLOUD_SCOPE[*]}"
