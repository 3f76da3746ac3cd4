"""seqio preprocessors and postprocessors for narlm tasks.

Pretraining objective (`nar_denoise`)
-------------------------------------
NAG-BERT predicts every output position in parallel from the encoder state at
the same position, with a CRF on top; the model is a BERT encoder, so it is
pretrained as a *non-autoregressive denoiser* that looks like its fine-tuning
tasks:

  targets = a clean span of text (<= the row length minus the two eos),
  inputs  = the same span corrupted by
    1. span deletion: about `delete_rate` (10%) of the tokens are removed, in
       spans of `delete_span` (3) tokens, so the output is *longer* than the
       input and the model must learn to place tokens at positions beyond the
       aligned source token -- the situation of summarisation (output shorter)
       and translation (either way) that plain MLM, whose output has the
       input's length, never shows it;
    2. BERT-style masking of the remaining tokens: `mask_rate` (15%) are
       selected; of those 80% become the mask token, 10% a random regular
       token and 10% stay unchanged (so the model cannot trust unmasked
       tokens blindly).

The loss (CRF NLL + token NLL in narlm.losses) then covers every target
position, not only the masked ones, which also trains the CRF transitions
and the eos/eos ending. No token shuffling is done: local reordering is what
the CRF's transition scores model, and permuted inputs made the deletion
alignment ambiguous at no clear gain; it can be added as another step.

Plain MLM (`mlm_denoise`), the control of the pretraining experiment: BERT's
own objective in this layout -- step 2 alone (no deletion, so inputs and
targets have equal length and position i copies position i) and the loss on
the selected positions only (`targets_loss_weights`, which the feature
converter turns into `decoder_loss_weights`). It has no place for the CRF
(the selected positions are not a chain), so its models set USE_CRF=False.

All randomness uses stateless ops seeded by `seqio.map_over_dataset(
num_seeds=...)`, so the corruption is deterministic given seqio's seed
(`Task.get_dataset(..., seed=...)`) and differs between examples and epochs
of a shuffled, unseeded pipeline.
"""

import functools
import html
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf


# ----------------------------------------------------------------- generic
def filter_empty(dataset: tf.data.Dataset,
                 keys: Sequence[str] = ("inputs",)) -> tf.data.Dataset:
  """Drops examples where any of `keys` is an empty token sequence/string."""
  def keep(ex):
    ok = tf.constant(True)
    for k in keys:
      v = ex[k]
      size = tf.strings.length(v) if v.dtype == tf.string else tf.size(v)
      ok = tf.logical_and(ok, size > 0)
    return ok
  return dataset.filter(keep)


def _unescape_strings(texts: tf.Tensor) -> tf.Tensor:
  values = np.asarray(texts.numpy(), dtype=object)
  flat = [html.unescape(t.decode("utf-8")).encode("utf-8") for t in values.reshape(-1)]
  return tf.reshape(tf.constant(flat, tf.string), tf.shape(texts))


@seqio.map_over_dataset
def unescape_html(ex: Mapping[str, tf.Tensor],
                  keys: Sequence[str] = ("inputs", "targets")) -> Mapping[str, tf.Tensor]:
  """HTML entities -> characters (`&apos;` -> `'`, `&quot;` -> `"`, ...) in
  the raw text of `keys`, before tokenising.

  IWSLT14's MIXER preprocessing left `&apos;` and `&quot;` in ~40% of the
  lines; WordPiece splits them into `& ap ##os ;`, about 8% of the target
  tokens, which NAR models then repeat ("ap ap ap"). Python's
  `html.unescape` (every named and numeric entity), applied to sources and
  references alike, so metrics see the same text the model learned.
  """
  ex = dict(ex)
  for k in keys:
    if k in ex:
      value = tf.py_function(_unescape_strings, [ex[k]], Tout=tf.string)
      ex[k] = tf.ensure_shape(value, ex[k].shape)
  return ex


