#!/usr/bin/env bash
# Installs narlm (and jax[tpu]) on every worker of a TPU VM slice.
set -euo pipefail
# shellcheck source=launch/tpu/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

JAX_TPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE [source] [options]

On every worker (gcloud ... ssh --worker=all): makes a Python >= 3.11
virtualenv (jax 0.10 needs it; TPU VM images ship 3.10, so python3.11 is
apt-installed if missing), installs narlm into it, then installs
jax[tpu]==<the jax version narlm pins> from the TPU release index
($JAX_TPU_INDEX) -- the one place that needs the TPU extra -- and prints
each worker's device count. Re-running updates the code (the default source replaces the worker's copy,
so files deleted locally go too) and reinstalls.

Source of the code (one of):
  (default)          this checkout's working tree (uncommitted changes included):
                     tar'ed locally, copied to every worker with tpu-vm scp, unpacked
  --git-url URL      git clone/fetch URL on the workers
    --git-ref REF    branch, tag or commit to check out (default: main)
  --pip-spec SPEC    pip install SPEC (a wheel URL, git+https://...@REF, ...);
                     gin files are package data, found by narlm.train as narlm/gin/...

Options:
  --python BIN       interpreter for the virtualenv on the workers (default: python3.11)
  --remote-dir DIR   checkout / working dir on the workers (default: $REMOTE_DIR, under \$HOME)
  --venv DIR         virtualenv on the workers (default: $VENV_DIR, under \$HOME)
  --with-t5x         also clone and pip install t5x (for train.sh --trainer=t5x)
    --t5x-git-url URL  (default: https://github.com/google-research/t5x)
    --t5x-ref REF      (default: main)
  --no-verify        skip the jax device check at the end

$TPU_COMMON_USAGE

Example:
  $(basename "$0") --name narlm-v4-32 --zone us-central2-b
EOF
}

SOURCE=local
GIT_URL=""
GIT_REF=main
PIP_SPEC=""
PYTHON_BIN=python3.11
WITH_T5X=0
T5X_GIT_URL=https://github.com/google-research/t5x
T5X_REF=main
VERIFY=1
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --git-url|--git-url=*) take_value "$@"; GIT_URL=$VALUE ;;
    --git-ref|--git-ref=*) take_value "$@"; GIT_REF=$VALUE ;;
    --pip-spec|--pip-spec=*) take_value "$@"; PIP_SPEC=$VALUE ;;
    --python|--python=*) take_value "$@"; PYTHON_BIN=$VALUE ;;
    --remote-dir|--remote-dir=*) take_value "$@"; REMOTE_DIR=$VALUE ;;
    --venv|--venv=*) take_value "$@"; VENV_DIR=$VALUE ;;
    --with-t5x) WITH_T5X=1; SHIFT=1 ;;
    --t5x-git-url|--t5x-git-url=*) take_value "$@"; T5X_GIT_URL=$VALUE ;;
    --t5x-ref|--t5x-ref=*) take_value "$@"; T5X_REF=$VALUE ;;
    --t5x-dir|--t5x-dir=*) take_value "$@"; T5X_DIR=$VALUE ;;
    --no-verify) VERIFY=0; SHIFT=1 ;;
    *) take_tpu_arg "$@" || die "unknown argument '$1'" ;;
  esac
  shift "$SHIFT"
done

check_tpu_args
case ${REMOTE_DIR%/} in
  ""|.|"~"|/) die "--remote-dir must name a directory of its own, got '$REMOTE_DIR'" ;;
esac
if [[ -n $GIT_URL && -n $PIP_SPEC ]]; then
  die "--git-url and --pip-spec are exclusive"
fi
if [[ -n $GIT_URL ]]; then
  SOURCE=git
elif [[ -n $PIP_SPEC ]]; then
  SOURCE=pip
fi

REMOTE_TARBALL=narlm-src.tgz
if [[ $SOURCE == local ]]; then
  [[ -f $NARLM_REPO/setup.py ]] || die "$NARLM_REPO is not a narlm checkout (no setup.py); use --git-url or --pip-spec"
  # setup.py reads README.md for long_description: without it every worker's
  # pip install fails, so fail here instead (self-expiring check).
  if grep -q 'open("README.md"' "$NARLM_REPO/setup.py" && [[ ! -f $NARLM_REPO/README.md ]]; then
    msg="$NARLM_REPO/setup.py reads README.md, which is missing: pip install -e . would fail on every worker"
    if is_dry_run; then warn "$msg"; else die "$msg"; fi
  fi
  LOCAL_TARBALL=${TMPDIR:-/tmp}/narlm-src-$TPU_NAME.tgz
  # COPYFILE_DISABLE: no macOS ._ files in the archive.
  run env COPYFILE_DISABLE=1 tar -C "$NARLM_REPO" -czf "$LOCAL_TARBALL" \
    --exclude=.git --exclude=.venv --exclude=venv --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache --exclude=build --exclude=dist \
    --exclude=./runs --exclude=./tmp .
  tpu_scp_all "$LOCAL_TARBALL" "$REMOTE_TARBALL"
  if ! is_dry_run; then
    rm -f "$LOCAL_TARBALL"
  fi
