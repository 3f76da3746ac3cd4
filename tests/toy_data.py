"""Integer-id vocabulary and random batches shared by the model unit tests."""

import jax.numpy as jnp
import numpy as np

PAD, EOS = 0, 1


class IdVocabulary:
  """Minimal vocabulary over integer ids (pad 0, eos 1 by default)."""
  pad_id = PAD
  unk_id = 2

  def __init__(self, size, eos_id=EOS):
    self.vocab_size = size
    self.eos_id = eos_id

  def encode(self, text):
    return [int(t) for t in text.split()]

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def random_batch(b, src_len, tgt_len, vocab, first_id, seed=0):
  """Random ids in [first_id, vocab); row 0 of the source padded from 5 on;
  each target is m random ids then two eos (loss weights cover them).

  Returns encoder_input_tokens [b, src_len], decoder_target_tokens and
  decoder_loss_weights [b, tgt_len].
  """
  rng = np.random.default_rng(seed)
  src = rng.integers(first_id, vocab, size=(b, src_len)).astype(np.int32)
  src[0, 5:] = PAD
  tgt = np.zeros((b, tgt_len), np.int32)
  weights = np.zeros((b, tgt_len), np.float32)
  for i in range(b):
    m = rng.integers(1, tgt_len - 2)
    tgt[i, :m] = rng.integers(first_id, vocab, size=m)
    tgt[i, m:m + 2] = EOS
    weights[i, :m + 2] = 1.0
  return {"encoder_input_tokens": jnp.asarray(src), "decoder_target_tokens": jnp.asarray(tgt),
          "decoder_loss_weights": jnp.asarray(weights)}
