"""The canvas model's source-aligned draft: one-pass NAG-BERT as pass 1.

`narlm.canvas.CanvasNetwork` lets the source segment attend to itself only,
so its top source states are exactly what NAG-BERT's encoder computes for
``[CLS] x [SEP]``, and NAG-BERT's output head (``bert/head``, and the CRF)
applied to them is a one-pass NAG-BERT inside the canvas model. With
``draft_weight > 0`` the canvas model trains that head too, on
source-aligned targets (position p emits x_p if the target keeps it, else
pad: the layout of the ``sentcomp_aligned_bert`` task, here computed on the
device from the batch's ordinary targets by `align_to_source`).

The decode methods ``refine_draft`` / ``refine_draft_crf`` start the canvas
from that draft instead of from [MASK]s of a predicted length: its non-pad
tokens before the first eos (`compact_draft`), their log-probabilities the
confidences that mask-predict re-masks by. Pass 1 therefore costs one
NAG-BERT pass (the source encoding every mask-predict decode runs anyway,
plus the head and Viterbi over the source positions) and returns exactly
NAG-BERT's output; passes 2 .. T re-mask the least confident tokens and
re-predict them with the canvas, as mask-predict does. The draft fixes the
output length (at most the source's), so it suits deletion-like tasks
(compression, simplification), not translation.

Pure functions; array shapes in the docstrings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DRAFT_METHODS = ("refine_draft", "refine_draft_crf")


def align_to_source(source: jnp.ndarray, targets: jnp.ndarray, target_lengths: jnp.ndarray, *,
                    eos_id: int, pad_id: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Source-aligned targets of framed sources, on the device.

  The greedy left-to-right alignment of
  `narlm.tasks.preprocessors.source_aligned_targets` (each target token goes
  to its first occurrence in x after the previous match; a token with no
  such occurrence is dropped), laid out as `NarFeatureConverter` lays out
  that task's targets: pad at [CLS], x_p or pad over x, eos at [SEP] and at
  the first pad position after it.

  Args:
    source: int [B, S] framed sources ``[CLS] x [SEP] pad ..`` (n non-pad).
    targets: int [B, T] ``y_1 .. y_m eos ..``.
    target_lengths: int [B] m.
    eos_id, pad_id: ids.

  Returns:
    (aligned int [B, S], weights float32 [B, S]: 1 on positions 0 .. n).
  """
  batch, width = source.shape
  n = (source != pad_id).sum(-1).astype(jnp.int32)
  pos = jnp.arange(width)[None, :]
  inside_x = (pos >= 1) & (pos < n[:, None] - 1)  # x_1 .. x_{n-2}: not [CLS] / [SEP]

  def place(carry, column):
    pointer, aligned = carry
    token, live = column  # [B], [B]
    hit = inside_x & (source == token[:, None]) & (pos >= pointer[:, None]) & live[:, None]
    found = hit.any(-1)
    first = jnp.argmax(hit, axis=-1)
    aligned = jnp.where(found[:, None] & (pos == first[:, None]), token[:, None], aligned)
    return (jnp.where(found, first + 1, pointer), aligned), None

  live = jnp.arange(targets.shape[1])[None, :] < target_lengths[:, None]  # [B, T]
  start = (jnp.ones((batch,), jnp.int32), jnp.full((batch, width), pad_id, targets.dtype))
  (_, aligned), _ = jax.lax.scan(place, start, (targets.T, live.T))
  ends = (pos == n[:, None] - 1) | (pos == n[:, None])
  aligned = jnp.where(ends, eos_id, aligned).astype(jnp.int32)
  return aligned, (pos <= n[:, None]).astype(jnp.float32)


def compact_draft(tokens: jnp.ndarray, confidence: jnp.ndarray, width: int, *, eos_id: int,
                  pad_id: int) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """A source-aligned draft as a canvas: its tokens before the first eos,
  emitted pads skipped (as `decoding.cut_at_first_eos` does), each with its
  confidence.

  Args:
    tokens: int [B, S] the draft over the source positions.
    confidence: float [B, S] each draft token's log-probability.
    width: W, canvas positions (the output keeps at most W - 1 tokens: the
      last position is the canvas's closing [SEP]).

  Returns:
    (tokens int [B, W] left-aligned then pad, confidence float [B, W] (0 past
    the length), lengths int [B] <= W - 1).
  """
  seen_end = jnp.cumsum((tokens == eos_id).astype(jnp.int32), axis=-1) > 0
  keep = ~seen_end & (tokens != pad_id)
  order = jnp.argsort(~keep, axis=-1, stable=True)
  tokens = jnp.take_along_axis(tokens, order, axis=-1)
  confidence = jnp.take_along_axis(confidence, order, axis=-1)
  lengths = jnp.minimum(keep.sum(-1), width - 1).astype(jnp.int32)
  extra = width - tokens.shape[1]
  if extra > 0:
    tokens = jnp.pad(tokens, ((0, 0), (0, extra)), constant_values=pad_id)
    confidence = jnp.pad(confidence, ((0, 0), (0, extra)))
  tokens, confidence = tokens[:, :width], confidence[:, :width]
  inside = jnp.arange(width)[None, :] < lengths[:, None]
  return (jnp.where(inside, tokens, pad_id).astype(jnp.int32),
          jnp.where(inside, confidence, 0.0), lengths)
