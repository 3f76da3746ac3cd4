"""The trainer's input pipeline: seqio task -> converted, length-bucketed,
per-host batches, put on the devices ahead of the step that uses them."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Sequence

import jax
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
  input order, so resuming (which skips consumed batches) stays exact.
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


def prefetch_to_device(batches: Iterator[Mapping[str, np.ndarray]], put, size: int = 2
                       ) -> Iterator[Mapping[str, jax.Array]]:
  """Yields `put(batch)` for each host batch, with `size` more already put.

  `put` (Trainer.global_batch) starts an asynchronous transfer, so the next
  batches travel while the current step runs. Order is unchanged: resuming
  by skipping the consumed steps stays exact (batches prefetched past a stop
  are simply dropped).
  """
  if size < 0:
    raise ValueError(f"prefetch_batches must be >= 0, got {size}")
  queue: collections.deque = collections.deque()
  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


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
