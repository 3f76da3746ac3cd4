#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's sentence-compression quality table: fine-tunes
# the systems from all-MiniLM-L6-v2 (narlm/gin/compare/sentcomp_minilm_*.gin:
# each evaluated on the whole dev split every 125 steps and kept at its best
# dev ROUGE-L, capped by a CPU budget), then scores them with narlm.compare
# on the test split beside the copy / lead-k baselines, with paired-bootstrap
# intervals for the CRF - no-CRF differences.
#
# Systems named *_distilled are trained on distilled targets (sequence-level
# knowledge distillation): the seed-0 tagger (the strongest system) is trained
# first if it is not there, `narlm.distill` decodes the training split with it
# into OUT_DIR/distilled, and those arms start once it has.
#
# Usage: bash scripts/quality_comparison.sh [OUT_DIR]   (default /tmp/narlm_compare)
# Env:   PYTHON (default .venv/bin/python), JOBS (parallel trainings, default 2),
#        SYSTEMS (default "crf_aligned nar_aligned tagger prefix_lm crf ar";
#        "nar" is the left-aligned no-CRF run, "prefix_lm" / "ar" the AR
#        baselines: NAG-BERT's own parameters as a prefix LM / BERT2BERT;
#        also crf_distilled, nar_distilled, prefix_lm_distilled),
#        BUDGET (CPU seconds per run, default 9000: a cap early stopping
#        comes in under), SEED (default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/narlm_compare}
PYTHON=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-2}
SYSTEMS=${SYSTEMS:-"crf_aligned nar_aligned tagger prefix_lm crf ar"}
BUDGET=${BUDGET:-9000}
SEED=${SEED:-0}
mkdir -p "$OUT"

export NARLM_DISTILLED_DIR="$OUT/distilled"
TEACHER="$OUT/sentcomp_tagger_s0"

train() {  # system [seed]
  local sys=$1 seed=${2:-$SEED}
  local dir="$OUT/sentcomp_${sys}_s${seed}"
  if [[ -f "$dir/train.done" ]]; then return 0; fi
  "$PYTHON" -m narlm.train --gin_file="narlm/gin/compare/sentcomp_minilm_${sys}.gin" \
    --gin.MODEL_DIR="\"$dir\"" --gin.MAX_TRAIN_CPU_SECONDS="$BUDGET" --gin.RANDOM_SEED="$seed" \
    > "$dir.log" 2>&1
  touch "$dir/train.done"
}

train_all() {  # system...; stops the script (after the others end) if one fails
  local running=0 failed=0 sys
  for sys in "$@"; do
    train "$sys" &
    running=$((running + 1))
    if (( running >= JOBS )); then wait -n || failed=1; running=$((running - 1)); fi
  done
  while (( running > 0 )); do wait -n || failed=1; running=$((running - 1)); done
  if (( failed )); then echo "error: a training failed; see the logs in $OUT" >&2; exit 1; fi
}

# What narlm.compare gets, and which stage trains each system; an unknown name
# stops the script here, before hours of training.
plain=() distilled=()
systems=()
diffs=()
for sys in $SYSTEMS; do
  if [[ $sys == *_distilled ]]; then distilled+=("$sys"); else plain+=("$sys"); fi
  dir="$OUT/sentcomp_${sys}_s${SEED}"
  case $sys in
    crf) systems+=(--system "nar_crf=$dir:viterbi" --system "nar_crf_ratio_first=$dir:ratio_first"
                   --system "nar_crf_argmax=$dir:argmax") ;;
    crf_aligned) systems+=(--system "aligned_crf=$dir:viterbi" --system "aligned_crf_argmax=$dir:argmax")
                 diffs+=(--diff "aligned_crf,aligned_crf_argmax") ;;
    nar) systems+=(--system "nar=$dir:argmax") ;;
    nar_aligned) systems+=(--system "aligned_nar=$dir:argmax") ;;
    tagger) systems+=(--system "tagger=$dir:tag") ;;
    ar) systems+=(--system "ar=$dir:greedy") ;;
    prefix_lm) systems+=(--system "ar_prefix_lm=$dir:greedy") ;;
    crf_distilled) systems+=(--system "distilled_crf=$dir:viterbi" --system "distilled_crf_argmax=$dir:argmax")
                   diffs+=(--diff "distilled_crf,distilled_crf_argmax") ;;
    nar_distilled) systems+=(--system "distilled_nar=$dir:argmax") ;;
    prefix_lm_distilled) systems+=(--system "distilled_ar_prefix_lm=$dir:greedy") ;;
    *) echo "unknown system $sys" >&2; exit 2 ;;
  esac
done
[[ " $SYSTEMS " == *" crf_aligned "* && " $SYSTEMS " == *" nar_aligned "* ]] && diffs+=(--diff "aligned_crf,aligned_nar")
[[ " $SYSTEMS " == *" crf "* && " $SYSTEMS " == *" nar "* ]] && diffs+=(--diff "nar_crf,nar")
[[ " $SYSTEMS " == *" crf_distilled "* && " $SYSTEMS " == *" nar_distilled "* ]] && diffs+=(--diff "distilled_crf,distilled_nar")

train_all "${plain[@]}"
if (( ${#distilled[@]} )); then
  train tagger 0  # the teacher (already there when SYSTEMS has tagger and SEED is 0)
  # distill writes its output atomically, distill.json last.
  if [[ ! -f "$NARLM_DISTILLED_DIR/sentcomp/distill.json" ]]; then
    "$PYTHON" -m narlm.distill --model_dir "$TEACHER" --method tag --task sentcomp_bert \
      --out "$NARLM_DISTILLED_DIR/sentcomp" > "$OUT/distill.log" 2>&1
  fi
  train_all "${distilled[@]}"
fi

"$PYTHON" -m narlm.compare --task sentcomp_bert --key sentcomp --alphas 0.3,0.4,0.5,0.6,0.7,0.8,1.0 \
  "${systems[@]}" "${diffs[@]}" --out "$OUT/quality.json" > "$OUT/compare_sentcomp.log" 2>&1
echo "wrote $OUT/quality.json"
