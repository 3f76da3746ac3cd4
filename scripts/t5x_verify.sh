#!/usr/bin/env bash
# The "Verified runs" of docs/t5x.md: narlm's experiment files under real t5x
# and under narlm's trainer, checkpoints both ways, eval/infer, a user's task.
#
# usage: T5X_PY=/path/t5x_venv/bin/python T5X_DIR=/path/t5x OUT=/tmp/t5x_verify \
#          bash scripts/t5x_verify.sh          (from the narlm checkout)
# T5X_PY: a python with t5x + narlm installed (docs/t5x.md, "Install").
# Each run's log is OUT/<n>_<name>.log; a summary line per run goes to stdout.
# ~15 min on 2 CPU cores.
set -uo pipefail
: "${T5X_PY:?set T5X_PY to the t5x venv python}" "${T5X_DIR:?set T5X_DIR to the t5x checkout}"
OUT=${OUT:-/tmp/t5x_verify}
NARLM=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAIN=$T5X_DIR/t5x/train.py
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$OUT" || exit 1   # any cwd works: gin files resolve through the installed narlm
n=0
run() {  # run NAME CMD...: logs to OUT/<n>_NAME.log, prints rc, wall time and key lines
  local name=$1; shift
  n=$((n + 1))
  local log="$OUT/${n}_${name}.log" start=$SECONDS
  "$@" > "$log" 2>&1
  local rc=$?
  echo "$n $name rc=$rc $((SECONDS - start))s"
  grep -aE "collection=train (crf|loss)|\] collection=training_eval/[a-z_]+ crf|^step +[0-9]+/|Restoring checkpoint from|resuming from|^error|Error:" "$log" \
    | sed -E 's/^I[0-9]{4} [0-9:.]+ +[0-9]+ [a-z_]+\.py:[0-9]+\] //' | cut -c1-220 | tail -4 | sed 's/^/    /'
}
LEN="{'inputs': 32, 'targets': 32}"

# 1-2: the issue's command, t5x then narlm's trainer, same experiment file.
PRE=(--gin_file=narlm/gin/pretrain_base.gin --gin.MIXTURE_OR_TASK_NAME="'narlm_wiki_books_local'"
     --gin.TRAIN_STEPS=3 --gin.BATCH_SIZE=4 "--gin.TASK_FEATURE_LENGTHS=$LEN"
     --gin.CHECKPOINT_PERIOD=3 --gin.ACTIVATION_DTYPE="'float32'")
run t5x_pretrain_base "$T5X_PY" "$TRAIN" "${PRE[@]}" --gin.MODEL_DIR="'$OUT/t5x_base'"
run narlm_pretrain_base "$T5X_PY" -m narlm.train "${PRE[@]}" --gin.MODEL_DIR="'$OUT/narlm_base'"

# 3-4: the tiny CPU experiment under t5x, 2 steps, then resumed to 4.
TINY=(--gin_file=narlm/gin/tiny_cpu.gin --gin.CHECKPOINT_PERIOD=2 --gin.EVAL_STEPS=2)
run t5x_tiny "$T5X_PY" "$TRAIN" "${TINY[@]}" --gin.TRAIN_STEPS=2 --gin.MODEL_DIR="'$OUT/t5x_tiny'"
cp -r "$OUT/t5x_tiny" "$OUT/t5x_tiny_for_narlm"
run t5x_tiny_resume "$T5X_PY" "$TRAIN" "${TINY[@]}" --gin.TRAIN_STEPS=4 --gin.MODEL_DIR="'$OUT/t5x_tiny'"

# 5: t5x -> narlm: narlm's trainer continues t5x's MODEL_DIR (step 2 -> 4).
run narlm_continues_t5x "$T5X_PY" -m narlm.train "${TINY[@]}" --gin.TRAIN_STEPS=4 \
  --gin.EVALUATOR_NUM_EXAMPLES=0 --gin.MODEL_DIR="'$OUT/t5x_tiny_for_narlm'"

# 6-8: narlm -> t5x: a narlm run, exported, continued by t5x (step 2 -> 4).
run narlm_tiny "$T5X_PY" -m narlm.train "${TINY[@]}" --gin.TRAIN_STEPS=2 \
  --gin.EVALUATOR_NUM_EXAMPLES=0 --gin.MODEL_DIR="'$OUT/narlm_tiny'"
