"""The canvas model's source-aligned draft (narlm/canvas_draft.py): the
on-device alignment against the task preprocessor's, the compaction, pass 1
equal to one-pass NAG-BERT with the same parameters, the draft loss equal to
NAG-BERT's loss, pass counting and bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narlm import canvas
from narlm import canvas_decoding
from narlm import canvas_draft
from narlm import models
from narlm.modules.network import NagBertNetwork
from narlm.tasks import preprocessors
from test_canvas import CLS, CONFIG, EOS, MASK, PAD, SEP, VOCAB, Vocab, init, make_model, toy_batch


def deletion_batch(rows=6, src=10, seed=0):
  """Framed sources and targets that keep a random subsequence of x, with
  a few tokens that occur twice and a target token not in x."""
  rng = np.random.default_rng(seed)
  s = np.zeros((rows, src), np.int32)
  t = np.zeros((rows, src), np.int32)
  for r in range(rows):
    n = int(rng.integers(1, src - 2))
    x = rng.integers(5, 9, n)  # few distinct ids: repeats are common
    s[r, :n + 2] = [CLS, *x, SEP]
    y = [int(v) for v in x if rng.random() < 0.6]
    if r == 1:
      y.append(VOCAB - 1)  # not in x: dropped by the alignment
    y = y[:src - 2]
    t[r, :len(y)] = y
    t[r, len(y):len(y) + 2] = EOS
  return jnp.asarray(s), jnp.asarray(t)


def test_alignment_on_device_equals_the_task_preprocessor_with_the_converter_layout():
  for seed in range(5):
    source, targets = deletion_batch(seed=seed)
    lengths = canvas.target_lengths(targets, EOS, PAD)
    aligned, weights = canvas_draft.align_to_source(source, targets, lengths, eos_id=EOS,
                                                    pad_id=PAD)
    for r in range(source.shape[0]):
      n = int((source[r] != PAD).sum())
      x = np.asarray(source[r, 1:n - 1]).tolist()
      y = np.asarray(targets[r, :int(lengths[r])]).tolist()
      # What sentcomp_aligned_bert + NarFeatureConverter give: align, then eos eos, pad.
      want = preprocessors.source_aligned_targets(x, y, PAD, leading_pads=1) + [EOS, EOS]
      want = (want + [PAD] * source.shape[1])[:source.shape[1]]
      np.testing.assert_array_equal(np.asarray(aligned[r]), want, err_msg=f"seed {seed} row {r}")
      np.testing.assert_array_equal(np.asarray(weights[r]),
                                    (np.arange(source.shape[1]) <= n).astype(np.float32))


def test_compact_draft_keeps_tokens_before_eos_with_their_confidences():
  tokens = jnp.asarray([[PAD, 7, PAD, 8, 9, EOS, 6, PAD], [PAD, PAD, EOS, 5, 5, 5, 5, 5],
                        [PAD, 5, 6, 7, 8, 9, 10, 11]])
  confidence = -jnp.arange(24, dtype=jnp.float32).reshape(3, 8) / 10
  out, conf, lengths = canvas_draft.compact_draft(tokens, confidence, 6, eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(lengths, [3, 0, 5])  # row 3 keeps 7 tokens: W - 1 = 5 fit
  np.testing.assert_array_equal(out, [[7, 8, 9, PAD, PAD, PAD], [PAD] * 6, [5, 6, 7, 8, 9, PAD]])
  np.testing.assert_allclose(conf, [[-0.1, -0.3, -0.4, 0, 0, 0], [0] * 6,
                                    [-1.7, -1.8, -1.9, -2.0, -2.1, 0]], rtol=1e-6)
  wide, _, _ = canvas_draft.compact_draft(tokens, confidence, 11, eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(wide[2], [5, 6, 7, 8, 9, 10, 11, PAD, PAD, PAD, PAD])
  np.testing.assert_array_equal(wide[:2, :6], out[:2])


def nag_bert_twin(use_crf):
  """A NagBertModel with the canvas model's encoder, head and CRF settings."""
  net = NagBertNetwork(CONFIG, use_crf=use_crf, crf_rank=4, crf_beam_size=6,
                       crf_self_transition_exempt_ids=(PAD, EOS))
  return models.NagBertModel(net, Vocab(), Vocab())


