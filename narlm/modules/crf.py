"""`DynamicCRF`: the Flax module owning the low-rank CRF transition factors.

The maths lives in `narlm.crf_ops`; this module only owns the parameters

    E1, E2: [vocab_size, rank]   (logical axes ('vocab', 'crf_rank'))
    self_transition: [vocab_size] (logical axes ('vocab',)), only if
      ``self_transition=True``

whose product E1 @ E2^T (+ diag(d), d = self_transition with the exempt ids
zeroed) is the (never materialised) [V, V] transition matrix, and forwards to
the beam log-likelihood (training) and beam Viterbi (decoding).

Usage::

    crf = DynamicCRF(vocab_size=V)
    variables = crf.init(rng, emissions, targets, mask)
    log_likelihood = crf.apply(variables, emissions, targets, mask)   # [B]
    tokens, scores = crf.apply(variables, emissions, mask,
                               method=DynamicCRF.decode)
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning

from narlm import crf_ops

Array = jax.Array
DType = Any


class DynamicCRF(nn.Module):
  """Low-rank transitions + beam-approximated CRF (Sun et al. 2019).

  Attributes:
    vocab_size: V, size of the emission's last axis.
    rank: R, rank of the transition matrix E1 @ E2^T.
    beam_size: K, candidates per position for log Z and Viterbi; clipped to
      vocab_size.
    dtype: dtype the factors are cast to before use.  The CRF's sums and
      log-sum-exps always run in float32 (see crf_ops), so this only controls
      the rounding of the gathered factors.
    param_dtype: storage dtype of E1 / E2.
    parallel: use the associative-scan (O(log T) depth) paths of crf_ops
      instead of lax.scan.  Costs O(T K^3) work/memory; see crf_ops.
    self_transition: add a learned diagonal d [V] to the transitions,
      M[a, b] = e1[a] . e2[b] + [a == b] d[a], so that "repeat the previous
      token" can be penalised (or favoured) per token, which a rank-R product
      cannot do vocabulary-wide.  Initialised to zeros: the module starts as
      the plain low-rank CRF.
    self_transition_exempt_ids: token ids whose diagonal entry is fixed at 0
      (d * mask, so neither the value nor its gradient moves); e.g. eos and
      pad, whose runs (y, eos, eos, pad, pad, ...) must stay unpenalised.
      Ignored unless ``self_transition``.
  """

  vocab_size: int
  rank: int = 32
  beam_size: int = 64
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  parallel: bool = False
  self_transition: bool = False
  self_transition_exempt_ids: tuple = ()

  def setup(self):
    # Each factor ~ N(0, 1/rank), so a transition score
    # e1[a] . e2[b] = sum_r e1[a,r] e2[b,r] (R independent products, each of
    # variance 1/R^2) has variance 1/R, i.e. std 1/sqrt(rank) (~0.18 at
    # rank 32).  Small transitions mean the CRF starts close to the
    # per-position (factorised) model, so a pretrained output head is not
    # swamped at the start of fine-tuning (fairseq/NAG-BERT use N(0, 1)
    # embeddings: std sqrt(R) ~ 5.7 at R = 32).  Not zero: the gradient of E1
    # is proportional to E2 and vice versa, so an all-zero init would never
    # move.
    init = nn.initializers.normal(stddev=self.rank**-0.5)
    shape = (self.vocab_size, self.rank)
    axes = ('vocab', 'crf_rank')
    self.E1 = partitioning.param_with_axes(
        'E1', init, shape, self.param_dtype, axes=axes, module=self)
    self.E2 = partitioning.param_with_axes(
        'E2', init, shape, self.param_dtype, axes=axes, module=self)
    if self.self_transition:
      exempt = tuple(int(i) for i in self.self_transition_exempt_ids)
      bad = [i for i in exempt if not 0 <= i < self.vocab_size]
      if bad:
        raise ValueError(
            f'DynamicCRF.self_transition_exempt_ids {bad} are outside '
            f'[0, vocab_size = {self.vocab_size}).')
      # Zeros: with d = 0 the module computes exactly the plain low-rank CRF.
      # Unlike E1/E2 (whose gradients are proportional to each other), d's
      # gradient (observed minus expected repeats of each token) does not
      # depend on d, so zero is not a stuck point.
      self.d = partitioning.param_with_axes(
          'self_transition', nn.initializers.zeros, (self.vocab_size,),
          self.param_dtype, axes=('vocab',), module=self)

  def _factors(self) -> Tuple[Array, Array]:
    return (jnp.asarray(self.E1, self.dtype), jnp.asarray(self.E2, self.dtype))

  def _diagonal(self) -> Optional[Array]:
    """[V] diagonal with the exempt ids at 0, or None without one."""
    if not self.self_transition:
      return None
    d = jnp.asarray(self.d, self.dtype)
    exempt = sorted({int(i) for i in self.self_transition_exempt_ids})
    if exempt:
      # A multiplicative mask (not a where on the parameter): the exempt
      # entries are 0 in value and in gradient whatever the stored value.
      keep = np.ones((self.vocab_size,), np.float32)
      keep[exempt] = 0.0
      d = d * jnp.asarray(keep, d.dtype)
    return d

  @property
  def _beam(self) -> int:
    return min(self.beam_size, self.vocab_size)

  def __call__(self, emissions: Array, targets: Array, mask: Array) -> Array:
    """Beam log-likelihood of the targets.

    Args:
      emissions: [B, T, vocab_size] float (any dtype).
      targets: [B, T] int gold tokens.
      mask: [B, T] bool/0-1, left-aligned valid positions.

    Returns:
      [B] float32 log p(targets) = numerator - beam log Z, with the gold
      tokens forced into the beam (so it is <= 0).  0 for empty rows.
    """
    e1, e2 = self._factors()
    return crf_ops.crf_log_likelihood(
        emissions, targets, mask, e1, e2, self._beam, parallel=self.parallel,
        self_transition=self._diagonal())

  def decode(self, emissions: Array, mask: Array) -> Tuple[Array, Array]:
    """Beam Viterbi decoding.

    Args:
      emissions: [B, T, vocab_size] float.
      mask: [B, T] bool/0-1, left-aligned valid positions.

    Returns:
      tokens: [B, T] int32, 0 at masked positions.
      scores: [B] float32 unnormalised score of the decoded path.
    """
    e1, e2 = self._factors()
    return crf_ops.viterbi_decode(
        emissions, mask, e1, e2, self._beam, parallel=self.parallel,
        self_transition=self._diagonal())

  def transitions(self) -> Array:
    """Dense [V, V] float32 transition matrix E1 @ E2^T (+ diag(d)).

    Small V only.  exact CRF = crf_ops.exact_* with this matrix.
    """
    e1, e2 = self._factors()
    return crf_ops.low_rank_transitions(e1, e2, self._diagonal())
