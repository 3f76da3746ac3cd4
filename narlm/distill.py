r"""Sequence-level knowledge distillation: a task's data with a teacher's outputs.

The standard recipe for non-autoregressive models (Kim & Rush, 2016; Gu et
al., 2018): decode the training sources with a trained teacher (normally the
autoregressive baseline) and train the NAR model on the teacher's outputs,
which are less multi-modal than the references.

Usage::

  python -m narlm.distill --model_dir /tmp/cmp/sentcomp_ar --method greedy \
      --task sentcomp_bert --out /data/distilled/sentcomp \
      [--splits train] [--batch_size 32] [--limit N] [--alpha A] [--overwrite]
  export NARLM_DISTILLED_DIR=/data/distilled     # the task reads .../sentcomp
  python -m narlm.train --gin_file=narlm/gin/tiny_cpu.gin \
      --gin.MIXTURE_OR_TASK_NAME="'sentcomp_distilled_bert'" --gin.MODEL_DIR=...

`--model_dir` is a narlm training run (its config.gin and newest checkpoint
are loaded by `narlm.run_dirs.load_model`); `--method` is `greedy` for an
ArSeq2SeqModel run, `argmax`, `viterbi` or `ratio_first` (with `--alpha`
unless the run binds RATIO_FIRST_ALPHA) for a NagBertModel run, `tag` for a
TaggerModel run (a deletion teacher, whose outputs the aligned task
sentcomp_distilled_aligned_bert lays over the source exactly). Decoding is
`narlm.predictor.Predictor`'s (sources framed as in training, length-bucketed,
jitted); inputs longer than the run's input length are truncated as in
training (counted in distill.json).

Output, `--out DIR` (the layout `{train,dev,test}.{src,tgt}` of
`narlm.tasks.finetuning.SRC_TGT_SPLITS`):

* each distilled split (`--splits`, default train): `.src` = the task's
  source text (`inputs_pretokenized`, one per line), `.tgt` = the teacher's
  detokenised output for that line. With `--limit N` only the split's first N
  examples are decoded *and written* (a smoke run yields a small train set).
* every other split (validation = dev, test) is the original task's gold data:
  a byte-identical copy of its files when the split is a whole file pair, else
  its examples' `*_pretokenized` strings. Never distil what you evaluate on.
* `distill.json`: run dir, kind, method, alpha, checkpoint step (the run's
  best-validation checkpoint when it kept one, else its newest), task, per-split
  counts, wall time and the command.

DIR is built in a hidden sibling temp directory and renamed into place at the
end, so a killed run never leaves a DIR that looks complete. An existing
non-empty DIR is refused unless `--overwrite` (and then only if it holds a
distill.json, i.e. is an earlier output of this tool).

Bad input (missing/empty run dir, unknown task, empty split, non-empty --out,
a method the run cannot do) exits 2 with one line on stderr naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Callable, Optional, Sequence

from narlm import compare

METHODS = compare.NAR_METHODS + compare.AR_METHODS + compare.TAG_METHODS


def _one_line(text: str) -> str:
  """A string that is safe as one line of a line-aligned text file.

  Only CR/LF are replaced: the reader (tf.data.TextLineDataset) splits on
  those alone, and other Unicode separators are kept as the source had them.
  """
  return text.replace("\r", " ").replace("\n", " ").strip()


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def teacher_step(model_dir: str) -> int:
  """The checkpoint step a teacher decodes with: the run's best-validation
  checkpoint when it kept one (what `restore_params` loads by default), else
  its newest complete checkpoint (FileNotFoundError if it has none)."""
  from narlm import run_dirs  # pylint: disable=g-import-not-at-top
  best = run_dirs.best_checkpoint_step(model_dir)
  if best is not None:
    return int(best)
  return latest_step(model_dir)


def latest_step(model_dir: str) -> int:
  """The newest complete checkpoint step of a run (FileNotFoundError if none)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(model_dir if "://" in model_dir else os.path.abspath(model_dir))
  path = path / "checkpoints"
  step = None
  if path.is_dir():
    with ocp.CheckpointManager(path) as manager:
      step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"--model_dir {model_dir}: no complete checkpoint under {path}")
  return int(step)


