"""narlm.tagger: greedy keep labels, the t5x interface, overfitting toy pairs,
the MiniLM warm start and the gin files."""

import itertools
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import partitioning
from narlm import tagger
from narlm.modules import encoder
from toy_data import EOS, PAD, IdVocabulary

REPO = pathlib.Path(__file__).resolve().parents[1]
CLS = 2  # toy [CLS]; the toy [SEP] is EOS, as in BERT's vocabulary


def make_model(vocab_size=20, optimizer=None, **kwargs):
  config = encoder.bert_config("tiny", vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
  vocab = IdVocabulary(vocab_size)
  return tagger.TaggerModel(tagger.TaggerNetwork(config), vocab, vocab, optimizer, **kwargs)


# ------------------------------------------------------------------ labels
def brute_force_keep(source, target, eos_id, pad_id):
  """Independent characterisation of the greedy labels: the longest prefix of
  the target words that is a subsequence of the source, at its
  lexicographically smallest (leftmost) positions."""
  words = list(itertools.takewhile(lambda t: t not in (eos_id, pad_id), target))
  for k in range(len(words), -1, -1):
    for positions in itertools.combinations(range(len(source)), k):
      if [source[p] for p in positions] == words[:k]:
        return [p in positions for p in range(len(source))]
  raise AssertionError("unreachable: k = 0 always matches")


def random_pair(rng, src_len, tgt_len):
  """A framed-or-not source over a 4-word vocabulary (many repeats) and a
  target that is a subsequence, a perturbed subsequence or random words."""
  n = rng.integers(0, src_len + 1)
  words = rng.integers(3, 7, size=n).tolist()
  if rng.random() < 0.5 and n + 2 <= src_len:
    words = [CLS] + words + [EOS]  # the [CLS] x [SEP] framing
  source = words + [PAD] * (src_len - len(words))
  kind = rng.integers(3)
  if kind == 0:  # a subsequence of the source words
    target = [w for w in words if w not in (CLS, EOS) and rng.random() < 0.6]
  elif kind == 1:  # one word changed: the alignment stops there
    target = [w for w in words if w not in (CLS, EOS) and rng.random() < 0.6]
    if target:
      target[rng.integers(len(target))] = int(rng.integers(3, 8))
  else:
    target = rng.integers(3, 8, size=rng.integers(0, tgt_len)).tolist()
  target = target[:tgt_len - 2] + [EOS, EOS]
  return source, target + [PAD] * (tgt_len - len(target))


@pytest.mark.parametrize("src_len,tgt_len", [(8, 8), (7, 5), (5, 9)])
def test_greedy_keep_labels_match_brute_force(src_len, tgt_len):
  rng = np.random.default_rng(src_len * 10 + tgt_len)
  pairs = [random_pair(rng, src_len, tgt_len) for _ in range(300)]
  sources = np.array([s for s, _ in pairs], np.int32)
  targets = np.array([t for _, t in pairs], np.int32)
  got = np.asarray(jax.jit(tagger.greedy_keep_labels, static_argnums=(2, 3))(
      sources, targets, EOS, PAD))
  assert got.shape == (len(pairs), src_len) and got.dtype == bool
  want = np.array([brute_force_keep(s, t, EOS, PAD) for s, t in pairs])
  np.testing.assert_array_equal(got, want)
  assert got.any() and not got.all()  # the cases exercise both labels


def test_greedy_keep_labels_examples():
  # [CLS] a b a c [SEP] pad, target "a c" -> keep the first a and the c;
  # [CLS] / [SEP] (= eos) are never kept, even against the target's eos.
  src = [[CLS, 3, 4, 3, 5, EOS, PAD]]
  tgt = [[3, 5, EOS, EOS, PAD, PAD, PAD]]
  np.testing.assert_array_equal(tagger.greedy_keep_labels(src, tgt, EOS, PAD),
                                [[0, 1, 0, 0, 1, 0, 0]])
  # A target word missing from the source stops the alignment.
  tgt = [[3, 6, 5, EOS, EOS, PAD, PAD]]
  np.testing.assert_array_equal(tagger.greedy_keep_labels(src, tgt, EOS, PAD),
                                [[0, 1, 0, 0, 0, 0, 0]])
  with pytest.raises(ValueError, match="must share B"):
    tagger.greedy_keep_labels(np.zeros((2, 3), np.int32), np.zeros((3, 3), np.int32), EOS, PAD)


def test_compact_kept_is_stable():
  tokens = jnp.array([[5, 6, 7, 8], [9, 10, 11, 12]])
  keep = jnp.array([[0, 1, 0, 1], [1, 1, 1, 1]], bool)
  out, n = tagger.compact_kept(tokens, keep, PAD)
  np.testing.assert_array_equal(out, [[6, 8, 0, 0], [9, 10, 11, 12]])
  np.testing.assert_array_equal(n, [2, 4])


# ------------------------------------------------------- t5x interface
def toy_batch():
  sources = jnp.array([[CLS, 3, 4, 5, 6, EOS, PAD, PAD], [CLS, 7, 8, 9, EOS, PAD, PAD, PAD],
                       [CLS, 10, 11, 12, 13, 14, 15, EOS]], jnp.int32)
  targets = jnp.array([[3, 5, EOS, EOS, PAD, PAD, PAD, PAD], [7, 8, 9, EOS, EOS, PAD, PAD, PAD],
                       [11, 13, 15, EOS, EOS, PAD, PAD, PAD]], jnp.int32)
  return {"encoder_input_tokens": sources, "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets != PAD).astype(jnp.float32)}


def test_interface_shapes_and_axes():
  model = make_model()
  for name in ("loss_fn", "eval_fn", "predict_batch", "predict_batch_with_aux", "score_batch",
               "get_initial_variables", "warm_start_from_hf_bert"):
    assert callable(getattr(model, name)), name
  variables = model.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (3, 8)})
  assert set(variables) == {"params", "params_axes"}
  params = variables["params"]
  assert set(params) == {"bert", "tag_head"} and set(params["bert"]) == {"encoder"}
  logical = partitioning.logical_param_specs(variables["params_axes"])
  partitioning.check_params_have_axes(params, logical)
  assert tuple(logical["tag_head"]["kernel"]) == ("embed", "tag_classes")
  used = {n for spec in jax.tree_util.tree_leaves(
      logical, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) for n in spec}
  ruled = {n for n, _ in partitioning.standard_logical_axis_rules()}
  assert used - ruled <= {"tag_classes"}  # replicated by flax when unruled

  batch = toy_batch()
  loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
  assert np.isfinite(float(loss))
  assert float(metrics["loss"].compute()) == pytest.approx(float(loss), rel=1e-6)
  assert float(metrics["num_tokens"].compute()) == 6 + 5 + 8
  # 2 + 3 + 3 target words, all aligned; keep labels are 8 of 19 positions.
  assert float(metrics["aligned_target_tokens"].compute()) == 1.0
  assert float(metrics["reference_keep_rate"].compute()) == pytest.approx(8 / 19)
  loss_d, _ = model.loss_fn(params, batch, jax.random.PRNGKey(1))  # the dropout path
  assert np.isfinite(float(loss_d))
  _, eval_metrics = model.eval_fn(params, batch)
  assert float(eval_metrics["loss"].compute()) == pytest.approx(float(loss), rel=1e-6)

  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  assert tokens.shape == (3, 8) and tokens.dtype == jnp.int32
  assert aux["scores"].shape == (3,) and aux["length"].shape == (3,)
  assert model.predict_batch(params, batch).shape == (3, 8)
  # keep_threshold 0 keeps every real source token except eos ([SEP]).
  tokens, aux = model.predict_batch_with_aux(params, batch, keep_threshold=0.0)
  np.testing.assert_array_equal(aux["length"], [5, 4, 7])
  np.testing.assert_array_equal(tokens[1], [CLS, 7, 8, 9, PAD, PAD, PAD, PAD])
  all_decodes, _ = model.predict_batch_with_aux(params, batch, return_all_decodes=True)
  assert all_decodes.shape == (3, 1, 8)
  scores = model.score_batch(params, batch)
  assert scores.shape == (3,) and np.all(np.asarray(scores) < 0)
  with pytest.raises(ValueError, match="decode_method"):
    model.predict_batch_with_aux(params, batch, decode_method="viterbi")
  with pytest.raises(ValueError, match="num_decodes"):
    model.predict_batch_with_aux(params, batch, num_decodes=2)
  with pytest.raises(ValueError, match="keep_threshold"):
    make_model(keep_threshold=1.0)
  with pytest.raises(KeyError, match="decoder_target_tokens"):
    model.loss_fn(params, {"encoder_input_tokens": batch["encoder_input_tokens"]}, None)


