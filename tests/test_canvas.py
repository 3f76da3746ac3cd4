"""The canvas model (narlm/canvas.py): layout, masking, mask-predict passes,
length beam, overfitting real sentcomp pairs, bad input, gin, compare."""

import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import canvas
from narlm import canvas_decoding
from narlm import compare
from narlm import output_vocab
from narlm import vocabularies
from narlm.modules import encoder
from toy_data import EOS, PAD

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB, MASK, SEP, CLS = 24, 3, EOS, 4
CONFIG = encoder.bert_config("tiny", VOCAB, num_layers=2, hidden_size=32, num_heads=2,
                             intermediate_size=64, max_position_embeddings=40,
                             hidden_dropout=0.0, attention_dropout=0.0)


class Vocab:
  """Integer vocabulary with BERT's specials: pad 0, [SEP] = eos 1, [MASK] 3, [CLS] 4."""
  pad_id, eos_id, unk_id, mask_id, cls_id = PAD, EOS, 2, MASK, CLS
  vocab_size = VOCAB

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def make_model(use_crf=False, max_canvas_length=10, **kwargs):
  net = canvas.CanvasNetwork(CONFIG, max_canvas_length=max_canvas_length, use_crf=use_crf,
                             crf_rank=4, crf_beam_size=6, crf_self_transition_exempt_ids=(PAD, EOS))
  return canvas.CanvasModel(net, Vocab(), Vocab(), **kwargs)


def init(model, src=8, tgt=12, seed=0):
  return model.get_initial_variables(jax.random.PRNGKey(seed), {
      "encoder_input_tokens": (2, src), "decoder_target_tokens": (2, tgt)})["params"]


def toy_batch(rows=4, src=8, tgt=12, seed=0):
  rng = np.random.default_rng(seed)
  s = np.zeros((rows, src), np.int32)
  t = np.zeros((rows, tgt), np.int32)
  for r in range(rows):
    n, m = rng.integers(2, src - 1), rng.integers(1, tgt - 2)
    s[r, :n + 2] = [CLS, *rng.integers(5, VOCAB, n), SEP]
    t[r, :m] = rng.integers(5, VOCAB, m)
    t[r, m:m + 2] = EOS
  return {"encoder_input_tokens": jnp.asarray(s), "decoder_target_tokens": jnp.asarray(t)}


# ------------------------------------------------------------------ layout
def test_canvas_layout_round_trips():
  targets = jnp.asarray([[7, 8, 9, EOS, EOS, PAD], [5, EOS, EOS, PAD, PAD, PAD]])
  lengths = canvas.target_lengths(targets, EOS, PAD)
  np.testing.assert_array_equal(lengths, [3, 1])
  masked = jnp.asarray([[False, True, False, True, True, True], [True] * 6])
  built = canvas.make_canvas(targets, lengths, masked, mask_id=MASK, sep_id=SEP, pad_id=PAD)
  np.testing.assert_array_equal(built, [[7, MASK, 9, SEP, PAD, PAD], [MASK, SEP, PAD, PAD, PAD, PAD]])
  # Unmasked positions give the target back; masked ones are exactly the mask.
  restored = jnp.where(built == MASK, targets, built)
  np.testing.assert_array_equal(jnp.where(jnp.arange(6) < lengths[:, None], restored, PAD),
                                jnp.where(jnp.arange(6) < lengths[:, None], targets, PAD))
  np.testing.assert_array_equal(built == MASK, masked & (jnp.arange(6) < lengths[:, None]))


