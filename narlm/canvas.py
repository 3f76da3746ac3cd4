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

import functools
from typing import Any, Mapping, MutableMapping, Optional

import clu.metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm import canvas_draft
from narlm import decoding
from narlm import losses
from narlm import output_vocab as output_vocab_lib
from narlm.model_base import Batch, GeneratorModel, PyTree, check_encoder_input
from narlm.model_metrics import average_metric
from narlm.modules.encoder import BertWithHead, Dense
from narlm.modules.network import OutputHeadNetwork, make_crf

SOURCE_SEGMENT, CANVAS_SEGMENT = 0, 1
MASK_PREDICT_METHODS = ("mask_predict", "mask_predict_crf")
DECODE_METHODS = MASK_PREDICT_METHODS + canvas_draft.DRAFT_METHODS
# Canvas widths mask-predict's passes run at (below the full M + 1).
CANVAS_WIDTHS = (8, 16, 32, 64)
# A clamped position's other classes: low enough for Viterbi never to pick
# them, finite so that no beam score becomes inf - inf.
_CLAMP = -1e9


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

  def draft_logits(self, source: PyTree, deterministic: bool = True) -> jnp.ndarray:
    """NAG-BERT's one pass over the source segment: float32 emissions
    [B, S, V'] from `encode_source`'s top states (`narlm.canvas_draft`)."""
    x = self.dropout(source["states"], deterministic=deterministic)
    ids = None if self.output_vocab is None else jnp.asarray(self.output_vocab.ids)
    logits = self.bert.logits(x, output_ids=ids)
    assert logits.shape == source["states"].shape[:2] + (self.output_size,), logits.shape
    return logits

  def canvas_logits(self, source: PyTree, canvas_tokens: jnp.ndarray,
                    deterministic: bool = True) -> jnp.ndarray:
    """One refinement pass: int [B, W] canvas -> float32 emissions [B, W, V'].

    Canvas keys are its non-pad positions (tokens, [MASK]s and the closing
    [SEP]); the source keys/values come from `encode_source`.
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
    logits = self.bert.logits(x, output_ids=ids)
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


# ------------------------------------------------------------ layout (pure)
def target_lengths(targets: jnp.ndarray, eos_id: int, pad_id: int) -> jnp.ndarray:
  """int [B, T] ``y_1 .. y_m, eos, ..`` -> int [B] m (tokens before the first
  eos or pad)."""
  ends = (targets == eos_id) | (targets == pad_id)
  return jnp.where(ends.any(-1), jnp.argmax(ends, axis=-1), targets.shape[1]).astype(jnp.int32)


def make_canvas(tokens: jnp.ndarray, lengths: jnp.ndarray, masked: jnp.ndarray, *,
                mask_id: int, sep_id: int, pad_id: int) -> jnp.ndarray:
  """The canvas rows ``t_1 .. t_m [SEP] pad ..`` with masked positions [MASK].

  Args:
    tokens: int [B, W] target (or current) tokens; positions >= m ignored.
    lengths: int [B] m, at most W - 1 (room for [SEP]).
    masked: bool [B, W] positions to mask (ignored at positions >= m).
  Returns:
    int [B, W].
  """
  pos = jnp.arange(tokens.shape[1])[None, :]
  inside = pos < lengths[:, None]
  canvas = jnp.where(inside & masked, mask_id, tokens)
  canvas = jnp.where(pos == lengths[:, None], sep_id, canvas)
  return jnp.where(pos > lengths[:, None], pad_id, canvas).astype(jnp.int32)


def lowest_k(scores: jnp.ndarray, valid: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """bool [B, W]: the k[b] valid positions of row b with the lowest scores
  (ties: the earlier position)."""
  keyed = jnp.where(valid, scores, jnp.inf)
  rank = jnp.argsort(jnp.argsort(keyed, axis=-1, stable=True), axis=-1, stable=True)
  return valid & (rank < k[:, None])


def random_mask(rng: jax.Array, lengths: jnp.ndarray, width: int,
                counts: jnp.ndarray) -> jnp.ndarray:
  """bool [B, W]: counts[b] distinct random positions among row b's first m."""
  valid = jnp.arange(width)[None, :] < lengths[:, None]
  return lowest_k(jax.random.uniform(rng, (lengths.shape[0], width)), valid, counts)


