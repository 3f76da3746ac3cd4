"""NAG-BERT network: BERT encoder + output head + (optional) dynamic CRF."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from narlm.modules.crf import DynamicCRF
from narlm.modules.encoder import BertConfig, BertWithHead
from narlm.output_vocab import OutputVocab


class OutputHeadNetwork(nn.Module):
  """What every network with NAG-BERT's output head shares: the encoder
  configuration, the head (its dropout, an optional restricted output
  vocabulary) and the optional dynamic CRF over its emissions. A base class
  only (NagBertNetwork, narlm.canvas.CanvasNetwork); `make_crf` builds the CRF.

  Attributes:
    config: encoder configuration.
    use_crf: False builds the "no CRF" ablation (argmax decoding).
    crf_rank: rank R of the low-rank transitions E1 E2^T.
    crf_beam_size: K, candidates per position in the beam approximation.
    crf_parallel: use the associative-scan CRF forward/Viterbi.
    crf_self_transition: add a learned per-token self-transition score
      d[a] (the diagonal a -> a) to E1 E2^T: a rank-R product cannot say
      "never repeat the previous token" for the whole vocabulary.
    crf_self_transition_exempt_ids: ids whose diagonal stays 0 (eos, pad:
      eos -> eos ends every target).
    head_dropout: dropout on the hidden states right before the output head
      (NAG-BERT uses 0.2).
    output_vocab: restrict the output head (and the CRF) to these ids (see
      `narlm.output_vocab`); None = the whole vocabulary. Emissions, CRF
      tokens and targets are then indices into `output_vocab.ids` (V' of
      them); the model maps them to and from vocabulary ids.
  """
  config: BertConfig
  use_crf: bool = True
  crf_rank: int = 32
  crf_beam_size: int = 64
  crf_parallel: bool = False
  crf_self_transition: bool = False
  crf_self_transition_exempt_ids: tuple = ()
  head_dropout: float = 0.0
  output_vocab: Optional[OutputVocab] = None

  @property
  def output_size(self) -> int:
    """V': the number of output classes."""
    return self.config.vocab_size if self.output_vocab is None else self.output_vocab.size


def make_crf(network: OutputHeadNetwork) -> DynamicCRF:
  """The DynamicCRF of `network` (exempt ids become output classes)."""
  exempt = network.crf_self_transition_exempt_ids
  if network.output_vocab is not None:  # CRF classes are subset indices
    exempt = tuple(int(network.output_vocab.index_of(i)) for i in exempt)
  return DynamicCRF(vocab_size=network.output_size, rank=network.crf_rank,
                    beam_size=network.crf_beam_size, parallel=network.crf_parallel,
                    self_transition=network.crf_self_transition,
                    self_transition_exempt_ids=exempt)


class NagBertNetwork(OutputHeadNetwork):
  """Pure Flax network; `narlm.models.NagBertModel` is the glue around it.

  Output position i is predicted from hidden state i of ``[CLS] source
  [SEP]``. Attributes: OutputHeadNetwork's.
  """

  def setup(self):
    self.bert = BertWithHead(self.config)
    self.dropout = nn.Dropout(rate=self.head_dropout)
    if self.use_crf:
      self.crf = make_crf(self)

  def __call__(self, input_tokens: jnp.ndarray, deterministic: bool = True,
               num_positions: Optional[int] = None) -> jnp.ndarray:
    """[B, L] source tokens -> [B, T, V'] float32 emission logits.

    T = L, or the static `num_positions` <= L: the encoder always reads all L
    positions, but only the first T hidden states go through the output
    head (ratio-first decoding never looks further; the [T, V'] projection is
    the largest matmul at inference).
    """
    length = input_tokens.shape[1]
    if num_positions is not None and not 1 <= num_positions <= length:
      raise ValueError(f"num_positions must be in [1, {length}], got {num_positions}")
    hidden = self.bert.encode(input_tokens, deterministic=deterministic)
    if num_positions is not None:
      hidden = hidden[:, :num_positions]
    hidden = self.dropout(hidden, deterministic=deterministic)
    ids = None if self.output_vocab is None else jnp.asarray(self.output_vocab.ids)
    logits = self.bert.logits(hidden, output_ids=ids)
    assert logits.shape == hidden.shape[:2] + (self.output_size,), logits.shape
    return logits

  def crf_log_likelihood(self, logits, targets, mask) -> jnp.ndarray:
    """[B, T, V'], [B, T], [B, T] -> [B] beam-approximated CRF log-likelihood."""
    if not self.use_crf:
      raise ValueError("this network was built with use_crf=False")
    return self.crf(logits, targets, mask)

  def crf_decode(self, logits, mask):
    """[B, T, V'], [B, T] -> (tokens [B, T] in output classes, scores [B])."""
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