def source_aligned_targets(source: Sequence[int], target: Sequence[int], pad_id: int = 0,
                           leading_pads: int = 1) -> list[int]:
  """A deletion target laid over its source: position i of the result is
  source token i if the target keeps it, else pad.

  Greedy left-to-right alignment: each target token is matched to its first
  occurrence in the source after the previous match; a target token with no
  such occurrence is dropped (sentence compression is deletion-only, so
  this is rare: 0.35% of sentcomp's train target WordPieces).
  `leading_pads` pads come first, one per position the encoder input has
  before the first source token ([CLS] in `[CLS] x [SEP]`).

  With these targets NAG-BERT's output position i decides "keep x_i or emit
  pad", and decoding's pad skipping (`decoding.cut_at_first_eos`) turns the
  result into the compression.
  """
  out = [pad_id] * (leading_pads + len(source))
  pointer = 0
  for token in target:
    for p in range(pointer, len(source)):
      if source[p] == token:
        out[leading_pads + p] = int(token)
        pointer = p + 1
        break
  return out


def align_targets_to_source(dataset: tf.data.Dataset, leading_pads: int = 1,
                            pad_id: int = 0) -> tf.data.Dataset:
  """seqio preprocessor (after tokenising): replaces `targets` by
  `source_aligned_targets(inputs, targets)`. `targets_pretokenized` keeps
  the reference text, so metrics still compare with the gold compression."""
  def align(inputs, targets):
    return np.asarray(source_aligned_targets(inputs.numpy().tolist(), targets.numpy().tolist(),
                                             pad_id, leading_pads), np.int32)

  def convert(ex):
    ex = dict(ex)
    aligned = tf.py_function(align, [ex["inputs"], ex["targets"]], Tout=tf.int32)
    ex["targets"] = tf.ensure_shape(aligned, [None])
    return ex

  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


filter_empty_inputs = functools.partial(filter_empty, keys=("inputs",))
filter_empty_targets = functools.partial(filter_empty, keys=("targets",))


def chunk_length(sequence_length: Optional[Mapping[str, int]]) -> Optional[int]:
  """Longest clean span that fits a row: min(targets - 2, inputs)."""
  if not sequence_length:
    return None
  lengths = []
  if sequence_length.get("targets"):
    lengths.append(int(sequence_length["targets"]) - 2)
  if sequence_length.get("inputs"):
    lengths.append(int(sequence_length["inputs"]))
  if not lengths:
    return None
  n = min(lengths)
  if n < 1:
    raise ValueError(f"sequence_length {dict(sequence_length)} leaves no room "
                     "for text next to the two eos")
  return n


def split_tokens(dataset: tf.data.Dataset,
                 sequence_length: Optional[Mapping[str, int]] = None,
                 key: str = "targets",
                 max_tokens: Optional[int] = None) -> tf.data.Dataset:
  """Splits `key` into consecutive chunks of at most `max_tokens` tokens.

  `max_tokens` defaults to `chunk_length(sequence_length)`; with neither the
  dataset is returned unchanged. Other features are dropped (pretraining
  examples only carry `key`).
  """
  n = max_tokens or chunk_length(sequence_length)
  if n is None:
    return dataset

  def to_chunks(ex):
    tokens = ex[key]
    size = tf.size(tokens, out_type=tf.int64)
    full, rest = size // n, size % n
    row_lengths = tf.concat(
        [tf.fill([full], tf.constant(n, tf.int64)),
         tf.boolean_mask(tf.reshape(rest, [1]), tf.reshape(rest > 0, [1]))], 0)
    chunks = tf.RaggedTensor.from_row_lengths(tokens, row_lengths)
    return tf.data.Dataset.from_tensor_slices({key: chunks})

  return dataset.flat_map(to_chunks)


# ------------------------------------------------------------- pretraining
def corruption_ids(vocabulary) -> tuple:
  """(mask_id, ids allowed as random replacements) for a vocabulary."""
  mask_id = getattr(vocabulary, "mask_id", None)
  regular = getattr(vocabulary, "regular_ids", None)
  if mask_id is None or regular is None:
    raise ValueError(
        f"{vocabulary} has no mask token / regular-token list; nar_denoise "
        "needs a WordPieceVocabulary (or pass mask_id and random_ids)")
  return int(mask_id), list(regular)


