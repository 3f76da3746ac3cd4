"""NagBertModel: t5x BaseModel-interface glue around `NagBertNetwork`.

The class follows t5x's `BaseModel` contract (`loss_fn`, `eval_fn`,
`predict_batch`, `predict_batch_with_aux`, `score_batch`,
`get_initial_variables`, `FEATURE_CONVERTER_CLS`, `optimizer_def`,
`input_vocabulary`, `output_vocabulary`) by duck typing, so real t5x can train
it while narlm itself never imports t5x.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Optional

import clu.metrics as clu_metrics
import jax
import jax.numpy as jnp

from narlm import decoding
from narlm import losses
from narlm import output_vocab as output_vocab_lib
from narlm.model_base import Batch, GeneratorModel, PyTree, check_encoder_input
from narlm.model_metrics import average_metric
from narlm.modules.network import NagBertNetwork


def check_batch(batch: Batch, need_targets: bool = True) -> None:
  """Clear errors for a malformed batch (static shapes, so fine under jit)."""
  tokens = check_encoder_input(batch)
  if need_targets:
    if "decoder_target_tokens" not in batch:
      raise KeyError(f"batch has no 'decoder_target_tokens' (features: {sorted(batch)})")
    for name in ("decoder_target_tokens", "decoder_loss_weights"):
      if name in batch and batch[name].shape != tokens.shape:
        raise ValueError(
            f"{name} shape {batch[name].shape} differs from encoder_input_tokens "
            f"{tokens.shape}: NAG-BERT predicts target i from input position i, so both "
            "must be padded to the same length (use NarFeatureConverter)")


class NagBertModel(GeneratorModel):
  """Non-autoregressive generator (NAG-BERT) with a dynamic CRF.

  Attributes:
    module: the `NagBertNetwork`.
    input_vocabulary / output_vocabulary: seqio vocabularies (usually equal).
    optimizer_def: whatever the trainer optimises with (an optax
      GradientTransformation for narlm's trainer, a t5x optimizer for t5x).
    eos_id / pad_id: of the output vocabulary.
    token_nll_weight: lambda in  CRF NLL + lambda * token NLL.
    label_smoothing, unlikelihood_weight, unlikelihood_window: see losses.
    decode_method: default for prediction: 'viterbi', 'argmax' or
      'ratio_first' ('argmax' is forced when the network has no CRF).
    ratio_first_alpha: alpha for ratio-first decoding.
    frame_inputs: sources framed as `[CLS] x [SEP]` (see GeneratorModel).

  With a restricted output vocabulary (`module.output_vocab`), the network's
  emissions and CRF work in output classes; this glue maps targets to
  classes for the losses and decoded classes back to vocabulary ids, so
  everything outside the model sees vocabulary ids only.
  """

  def __init__(self, module: NagBertNetwork, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, token_nll_weight: float = 0.5,
               label_smoothing: float = 0.0, unlikelihood_weight: float = 0.0,
               unlikelihood_window: int = 2, decode_method: str = "viterbi",
               ratio_first_alpha: Optional[float] = None, frame_inputs: bool = True,
               loss_normalizing_factor: Optional[float] = None):
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     why_eos="NAG-BERT targets end in two eos", frame_inputs=frame_inputs,
                     loss_normalizing_factor=loss_normalizing_factor)
    self.token_nll_weight = token_nll_weight
    self.label_smoothing = label_smoothing
    self.unlikelihood_weight = unlikelihood_weight
    self.unlikelihood_window = unlikelihood_window
    self.decode_method = decoding.check_decode_method(decode_method)
    if decode_method == "ratio_first" and ratio_first_alpha is None:
      raise ValueError("decode_method='ratio_first' needs ratio_first_alpha")
    self.ratio_first_alpha = ratio_first_alpha
    if getattr(module, "use_crf", False) and getattr(module, "crf_self_transition", False):
      exempt = set(getattr(module, "crf_self_transition_exempt_ids", ()))
      if self.eos_id not in exempt:
        raise ValueError(
            f"the CRF's self-transitions must exempt eos (id {self.eos_id}): every target ends "
            f"in eos eos; set CRF_SELF_TRANSITION_EXEMPT_IDS to include it (got {sorted(exempt)})")
    out_vocab = getattr(module, "output_vocab", None)
    if out_vocab is not None and out_vocab.vocab_size != output_vocabulary.vocab_size:
      raise ValueError(f"OUTPUT_VOCAB was built for a vocabulary of {out_vocab.vocab_size} ids "
                       f"but the model's output vocabulary has {output_vocabulary.vocab_size}")

  # ------------------------------------------------------------------ init
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    """Returns {'params': ..., 'params_axes': ...} for a batch of `input_shapes`."""
    del input_types
    return self.init_variables(rng, input_shapes, method=NagBertNetwork.initialize)

  # ------------------------------------------------------------------ loss
  def _classes(self, token_ids):
    """Vocabulary ids -> the network's output classes."""
    return output_vocab_lib.maybe_class_of(self.module.output_vocab, token_ids)

  def _token_ids(self, classes):
    """Output classes -> vocabulary ids."""
    return output_vocab_lib.maybe_id_of(self.module.output_vocab, classes)

  def _logits(self, params, tokens, dropout_rng=None, num_positions=None):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, tokens, deterministic=dropout_rng is None,
                             num_positions=num_positions, rngs=rngs)

  def _crf_log_likelihood(self, params, logits, targets, mask):
    return self.module.apply({"params": params}, logits, targets, mask,
                             method=NagBertNetwork.crf_log_likelihood)

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> tuple[jnp.ndarray, MutableMapping[str, Any]]:
    """Summed loss / normaliser (see loss_normalizing_factor) and clu metrics
    (t5x's signature)."""
    check_batch(batch)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets != self.pad_id).astype(jnp.float32)
    targets = self._classes(targets)
    logits = self._logits(params, batch["encoder_input_tokens"], dropout_rng)
    crf_ll = None
    if self.module.use_crf:
      crf_ll = self._crf_log_likelihood(params, logits, targets, weights > 0)
    loss, aux = losses.nag_loss(
        logits, targets, weights, crf_ll, token_nll_weight=self.token_nll_weight,
        label_smoothing=self.label_smoothing, unlikelihood_weight=self.unlikelihood_weight,
        unlikelihood_window=self.unlikelihood_window,
        loss_normalizing_factor=self.loss_normalizing_factor)
    num_tokens = aux.pop("num_tokens")
    correct = ((jnp.argmax(logits, -1) == targets) * weights).sum()
    metrics = {
        "loss": average_metric(loss),
        "token_accuracy": average_metric(correct, jnp.maximum(num_tokens, 1.0)),
        "num_tokens": clu_metrics.Average(total=num_tokens, count=jnp.float32(1.0)),
    }
    metrics.update({name: average_metric(value) for name, value in aux.items()})
    return loss, metrics

  # ------------------------------------------------------------- inference
  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                             *, decode_method: Optional[str] = None,
                             alpha: Optional[float] = None, return_all_decodes: bool = False,
                             num_decodes: int = 1, prompt_with_targets: bool = False,
                             **unused_kwargs) -> tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """Decodes every position in one parallel pass.

    Args:
      params: model parameters.
      batch: needs 'encoder_input_tokens' [B, L].
      rng: unused (decoding is deterministic); kept for t5x.
      decode_method: 'argmax', 'viterbi' or 'ratio_first' (default: the
        model's; 'argmax' when the network has no CRF).
      alpha: ratio for 'ratio_first' (default: the model's).
      return_all_decodes, num_decodes, prompt_with_targets: t5x arguments;
        NAR decoding yields one decode, so num_decodes must be 1.

    Returns:
      tokens [B, L] int32 cut at the first eos (the eos and the tail are
      pad), and aux {'scores': [B], 'length': [B]}.
    """
    del rng, prompt_with_targets, unused_kwargs
    if num_decodes != 1:
      raise ValueError(f"NAR decoding produces one output per input; num_decodes={num_decodes}")
    check_batch(batch, need_targets=False)
    method = decoding.check_decode_method(decode_method or self.decode_method)
    if not self.module.use_crf:
      method = "argmax"
    tokens_in = batch["encoder_input_tokens"]
    length = tokens_in.shape[1]
    if method == "argmax":
      tokens, scores = decoding.argmax_decode(self._logits(params, tokens_in))
      tokens = self._token_ids(tokens)
      tokens, lengths = decoding.cut_at_first_eos(tokens, self.eos_id, self.pad_id)
    else:
      num_positions = length
      if method == "ratio_first":
        alpha = alpha if alpha is not None else self.ratio_first_alpha
        if alpha is None:
          raise ValueError("ratio_first decoding needs alpha")
        # Every row keeps floor(alpha n) + 2 positions, n <= L: a static
        # bound, so the head and the CRF skip the positions no row can use.
        num_positions = decoding.ratio_first_positions(length, alpha)
        mask = decoding.ratio_first_mask(tokens_in, alpha, length=num_positions,
                                         pad_id=self.pad_id)
      else:
        mask = jnp.ones(tokens_in.shape, bool)
      logits = self._logits(params, tokens_in, num_positions=num_positions)
      tokens, scores = self.module.apply({"params": params}, logits, mask,
                                         method=NagBertNetwork.crf_decode)
      tokens = self._token_ids(tokens)
      tokens, lengths = decoding.cut_at_first_eos(tokens, self.eos_id, self.pad_id, mask)
      if num_positions < length:  # back to [B, L], as every method returns
        tokens = jnp.pad(tokens, ((0, 0), (0, length - num_positions)),
                         constant_values=self.pad_id)
    if return_all_decodes:
      tokens, scores = tokens[:, None], scores[:, None]
    return tokens, {"scores": scores, "length": lengths}

  def score_batch(self, params: PyTree, batch: Batch,
                  return_intermediates: bool = False) -> jnp.ndarray:
    """[B] log-likelihood of the targets: the CRF's (beam-approximated) or
    the sum of token log-probabilities without a CRF."""
    if return_intermediates:
      raise NotImplementedError("narlm does not return intermediates from score_batch")
    check_batch(batch)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets != self.pad_id).astype(jnp.float32)
    targets = self._classes(targets)
    logits = self._logits(params, batch["encoder_input_tokens"])
    if self.module.use_crf:
      return self._crf_log_likelihood(params, logits, targets, weights > 0)
    return -losses.token_nll(logits, targets, weights).sum(axis=-1)

