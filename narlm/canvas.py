"""Iterative refinement: a conditional masked LM over a target canvas.

`CanvasNetwork` reads ``[CLS] source [SEP] canvas [SEP]`` with BERT's
token-type ids telling the two segments apart (0 = source, 1 = canvas) and
positions numbered through both, the layout of CMLM (Ghazvininejad et al.,
2019) on one BERT encoder. A canvas is the output being written: target
tokens, some of them ``[MASK]``. The encoder, output head and optional
dynamic CRF are NAG-BERT's (params under ``bert/`` and ``crf/``, so a
Hugging Face BERT warm-starts it as it does `NagBertModel`), plus one
``length_head`` on the ``[CLS]`` state that classifies the target length.

The attention mask is asymmetric: the source attends to the source only,
the canvas to everything (the UniLM sequence-to-sequence mask with a
bidirectional target). Two things follow, and they are why:

* the ``[CLS]`` state depends on the source alone, so the length is
  predicted before any canvas exists, in the same pass as training's;
* the source's keys/values are computed once per input and reused by every
  refinement pass, which then costs a canvas-sized forward (T positions
  attending to S + T keys) instead of an (S + T)-sized one.

Training (`CanvasModel.loss_fn`, on the ordinary seqio features of a seq2seq
task): the canvas is the target ``y_1 .. y_m`` followed by ``[SEP]``; per
example a ratio u ~ U(0, 1] is drawn and ceil(u m) random target positions
are masked. Loss = [CRF NLL over the canvas] + lambda * token NLL on the
masked positions (or on all positions) + length_weight * length NLL, summed
and divided by the masked-token count (or a constant, t5x's
``loss_normalizing_factor``). Optional glancing (GLAT, Qian et al. 2021): a
first pass over a fully masked canvas counts the model's errors d, and
``glancing_ratio * d`` gold tokens are revealed instead of a uniform share.

Decoding (`mask_predict`): the length head proposes the `length_beam` most
likely lengths; every candidate starts fully masked; pass 1 predicts every
position; passes t = 2 .. T re-mask the floor(m (T - t + 1) / T) least
confident tokens and predict them again (the count decays linearly to 0),
all inside one jitted `lax.fori_loop`. With ``mask_predict_crf`` each pass's
tokens come from Viterbi over the canvas, with the tokens that are not
re-masked clamped (their emissions are the only allowed class), so the CRF
orders the re-predicted tokens against their fixed neighbours. The
candidate with the best mean token log-probability wins. T = 1 is one-pass
decoding; one model serves every T.

A second start (`narlm.canvas_draft`): with ``draft_weight > 0`` the model
also trains NAG-BERT's head on its source states, and ``refine_draft`` /
``refine_draft_crf`` begin from that one-pass draft (its length and tokens)
instead of from [MASK]s, so pass 1 is one-pass NAG-BERT and passes 2 .. T
refine it.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Optional

import clu.metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm import canvas_draft
from narlm import losses
from narlm import output_vocab as output_vocab_lib
# The layout and decoding functions are part of this module's API.
from narlm.canvas_decoding import CANVAS_WIDTHS, mask_predict  # noqa: F401
from narlm.canvas_layout import (  # noqa: F401
    check_iterations, check_remask_ratio, lowest_k, make_canvas, random_mask, remask_count,
    target_lengths)
from narlm.model_base import Batch, GeneratorModel, PyTree, check_encoder_input
from narlm.model_metrics import average_metric
from narlm.modules.encoder import BertWithHead, Dense
from narlm.modules.network import OutputHeadNetwork, make_crf

SOURCE_SEGMENT, CANVAS_SEGMENT = 0, 1
MASK_PREDICT_METHODS = ("mask_predict", "mask_predict_crf")
DECODE_METHODS = MASK_PREDICT_METHODS + canvas_draft.DRAFT_METHODS


class CanvasNetwork(OutputHeadNetwork):
  """BERT over ``[CLS] source [SEP] canvas [SEP]`` (see the module docstring).

  Attributes: OutputHeadNetwork's (the head and the optional dynamic CRF over
  the canvas; no CRF by default here), and
    max_canvas_length: the longest target (length classes are 0 .. this).

  Param tree: ``bert/{encoder, head}`` (NagBertNetwork's), ``length_head``
  (kernel [D, max_canvas_length + 1], axes ('embed', 'length_classes')),
  ``crf/`` when use_crf.
  """
  use_crf: bool = False
  max_canvas_length: int = 64

  @property
  def num_length_classes(self) -> int:
    return self.max_canvas_length + 1

  def setup(self):
    if not isinstance(self.max_canvas_length, int) or self.max_canvas_length < 1:
      raise ValueError(f"max_canvas_length must be a positive int, got {self.max_canvas_length!r}")
    self.bert = BertWithHead(self.config)
    self.dropout = nn.Dropout(rate=self.head_dropout)
    self.length_head = Dense(self.num_length_classes, ("embed", "length_classes"),
                             kernel_init=nn.initializers.normal(self.config.initializer_range))
    if self.use_crf:
      self.crf = make_crf(self)

  def check_positions(self, source_length: int, canvas_width: int) -> None:
    limit = self.config.max_position_embeddings
    if source_length + canvas_width > limit:
      raise ValueError(f"source ({source_length}) + canvas ({canvas_width}) positions exceed "
                       f"max_position_embeddings={limit}; truncate the inputs or decode a "
                       "shorter canvas")

  def encode_source(self, source_tokens: jnp.ndarray, deterministic: bool = True):
    """int [B, S] -> (source, length_logits float32 [B, max_canvas_length + 1]).

    source = {'kv': per layer (keys, values) [B, S, H, Dh], 'mask': bool
    [B, S], 'length': int [B] non-pad source positions, 'states': float
    [B, S, D] the top source states (the draft head's input)}.
    """
    mask = source_tokens != self.config.pad_id
    x = self.bert.encoder.embeddings(source_tokens, jnp.full_like(source_tokens, SOURCE_SEGMENT),
                                     deterministic)
    kvs = []
    for layer in self.bert.encoder.layers:
      x, kv = layer(x, mask, deterministic, return_kv=True)
      kvs.append(kv)
    length_logits = self.length_head(x[:, 0]).astype(jnp.float32)
    source = {"kv": kvs, "mask": mask, "length": mask.sum(axis=-1).astype(jnp.int32),
              "states": x}
    return source, length_logits

  def output_rows(self) -> Optional[jnp.ndarray]:
    """The head's projection rows of the output vocabulary, [V', D] (or None):
    mask-predict gathers them once for all its passes."""
    ids = None if self.output_vocab is None else jnp.asarray(self.output_vocab.ids)
    return self.bert.output_rows(ids)

  def draft_logits(self, source: PyTree, deterministic: bool = True,
                   output_rows: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """NAG-BERT's one pass over the source segment: float32 emissions
    [B, S, V'] from `encode_source`'s top states (`narlm.canvas_draft`)."""
    x = self.dropout(source["states"], deterministic=deterministic)
    ids = None if self.output_vocab is None else jnp.asarray(self.output_vocab.ids)
    logits = self.bert.logits(x, output_ids=ids, output_rows=output_rows)
    assert logits.shape == source["states"].shape[:2] + (self.output_size,), logits.shape
    return logits

  def canvas_logits(self, source: PyTree, canvas_tokens: jnp.ndarray,
                    deterministic: bool = True,
                    output_rows: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """One refinement pass: int [B, W] canvas -> float32 emissions [B, W, V'].

    Canvas keys are its non-pad positions (tokens, [MASK]s and the closing
    [SEP]); the source keys/values come from `encode_source`; `output_rows`
    from `output_rows` (else gathered here).
    """
    batch, width = canvas_tokens.shape
    self.check_positions(source["mask"].shape[1], width)
    positions = source["length"][:, None] + jnp.arange(width)[None, :]
    x = self.bert.encoder.embeddings(canvas_tokens, jnp.full_like(canvas_tokens, CANVAS_SEGMENT),
                                     deterministic, positions=positions)
    keys = jnp.concatenate([source["mask"], canvas_tokens != self.config.pad_id], axis=1)
    for layer, kv in zip(self.bert.encoder.layers, source["kv"]):
      x = layer(x, keys, deterministic, prefix_kv=kv)
    x = self.dropout(x, deterministic=deterministic)
    ids = None if self.output_vocab is None else jnp.asarray(self.output_vocab.ids)
    logits = self.bert.logits(x, output_ids=ids, output_rows=output_rows)
    assert logits.shape == (batch, width, self.output_size), logits.shape
    return logits

  def __call__(self, source_tokens: jnp.ndarray, canvas_tokens: jnp.ndarray,
               deterministic: bool = True):
    """int [B, S], int [B, W] -> (emissions [B, W, V'], length_logits [B, C])."""
    source, length_logits = self.encode_source(source_tokens, deterministic)
    return self.canvas_logits(source, canvas_tokens, deterministic), length_logits

  def crf_log_likelihood(self, logits, targets, mask) -> jnp.ndarray:
    """[B, W, V'], [B, W], [B, W] -> [B] beam-approximated CRF log-likelihood."""
    if not self.use_crf:
      raise ValueError("this network was built with use_crf=False")
    return self.crf(logits, targets, mask)

  def crf_decode(self, logits, mask):
    """[B, W, V'], [B, W] -> (classes [B, W], scores [B])."""
    if not self.use_crf:
      raise ValueError("this network was built with use_crf=False")
    return self.crf.decode(logits, mask)

  def initialize(self, source_tokens: jnp.ndarray, canvas_tokens: jnp.ndarray):
    """Touches every parameter (for `init`)."""
    logits, length_logits = self(source_tokens, canvas_tokens)
    # (the draft head is bert/head, the canvas head: no parameter of its own)
    if self.use_crf:
      mask = jnp.ones(canvas_tokens.shape, bool)
      return self.crf(logits, jnp.zeros(canvas_tokens.shape, jnp.int32), mask), length_logits
    return logits, length_logits


class CanvasModel(GeneratorModel):
  """Mask-predict generator with t5x's BaseModel interface (by duck typing).

  Attributes beyond GeneratorModel's:
    token_nll_weight: lambda (with a CRF; without one the token NLL is the loss).
    length_weight: weight of the length NLL.
    loss_on_all_positions: token NLL on every canvas position, not only the
      masked ones.
    glancing_ratio: 0 = uniform masking ratio; > 0 = GLAT's glancing sampler.
    decode_method: 'mask_predict' (argmax tokens each pass) or
      'mask_predict_crf' (Viterbi each pass; needs the CRF); 'refine_draft' /
      'refine_draft_crf' start from the source-aligned draft (needs a model
      trained with draft_weight > 0; `narlm.canvas_draft`).
    iterations: T, passes per decode.
    length_beam: candidate lengths decoded in parallel per input (1 for the
      draft methods: the draft fixes the length).
    draft_weight: weight of the source-aligned draft loss (NAG-BERT's loss on
      the source states); 0 trains no draft.
    train_on_draft: the unmasked canvas tokens of an example whose draft has
      the target's length are the draft's (its argmax, no gradient) instead of
      the target's, and the draft's wrong tokens are masked too: the canvas
      learns to correct drafts, as `refine_draft` asks of it at test time
      (as SMART, Ghazvininejad et al. 2020, trains on the model's own
      predictions). Needs draft_weight > 0.
  """

  def __init__(self, module: CanvasNetwork, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, token_nll_weight: float = 0.5,
               length_weight: float = 0.1, label_smoothing: float = 0.0,
               loss_on_all_positions: bool = False, glancing_ratio: float = 0.0,
               decode_method: str = "mask_predict", iterations: int = 4, length_beam: int = 1,
               draft_weight: float = 0.0, train_on_draft: bool = False,
               frame_inputs: bool = True,
               loss_normalizing_factor: Optional[float] = None):
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     why_eos="canvas targets end in eos", frame_inputs=frame_inputs,
                     loss_normalizing_factor=loss_normalizing_factor)
    if not isinstance(module, CanvasNetwork):
      raise TypeError(f"module must be a CanvasNetwork, got {type(module).__name__}")
    mask_id = getattr(input_vocabulary, "mask_id", None)
    if mask_id is None:
      raise ValueError("the canvas model needs a [MASK] token; the input vocabulary has none")
    self.mask_id = int(mask_id)
    # The canvas closes with [SEP]: the framing's separator, else eos.
    self.sep_id = self.source_framing[1] if self.source_framing else self.eos_id
    if not glancing_ratio >= 0.0:
      raise ValueError(f"glancing_ratio must be >= 0, got {glancing_ratio!r}")
    if not draft_weight >= 0.0:
      raise ValueError(f"draft_weight must be >= 0, got {draft_weight!r}")
    if draft_weight > 0 and not self.source_framing:
      raise ValueError("the source-aligned draft (draft_weight > 0) needs framed sources "
                       "([CLS] x [SEP]: frame_inputs=True)")
    self.draft_weight = float(draft_weight)
    if train_on_draft and not self.draft_weight > 0:
      raise ValueError("train_on_draft needs a draft: set draft_weight > 0")
    self.train_on_draft = bool(train_on_draft)
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    self.token_nll_weight = float(token_nll_weight)
    self.length_weight = float(length_weight)
    self.label_smoothing = float(label_smoothing)
    self.loss_on_all_positions = bool(loss_on_all_positions)
    self.glancing_ratio = float(glancing_ratio)
    self.decode_method = self.check_decode_method(decode_method)
    self.iterations = check_iterations(iterations)
    self.length_beam = self.check_length_beam(length_beam)

  # ------------------------------------------------------------- checks
  def check_decode_method(self, method: Optional[str]) -> str:
    method = method or getattr(self, "decode_method", "mask_predict")
    if method not in DECODE_METHODS:
      raise ValueError(f"unknown decode method {method!r} for the canvas model; expected one "
                       f"of {DECODE_METHODS}")
    if method.endswith("_crf") and not self.module.use_crf:
      raise ValueError(f"decode method {method!r} needs a CRF; this canvas model has "
                       f"none (USE_CRF = False): use {method[:-len('_crf')]!r}")
    if method in canvas_draft.DRAFT_METHODS and not self.source_framing:
      raise ValueError(f"decode method {method!r} reads a draft over [CLS] x [SEP]; this "
                       "model does not frame its sources")
    if method in canvas_draft.DRAFT_METHODS and not self.draft_weight > 0:
      raise ValueError(f"decode method {method!r} needs the draft head trained: this model "
                       "has draft_weight = 0 (train with DRAFT_WEIGHT > 0)")
    return method

  def check_length_beam(self, length_beam: int) -> int:
    classes = self.module.max_canvas_length  # lengths 1 .. max are candidates
    if not isinstance(length_beam, int) or not 1 <= length_beam <= classes:
      raise ValueError(f"length_beam must be an int in [1, {classes}] (the length classes "
                       f"1..max_canvas_length), got {length_beam!r}")
    return length_beam

  def _classes(self, token_ids):
    return output_vocab_lib.maybe_class_of(self.module.output_vocab, token_ids)

  def _token_ids(self, classes):
    return output_vocab_lib.maybe_id_of(self.module.output_vocab, classes)

  def _check_targets(self, batch: Batch) -> jnp.ndarray:
    tokens = check_encoder_input(batch)
    if "decoder_target_tokens" not in batch:
      raise KeyError(f"batch has no 'decoder_target_tokens' (features: {sorted(batch)})")
    targets = batch["decoder_target_tokens"]
    if targets.ndim != 2 or targets.shape[0] != tokens.shape[0]:
      raise ValueError(f"decoder_target_tokens must be [batch={tokens.shape[0]}, length], got "
                       f"shape {targets.shape}")
    if targets.shape[1] - 2 > self.module.max_canvas_length:
      raise ValueError(
          f"targets of {targets.shape[1]} positions hold canvases of up to "
          f"{targets.shape[1] - 2} tokens, more than max_canvas_length="
          f"{self.module.max_canvas_length} (the length classes): raise MAX_CANVAS_LENGTH to at "
          f"least {targets.shape[1] - 2} or shorten TASK_FEATURE_LENGTHS['targets']")
    return targets

  # ------------------------------------------------------------------ init
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    del input_types
    return self.init_variables(rng, input_shapes, with_targets=True,
                               method=CanvasNetwork.initialize)

  # ------------------------------------------------------------------ loss
  def _apply(self, params, method, *args, dropout_rng=None, **kwargs):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, *args, deterministic=dropout_rng is None,
                             rngs=rngs, method=method, **kwargs)

  def _crf_log_likelihood(self, params, logits, classes, mask):
    return self.module.apply({"params": params}, logits, classes, mask,
                             method=CanvasNetwork.crf_log_likelihood)

  def _training_mask(self, params, source, targets, lengths, rng, dropout_rng):
    """bool [B, T]: the target positions masked in this training canvas."""
    width = targets.shape[1]
    u_rng, pick_rng = jax.random.split(rng)
    if self.glancing_ratio > 0:
      # GLAT: predict from a fully masked canvas (no gradient), reveal a
      # share of gold tokens proportional to the errors, mask the rest.
      full = make_canvas(targets, lengths, jnp.ones(targets.shape, bool), mask_id=self.mask_id,
                         sep_id=self.sep_id, pad_id=self.pad_id)
      guess = jnp.argmax(jax.lax.stop_gradient(
          self._apply(params, CanvasNetwork.canvas_logits, source, full,
                      dropout_rng=dropout_rng)), axis=-1)
      valid = jnp.arange(width)[None, :] < lengths[:, None]
      errors = ((guess != self._classes(targets)) & valid).sum(-1)
      reveal = jnp.floor(self.glancing_ratio * errors).astype(jnp.int32)
      counts = jnp.maximum(lengths - reveal, jnp.minimum(lengths, 1))
    else:
      u = jax.random.uniform(u_rng, lengths.shape, minval=1e-6, maxval=1.0)
      counts = jnp.maximum(jnp.ceil(u * lengths).astype(jnp.int32), jnp.minimum(lengths, 1))
    return random_mask(pick_rng, lengths, width, counts)

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> tuple[jnp.ndarray, MutableMapping[str, Any]]:
    """Summed loss / normaliser (t5x's signature); see the module docstring."""
    targets = self._check_targets(batch)
    lengths = target_lengths(targets, self.eos_id, self.pad_id)
    # Masking is drawn from the dropout key when training; evaluation uses
    # a fixed key so that its loss is deterministic.
    rng = jax.random.PRNGKey(0) if dropout_rng is None else jax.random.fold_in(dropout_rng, 1)
    source, length_logits = self._apply(params, CanvasNetwork.encode_source,
                                        batch["encoder_input_tokens"], dropout_rng=dropout_rng)
    masked = self._training_mask(params, source, targets, lengths, rng, dropout_rng)
    context, draft_metrics = targets, {}
    if self.draft_weight > 0:
      draft_loss, draft_logits, draft_metrics = self._draft_loss(
          params, batch, source, targets, lengths, dropout_rng)
      if self.train_on_draft:
        context, masked, used = self._draft_context(draft_logits, targets, lengths, masked)
        draft_metrics["draft_context_share"] = average_metric(used.mean())
    canvas = make_canvas(context, lengths, masked, mask_id=self.mask_id, sep_id=self.sep_id,
                         pad_id=self.pad_id)
    logits = self._apply(params, CanvasNetwork.canvas_logits, source, canvas,
                         dropout_rng=dropout_rng)
    classes = self._classes(targets)
    valid = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]
    weights = (valid if self.loss_on_all_positions else masked).astype(jnp.float32)
    num_tokens = weights.sum()
    token_nll = losses.token_nll(logits, classes, weights, self.label_smoothing).sum()
    length_nll = -jnp.take_along_axis(jax.nn.log_softmax(length_logits),
                                      jnp.minimum(lengths, self.module.max_canvas_length)[:, None],
                                      axis=-1).sum()
    total = self.length_weight * length_nll
    aux = {}
    if self.module.use_crf:
      crf_nll = -self._crf_log_likelihood(params, logits, classes, valid).sum()
      total = total + crf_nll + self.token_nll_weight * token_nll
      aux["crf_nll"] = crf_nll / jnp.maximum(valid.sum(), 1.0)
    else:
      total = total + token_nll
    loss = total / self.loss_normalizer(num_tokens)
    denom = jnp.maximum(num_tokens, 1.0)
    correct = ((jnp.argmax(logits, -1) == classes) * weights).sum()
    batch_size = jnp.float32(targets.shape[0])
    metrics = {
        "loss": average_metric(loss),
        "token_accuracy": average_metric(correct, denom),
        "token_nll": average_metric(losses.token_nll(logits, classes, weights).sum() / denom),
        "length_nll": average_metric(length_nll / batch_size),
        "length_accuracy": average_metric(
            (jnp.argmax(length_logits, -1) == lengths).sum(), batch_size),
        "num_tokens": clu_metrics.Average(total=num_tokens, count=jnp.float32(1.0)),
    }
    if self.draft_weight > 0:
      loss = loss + self.draft_weight * draft_loss
      metrics["loss"] = average_metric(loss)
      metrics.update(draft_metrics)
    metrics.update({name: average_metric(value) for name, value in aux.items()})
    return loss, metrics

  def _draft_loss(self, params, batch, source, targets, lengths, dropout_rng):
    """NAG-BERT's loss (CRF NLL + lambda token NLL, or the token NLL) of the
    draft head against source-aligned targets, normalised on its own."""
    aligned, weights = canvas_draft.align_to_source(
        batch["encoder_input_tokens"], targets, lengths, eos_id=self.eos_id, pad_id=self.pad_id)
    logits = self._apply(params, CanvasNetwork.draft_logits, source, dropout_rng=dropout_rng)
    classes = self._classes(aligned)
    crf_ll = (self._crf_log_likelihood(params, logits, classes, weights > 0)
              if self.module.use_crf else None)
    loss, _ = losses.nag_loss(logits, classes, weights, crf_ll,
                              token_nll_weight=self.token_nll_weight,
                              label_smoothing=self.label_smoothing,
                              loss_normalizing_factor=self.loss_normalizing_factor)
    correct = ((jnp.argmax(logits, -1) == classes) * weights).sum()
    return loss, logits, {"draft_loss": average_metric(loss),
                          "draft_token_accuracy": average_metric(
                              correct, jnp.maximum(weights.sum(), 1.0))}

  def _draft_context(self, draft_logits, targets, lengths, masked):
    """(canvas tokens [B, T], masked [B, T], used float [B]) for train_on_draft."""
    guess = self._token_ids(jnp.argmax(jax.lax.stop_gradient(draft_logits), -1)).astype(
        jnp.int32)
    tokens, _, draft_lengths = canvas_draft.compact_draft(
        guess, jnp.zeros(guess.shape, jnp.float32), targets.shape[1], eos_id=self.eos_id,
        pad_id=self.pad_id)
    used = draft_lengths == lengths
    valid = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]
    wrong = valid & used[:, None] & (tokens != targets)
    return jnp.where(used[:, None], tokens, targets), masked | wrong, used.astype(jnp.float32)

  # ------------------------------------------------------------- inference
  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                             *, decode_method: Optional[str] = None,
                             iterations: Optional[int] = None, length_beam: Optional[int] = None,
                             remask_ratio: Optional[float] = None,
                             max_decode_length: Optional[int] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             **unused_kwargs) -> tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """Mask-predict decoding.

    Args:
      params: model parameters.
      batch: needs 'encoder_input_tokens' [B, S].
      rng: unused (decoding is deterministic); kept for t5x.
      decode_method: 'mask_predict', 'mask_predict_crf', 'refine_draft' or
        'refine_draft_crf' (default: the model's).
      iterations: T >= 1 passes (default: the model's).
      length_beam: candidate lengths per input (default: the model's).
      remask_ratio: share of the tokens the first refinement pass re-masks
        (decaying linearly to the last pass; default (T - 1) / T, mask-predict's).
      max_decode_length: the longest output M (default: the input width S,
        at most max_canvas_length, so a short input bucket decodes a short
        canvas; pass it for tasks whose outputs outgrow their inputs); the
        canvas has M + 1 positions (room for [SEP]).
      unused_kwargs: e.g. ``alpha`` from callers that pass every method's
        arguments; ignored.

    Returns:
      tokens [B, max(S, M)] int32 (the output, then pad) and aux {'scores': [B]
      mean token log-probability of the chosen candidate, 'length': [B]
      output tokens, 'passes': [B] refinement passes run}.
    """
    del rng, unused_kwargs
    if num_decodes != 1:
      raise ValueError(f"mask-predict returns one output per input; num_decodes={num_decodes}")
    method = self.check_decode_method(decode_method)
    passes = check_iterations(self.iterations if iterations is None else iterations)
    beam = self.check_length_beam(self.length_beam if length_beam is None else length_beam)
    source_tokens = check_encoder_input(batch)
    longest = (min(self.module.max_canvas_length, source_tokens.shape[1])
               if max_decode_length is None else max_decode_length)
    if not isinstance(longest, int) or not 1 <= longest <= self.module.max_canvas_length:
      raise ValueError(f"max_decode_length must be an int in [1, max_canvas_length="
                       f"{self.module.max_canvas_length}] (the longest length class), got "
                       f"{longest!r}")
    if beam > longest:
      raise ValueError(f"length_beam={beam} exceeds the {longest} candidate lengths "
                       f"(1..max_decode_length)")
    if method in canvas_draft.DRAFT_METHODS and beam != 1:
      raise ValueError(f"decode method {method!r} takes its length from the draft: "
                       f"length_beam must be 1, got {beam}")
    tokens, aux = mask_predict(self, params, source_tokens, method=method,
                               iterations=passes, length_beam=beam, longest=longest,
                               remask_ratio=check_remask_ratio(remask_ratio))
    if return_all_decodes:
      tokens, aux = tokens[:, None], dict(aux, scores=aux["scores"][:, None])
    return tokens, aux

  def score_batch(self, params: PyTree, batch: Batch,
                  return_intermediates: bool = False) -> jnp.ndarray:
    """[B] log-likelihood of the targets given the source: the length's
    log-probability plus, with every target position masked, the CRF's (or
    the summed token) log-likelihood."""
    if return_intermediates:
      raise NotImplementedError("narlm does not return intermediates from score_batch")
    targets = self._check_targets(batch)
    lengths = target_lengths(targets, self.eos_id, self.pad_id)
    source, length_logits = self._apply(params, CanvasNetwork.encode_source,
                                        batch["encoder_input_tokens"])
    canvas = make_canvas(targets, lengths, jnp.ones(targets.shape, bool), mask_id=self.mask_id,
                         sep_id=self.sep_id, pad_id=self.pad_id)
    logits = self._apply(params, CanvasNetwork.canvas_logits, source, canvas)
    classes = self._classes(targets)
    valid = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]
    length_ll = jnp.take_along_axis(jax.nn.log_softmax(length_logits),
                                    jnp.minimum(lengths, self.module.max_canvas_length)[:, None],
                                    axis=-1)[:, 0]
    if self.module.use_crf:
      return length_ll + self._crf_log_likelihood(params, logits, classes, valid)
    return length_ll - losses.token_nll(logits, classes, valid.astype(jnp.float32)).sum(-1)
