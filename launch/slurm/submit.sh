#!/usr/bin/env bash
# Submits launch/slurm/train.sbatch: narlm multi-node GPU training on SLURM.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../lib.sh"

SBATCH_SCRIPT=$NARLM_LAUNCH_DIR/slurm/train.sbatch

usage() {
  cat <<EOF
Usage: $(basename "$0") --gpus-per-node G --gin_file=GIN --model-dir=DIR [options] [-- TRAINER_ARGS...]

Submits $SBATCH_SCRIPT with sbatch. The job runs one srun step of
\`python -m narlm.train\` (one process per GPU by default); jax.distributed
is auto-detected from SLURM's variables. Submit from the narlm checkout (the
job's working dir is the submission dir) with narlm and jax[cuda12] installed
in the environment (sbatch passes it on).

Allocation:
  --nodes N             nodes (default: 1)
  --gpus-per-node G     GPUs per node                                            (required)
  --gres                request GPUs as --gres=gpu:G instead of --gpus-per-node=G
  --tasks-per gpu|node  one process per GPU (default) or per node (see train.sbatch --help)
  --time T              time limit, e.g. 24:00:00 (the trainer gets SIGTERM 120 s
                        before it, saves a checkpoint and exits)
  --partition P, --account A, --qos Q
  --job-name NAME       default: narlm-<gin file name>
  --output PATTERN      default: %x-%j.out = <job name>-<job id>.out (in the submission dir)
  --chain N             submit N jobs, each starting after the previous one ends
                        (--dependency=afterany): each resumes from the latest
                        checkpoint, for runs longer than the time limit
  --sbatch-arg=ARG      extra sbatch option (repeatable), e.g. --sbatch-arg=--exclusive

Trainer (forwarded to train.sbatch):
  --trainer narlm|t5x   python -m narlm.train (default) or t5x's train.py, same experiment gin
  --t5x-dir DIR         t5x checkout on the nodes (--trainer=t5x; default: \$T5X_DIR)
  --gin_file=GIN        experiment gin (repeatable)                              (required)
  --model-dir=DIR       MODEL_DIR on a filesystem all nodes share                (required)
                        (--gin.MODEL_DIR=\\"DIR\\" is accepted too; relative paths are
                        made absolute here)
  --gin.NAME=VALUE, --gin_bindings=B, --gin_search_paths=P   passed through
  --env KEY=VALUE       exported for the trainer (repeatable)
  --python BIN          interpreter on the nodes (default: python3)
  --coordinator-port P  JAX_COORDINATOR_PORT
  -- ARGS...            appended to the trainer command line

  --dry-run             print the sbatch command(s) instead of running them [DRY_RUN=1]
  -h, --help            this help

Example (fine-tune Gigaword on 2 nodes x 8 GPUs):
  $(basename "$0") --nodes 2 --gpus-per-node 8 --time 24:00:00 --partition gpu \\
    --gin_file=narlm/gin/finetune_gigaword_base.gin --model-dir=/shared/\$USER/narlm/gigaword \\
    --gin.INITIAL_CHECKPOINT=\\"/shared/models/bert-base-uncased\\" \\
    --env NARLM_GIGAWORD_DIR=/shared/data/gigaword
EOF
}

NODES=1
GPUS_PER_NODE=""
GRES=0
TASKS_PER=gpu
TIME=""
PARTITION=""
ACCOUNT=""
QOS=""
JOB_NAME=""
OUTPUT=""
CHAIN=1
SBATCH_ARGS=()
FORWARD=()   # train.sbatch options other than the gin/model-dir ones
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    --nodes|--nodes=*) take_value "$@"; NODES=$VALUE ;;
    --gpus-per-node|--gpus-per-node=*) take_value "$@"; GPUS_PER_NODE=$VALUE ;;
    --gres) GRES=1; SHIFT=1 ;;
    --tasks-per|--tasks-per=*) take_value "$@"; TASKS_PER=$VALUE ;;
    --time|--time=*) take_value "$@"; TIME=$VALUE ;;
    --partition|--partition=*) take_value "$@"; PARTITION=$VALUE ;;
    --account|--account=*) take_value "$@"; ACCOUNT=$VALUE ;;
    --qos|--qos=*) take_value "$@"; QOS=$VALUE ;;
    --job-name|--job-name=*) take_value "$@"; JOB_NAME=$VALUE ;;
    --output|--output=*) take_value "$@"; OUTPUT=$VALUE ;;
    --chain|--chain=*) take_value "$@"; CHAIN=$VALUE ;;
    --sbatch-arg=*) SBATCH_ARGS+=("${1#*=}"); SHIFT=1 ;;
    --sbatch-arg) die "write --sbatch-arg as one word: --sbatch-arg=--exclusive" ;;
    --python|--python=*|--coordinator-port|--coordinator-port=*|--trainer|--trainer=*|--t5x-dir|--t5x-dir=*)
      take_value "$@"; FORWARD+=("${1%%=*}=$VALUE") ;;
    --) shift; TRAINER_EXTRA=("$@"); break ;;
    *) take_trainer_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done

check_dry_run
require "$GPUS_PER_NODE" --gpus-per-node "GPUs per node, e.g. --gpus-per-node 8"
check_trainer_args
require_int "$NODES" --nodes
require_int "$GPUS_PER_NODE" --gpus-per-node
require_int "$CHAIN" --chain
[[ $TASKS_PER == gpu || $TASKS_PER == node ]] || die "--tasks-per must be gpu or node, got '$TASKS_PER'"
warn_if_missing_gin
if [[ $MODEL_DIR != *://* && $MODEL_DIR != /* ]]; then
  MODEL_DIR=$PWD/$MODEL_DIR
fi
case $MODEL_DIR in
  /tmp/*|/dev/shm/*|/scratch/local/*)
    if [[ $NODES -gt 1 ]]; then
      warn "MODEL_DIR $MODEL_DIR looks node-local: multi-node checkpoints need a filesystem all nodes share"
    fi ;;
esac
if [[ -z $JOB_NAME ]]; then
  JOB_NAME=narlm-$(basename "${GIN_FILES[0]}" .gin)
fi
if is_dry_run; then
  note "# dry run: printing commands instead of running them"
fi

if [[ $TASKS_PER == gpu ]]; then
  TASKS_PER_NODE=$GPUS_PER_NODE
else
  TASKS_PER_NODE=1
fi
SBATCH=(sbatch --parsable --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE")
if [[ $GRES == 1 ]]; then
  SBATCH+=(--gres="gpu:$GPUS_PER_NODE")
else
  SBATCH+=(--gpus-per-node="$GPUS_PER_NODE")
fi
[[ -n $TIME ]] && SBATCH+=(--time="$TIME")
[[ -n $PARTITION ]] && SBATCH+=(--partition="$PARTITION")
[[ -n $ACCOUNT ]] && SBATCH+=(--account="$ACCOUNT")
[[ -n $QOS ]] && SBATCH+=(--qos="$QOS")
[[ -n $OUTPUT ]] && SBATCH+=(--output="$OUTPUT")
SBATCH+=(${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"})

# train.sbatch's arguments: normalized trainer flags.
JOB_ARGS=(--tasks-per="$TASKS_PER" --gpus-per-node="$GPUS_PER_NODE")
for f in "${GIN_FILES[@]}"; do
  JOB_ARGS+=("--gin_file=$f")
done
JOB_ARGS+=("--model-dir=$MODEL_DIR" ${GIN_ARGS[@]+"${GIN_ARGS[@]}"})
for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
  JOB_ARGS+=("--env=$kv")
done
JOB_ARGS+=(${FORWARD[@]+"${FORWARD[@]}"})
if [[ ${#TRAINER_EXTRA[@]} -gt 0 ]]; then
  JOB_ARGS+=(-- "${TRAINER_EXTRA[@]}")
fi

previous=""
for ((i = 1; i <= CHAIN; i++)); do
  dependency=()
  if [[ -n $previous ]]; then
    dependency=(--dependency="afterany:$previous")
  fi
  if is_dry_run; then
    run "${SBATCH[@]}" ${dependency[@]+"${dependency[@]}"} "$SBATCH_SCRIPT" "${JOB_ARGS[@]}"
    job_id="<job-$i>"
  else
    job_id=$("${SBATCH[@]}" ${dependency[@]+"${dependency[@]}"} "$SBATCH_SCRIPT" "${JOB_ARGS[@]}")
    job_id=${job_id%%;*}   # --parsable prints ID or ID;CLUSTER
    echo "$job_id"
  fi
  note "$(is_dry_run && echo "would submit" || echo submitted) job $i/$CHAIN: $job_id${previous:+ (after $previous)}"
  previous=$job_id
done
note "output: ${OUTPUT:-$JOB_NAME-<job id>.out} in $PWD; MODEL_DIR=$MODEL_DIR"
note "resume after a preemption or time limit: run the same command again (or use --chain N)"
