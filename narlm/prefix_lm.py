"""The autoregressive baseline with exactly NAG-BERT's parameters: a prefix LM.

`PrefixLmNetwork` is NAG-BERT's BERT encoder and output head
(`narlm.modules.encoder.BertWithHead`, params under ``bert/``) and nothing
else, used as a left-to-right generator the way UniLM (Dong et al., 2019)
uses BERT for sequence-to-sequence: the source ``[CLS] x [SEP]`` (segment 0)
attends to itself bidirectionally; the target (segment 1, positions
continuing after the source's last token) attends to the whole source and to
the target tokens before it. Unlike the BERT2BERT baseline
(`narlm.ar_models.ArSeq2SeqNetwork`), no parameter is new, so warm-starting
from a BERT checkpoint starts every weight pretrained; and the model has the
same size as NAG-BERT without its CRF, which is what "the autoregressive
baseline of equal size" asks for.

Both passes are written with one primitive, a BERT layer whose attention may
take extra ``prefix_kv`` keys/values (`narlm.modules.encoder.BertLayer`):

* training (teacher forcing): each layer runs the source with the source
  mask, returning its keys/values, then the target with a causal mask over
  (those source keys/values, its own);
* decoding: the source is encoded once (per-layer keys/values kept); each
  step runs one token through the layers with the source and the target
  cache as prefix, then writes its own keys/values into the cache
  (`narlm.ar_models.greedy_decode`, shared with the BERT2BERT baseline).

`PrefixLmModel` is `narlm.ar_models.ArSeq2SeqModel` with this network: same
loss (targets shifted right, BOS = pad, trained up to the first eos), greedy
decoding, scoring and t5x `BaseModel` interface.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from narlm.ar_models import ArSeq2SeqModel
from narlm.modules.encoder import BertConfig, BertWithHead

PyTree = Any
SOURCE_SEGMENT, TARGET_SEGMENT = 0, 1


class PrefixLmNetwork(nn.Module):
  """BERT encoder + output head as a prefix LM (see the module docstring).

  Param tree: ``{'bert': {'encoder', 'head'}}``, identical to NagBertNetwork's
  ``bert`` subtree.
  """
  config: BertConfig

  def setup(self):
    self.bert = BertWithHead(self.config)

  def _embed(self, tokens: jnp.ndarray, segment: int, positions: Optional[jnp.ndarray],
             deterministic: bool) -> jnp.ndarray:
    return self.bert.encoder.embeddings(tokens, jnp.full_like(tokens, segment), deterministic,
                                        positions=positions)

  def _check_positions(self, source_length: int, target_length: int) -> None:
    limit = self.config.max_position_embeddings
    if source_length + target_length > limit:
      raise ValueError(f"source ({source_length}) + target ({target_length}) positions exceed "
                       f"max_position_embeddings={limit}: a prefix LM numbers them in one "
                       "sequence; truncate the inputs or decode fewer positions")

  def encode(self, encoder_input_tokens: jnp.ndarray, deterministic: bool = True):
    """int [B, S] -> (source, mask bool [B, S]).

    source = {'kv': per layer (keys, values) [B, S, H, Dh], 'length': int
    [B] non-pad source tokens (the target's first position)}.
    """
    mask = encoder_input_tokens != self.config.pad_id
    x = self._embed(encoder_input_tokens, SOURCE_SEGMENT, None, deterministic)
    kvs = []
    for layer in self.bert.encoder.layers:
      x, kv = layer(x, mask, deterministic, return_kv=True)
      kvs.append(kv)
    return {"kv": kvs, "length": mask.sum(axis=-1).astype(jnp.int32)}, mask

  def __call__(self, encoder_input_tokens: jnp.ndarray, decoder_input_tokens: jnp.ndarray,
               deterministic: bool = True) -> jnp.ndarray:
    """int [B, S], int [B, T] -> float32 logits [B, T, V] (teacher forcing)."""
    (batch, src_len), tgt_len = encoder_input_tokens.shape, decoder_input_tokens.shape[1]
    self._check_positions(src_len, tgt_len)
    source, source_mask = self.encode(encoder_input_tokens, deterministic)
    positions = source["length"][:, None] + jnp.arange(tgt_len)[None, :]
    x = self._embed(decoder_input_tokens, TARGET_SEGMENT, positions, deterministic)
    causal = jnp.tril(jnp.ones((tgt_len, tgt_len), bool))
    mask = jnp.concatenate([jnp.broadcast_to(source_mask[:, None, :], (batch, tgt_len, src_len)),
                            jnp.broadcast_to(causal, (batch, tgt_len, tgt_len))], axis=-1)
    for layer, kv in zip(self.bert.encoder.layers, source["kv"]):
      x = layer(x, mask, deterministic, prefix_kv=kv)
    logits = self.bert.logits(x)
    assert logits.shape == (batch, tgt_len, self.config.vocab_size), logits.shape
    return logits

  def init_cache(self, source: PyTree, max_length: int) -> PyTree:
    """The decoding state for up to `max_length` target tokens: the source
    (from `encode`) and zeroed per-layer target keys/values [B, T, H, Dh]."""
    keys = source["kv"][0][0]
    self._check_positions(keys.shape[1], max_length)
    zeros = jnp.zeros((keys.shape[0], max_length) + keys.shape[2:], keys.dtype)
    return {"source": source, "target": [(zeros, zeros) for _ in source["kv"]]}

  def decode_step(self, tokens: jnp.ndarray, cache: PyTree, index: jnp.ndarray,
                  encoder_mask: jnp.ndarray):
    """int [B] target tokens at target position `index` -> (float32 logits
    [B, V] for the next token, updated cache)."""
    source = cache["source"]
    batch, max_length = tokens.shape[0], cache["target"][0][0].shape[1]
    positions = (source["length"] + index)[:, None]
    x = self._embed(tokens[:, None], TARGET_SEGMENT, positions, True)
    earlier = jnp.broadcast_to(jnp.arange(max_length)[None, :] < index, (batch, max_length))
    mask = jnp.concatenate([encoder_mask, earlier, jnp.ones((batch, 1), bool)], axis=-1)
    start = (jnp.int32(0), jnp.asarray(index, jnp.int32), jnp.int32(0), jnp.int32(0))
    target = []
    for layer, (src_k, src_v), (tgt_k, tgt_v) in zip(self.bert.encoder.layers, source["kv"],
                                                     cache["target"]):
      prefix = (jnp.concatenate([src_k, tgt_k], axis=1), jnp.concatenate([src_v, tgt_v], axis=1))
      x, (k, v) = layer(x, mask, True, prefix_kv=prefix, return_kv=True)
      target.append((jax.lax.dynamic_update_slice(tgt_k, k.astype(tgt_k.dtype), start),
                     jax.lax.dynamic_update_slice(tgt_v, v.astype(tgt_v.dtype), start)))
    return self.bert.logits(x)[:, 0], {"source": source, "target": target}


class PrefixLmModel(ArSeq2SeqModel):
  """`ArSeq2SeqModel` (loss, greedy decoding, scoring, t5x interface) over a
  `PrefixLmNetwork`: the AR baseline with exactly NAG-BERT's encoder and head."""

  NETWORK_CLS = PrefixLmNetwork

  def __init__(self, module: PrefixLmNetwork, input_vocabulary, output_vocabulary,
               optimizer_def: Any = None, *, label_smoothing: float = 0.0,
               loss_normalizing_factor: Optional[float] = None):
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     label_smoothing=label_smoothing, init_decoder_from_encoder=False,
                     loss_normalizing_factor=loss_normalizing_factor)
