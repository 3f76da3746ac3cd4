"""Non-autoregressive decoding: argmax, CRF Viterbi, ratio-first; batching.

All outputs are produced in one parallel pass over the encoder's hidden
states. The functions here are pure (jit-friendly); `Generator` adds the
host-side work: tokenise, pad to a length *bucket* so that a new input length
does not trigger a recompile, call the jitted prediction, cut at the first
eos and detokenise.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DECODE_METHODS = ("argmax", "viterbi", "ratio_first")
DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
DEFAULT_BATCH_BUCKETS = (1, 8, 32, 128)


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


def ratio_first_positions(length: int, alpha: float) -> int:
  """Positions ratio-first decoding can use for sources of <= `length`
  tokens: min(length, floor(alpha * length) + 2) (a static int).

  Rounded up by a hair: the per-row limit is computed in float32 on device,
  and a bound that is one too large only costs a masked position.
  """
  if not alpha > 0:
    raise ValueError(f"ratio-first alpha must be > 0, got {alpha}")
  return min(int(length), math.floor(alpha * length * (1 + 1e-6)) + 2)


def ratio_first_mask(source_tokens: jnp.ndarray, alpha: float, length: Optional[int] = None,
                     pad_id: int = 0) -> jnp.ndarray:
  """Ratio-first decoding mask: the first floor(alpha * n) + 2 positions.

  NAG-BERT's ratio-first decoding assumes the output is at most alpha times
  the source length n, and runs Viterbi only over those positions (+2 for
  the two eos), which is both faster and avoids over-long outputs.

  Args:
    source_tokens: [B, L] source tokens (n = non-pad count per row).
    alpha: ratio, > 0.
    length: number of output positions T (default L).

  Returns:
    [B, T] bool mask, True on the positions to decode.
  """
  if not alpha > 0:
    raise ValueError(f"ratio-first alpha must be > 0, got {alpha}")
  length = source_tokens.shape[1] if length is None else length
  n = source_lengths(source_tokens, pad_id)
  limit = jnp.floor(alpha * n.astype(jnp.float32)).astype(jnp.int32) + 2
  return jnp.arange(length)[None, :] < limit[:, None]


def cut_at_first_eos(tokens: jnp.ndarray, eos_id: int, pad_id: int = 0,
                     mask: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Replace the first eos and everything after it (and masked positions) with pad.

  Args:
    tokens: [B, T] decoded tokens.
    eos_id: end-of-sequence id.
    pad_id: padding id.
    mask: optional [B, T] bool of decoded positions; positions outside it are
      treated as padding.

  Returns:
    (tokens [B, T] with the tail padded, lengths [B] of the kept prefix).
  """
  is_end = tokens == eos_id
  if mask is not None:
    is_end = is_end | ~mask.astype(bool)
  # After the first end marker, the running count is >= 1.
  seen_end = jnp.cumsum(is_end.astype(jnp.int32), axis=-1) > 0
  out = jnp.where(seen_end, pad_id, tokens)
  return out, (~seen_end).sum(axis=-1).astype(jnp.int32)


def bucket(value: int, buckets: Sequence[int], what: str = "length") -> int:
  """Smallest bucket >= value; a clear error when value exceeds the largest."""
  i = bisect.bisect_left(list(buckets), value)
  if i == len(buckets):
    raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")
  return buckets[i]


class Generator:
  """Batched, jit-compiled text generation from a trained NagBertModel.

  Example:
    gen = Generator(model, params, max_length=64)
    gen.generate(["some source sentence"], method="ratio_first", alpha=0.6)

  Inputs longer than `max_length` tokens are truncated with a warning (the
  count is kept in `self.num_truncated`). Length and batch are padded to
  buckets so that at most len(length_buckets) * len(batch_buckets) programs
  are compiled per decode method.
  """

  def __init__(self, model, params, *, max_length: int = 128,
               length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
               batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS):
    self.model = model
    self.params = params
    self.vocab = model.input_vocabulary
    self.output_vocab = model.output_vocabulary
    self.max_length = max_length
    self.length_buckets = tuple(b for b in length_buckets if b < max_length) + (max_length,)
    self.batch_buckets = tuple(batch_buckets)
    self.num_truncated = 0
    self._predict = jax.jit(self._predict_impl, static_argnames=("method", "alpha"))

  def _predict_impl(self, params, tokens, *, method, alpha):
    batch = {"encoder_input_tokens": tokens}
    return self.model.predict_batch_with_aux(params, batch, decode_method=method, alpha=alpha)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    encoded = []
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"input {i} is {type(text).__name__}, expected str")
      if not text.strip():
        raise ValueError(f"input {i} is empty")
      ids = list(self.vocab.encode(text))
      if len(ids) > self.max_length:
        logging.warning("input %d has %d tokens; truncated to max_length=%d", i, len(ids),
                        self.max_length)
        self.num_truncated += 1
        ids = ids[: self.max_length]
      encoded.append(ids)
    return encoded

  def generate(self, texts: Sequence[str], method: str = "viterbi",
               alpha: Optional[float] = None) -> list[str]:
    """Generate one output string per input text."""
    return [self.output_vocab.decode(ids) for ids in self.generate_ids(texts, method, alpha)]

  def generate_ids(self, texts: Sequence[str], method: str = "viterbi",
                   alpha: Optional[float] = None) -> list[list[int]]:
    check_decode_method(method)
    if method == "ratio_first" and alpha is None:
      raise ValueError("ratio_first decoding needs alpha")
    encoded = self.encode(texts)
    if not encoded:
      return []
    length = bucket(max(len(ids) for ids in encoded), self.length_buckets)
    outputs: list[list[int]] = []
    step = self.batch_buckets[-1]
    for start in range(0, len(encoded), step):
      chunk = encoded[start:start + step]
      rows = bucket(len(chunk), self.batch_buckets, "batch size")
      tokens = np.zeros((rows, length), np.int32)
      for r, ids in enumerate(chunk):
        tokens[r, :len(ids)] = ids
      pred, aux = self._predict(self.params, jnp.asarray(tokens), method=method, alpha=alpha)
      pred = np.asarray(pred)
      lengths = np.asarray(aux["length"])
      outputs.extend(pred[r, :lengths[r]].tolist() for r in range(len(chunk)))
    return outputs