@pytest.mark.parametrize("use_crf", [False, True])
def test_pass_one_is_one_pass_nag_bert_and_the_draft_loss_is_its_loss(use_crf):
  model = make_model(use_crf=use_crf, draft_weight=1.0)
  params = init(model, seed=2)
  # The canvas model's parameters, NAG-BERT's names: bert/ (and crf/) only.
  nag = nag_bert_twin(use_crf)
  nag_params = {k: v for k, v in params.items() if k != "length_head"}
  shapes = jax.tree_util.tree_map(jnp.shape, nag_params)
  want = jax.tree_util.tree_map(jnp.shape, nag.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 8),
                              "decoder_target_tokens": (2, 8)})["params"])
  assert shapes == want
  source, targets = deletion_batch(src=8)
  method = "refine_draft_crf" if use_crf else "refine_draft"
  tokens, aux = model.predict_batch_with_aux(params, {"encoder_input_tokens": source},
                                             decode_method=method, iterations=1)
  nag_tokens, nag_aux = nag.predict_batch_with_aux(
      nag_params, {"encoder_input_tokens": source},
      decode_method="viterbi" if use_crf else "argmax")
  np.testing.assert_array_equal(tokens, nag_tokens)
  np.testing.assert_array_equal(aux["length"], nag_aux["length"])
  np.testing.assert_array_equal(aux["passes"], 1)
  # The draft loss is NAG-BERT's loss on the aligned targets.
  lengths = canvas.target_lengths(targets, EOS, PAD)
  aligned, weights = canvas_draft.align_to_source(source, targets, lengths, eos_id=EOS,
                                                  pad_id=PAD)
  _, metrics = model.eval_fn(params, {"encoder_input_tokens": source,
                                      "decoder_target_tokens": targets})
  nag_loss, _ = nag.eval_fn(nag_params, {"encoder_input_tokens": source,
                                         "decoder_target_tokens": aligned,
                                         "decoder_loss_weights": weights})
  np.testing.assert_allclose(float(metrics["draft_loss"].compute()), float(nag_loss), rtol=1e-5)
  without, _ = make_model(use_crf=use_crf).eval_fn(params, {"encoder_input_tokens": source,
                                                           "decoder_target_tokens": targets})
  np.testing.assert_allclose(float(metrics["loss"].compute()), float(without) + float(nag_loss),
                             rtol=1e-5)


def test_draft_loss_trains_the_head_through_the_source_states():
  batch = dict(zip(("encoder_input_tokens", "decoder_target_tokens"), deletion_batch()))
  plain, drafted = make_model(use_crf=True), make_model(use_crf=True, draft_weight=0.5)
  params = init(plain, src=10, tgt=10)
  grad = lambda m: jax.grad(lambda p: m.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
  g0, g1 = grad(plain), grad(drafted)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1)
  assert diff["bert"]["head"]["output_bias"] > 0
  assert diff["bert"]["encoder"]["layers_0"]["attention"]["query"]["kernel"] > 0
  assert diff["length_head"]["kernel"] == 0  # the draft does not touch the length head


def test_refining_the_draft_runs_exactly_t_passes(monkeypatch):
  model = make_model(use_crf=True, draft_weight=1.0)
  params = init(model)
  batch = {"encoder_input_tokens": toy_batch()["encoder_input_tokens"]}
  calls = []
  real = canvas.make_canvas
  monkeypatch.setattr(canvas_decoding, "make_canvas", lambda *a, **k: calls.append(1) or real(*a, **k))
  for method in canvas_draft.DRAFT_METHODS:
    for passes in (1, 2, 4):
      calls.clear()
      with jax.disable_jit():
        tokens, aux = model.predict_batch_with_aux(params, batch, decode_method=method,
                                                   iterations=passes)
      assert len(calls) == passes - 1, (method, passes, len(calls))  # pass 1 is the draft
      np.testing.assert_array_equal(aux["passes"], passes)
      assert tokens.shape == batch["encoder_input_tokens"].shape
      assert not np.isin(np.asarray(tokens), [MASK, SEP]).any()


def test_draft_arguments_fail_clearly():
  model = make_model(use_crf=False, draft_weight=1.0)
  params = init(model)
  batch = {"encoder_input_tokens": toy_batch()["encoder_input_tokens"]}
  with pytest.raises(ValueError, match="'refine_draft_crf' needs a CRF"):
    model.predict_batch_with_aux(params, batch, decode_method="refine_draft_crf")
  with pytest.raises(ValueError, match="takes its length from the draft: length_beam must be 1"):
    model.predict_batch_with_aux(params, batch, decode_method="refine_draft", length_beam=2)
  with pytest.raises(ValueError, match="draft_weight must be >= 0"):
    make_model(draft_weight=-1.0)
  with pytest.raises(ValueError, match="needs framed sources"):
    make_model(draft_weight=1.0, frame_inputs=False)
  unframed = make_model(frame_inputs=False)
  with pytest.raises(ValueError, match="does not frame its sources"):
    unframed.predict_batch_with_aux(params, batch, decode_method="refine_draft")
  with pytest.raises(ValueError, match="needs the draft head trained: this model has "
                     "draft_weight = 0"):
    make_model().predict_batch_with_aux(params, batch, decode_method="refine_draft")


