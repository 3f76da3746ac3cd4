"""A BERT deletion tagger: the strong reference for deletion-based compression.

Every source position is classified keep / delete by a 2-way head on the
BERT encoder's hidden state (the same encoder as NAG-BERT:
`narlm.modules.encoder.BertWithHead`, params under ``bert/`` so
`GeneratorModel.warm_start_from_hf_bert` loads all-MiniLM-L6-v2 into it
unchanged); the prediction is the kept source tokens, in order.

Training needs no extra data: keep / delete labels are computed inside
`loss_fn`, in JAX, from the ordinary seqio features of a seq2seq task
(`NarFeatureConverter`'s ``encoder_input_tokens`` [B, L] and
``decoder_target_tokens`` [B, T] = ``y_1 .. y_m, eos, eos, pad ..``) by
`greedy_keep_labels`: a left-to-right subsequence alignment. So the same
``sentcomp_bert`` task, converter and trainer serve it. The alignment does not
care how sources are framed: ``[CLS]``/``[SEP]`` (or nothing) around the
source never match a target word and are simply labelled "delete". A target
token that does not occur (in order) in the source stops the alignment: no
later source position is labelled keep for that row (on sentcomp's training
pairs under BERT WordPiece, 2.5% of the rows and 0.8% of the target tokens).

Parameter tree (``D`` hidden size)::

  bert/encoder/...                 as NagBertNetwork's (no MLM head: the
                                   tagger never projects onto the vocabulary)
  tag_head/kernel  [D, 2]          ('embed', 'tag_classes')
  tag_head/bias    [2]             ('tag_classes',)

Class 0 is "delete", class 1 "keep". The logical name ``tag_classes`` has no
rule in `narlm.partitioning.standard_logical_axis_rules`, which flax (and
t5x) treat as replicated, the right layout for a 2-wide axis.

Warm start: a checkpoint with an MLM head (e.g. bert-base-uncased's
``cls.predictions``) is refused by `hf_bert.merge_pretrained` (strict) since
the tagger has no head to put it in; bare encoders (all-MiniLM-L6-v2) load.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Optional

import clu.metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm.model_base import Batch, GeneratorModel, PyTree, check_encoder_input
from narlm.model_metrics import average_metric
from narlm.modules.encoder import BertConfig, BertWithHead, Dense

DELETE, KEEP = 0, 1
TAG_DECODE_METHODS = (None, "tag")


# ------------------------------------------------------------------ labels
def greedy_keep_labels(sources: jnp.ndarray, targets: jnp.ndarray, eos_id: int,
                       pad_id: int) -> jnp.ndarray:
  """Greedy left-to-right subsequence alignment of targets onto sources.

  Source position p is "keep" iff its token equals the next not-yet-matched
  target token; eos and pad are never matched, so the alignment stops at the
  targets' first eos / pad (and a target token missing from the rest of the
  source stops it too).

  Args:
    sources: int [B, L] source tokens (any framing, right-padded).
    targets: int [B, T] target tokens ``y_1 .. y_m`` then eos / pad.
    eos_id, pad_id: ids never matched.

  Returns:
    bool [B, L], True where the source token is kept.
  """
  sources, targets = jnp.asarray(sources), jnp.asarray(targets)
  if sources.ndim != 2 or targets.ndim != 2 or sources.shape[0] != targets.shape[0]:
    raise ValueError(f"sources [B, L] and targets [B, T] must share B, got shapes "
                     f"{sources.shape} and {targets.shape}")
  batch, num_targets = targets.shape
  if num_targets == 0:
    return jnp.zeros(sources.shape, bool)

  def step(matched, source_column):
    # matched [B]: how many target tokens are aligned so far.
    pointer = jnp.minimum(matched, num_targets - 1)
    wanted = jnp.take_along_axis(targets, pointer[:, None], axis=1)[:, 0]
    live = (matched < num_targets) & (wanted != eos_id) & (wanted != pad_id)
    keep = live & (source_column == wanted)
    return matched + keep.astype(matched.dtype), keep

  _, keep = jax.lax.scan(step, jnp.zeros((batch,), jnp.int32), sources.T)
  return keep.T


def compact_kept(tokens: jnp.ndarray, keep: jnp.ndarray,
                 pad_id: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Moves the kept tokens to the left (stable) and pads the rest.

  Args:
    tokens: int [B, L]; keep: bool [B, L].

  Returns:
    (int32 [B, L] kept tokens then pad, int32 [B] number kept).
  """
  batch, length = tokens.shape
  slot = jnp.cumsum(keep.astype(jnp.int32), axis=1) - 1
  slot = jnp.where(keep, slot, length)  # out of range: dropped by the scatter
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, length))
  out = jnp.full((batch, length), pad_id, jnp.int32)
  out = out.at[rows, slot].set(tokens.astype(jnp.int32), mode="drop")
  return out, keep.sum(axis=1).astype(jnp.int32)