fi

# The remote script (POSIX sh): settings, then a fixed body.
SETTINGS="set -e
repo=$(rpath "$REMOTE_DIR")
venv=$(rpath "$VENV_DIR")
t5x_dir=$(rpath "$T5X_DIR")
python_bin=$(dq "$PYTHON_BIN")
source_mode=$SOURCE
tarball=$(rpath "$REMOTE_TARBALL")
git_url=$(dq "$GIT_URL")
git_ref=$(dq "$GIT_REF")
pip_spec=$(dq "$PIP_SPEC")
with_t5x=$WITH_T5X
t5x_git_url=$(dq "$T5X_GIT_URL")
t5x_ref=$(dq "$T5X_REF")
verify=$VERIFY
jax_tpu_index=$JAX_TPU_INDEX"

BODY=$(cat <<'EOF'
h=$(hostname)
say() { echo "[$h] $*"; }
if ! command -v "$python_bin" >/dev/null 2>&1; then
  case $python_bin in
    python3.[0-9]*)
      say "installing $python_bin (jax needs Python >= 3.11)"
      sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
      sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$python_bin" "$python_bin-venv" ;;
    *) echo "error: [$h] $python_bin not found" >&2; exit 3 ;;
  esac
fi
[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel
if [ "$with_t5x" = 1 ]; then
  if [ -d "$t5x_dir/.git" ]; then git -C "$t5x_dir" remote set-url origin "$t5x_git_url"
  else git clone -q "$t5x_git_url" "$t5x_dir"; fi
  git -C "$t5x_dir" fetch -q origin "$t5x_ref"
  git -C "$t5x_dir" checkout -q --force FETCH_HEAD
  say "installing t5x $(git -C "$t5x_dir" rev-parse --short HEAD) (installed before narlm, so the narlm pins win)"
  pip install -q -e "$t5x_dir"
fi
case $source_mode in
  local)
    # Replace the tree (files deleted locally must go), but only a narlm one.
    if [ -d "$repo" ] && [ ! -f "$repo/narlm/__init__.py" ] && [ -n "$(ls -A "$repo")" ]; then
      echo "error: [$h] $repo exists and is not a narlm checkout: not replacing it (pass --remote-dir)" >&2
      exit 3
    fi
    rm -rf "$repo.new"
    mkdir -p "$repo.new"
    tar -xzf "$tarball" -C "$repo.new"
    rm -rf "$repo"
    mv "$repo.new" "$repo"
    rm -f "$tarball"
    say "installing narlm from the uploaded working tree into $venv"
    pip install -q -e "$repo" ;;
  git)
    if [ -d "$repo/.git" ]; then git -C "$repo" remote set-url origin "$git_url"
    else git clone -q "$git_url" "$repo"; fi
    git -C "$repo" fetch -q origin "$git_ref"
    git -C "$repo" checkout -q --force FETCH_HEAD
    say "installing narlm $(git -C "$repo" rev-parse --short HEAD) into $venv"
    pip install -q -e "$repo" ;;
  pip)
    mkdir -p "$repo"
    say "installing $pip_spec into $venv"
    pip install -q --force-reinstall --no-deps "$pip_spec"
    pip install -q "$pip_spec" ;;
esac
# The one place that needs the TPU extra: narlm pins jax[cpu]; add libtpu for
# the same jax version from the TPU release index.
jax_version=$("$venv/bin/python" -c "import jax; print(jax.__version__)")
say "installing jax[tpu]==$jax_version from $jax_tpu_index"
pip install -q "jax[tpu]==$jax_version" -f "$jax_tpu_index"
if [ "$verify" = 1 ]; then
  "$venv/bin/python" -c "import jax, narlm; print(jax.__version__, jax.devices()[0].platform, jax.local_device_count(), jax.device_count())" \
    | sed "s|^|[$h] jax version, platform, local devices, global devices: |"
fi
say "ready: $venv, working dir $repo"
EOF
)

tpu_ssh all "$SETTINGS
$BODY"
note "next: launch/tpu/train.sh --name $TPU_NAME ${GCLOUD_SCOPE[*]} --gin_file=narlm/gin/pretrain_base.gin --model-dir=gs://BUCKET/narlm/RUN"
