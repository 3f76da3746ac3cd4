"""What `NagBertModel` and `ArSeq2SeqModel` share.

Both implement t5x's `BaseModel` contract by duck typing; the parts of it
that do not depend on the network (vocabularies and their eos/pad ids, the
feature converter, `eval_fn`, `predict_batch`, the BERT warm start and the
encoder-input checks) live here once.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, MutableMapping, Optional, Sequence

import jax
import jax.numpy as jnp

Batch = Mapping[str, jnp.ndarray]
PyTree = Any


def check_encoder_input(batch: Batch) -> jnp.ndarray:
  """Returns ``encoder_input_tokens`` [batch, length]; clear errors otherwise."""
  if "encoder_input_tokens" not in batch:
    raise KeyError(f"batch has no 'encoder_input_tokens' (features: {sorted(batch)})")
  tokens = batch["encoder_input_tokens"]
  if tokens.ndim != 2:
    raise ValueError(f"encoder_input_tokens must be [batch, length], got shape {tokens.shape}")
  return tokens


class GeneratorModel:
  """Base of narlm's model classes (subclasses define the network glue:
  `loss_fn`, `predict_batch_with_aux`, `score_batch`, `get_initial_variables`).

  Attributes:
    module: the Flax network; its parameters have a ``bert`` subtree.
    input_vocabulary / output_vocabulary: seqio vocabularies (usually equal).
    optimizer_def: whatever the trainer optimises with (an optax
      GradientTransformation for narlm's trainer, a t5x optimizer for t5x).
    eos_id / pad_id: of the output vocabulary.
    loss_normalizing_factor: t5x's knob. None: ``loss_fn`` returns the sum of
      per-token losses divided by this batch's real target tokens (per-token
      mean). A number: divided by that constant instead, so that summing the
      gradients of micro-batches (what t5x's trainer does) is exactly the
      gradient of the whole batch. narlm's trainer accumulates exactly under
      both settings (see `narlm.train.Trainer`).
  """

  # The clu metric whose ``total`` is the real-token count that loss_fn
  # normalises by (when loss_normalizing_factor is None); narlm's trainer
  # weights micro-batches by it.
  NORMALIZER_METRIC = "num_tokens"

  def __init__(self, module: Any, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, why_eos: str, frame_inputs: bool = True,
               loss_normalizing_factor: Optional[float] = None):
    """``why_eos`` completes the error raised when the vocabulary has no eos.

    ``frame_inputs``: frame sources as ``[CLS] x [SEP]`` (NAG-BERT's and
    BERT's input layout) when the input vocabulary has a ``cls_id`` (narlm's
    BERT WordPiece vocabulary does; SentencePiece vocabularies do not, and
    their sources stay unframed).
    """
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.optimizer_def = optimizer_def
    if loss_normalizing_factor is not None and not float(loss_normalizing_factor) > 0:
      raise ValueError(f"loss_normalizing_factor must be None or > 0, got {loss_normalizing_factor!r}")
    self.loss_normalizing_factor = (None if loss_normalizing_factor is None
                                    else float(loss_normalizing_factor))
    if output_vocabulary.eos_id is None:
      raise ValueError(f"the output vocabulary has no eos id; {why_eos}")
    self.eos_id = int(output_vocabulary.eos_id)
    self.pad_id = int(getattr(output_vocabulary, "pad_id", 0) or 0)
    cls_id = getattr(input_vocabulary, "cls_id", None)
    self.source_framing: Optional[tuple[int, int]] = (
        (int(cls_id), int(input_vocabulary.eos_id)) if frame_inputs and cls_id is not None
        else None)

  def loss_normalizer(self, num_tokens: jnp.ndarray) -> jnp.ndarray:
    """What loss_fn divides the summed loss by: the constant
    loss_normalizing_factor, or the batch's real-token count (at least 1)."""
    if self.loss_normalizing_factor is not None:
      return jnp.float32(self.loss_normalizing_factor)
    return jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)

  @property
  def source_overhead(self) -> int:
    """Positions the framing adds to every source (2 for [CLS] x [SEP])."""
    return 0 if self.source_framing is None else 2

  def frame_source(self, ids: Sequence[int], max_length: Optional[int] = None) -> list[int]:
    """Host-side twin of the feature converter's framing: token ids of one
    source (no special tokens) -> the encoder's input ids, truncated so the
    framed row has at most ``max_length`` positions."""
    ids = [int(i) for i in ids]
    if max_length is not None:
      ids = ids[:max(max_length - self.source_overhead, 0)]
    if self.source_framing is None:
      return ids
    cls_id, sep_id = self.source_framing
    return [cls_id, *ids, sep_id]

  # t5x reads FEATURE_CONVERTER_CLS from the instance and calls it with
  # (pack=..., use_custom_packing_ops=...): bind our eos id here.
  @property
  def FEATURE_CONVERTER_CLS(self):  # pylint: disable=invalid-name
    # Imported here: seqio/TensorFlow are only needed for data pipelines.
    from narlm.feature_converters import NarFeatureConverter  # pylint: disable=g-import-not-at-top
    cls_id, sep_id = self.source_framing or (None, None)
    return functools.partial(NarFeatureConverter, eos_id=self.eos_id, pad_id=self.pad_id,
                             cls_id=cls_id, sep_id=sep_id)

  def init_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple], *,
                     with_targets: bool = False, method: Any = None) -> PyTree:
    """`module.init` on int32 ones of ``input_shapes['encoder_input_tokens']``
    [B, L] (and, `with_targets`, of ``'decoder_target_tokens'``, default
    [B, L]) with 'params' and 'dropout' rngs: {'params', 'params_axes'}.
    The body of every subclass's `get_initial_variables`."""
    shape = tuple(input_shapes["encoder_input_tokens"])
    if len(shape) != 2:
      raise ValueError(f"encoder_input_tokens shape must be [batch, length], got {shape}")
    inputs = [jnp.ones(shape, jnp.int32)]
    if with_targets:
      target_shape = tuple(input_shapes.get("decoder_target_tokens", shape))
      if len(target_shape) != 2 or target_shape[0] != shape[0]:
        raise ValueError(f"decoder_target_tokens shape must be [batch={shape[0]}, length], "
                         f"got {target_shape}")
      inputs.append(jnp.ones(target_shape, jnp.int32))
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({"params": params_rng, "dropout": dropout_rng}, *inputs,
                            method=method)

  def eval_fn(self, params: PyTree, batch: Batch) -> tuple[jnp.ndarray, MutableMapping[str, Any]]:
    return self.loss_fn(params, batch, dropout_rng=None)  # pytype: disable=attribute-error

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                    **kwargs) -> jnp.ndarray:
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]  # pytype: disable=attribute-error

  def warm_start_from_hf_bert(self, params: PyTree, checkpoint: str) -> PyTree:
    """Overlays a Hugging Face BERT checkpoint onto the ``bert`` subtree.

    The encoder (and the MLM head, when the checkpoint has one) are loaded;
    everything else (CRF, decoder) keeps its initial values. Raises
    ValueError when the checkpoint's architecture does not match the
    model's (e.g. a different hidden size or vocabulary).
    """
    from narlm import hf_bert  # pylint: disable=g-import-not-at-top
    hf_config, loaded = hf_bert.load_hf_bert(checkpoint)
    ours = self.module.config
    for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
      if getattr(hf_config, field) != getattr(ours, field):
        raise ValueError(
            f"checkpoint {checkpoint} has {field}={getattr(hf_config, field)} but the model "
            f"has {field}={getattr(ours, field)}; use the matching model gin")
    merged, report = hf_bert.merge_pretrained(params["bert"], loaded)
    logging.info("warm start from %s: %s", checkpoint, report)
    return dict(params, bert=merged)

  def warm_start_from_run(self, params: PyTree, model_dir: str) -> PyTree:
    """Overlays a narlm run's parameters (its best-validation checkpoint, else
    the newest; e.g. a milestone-2 pretraining run) onto `params`.

    Every array whose path exists in the run with the same shape and dtype is
    copied bit for bit; arrays the run lacks (a new head, a CRF the
    pretraining model had none of) keep their initial values; the run's
    arrays the model lacks are ignored. Raises ValueError when a shared path
    has a different shape or dtype (another model size or vocabulary) or
    when nothing is shared.
    """
    import flax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from narlm import run_dirs  # pylint: disable=g-import-not-at-top
    loaded = flax.traverse_util.flatten_dict(
        flax.core.unfreeze(run_dirs.restore_params(model_dir)), sep="/")
    ours = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    mismatched = [f"{k}: run {loaded[k].dtype}{list(loaded[k].shape)}, model "
                  f"{ours[k].dtype}{list(ours[k].shape)}"
                  for k in sorted(ours) if k in loaded and
                  (tuple(loaded[k].shape) != tuple(ours[k].shape)
                   or np.dtype(loaded[k].dtype) != np.dtype(ours[k].dtype))]
    if mismatched:
      raise ValueError(f"cannot warm-start from {model_dir}: {len(mismatched)} shared "
                       f"parameter(s) differ (another model size or vocabulary?): "
                       + "; ".join(mismatched[:4]))
    copied = [k for k in ours if k in loaded]
    if not copied:
      raise ValueError(f"cannot warm-start from {model_dir}: the run shares no parameter "
                       f"with this model (its top-level names: "
                       f"{sorted({k.split('/')[0] for k in loaded})})")
    merged = {k: (np.asarray(loaded[k]) if k in loaded else v) for k, v in ours.items()}
    kept = sorted(k for k in ours if k not in loaded)
    logging.info("warm start from the narlm run %s: %d arrays copied, %d kept at their "
                 "initial values (%s), %d of the run's arrays unused", model_dir, len(copied),
                 len(kept), ", ".join(kept[:6]) + (" ..." if len(kept) > 6 else ""),
                 len(set(loaded) - set(ours)))
    return flax.traverse_util.unflatten_dict(merged, sep="/")
