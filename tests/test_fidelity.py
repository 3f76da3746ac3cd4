"""NAG-BERT fidelity and cheaper-training pieces of the quality work:
[CLS] x [SEP] framing, IWSLT14 HTML entities, head dropout, the restricted
output vocabulary, length-bucketed batches, best-checkpoint tracking."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from narlm import decoding
from narlm import feature_converters as fc
from narlm import models
from narlm import output_vocab as ov
from narlm import train
from narlm.modules import encoder
from narlm.modules.network import NagBertNetwork
from toy_data import IdVocabulary, random_batch


def _ds(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})


# ------------------------------------------------------------------ framing
def test_converter_frames_sources_as_cls_x_sep_and_truncates_inside():
  conv = fc.NarFeatureConverter(pack=False, cls_id=101, sep_id=102)
  out = list(conv(_ds([{"inputs": [5, 6, 7], "targets": [8, 9]},
                       {"inputs": [1, 2, 3, 4, 5, 6, 7], "targets": [8]}]),
                  {"inputs": 6, "targets": 6}).as_numpy_iterator())
  # y1 is aligned with the [CLS] position; n = 3 + 2 source positions.
  np.testing.assert_array_equal(out[0]["encoder_input_tokens"], [101, 5, 6, 7, 102, 0])
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [8, 9, 102, 102, 0, 0])
  # over-long: the source is cut to inputs_length - 2 and still framed
  np.testing.assert_array_equal(out[1]["encoder_input_tokens"], [101, 1, 2, 3, 4, 102])
  assert conv.truncation_stats.as_dict()["inputs_tokens_dropped"] == 3
  with pytest.raises(ValueError, match="both cls_id and sep_id"):
    fc.NarFeatureConverter(pack=False, cls_id=101)


def test_bert_model_frames_sources_and_host_framing_matches_the_converter():
  from narlm import vocabularies
  vocab = vocabularies.bert_vocabulary()
  config = encoder.bert_config("tiny", vocab.vocab_size)
  model = models.NagBertModel(NagBertNetwork(config, use_crf=False), vocab, vocab)
  assert model.source_framing == (101, 102) and model.source_overhead == 2
  ids = vocab.encode("state officials warn drivers")
  conv = model.FEATURE_CONVERTER_CLS(pack=False)
  row = next(conv(_ds([{"inputs": ids, "targets": ids}]), {"inputs": 16, "targets": 16})
             .as_numpy_iterator())["encoder_input_tokens"]
  assert model.frame_source(ids, 16) == row[row != 0].tolist()
  assert model.frame_source(ids, 4) == [101, *ids[:2], 102]
  unframed = models.NagBertModel(NagBertNetwork(config, use_crf=False), vocab, vocab,
                                 frame_inputs=False)
  assert unframed.source_framing is None and unframed.frame_source(ids) == list(ids)
  # toy vocabularies without [CLS] stay unframed
  toy = IdVocabulary(20)
  toy_model = models.NagBertModel(NagBertNetwork(encoder.bert_config("tiny", 20)), toy, toy)
  assert toy_model.source_framing is None


def test_iwslt14_text_has_no_html_entities(data_dir):
  from narlm import tasks
  raw = (data_dir / "iwslt14_de_en" / "valid.de-en.en").read_text(encoding="utf-8")
  assert "&apos;" in raw  # the raw files do have them
  task = tasks.get_task_or_mixture("iwslt14_de_en_bert")
  ds = task.get_dataset(sequence_length=None, split="validation", shuffle=False)
  vocab = task.output_features["targets"].vocabulary
  for ex in ds.as_numpy_iterator():
    for key in ("inputs_pretokenized", "targets_pretokenized"):
      text = ex[key].decode("utf-8")
      assert "&apos;" not in text and "&quot;" not in text and "&amp;" not in text, text
    assert "& ap ##os ;" not in " ".join(vocab.tokens(ex["targets"].tolist())) \
        if hasattr(vocab, "tokens") else True


# ------------------------------------------------------------- head dropout
def test_head_dropout_is_active_in_training_only():
  config = encoder.bert_config("tiny", 30, hidden_dropout=0.0, attention_dropout=0.0)
  net = NagBertNetwork(config, use_crf=False, head_dropout=0.5)
  tokens = jnp.asarray(np.arange(1, 9, dtype=np.int32)[None])
  variables = net.init(jax.random.PRNGKey(0), tokens, method=NagBertNetwork.initialize)
  plain = net.apply(variables, tokens)
  again = net.apply(variables, tokens, deterministic=True)
  np.testing.assert_array_equal(plain, again)
  dropped = net.apply(variables, tokens, deterministic=False,
                      rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(plain, dropped)


# ------------------------------------------------------ restricted outputs
def _model(vocab_size=40, output_vocab=None, use_crf=True):
  config = encoder.bert_config("tiny", vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
  net = NagBertNetwork(config, use_crf=use_crf, crf_rank=4, crf_beam_size=8,
                       output_vocab=output_vocab)
  vocab = IdVocabulary(vocab_size)
  return models.NagBertModel(net, vocab, vocab)


def test_output_vocab_maps_ids_and_classes():
  v = ov.from_ids([7, 3, 9, 3], vocab_size=12, unk_id=2, required=[1])
  np.testing.assert_array_equal(v.ids, [0, 1, 2, 3, 7, 9])  # pad is class 0
  assert v.index_of(7) == 4 and v.index_of(5) == v.index_of(2)  # absent -> unk
  assert v.coverage([3, 7, 5, 5]) == 0.5
  assert hash(v) == hash(ov.from_ids([0, 1, 2, 3, 7, 9], 12, 2)) and v == ov.from_ids(
      [0, 1, 2, 3, 7, 9], 12, 2)
  with pytest.raises(ValueError, match=r"\[0, 12\)"):
    ov.from_ids([12], vocab_size=12, unk_id=2)


@pytest.mark.slow  # ~18 s: CI's slow pass
def test_full_output_vocab_equals_the_unrestricted_model():
  """With every id as an output class the restricted path (gathered head,
  class mapping) must reproduce the plain model's loss and decodes."""
  plain = _model()
  full = _model(output_vocab=ov.from_ids(range(40), vocab_size=40, unk_id=2))
  batch = {k: jnp.asarray(v) for k, v in random_batch(3, 10, 10, 40, first_id=3).items()}
  params = plain.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (3, 10)})["params"]
  loss_a, _ = plain.loss_fn(params, batch, None)
  loss_b, _ = full.loss_fn(params, batch, None)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  for method in ("argmax", "viterbi"):
    tok_a, _ = plain.predict_batch_with_aux(params, batch, decode_method=method)
    tok_b, _ = full.predict_batch_with_aux(params, batch, decode_method=method)
    np.testing.assert_array_equal(tok_a, tok_b)


