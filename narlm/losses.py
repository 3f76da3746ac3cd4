"""NAG-BERT training losses as pure functions.

The training objective of NAG-BERT (Su et al., 2021) is

    L = CRF NLL + lambda * token NLL  [+ mu * context-aware unlikelihood]

where the token NLL is the per-position cross-entropy of the emission
distribution (it keeps every position's softmax well trained, which the CRF
alone does not, because the CRF only needs relative scores inside the beam).
Everything here is normalised per target token (the sum of the loss weights),
so loss values are comparable across batch sizes and sequence lengths.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp


def _check_token_inputs(logits, targets, weights):
  if logits.ndim != 3:
    raise ValueError(f"logits must be [batch, length, vocab], got shape {logits.shape}")
  if targets.shape != logits.shape[:2]:
    raise ValueError(
        f"targets shape {targets.shape} does not match logits [batch, length] "
        f"{logits.shape[:2]}")
  if weights.shape != targets.shape:
    raise ValueError(f"weights shape {weights.shape} does not match targets shape {targets.shape}")


def token_nll(logits: jnp.ndarray,
              targets: jnp.ndarray,
              weights: jnp.ndarray,
              label_smoothing: float = 0.0) -> jnp.ndarray:
  """Per-position negative log-likelihood, weighted.

  Args:
    logits: [B, T, V] unnormalised scores (any float dtype; computed in f32).
    targets: [B, T] int gold tokens.
    weights: [B, T] loss weights (0 on padding).
    label_smoothing: epsilon; the smoothed target puts (1 - eps) on the gold
      token and eps spread uniformly over the vocabulary.

  Returns:
    [B, T] weighted per-position loss.
  """
  _check_token_inputs(logits, targets, weights)
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  gold = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  nll = -gold
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=-1)
  return nll * weights.astype(jnp.float32)


def context_unlikelihood(logits: jnp.ndarray,
                         targets: jnp.ndarray,
                         weights: jnp.ndarray,
                         window: int = 2) -> jnp.ndarray:
  """NAG-BERT's context-aware objective: discourage copying neighbours.

  NAR models tend to emit the same token at neighbouring positions because
  neighbouring hidden states are similar. For position i and each neighbour
  j with 0 < |i - j| <= window whose gold token differs from y_i, this adds
  -log(1 - p_i(y_j)).

  Args:
    logits: [B, T, V].
    targets: [B, T].
    weights: [B, T]; both i and j must be real target positions.
    window: context size c (>= 1).

  Returns:
    [B, T] weighted per-position penalty.
  """
  _check_token_inputs(logits, targets, weights)
  if window < 1:
    raise ValueError(f"unlikelihood window must be >= 1, got {window}")
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  length = targets.shape[1]
  valid = weights > 0
  penalty = jnp.zeros(targets.shape, jnp.float32)
  for offset in range(-window, window + 1):
    if offset == 0 or abs(offset) >= length:
      continue
    # neighbour[b, i] = targets[b, i + offset], valid only inside the row.
    neighbour = jnp.roll(targets, -offset, axis=1)
    neighbour_valid = jnp.roll(valid, -offset, axis=1)
    positions = jnp.arange(length) + offset
    in_range = (positions >= 0) & (positions < length)
    active = valid & neighbour_valid & in_range[None, :] & (neighbour != targets)
    p = jnp.take_along_axis(probs, neighbour[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # clip: log(1 - p) is -inf when the model is certain of the neighbour token.
    penalty += jnp.where(active, -jnp.log(jnp.clip(1.0 - p, 1e-6, 1.0)), 0.0)
  return penalty * weights.astype(jnp.float32)


def nag_loss(logits: jnp.ndarray,
             targets: jnp.ndarray,
             weights: jnp.ndarray,
             crf_log_likelihood: Optional[jnp.ndarray] = None,
             *,
             token_nll_weight: float = 0.5,
             label_smoothing: float = 0.0,
             unlikelihood_weight: float = 0.0,
             unlikelihood_window: int = 2,
             loss_normalizing_factor: Optional[jnp.ndarray] = None,
             ) -> tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
  """The NAG-BERT objective: summed over the batch, divided by a normaliser.

  Args:
    logits: [B, T, V] emission scores.
    targets: [B, T] gold tokens (`y_1..y_m, eos, eos`, padded).
    weights: [B, T] 1.0 on real target positions.
    crf_log_likelihood: [B] per-sequence CRF log-likelihood, or None for the
      "no CRF" ablation, whose loss is the token NLL alone (weight 1).
    token_nll_weight: lambda, the weight of the token NLL next to the CRF NLL.
    label_smoothing: label smoothing of the token NLL.
    unlikelihood_weight: weight of the context-aware term (0 disables it).
    unlikelihood_window: its context size c.
    loss_normalizing_factor: what the summed loss is divided by (t5x's
      convention); None: the real target tokens of this batch (a per-token
      mean). A constant makes micro-batch losses add up to the batch's.

  Returns:
    (scalar loss, dict of scalar components: crf_nll, token_nll,
    unlikelihood, num_tokens), each component divided by the same normaliser.
  """
  num_tokens = jnp.maximum(weights.astype(jnp.float32).sum(), 1.0)
  if loss_normalizing_factor is not None:
    num_tokens = jnp.asarray(loss_normalizing_factor, jnp.float32)
  tok = token_nll(logits, targets, weights, label_smoothing).sum() / num_tokens
  aux = {"token_nll": tok, "num_tokens": weights.astype(jnp.float32).sum()}
  if crf_log_likelihood is None:
    loss = tok
  else:
    if crf_log_likelihood.shape != targets.shape[:1]:
      raise ValueError(
          f"crf_log_likelihood must be [batch]={targets.shape[:1]}, got {crf_log_likelihood.shape}")
    # Rows without any target position carry no CRF term.
    has_target = (weights > 0).any(axis=-1)
    crf_nll = -jnp.where(has_target, crf_log_likelihood.astype(jnp.float32), 0.0).sum() / num_tokens
    aux["crf_nll"] = crf_nll
    loss = crf_nll + token_nll_weight * tok
  if unlikelihood_weight:
    ul = context_unlikelihood(logits, targets, weights, unlikelihood_window).sum() / num_tokens
    aux["unlikelihood"] = ul
    loss = loss + unlikelihood_weight * ul
  return loss, aux
