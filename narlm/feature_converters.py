"""seqio feature converter for NAG-BERT (see docs/DESIGN.md, "Data layout").

Task features (int32, rank 1, *no* eos: narlm tasks use `add_eos=False`):

  inputs   source tokens
  targets  target tokens

Model features, all of length `L = max(inputs_length, targets_length)`:

  encoder_input_tokens   inputs[:inputs_length], right-padded with pad_id; with
                         source framing (`cls_id`/`sep_id` given, as NAG-BERT
                         and every BERT model do): `[CLS] inputs[:inputs_length-2]
                         [SEP]`, so target token y1 is predicted from the [CLS]
                         position and the source counts n = m + 2 positions
  decoder_target_tokens  targets[:T] + [eos, eos], right-padded with pad_id
  decoder_loss_weights   1.0 on the real target tokens and both eos, else 0.0;
                         a task feature `targets_loss_weights` (one float per
                         target token; plain MLM's selected positions) replaces
                         the 1.0s of the target tokens, and the eos get 0.0

with `T = min(targets_length, L - 2)` real target tokens, so the two eos always
fit. Empty targets become `[eos, eos]`.

Design decisions
----------------
* **eos handling.** The converter, not the task, appends the two eos: seqio's
  `append_eos` can add only one, and trimming by seqio would cut a trailing
  eos. The eos id is the constructor argument `eos_id` (default
  `DEFAULT_EOS_ID` = 102, BERT `[SEP]`). For another vocabulary use
  `NarFeatureConverter.for_vocabulary(vocab)`, a subclass whose default eos is
  `vocab.eos_id` (T5 SentencePiece: 1); it can be used as a model's
  `FEATURE_CONVERTER_CLS`, since t5x only calls `cls(pack=False)`.
* **Truncation.** Over-long examples are truncated (inputs to
  `inputs_length`, targets to `T`), never dropped. Each truncated example is
  counted in the converter's `truncation_stats` and in the process-wide
  `TRUNCATION_STATS` (see `truncation_stats()` / `reset_truncation_stats()`),
  and logged with `absl.logging.warning` (the first 10 per converter, then
  every 1000th). Counting runs in a `tf.py_function`, executed only for
  truncated examples. Note that `seqio.get_dataset(..., trim_output_features=
  True)` (its default) trims task features to the requested lengths *before*
  the converter, silently; pass `trim_output_features=False` to have every
  truncation counted here -- this converter accepts over-long task features
  (its input validation skips the `<= length` check for inputs/targets).
* **Packing** is not supported (one example per row is part of the NAG
  design): `pack=True` raises ValueError.
"""

import logging as logging_std
import threading
from typing import Dict, Mapping, Optional

from absl import logging
import seqio
import tensorflow as tf

FeatureSpec = seqio.FeatureConverter.FeatureSpec

_LOG_FIRST_N = 10
_LOG_EVERY_N = 1000
_ANNOUNCED: set = set()  # (max_inputs, max_targets) already noted on the console


class TruncationStats:
  """Thread-safe counters of truncated examples and dropped tokens."""

  FIELDS = ("examples", "inputs_truncated", "targets_truncated",
            "inputs_tokens_dropped", "targets_tokens_dropped")

  def __init__(self):
    self._lock = threading.Lock()
    self._counts = dict.fromkeys(self.FIELDS, 0)

  def add(self, inputs_dropped: int, targets_dropped: int) -> int:
    """Records one truncated example; returns the new example count."""
    with self._lock:
      self._counts["examples"] += 1
      self._counts["inputs_truncated"] += int(inputs_dropped > 0)
      self._counts["targets_truncated"] += int(targets_dropped > 0)
      self._counts["inputs_tokens_dropped"] += max(int(inputs_dropped), 0)
      self._counts["targets_tokens_dropped"] += max(int(targets_dropped), 0)
      return self._counts["examples"]

  def as_dict(self) -> Dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def reset(self):
    with self._lock:
      self._counts = dict.fromkeys(self.FIELDS, 0)

  @property
  def examples(self) -> int:
    return self.as_dict()["examples"]

  def __repr__(self):
    return f"TruncationStats({self.as_dict()})"


