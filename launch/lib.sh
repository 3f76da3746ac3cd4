# shellcheck shell=bash
# shellcheck disable=SC2034  # variables set here are used by the sourcing scripts
# Helpers shared by narlm's launch scripts (launch/tpu/*.sh, launch/slurm/submit.sh).
# Sourced, never run. Written for bash >= 3.2 (macOS /bin/bash included):
# possibly-empty arrays are expanded as ${a[@]+"${a[@]}"}.
#
# Dry run: DRY_RUN=1 in the environment, or --dry-run on the command line,
# makes `run` print every external command (one shell-quoted line each, on
# stdout) instead of running it. Notes and warnings go to stderr.

NARLM_LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NARLM_REPO=$(cd "$NARLM_LAUNCH_DIR/.." && pwd)
DRY_RUN=${DRY_RUN:-0}

die() {
  printf 'error: %s\n' "$*" >&2
  printf '(%s --help shows the usage)\n' "$(basename "$0")" >&2
  exit 2
}

warn() { printf 'warning: %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" >&2; }

# DRY_RUN accepts 1/true/yes and 0/false/no/empty; anything else is an error
# (a typo must not turn a dry run into a real one).
check_dry_run() {
  case $DRY_RUN in
    1|true|TRUE|yes|YES) DRY_RUN=1 ;;
    0|false|FALSE|no|NO|"") DRY_RUN=0 ;;
    *) die "DRY_RUN must be 1 or 0, got '$DRY_RUN'" ;;
  esac
}
is_dry_run() { [[ $DRY_RUN == 1 ]]; }

_PLAIN_WORD='^[A-Za-z0-9_./:=,@%+^-]+$'

_OPTION_PREFIX='^(--[A-Za-z0-9_.-]+=)(.*)$'

