"""Evaluation inside training: loss over eval batches, decoded outputs
scored by the tasks' seqio metrics, the validation curve, best-checkpoint
selection and early stopping."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional

import jax
import numpy as np

from narlm import checksums
from narlm import console
from narlm.run_dirs import _append_jsonl, _best_checkpoint_dir, write_text_atomically
from narlm.train_data import get_dataset, get_task_or_mixture

if TYPE_CHECKING:
  from narlm.train import DatasetConfig, Trainer


def _batched_predictions(trainer: Trainer, params, ds, batch_size: int, decode_kwargs):
  """seqio predict_fn body: (index, features) dataset -> [(index, tokens)].

  Decoded by the trainer's `narlm.predictor.Predictor`, the one compare,
  distill and serve use: each row is stripped of its padding and re-padded to
  its length bucket, and an output that fills its bucket is decoded again
  wider, up to the feature row's width (the widest this evaluation decoded
  before the predictor existed).
  """
  pad_id = trainer.model.pad_id
  out = []
  for index, features in ds.batch(batch_size).as_numpy_iterator():
    tokens = np.asarray(features["encoder_input_tokens"])
    width = tokens.shape[1]
    predictor = trainer.predictor(width, batch_size)
    predictor.params = params
    real = tokens != pad_id
    lengths = np.where(real.any(axis=1), width - np.argmax(real[:, ::-1], axis=1), 1)
    outputs = predictor.predict([row[:n].tolist() for row, n in zip(tokens, lengths)],
                                **decode_kwargs)
    # Full padded rows, as t5x returns them: seqio stacks the predictions into
    # one array, and its vocab.decode drops the padding.
    out.extend((int(i), o + [pad_id] * (width - len(o))) for i, o in zip(index, outputs))
  return out


def evaluate_with_metrics(trainer: Trainer, params, cfg: DatasetConfig, *, step: int,
                          num_examples: Optional[int] = None,
                          decode_kwargs: Optional[Mapping[str, Any]] = None,
                          num_samples: int = 3):
  """Decodes `cfg.split` and computes the tasks' seqio metrics.

  Returns (metrics {task: {name: value}}, the first `num_samples`
  (input, prediction, target) strings per task).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  get_task_or_mixture(cfg.mixture_or_task_name)
  evaluator = seqio.Evaluator(
      mixture_or_task_name=cfg.mixture_or_task_name,
      feature_converter=trainer.model.FEATURE_CONVERTER_CLS(pack=False),
      eval_split=cfg.split, sequence_length=dict(cfg.task_feature_lengths),
      num_examples=num_examples, async_compute_metrics=False)
  decode_kwargs = dict(decode_kwargs or {})
  predictions: list[list[tuple[int, list[int]]]] = []

  def predict_fn(ds):
    out = _batched_predictions(trainer, params, ds, cfg.batch_size, decode_kwargs)
    predictions.append(out)
    return out

  metrics, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn)
  metrics = metrics.result() if hasattr(metrics, "result") else metrics
  samples = []
  vocab = trainer.model.output_vocabulary
  for task, task_predictions in zip(evaluator.eval_tasks, predictions):
    by_index = dict(task_predictions)
    cached = evaluator.cached_task_datasets[task.name]
    for i, ex in enumerate(cached.take(num_samples).as_numpy_iterator()):
      samples.append((ex.get("inputs_pretokenized", b"").decode("utf-8", "replace"),
                      vocab.decode(by_index.get(i, [])),
                      ex.get("targets_pretokenized", b"").decode("utf-8", "replace")))
  return metrics, samples


def _run_eval(trainer, state, cfg, step, writer, eval_steps, infer_eval_examples,
              decode_kwargs) -> dict[str, float]:
  model = trainer.model
  results: dict[str, float] = {}
  eval_ds = get_dataset(cfg, model, num_epochs=1, shard_index=jax.process_index(),
                        num_shards=jax.process_count())
  eval_step = trainer.compiled_eval_step()
  merged = None
  for i, local in enumerate(eval_ds.as_numpy_iterator()):
    if i >= eval_steps:
      break
    with trainer.mesh:
      m = eval_step(state["params"], trainer.global_batch(local))
    merged = m if merged is None else {k: merged[k].merge(m[k]) for k in m}
  if merged is not None:
    results.update({f"eval/{k}": float(v.compute()) for k, v in merged.items()})
  if infer_eval_examples != 0:
    metrics, samples = evaluate_with_metrics(trainer, state["params"], cfg, step=step,
                                             num_examples=infer_eval_examples,
                                             decode_kwargs=decode_kwargs)
    for task_name, task_metrics in metrics.items():
      for name, value in task_metrics.items():
        value = getattr(value, "value", value)
        if np.ndim(value) == 0:
          results[f"eval/{task_name}/{name}"] = float(value)
  else:
    samples = []
  if jax.process_index() == 0:
    for line in console.eval_lines(step, results, samples):
      console.say(line)
  writer.write_scalars(step, results)
  return results


