"""The trainer's input pipeline: seqio task -> converted, length-bucketed,
per-host batches, put on the devices ahead of the step that uses them, with
a position that is checkpointed beside the train state."""

from __future__ import annotations

import collections
import io
import json
import os
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
  from narlm.train import DatasetConfig


def get_task_or_mixture(name: str):
  """The registered seqio task/mixture (importing narlm.tasks registers them);
  an unknown name raises ValueError listing close matches."""
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  return tasks.get_task_or_mixture(name)


def get_dataset(cfg: DatasetConfig, model, *, num_epochs: Optional[int] = None,
                shard_index: int = 0, num_shards: int = 1, drop_remainder: bool = True):
  """Converted, per-host-batched tf.data.Dataset of model features."""
  import seqio  # pylint: disable=g-import-not-at-top
  get_task_or_mixture(cfg.mixture_or_task_name)
  if cfg.batch_size % num_shards:
    raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {num_shards} hosts")
  ds = seqio.get_dataset(
      mixture_or_task_name=cfg.mixture_or_task_name,
      task_feature_lengths=dict(cfg.task_feature_lengths),
      dataset_split=cfg.split,
      shuffle=cfg.shuffle,
      num_epochs=num_epochs,
      feature_converter=model.FEATURE_CONVERTER_CLS(pack=False),
      shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
      use_cached=cfg.use_cached,
      seed=cfg.seed,
      # Let NarFeatureConverter truncate, so every over-long example is
      # counted and logged instead of silently trimmed by seqio.
      trim_output_features=False)
  if cfg.length_buckets:
    if num_shards > 1:
      raise ValueError("length_buckets needs a single process: hosts would pick different "
                       "bucket lengths for the same step")
    return bucket_by_length(ds, cfg.length_buckets, cfg.batch_size, drop_remainder)
  return ds.batch(cfg.batch_size // num_shards, drop_remainder=drop_remainder)


def bucket_by_length(ds, length_buckets: Sequence[int], batch_size: int,
                     drop_remainder: bool = True):
  """Batches of examples of similar length, each cut to its bucket's length.

  An example's length is max(source positions, target positions incl. the
  two eos). Examples are grouped by the smallest bucket that holds them
  (buckets above the row length L are dropped and L is added), batched, and
  every feature is cut from [B, L] to [B, bucket]: a model sees at most
  len(buckets) + 1 shapes. The order is a deterministic function of the
  input order, so a resume that replays the stream stays exact.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  full = int(ds.element_spec["encoder_input_tokens"].shape[0])
  bounds = sorted({int(b) for b in length_buckets if 0 < int(b) < full} | {full})
  bounds_t = tf.constant(bounds, tf.int64)

  def key(ex):
    n_in = tf.reduce_sum(tf.cast(ex["encoder_input_tokens"] != 0, tf.int64))
    n_tgt = tf.reduce_sum(tf.cast(ex["decoder_loss_weights"] > 0, tf.int64))
    return tf.searchsorted(bounds_t, tf.reshape(tf.maximum(n_in, n_tgt), [1]),
                           out_type=tf.int64)[0]

  def reduce(bucket, window):
    cut = tf.gather(bounds_t, bucket)
    return window.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda b: {k: v[:, :cut] for k, v in b.items()})

  return ds.group_by_window(key, reduce, window_size=batch_size)


INPUT_STATE_DIR = "input_state"


class TrainInput:
  """One process's training batches: the repeated tf.data stream, converted
  to numpy and put on the devices `prefetch` batches ahead of the step that
  uses them, with its position saved beside each checkpoint.

  `put` (Trainer.global_batch) starts an asynchronous transfer, so the next
  batches travel while the current step runs. The position is tf.data's own
  iterator checkpoint (shuffle buffers, mixture sampling and corruption
  seeds included) plus the host copies of the batches already taken ahead,
  so a resumed run continues the same stream exactly, in about a second,
  whatever the step: nothing consumed is read or tokenised again. Where no
  position was saved for the step (a checkpoint of t5x or of an older narlm,
  or another data config / process count), `restore` falls back to
  replaying the stream (`skip`), which is exact but costs the time to
  produce every batch already consumed.

  Layout: MODEL_DIR/input_state/<step>/process_<i>/ holds `iterator.*`
  (tf.train.Checkpoint), `lookahead.npz` and `meta.json` (`fingerprint`:
  what must match for the position to mean the same stream), written last:
  a directory without it is an incomplete write and is never read. Through
  tf.io.gfile, so MODEL_DIR may be on gs://.
  """

  def __init__(self, ds, put: Callable, prefetch: int = 2, fingerprint: Optional[dict] = None):
    from narlm.tasks.text_files import checkpointable  # pylint: disable=g-import-not-at-top
    if prefetch < 0:
      raise ValueError(f"prefetch_batches must be >= 0, got {prefetch}")
    self._ds = checkpointable(ds.repeat())
    self._iterator = None
    self._put, self._prefetch = put, prefetch
    self._queue: collections.deque = collections.deque()  # (host batch, device batch)
    self._skip = 0
    self.fingerprint = dict(fingerprint or {})

  def _tf_iterator(self):
    if self._iterator is None:
      self._iterator = iter(self._ds.skip(self._skip) if self._skip else self._ds)
    return self._iterator

  def __iter__(self):
    return self

  def __next__(self):
    iterator = self._tf_iterator()
    while len(self._queue) <= self._prefetch:
      host = {k: v._numpy() for k, v in next(iterator).items()}  # pylint: disable=protected-access
      self._queue.append((host, self._put(host)))
    return self._queue.popleft()[1]

  def replay(self, steps: int) -> None:
    """Before the first batch: skip the batches of `steps` finished steps by
    producing and dropping them (exact, slow)."""
    if self._iterator is not None:
      raise RuntimeError("replay() must come before the first batch")
    self._skip = int(steps)

  @staticmethod
  def _dir(model_dir: str, step: int, process: int) -> str:
    return os.path.join(model_dir, INPUT_STATE_DIR, str(step), f"process_{process}")

  def save(self, model_dir: str, step: int, process: int = 0) -> None:
    """Saves the position after `step` finished steps."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    directory = self._dir(model_dir, step, process)
    if tf.io.gfile.exists(directory):  # a write that was cut off
      tf.io.gfile.rmtree(directory)
    tf.io.gfile.makedirs(directory)
    tf.train.Checkpoint(iterator=self._tf_iterator()).write(os.path.join(directory, "iterator"))
    lookahead = {f"{i}/{k}": v for i, (host, _) in enumerate(self._queue) for k, v in host.items()}
    buffer = io.BytesIO()  # zip needs a seekable file; GFile's is not
    np.savez(buffer, **lookahead)
    with tf.io.gfile.GFile(os.path.join(directory, "lookahead.npz"), "wb") as f:
      f.write(buffer.getvalue())
    # meta.json last, by a file rename (atomic locally; object stores have no
    # directory rename): a position without it is incomplete and never read.
    from narlm.run_dirs import write_text_atomically  # pylint: disable=g-import-not-at-top
    write_text_atomically(os.path.join(directory, "meta.json"), json.dumps(
        {"step": step, "lookahead": len(self._queue), "fingerprint": self.fingerprint}))

  def restore(self, model_dir: str, step: int, process: int = 0) -> Optional[str]:
    """Continues from the position saved after `step`; returns None, or why
    it cannot (then nothing changed: call `replay`)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    directory = self._dir(model_dir, step, process)
    meta_path = os.path.join(directory, "meta.json")
    if not tf.io.gfile.exists(meta_path):
      return f"no input position saved for step {step} ({directory})"
    with tf.io.gfile.GFile(meta_path) as f:
      meta = json.load(f)
    if meta.get("fingerprint") != self.fingerprint:
      return (f"the input position of step {step} belongs to other data settings "
              f"({meta.get('fingerprint')} != {self.fingerprint})")
    iterator = iter(self._ds)
    try:
      tf.train.Checkpoint(iterator=iterator).read(
          os.path.join(directory, "iterator")).assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      return f"the input position of step {step} does not fit this pipeline ({e})"
    with tf.io.gfile.GFile(os.path.join(directory, "lookahead.npz"), "rb") as f:
      arrays = dict(np.load(io.BytesIO(f.read())))
    hosts = [{} for _ in range(int(meta["lookahead"]))]
    for name, value in arrays.items():
      i, key = name.split("/", 1)
      hosts[int(i)][key] = value
    self._iterator, self._skip = iterator, 0
    self._queue = collections.deque((host, self._put(host)) for host in hosts)
    return None

  @staticmethod
  def prune(model_dir: str, keep_steps: Sequence[int]) -> None:
    """Deletes saved positions of steps whose checkpoint is gone."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    root = os.path.join(model_dir, INPUT_STATE_DIR)
    if not tf.io.gfile.isdir(root):
      return
    keep = {str(int(s)) for s in keep_steps}
    for name in tf.io.gfile.listdir(root):
      name = name.rstrip("/")
      if name.isdigit() and name not in keep:
        tf.io.gfile.rmtree(os.path.join(root, name))


def _describe_vocabulary(vocab) -> str:
  path = getattr(vocab, "vocab_file", None) or getattr(vocab, "sentencepiece_model_file", None)
  return (f"{type(vocab).__name__}" + (f" {path}" if path else "") +
          f" ({getattr(vocab, 'vocab_size', '?')} ids)")


def vocabulary_mismatches(model, task) -> list[str]:
  """What differs between the model's input/output vocabularies and the ones
  `task` (a seqio Task or Mixture) tokenises with, one phrase per side ([]
  when they match): a mismatch would read token ids as other tokens."""
  found = []
  for side, feature in (("input", "inputs"), ("output", "targets")):
    spec = task.output_features.get(feature)
    ours = getattr(model, f"{side}_vocabulary", None)
    if spec is not None and ours is not None and ours != spec.vocabulary:
      found.append(f"{side} vocabulary {_describe_vocabulary(ours)} but task {task.name!r} "
                   f"tokenises its {feature} with {_describe_vocabulary(spec.vocabulary)}")
  return found
