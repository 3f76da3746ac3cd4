"""Flax building blocks of narlm's networks: Dense, LayerNorm, Embed.

Every parameter is created with ``flax.linen.partitioning.param_with_axes`` so
its logical axis names land in the ``params_axes`` collection (read by t5x's
partitioner).
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]


class Dense(nn.Module):
  """``y = x @ kernel + bias`` over the last axis.

  Attributes:
    features: output size.
    kernel_axes: logical names of the ``[in, out]`` kernel; the bias takes the
      output name.
  """
  features: int
  kernel_axes: Tuple[str, str]
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features] in ``dtype``."""
    kernel = param_with_axes(
        'kernel', self.kernel_init, (x.shape[-1], self.features),
        self.param_dtype, axes=self.kernel_axes)
    bias = param_with_axes('bias', self.bias_init, (self.features,),
                           self.param_dtype, axes=(self.kernel_axes[1],))
    x = jnp.asarray(x, self.dtype)
    y = jnp.einsum('...i,io->...o', x, jnp.asarray(kernel, self.dtype))
    return y + jnp.asarray(bias, self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last (``embed``) axis, statistics in float32.

  Matches ``torch.nn.LayerNorm`` (biased variance, eps inside the sqrt).
  """
  epsilon: float = 1e-12
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., D] -> [..., D] in ``dtype``."""
    features = x.shape[-1]
    scale = param_with_axes('scale', nn.initializers.ones, (features,),
                            self.param_dtype, axes=('embed',))
    bias = param_with_axes('bias', nn.initializers.zeros, (features,),
                           self.param_dtype, axes=('embed',))
    # bf16 statistics lose too much precision: normalise in float32.
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32)
    return y.astype(self.dtype)


class Embed(nn.Module):
  """Lookup table ``[num_embeddings, features]`` with logical ``axes``."""
  num_embeddings: int
  features: int
  axes: Tuple[str, str]
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=0.02)

  def setup(self):
    self.embedding = param_with_axes(
        'embedding', self.embedding_init,
        (self.num_embeddings, self.features), self.param_dtype,
        axes=self.axes, module=self)

  def __call__(self, ids: Array) -> Array:
    """int [...] -> [..., features] in ``dtype``."""
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)