def check_out(out: str, overwrite: bool) -> None:
  """Refuses an --out that is a file, or a non-empty dir (unless --overwrite)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out} exists and is not a directory")
  entries = os.listdir(out) if os.path.isdir(out) else []
  if entries and not overwrite:
    raise ValueError(f"--out {out} exists and is not empty ({len(entries)} entries); "
                     "pass --overwrite to replace it")
  if entries and "distill.json" not in entries:
    raise ValueError(f"--out {out} is not empty and holds no distill.json (not an output of "
                     "narlm.distill): refusing to replace it even with --overwrite")


def decode_examples(predictor, kwargs: dict, examples: Sequence[dict],
                    log: Callable[[str], None]) -> tuple:
  """Teacher outputs for `examples`, in their order.

  The sources are framed and truncated as the teacher was trained
  (`Predictor.prepare`); `kwargs` are its decoding arguments
  (`narlm.compare.decode_kwargs`, with alpha). Returns (outputs: list of id
  lists, seconds).
  """
  inputs = [predictor.prepare(ex["inputs"]) for ex in examples]
  order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
  outputs: list = [None] * len(inputs)
  step = 20 * predictor.batch_buckets[-1]  # a progress line per 20 batches
  t0 = time.perf_counter()
  for start in range(0, len(order), step):
    idx = order[start:start + step]
    for i, out in zip(idx, predictor.predict([inputs[i] for i in idx], **kwargs)):
      outputs[i] = out
    log(f"[distill] {start + len(idx)}/{len(inputs)} decoded "
        f"({time.perf_counter() - t0:.0f} s)")
  return outputs, time.perf_counter() - t0


def _write_lines(path: str, lines: Sequence[str]) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.writelines(line + "\n" for line in lines)


def _copy_gold(task, split: str, src: str, tgt: str) -> dict[str, Any]:
  """Writes the gold `split` of `task` to src/tgt: a byte copy of whole files."""
  from narlm.tasks import sources  # pylint: disable=g-import-not-at-top
  source = task.source
  if isinstance(source, sources.PairedTextFileSource):
    files = source.files(split)
    if source.line_range(split) == (0, sources.scan_pair(*files)["pairs"]):
      shutil.copyfile(files[0], src)
      shutil.copyfile(files[1], tgt)
      return {"copied_from": list(files), "examples": source.num_input_examples(split)}
  # A line range of a file, or not a text-file source: the split's examples.
  examples = compare.load_examples(task.name, split)
  _write_lines(src, [_one_line(_text(ex["inputs_pretokenized"])) for ex in examples])
  _write_lines(tgt, [_one_line(_text(ex["targets_pretokenized"])) for ex in examples])
  return {"written_from": "task examples", "examples": len(examples)}


def distill(model_dir: str, method: str, task_name: str, out: str, *,
            splits: Sequence[str] = ("train",), batch_size: int = 32,
            limit: Optional[int] = None, alpha: Optional[float] = None,
            overwrite: bool = False, command: str = "",
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes the distilled copy of `task_name` to `out`; returns distill.json's record.

  Cheap checks (arguments, --out, the run's files) come before the heavy
  imports and loads, so bad input fails fast.
  """
  t0 = time.time()
  if method not in METHODS:
    raise ValueError(f"--method {method!r}: expected one of {METHODS}")
  if batch_size < 1 or (limit is not None and limit < 1):
    raise ValueError(f"--batch_size and --limit must be positive, got {batch_size}, {limit}")
  check_out(out, overwrite)
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"--model_dir {model_dir} does not exist")
  if not os.path.isfile(os.path.join(model_dir, "config.gin")):
    raise FileNotFoundError(f"--model_dir {model_dir} has no config.gin: not a narlm "
                            "training run directory")
  import seqio  # pylint: disable=g-import-not-at-top
  from narlm import run_dirs  # pylint: disable=g-import-not-at-top
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  from narlm.tasks import finetuning  # pylint: disable=g-import-not-at-top
  task = tasks.get_task_or_mixture(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"--task {task_name} is a mixture: distil one of its tasks")
  layout = {s: files for s, files in finetuning.SRC_TGT_SPLITS.items()
            if s in task.source.splits}
  for split in splits:
    if split not in layout:
      raise ValueError(f"--splits: task {task_name} has no split {split!r}; "
                       f"splits: {list(layout)}")
  # The teacher is the run at its validation optimum, not its last step (an
  # early-stopped run's last checkpoint is past the optimum).
  step = teacher_step(model_dir)
  loaded = run_dirs.load_model(model_dir)
  kwargs = compare.decode_kwargs(loaded, method)  # checks method vs. model
  predictor = compare.make_predictor(loaded, batch_size)
  max_length = predictor.max_length
  if method == "ratio_first" and alpha is None and getattr(
      loaded.model, "ratio_first_alpha", None) is None:
    raise ValueError("--method ratio_first needs --alpha (the run binds no RATIO_FIRST_ALPHA)")
  vocab = loaded.model.output_vocabulary
  examples = {s: compare.load_examples(task_name, s, limit) for s in splits}

  parent, name = os.path.split(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  record: dict[str, Any] = {
      "model_dir": os.path.abspath(model_dir), "kind": loaded.kind, "method": method,
      "alpha": alpha, "step": step, "task": task_name, "max_length": max_length,
      "batch_size": batch_size, "limit": limit, "distilled_splits": list(splits), "splits": {}}
  try:
    for split, (src_name, tgt_name) in layout.items():
      src, tgt = os.path.join(tmp, src_name), os.path.join(tmp, tgt_name)
      if split not in splits:
        record["splits"][split] = _copy_gold(task, split, src, tgt)
        continue
      exs = examples[split]
      if split != "train":
        log(f"[distill] warning: distilling {split!r}, a split that is evaluated on")
      log(f"[distill] decoding {len(exs)} {split} examples with {method} (step {step})")
      truncated = predictor.num_truncated
      outputs, seconds = decode_examples(predictor, compare.with_alpha(kwargs, alpha), exs, log)
      targets = [_one_line(vocab.decode(ids)) for ids in outputs]
      _write_lines(src, [_one_line(_text(ex["inputs_pretokenized"])) for ex in exs])
      _write_lines(tgt, targets)
      record["splits"][split] = {
          "examples": len(exs), "decode_s": seconds,
          "truncated_inputs": predictor.num_truncated - truncated,
          "empty_outputs": sum(not t for t in targets),
          "mean_output_tokens": sum(map(len, outputs)) / len(outputs)}
    record["wall_s"] = time.time() - t0
    record["command"] = command
    with open(os.path.join(tmp, "distill.json"), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1, sort_keys=True)
      f.write("\n")
    _publish(tmp, os.path.abspath(out))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log(f"[distill] wrote {out} ({record['wall_s']:.0f} s)")
  return record


def _publish(tmp: str, out: str) -> None:
  """Renames the finished `tmp` dir to `out` (replacing an old output)."""
  if os.path.isdir(out) and os.listdir(out):
    old = f"{tmp}.old"
    os.rename(out, old)  # from here until the next rename, `out` does not exist
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out)  # POSIX rename replaces an empty directory


