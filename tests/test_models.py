"""NagBertModel: the t5x BaseModel interface, and overfitting real data."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import models
from narlm.modules import encoder
from narlm.modules.network import NagBertNetwork
from toy_data import EOS, PAD, IdVocabulary, random_batch


def make_model(vocab_size=20, use_crf=True, size="tiny", optimizer=None, **kwargs):
  config = encoder.bert_config(size, vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
  net = NagBertNetwork(config, use_crf=use_crf, crf_rank=8, crf_beam_size=min(16, vocab_size))
  vocab = IdVocabulary(vocab_size)
  return models.NagBertModel(net, vocab, vocab, optimizer, **kwargs)


def toy_batch(b=3, length=8, vocab=20, seed=0):
  return random_batch(b, length, length, vocab, first_id=3, seed=seed)


def test_initial_variables_have_axes_for_every_param():
  model = make_model()
  variables = model.get_initial_variables(jax.random.PRNGKey(0),
                                          {"encoder_input_tokens": (2, 8)})
  assert set(variables) == {"params", "params_axes"}
  from narlm import partitioning
  logical = partitioning.logical_param_specs(variables["params_axes"])
  partitioning.check_params_have_axes(variables["params"], logical)
  assert tuple(logical["crf"]["E1"]) == ("vocab", "crf_rank")


@pytest.mark.parametrize("use_crf", [True, False])
def test_loss_fn_metrics_predict_and_score(use_crf):
  model = make_model(use_crf=use_crf)
  batch = toy_batch()
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (3, 8)})["params"]
  loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
  assert np.isfinite(float(loss))
  assert float(metrics["loss"].compute()) == pytest.approx(float(loss), rel=1e-6)
  assert ("crf_nll" in metrics) == use_crf
  # dropout rng path runs too
  loss_d, _ = model.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss_d))
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  assert tokens.shape == (3, 8) and tokens.dtype == jnp.int32
  lengths = np.asarray(aux["length"])
  for row, n in zip(np.asarray(tokens), lengths):
    assert (row[n:] == PAD).all() and EOS not in row[:n]
  scores = model.score_batch(params, batch)
  assert scores.shape == (3,) and np.all(np.asarray(scores) <= 1e-4)


def test_ratio_first_limits_output_length():
  model = make_model(decode_method="ratio_first", ratio_first_alpha=0.5)
  batch = toy_batch()
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (3, 8)})["params"]
  _, aux = model.predict_batch_with_aux(params, batch)
  n = np.asarray((batch["encoder_input_tokens"] != PAD).sum(-1))
  assert np.all(np.asarray(aux["length"]) <= np.floor(0.5 * n) + 2)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7, 1.0, 2.0])
def test_ratio_first_truncation_equals_masked_viterbi_over_all_positions(alpha):
  """Ratio-first computes the head and the CRF only over the positions
  floor(alpha L) + 2 that any row can use: same tokens and scores as beam
  Viterbi over all L positions with the ratio-first mask."""
  from narlm import decoding
  from narlm.modules.network import NagBertNetwork
  model = make_model(decode_method="ratio_first", ratio_first_alpha=alpha)
  batch = toy_batch()
  params = model.get_initial_variables(jax.random.PRNGKey(1),
                                       {"encoder_input_tokens": (3, 8)})["params"]
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  src = batch["encoder_input_tokens"]
  logits = model.module.apply({"params": params}, src)
  mask = decoding.ratio_first_mask(src, alpha)
  ref_tokens, ref_scores = model.module.apply({"params": params}, logits, mask,
                                              method=NagBertNetwork.crf_decode)
  ref_tokens, ref_lengths = decoding.cut_at_first_eos(ref_tokens, EOS, PAD, mask)
  assert tokens.shape == src.shape
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref_tokens))
  np.testing.assert_array_equal(np.asarray(aux["length"]), np.asarray(ref_lengths))
  np.testing.assert_allclose(np.asarray(aux["scores"]), np.asarray(ref_scores), rtol=1e-5)
  assert decoding.ratio_first_positions(8, alpha) == min(8, int(np.floor(alpha * 8)) + 2)


def test_bad_batches_raise_clear_errors():
  model = make_model()
  batch = toy_batch()
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (3, 8)})["params"]
  bad = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"][:, :6])
  with pytest.raises(ValueError, match="decoder_target_tokens shape"):
    model.loss_fn(params, bad, None)
  with pytest.raises(KeyError, match="encoder_input_tokens"):
    model.predict_batch_with_aux(params, {"inputs": batch["encoder_input_tokens"]})
  with pytest.raises(ValueError, match="num_decodes"):
    model.predict_batch_with_aux(params, batch, num_decodes=4)
  with pytest.raises(ValueError, match="ratio_first_alpha"):
    make_model(decode_method="ratio_first")


# --------------------------------------------------------------- overfitting
def sentcomp_pairs(data_dir: pathlib.Path, n=64, length=48):
  """64 real sentence-compression pairs, WordPiece-tokenised, then remapped
  to a compact id space (pad 0, eos 1) so a tiny model trains fast."""
  from narlm.vocabularies import WordPieceVocabulary
  vocab = WordPieceVocabulary(data_dir / "vocab" / "bert-base-uncased-vocab.txt")
  src_lines = (data_dir / "sentcomp" / "train.src").read_text("utf-8").splitlines()[:n]
  tgt_lines = (data_dir / "sentcomp" / "train.tgt").read_text("utf-8").splitlines()[:n]
  src = [list(vocab.encode(s))[:length] for s in src_lines]
  tgt = [list(vocab.encode(t))[:length - 2] for t in tgt_lines]
  compact = {}
  for ids in src + tgt:
    for i in ids:
      compact.setdefault(i, len(compact) + 2)
  enc = np.zeros((n, length), np.int32)
  dec = np.zeros((n, length), np.int32)
  w = np.zeros((n, length), np.float32)
  for r, (s, t) in enumerate(zip(src, tgt)):
    enc[r, :len(s)] = [compact[i] for i in s]
    dec[r, :len(t)] = [compact[i] for i in t]
    dec[r, len(t):len(t) + 2] = EOS
    w[r, :len(t) + 2] = 1.0
  batch = {"encoder_input_tokens": enc, "decoder_target_tokens": dec, "decoder_loss_weights": w}
  return {k: jnp.asarray(v) for k, v in batch.items()}, len(compact) + 2


@pytest.mark.parametrize("use_crf", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_tiny_model_overfits_64_sentence_compression_pairs(data_dir, use_crf):
  batch, vocab_size = sentcomp_pairs(data_dir)
  config = encoder.bert_config("tiny", vocab_size, hidden_size=128, intermediate_size=256,
                               num_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
  net = NagBertNetwork(config, use_crf=use_crf, crf_rank=32, crf_beam_size=16)
  vocab = IdVocabulary(vocab_size)
  model = models.NagBertModel(net, vocab, vocab, optax.adam(3e-3))
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": batch["encoder_input_tokens"].shape})["params"]
  opt_state = model.optimizer_def.init(params)

  @jax.jit
  def step(params, opt_state):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    updates, opt_state = model.optimizer_def.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(model.predict_batch_with_aux)
  targets = np.asarray(batch["decoder_target_tokens"])
  want_lengths = (np.asarray(batch["decoder_loss_weights"]).sum(-1) - 2).astype(int)

  def reproduced(params):
    tokens, aux = predict(params, batch)
    tokens, lengths = np.asarray(tokens), np.asarray(aux["length"])
    return sum(lengths[r] == want_lengths[r]
               and (tokens[r, :lengths[r]] == targets[r, :want_lengths[r]]).all()
               for r in range(len(targets)))

  # Train until both criteria hold (checked every 50 steps), at most 400 steps.
  losses = []
  exact = 0
  for i in range(1, 401):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
    if i % 50 == 0 and losses[-1] <= 0.1 * losses[0]:
      exact = reproduced(params)
      if exact == len(targets):
        break
  assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])
  assert exact == len(targets), f"{exact}/{len(targets)} reproduced exactly after {i} steps"
