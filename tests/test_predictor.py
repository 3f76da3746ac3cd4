"""narlm.predictor.Predictor: the one batched, bucketed decoder of training
eval, compare, distill, serve and bench."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narlm import predictor as predictor_lib
from toy_data import IdVocabulary


def test_bucket():
  assert predictor_lib.bucket(17, (16, 32, 64)) == 32
  assert predictor_lib.bucket(16, (16, 32, 64)) == 16
  with pytest.raises(ValueError, match="exceeds the largest bucket 64"):
    predictor_lib.bucket(65, (16, 32, 64))


def _nag_bert(vocab_size=20):
  from test_models import make_model
  model = make_model(vocab_size=vocab_size)
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (1, 8)})["params"]
  return model, params


def test_buckets_lengths_and_batches_without_recompiling():
  model, params = _nag_bert()
  gen = predictor_lib.Predictor(model, params, max_length=32, length_buckets=(8, 16),
                                batch_buckets=(1, 4))
  assert gen.length_buckets == (8, 16, 32)
  # Ratio-first never fills a row (its window is < n positions here), so no
  # row is decoded again wider and every call compiles what its buckets say.
  first = dict(decode_method="ratio_first", alpha=0.25)
  out = gen.generate(["3 4 5", "6 7 8 9 10"], **first)
  assert len(out) == 2 and all(isinstance(o, str) for o in out)
  compiled = gen.compiled_programs()
  assert compiled == 1
  gen.generate(["3 4 5 6 7 8", "9"], **first)  # same buckets (8, 4)
  assert gen.compiled_programs() == compiled
  gen.generate(["3 " * 12], **first)  # length bucket 16, batch 1
  assert gen.compiled_programs() == compiled + 1
  gen.generate(["3 4 5"], decode_method="viterbi")  # another configuration
  assert gen.compiled_programs() >= compiled + 2
  many = gen.predict(gen.encode([str(i % 15 + 3) for i in range(9)]), decode_method="argmax")
  assert len(many) == 9
  ratio = gen.predict(gen.encode(["3 4 5 6 7 8 9 10"]), decode_method="ratio_first", alpha=0.25)
  assert len(ratio[0]) <= 0.25 * 8 + 2
  gen.generate([" ".join(["5"] * 40)], decode_method="viterbi")
  assert gen.num_truncated == 1
  with pytest.raises(ValueError, match="input 0 is empty"):
    gen.generate(["   "])
  with pytest.raises(ValueError, match="ratio_first decoding needs alpha"):
    gen.generate(["3 4"], decode_method="ratio_first")
  with pytest.raises(ValueError, match="max_decode_length must be an int >= max_length"):
    predictor_lib.Predictor(model, params, max_length=32, max_decode_length=16)


def test_outputs_equal_the_model_on_one_padded_batch_in_the_callers_order():
  """Sorting by length, chunking and per-chunk buckets change nothing: each
  row's output is the model's on the whole batch padded to one width."""
  model, params = _nag_bert()
  rng = np.random.default_rng(0)
  inputs = [rng.integers(3, 20, size=n).tolist() for n in (7, 2, 15, 4, 9, 1, 12)]
  gen = predictor_lib.Predictor(model, params, max_length=16, length_buckets=(4, 8),
                                batch_buckets=(1, 2))
  got = gen.predict(inputs, decode_method="viterbi")
  tokens = np.zeros((len(inputs), 16), np.int32)
  for r, ids in enumerate(inputs):
    tokens[r, :len(ids)] = ids
  pred, aux = model.predict_batch_with_aux(params, {"encoder_input_tokens": jnp.asarray(tokens)},
                                           decode_method="viterbi")
  pred, lengths = np.asarray(pred), np.asarray(aux["length"])
  assert got == [pred[r, :lengths[r]].tolist() for r in range(len(inputs))]


class _LongOutputs:
  """A stand-in model whose output for a source starting with token k is
  [10, 11, ...] of k tokens then eos, cut by the row width (as every narlm
  model's output is at most as wide as its padded input)."""
  input_vocabulary = output_vocabulary = IdVocabulary(100)
  pad_id, eos_id = 0, 1

  def predict_batch_with_aux(self, params, batch, decode_method=None):
    del params, decode_method
    tokens = batch["encoder_input_tokens"]
    width = tokens.shape[1]
    want = tokens[:, 0]
    positions = jnp.arange(width)[None, :]
    out = jnp.where(positions < want[:, None], 10 + positions, 0).astype(jnp.int32)
    return out, {"length": jnp.minimum(want, width)}


def test_an_output_that_fills_its_bucket_is_decoded_wider_not_cut():
  gen = predictor_lib.Predictor(_LongOutputs(), None, max_length=8, max_decode_length=32,
                                length_buckets=(4, 8, 16), batch_buckets=(4,))
  assert gen.length_buckets == (4, 8, 16, 32)
  # Sources of 2-3 tokens sit in the 4-wide bucket; their outputs need 3, 6, 20 positions.
  got = gen.predict([[3, 5], [6, 5, 5], [20, 5]])
  assert got == [list(range(10, 13)), list(range(10, 16)), list(range(10, 30))]
  assert gen.num_cut == 0


def test_an_output_past_max_decode_length_is_cut_counted_and_said(caplog):
  gen = predictor_lib.Predictor(_LongOutputs(), None, max_length=8, max_decode_length=16,
                                length_buckets=(4, 8), batch_buckets=(4,))
  with caplog.at_level("WARNING"):
    got = gen.predict([[3, 5], [40, 5]])
  assert got == [[10, 11, 12], list(range(10, 26))]
  assert gen.num_cut == 1
  assert "reached max_decode_length=16" in caplog.text


def test_an_ar_output_longer_than_its_source_bucket_is_not_cut():
  """Random AR weights never emit eos: the old generator returned as many
  tokens as the source's bucket had positions (8); the predictor decodes on
  to max_decode_length and says it cut there."""
  from test_ar_models import make_model
  model = make_model()
  params = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 8),
                              "decoder_target_tokens": (1, 8)})["params"]
  gen = predictor_lib.Predictor(model, params, max_length=8, max_decode_length=24,
                                length_buckets=(8, 16), batch_buckets=(1,))
  source = [3, 4, 5]
  out = gen.predict([source], decode_method="greedy")[0]
  tokens = np.zeros((1, 24), np.int32)
  tokens[0, :3] = source
  ref, aux = model.predict_batch_with_aux(params, {"encoder_input_tokens": jnp.asarray(tokens)},
                                          decode_method="greedy")
  assert out == np.asarray(ref)[0, :int(aux["length"][0])].tolist()
  # These weights emit no eos in 24 positions: cut at max_decode_length, counted.
  assert len(out) == 24 and gen.num_cut == 1


