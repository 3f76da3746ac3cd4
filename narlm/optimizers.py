"""optax optimizers and learning-rate schedules for narlm's trainer.

NAG-BERT fine-tunes the pretrained encoder with a small learning rate while
the freshly initialised CRF (and, optionally, the output head) learn faster;
`create_optimizer` therefore takes a separate learning rate for the CRF
parameters and applies it through `optax.multi_transform`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import optax

OPTIMIZERS = ("adamw", "adafactor", "sgd")


def create_schedule(learning_rate: float, warmup_steps: int = 0, decay_steps: int = 0,
                    schedule: str = "linear") -> optax.Schedule:
  """Warmup then 'constant', 'linear' (to 0 at decay_steps), 'cosine' or 'rsqrt' decay."""
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if schedule == "constant" or (decay_steps <= 0 and schedule != "rsqrt"):
    decay = optax.constant_schedule(learning_rate)
  elif schedule == "linear":
    decay = optax.linear_schedule(learning_rate, 0.0, max(decay_steps - warmup_steps, 1))
  elif schedule == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, max(decay_steps - warmup_steps, 1))
  elif schedule == "rsqrt":
    offset = max(warmup_steps, 1)
    decay = lambda step: learning_rate * (offset / (step + offset)) ** 0.5
  else:
    raise ValueError(f"unknown schedule {schedule!r}; expected constant, linear, cosine or rsqrt")
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


# Parameter names that BERT's recipe never decays: biases and LayerNorm
# scales/offsets (narlm's LayerNorm calls them `scale` and `bias`).
NO_DECAY_NAMES = ("bias", "scale", "output_bias")


def decay_mask(params) -> Any:
  """Pytree of bools like `params`: True where weight decay applies (every
  parameter except biases and LayerNorm scales, as BERT's AdamW recipe)."""
  def decays(path, _):
    name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
    return name not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def _base(name: str, schedule: optax.Schedule, weight_decay: float,
          decay_everything: bool = False) -> optax.GradientTransformation:
  mask = None if decay_everything else decay_mask
  if name == "adamw":
    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay,
                       mask=mask)
  if name == "adafactor":
    return optax.adafactor(schedule, weight_decay_rate=weight_decay or None,
                           weight_decay_mask=mask)
  if name == "sgd":
    return optax.sgd(schedule)
  raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def param_group(path) -> str:
  """'crf' for the CRF's parameters, 'encoder' for everything else."""
  keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
  return "crf" if "crf" in keys else "encoder"


def create_optimizer(name: str = "adamw", learning_rate: float = 1e-4, *,
                     crf_learning_rate: Optional[float] = None, warmup_steps: int = 0,
                     decay_steps: int = 0, schedule: str = "linear",
                     weight_decay: float = 0.01,
                     clip_gradient_norm: Optional[float] = 1.0,
                     decay_everything: bool = False) -> optax.GradientTransformation:
  """The optimizer narlm's trainer uses (bound as `NagBertModel.optimizer_def`).

  Args:
    name: 'adamw', 'adafactor' or 'sgd'.
    learning_rate: peak learning rate of the encoder (and head).
    crf_learning_rate: peak learning rate of the CRF parameters (default: the
      same as the encoder's).
    warmup_steps, decay_steps, schedule: see `create_schedule`.
    weight_decay: decoupled weight decay, applied to weight matrices and
      embeddings only (`decay_mask`: not to biases and LayerNorm scales).
    clip_gradient_norm: global-norm clipping (None disables it).
    decay_everything: decay every parameter (narlm before this option; for
      reproducing old runs).
  """
  encoder = _base(name, create_schedule(learning_rate, warmup_steps, decay_steps, schedule),
                  weight_decay, decay_everything)
  if crf_learning_rate is None or crf_learning_rate == learning_rate:
    tx = encoder
  else:
    crf = _base(name, create_schedule(crf_learning_rate, warmup_steps, decay_steps, schedule),
                weight_decay, decay_everything)
    tx = optax.multi_transform(
        {"encoder": encoder, "crf": crf},
        lambda params: jax.tree_util.tree_map_with_path(lambda p, _: param_group(p), params))
  if clip_gradient_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_gradient_norm), tx)
  return tx
