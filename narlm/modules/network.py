"""NAG-BERT network: BERT encoder + output head + (optional) dynamic CRF."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from narlm.modules.crf import DynamicCRF
from narlm.modules.encoder import BertConfig, BertWithHead


class NagBertNetwork(nn.Module):
  """Pure Flax network; `narlm.models.NagBertModel` is the glue around it.

  Attributes:
    config: encoder configuration.
    use_crf: False builds the "no CRF" ablation (argmax decoding).
    crf_rank: rank R of the low-rank transitions E1 E2^T.
    crf_beam_size: K, candidates per position in the beam approximation.
    crf_parallel: use the associative-scan CRF forward/Viterbi.
  """
  config: BertConfig
  use_crf: bool = True
  crf_rank: int = 32
  crf_beam_size: int = 64
  crf_parallel: bool = False

  def setup(self):
    self.bert = BertWithHead(self.config)
    if self.use_crf:
      self.crf = DynamicCRF(vocab_size=self.config.vocab_size, rank=self.crf_rank,
                            beam_size=self.crf_beam_size, parallel=self.crf_parallel)

  def __call__(self, input_tokens: jnp.ndarray, deterministic: bool = True,
               num_positions: Optional[int] = None) -> jnp.ndarray:
    """[B, L] source tokens -> [B, T, V] float32 emission logits.

    T = L, or the static `num_positions` <= L: the encoder always reads all L
    positions, but only the first T hidden states go through the output
    head (ratio-first decoding never looks further; the [T, V] projection is
    the largest matmul at inference).
    """
    if num_positions is None:
      _, logits = self.bert(input_tokens, deterministic=deterministic)
      return logits
    if not 1 <= num_positions <= input_tokens.shape[1]:
      raise ValueError(f"num_positions must be in [1, {input_tokens.shape[1]}], "
                       f"got {num_positions}")
    hidden = self.bert.encode(input_tokens, deterministic=deterministic)
    return self.bert.logits(hidden[:, :num_positions])

  def crf_log_likelihood(self, logits, targets, mask) -> jnp.ndarray:
    """[B, T, V], [B, T], [B, T] -> [B] beam-approximated CRF log-likelihood."""
    if not self.use_crf:
      raise ValueError("this network was built with use_crf=False")
    return self.crf(logits, targets, mask)

  def crf_decode(self, logits, mask):
    """[B, T, V], [B, T] -> (tokens [B, T], scores [B]) by beam Viterbi."""
    if not self.use_crf:
      raise ValueError("this network was built with use_crf=False")
    return self.crf.decode(logits, mask)

  def initialize(self, input_tokens: jnp.ndarray) -> Optional[jnp.ndarray]:
    """Touches every parameter (for `init`): encoder, head and CRF."""
    logits = self(input_tokens)
    if self.use_crf:
      mask = jnp.ones(input_tokens.shape, bool)
      return self.crf(logits, jnp.zeros(input_tokens.shape, jnp.int32), mask)
    return logits