def main(argv: Sequence[str]) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m narlm.distill",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True, help="teacher: a narlm training run")
  parser.add_argument("--method", required=True, choices=METHODS)
  parser.add_argument("--task", required=True, help="seqio task, e.g. sentcomp_bert")
  parser.add_argument("--out", required=True, help="output directory (created)")
  parser.add_argument("--splits", default="train",
                      help="comma-separated splits to distil (default train)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--limit", type=int, help="only the first N examples of each split")
  parser.add_argument("--alpha", type=float, help="ratio-first output/input length ratio")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing --out written by narlm.distill")
  args = parser.parse_args(argv)
  splits = [s.strip() for s in args.splits.split(",") if s.strip()]
  if not splits:
    raise ValueError(f"--splits {args.splits!r} names no split")
  return distill(args.model_dir, args.method, args.task, args.out, splits=splits,
                 batch_size=args.batch_size, limit=args.limit, alpha=args.alpha,
                 overwrite=args.overwrite,
                 command=shlex.join(["python", "-m", "narlm.distill", *argv]),
                 log=lambda m: print(m, file=sys.stderr, flush=True))


def run_cli(argv: Sequence[str]) -> int:
  """main() with bad input as one line on stderr and exit status 2 (narlm.cli_errors)."""
  from narlm import cli_errors  # pylint: disable=g-import-not-at-top
  return cli_errors.run(main, argv)


if __name__ == "__main__":
  sys.exit(run_cli(sys.argv[1:]))
