"""The prefix-LM AR baseline: NAG-BERT's parameters, causal target attention,
KV-cached greedy decoding equal to teacher forcing, overfitting, gin."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import ar_models
from narlm import partitioning
from narlm import prefix_lm
from narlm.modules import encoder
from narlm.modules.network import NagBertNetwork
from toy_data import EOS, PAD, IdVocabulary

VOCAB = 20
REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = encoder.bert_config("tiny", VOCAB, num_layers=2, hidden_size=32, num_heads=2,
                             intermediate_size=64, max_position_embeddings=32,
                             hidden_dropout=0.0, attention_dropout=0.0)
NET = prefix_lm.PrefixLmNetwork(CONFIG)


def make_model(optimizer=None, eos_id=EOS):
  return prefix_lm.PrefixLmModel(NET, IdVocabulary(VOCAB), IdVocabulary(VOCAB, eos_id), optimizer)


def init_params(seed=0, scale=1.0):
  params = make_model().get_initial_variables(jax.random.PRNGKey(seed),
                                              {"encoder_input_tokens": (2, 8)})["params"]
  # scale > 1 sharpens the random logits (as if initializer_range were larger)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x * scale if p[-1].key in ("kernel", "embedding") else x, params)


def sources(batch=4, length=8, seed=0):
  rng = np.random.default_rng(seed)
  src = np.zeros((batch, length), np.int32)
  for r in range(batch):
    n = rng.integers(2, length + 1)
    src[r, :n] = rng.integers(2, VOCAB, n)
  return jnp.asarray(src)


def test_params_are_exactly_nag_berts_encoder_and_head():
  params = init_params()
  nag = jax.eval_shape(lambda r: NagBertNetwork(CONFIG, use_crf=False).init(
      r, jnp.ones((2, 8), jnp.int32)), jax.random.PRNGKey(0))["params"]
  assert set(params) == {"bert"}
  assert (jax.tree_util.tree_map(jnp.shape, params["bert"])
          == jax.tree_util.tree_map(lambda x: x.shape, nag["bert"]))
  variables = jax.eval_shape(lambda r: make_model().get_initial_variables(
      r, {"encoder_input_tokens": (2, 8)}), jax.random.PRNGKey(0))
  partitioning.check_params_have_axes(
      variables["params"], partitioning.logical_param_specs(variables["params_axes"]))


def test_target_attends_to_the_source_and_earlier_targets_only():
  params = init_params(scale=10.0)
  src = sources()
  dec = jnp.asarray(np.random.default_rng(1).integers(2, VOCAB, (4, 6)), jnp.int32)
  run = jax.jit(lambda s, d: NET.apply({"params": params}, s, d))
  base = np.asarray(run(src, dec))
  changed = np.asarray(run(src, dec.at[:, 3].set(PAD)))
  np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-6)  # the past is unchanged
  assert np.abs(changed[:, 3:] - base[:, 3:]).max() > 1e-3  # the future sees it
  other_src = np.asarray(run(src.at[:, 1].set(7 + (src[:, 1] == 7)), dec))
  assert np.abs(other_src - base).max() > 1e-3  # every target position reads the source
  # padding the source further changes nothing (pads are never attended)
  wider = jnp.pad(src, ((0, 0), (0, 4)))
  np.testing.assert_allclose(np.asarray(run(wider, dec)), base, atol=2e-5)


def test_cached_decode_steps_match_the_teacher_forced_pass():
  params = init_params(scale=10.0)
  src = sources()
  dec = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, (4, 6)), jnp.int32)
  want = np.asarray(NET.apply({"params": params}, src, dec))
  source, mask = NET.apply({"params": params}, src, method="encode")
  cache = NET.apply({"params": params}, source, 6, method="init_cache")
  step = jax.jit(lambda t, c, i: NET.apply({"params": params}, t, c, i, mask,
                                           method="decode_step"))
  for t in range(6):
    logits, cache = step(dec[:, t], cache, jnp.int32(t))
    np.testing.assert_allclose(np.asarray(logits), want[:, t], atol=2e-4, rtol=1e-4,
                               err_msg=f"position {t}")


def test_greedy_output_is_the_argmax_of_its_own_teacher_forced_logits():
  params = init_params(scale=10.0)
  src = sources(batch=6)
  tokens, scores = ar_models.greedy_decode(NET, params, src, jnp.int32(-1), max_length=7)
  logits = NET.apply({"params": params}, src, ar_models.shift_right(tokens))
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), np.asarray(tokens))
  log_probs = jax.nn.log_softmax(logits)
  chosen = jnp.take_along_axis(log_probs, tokens[..., None], -1)[..., 0].sum(-1)
  np.testing.assert_allclose(np.asarray(scores), np.asarray(chosen), rtol=1e-4, atol=1e-4)


def test_tiny_model_overfits_16_reversed_sequences_with_narlm_train_step():
  from narlm import train as train_lib
  rng = np.random.default_rng(0)
  src = np.zeros((16, 8), np.int32)
  tgt = np.zeros((16, 8), np.int32)
  for r in range(16):
    m = rng.integers(3, 7)
    ids = rng.integers(2, VOCAB, m)
    src[r, :m], tgt[r, :m], tgt[r, m:m + 2] = ids, ids[::-1], EOS
  batch = {"encoder_input_tokens": jnp.asarray(src), "decoder_target_tokens": jnp.asarray(tgt),
           "decoder_loss_weights": jnp.asarray((tgt != PAD).astype(np.float32))}
  model = make_model(optax.adam(3e-3))
  trainer = train_lib.Trainer(model)
  params = init_params()
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": model.optimizer_def.init(params)}
  step_fn = jax.jit(trainer.train_step, donate_argnums=(0,))
  first = None
  for _ in range(200):
    state, metrics = step_fn(state, batch)
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < 0.02 * first, (first, float(metrics["loss"]))
  tokens, aux = model.predict_batch_with_aux(state["params"], batch)
  lengths = (tgt != PAD).sum(-1) - 2
  np.testing.assert_array_equal(np.asarray(aux["length"]), lengths)
  np.testing.assert_array_equal(np.asarray(tokens), np.where(tgt == EOS, PAD, tgt))


def test_bad_arguments_raise_clear_errors():
  params = init_params()
  model = make_model()
  with pytest.raises(ValueError, match="max_position_embeddings"):
    jax.eval_shape(lambda p: NET.apply({"params": p}, jnp.ones((2, 20), jnp.int32),
                                       jnp.ones((2, 13), jnp.int32)), params)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model.predict_batch_with_aux(params, {"encoder_input_tokens": jnp.ones((2, 20), jnp.int32)})
  with pytest.raises(TypeError, match="PrefixLmNetwork"):
    prefix_lm.PrefixLmModel(ar_models.ArSeq2SeqNetwork(CONFIG), IdVocabulary(VOCAB),
                            IdVocabulary(VOCAB))
  with pytest.raises(ValueError, match="decode_method"):
    model.predict_batch_with_aux(params, {"encoder_input_tokens": sources()},
                                 decode_method="viterbi")


def test_gin_file_builds_the_minilm_prefix_lm(data_dir):
  gin = pytest.importorskip("gin")
  vocab_file = data_dir / "vocab" / "bert-base-uncased-vocab.txt"
  gin.clear_config()
  try:
    gin.add_config_file_search_path(str(REPO))
    gin.parse_config_files_and_bindings(
        [str(REPO / "narlm" / "gin" / "models" / "prefix_lm_minilm_l6.gin")],
        ["OPTIMIZER = None", f"vocabularies.get_vocabulary.name_or_path = '{vocab_file}'"])
    model = gin.get_configurable(prefix_lm.PrefixLmModel)()
  finally:
    gin.clear_config()
  assert isinstance(model, prefix_lm.PrefixLmModel)
  assert (model.module.config.num_layers, model.module.config.hidden_size) == (6, 384)
  assert model.eos_id == 102 and model.pad_id == 0 and model.source_overhead == 2