run export_to_t5x "$T5X_PY" -m narlm.t5x_checkpoints --model_dir "$OUT/narlm_tiny" --out "$OUT/t5x_from_narlm"
run t5x_continues_narlm "$T5X_PY" "$TRAIN" "${TINY[@]}" --gin.TRAIN_STEPS=4 --gin.MODEL_DIR="'$OUT/t5x_from_narlm'"

# 9-10: fine-tuning route: all-MiniLM-L6-v2 converted once, then the MiniLM
# experiment under t5x (parameters only from INITIAL_CHECKPOINT_PATH).
MINILM=$("$T5X_PY" -c "from narlm import hf_bert; print(hf_bert.minilm_checkpoint_dir())" 2>/dev/null)
run convert_minilm "$T5X_PY" "$NARLM/scripts/hf_bert_to_t5x.py" narlm/gin/models/minilm_l6.gin "$MINILM" "$OUT/minilm_t5x"
run t5x_finetune_minilm "$T5X_PY" "$TRAIN" --gin_file=narlm/gin/finetune_sentcomp_minilm_cpu.gin \
  --gin.MODEL_DIR="'$OUT/t5x_minilm'" --gin.INITIAL_CHECKPOINT_PATH="'$OUT/minilm_t5x/checkpoint_0'" \
  --gin.TRAIN_STEPS=2 --gin.CHECKPOINT_PERIOD=2 --gin.BATCH_SIZE=4 --gin.EVAL_STEPS=2 \
  --gin.EVALUATOR_NUM_EXAMPLES=8 --gin.WARMUP_STEPS=1

# 11-12: infer.py (score) and eval.py on the fine-tuned checkpoint.
EVAL_COMMON=(--gin_file=narlm/gin/models/minilm_l6.gin --gin.MIXTURE_OR_TASK_NAME="'sentcomp_bert'"
             --gin.CHECKPOINT_PATH="'$OUT/t5x_minilm/checkpoint_2'")
run t5x_infer_score "$T5X_PY" "$T5X_DIR/t5x/infer.py" "${EVAL_COMMON[@]}" \
  --gin_file=narlm/gin/t5x/runs/infer.gin "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}" \
  --gin.INFER_OUTPUT_DIR="'$OUT/infer'" --gin.infer.mode="'score'" --gin.utils.DatasetConfig.batch_size=32
run t5x_eval "$T5X_PY" "$T5X_DIR/t5x/eval.py" "${EVAL_COMMON[@]}" --gin_file=narlm/gin/t5x/runs/eval.gin \
  --gin.EVAL_OUTPUT_DIR="'$OUT/eval'" --gin.seqio.Evaluator.num_examples=16 --gin.utils.DatasetConfig.batch_size=8

# 13: a user's own seqio task (the README's "Adding a task"), found by t5x
# through a gin `import` and PYTHONPATH.
mkdir -p "$OUT/user" && cat > "$OUT/user/my_tasks.py" <<'PY'
import seqio

from narlm.tasks import finetuning, metrics, sources
from narlm.tasks import preprocessors as prep

seqio.TaskRegistry.add(
    "my_task_bert",
    source=sources.PairedTextFileSource(finetuning.SRC_TGT_SPLITS, base_dir=__import__("os").environ["MY_DATA"]),
    output_features=finetuning.BERT_FEATURES,
    preprocessors=finetuning.TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(finetuning.BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)
PY
printf "from __gin__ import dynamic_registration\nimport my_tasks\ninclude 'narlm/gin/tiny_cpu.gin'\nMIXTURE_OR_TASK_NAME = 'my_task_bert'\n" > "$OUT/user/my_experiment.gin"
DATA=$("$T5X_PY" -c "from narlm.tasks import sources; print(sources.shared_dir('sentcomp')())" 2>/dev/null)
run t5x_user_task env PYTHONPATH="$OUT/user" MY_DATA="$DATA" "$T5X_PY" "$TRAIN" \
  --gin_file="$OUT/user/my_experiment.gin" --gin.TRAIN_STEPS=2 --gin.CHECKPOINT_PERIOD=2 \
  --gin.EVAL_STEPS=2 --gin.MODEL_DIR="'$OUT/t5x_user'"
