"""Tests for narlm.feature_converters (layout of docs/DESIGN.md)."""

import logging

import numpy as np
import pytest
import seqio
import tensorflow as tf

from narlm import feature_converters as fc


def _ds(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})


def _run(converter, examples, lengths):
  return list(converter(_ds(examples), lengths).as_numpy_iterator())


def test_layout_two_eos_weights_padding():
  conv = fc.NarFeatureConverter(pack=False)
  out = _run(conv, [{"inputs": [5, 6, 7], "targets": [8, 9]},
                    {"inputs": [4], "targets": [11, 12, 13, 14, 15]}],
             {"inputs": 4, "targets": 8})
  # L = max(4, 8) = 8
  np.testing.assert_array_equal(out[0]["encoder_input_tokens"], [5, 6, 7, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [8, 9, 102, 102, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[0]["decoder_loss_weights"], [1, 1, 1, 1, 0, 0, 0, 0])
  # target longer than the source: positions past the source still carry it
  np.testing.assert_array_equal(out[1]["encoder_input_tokens"], [4, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[1]["decoder_target_tokens"], [11, 12, 13, 14, 15, 102, 102, 0])
  assert out[0]["decoder_loss_weights"].dtype == np.float32
  assert out[0]["encoder_input_tokens"].dtype == np.int32
  assert conv.truncation_stats.examples == 0


def test_empty_targets_get_two_eos_and_custom_eos():
  conv = fc.NarFeatureConverter(pack=False, eos_id=1)
  out = _run(conv, [{"inputs": [3, 4], "targets": []}], {"inputs": 3, "targets": 2})
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [1, 1, 0])
  np.testing.assert_array_equal(out[0]["decoder_loss_weights"], [1, 1, 0])
  np.testing.assert_array_equal(out[0]["encoder_input_tokens"], [3, 4, 0])


def test_truncation_is_counted_and_logged(caplog):
  fc.reset_truncation_stats()
  conv = fc.NarFeatureConverter(pack=False)
  examples = [{"inputs": list(range(1, 8)), "targets": list(range(20, 27))},  # both too long
              {"inputs": [1, 2], "targets": [3, 4, 5, 6, 7]},                 # targets too long
              {"inputs": [1, 2], "targets": [3]}]                             # fits
  with caplog.at_level(logging.WARNING):
    out = _run(conv, examples, {"inputs": 6, "targets": 6})
  np.testing.assert_array_equal(out[0]["encoder_input_tokens"], [1, 2, 3, 4, 5, 6])
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [20, 21, 22, 23, 102, 102])
  np.testing.assert_array_equal(out[1]["decoder_target_tokens"], [3, 4, 5, 6, 102, 102])
  np.testing.assert_array_equal(out[2]["decoder_target_tokens"], [3, 102, 102, 0, 0, 0])
  expected = {"examples": 2, "inputs_truncated": 1, "targets_truncated": 2,
              "inputs_tokens_dropped": 1, "targets_tokens_dropped": 4}
  assert conv.truncation_stats.as_dict() == expected
  assert fc.truncation_stats() == expected
  assert sum("truncated an example" in r.getMessage() for r in caplog.records) == 2


def test_targets_length_caps_targets_when_inputs_are_longer():
  conv = fc.NarFeatureConverter(pack=False)
  out = _run(conv, [{"inputs": [1] * 8, "targets": [2] * 6}], {"inputs": 8, "targets": 4})
  # L = 8, but targets keep min(4, 8 - 2) = 4 tokens
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [2, 2, 2, 2, 102, 102, 0, 0])
  assert conv.truncation_stats.as_dict()["targets_tokens_dropped"] == 2


def test_constructor_contract():
  with pytest.raises(ValueError, match="packing"):
    fc.NarFeatureConverter(pack=True)
  conv = fc.NarFeatureConverter(pack=False, use_custom_packing_ops=False,
                                apply_length_check=False, bos_id=0)
  assert not conv.pack and conv.eos_id == 102
  assert conv.get_model_feature_lengths({"inputs": 10, "targets": 7}) == {
      "encoder_input_tokens": 10, "decoder_target_tokens": 10,
      "decoder_loss_weights": 10}
  with pytest.raises(ValueError, match="eos"):
    fc.NarFeatureConverter(eos_id=0)
  with pytest.raises(ValueError):
    conv.get_model_feature_lengths({"inputs": 1, "targets": 1})


def test_for_vocabulary_subclass():
  t5_like = type("V", (), {"eos_id": 1})()
  cls = fc.NarFeatureConverter.for_vocabulary(t5_like)
  assert issubclass(cls, fc.NarFeatureConverter)
  assert cls is fc.NarFeatureConverter.for_vocabulary(t5_like)
  assert cls(pack=False).eos_id == 1  # how t5x instantiates FEATURE_CONVERTER_CLS
  assert cls(pack=False, eos_id=7).eos_id == 7


def test_wrong_dtype_is_rejected():
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant([1.0]), "targets": tf.constant([1])})
  with pytest.raises(ValueError, match="incorrect type"):
    fc.NarFeatureConverter()(ds, {"inputs": 2, "targets": 2})
