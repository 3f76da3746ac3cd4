"""clu metrics shared by the model classes (t5x merges and computes them)."""

import clu.metrics as clu_metrics
import jax.numpy as jnp


def average_metric(total, count=1.0) -> clu_metrics.Average:
  """clu Average of total/count (both float32), merged exactly across steps."""
  return clu_metrics.Average(total=jnp.asarray(total, jnp.float32),
                             count=jnp.asarray(count, jnp.float32))