# sq WORD: WORD quoted for a POSIX shell with single quotes (only if needed);
# --opt=VALUE is printed as --opt='VALUE' (same word, easier to read).
sq() {
  local s=$1 prefix=""
  if [[ $s =~ $_PLAIN_WORD ]]; then
    printf '%s' "$s"
    return
  fi
  if [[ $s =~ $_OPTION_PREFIX ]]; then
    prefix=${BASH_REMATCH[1]}
    s=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$prefix" "${s//\'/\'\\\'\'}"
}

# dq WORD: WORD quoted for a POSIX shell with double quotes (only if needed);
# used inside the scripts sent to TPU workers, so that the dry-run print of
# the whole --command (single-quoted by sq) stays readable.
dq() {
  local s=$1 prefix=""
  if [[ $s =~ $_PLAIN_WORD ]]; then
    printf '%s' "$s"
    return
  fi
  if [[ $s =~ $_OPTION_PREFIX ]]; then
    prefix=${BASH_REMATCH[1]}
    s=${BASH_REMATCH[2]}
  fi
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//\$/\\\$}
  s=${s//\`/\\\`}
  printf '%s"%s"' "$prefix" "$s"
}

# join_quoted QUOTER WORD...: the words quoted by QUOTER (sq or dq), space separated.
join_quoted() {
  local quoter=$1 out="" w
  shift
  for w in "$@"; do
    out+="${out:+ }$("$quoter" "$w")"
  done
  printf '%s' "$out"
}

# run CMD...: runs CMD, or prints it (shell-quoted) in dry-run mode.
run() {
  if is_dry_run; then
    printf '%s\n' "$(join_quoted sq "$@")"
  else
    "$@"
  fi
}

# take_value "$@": the value of option $1, given as `--opt=value` or `--opt value`.
# Sets VALUE and SHIFT (how many words to shift).
take_value() {
  if [[ $1 == *=* ]]; then
    VALUE=${1#*=}
    SHIFT=1
    return 0
  fi
  if [[ $# -lt 2 || $2 == --* ]]; then
    die "$1 needs a value"
  fi
  VALUE=$2
  SHIFT=2
}

# require VALUE FLAG [HINT]: dies naming FLAG when VALUE is empty.
require() {
  if [[ -z $1 ]]; then
    die "missing required $2${3:+ ($3)}"
  fi
}

require_int() {  # require_int VALUE FLAG: a positive integer
  [[ $1 =~ ^[1-9][0-9]*$ ]] || die "$2 must be a positive integer, got '$1'"
}

# ------------------------------------------------------------------ trainer
# Trainer arguments shared by launch/tpu/train.sh and launch/slurm/submit.sh
# (launch/slurm/train.sbatch has its own copy: sbatch runs a spooled copy of
# the script, which cannot source files next to it).
GIN_FILES=()       # --gin_file (repeatable; at least one)
GIN_ARGS=()        # --gin.NAME=VALUE, --gin_bindings=..., --gin_search_paths=...
TRAINER_EXTRA=()   # everything after `--`, verbatim
MODEL_DIR=""
ENV_VARS=()        # --env KEY=VALUE (exported for the trainer)

# strip_quotes S: S without one layer of surrounding "..", '..' or \"..\"
# (so `--gin.MODEL_DIR=\"gs://b/x\"`, as the gin files document it, works).
strip_quotes() {
  local s=$1
  if [[ $s == \\\"*\\\" && ${#s} -ge 4 ]]; then
    s=${s:2:${#s}-4}
  elif [[ $s == \"*\" && ${#s} -ge 2 ]] || [[ $s == \'*\' && ${#s} -ge 2 ]]; then
    s=${s:1:${#s}-2}
  fi
  printf '%s' "$s"
}

# take_trainer_arg "$@": consumes one trainer argument (sets SHIFT);
# returns 1 when $1 is not one.
take_trainer_arg() {
  case $1 in
    --gin_file|--gin_file=*|--gin-file|--gin-file=*)
      take_value "$@"; GIN_FILES+=("$VALUE") ;;
    --model-dir|--model-dir=*|--model_dir|--model_dir=*)
      take_value "$@"; MODEL_DIR=$(strip_quotes "$VALUE") ;;
    --gin.MODEL_DIR=*)
      MODEL_DIR=$(strip_quotes "${1#*=}"); SHIFT=1 ;;
    --gin.*=*|--gin_bindings=*|--gin_search_paths=*)
      GIN_ARGS+=("$1"); SHIFT=1 ;;
    --gin.*|--gin_bindings|--gin_search_paths)
      die "write $1 as one word: $1=VALUE (string values in escaped quotes, e.g. --gin.X=\\\"text\\\")" ;;
    --env|--env=*)
      take_value "$@"
      [[ $VALUE =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes KEY=VALUE, got '$VALUE'"
      ENV_VARS+=("$VALUE") ;;
    *) return 1 ;;
  esac
}

check_trainer_args() {
  require "${GIN_FILES[0]:-}" --gin_file "an experiment gin, e.g. --gin_file=narlm/gin/pretrain_base.gin"
  require "$MODEL_DIR" --model-dir "the trainer's MODEL_DIR, e.g. --model-dir=gs://bucket/narlm/run (or --gin.MODEL_DIR=\\\"...\\\")"
  [[ $MODEL_DIR != *\"* ]] || die "--model-dir must not contain double quotes: '$MODEL_DIR'"
}

# gin_argv: sets GIN_ARGV to the trainer's gin flags (same for narlm.train and t5x).
gin_argv() {
  local f
  GIN_ARGV=()
  for f in "${GIN_FILES[@]}"; do
    GIN_ARGV+=("--gin_file=$f")
  done
  GIN_ARGV+=("--gin.MODEL_DIR=\"$MODEL_DIR\"")
  GIN_ARGV+=(${GIN_ARGS[@]+"${GIN_ARGS[@]}"})
}

# The bindings that make narlm.train.train call jax.distributed.initialize()
# (DistributedConfig's None fields are auto-detected by JAX on Cloud TPU and
# SLURM). Bindings parsed from the command line do not see the gin files'
# imports, hence the two import lines.
DISTRIBUTED_BINDINGS=(
  "--gin_bindings=from __gin__ import dynamic_registration"
  "--gin_bindings=from narlm import train as train_lib"
  "--gin.train_lib.train.distributed=@train_lib.DistributedConfig()"
)

# find_local_gin F: prints the local path of gin file F (as narlm.train would
# resolve it from the repo root), or nothing.
find_local_gin() {
  local f=$1
  if [[ -f $f ]]; then printf '%s' "$f"
  elif [[ -f $NARLM_REPO/$f ]]; then printf '%s' "$NARLM_REPO/$f"
  fi
}

# warn_if_unchecked_gin: warns about gin files that are not found locally
# (they may still exist on the workers/cluster).
warn_if_missing_gin() {
  local f
  for f in "${GIN_FILES[@]}"; do
    if [[ -z $(find_local_gin "$f") ]]; then
      warn "gin file $f is not in $PWD or $NARLM_REPO; assuming it exists where the trainer runs"
    fi
  done
}

# narlm.train (as of this writing) builds checkpoint paths with os.path.abspath
# and creates MODEL_DIR with os.makedirs, which turn gs://bucket/x into a local
# directory ./gs:/bucket/x. Warns while that code is there (self-expiring check).
warn_if_remote_model_dir_unsupported() {
  local train_py=$NARLM_REPO/narlm/train.py
  if [[ $MODEL_DIR == *://* && -f $train_py ]] \
      && grep -q 'os.path.abspath(os.path.join(model_dir' "$train_py"; then
    warn "narlm/train.py resolves MODEL_DIR with os.path.abspath/os.makedirs, so" \
         "$MODEL_DIR becomes a local directory on each host: checkpoints would not" \
         "reach the bucket and a recreated VM could not resume. See launch/README.md" \
         "(Known limitations)."
  fi
}