def test_vocabularies_must_match():
  config = encoder.bert_config("tiny", 20)
  with pytest.raises(ValueError, match="must be the same"):
    tagger.TaggerModel(tagger.TaggerNetwork(config), IdVocabulary(20), IdVocabulary(20))


def test_overfits_toy_pairs_and_predicts_the_kept_tokens():
  model = make_model()
  batch = toy_batch()
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (3, 8)})["params"]
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(150):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.05 < losses[0]
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  lengths = np.asarray(aux["length"])
  want = [[3, 5], [7, 8, 9], [11, 13, 15]]
  assert [np.asarray(tokens)[i, :lengths[i]].tolist() for i in range(3)] == want
  assert (np.asarray(tokens)[0, 2:] == PAD).all()


# ------------------------------------------------------- warm start, gin
def test_warm_starts_from_minilm():
  from narlm import hf_bert
  checkpoint = hf_bert.minilm_checkpoint_dir()
  config, loaded = hf_bert.load_hf_bert(checkpoint)
  from narlm import vocabularies
  vocab = vocabularies.bert_vocabulary()
  model = tagger.TaggerModel(tagger.TaggerNetwork(config), vocab, vocab)
  params = jax.device_get(jax.jit(lambda rng: model.get_initial_variables(
      rng, {"encoder_input_tokens": (1, 8)})["params"])(jax.random.PRNGKey(0)))
  warm = model.warm_start_from_hf_bert(flax.core.unfreeze(params), str(checkpoint))
  for path in (("embeddings", "word_embeddings", "embedding"),
               ("layers_5", "mlp", "wo", "kernel")):
    ours, theirs = warm["bert"]["encoder"], loaded["encoder"]
    for k in path:
      ours, theirs = ours[k], theirs[k]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  np.testing.assert_array_equal(warm["tag_head"]["kernel"], params["tag_head"]["kernel"])


def test_comparison_gin_builds_the_tagger():
  import gin
  from narlm import train
  gin.clear_config()
  try:
    train.parse_gin(["narlm/gin/compare/sentcomp_minilm_tagger.gin"],
                    ['MODEL_DIR = "/tmp/unused"'])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "sentcomp_bert"
  finally:
    gin.clear_config()
  assert isinstance(model, tagger.TaggerModel)
  config = model.module.config
  assert (config.hidden_size, config.num_layers, config.num_heads) == (384, 6, 12)
  assert model.keep_threshold == 0.5 and model.optimizer_def is not None