def _check_output_vocab_coverage(model, cfg: DatasetConfig, warn_below: float = 0.99) -> None:
  """Warns when a restricted output vocabulary cannot produce part of the
  validation targets (e.g. a copy task whose references use words that no
  training target did)."""
  vocab = getattr(model.module, "output_vocab", None)
  if vocab is None:
    return
  from narlm import output_vocab as output_vocab_lib  # pylint: disable=g-import-not-at-top
  try:
    outside, total = output_vocab_lib.task_coverage(vocab, cfg.mixture_or_task_name, cfg.split)
  except Exception as e:  # pylint: disable=broad-except  (a check, never a reason to stop)
    logging.info("output vocabulary coverage not checked: %s", e)
    return
  if total and outside / total > 1.0 - warn_below:
    logging.warning(
        "OUTPUT_VOCAB (%d ids) lacks %.2f%% of the %s split's target tokens (%d of %d): the "
        "model can never produce them; for copy-heavy tasks use OUTPUT_VOCAB = None (the whole "
        "vocabulary) or output_vocab.from_task.include_inputs = True", vocab.size,
        100.0 * outside / total, cfg.split, outside, total)


class BestTracker:
  """Validation curve, best-checkpoint selection and early stopping.

  Every evaluation is appended to model_dir/validation_curve.jsonl. On
  resume the curve up to the restored step is read back, so the best value
  and the patience count continue exactly.
  """

  def __init__(self, model_dir: str, metric: Optional[str], mode: str,
               patience: Optional[int], start_step: int, write: bool = True):
    import json  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.model_dir, self.metric, self.mode, self.patience = model_dir, metric, mode, patience
    self.write = write
    self.curve_path = os.path.join(model_dir, "validation_curve.jsonl")
    self.best_value: Optional[float] = None
    self.best_step: Optional[int] = None
    self.evals_since_best = 0
    if start_step and tf.io.gfile.exists(self.curve_path):
      kept, dropped = [], 0
      with tf.io.gfile.GFile(self.curve_path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:
            continue  # a line cut short by a kill
          if record.get("step", start_step + 1) <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
            if metric:
              self._observe(record["step"], record.get(f"eval/{metric}"))
          else:
            dropped += 1
      if dropped and write:
        # Evaluations made after the restored checkpoint (before a kill) are
        # made again by the resumed run; keeping them would list those steps twice.
        write_text_atomically(self.curve_path, "".join(kept))
        console.say("resume: %d evaluation(s) after step %d dropped from %s; they are "
                    "made again", dropped, start_step, self.curve_path)

  def _better(self, value: float) -> bool:
    if self.best_value is None:
      return True
    return value > self.best_value if self.mode == "max" else value < self.best_value

  def _observe(self, step: int, value: Optional[float]) -> bool:
    if value is not None and np.isfinite(value) and self._better(value):
      self.best_value, self.best_step, self.evals_since_best = float(value), int(step), 0
      return True
    self.evals_since_best += 1
    return False

  def update(self, step: int, results: Mapping[str, float], params) -> bool:
    """Records one evaluation; saves `params` if it is a new best. Returns
    True when training should stop (patience used up)."""
    if self.write:
      _append_jsonl(self.curve_path, {"step": step, **results})
    if not self.metric:
      return False
    key = f"eval/{self.metric}"
    if key not in results:
      raise ValueError(f"best_metric {self.metric!r} is not among the evaluation results "
                       f"{sorted(k[len('eval/'):] for k in results)}")
    if self._observe(step, results[key]):
      self._save_best(step, params)
    return self.patience is not None and self.evals_since_best >= self.patience

  def _save_best(self, step: int, params) -> None:
    import json  # pylint: disable=g-import-not-at-top
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    with ocp.CheckpointManager(_best_checkpoint_dir(self.model_dir), options=options) as m:
      if step in m.all_steps():
        # A best checkpoint written after the last regular checkpoint, before
        # a kill: the resumed run has just recomputed that state; replace it.
        m.delete(step)
      m.save(step, args=ocp.args.StandardSave({"params": params}), force=True)
      m.wait_until_finished()
    checksums.write(_best_checkpoint_dir(self.model_dir), step, {"params": params})
    checksums.prune(_best_checkpoint_dir(self.model_dir), [step])
    if self.write:
      with tf.io.gfile.GFile(os.path.join(self.model_dir, "best.json"), "w") as f:
        f.write(json.dumps({"step": step, "metric": self.metric, "value": self.best_value}) + "\n")
    console.say("  new best %s = %.2f at step %d", self.metric, self.best_value, step)