def corrupt_tokens(tokens: tf.Tensor, seeds: Sequence[tf.Tensor], *,
                   mask_id: int, random_ids: tf.Tensor,
                   mask_rate: float = 0.15, delete_rate: float = 0.10,
                   delete_span: int = 3, random_frac: float = 0.1,
                   keep_frac: float = 0.1) -> tf.Tensor:
  """Span deletion then BERT masking of a 1-D token tensor (see module doc).

  Needs 4 seeds. Never deletes every token of a non-empty input.
  """
  tokens = tf.convert_to_tensor(tokens)
  n = tf.size(tokens)
  # 1. span deletion: a span of `delete_span` starts at each position with
  # probability p, so the expected deleted fraction is ~ 1 - (1 - p)^span.
  if delete_rate > 0:
    p = 1.0 - (1.0 - delete_rate) ** (1.0 / delete_span)
    starts = tf.random.stateless_uniform([n], seed=seeds[0]) < p
    padded = tf.concat([tf.zeros([delete_span - 1], tf.bool), starts], 0)
    deleted = tf.reduce_any(
        tf.stack([padded[k:k + n] for k in range(delete_span)]), axis=0)
    deleted = tf.logical_and(deleted, tf.logical_not(tf.reduce_all(deleted)))
    kept = tf.boolean_mask(tokens, tf.logical_not(deleted))
  else:
    kept = tokens
  # 2. masking: select mask_rate; of those 80% [MASK], 10% random, 10% keep.
  corrupted, _ = bert_mask(kept, seeds[1:], mask_id=mask_id, random_ids=random_ids,
                           mask_rate=mask_rate, random_frac=random_frac,
                           keep_frac=keep_frac)
  return corrupted


def bert_mask(tokens: tf.Tensor, seeds: Sequence[tf.Tensor], *, mask_id: int,
              random_ids: tf.Tensor, mask_rate: float = 0.15, random_frac: float = 0.1,
              keep_frac: float = 0.1) -> tuple:
  """BERT's masking of a 1-D token tensor [m]: selects `mask_rate` of the
  positions; of those 80% become `mask_id`, 10% a random id, 10% stay.

  Needs 3 seeds. Returns (corrupted [m], selected [m] bool).
  """
  m = tf.size(tokens)
  selected = tf.random.stateless_uniform([m], seed=seeds[0]) < mask_rate
  action = tf.random.stateless_uniform([m], seed=seeds[1])
  to_mask = tf.logical_and(selected, action < 1.0 - random_frac - keep_frac)
  to_random = tf.logical_and(
      selected, tf.logical_and(action >= 1.0 - random_frac - keep_frac,
                               action < 1.0 - keep_frac))
  random_ids = tf.convert_to_tensor(random_ids, tokens.dtype)
  picks = tf.random.stateless_uniform(
      [m], seed=seeds[2], minval=0, maxval=tf.size(random_ids), dtype=tf.int32)
  out = tf.where(to_random, tf.gather(random_ids, picks), tokens)
  return tf.where(to_mask, tf.cast(mask_id, tokens.dtype), out), selected


def _corruption_ids_or_defaults(output_features, mask_id, random_ids) -> tuple:
  """(mask id, random ids as an int32 tensor), defaults from the inputs' vocabulary."""
  if mask_id is None or random_ids is None:
    default_mask, default_random = corruption_ids(output_features["inputs"].vocabulary)
    mask_id = default_mask if mask_id is None else mask_id
    random_ids = default_random if random_ids is None else random_ids
  return mask_id, tf.constant(list(random_ids), tf.int32)