def test_source_ignores_the_canvas_and_the_canvas_reads_segment_one():
  model = make_model()
  params = init(model)
  batch = toy_batch()
  net = model.module
  source, length_logits = net.apply({"params": params}, batch["encoder_input_tokens"],
                                    method=canvas.CanvasNetwork.encode_source)
  # The source side (and the length head on [CLS]) never sees the canvas:
  # two different canvases give the same length logits.
  a = net.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_target_tokens"])
  b = net.apply({"params": params}, batch["encoder_input_tokens"],
                jnp.full_like(batch["decoder_target_tokens"], MASK))
  np.testing.assert_allclose(a[1], length_logits, atol=1e-6)
  np.testing.assert_allclose(b[1], length_logits, atol=1e-6)
  assert not np.allclose(a[0], b[0])
  # Token type 1 marks the canvas: changing its embedding changes the canvas
  # logits, not the source.
  bumped = jax.tree_util.tree_map(lambda x: x, params)
  types = bumped["bert"]["encoder"]["embeddings"]["token_type_embeddings"]["embedding"]
  bumped["bert"]["encoder"]["embeddings"]["token_type_embeddings"]["embedding"] = (
      types.at[1].add(1.0))
  c = net.apply({"params": bumped}, batch["encoder_input_tokens"], batch["decoder_target_tokens"])
  np.testing.assert_allclose(c[1], length_logits, atol=1e-6)
  assert not np.allclose(c[0], a[0])


def test_training_masks_between_one_and_all_target_tokens():
  lengths = jnp.asarray([1, 5, 9, 0])
  counts = jnp.asarray([1, 3, 9, 0])
  masked = canvas.random_mask(jax.random.PRNGKey(0), lengths, 10, counts)
  np.testing.assert_array_equal(masked.sum(-1), counts)
  assert not (masked & (jnp.arange(10) >= lengths[:, None])).any()
  # remask counts decay linearly to 0 over T passes.
  np.testing.assert_array_equal(
      [int(canvas.remask_count(jnp.asarray(10), jnp.asarray(t), 4)) for t in (2, 3, 4)],
      [7, 5, 2])