def remask_count(lengths: jnp.ndarray, iteration: jnp.ndarray, iterations: int) -> jnp.ndarray:
  """Tokens re-masked before pass `iteration` (1-based, 2 .. T):
  floor(m (T - iteration + 1) / T), mask-predict's linear decay."""
  return (lengths * (iterations - iteration + 1)) // iterations


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
  """

  def __init__(self, module: CanvasNetwork, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, token_nll_weight: float = 0.5,
               length_weight: float = 0.1, label_smoothing: float = 0.0,
               loss_on_all_positions: bool = False, glancing_ratio: float = 0.0,
               decode_method: str = "mask_predict", iterations: int = 4, length_beam: int = 1,
               draft_weight: float = 0.0, frame_inputs: bool = True,
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
    canvas = make_canvas(targets, lengths, masked, mask_id=self.mask_id, sep_id=self.sep_id,
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
      draft_loss, draft_metrics = self._draft_loss(params, batch, source, targets, lengths,
                                                   dropout_rng)
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
    return loss, {"draft_loss": average_metric(loss),
                  "draft_token_accuracy": average_metric(correct,
                                                         jnp.maximum(weights.sum(), 1.0))}

  # ------------------------------------------------------------- inference
  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                             *, decode_method: Optional[str] = None,
                             iterations: Optional[int] = None, length_beam: Optional[int] = None,
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
                               iterations=passes, length_beam=beam, longest=longest)
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


def check_iterations(iterations: int) -> int:
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations (T, refinement passes) must be an int >= 1, got {iterations!r}")
  return iterations


@functools.partial(jax.jit, static_argnames=("model", "method", "iterations", "length_beam",
                                             "longest", "canvas_widths"))
def mask_predict(model: CanvasModel, params: PyTree, source_tokens: jnp.ndarray, *, method: str,
                 iterations: int, length_beam: int, longest: int,
                 canvas_widths: tuple = CANVAS_WIDTHS):
  """Mask-predict over a length beam, or from the source-aligned draft (see
the module docstring).

  Args:
    model: the CanvasModel (hashable by identity: one program per model,
      shape, method, T, beam and longest length).
    source_tokens: int [B, S].
    longest: M, the longest output; the canvas has W = M + 1 positions.
    canvas_widths: the narrower canvases the passes may run on when every
      candidate fits (() = always W; the outputs are the same).

  Returns:
    (tokens [B, max(S, M)] int32: output then pad; aux {'scores' [B],
    'length' [B], 'passes' [B]}).
  """
  network = model.module
  apply = functools.partial(network.apply, {"params": params})
  batch, width = source_tokens.shape[0], longest + 1
  use_crf = method.endswith("_crf")
  source, length_logits = apply(source_tokens, method=CanvasNetwork.encode_source)
  if method in canvas_draft.DRAFT_METHODS:
    # Pass 1 is one-pass NAG-BERT over the source positions (as its Viterbi
    # decodes: every position in the mask); its kept tokens are the canvas.
    draft = apply(source, method=CanvasNetwork.draft_logits).astype(jnp.float32)
    if use_crf:
      draft_classes, _ = apply(draft, jnp.ones(source_tokens.shape, bool),
                               method=CanvasNetwork.crf_decode)
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
      logits = apply(source, canvas, method=CanvasNetwork.canvas_logits).astype(jnp.float32)
      log_probs = jax.nn.log_softmax(logits, axis=-1)
      if use_crf:
        kept = valid_w & ~remask
        current = model._classes(tokens)  # pylint: disable=protected-access
        onehot = jnp.arange(logits.shape[-1])[None, None, :] == current[..., None]
        clamped = jnp.where(kept[..., None] & ~onehot, _CLAMP, logits)
        classes, _ = apply(clamped, valid_w, method=CanvasNetwork.crf_decode)
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
      remask = lowest_k(confidence, valid_w, remask_count(lengths, iteration, iterations))
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