# ------------------------------------------------------------------ network
class TaggerNetwork(nn.Module):
  """BERT encoder + a per-position keep / delete head (pure Flax).

  Attributes:
    config: encoder configuration (``hidden_dropout`` also drops the hidden
      states before the head, as BERT's token-classification head does).
  """
  config: BertConfig

  def setup(self):
    cfg = self.config
    # BertWithHead for the exact `bert/encoder/...` layout of NagBertNetwork;
    # only `encode` is called, so no MLM-head parameters are created.
    self.bert = BertWithHead(cfg)
    self.dropout = nn.Dropout(rate=cfg.hidden_dropout)
    self.tag_head = Dense(2, ("embed", "tag_classes"), dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype,
                          kernel_init=nn.initializers.normal(stddev=cfg.initializer_range))

  def __call__(self, input_tokens: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    """int [B, L] source tokens -> float32 [B, L, 2] (delete, keep) logits."""
    hidden = self.bert.encode(input_tokens, deterministic=deterministic)
    hidden = self.dropout(hidden, deterministic=deterministic)
    return self.tag_head(hidden).astype(jnp.float32)


# -------------------------------------------------------------------- model
class TaggerModel(GeneratorModel):
  """t5x BaseModel-interface glue around `TaggerNetwork` (see module doc).

  Attributes:
    module: the `TaggerNetwork`.
    input_vocabulary / output_vocabulary: must be equal (outputs are source
      tokens).
    optimizer_def: as NagBertModel's.
    keep_threshold: a position is kept when p(keep) > keep_threshold.
  """

  def __init__(self, module: TaggerNetwork, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, keep_threshold: float = 0.5,
               loss_normalizing_factor: Optional[float] = None):
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     why_eos="the tagger's labels stop at the targets' eos",
                     loss_normalizing_factor=loss_normalizing_factor)
    if input_vocabulary != output_vocabulary:
      raise ValueError(f"a deletion tagger outputs source tokens: its input vocabulary "
                       f"{input_vocabulary} and output vocabulary {output_vocabulary} must be "
                       "the same")
    self.keep_threshold = self._check_threshold(keep_threshold)

  @staticmethod
  def _check_threshold(value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
      raise ValueError(f"keep_threshold must be in [0, 1), got {value!r}")
    return float(value)

  # ------------------------------------------------------------------ init
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    """Returns {'params': ..., 'params_axes': ...} for a batch of `input_shapes`."""
    del input_types
    return self.init_variables(rng, input_shapes)

  # ------------------------------------------------------------------ loss
  def _log_probs(self, params, tokens, dropout_rng=None) -> jnp.ndarray:
    """[B, L] -> float32 [B, L, 2] log p(delete), log p(keep)."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    logits = self.module.apply({"params": params}, tokens,
                               deterministic=dropout_rng is None, rngs=rngs)
    return jax.nn.log_softmax(logits, axis=-1)

  def labels(self, batch: Batch) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(int32 [B, L] keep labels, float32 [B, L] weights = non-pad sources)."""
    tokens = check_encoder_input(batch)
    if "decoder_target_tokens" not in batch:
      raise KeyError(f"batch has no 'decoder_target_tokens' (features: {sorted(batch)})")
    keep = greedy_keep_labels(tokens, batch["decoder_target_tokens"], self.eos_id, self.pad_id)
    return keep.astype(jnp.int32), (tokens != self.pad_id).astype(jnp.float32)

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> tuple[jnp.ndarray, MutableMapping[str, Any]]:
    """Keep/delete NLL summed over the non-pad source positions / normaliser
    (their count unless loss_normalizing_factor is set), clu metrics."""
    labels, weights = self.labels(batch)
    log_probs = self._log_probs(params, batch["encoder_input_tokens"], dropout_rng)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    num_tokens = weights.sum()
    loss = (nll * weights).sum() / self.loss_normalizer(num_tokens)
    predicted = (jnp.exp(log_probs[..., KEEP]) > self.keep_threshold).astype(jnp.int32)
    targets = batch["decoder_target_tokens"]
    target_words = ((targets != self.eos_id) & (targets != self.pad_id)).sum()
    metrics = {
        "loss": average_metric(loss),
        "token_accuracy": average_metric(((predicted == labels) * weights).sum(),
                                         jnp.maximum(num_tokens, 1.0)),
        "keep_rate": average_metric((predicted * weights).sum(), jnp.maximum(num_tokens, 1.0)),
        "reference_keep_rate": average_metric((labels * weights).sum(),
                                              jnp.maximum(num_tokens, 1.0)),
        # Share of target tokens the greedy alignment found in the source.
        "aligned_target_tokens": average_metric(labels.sum(), jnp.maximum(target_words, 1)),
        "num_tokens": clu_metrics.Average(total=num_tokens, count=jnp.float32(1.0)),
    }
    return loss, metrics

  # ------------------------------------------------------------- inference
  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                             *, decode_method: Optional[str] = None,
                             keep_threshold: Optional[float] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False,
                             **unused_kwargs) -> tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """Tags every position in one pass and keeps the positions tagged keep.

    Args:
      params: model parameters.
      batch: needs 'encoder_input_tokens' [B, L].
      rng: unused (deterministic); kept for t5x.
      decode_method: None or 'tag' (anything else is an error, not ignored).
      keep_threshold: p(keep) above which a position is kept (default: the
        model's). pad and eos positions are never kept (their label is
        always delete).
      return_all_decodes, num_decodes, prompt_with_targets: t5x arguments;
        tagging yields one decode, so num_decodes must be 1.

    Returns:
      tokens int32 [B, L]: the kept source tokens left-aligned, then pad; aux
      {'scores': [B] log-probability of the chosen tags over the non-pad
      positions, 'length': [B] number kept}.
    """
    del rng, prompt_with_targets, unused_kwargs
    if decode_method not in TAG_DECODE_METHODS:
      raise ValueError(f"a TaggerModel decodes by tagging; decode_method must be one of "
                       f"{TAG_DECODE_METHODS}, got {decode_method!r}")
    if num_decodes != 1:
      raise ValueError(f"tagging produces one output per input; num_decodes={num_decodes}")
    threshold = self._check_threshold(
        self.keep_threshold if keep_threshold is None else keep_threshold)
    tokens = check_encoder_input(batch)
    log_probs = self._log_probs(params, tokens)
    real = tokens != self.pad_id
    keep = real & (tokens != self.eos_id) & (jnp.exp(log_probs[..., KEEP]) > threshold)
    scores = jnp.where(keep, log_probs[..., KEEP], log_probs[..., DELETE])
    scores = (scores * real).sum(axis=-1)
    out, lengths = compact_kept(tokens, keep, self.pad_id)
    if return_all_decodes:
      out, scores = out[:, None], scores[:, None]
    return out, {"scores": scores, "length": lengths}

  def score_batch(self, params: PyTree, batch: Batch,
                  return_intermediates: bool = False) -> jnp.ndarray:
    """[B] log-likelihood of the targets' greedy keep/delete labels."""
    if return_intermediates:
      raise NotImplementedError("narlm does not return intermediates from score_batch")
    labels, weights = self.labels(batch)
    log_probs = self._log_probs(params, batch["encoder_input_tokens"])
    chosen = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return (chosen * weights).sum(axis=-1)