TRUNCATION_STATS = TruncationStats()


def truncation_stats() -> Dict[str, int]:
  """Process-wide truncation counts of all NarFeatureConverters."""
  return TRUNCATION_STATS.as_dict()


def reset_truncation_stats():
  TRUNCATION_STATS.reset()


class NarFeatureConverter(seqio.FeatureConverter):
  """inputs/targets -> encoder_input_tokens/decoder_target_tokens/weights.

  Args:
    pack: must be False (packing is not supported).
    use_custom_packing_ops, apply_length_check, bos_id, passthrough_features:
      as in `seqio.FeatureConverter` (accepted for t5x compatibility; bos_id
      is unused: there is no shifted decoder input in NAG).
    eos_id: eos id appended twice to the targets (default `DEFAULT_EOS_ID`).
    pad_id: padding id (0 in seqio).
    cls_id / sep_id: when both are given, sources are framed as
      `[cls] x [sep]` (NAG-BERT's input layout); the two ids count against
      `inputs_length`. None (default): sources are used as they are.
  """

  TASK_FEATURES = {
      "inputs": FeatureSpec(dtype=tf.int32),
      "targets": FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "encoder_input_tokens": FeatureSpec(dtype=tf.int32),
      "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
      "decoder_loss_weights": FeatureSpec(dtype=tf.float32),
  }
  PACKING_FEATURE_DTYPES = None
  DEFAULT_EOS_ID = 102  # BERT WordPiece [SEP]

  def __init__(self,
               pack: bool = False,
               use_custom_packing_ops: bool = False,
               apply_length_check: bool = True,
               bos_id: int = 0,
               passthrough_features: Optional[Mapping[str, FeatureSpec]] = None,
               eos_id: Optional[int] = None,
               pad_id: int = 0,
               cls_id: Optional[int] = None,
               sep_id: Optional[int] = None):
    if pack:
      raise ValueError(
          "NarFeatureConverter does not support packing (NAG-BERT needs one "
          "example per row); construct it with pack=False.")
    super().__init__(
        pack=False, use_custom_packing_ops=use_custom_packing_ops,
        apply_length_check=apply_length_check, bos_id=bos_id,
        passthrough_features=passthrough_features)
    self._eos_id = int(self.DEFAULT_EOS_ID if eos_id is None else eos_id)
    self._pad_id = int(pad_id)
    if self._eos_id == self._pad_id:
      raise ValueError(f"eos_id and pad_id must differ, both are {pad_id}")
    if (cls_id is None) != (sep_id is None):
      raise ValueError(f"source framing needs both cls_id and sep_id, got cls_id={cls_id}, "
                       f"sep_id={sep_id}")
    self._framing = None if cls_id is None else (int(cls_id), int(sep_id))
    self.truncation_stats = TruncationStats()

  @classmethod
  def for_vocabulary(cls, vocabulary) -> type:
    """Subclass whose default eos is `vocabulary.eos_id` (usable as a class)."""
    eos_id = int(vocabulary.eos_id)
    return _converter_cls_for_eos(cls, eos_id)

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id

  def _validate_dataset(self, ds, expected_features, expected_lengths, strict,
                        error_label):
    if not strict:
      # Over-long inputs/targets are fine: _convert_features truncates and
      # counts them. Dtype and rank are still checked.
      expected_lengths = {k: v for k, v in expected_lengths.items()
                          if k not in self.TASK_FEATURES}
    return super()._validate_dataset(ds, expected_features, expected_lengths,
                                     strict, error_label)

  def _record_truncation(self, n_inputs, n_targets, max_inputs, max_targets):
    in_drop = max(int(n_inputs) - int(max_inputs), 0)
    tgt_drop = max(int(n_targets) - int(max_targets), 0)
    TRUNCATION_STATS.add(in_drop, tgt_drop)
    count = self.truncation_stats.add(in_drop, tgt_drop)
    if (int(max_inputs), int(max_targets)) not in _ANNOUNCED:
      # Once per process and lengths on the console (narlm.console); the
      # per-example lines below go to the log file.
      _ANNOUNCED.add((int(max_inputs), int(max_targets)))
      logging_std.getLogger("narlm.console").info(
          "note: over-long examples are truncated to %d input / %d target tokens, not dropped "
          "(each one is counted in the log file)", int(max_inputs), int(max_targets))
    if count <= _LOG_FIRST_N or count % _LOG_EVERY_N == 0:
      logging.warning(
          "NarFeatureConverter truncated an example (inputs %d -> %d tokens, "
          "targets %d -> %d tokens + 2 eos); %d example(s) truncated so far "
          "by this converter: %s", n_inputs, min(n_inputs, max_inputs),
          n_targets, min(n_targets, max_targets), count,
          self.truncation_stats.as_dict())
    return count

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    lengths = self.get_model_feature_lengths(task_feature_lengths)
    length = lengths["encoder_input_tokens"]
    max_inputs = int(task_feature_lengths["inputs"])
    framing = self._framing
    if framing is not None:
      if max_inputs < 3:
        raise ValueError(f"inputs length {max_inputs} leaves no room for a source token "
                         "between [CLS] and [SEP]; use an inputs length >= 3")
      max_inputs -= 2  # room for [CLS] and [SEP]
    max_targets = min(int(task_feature_lengths["targets"]), length - 2)
    eos, pad = self._eos_id, self._pad_id

    def record(n_in, n_tgt):
      return self._record_truncation(n_in.numpy(), n_tgt.numpy(), max_inputs,
                                     max_targets)

    def pad_to_length(x, value):
      x = tf.pad(x, [[0, length - tf.size(x)]], constant_values=value)
      return tf.ensure_shape(x, [length])

    def convert(ex):
      inputs = tf.cast(ex["inputs"], tf.int32)
      targets = tf.cast(ex["targets"], tf.int32)
      n_in = tf.size(inputs)
      n_tgt = tf.size(targets)
      over = tf.logical_or(n_in > max_inputs, n_tgt > max_targets)
      recorded = tf.cond(
          over,
          lambda: tf.py_function(record, [n_in, n_tgt], Tout=tf.int64),
          lambda: tf.constant(0, tf.int64))
      with tf.control_dependencies([recorded]):
        inputs = tf.identity(inputs[:max_inputs])
        targets = tf.identity(targets[:max_targets])
      if framing is not None:
        inputs = tf.concat([tf.constant([framing[0]], tf.int32), inputs,
                            tf.constant([framing[1]], tf.int32)], axis=0)
      targets = tf.concat([targets, tf.constant([eos, eos], tf.int32)], axis=0)
      if "targets_loss_weights" in ex:  # plain MLM: loss on the selected positions
        weights = tf.cast(ex["targets_loss_weights"], tf.float32)
        weights = tf.concat([weights[:tf.size(targets) - 2], [0.0, 0.0]], axis=0)
        tf.debugging.assert_equal(tf.size(weights), tf.size(targets), message=(
            "targets_loss_weights must have one weight per target token"))
      else:
        weights = tf.ones_like(targets, tf.float32)
      out = {
          "encoder_input_tokens": pad_to_length(inputs, pad),
          "decoder_target_tokens": pad_to_length(targets, pad),
          "decoder_loss_weights": pad_to_length(weights, 0.0),
      }
      for name in self._passthrough_features:
        out[name] = ex[name]
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    inputs_length = int(task_feature_lengths["inputs"])
    targets_length = int(task_feature_lengths["targets"])
    length = max(inputs_length, targets_length)
    if length < 2:
      raise ValueError(
          "NarFeatureConverter needs max(inputs, targets) length >= 2 (room for "
          f"the two eos), got {dict(task_feature_lengths)}")
    out = {k: length for k in self.MODEL_FEATURES}
    for name in self._passthrough_features:
      out[name] = task_feature_lengths[name]
    return out


_CLS_CACHE: Dict[tuple, type] = {}


def _converter_cls_for_eos(base: type, eos_id: int) -> type:
  key = (base, eos_id)
  if key not in _CLS_CACHE:
    _CLS_CACHE[key] = type(f"{base.__name__}Eos{eos_id}", (base,),
                           {"DEFAULT_EOS_ID": eos_id, "__module__": __name__})
  return _CLS_CACHE[key]
