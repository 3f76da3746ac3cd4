"""The one batched, bucketed predictor: every job that decodes goes through it.

Training-time evaluation (`narlm.train_eval`), `narlm.compare`,
`narlm.distill`, `narlm.serve` and `narlm.bench` all decode with `Predictor`
(the bench times its jitted program, `predict_program`), so they cannot
disagree on framing, padding, truncation or where an output is cut.

Host-side work per call: frame each source as training framed it
(`model.frame_source`, e.g. ``[CLS] x [SEP]``), truncate it to `max_length`
positions (counted in `num_truncated`), sort the rows by length, pad each
chunk to a (batch bucket, length bucket) shape so that a new input length
does not compile a new program, run the jitted `predict_batch_with_aux`, and
return each row's output cut at its first eos, in the caller's order.

No silent cut. Every model's output is at most as wide as its padded input
(NAG-BERT ties output position i to input position i; the AR and canvas
models decode as many positions as the input row has by default). An output
that fills its whole row never reached an end-of-sequence, so it may have
been cut by the bucket: those rows are decoded again in the next wider
bucket, up to `max_decode_length`. Rows that still fill it are cut there;
they are counted in `num_cut` and a warning says so.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
DEFAULT_BATCH_BUCKETS = (1, 8, 32, 128)
MASK_TOKEN = "[MASK]"


def bucket(value: int, buckets: Sequence[int], what: str = "length") -> int:
  """Smallest bucket >= value; a clear error when value exceeds the largest."""
  i = bisect.bisect_left(list(buckets), value)
  if i == len(buckets):
    raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")
  return buckets[i]


def encode_with_mask_tokens(vocab, text: str) -> list[int]:
  """`vocab.encode(text)`, except that a literal "[MASK]" becomes the mask
  token (as Hugging Face's BERT tokenizer does), so a user can ask a
  pretraining run to fill gaps: "the [MASK] sat on the mat". Vocabularies
  without a mask token encode the text as is."""
  mask_id = getattr(vocab, "mask_id", None)
  if mask_id is None or MASK_TOKEN not in text:
    return list(vocab.encode(text))
  ids: list[int] = []
  for k, part in enumerate(text.split(MASK_TOKEN)):
    if k:
      ids.append(int(mask_id))
    if part.strip():
      ids.extend(vocab.encode(part))
  return ids


def predict_program(model, decode_kwargs: Sequence[tuple[str, Any]] = ()) -> Callable:
  """fn(params, tokens [B, L]) -> (outputs [B, L], aux): the program the
  predictor jits, one per decoding configuration (`decode_kwargs`: items
  passed to `model.predict_batch_with_aux`, e.g. (('decode_method',
  'viterbi'),))."""
  kwargs = dict(decode_kwargs)

  def fn(params, tokens):
    return model.predict_batch_with_aux(params, {"encoder_input_tokens": tokens}, **kwargs)
  return fn


class Predictor:
  """Batched, jit-compiled decoding of one model's parameters.

  Example:
    predictor = Predictor(model, params, max_length=64)
    predictor.generate(["some source sentence"], decode_method="ratio_first", alpha=0.6)
    predictor.predict([[101, 2023, 102]], decode_method="viterbi")  # framed ids

  Args:
    model: a narlm model (NagBertModel, TaggerModel, ArSeq2SeqModel,
      CanvasModel, ...): anything with `predict_batch_with_aux`.
    params: its parameters. A public attribute: a trainer replaces it
      between evaluations and keeps the compiled programs.
    max_length: most input positions, framing included; longer sources are
      truncated (`num_truncated`).
    max_decode_length: most output positions (default `max_length`); wider
      than `max_length` for tasks whose outputs outgrow their inputs.
    length_buckets: padded row widths (capped at max_decode_length, which is
      always one).
    batch_buckets: padded batch sizes; the largest is the chunk size.

  Decoding keyword arguments (`decode_method`, `alpha`, `iterations`, ...)
  go to `model.predict_batch_with_aux` unchanged; each configuration is
  compiled once per (batch bucket, length bucket).
  """

  def __init__(self, model, params, *, max_length: int = 128,
               max_decode_length: Optional[int] = None,
               length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
               batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS):
    if not isinstance(max_length, int) or max_length < 1:
      raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    max_decode_length = max_length if max_decode_length is None else max_decode_length
    if not isinstance(max_decode_length, int) or max_decode_length < max_length:
      raise ValueError(f"max_decode_length must be an int >= max_length={max_length}, got "
                       f"{max_decode_length!r}")
    batch_buckets = tuple(sorted(set(int(b) for b in batch_buckets)))
    if not batch_buckets or batch_buckets[0] < 1:
      raise ValueError(f"batch_buckets must be positive ints, got {batch_buckets!r}")
    self.model, self.params = model, params
    self.vocab = model.input_vocabulary
    self.output_vocab = model.output_vocabulary
    self.pad_id = int(getattr(model, "pad_id", 0) or 0)
    self.max_length, self.max_decode_length = max_length, max_decode_length
    self.length_buckets = tuple(sorted({b for b in length_buckets if b < max_decode_length}
                                       | {max_length, max_decode_length}))
    self.batch_buckets = batch_buckets
    self.num_truncated = 0
    self.num_cut = 0
    self._programs: dict[tuple, Callable] = {}

  # ------------------------------------------------------------- inputs
  @property
  def source_overhead(self) -> int:
    """Positions the framing adds to every source (2 for [CLS] x [SEP])."""
    return int(getattr(self.model, "source_overhead", 0))

  def prepare(self, ids: Sequence[int], index: Optional[int] = None) -> list[int]:
    """Token ids of one source (no special tokens) -> the encoder input:
    truncated to max_length positions with the framing, framed. A truncation
    is counted in `num_truncated`; it is logged as a warning when `index` (a
    request's input number) is given, else at debug level (dataset callers
    report the count)."""
    ids = [int(i) for i in ids]
    room = self.max_length - self.source_overhead
    if len(ids) > room:
      self.num_truncated += 1
      logging.log(logging.DEBUG if index is None else logging.WARNING,
                  "input %s has %d tokens; truncated to %d (max_length=%d)",
                  "" if index is None else index, len(ids), room, self.max_length)
    frame = getattr(self.model, "frame_source", None)
    return frame(ids, self.max_length) if frame is not None else ids[:self.max_length]

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Texts -> framed encoder inputs (a literal "[MASK]" is the mask token)."""
    encoded = []
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"input {i} is {type(text).__name__}, expected str")
      if not text.strip():
        raise ValueError(f"input {i} is empty")
      encoded.append(self.prepare(encode_with_mask_tokens(self.vocab, text), i))
    return encoded

  # ------------------------------------------------------------ decoding
  def _program(self, decode_kwargs: tuple) -> Callable:
    if decode_kwargs not in self._programs:
      self._programs[decode_kwargs] = jax.jit(predict_program(self.model, decode_kwargs))
    return self._programs[decode_kwargs]

  def compiled_programs(self) -> Optional[int]:
    """Programs compiled so far, over every decoding configuration (None if
    JAX does not say)."""
    total = 0
    for program in self._programs.values():
      size = getattr(program, "_cache_size", None)
      if size is None:
        return None
      total += size()
    return total

  def _run(self, program, rows: Sequence[Sequence[int]], width: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """One padded chunk -> (outputs [len(rows), width], lengths [len(rows)])."""
    batch = bucket(len(rows), self.batch_buckets, "batch size")
    tokens = np.full((batch, width), self.pad_id, np.int32)
    for r, ids in enumerate(rows):
      tokens[r, :len(ids)] = ids
    pred, aux = jax.block_until_ready(program(self.params, jnp.asarray(tokens)))
    return np.asarray(pred)[:len(rows)], np.asarray(aux["length"])[:len(rows)]

  def predict(self, inputs: Sequence[Sequence[int]], **decode_kwargs) -> list[list[int]]:
    """Prepared (framed) inputs -> output id lists cut at the first eos, in order.

    Rows are sorted by length and decoded in chunks of the largest batch
    bucket, each padded to the length bucket of its longest row.
    """
    program = self._program(tuple(sorted(decode_kwargs.items())))
    for i, ids in enumerate(inputs):
      if not len(ids):
        raise ValueError(f"input {i} is empty")
      if len(ids) > self.max_length:
        raise ValueError(f"input {i} has {len(ids)} positions, more than max_length="
                         f"{self.max_length} (prepare() truncates)")
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    outputs: list[Optional[list[int]]] = [None] * len(inputs)
    chunk_rows = self.batch_buckets[-1]
    cut = 0
    for start in range(0, len(order), chunk_rows):
      idx = order[start:start + chunk_rows]
      width = bucket(len(inputs[idx[-1]]), self.length_buckets)
      while idx:
        pred, lengths = self._run(program, [inputs[i] for i in idx], width)
        full = []
        for r, i in enumerate(idx):
          outputs[i] = pred[r, :lengths[r]].tolist()
          if lengths[r] >= width:  # no eos inside the row: maybe cut by the bucket
            full.append(i)
        if not full or width == self.max_decode_length:
          cut += len(full)
          break
        idx, width = full, bucket(width + 1, self.length_buckets)
    if cut:
      self.num_cut += cut
      logging.warning("%d output(s) reached max_decode_length=%d positions without an "
                      "end-of-sequence and were cut there (raise max_decode_length)", cut,
                      self.max_decode_length)
    return outputs  # type: ignore[return-value]

  def generate(self, texts: Sequence[str], **decode_kwargs) -> list[str]:
    """One output string per input text."""
    return [self.output_vocab.decode(ids)
            for ids in self.predict(self.encode(texts), **decode_kwargs)]

  def warm(self, batch_sizes: Sequence[int], **decode_kwargs) -> float:
    """Compiles the (batch, length bucket) programs of `batch_sizes` up to
    max_length; returns the seconds taken."""
    program = self._program(tuple(sorted(decode_kwargs.items())))
    t0 = time.perf_counter()
    for rows in batch_sizes:
      for width in self.length_buckets:
        if width <= self.max_length:
          self._run(program, [[1] * width] * rows, width)
    return time.perf_counter() - t0

