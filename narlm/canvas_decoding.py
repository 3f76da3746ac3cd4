"""Mask-predict decoding of the canvas model (`narlm.canvas`), one jitted
program per model, shape, method, T, length beam, longest output and
re-masking share: from [MASK]s of the `length_beam` likeliest lengths, or
from the model's source-aligned draft (`narlm.canvas_draft`).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from narlm import canvas_draft
from narlm import decoding
from narlm.canvas_layout import lowest_k, make_canvas, remask_count
from narlm.model_base import PyTree

# Canvas widths mask-predict's passes run at (below the full M + 1).
CANVAS_WIDTHS = (8, 16, 32, 64)
# A clamped position's other classes: low enough for Viterbi never to pick
# them, finite so that no beam score becomes inf - inf.
_CLAMP = -1e9


@functools.partial(jax.jit, static_argnames=("model", "method", "iterations", "length_beam",
                                             "longest", "canvas_widths", "remask_ratio"))
def mask_predict(model, params: PyTree, source_tokens: jnp.ndarray, *, method: str,
                 iterations: int, length_beam: int, longest: int,
                 canvas_widths: tuple = CANVAS_WIDTHS, remask_ratio: Optional[float] = None):
  """Mask-predict over a length beam, or from the source-aligned draft (see
the module docstring).

  Args:
    model: the CanvasModel (hashable by identity: one program per model,
      shape, method, T, beam and longest length).
    source_tokens: int [B, S].
    longest: M, the longest output; the canvas has W = M + 1 positions.
    canvas_widths: the narrower canvases the passes may run on when every
      candidate fits (() = always W; the outputs are the same).
    remask_ratio: see `remask_count` (None: mask-predict's linear decay).

  Returns:
    (tokens [B, max(S, M)] int32: output then pad; aux {'scores' [B],
    'length' [B], 'passes' [B]}).
  """
  network = model.module
  apply = functools.partial(network.apply, {"params": params})
  batch, width = source_tokens.shape[0], longest + 1
  use_crf = method.endswith("_crf")
  source, length_logits = apply(source_tokens, method="encode_source")
  # The output vocabulary's projection rows, gathered once for every pass.
  rows = apply(method="output_rows")
  if method in canvas_draft.DRAFT_METHODS:
    # Pass 1 is one-pass NAG-BERT over the source positions (as its Viterbi
    # decodes: every position in the mask); its kept tokens are the canvas.
    draft = apply(source, output_rows=rows, method="draft_logits").astype(jnp.float32)
    if use_crf:
      draft_classes, _ = apply(draft, jnp.ones(source_tokens.shape, bool),
                               method="crf_decode")
    else:
      draft_classes = jnp.argmax(draft, axis=-1)
    draft_confidence = jnp.take_along_axis(jax.nn.log_softmax(draft, axis=-1),
                                           draft_classes[..., None], axis=-1)[..., 0]
    first_tokens, first_confidence, lengths = canvas_draft.compact_draft(
        model._token_ids(draft_classes).astype(jnp.int32),  # pylint: disable=protected-access
        draft_confidence, width, eos_id=model.eos_id, pad_id=model.pad_id)
  else:
    # Candidate lengths 1 .. M, the `length_beam` most likely per input.
    length_lp = jax.nn.log_softmax(length_logits)
    classes_ = jnp.arange(length_lp.shape[-1])
    allowed = (classes_ >= 1) & (classes_ <= longest)
    _, cand = jax.lax.top_k(jnp.where(allowed, length_lp, -jnp.inf), length_beam)  # [B, l]
    lengths = cand.reshape(-1).astype(jnp.int32)  # [N = B l]
    source = jax.tree_util.tree_map(lambda a: jnp.repeat(a, length_beam, axis=0), source)
  valid = jnp.arange(width)[None, :] < lengths[:, None]  # [N, W]

  def passes_at(w, tokens, confidence):
    """Every canvas pass on a canvas cut to its first w >= max(lengths) + 1
    positions (the rest is pad: no key, no output), padded back to W."""
    valid_w = valid[:, :w]

    def one_pass(tokens, remask):
      """Re-predicts the `remask` positions; the others keep `tokens`."""
      canvas = make_canvas(tokens, lengths, remask, mask_id=model.mask_id, sep_id=model.sep_id,
                           pad_id=model.pad_id)
      logits = apply(source, canvas, output_rows=rows,
                     method="canvas_logits").astype(jnp.float32)
      log_probs = jax.nn.log_softmax(logits, axis=-1)
      if use_crf:
        kept = valid_w & ~remask
        current = model._classes(tokens)  # pylint: disable=protected-access
        onehot = jnp.arange(logits.shape[-1])[None, None, :] == current[..., None]
        clamped = jnp.where(kept[..., None] & ~onehot, _CLAMP, logits)
        classes, _ = apply(clamped, valid_w, method="crf_decode")
      else:
        classes = jnp.argmax(logits, axis=-1)
      confidence = jnp.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]
      new = model._token_ids(classes).astype(jnp.int32)  # pylint: disable=protected-access
      return new, confidence

    if method in canvas_draft.DRAFT_METHODS:
      tokens, confidence = tokens[:, :w], confidence[:, :w]
    else:
      tokens, confidence = one_pass(jnp.full((lengths.shape[0], w), model.mask_id, jnp.int32),
                                    valid_w)

    def refine(iteration, state):
      tokens, confidence, passes = state
      remask = lowest_k(confidence, valid_w,
                        remask_count(lengths, iteration, iterations, remask_ratio))
      new, new_confidence = one_pass(tokens, remask)
      return (jnp.where(remask, new, tokens), jnp.where(remask, new_confidence, confidence),
              passes + 1)

    state = (tokens, confidence, jnp.ones(lengths.shape, jnp.int32))
    tokens, confidence, passes = jax.lax.fori_loop(2, iterations + 1, refine, state)
    pad = ((0, 0), (0, width - w))
    return (jnp.pad(tokens, pad, constant_values=model.pad_id), jnp.pad(confidence, pad),
            passes)

  if method in canvas_draft.DRAFT_METHODS:
    start = (first_tokens, first_confidence)
  else:
    start = (jnp.full((lengths.shape[0], width), model.mask_id, jnp.int32),
             jnp.zeros((lengths.shape[0], width), jnp.float32))
  if method in canvas_draft.DRAFT_METHODS and iterations == 1:
    tokens, confidence, passes = start + (jnp.ones(lengths.shape, jnp.int32),)
  else:
    # The canvas is as wide as the longest candidate needs, in buckets: one
    # program, a branch per width (an output of ~11 tokens from a 64-token
    # bucket runs its passes over 16 canvas positions, not 65).
    widths = sorted({w for w in canvas_widths if w < width} | {width})
    branch = jnp.searchsorted(jnp.asarray(widths), jnp.max(lengths) + 1)
    tokens, confidence, passes = jax.lax.switch(
        branch, [functools.partial(passes_at, w) for w in widths], *start)
  score = jnp.where(valid, confidence, 0.0).sum(-1) / jnp.maximum(lengths, 1)
  best = jnp.argmax(score.reshape(batch, length_beam), axis=-1)
  pick = jnp.arange(batch) * length_beam + best
  tokens, valid, score, passes = tokens[pick], valid[pick], score[pick], passes[pick]
  tokens, out_lengths = decoding.cut_at_first_eos(tokens, model.eos_id, model.pad_id, valid)
  # Position M always holds [SEP]: the output fits M positions, padded to the
  # input width S as every narlm model returns (t5x decodes rows).
  tokens = tokens[:, :longest]
  if longest < source_tokens.shape[1]:
    tokens = jnp.pad(tokens, ((0, 0), (0, source_tokens.shape[1] - longest)),
                     constant_values=model.pad_id)
  return tokens, {"scores": score, "length": out_lengths, "passes": passes}