def test_restricted_output_vocab_decodes_only_its_ids_and_learns():
  import optax
  keep = list(range(3, 12))  # the toy targets below use ids 3..11 only
  vocab = ov.from_ids(keep, vocab_size=40, unk_id=2, required=[1])
  model = _model(output_vocab=vocab)
  rng = np.random.default_rng(0)
  src = rng.integers(3, 40, size=(4, 8)).astype(np.int32)
  tgt = np.zeros((4, 8), np.int32)
  tgt[:, :4] = rng.integers(3, 12, size=(4, 4))
  tgt[:, 4:6] = 1  # eos eos
  batch = {"encoder_input_tokens": jnp.asarray(src), "decoder_target_tokens": jnp.asarray(tgt),
           "decoder_loss_weights": jnp.asarray((tgt != 0).astype(np.float32))}
  params = model.get_initial_variables(jax.random.PRNGKey(0),
                                       {"encoder_input_tokens": (4, 8)})["params"]
  assert params["crf"]["E1"].shape[0] == vocab.size == 12  # + pad, eos, unk
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    (loss, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(p, batch, None)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  first = None
  for _ in range(150):
    params, state, loss = step(params, state)
    first = loss if first is None else first
  assert float(loss) < 0.3 * float(first)
  tokens, aux = model.predict_batch_with_aux(params, batch, decode_method="viterbi")
  tokens = np.asarray(tokens)
  assert set(tokens.ravel().tolist()) <= set(vocab.ids.tolist())
  np.testing.assert_array_equal(tokens[:, :4], tgt[:, :4])  # memorised, in vocabulary ids


# ---------------------------------------------------------- length buckets
def test_bucket_by_length_groups_and_cuts_batches():
  rows = []
  for n in [3, 20, 5, 30, 4, 18, 6, 25]:
    enc = np.zeros(32, np.int32)
    enc[:n] = 7
    weights = np.zeros(32, np.float32)
    weights[:2] = 1
    rows.append({"encoder_input_tokens": enc, "decoder_target_tokens": enc.copy(),
                 "decoder_loss_weights": weights})
  ds = tf.data.Dataset.from_tensor_slices({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  batches = list(train.bucket_by_length(ds, (8, 24, 64), 2).as_numpy_iterator())
  shapes = [b["encoder_input_tokens"].shape for b in batches]
  # buckets 8, 24 and the row length 32 (64 > 32 is dropped)
  assert sorted(set(s[1] for s in shapes)) == [8, 24, 32] and all(s[0] == 2 for s in shapes)
  seen = sorted(int((b["encoder_input_tokens"][i] != 0).sum()) for b in batches for i in range(2))
  assert seen == sorted([3, 20, 5, 30, 4, 18, 6, 25])  # nothing lost, nothing cut
  again = list(train.bucket_by_length(ds, (8, 24, 64), 2).as_numpy_iterator())
  for a, b in zip(batches, again):  # deterministic: resume can skip batches
    np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])


# ------------------------------------------------------- best checkpoints
def test_best_tracker_selects_saves_stops_and_resumes(tmp_path):
  params = {"w": jnp.arange(3.0)}
  tracker = train.BestTracker(str(tmp_path), "t/rougeL", "max", patience=2, start_step=0)
  values = [(10, 40.0), (20, 45.0), (30, 44.0), (40, 45.0)]
  stops = [tracker.update(s, {"eval/t/rougeL": v, "eval/loss": 1.0},
                          {"w": params["w"] + s}) for s, v in values]
  assert stops == [False, False, False, True]  # 2 evals without a new best (ties do not count)
  assert tracker.best_step == 20 and train.best_checkpoint_step(str(tmp_path)) == 20
  assert json.loads((tmp_path / "best.json").read_text())["value"] == 45.0
  curve = [json.loads(l) for l in (tmp_path / "validation_curve.jsonl").read_text().splitlines()]
  assert [r["step"] for r in curve] == [10, 20, 30, 40]
  np.testing.assert_array_equal(train.restore_params(str(tmp_path))["w"], [20.0, 21.0, 22.0])
  resumed = train.BestTracker(str(tmp_path), "t/rougeL", "max", patience=2, start_step=30)
  assert resumed.best_step == 20 and resumed.evals_since_best == 1
  with pytest.raises(ValueError, match="not among the evaluation results"):
    resumed.update(50, {"eval/loss": 1.0}, params)


def test_best_tracker_resumes_past_a_best_checkpoint_newer_than_the_restored_step(tmp_path):
  """A kill after a new best was saved but before the next regular checkpoint:
  the resumed run evaluates that step again; it must replace the best
  checkpoint (orbax refused: 'Checkpoint for step 40 already exists') and the
  curve must list the step once."""
  run = str(tmp_path)
  tracker = train.BestTracker(run, "t/rougeL", "max", patience=4, start_step=0)
  for step, value in [(10, 40.0), (20, 45.0), (30, 44.0), (40, 46.0)]:
    tracker.update(step, {"eval/t/rougeL": value}, {"w": jnp.full((2,), float(step))})
  assert train.best_checkpoint_step(run) == 40
  resumed = train.BestTracker(run, "t/rougeL", "max", patience=4, start_step=30)
  assert resumed.best_step == 20 and resumed.evals_since_best == 1
  lines = (tmp_path / "validation_curve.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [10, 20, 30]
  assert not resumed.update(40, {"eval/t/rougeL": 46.0}, {"w": jnp.full((2,), 41.0)})
  assert resumed.best_step == 40 and train.best_checkpoint_step(run) == 40
  np.testing.assert_array_equal(train.restore_params(run)["w"], [41.0, 41.0])
  lines = (tmp_path / "validation_curve.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [10, 20, 30, 40]


# --------------------------------------------------- source-aligned targets
def test_source_aligned_targets_keep_or_pad_each_source_position():
  from narlm.tasks import preprocessors as prep
  src = [10, 11, 12, 11, 13, 14]
  # greedy: 11 -> its first occurrence, 13 after it; 99 is not in the source: dropped
  assert prep.source_aligned_targets(src, [11, 99, 13]) == [0, 0, 11, 0, 0, 13, 0]
  assert prep.source_aligned_targets(src, [11, 11, 14], leading_pads=0) == [0, 11, 0, 11, 0, 14]
  assert prep.source_aligned_targets(src, []) == [0] * 7
  # decoding's pad skipping turns an aligned output back into the compression
  aligned = jnp.asarray([prep.source_aligned_targets(src, [11, 13]) + [102, 102]])
  out, length = decoding.cut_at_first_eos(aligned, eos_id=102, pad_id=0)
  assert out[0, :int(length[0])].tolist() == [11, 13]


def test_sentcomp_aligned_task_lines_targets_up_with_the_framed_source():
  from narlm import tasks, vocabularies
  task = tasks.get_task_or_mixture("sentcomp_aligned_bert")
  vocab = vocabularies.bert_vocabulary()
  model = models.NagBertModel(NagBertNetwork(encoder.bert_config("tiny", vocab.vocab_size),
                                             use_crf=False), vocab, vocab)
  conv = model.FEATURE_CONVERTER_CLS(pack=False)
  ds = task.get_dataset(sequence_length=None, split="validation", shuffle=False).take(20)
  raw = list(ds.as_numpy_iterator())
  rows = list(conv(ds, {"inputs": 64, "targets": 64}).as_numpy_iterator())
  for ex, row in zip(raw, rows):
    enc, tgt = row["encoder_input_tokens"], row["decoder_target_tokens"]
    kept = tgt != 0
    n = int((enc != 0).sum())
    # every kept target token sits on the same token of the framed source
    assert (tgt[kept & (np.arange(64) < n - 1)] == enc[kept & (np.arange(64) < n - 1)]).all()
    assert tgt[n - 1] == 102 and tgt[n] == 102  # eos at [SEP] and after it
    words = vocab.decode([int(t) for t in tgt[:n - 1] if t])
    assert words.split()[:3] == vocab.decode(vocab.encode(
        ex["targets_pretokenized"].decode())).split()[:3]


def test_output_vocab_coverage_of_the_validation_targets_is_checked(caplog):
  import logging
  import types
  from narlm import train
  restricted = ov.from_task("sentcomp_bert")
  outside, total = ov.task_coverage(restricted, "sentcomp_bert", "validation")
  assert total > 10000 and 0.01 < outside / total < 0.10  # words no training target used
  everything = ov.from_ids(range(30522), 30522, unk_id=100)
  assert ov.task_coverage(everything, "sentcomp_bert", "validation")[0] == 0
  # A mixture's dataset repeats without end: the check reads a bounded sample.
  outside, total = ov.task_coverage(restricted, "narlm_wiki_books_local", "validation",
                                    max_examples=40)
  assert total > 0 and 0 < outside < total
  cfg = train.DatasetConfig(mixture_or_task_name="sentcomp_bert",
                            task_feature_lengths={"inputs": 64, "targets": 64},
                            split="validation")
  with caplog.at_level(logging.WARNING):
    train._check_output_vocab_coverage(
        types.SimpleNamespace(module=types.SimpleNamespace(output_vocab=restricted)), cfg)
    train._check_output_vocab_coverage(
        types.SimpleNamespace(module=types.SimpleNamespace(output_vocab=everything)), cfg)
  warnings = [r.getMessage() for r in caplog.records if "OUTPUT_VOCAB" in r.getMessage()]
  assert len(warnings) == 1 and "can never produce them" in warnings[0], warnings