@pytest.mark.parametrize("use_crf,glancing", [(False, 0.5), (True, 0.0)])
def test_loss_is_finite_and_has_gradients(use_crf, glancing):
  model = make_model(use_crf=use_crf, glancing_ratio=glancing)
  params = init(model)
  batch = toy_batch()
  (loss, metrics), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(
      params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert float(jnp.abs(grads["length_head"]["kernel"]).sum()) > 0
  assert {"length_accuracy", "length_nll", "token_accuracy"} <= set(metrics)
  # evaluation (no dropout key) is deterministic
  eval_loss = jax.jit(lambda p: model.eval_fn(p, batch)[0])
  assert float(eval_loss(params)) == float(eval_loss(params))


# --------------------------------------------------------------- decoding
def test_mask_predict_runs_exactly_t_passes(monkeypatch):
  model = make_model(use_crf=True)
  params = init(model)
  batch = {"encoder_input_tokens": toy_batch()["encoder_input_tokens"]}
  calls = []
  real = canvas.make_canvas
  monkeypatch.setattr(canvas_decoding, "make_canvas", lambda *a, **k: calls.append(1) or real(*a, **k))
  for method in canvas.MASK_PREDICT_METHODS:
    for passes in (1, 3):
      calls.clear()
      with jax.disable_jit():  # the loop runs in Python: every pass is a call
        _, aux = model.predict_batch_with_aux(params, batch, decode_method=method,
                                              iterations=passes)
      assert len(calls) == passes, (method, passes, len(calls))
      np.testing.assert_array_equal(aux["passes"], passes)


def test_length_beam_of_one_is_plain_decoding_and_picks_the_best_length():
  model = make_model(use_crf=True)
  params = init(model, seed=3)
  src = toy_batch()["encoder_input_tokens"]
  plain = model.predict_batch_with_aux(params, {"encoder_input_tokens": src}, iterations=3)
  one = model.predict_batch_with_aux(params, {"encoder_input_tokens": src}, iterations=3,
                                     length_beam=1)
  np.testing.assert_array_equal(plain[0], one[0])
  # Beam of 3 = the best-scoring of the 3 likeliest lengths decoded alone.
  _, length_logits = model.module.apply({"params": params}, src,
                                        method=canvas.CanvasNetwork.encode_source)
  allowed = jnp.arange(length_logits.shape[-1])
  top = np.argsort(-np.where((allowed >= 1) & (allowed <= src.shape[1]), length_logits,
                             -np.inf), axis=-1)[:, :3]
  beam = model.predict_batch_with_aux(params, {"encoder_input_tokens": src}, iterations=3,
                                      length_beam=3)
  for r in range(src.shape[0]):
    best = None
    for m in top[r]:
      params_m = jax.tree_util.tree_map(lambda x: x, params)
      bias = params_m["length_head"]["bias"]
      params_m["length_head"]["bias"] = jnp.where(jnp.arange(bias.shape[0]) == m, 1e4, -1e4)
      tokens, aux = model.predict_batch_with_aux(params_m, {"encoder_input_tokens": src[r:r + 1]},
                                                 iterations=3)
      if best is None or float(aux["scores"][0]) > best[0]:
        best = (float(aux["scores"][0]), np.asarray(tokens[0]))
    np.testing.assert_allclose(float(beam[1]["scores"][r]), best[0], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(beam[0][r]), best[1])


def test_bad_decoding_arguments_fail_clearly():
  model = make_model(use_crf=False)
  params = init(model)
  batch = {"encoder_input_tokens": toy_batch()["encoder_input_tokens"]}
  with pytest.raises(ValueError, match=r"iterations \(T, refinement passes\) must be an int >= 1"):
    model.predict_batch_with_aux(params, batch, iterations=0)
  with pytest.raises(ValueError, match="length_beam must be an int in"):
    model.predict_batch_with_aux(params, batch, length_beam=11)
  with pytest.raises(ValueError, match="exceeds the 4 candidate lengths"):
    model.predict_batch_with_aux(params, batch, length_beam=5, max_decode_length=4)
  with pytest.raises(ValueError, match="max_decode_length must be an int in"):
    model.predict_batch_with_aux(params, batch, max_decode_length=11)
  with pytest.raises(ValueError, match="needs a CRF"):
    model.predict_batch_with_aux(params, batch, decode_method="mask_predict_crf")
  with pytest.raises(ValueError, match="unknown decode method 'viterbi'"):
    model.predict_batch_with_aux(params, batch, decode_method="viterbi")
  # targets longer than the length classes (a canvas past the feature length)
  long = toy_batch(tgt=14)
  with pytest.raises(ValueError, match="more than max_canvas_length=10"):
    make_model(max_canvas_length=10).loss_fn(params, long, None)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model.predict_batch_with_aux(params, {"encoder_input_tokens": jnp.ones((2, 36), jnp.int32)})
  with pytest.raises(ValueError, match="needs a \\[MASK\\] token"):
    class NoMask(Vocab):
      mask_id = None
    canvas.CanvasModel(make_model().module, NoMask(), NoMask())


# ---------------------------------------------------- real data, overfit
@pytest.mark.slow
def test_tiny_canvas_model_overfits_64_sentcomp_pairs(data_dir):
  from narlm import train as train_lib
  vocab = vocabularies.get_vocabulary("bert_uncased")
  sources = (data_dir / "sentcomp" / "train.src").read_text().splitlines()[:64]
  targets = (data_dir / "sentcomp" / "train.tgt").read_text().splitlines()[:64]
  width = 48
  src = np.zeros((64, width), np.int32)
  tgt = np.zeros((64, width), np.int32)
  ids = {PAD, vocab.eos_id, vocab.unk_id}
  gold = []
  for r, (s, t) in enumerate(zip(sources, targets)):
    framed = [vocab.cls_id, *vocab.encode(s)[:width - 2], vocab.eos_id]
    src[r, :len(framed)] = framed
    y = vocab.encode(t)[:width - 2]
    tgt[r, :len(y)], tgt[r, len(y):len(y) + 2] = y, vocab.eos_id
    ids.update(y)
    gold.append(y)
  config = encoder.bert_config("tiny", vocab.vocab_size, num_layers=2, hidden_size=64,
                               num_heads=4, intermediate_size=128, max_position_embeddings=128,
                               hidden_dropout=0.0, attention_dropout=0.0)
  net = canvas.CanvasNetwork(config, max_canvas_length=width - 2,
                             output_vocab=output_vocab.from_ids(sorted(ids), vocab.vocab_size,
                                                                vocab.unk_id))
  model = canvas.CanvasModel(net, vocab, vocab, optax.adam(3e-3))
  params = model.get_initial_variables(jax.random.PRNGKey(0), {
      "encoder_input_tokens": (2, width), "decoder_target_tokens": (2, width)})["params"]
  trainer = train_lib.Trainer(model)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": model.optimizer_def.init(params)}
  step = jax.jit(trainer.train_step, donate_argnums=(0,))
  batch = {"encoder_input_tokens": jnp.asarray(src), "decoder_target_tokens": jnp.asarray(tgt),
           "decoder_loss_weights": jnp.asarray((tgt != PAD).astype(np.float32))}
  for _ in range(200):
    state, metrics = step(state, batch)
  assert float(metrics["loss"]) < 0.1, float(metrics["loss"])
  for passes in (1, 4):
    tokens, aux = model.predict_batch_with_aux(state["params"], batch, iterations=passes)
    tokens, lengths = np.asarray(tokens), np.asarray(aux["length"])
    exact = sum(tokens[r, :lengths[r]].tolist() == gold[r] for r in range(64))
    assert exact == 64, (passes, exact)
  assert vocab.decode(tokens[0, :lengths[0]].tolist()) == vocab.decode(gold[0])


# --------------------------------------------------------- gin and compare
@pytest.mark.parametrize("variant", ["", "_crf"])
def test_comparison_gins_build_the_canvas_model(variant):
  from narlm import train
  gin.clear_config()
  try:
    train.parse_gin([f"narlm/gin/compare/sentcomp_minilm_canvas{variant}.gin"],
                    ["MODEL_DIR = '/tmp/unused'", "OUTPUT_VOCAB = None"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(model, canvas.CanvasModel)
  assert model.module.use_crf == (variant == "_crf")
  assert model.decode_method == ("mask_predict_crf" if variant else "mask_predict")
  assert model.module.max_canvas_length == 62 and model.mask_id == 103


def test_compare_parses_refinement_passes():
  assert compare.split_method("mask_predict@4") == ("mask_predict", {"iterations": 4})
  assert compare.split_method("mask_predict_crf@2x3") == (
      "mask_predict_crf", {"iterations": 2, "length_beam": 3})
  assert compare.split_method("viterbi") == ("viterbi", {})
  assert compare.parse_system("a=/runs/x:mask_predict@10") == ("a", "/runs/x", "mask_predict@10")
  for bad, message in (("a=/x:viterbi@2", "only mask_predict"),
                       ("a=/x:mask_predict@0", "must be >= 1"),
                       ("a=/x:mask_predict@two", "expected mask_predict@T")):
    with pytest.raises(ValueError, match=message):
      compare.parse_system(bad)


def test_narrow_canvases_give_the_same_outputs_as_the_full_width():
  """mask_predict runs its passes on the narrowest of `canvas_widths` that
  fits every candidate (lax.switch); the outputs must not depend on it."""
  model = make_model(use_crf=True, max_canvas_length=10, draft_weight=1.0)
  params = init(model, seed=5)
  src = toy_batch(rows=6)["encoder_input_tokens"]
  used = set()
  for method in canvas.DECODE_METHODS:
    for r in range(src.shape[0]):
      row = src[r:r + 1]
      kwargs = dict(method=method, iterations=3, length_beam=1, longest=10)
      full = canvas.mask_predict(model, params, row, canvas_widths=(), **kwargs)
      narrow = canvas.mask_predict(model, params, row, canvas_widths=(4, 6, 8), **kwargs)
      np.testing.assert_array_equal(narrow[0], full[0], err_msg=f"{method} row {r}")
      np.testing.assert_allclose(narrow[1]["scores"], full[1]["scores"], rtol=1e-5, atol=1e-6)
      used.add(min(w for w in (4, 6, 8, 11) if w >= int(full[1]["length"][0]) + 1))
  assert len(used) >= 2, used  # more than one branch was exercised
