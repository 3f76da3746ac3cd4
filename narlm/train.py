r"""narlm's own trainer: t5x-style, for machines without t5x.

Usage:
  python -m narlm.train --gin_file=narlm/gin/quickstart_cpu.gin \
      --gin.MODEL_DIR=\"/tmp/narlm_quickstart\"

What it does: builds the seqio task's dataset through the model's feature
converter, lays parameters and optimizer state out over a ('data', 'model')
device mesh by logical axis rules, runs jit-compiled train steps (with
gradient accumulation), writes orbax checkpoints (async, keep-N, atomic
finalisation by orbax) and resumes from the latest one with the identical
data order and dropout randomness, logs through clu metric writers
(TensorBoard + console) with a progress/ETA report, evaluates periodically
(loss and seqio metrics on decoded outputs), and stops with a clear message
on a non-finite loss while keeping the last good checkpoint. SIGTERM (e.g.
preemption) saves a checkpoint and exits cleanly.

Library code does not import gin: `train()` is plain Python with keyword
arguments; the gin files bind them (`from __gin__ import dynamic_registration`),
and only `main()` below parses gin.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from narlm import checksums
from narlm import console
from narlm import partitioning
from narlm import t5x_checkpoints
from narlm import run_dirs
# Re-exported: narlm.train is the trainer's public face (gin binds
# train_lib.*, tools import these from here).
from narlm.run_dirs import (_append_jsonl, _best_checkpoint_dir, _checkpoint_dir,  # noqa: F401
                            _checkpoint_manager, _train_cpu_seconds_logged,
                            best_checkpoint_step, restore_params)
from narlm.train_data import (bucket_by_length, get_dataset, get_task_or_mixture,  # noqa: F401
                              TrainInput, vocabulary_mismatches)
from narlm.train_eval import (BestTracker, _check_output_vocab_coverage, _run_eval,  # noqa: F401
                              evaluate_with_metrics)
from narlm.train_step import DROPOUT_STREAM, Trainer, dropout_root_key  # noqa: F401
from narlm.train_config import (_bound_model_dir, check_macro_bindings_are_used,  # noqa: F401
                                parse_gin, split_gin_args, write_config)

PyTree = Any


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says why."""


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which seqio task/mixture to read and how (names follow t5x's)."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = "train"
  batch_size: int = 32
  shuffle: bool = True
  seed: int = 0
  use_cached: bool = False
  # Group examples of similar length and cut each batch to the smallest of
  # these lengths that holds it (plus the full length): a few static shapes
  # instead of padding every row to the maximum. None = no bucketing.
  length_buckets: Optional[Sequence[int]] = None

  def __post_init__(self):
    # Checked here, where gin builds it: a bad value names its binding
    # instead of failing later inside TensorFlow or a string format.
    def positive_int(value, name):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"DatasetConfig.{name} (e.g. BATCH_SIZE, TASK_FEATURE_LENGTHS) must "
                         f"be a positive integer, got {value!r}")
    positive_int(self.batch_size, "batch_size")
    if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
      raise ValueError(f"DatasetConfig.mixture_or_task_name (MIXTURE_OR_TASK_NAME) must be a "
                       f"task name, got {self.mixture_or_task_name!r}")
    if not isinstance(self.task_feature_lengths, Mapping) or not self.task_feature_lengths:
      raise ValueError("DatasetConfig.task_feature_lengths (TASK_FEATURE_LENGTHS) must be a "
                       f"dict like {{'inputs': 64, 'targets': 64}}, got "
                       f"{self.task_feature_lengths!r}")
    for name, length in self.task_feature_lengths.items():
      positive_int(length, f"task_feature_lengths[{name!r}]")
    for length in self.length_buckets or ():
      positive_int(length, "length_buckets")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """period: save every N steps (and at the end); keep: how many to keep."""
  period: int = 1000
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-host set-up; fields left None are auto-detected by JAX (TPU pods,
  SLURM) — see `jax.distributed.initialize`."""
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Sequence[int]] = None


# --------------------------------------------------------------------- eval
# --------------------------------------------------------------------- loop
@jax.jit
def track_nonfinite(nonfinite: tuple[jax.Array, jax.Array], loss: jax.Array,
                    step: int) -> tuple[jax.Array, jax.Array]:
  """Keeps the first (step, loss) whose loss was not finite; (-1, 0) if none."""
  first_step, first_loss = nonfinite
  new = (first_step < 0) & ~jnp.isfinite(loss)
  return (jnp.where(new, jnp.int32(step), first_step),
          jnp.where(new, loss.astype(jnp.float32), first_loss))


def _raise_if_nonfinite(nonfinite, last_checkpoint: Optional[int]) -> None:
  step, value = (x.item() for x in jax.device_get(nonfinite))
  if step < 0:
    return
  where = (f"the last good checkpoint (step {last_checkpoint}) is kept"
           if last_checkpoint is not None else "no checkpoint had been written yet")
  raise TrainingError(f"non-finite loss {value} at step {step}; training stopped and "
                      f"{where}. Lower the learning rate or check the data.")


def _should_stop(local_flag: bool, step: int, log_period: int, manager,
                 num_processes: int) -> bool:
  """Whether every process stops before `step` + 1.

  One process: its own flag (SIGTERM, CPU budget). Several: they must stop at
  the same step, or one enters the checkpoint save (a collective) while the
  others enter the next train step and the job hangs. JAX's preemption sync
  point (through orbax) is checked every step without a round-trip of ours;
  local flags are agreed on by an all-gather at log-period boundaries only.
  """
  if num_processes == 1:
    return local_flag
  if manager.reached_preemption(step):
    return True
  if step % log_period:
    return False
  return _any_process(local_flag, num_processes)


def train(*, model, train_dataset_cfg: DatasetConfig, model_dir: str, train_steps: int,
          eval_dataset_cfg: Optional[DatasetConfig] = None,
          checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          num_model_partitions: int = 1,
          logical_axis_rules: Optional[partitioning.LogicalRules] = None,
          grad_accum_steps: int = 1, log_period: int = 50, eval_period: int = 0,
          eval_steps: int = 20, infer_eval_examples: Optional[int] = 64,
          decode_kwargs: Optional[Mapping[str, Any]] = None,
          init_checkpoint: Optional[str] = None, seed: int = 0,
          distributed: Optional[DistributedConfig] = None,
          stop_after_steps: Optional[int] = None,
          nan_check_period: Optional[int] = None,
          prefetch_batches: int = 2,
          max_train_cpu_seconds: Optional[float] = None,
          best_metric: Optional[str] = None, best_metric_mode: str = "max",
          early_stopping_patience: Optional[int] = None,
          config_text: Optional[str] = None,
          log_file: bool = False) -> Mapping[str, float]:
  """Trains `model` on a seqio task; resumes from `model_dir` if it has a checkpoint.

  Args:
    model: a NagBertModel (its optimizer_def is an optax transformation).
    train_dataset_cfg / eval_dataset_cfg: data to train / evaluate on.
    model_dir: checkpoints, TensorBoard events and the gin config go here.
    train_steps: total number of optimizer steps.
    checkpoint_cfg: period, keep-N and async saving.
    num_model_partitions: size of the 'model' mesh axis (tensor parallelism).
    logical_axis_rules: logical axis -> mesh axis rules (default: t5x's
      standard rules plus narlm's).
    grad_accum_steps: micro-batches per optimizer step (the global batch is
      split into this many).
    log_period / eval_period: in steps (eval_period 0 = only at the end).
    eval_steps: batches of eval loss per evaluation.
    infer_eval_examples: examples decoded for seqio metrics per evaluation
      (0 disables decoding; None = the whole split).
    decode_kwargs: passed to predict_batch_with_aux (decode_method, alpha).
    init_checkpoint: a Hugging Face BERT folder (config.json +
      model.safetensors) to warm-start the encoder from, when there is no
      narlm checkpoint to resume.
    seed: parameter init and dropout seed.
    distributed: if set, `jax.distributed.initialize` is called first.
    stop_after_steps: stop (after saving) once this step is reached, as if
      preempted; for tests and time-sliced jobs.
    nan_check_period: also stop at the first non-finite loss within N steps
      (a host sync every N steps). By default the loss is checked on the device
      every step and read at log, checkpoint and evaluation steps only, so the
      steady state never waits for the host; no non-finite state is ever saved.
    prefetch_batches: batches transferred to the devices ahead of the step
      that uses them (the transfer overlaps the running step).
    max_train_cpu_seconds: a compute budget: stop (save, then run the final
      evaluation) once the training loop has used this many seconds of
      process CPU time (all threads; compilation included, evaluation
      excluded). CPU time rather than wall time, so that runs sharing a
      machine get equal budgets. CPU time spent before a resume counts (read
      back from train_metrics.jsonl). The learning-rate schedule still
      follows train_steps: with a budget, use SCHEDULE = 'constant' or size
      train_steps to the budget.
    best_metric: an evaluation result to select on, named as logged without
      the 'eval/' prefix (e.g. 'sentcomp_bert/rougeL' or 'loss'). Every
      evaluation is appended to model_dir/validation_curve.jsonl; when this
      metric improves, the parameters are saved to model_dir/best_checkpoint
      (which `restore_params`, narlm.serve and narlm.compare then load).
    best_metric_mode: 'max' or 'min'.
    early_stopping_patience: stop (save, keep the best checkpoint) after this
      many evaluations in a row without a new best. None = never.
    config_text: written to model_dir/config.gin (atomically) before the
      first step, so that a run in progress or killed can be served
      (`narlm.train.main` passes the parsed gin config).
    log_file: process 0 also logs everything to model_dir/train.log
      (narlm.console; `narlm.train.main` sets it and closes the file).

  Returns:
    The last logged training metrics (and eval metrics when run).
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  if distributed is not None:
    jax.distributed.initialize(
        coordinator_address=distributed.coordinator_address,
        num_processes=distributed.num_processes, process_id=distributed.process_id,
        local_device_ids=distributed.local_device_ids)
  if train_steps < 1:
    raise ValueError(f"train_steps must be >= 1, got {train_steps}")
  if max_train_cpu_seconds is not None and not max_train_cpu_seconds > 0:
    raise ValueError(f"max_train_cpu_seconds must be > 0, got {max_train_cpu_seconds}")
  # Before anything is written: a task tokenised with another vocabulary
  # would train on ids the model reads as other tokens.
  task = get_task_or_mixture(train_dataset_cfg.mixture_or_task_name)
  mismatches = vocabulary_mismatches(model, task)
  if mismatches:
    raise ValueError(f"MIXTURE_OR_TASK_NAME {task.name!r} does not fit the model: the model has "
                     + "; and ".join(mismatches) + ". Use a task tokenised with the model's "
                     "vocabulary (e.g. sentcomp_bert for the BERT WordPiece model gins)")
  from etils import epath  # pylint: disable=g-import-not-at-top
  epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
  trainer = Trainer(model, num_model_partitions=num_model_partitions,
                    logical_axis_rules=logical_axis_rules, grad_accum_steps=grad_accum_steps,
                    seed=seed)
  if train_dataset_cfg.batch_size % (trainer.mesh.shape["data"] * grad_accum_steps):
    raise ValueError(f"batch_size {train_dataset_cfg.batch_size} must be divisible by the data "
                     f"axis ({trainer.mesh.shape['data']}) x grad_accum_steps ({grad_accum_steps})")
  process, num_processes = jax.process_index(), jax.process_count()
  log_path = console.log_to_file(model_dir) if log_file and process == 0 else None
  if best_metric_mode not in ("max", "min"):
    raise ValueError(f"best_metric_mode must be 'max' or 'min', got {best_metric_mode!r}")
  if early_stopping_patience is not None and not best_metric:
    raise ValueError("early_stopping_patience needs best_metric (the metric to stop on)")
  if best_metric and (eval_dataset_cfg is None or not eval_period):
    raise ValueError(f"best_metric={best_metric!r} needs periodic evaluation: set eval_period "
                     "(EVAL_PERIOD) > 0 and an eval dataset")
  train_ds = get_dataset(train_dataset_cfg, model, shard_index=process, num_shards=num_processes)
  if next(iter(train_ds.take(1)), None) is None:  # else a bare StopIteration at step 1
    raise ValueError(f"task {train_dataset_cfg.mixture_or_task_name!r} has no examples in its "
                     f"{train_dataset_cfg.split!r} split (shard {process} of {num_processes}): "
                     "are its files empty, or every source line blank?")
  if process == 0 and eval_dataset_cfg is not None:
    _check_output_vocab_coverage(model, eval_dataset_cfg)
  length = int(model.FEATURE_CONVERTER_CLS(pack=False).get_model_feature_lengths(
      train_dataset_cfg.task_feature_lengths)["encoder_input_tokens"])
  batch_shape = (train_dataset_cfg.batch_size, length)

  manager = _checkpoint_manager(model_dir, checkpoint_cfg)
  if config_text is not None:  # before the first step: a killed run can be served
    write_config(model_dir, config_text)
  latest = manager.latest_step()
  # t5x's checkpoints count only where narlm's trainer has none of its own.
  t5x_steps = t5x_checkpoints.steps(model_dir) if latest is None else []
  writer = metric_writers.create_default_writer(model_dir, just_logging=process > 0)
  if latest is not None:
    from narlm import checkpoints  # pylint: disable=g-import-not-at-top
    console.say("resuming from %s step %d", model_dir, latest)
    # Straight into the abstract (sharded) state: no initialised copy is
    # allocated first, so peak memory is one train state, not two. Validates
    # the step first: a damaged checkpoint is a CheckpointError naming the
    # step and path, never a deep orbax/tensorstore traceback.
    state = checkpoints.restore(manager, latest, trainer.abstract_state(batch_shape))
  elif t5x_steps:
    # A MODEL_DIR written by t5x's trainer (same experiment gin): continue it
    # with its parameters, optimizer state and step.
    t5x_step = t5x_steps[-1]
    t5x_dir = os.path.join(model_dir, f"checkpoint_{t5x_step}")
    console.say("resuming from t5x's %s", t5x_dir)
    state = t5x_checkpoints.restore(t5x_dir, trainer.abstract_state(batch_shape))
  else:
    state = trainer.init_state(batch_shape)
  # A fresh run (no checkpoint of either trainer) warm-starts.
  fresh = latest is None and not t5x_steps
  if fresh and init_checkpoint:
    params = jax.device_get(state["params"])
    if run_dirs.is_run_dir(init_checkpoint):  # a narlm run, e.g. milestone 2's pretraining
      params = model.warm_start_from_run(params, init_checkpoint)
    else:  # a Hugging Face BERT folder
      params = model.warm_start_from_hf_bert(params, init_checkpoint)
    state = trainer.put_params(state, params)
  start_step = int(jax.device_get(state["step"]))
  if process == 0:
    _print_header(model, state["params"], train_dataset_cfg, train_steps, start_step,
                  init_checkpoint if fresh else None, log_path)
  last_saved = latest

  # The input stream's position is checkpointed with the state: a resume
  # continues it instead of replaying every batch already consumed.
  train_input = TrainInput(train_ds, trainer.global_batch, prefetch=prefetch_batches,
                           fingerprint=input_fingerprint(train_dataset_cfg, num_processes))
  if start_step:
    why_not = train_input.restore(model_dir, start_step, process)
    if why_not is None:
      logging.info("input stream continues from its position saved at step %d", start_step)
    else:
      console.say("replaying the input stream up to step %d: %s", start_step, why_not)
      train_input.replay(start_step)

  def save(step: int, force: bool = False):
    nonlocal last_saved
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    if last_saved == step:
      return
    # Before the state: a crash in between leaves an unused position, never
    # a checkpoint without one.
    train_input.save(model_dir, step, process)
    manager.save(step, args=ocp.args.StandardSave(state), force=force)
    # Checksums of exactly what was saved: damage inside array data is then
    # caught at restore (orbax's files carry none).
    checksums.write(manager.directory, step, state)
    kept = list(manager.all_steps()) + [step]
    checksums.prune(manager.directory, kept)
    if process == 0:
      TrainInput.prune(model_dir, kept)
    last_saved = step

  step_fn = trainer.compiled_train_step()
  report = periodic_actions.ReportProgress(num_train_steps=train_steps, writer=writer)
  preempted = {"flag": False}

  def on_sigterm(signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM: saving a checkpoint and exiting")
    preempted["flag"] = True

  previous_handler = None
  if threading_is_main():
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
  last_metrics: dict[str, float] = {}
  end_step = min(train_steps, stop_after_steps) if stop_after_steps else train_steps
  cpu_spent_before = _train_cpu_seconds_logged(model_dir, start_step) if start_step else 0.0
  out_of_budget = False
  early_stopped = False
  last_eval_step = None  # the final evaluation is skipped when this step had one
  tracker = BestTracker(model_dir, best_metric, best_metric_mode, early_stopping_patience,
                        start_step, write=process == 0)
  # Device-side (first non-finite step or -1, its loss): updated by every
  # step without a host sync, read only where the host syncs anyway.
  nonfinite = (jnp.int32(-1), jnp.float32(0.0))
  try:
    step = start_step
    t0 = time.time()
    cpu0 = time.process_time()

    def cpu_seconds():
      return cpu_spent_before + time.process_time() - cpu0

    while step < end_step:
      out_of_budget = (max_train_cpu_seconds is not None and step > start_step
                       and cpu_seconds() >= max_train_cpu_seconds)
      if _should_stop(preempted["flag"] or out_of_budget, step, log_period, manager,
                      num_processes):
        break
      batch = next(train_input)
      with trainer.mesh:
        state, metrics = step_fn(state, batch)
        nonfinite = track_nonfinite(nonfinite, metrics["loss"], step + 1)
      step += 1
      report(step)
      checkpoint_due = bool(checkpoint_cfg.period and step % checkpoint_cfg.period == 0)
      eval_due = bool(eval_dataset_cfg is not None and eval_period and step % eval_period == 0
                      and step != train_steps)
      log_due = step % log_period == 0 or step == end_step
      if (log_due or checkpoint_due or eval_due
          or (nan_check_period and step % nan_check_period == 0)):
        _raise_if_nonfinite(nonfinite, last_saved)
      if log_due:
        last_metrics = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
        last_metrics["train/steps_per_sec"] = (step - start_step) / max(time.time() - t0, 1e-9)
        last_metrics["train/cpu_seconds"] = cpu_seconds()
        writer.write_scalars(step, last_metrics)
        if process == 0:
          _append_jsonl(os.path.join(model_dir, "train_metrics.jsonl"),
                        {"step": step, **last_metrics})
          budget_eta = None
          if max_train_cpu_seconds is not None:
            spent = last_metrics["train/cpu_seconds"]
            cpu_per_wall = (spent - cpu_spent_before) / max(time.time() - t0, 1e-9)
            budget_eta = max(max_train_cpu_seconds - spent, 0.0) / max(cpu_per_wall, 1e-9)
          console.say(console.progress_line(step, train_steps, last_metrics,
                                            last_metrics["train/steps_per_sec"],
                                            end_step - step, budget_eta))
      if checkpoint_due:
        save(step)
      if eval_due:
        results = _run_eval(trainer, state, eval_dataset_cfg, step, writer,
                            eval_steps, infer_eval_examples, decode_kwargs)
        last_eval_step = step
        last_metrics.update(results)
        if tracker.update(step, results, state["params"]):
          early_stopped = True
          break
    if out_of_budget:
      console.say("CPU budget of %.0f s used up at step %d of %d: stopping",
                  max_train_cpu_seconds, step, train_steps)
      if process == 0:
        _append_jsonl(os.path.join(model_dir, "train_metrics.jsonl"),
                      {"step": step, "train/cpu_seconds": cpu_seconds(),
                       "train/stopped_by_cpu_budget": 1.0})
    if early_stopped:
      console.say("early stopping at step %d: no better %s for %d evaluations (best %.4f at "
                  "step %d)", step, best_metric, early_stopping_patience, tracker.best_value,
                  tracker.best_step)
    _raise_if_nonfinite(nonfinite, last_saved)  # never save a non-finite state
    save(step, force=True)
    manager.wait_until_finished()
    if eval_dataset_cfg is not None and (step == train_steps or out_of_budget) \
        and not early_stopped and last_eval_step != step:
      results = _run_eval(trainer, state, eval_dataset_cfg, step, writer, eval_steps,
                          infer_eval_examples, decode_kwargs)
      last_metrics.update(results)
      tracker.update(step, results, state["params"])
    if process == 0:
      best = (f"; best {best_metric} {tracker.best_value:.2f} at step {tracker.best_step} "
              "(best_checkpoint/)" if best_metric and tracker.best_step is not None else "")
      console.say("done: step %d, %s CPU time%s; run directory %s", step,
                  console.format_duration(cpu_seconds()), best, model_dir)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
  return last_metrics


def input_fingerprint(cfg: DatasetConfig, num_processes: int) -> dict:
  """What a saved input position depends on: with any of it changed, the
  saved position is of another stream and the resume replays instead."""
  return {"task": cfg.mixture_or_task_name, "split": cfg.split, "batch_size": cfg.batch_size,
          "feature_lengths": {k: int(v) for k, v in sorted(dict(cfg.task_feature_lengths).items())},
          "shuffle": bool(cfg.shuffle), "seed": cfg.seed,
          "length_buckets": [int(b) for b in cfg.length_buckets or ()],
          "num_processes": num_processes}


def _any_process(flag: bool, num_processes: int) -> bool:
  """True if any process has the flag. A SIGTERM that reaches one process
  first must stop all of them at the same step, or one enters the checkpoint
  save (a collective) while the others enter the next train step and the job
  hangs."""
  if num_processes == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def threading_is_main() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def _print_header(model, params, data_cfg: DatasetConfig, train_steps: int, start_step: int,
                  warm_start: Optional[str], log_path: Optional[str] = None) -> None:
  """The console header: model, parameters, data, devices."""
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  cfg = getattr(model.module, "config", None)
  shape = (f", {cfg.num_layers} layers, d={cfg.hidden_size}" if cfg is not None else "")
  extra = ""
  if getattr(model.module, "use_crf", False):
    extra = f", CRF rank {model.module.crf_rank} beam {model.module.crf_beam_size}"
  devices = jax.devices()
  console.say("model    %s (%s%s%s), %.1fM parameters", type(model).__name__,
              type(model.module).__name__, shape, extra, num_params / 1e6)
  console.say("data     %s, batch %d, lengths %s", data_cfg.mixture_or_task_name,
              data_cfg.batch_size, dict(data_cfg.task_feature_lengths))
  console.say("devices  %d x %s (%d process%s)", len(devices), devices[0].device_kind,
              jax.process_count(), "es" if jax.process_count() > 1 else "")
  start = f"resuming at step {start_step}" if start_step else (
      f"warm start from {warm_start}" if warm_start else "from scratch")
  console.say("training %d steps, %s%s", train_steps, start,
              f"; full log: {log_path}" if log_path else "")


# --------------------------------------------------------------------- main
def main(argv: Sequence[str]) -> Mapping[str, float]:
  """Parses t5x-style gin flags and runs the gin-configured `train`."""
  import gin  # pylint: disable=g-import-not-at-top
  # Under `python -m narlm.train` this file is __main__: configure the
  # importable module's `train`, the one gin files name.
  from narlm import train as train_lib  # pylint: disable=g-import-not-at-top,import-self
  files, bindings, search = split_gin_args(argv)
  train_lib.parse_gin(files, bindings, search)
  model_dir = _bound_model_dir(train_lib.train)
  # No jax.process_index() here: it would start the backends before
  # train() calls jax.distributed.initialize. train() opens the log file.
  console.say("narlm.train  %s -> %s", " ".join(files), model_dir)
  try:
    configured = gin.get_configurable(train_lib.train)
  except ValueError as e:
    raise ValueError(f"the gin files {files} do not configure narlm.train.train "
                     "(include a narlm run gin, e.g. narlm/gin/runs/train.gin)") from e
  # The whole config when the run starts, so a run in progress (or killed)
  # can be served and compared; the operative config (what was actually
  # used) at the end.
  try:
    result = configured(config_text=gin.config_str(), log_file=True)
  finally:
    console.stop_log_file(model_dir)
  write_config(_bound_model_dir(train_lib.train), gin.operative_config_str())
  return result


def console_main() -> None:
  from narlm import checkpoints  # pylint: disable=g-import-not-at-top
  argv, verbosity = console.pop_verbosity(sys.argv[1:])
  console.setup(verbosity)
  # The entry points' error contract (narlm.cli_errors): a user error (bad
  # flag or gin file, missing data, unusable checkpoint) is one message and
  # exit status 2; a training failure (non-finite loss) exits 1; a bug keeps
  # its traceback. The traceback of a user error is in the log file.
  # Under `python -m narlm.train` this file is __main__, while the
  # gin-configured train() raises narlm.train's errors: catch those.
  from narlm import train as train_lib  # pylint: disable=g-import-not-at-top,import-self
  try:
    main(argv)
  except train_lib.TrainingError as e:
    logging.error("%s", e)
    logging.info("traceback", exc_info=True)
    sys.exit(1)
  except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
    logging.error("%s", e)
    logging.info("traceback", exc_info=True)
    sys.exit(2)
  except OSError as e:
    # isinstance, not only errno: gin re-raises through a proxy subclass
    # that may not carry errno.
    if not (isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM,
                                                          errno.EROFS)):
      raise
    logging.error("cannot write there (check MODEL_DIR and its permissions): %s", e)
    logging.info("traceback", exc_info=True)
    sys.exit(2)


if __name__ == "__main__":
  console_main()
