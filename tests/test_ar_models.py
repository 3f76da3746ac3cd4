"""The autoregressive baseline: KV-cached decoding, loss, axes, overfitting, gin."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import ar_models
from narlm import partitioning
from narlm.modules import encoder
from toy_data import EOS, PAD, IdVocabulary, random_batch

VOCAB = 20
REPO = pathlib.Path(__file__).resolve().parents[1]


def make_model(vocab_size=VOCAB, decoder_layers=2, eos_id=EOS, optimizer=None, **overrides):
  # 1 encoder layer, 2 decoder layers, d=32: small graphs compile fast on CPU.
  cfg = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
             max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
  cfg.update(overrides)
  config = encoder.bert_config("tiny", vocab_size, **cfg)
  net = ar_models.ArSeq2SeqNetwork(config, num_decoder_layers=decoder_layers)
  return ar_models.ArSeq2SeqModel(net, IdVocabulary(vocab_size), IdVocabulary(vocab_size, eos_id),
                                  optimizer)


def toy_batch(b=16, src_len=8, tgt_len=8, seed=0):
  return random_batch(b, src_len, tgt_len, VOCAB, first_id=2, seed=seed)


@functools.lru_cache(maxsize=None)
def _jitted_init(network):
  # Parameter shapes do not depend on the batch shape: one compiled init per
  # network serves every test.
  model = ar_models.ArSeq2SeqModel(network, IdVocabulary(VOCAB), IdVocabulary(VOCAB))

  def init(rng, factor):
    params = model.get_initial_variables(rng, {"encoder_input_tokens": (3, 8)})["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * factor if path[-1].key in ("kernel", "embedding") else x, params)

  return jax.jit(init)


def init_params(model, seed=0, sharpen=False):
  """Initial params; `sharpen` multiplies every kernel and embedding by 25,
  exactly as if initializer_range were 0.5 instead of 0.02 (all of them are
  drawn from normal(initializer_range)): well-separated logits, so greedy
  choices are not decided by float rounding, and more varied random output."""
  return _jitted_init(model.module)(jax.random.PRNGKey(seed), 25.0 if sharpen else 1.0)


MODEL = make_model()


@pytest.fixture(scope="module")
def random_model():
  full = jax.jit(lambda p, src, dec: MODEL.module.apply({"params": p}, src, dec))
  return MODEL, init_params(MODEL, sharpen=True), full


def naive_greedy(full, params, src, length, eos_id=None):
  """Greedy decoding that re-runs the whole decoder for every new token."""
  batch = src.shape[0]
  dec_in = np.full((batch, length), PAD, np.int32)  # BOS = pad
  out = np.full((batch, length), PAD, np.int32)
  scores = np.zeros(batch, np.float64)
  done = np.zeros(batch, bool)
  for t in range(length):
    log_probs = np.asarray(jax.nn.log_softmax(full(params, src, jnp.asarray(dec_in))[:, t]))
    best = log_probs.argmax(-1)
    scores += np.where(done, 0.0, log_probs[np.arange(batch), best])
    out[:, t] = np.where(done, PAD, best)
    if t + 1 < length:
      dec_in[:, t + 1] = out[:, t]
    if eos_id is not None:
      done |= best == eos_id
  return out, scores


# ------------------------------------------------------------- KV cache
def test_cached_decode_steps_match_teacher_forced_pass(random_model):
  model, params, full = random_model
  src = toy_batch()["encoder_input_tokens"]
  dec_in = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, size=(16, 8)), jnp.int32)
  want = np.asarray(full(params, src, dec_in))
  net = model.module

  @jax.jit
  def step(params, tokens, cache, index, mask):
    return net.apply({"params": params}, tokens, cache, index, mask,
                     method=ar_models.ArSeq2SeqNetwork.decode_step)

  encoded, mask = net.apply({"params": params}, src, method=ar_models.ArSeq2SeqNetwork.encode)
  cache = net.apply({"params": params}, encoded, 8, method=ar_models.ArSeq2SeqNetwork.init_cache)
  assert cache["layers_0"]["self_key"].shape == (16, 8, 2, 16)
  assert cache["layers_1"]["cross_key"].shape == (16, 8, 2, 16)
  for t in range(8):
    logits, cache = step(params, dec_in[:, t], cache, jnp.int32(t), mask)
    np.testing.assert_allclose(np.asarray(logits), want[:, t], atol=2e-4, rtol=1e-4,
                               err_msg=f"position {t}")


def test_cached_greedy_equals_uncached_greedy(random_model):
  model, _, full = random_model
  src = toy_batch()["encoder_input_tokens"]
  length = 8
  # Random models often repeat one token per row. Pick (deterministically) the
  # first init seed and an eos among the emitted tokens such that one row
  # stops early, after >= 1 token, while another goes on (this exercises the
  # `done` handling): rows stop at the first eos of their free-running output.
  def stop_lengths(free_run, eos):
    return [int(np.flatnonzero(row == eos)[0]) if eos in row else length for row in free_run]

  for seed in range(10):
    params = init_params(model, seed, sharpen=True)
    free_run, _ = naive_greedy(full, params, src, length)
    candidates = [int(t) for t in np.unique(free_run) if t != PAD
                  and min(stop_lengths(free_run, t)) >= 1
                  and len(set(stop_lengths(free_run, t))) > 1]
    if candidates:
      break
  assert candidates, f"degenerate random model output {free_run}"
  eos = candidates[0]
  want, want_scores = naive_greedy(full, params, src, length, eos_id=eos)

  model_e = ar_models.ArSeq2SeqModel(model.module, model.input_vocabulary,
                                     IdVocabulary(VOCAB, eos_id=eos))
  tokens, aux = model_e.predict_batch_with_aux(params, {"encoder_input_tokens": src})
  want_cut = want.copy()
  want_len = np.full(len(want), length)
  for r, row in enumerate(want):
    hits = np.flatnonzero(row == eos)
    if hits.size:
      want_len[r] = hits[0]
      want_cut[r, hits[0]:] = PAD
  assert 0 < want_len.min() < length and len(set(want_len)) > 1
  np.testing.assert_array_equal(np.asarray(tokens), want_cut)
  np.testing.assert_array_equal(np.asarray(aux["length"]), want_len)
  np.testing.assert_allclose(np.asarray(aux["scores"]), want_scores, rtol=1e-4, atol=1e-4)
  # the output length follows max_decode_length, not the source length
  short = jax.eval_shape(lambda p, b: model_e.predict_batch_with_aux(p, b, max_decode_length=5),
                         params, {"encoder_input_tokens": src})
  assert short[0].shape == (16, 5) and short[1]["length"].shape == (16,)


# ----------------------------------------------------------------- loss
def test_loss_is_finite_jittable_and_trains_on_the_first_eos_only(random_model):
  model, params, _ = random_model
  batch = toy_batch()

  @jax.jit
  def evaluate(params, batch, rng):
    return (model.loss_fn(params, batch, None), model.loss_fn(params, batch, rng)[0],
            model.score_batch(params, batch))

  rng = jax.random.PRNGKey(1)
  (loss, metrics), loss_d, scores = evaluate(params, batch, rng)
  assert np.isfinite(float(loss)) and np.isfinite(float(loss_d))
  assert float(metrics["loss"].compute()) == pytest.approx(float(loss), rel=1e-6)
  assert 0.0 <= float(metrics["token_accuracy"].compute()) <= 1.0
  weights = np.asarray(batch["decoder_loss_weights"])
  # every row ends in two eos; the second one is not trained on
  assert float(metrics["num_tokens"].compute()) == weights.sum() - len(weights)
  # the score is minus the summed NLL of the trained tokens
  assert scores.shape == (16,) and np.all(np.asarray(scores) < 0)
  assert float(-scores.sum() / metrics["num_tokens"].compute()) == pytest.approx(float(loss),
                                                                                 rel=1e-5)
  # tokens after the first eos do not change the loss; tokens before it do
  tgt = np.asarray(batch["decoder_target_tokens"])
  first_eos = (tgt == EOS).argmax(-1)
  after = tgt.copy()
  after[np.arange(len(tgt)), first_eos + 1] = 7
  before = tgt.copy()
  before[:, 0] = np.where(before[:, 0] == 7, 8, 7)
  (loss_after, _), _, _ = evaluate(params, dict(batch, decoder_target_tokens=jnp.asarray(after)),
                                   rng)
  (loss_before, _), _, _ = evaluate(
      params, dict(batch, decoder_target_tokens=jnp.asarray(before)), rng)
  assert float(loss_after) == pytest.approx(float(loss), rel=1e-6)
  assert abs(float(loss_before) - float(loss)) > 1e-3


def test_every_param_has_logical_axes():
  def axes_of(model):
    variables = jax.eval_shape(lambda r: model.get_initial_variables(
        r, {"encoder_input_tokens": (2, 8)}), jax.random.PRNGKey(0))
    assert set(variables) == {"params", "params_axes"}
    logical = partitioning.logical_param_specs(variables["params_axes"])
    partitioning.check_params_have_axes(variables["params"], logical)
    return variables["params"], logical

  params, logical = axes_of(make_model(decoder_layers=1))
  assert set(params) == {"bert", "decoder"}
  assert set(params["decoder"]) == {"position_embeddings", "embedding_layer_norm", "layers_0"}
  layer = logical["decoder"]["layers_0"]
  for attn in ("self_attention", "cross_attention"):
    for proj in ("query", "key", "value"):
      assert tuple(layer[attn][proj]["kernel"]) == ("embed", "joined_kv")
    assert tuple(layer[attn]["out"]["kernel"]) == ("joined_kv", "embed")
  assert tuple(layer["mlp"]["wi"]["kernel"]) == ("embed", "mlp")
  assert tuple(logical["decoder"]["position_embeddings"]["embedding"]) == ("length", "embed")
  # tied: the only [vocab, embed] table is the encoder's word embedding
  vocab_tables = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(params)
                  if VOCAB in x.shape and x.ndim == 2]
  assert vocab_tables == ["['bert']['encoder']['embeddings']['word_embeddings']['embedding']"]
  params, logical = axes_of(make_model(tie_output_embeddings=False))
  assert tuple(logical["bert"]["head"]["output_kernel"]) == ("embed", "vocab")
  assert set(params["decoder"]) >= {"layers_0", "layers_1"}


# ------------------------------------------------------------ overfitting
def reverse_task(n=16, length=8, seed=0):
  """Targets are the reversed sources (+ eos, eos), on random ids."""
  rng = np.random.default_rng(seed)
  src = np.zeros((n, length), np.int32)
  tgt = np.zeros((n, length), np.int32)
  w = np.zeros((n, length), np.float32)
  for r in range(n):
    m = rng.integers(3, length - 1)
    ids = rng.integers(2, VOCAB, size=m)
    src[r, :m] = ids
    tgt[r, :m] = ids[::-1]
    tgt[r, m:m + 2] = EOS
    w[r, :m + 2] = 1.0
  return {"encoder_input_tokens": src, "decoder_target_tokens": tgt, "decoder_loss_weights": w}


def test_tiny_model_overfits_16_reversed_sequences_with_narlm_train_step():
  from narlm import train as train_lib
  batch = {k: jnp.asarray(v) for k, v in reverse_task().items()}
  # MODEL's network (and so its compiled init), with an optimizer.
  model = ar_models.ArSeq2SeqModel(MODEL.module, IdVocabulary(VOCAB), IdVocabulary(VOCAB),
                                   optax.adam(3e-3))
  # narlm's trainer step, unchanged (Trainer.init_state only adds shardings,
  # from the eval_shape'd params_axes that test_every_param_has_logical_axes
  # checks the same way).
  trainer = train_lib.Trainer(model)
  params = init_params(model)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": model.optimizer_def.init(params)}
  step_fn = jax.jit(trainer.train_step, donate_argnums=(0,))
  losses = []
  for _ in range(200):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state["step"]) == 200 and np.isfinite(float(metrics["grad_norm"]))
  assert losses[-1] < 0.02 * losses[0], (losses[0], losses[-1])
  tokens, aux = model.predict_batch_with_aux(state["params"], batch)
  want_len = np.asarray(batch["decoder_loss_weights"]).sum(-1).astype(int) - 2
  want = np.where(np.arange(8) < want_len[:, None], np.asarray(batch["decoder_target_tokens"]), PAD)
  np.testing.assert_array_equal(np.asarray(aux["length"]), want_len)
  np.testing.assert_array_equal(np.asarray(tokens), want)


# ---------------------------------------------------------------- errors
def test_bad_batches_and_arguments_raise_clear_errors(random_model):
  model, params, _ = random_model
  batch = toy_batch()
  loss = lambda b: jax.eval_shape(model.loss_fn, params, b, None)
  with pytest.raises(ValueError, match="decoder_loss_weights shape"):
    loss(dict(batch, decoder_loss_weights=batch["decoder_loss_weights"][:, :6]))
  with pytest.raises(ValueError, match="decoder_target_tokens must be"):
    loss(dict(batch, decoder_target_tokens=batch["decoder_target_tokens"][0]))
  with pytest.raises(ValueError, match="batch size"):
    loss(dict(batch, decoder_target_tokens=batch["decoder_target_tokens"][:2],
              decoder_loss_weights=batch["decoder_loss_weights"][:2]))
  with pytest.raises(ValueError, match="encoder_input_tokens must be"):
    loss(dict(batch, encoder_input_tokens=batch["encoder_input_tokens"][..., None]))
  with pytest.raises(KeyError, match="decoder_target_tokens"):
    loss({"encoder_input_tokens": batch["encoder_input_tokens"]})
  with pytest.raises(KeyError, match="encoder_input_tokens"):
    model.predict_batch_with_aux(params, {"inputs": batch["encoder_input_tokens"]})
  too_long = jnp.ones((16, 40), jnp.int32)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    loss(dict(batch, decoder_target_tokens=too_long, decoder_loss_weights=None))
  # source and target lengths may differ for the AR model
  shapes = jax.eval_shape(model.loss_fn, params, dict(
      batch, decoder_target_tokens=batch["decoder_target_tokens"][:, :5],
      decoder_loss_weights=batch["decoder_loss_weights"][:, :5]), None)
  assert shapes[0].shape == ()
  with pytest.raises(ValueError, match="num_decodes"):
    model.predict_batch_with_aux(params, batch, num_decodes=4)
  with pytest.raises(ValueError, match="decode_method"):
    model.predict_batch_with_aux(params, batch, decode_method="viterbi")
  with pytest.raises(ValueError, match="max_decode_length"):
    model.predict_batch_with_aux(params, batch, max_decode_length=33)
  with pytest.raises(ValueError, match="encoder_input_tokens shape"):
    model.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (8,)})
  with pytest.raises(ValueError, match="num_decoder_layers"):
    make_model(decoder_layers=0)


# ------------------------------------------------------------------- gin
@pytest.mark.parametrize("name,size,decoder_layers", [
    ("ar_tiny", "tiny", 2), ("ar_base", "base", 12), ("ar_base_shallow_decoder", "base", 1)])
def test_gin_files_build_the_model(name, size, decoder_layers, data_dir):
  gin = pytest.importorskip("gin")
  vocab_file = data_dir / "vocab" / "bert-base-uncased-vocab.txt"
  gin.clear_config()
  try:
    gin.add_config_file_search_path(str(REPO))
    gin.parse_config_files_and_bindings(
        [str(REPO / "narlm" / "gin" / "models" / f"{name}.gin")],
        ["OPTIMIZER = None", f"vocabularies.get_vocabulary.name_or_path = '{vocab_file}'"])
    model = gin.get_configurable(ar_models.ArSeq2SeqModel)()
  finally:
    gin.clear_config()
  assert isinstance(model, ar_models.ArSeq2SeqModel)
  assert model.module.config == encoder.bert_config(size, 30522)
  assert model.module.decoder_layers == decoder_layers
  assert model.eos_id == 102 and model.pad_id == 0


# ------------------------------------------------------------- warm start
def test_copy_encoder_into_decoder_bert2bert():
  model = make_model(decoder_layers=1)  # 1 encoder layer
  params = jax.device_get(init_params(model))
  copied = ar_models.copy_encoder_into_decoder(params)
  enc, dec = params["bert"]["encoder"], copied["decoder"]
  for dst, src in (("self_attention", "attention"), ("mlp", "mlp"),
                   ("mlp_layer_norm", "mlp_layer_norm"),
                   ("self_attention_layer_norm", "attention_layer_norm")):
    jax.tree_util.tree_map(np.testing.assert_array_equal, dec["layers_0"][dst],
                           enc["layers_0"][src])
  # Cross-attention has no BERT counterpart: untouched.
  jax.tree_util.tree_map(np.testing.assert_array_equal, dec["layers_0"]["cross_attention"],
                         params["decoder"]["layers_0"]["cross_attention"])
  np.testing.assert_array_equal(dec["position_embeddings"]["embedding"],
                                enc["embeddings"]["position_embeddings"]["embedding"])
  # The input tree is not modified.
  assert not np.array_equal(params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"],
                            dec["layers_0"]["mlp"]["wi"]["kernel"])
  deeper = jax.device_get(init_params(MODEL))  # 2 decoder layers, 1 encoder layer
  with pytest.raises(ValueError, match="2-layer decoder from a 1-layer encoder"):
    ar_models.copy_encoder_into_decoder(deeper)
