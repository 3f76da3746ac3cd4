r"""What the distillation teacher lost by being fed unframed sources.

Before 61e2955 `narlm.distill` decoded the teacher on the task's raw source
ids, without the ``[CLS] x [SEP]`` framing every narlm model is trained with.
This decodes the first N sentcomp train sources with a tagger run both ways
(framed: what distill does now; unframed: what it did) and scores each
against the gold train targets with `narlm.compare`'s metrics.

Usage (BENCHMARKS.md, "Distillation redone with framed teacher inputs"):
  python scripts/distill_framing_check.py TAGGER_RUN_DIR [N] > framing.json
"""

import json
import sys
import time

from narlm import compare
from narlm import distill
from narlm import run_dirs
from narlm import tasks


def main(run: str, n: int) -> dict:
  task = tasks.get_task_or_mixture("sentcomp_bert")
  loaded = run_dirs.load_model(run)  # the best-validation checkpoint, as distill decodes with
  kwargs = compare.decode_kwargs(loaded, "tag")
  predictor = compare.make_predictor(loaded, 32)
  examples = compare.load_examples("sentcomp_bert", "train", n)
  vocab = loaded.model.output_vocabulary
  report = {"run": run, "teacher_step": distill.teacher_step(run), "examples": len(examples),
            "command": "python scripts/distill_framing_check.py " + " ".join(sys.argv[1:])}
  ways = {"framed": [predictor.prepare(ex["inputs"]) for ex in examples],
          "unframed": [ex["inputs"][:predictor.max_length].tolist() for ex in examples]}
  for name, inputs in ways.items():
    t0 = time.time()
    outputs = predictor.predict(inputs, **kwargs)
    predictions = [task.postprocess_fn(vocab.decode(ids), is_target=False) for ids in outputs]
    scores = compare.score(task, examples, predictions, outputs)
    report[name] = {k: scores[k] for k in ("rouge1", "rouge2", "rougeL", "token_f1",
                                           "mean_output_tokens")}
    report[name]["seconds"] = time.time() - t0
  return report


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8000),
                   indent=1, sort_keys=True))