def nar_denoise(dataset: tf.data.Dataset,
                output_features: Mapping[str, seqio.Feature],
                mask_rate: float = 0.15,
                delete_rate: float = 0.10,
                delete_span: int = 3,
                random_frac: float = 0.1,
                keep_frac: float = 0.1,
                mask_id: Optional[int] = None,
                random_ids: Optional[Sequence[int]] = None) -> tf.data.Dataset:
  """targets (clean tokens) -> inputs (corrupted), see module docstring."""
  mask_id, random_ids = _corruption_ids_or_defaults(output_features, mask_id, random_ids)

  @seqio.map_over_dataset(num_seeds=4)
  def corrupt(ex, seeds):
    ex = dict(ex)
    ex["inputs"] = corrupt_tokens(
        ex["targets"], seeds, mask_id=mask_id, random_ids=random_ids,
        mask_rate=mask_rate, delete_rate=delete_rate, delete_span=delete_span,
        random_frac=random_frac, keep_frac=keep_frac)
    return ex

  return corrupt(dataset)  # pylint: disable=no-value-for-parameter


def mlm_denoise(dataset: tf.data.Dataset,
                output_features: Mapping[str, seqio.Feature],
                mask_rate: float = 0.15,
                random_frac: float = 0.1,
                keep_frac: float = 0.1,
                mask_id: Optional[int] = None,
                random_ids: Optional[Sequence[int]] = None) -> tf.data.Dataset:
  """Plain MLM: targets (clean) -> inputs (BERT-masked, same length) and
  `targets_loss_weights` (1.0 on the selected positions, else 0.0).

  An example where no position is selected gets one selected position (the
  first), so every example carries loss.
  """
  mask_id, random_ids = _corruption_ids_or_defaults(output_features, mask_id, random_ids)

  @seqio.map_over_dataset(num_seeds=3)
  def corrupt(ex, seeds):
    ex = dict(ex)
    targets = tf.convert_to_tensor(ex["targets"])
    corrupted, selected = bert_mask(
        targets, seeds, mask_id=mask_id, random_ids=random_ids, mask_rate=mask_rate,
        random_frac=random_frac, keep_frac=keep_frac)
    first = tf.equal(tf.range(tf.size(targets)), 0)
    none = tf.logical_not(tf.reduce_any(selected))
    selected = tf.logical_or(selected, tf.logical_and(none, first))
    ex["inputs"] = tf.where(tf.logical_and(none, first),
                            tf.cast(mask_id, targets.dtype), corrupted)
    ex["targets_loss_weights"] = tf.cast(selected, tf.float32)
    return ex

  return corrupt(dataset)  # pylint: disable=no-value-for-parameter


# ---------------------------------------------------------- postprocessing
def _to_str(x: Any) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if hasattr(x, "numpy"):
    x = x.numpy()
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
  return str(x)


def normalize_text(text: str, vocabulary: seqio.Vocabulary) -> str:
  """Maps raw text into the space of decoded model outputs (encode+decode)."""
  return vocabulary.decode(list(vocabulary.encode(_to_str(text)))).strip()


def nar_postprocess(output_or_target: Any, example: Optional[Mapping[str, Any]] = None,
                    is_target: bool = False, *,
                    vocabulary: seqio.Vocabulary) -> Any:
  """seqio postprocess_fn for narlm fine-tuning tasks.

  Predictions (already `vocabulary.decode`d by seqio) are returned as
  stripped strings. Targets (raw `targets_pretokenized` text) are normalised
  with `normalize_text`, so metrics compare both sides in the same space
  (lowercased, WordPiece-detokenised "hello , world ." for BERT) and return a
  dict `{'text': target, 'source': normalised inputs}` when the example has
  `inputs_pretokenized` (for source-based metrics such as compression ratio).
  """
  if not is_target:
    return _to_str(output_or_target).strip()
  target = normalize_text(output_or_target, vocabulary)
  if example is not None and "inputs_pretokenized" in example:
    return {"text": target,
            "source": normalize_text(example["inputs_pretokenized"], vocabulary)}
  return target


def postprocess_for(vocabulary: seqio.Vocabulary):
  return functools.partial(nar_postprocess, vocabulary=vocabulary)