def test_remask_ratio_sets_the_first_share_and_decays_linearly():
  m = jnp.asarray([10, 7, 0])
  # default: mask-predict's floor(m (T - t + 1) / T)
  np.testing.assert_array_equal(canvas.remask_count(m, 2, 4), [7, 5, 0])
  # rho = (T - 1) / T is the default schedule
  for t in (2, 3, 4):
    np.testing.assert_array_equal(canvas.remask_count(m, t, 4, 0.75), canvas.remask_count(m, t, 4))
  np.testing.assert_array_equal(canvas.remask_count(m, 2, 2, 0.3), [3, 2, 0])
  np.testing.assert_array_equal(canvas.remask_count(m, 3, 3, 0.4), [2, 1, 0])  # 0.4 m / 2
  for bad in (0.0, 1.5, True, "0.3"):
    with pytest.raises(ValueError, match="remask_ratio"):
      canvas.check_remask_ratio(bad)
  from narlm import compare
  assert compare.split_method("refine_draft_crf@2r0.25") == (
      "refine_draft_crf", {"iterations": 2, "remask_ratio": 0.25})
  assert compare.split_method("mask_predict@4x2r0.5") == (
      "mask_predict", {"iterations": 4, "length_beam": 2, "remask_ratio": 0.5})
  with pytest.raises(ValueError, match="must be in"):
    compare.split_method("refine_draft@2r1.5")


def test_a_smaller_remask_ratio_changes_fewer_draft_tokens(monkeypatch):
  model = make_model(use_crf=True, draft_weight=1.0)
  params = init(model, seed=4)
  batch = {"encoder_input_tokens": toy_batch(rows=6)["encoder_input_tokens"]}
  seen = []
  real = canvas.make_canvas
  monkeypatch.setattr(canvas_decoding, "make_canvas",
                      lambda t, l, masked, **k: seen.append((masked & (jnp.arange(t.shape[1])
                                                                       < l[:, None])).sum())
                      or real(t, l, masked, **k))
  with jax.disable_jit():
    for ratio in (0.2, 1.0):
      model.predict_batch_with_aux(params, batch, decode_method="refine_draft_crf",
                                   iterations=2, remask_ratio=ratio)
  lengths = model.predict_batch_with_aux(params, batch, decode_method="refine_draft_crf",
                                         iterations=1)[1]["length"]
  assert int(seen[0]) == int(jnp.floor(0.2 * lengths + 1e-4).sum())
  assert int(seen[1]) == int(lengths.sum())  # 1.0: every draft token re-predicted


def test_train_on_draft_uses_drafts_of_the_target_length_and_masks_their_errors():
  model = make_model(draft_weight=1.0, train_on_draft=True)
  targets = jnp.asarray([[7, 8, 9, EOS, EOS, PAD], [5, 6, EOS, EOS, PAD, PAD]])
  lengths = canvas.target_lengths(targets, EOS, PAD)
  # drafts over [CLS] x [SEP] pad: row 0 "7 6 9" (right length, one error),
  # row 1 "5 6 7" (too long: the target is used)
  drafts = jnp.asarray([[PAD, 7, PAD, 6, 9, EOS, EOS], [PAD, 5, 6, 7, EOS, EOS, PAD]])
  logits = jnp.where(jnp.arange(VOCAB)[None, None, :] == drafts[..., None], 5.0, 0.0)
  masked = jnp.asarray([[False, False, True, False, False, False]] * 2)
  context, new_masked, used = model._draft_context(logits, targets, lengths, masked)
  np.testing.assert_array_equal(used, [1.0, 0.0])
  np.testing.assert_array_equal(context[0, :3], [7, 6, 9])
  np.testing.assert_array_equal(context[1], targets[1])
  np.testing.assert_array_equal(new_masked[0], [False, True, True, False, False, False])
  np.testing.assert_array_equal(new_masked[1], masked[1])
  # and the loss runs with it, with a finite value and the share reported
  params = init(model, src=10, tgt=10)
  batch = dict(zip(("encoder_input_tokens", "decoder_target_tokens"), deletion_batch()))
  loss, metrics = model.loss_fn(params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss)) and "draft_context_share" in metrics
  with pytest.raises(ValueError, match="train_on_draft needs a draft"):
    make_model(train_on_draft=True)