class _Framing:
  """A model that frames sources as [CLS] x [SEP] (ids 101, 102)."""
  input_vocabulary = output_vocabulary = IdVocabulary(200)
  pad_id, source_overhead = 0, 2

  def frame_source(self, ids, max_length=None):
    ids = list(ids) if max_length is None else list(ids)[:max_length - 2]
    return [101, *ids, 102]


def test_prepare_frames_and_truncates_as_training_did(caplog):
  gen = predictor_lib.Predictor(_Framing(), None, max_length=6)
  assert gen.prepare([5, 6, 7]) == [101, 5, 6, 7, 102] and gen.num_truncated == 0
  assert gen.prepare(range(10, 20)) == [101, 10, 11, 12, 13, 102] and gen.num_truncated == 1
  # A model without framing: the ids, truncated to max_length.
  plain = _LongOutputs()
  assert predictor_lib.Predictor(plain, None, max_length=6).prepare(range(10, 20)) == list(
      range(10, 16))
  with caplog.at_level("WARNING"):
    assert gen.encode(["5 6 7 8 9"]) == [[101, 5, 6, 7, 8, 102]]
  assert "input 0 has 5 tokens; truncated to 4" in caplog.text
  with pytest.raises(ValueError, match="more than max_length=6"):
    gen.predict([[1] * 7])
