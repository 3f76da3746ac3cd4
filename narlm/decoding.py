"""Non-autoregressive decoding: argmax, CRF Viterbi, ratio-first, the cut at eos.

All outputs are produced in one parallel pass over the encoder's hidden
states. The functions here are pure (jit-friendly); the host-side work
(framing, bucketed padding, batching, detokenising) is `narlm.predictor`'s.
"""

from __future__ import annotations

import fractions
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

DECODE_METHODS = ("argmax", "viterbi", "ratio_first")


def check_decode_method(method: str) -> str:
  if method not in DECODE_METHODS:
    raise ValueError(f"unknown decode method {method!r}; expected one of {DECODE_METHODS}")
  return method


def argmax_decode(logits: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Independent per-position argmax (the "no CRF" decoder).

  Args:
    logits: [B, T, V].

  Returns:
    tokens [B, T] int32 and the sum of per-position log-probabilities [B].
  """
  # Not via log_softmax: XLA:CPU fuses its max/subtract into the output-head
  # matmul and runs 2x slower at [32, 128, 30522] (narlm.bench).
  logits = logits.astype(jnp.float32)
  tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scores = (jnp.max(logits, axis=-1) - jax.nn.logsumexp(logits, axis=-1)).sum(axis=-1)
  return tokens, scores


def source_lengths(source_tokens: jnp.ndarray, pad_id: int = 0) -> jnp.ndarray:
  """[B, L] source tokens -> [B] number of non-pad tokens."""
  return (source_tokens != pad_id).sum(axis=-1).astype(jnp.int32)


def _alpha_fraction(alpha: float) -> fractions.Fraction:
  """alpha as the decimal the user wrote (0.29 is 29/100, not the binary
  double just below it), so that floor(alpha * n) is exact."""
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, fractions.Fraction)):
    raise ValueError(f"ratio-first alpha must be a number, got {alpha!r}")
  if not alpha > 0 or not math.isfinite(alpha):
    raise ValueError(f"ratio-first alpha must be a finite number > 0, got {alpha}")
  return alpha if isinstance(alpha, fractions.Fraction) else fractions.Fraction(repr(float(alpha)))


def ratio_first_window(n: int, alpha: float) -> int:
  """Positions ratio-first decoding keeps for a source of n positions:
  min(n, floor(alpha * n) + 2), in exact rational arithmetic.

  n counts the source as NAG-BERT does: its WordPieces plus [CLS] and [SEP]
  (the non-pad positions of a framed encoder input). alpha is read as the
  decimal it prints as, so alpha = 0.29, n = 100 keeps 29 + 2 positions
  (NAG-BERT's float64 ``int(n * alpha)`` gives 28 there: 0.29 is stored as
  0.28999...; a float32 product can round either way). The cap at n is
  NAG-BERT's: it never decodes past the source.
  """
  if n < 0:
    raise ValueError(f"source length must be >= 0, got {n}")
  return min(int(n), math.floor(_alpha_fraction(alpha) * int(n)) + 2)


def ratio_first_positions(length: int, alpha: float) -> int:
  """Positions ratio-first decoding can use for sources of <= `length`
  positions: ratio_first_window(length, alpha) (a static int; the window
  grows with n)."""
  return ratio_first_window(length, alpha)


def ratio_first_mask(source_tokens: jnp.ndarray, alpha: float, length: Optional[int] = None,
                     pad_id: int = 0) -> jnp.ndarray:
  """Ratio-first decoding mask: the first min(n, floor(alpha * n) + 2) positions.

  NAG-BERT's ratio-first decoding assumes the output is at most alpha times
  the source length n, and runs Viterbi only over those positions (+2 for
  the two eos), which is both faster and avoids over-long outputs. The
  window of every possible n in [0, L] is computed exactly on the host
  (`ratio_first_window`) and looked up per row, so no float rounding on the
  device can move it.

  Args:
    source_tokens: [B, L] source tokens (n = non-pad count per row).
    alpha: ratio, > 0 (a static Python number).
    length: number of output positions T (default L).

  Returns:
    [B, T] bool mask, True on the positions to decode.
  """
  source_length = source_tokens.shape[1]
  length = source_length if length is None else length
  table = np.array([ratio_first_window(n, alpha) for n in range(source_length + 1)], np.int32)
  n = source_lengths(source_tokens, pad_id)
  limit = jnp.asarray(table)[n]
  return jnp.arange(length)[None, :] < limit[:, None]


def cut_at_first_eos(tokens: jnp.ndarray, eos_id: int, pad_id: int = 0,
                     mask: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The output before the first eos, with emitted pads skipped (NAG-BERT).

  Everything from the first eos on (and masked positions) is dropped; a pad
  the model emitted before the first eos is dropped too and the tokens after
  it move left, so an output is always `tokens[:length]` with no pad inside.

  Args:
    tokens: [B, T] decoded tokens.
    eos_id: end-of-sequence id.
    pad_id: padding id.
    mask: optional [B, T] bool of decoded positions; positions outside it are
      treated as padding.

  Returns:
    (tokens [B, T]: the kept tokens left-aligned, then pad; lengths [B]).
  """
  is_end = tokens == eos_id
  if mask is not None:
    is_end = is_end | ~mask.astype(bool)
  # After the first end marker, the running count is >= 1.
  seen_end = jnp.cumsum(is_end.astype(jnp.int32), axis=-1) > 0
  keep = ~seen_end & (tokens != pad_id)
  # Stable sort on "dropped": kept tokens first, in their order.
  order = jnp.argsort(~keep, axis=-1, stable=True)
  lengths = keep.sum(axis=-1).astype(jnp.int32)
  out = jnp.take_along_axis(tokens, order, axis=-1)
  out = jnp.where(jnp.arange(tokens.shape[-1])[None, :] < lengths[:, None], out, pad_id)
  return out, lengths
