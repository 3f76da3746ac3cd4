import numpy as np
import jax.numpy as jnp
import pytest

from narlm import decoding


def test_cut_at_first_eos():
  tokens = jnp.array([[5, 6, 2, 7, 2], [2, 5, 5, 5, 5], [5, 6, 7, 8, 9]])
  out, lengths = decoding.cut_at_first_eos(tokens, eos_id=2, pad_id=0)
  np.testing.assert_array_equal(out, [[5, 6, 0, 0, 0], [0, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(lengths, [2, 0, 5])
  mask = jnp.arange(5)[None] < jnp.array([[5], [5], [3]])
  out, lengths = decoding.cut_at_first_eos(tokens, 2, 0, mask)
  np.testing.assert_array_equal(out[2], [5, 6, 7, 0, 0])
  np.testing.assert_array_equal(lengths, [2, 0, 3])


def test_cut_skips_pads_emitted_before_the_first_eos():
  # NAG-BERT drops a PAD the model emits inside the output; later tokens move left.
  tokens = jnp.array([[5, 0, 6, 2, 7], [0, 0, 5, 0, 0], [5, 6, 0, 7, 8]])
  out, lengths = decoding.cut_at_first_eos(tokens, eos_id=2, pad_id=0)
  np.testing.assert_array_equal(out, [[5, 6, 0, 0, 0], [5, 0, 0, 0, 0], [5, 6, 7, 8, 0]])
  np.testing.assert_array_equal(lengths, [2, 1, 4])


def test_ratio_first_mask_is_min_n_floor_alpha_n_plus_two():
  src = jnp.array([[3, 4, 5, 6, 7, 0, 0, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0, 0, 0]])
  mask = decoding.ratio_first_mask(src, alpha=0.5)
  # n = 5 -> floor(2.5) + 2 = 4; n = 2 -> min(2, 1 + 2) = 2 (never past the source)
  np.testing.assert_array_equal(mask.sum(-1), [4, 2])
  assert bool(mask[0, 3]) and not bool(mask[0, 4])
  for bad in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="alpha"):
      decoding.ratio_first_mask(src, alpha=bad)


def test_ratio_first_window_grid_is_exact():
  """min(n, floor(alpha n) + 2) with alpha read as the decimal it prints as,
  over alpha in 0.01..2.00 and n (= WordPieces + [CLS] + [SEP]) in 0..256:
  the host window, the device mask and the static bound all agree with
  exact integer arithmetic."""
  import fractions
  length = 256
  n = np.arange(length + 1)
  src = (np.arange(length)[None, :] < n[:, None]).astype(np.int32) * 7  # row i has n=i tokens
  for hundredths in range(1, 201):
    alpha = hundredths / 100
    exact = np.minimum(n, (hundredths * n) // 100 + 2)
    assert [decoding.ratio_first_window(int(k), alpha) for k in n] == exact.tolist(), alpha
    assert decoding.ratio_first_positions(length, alpha) == exact[-1]
    mask = np.asarray(decoding.ratio_first_mask(jnp.asarray(src), alpha))
    np.testing.assert_array_equal(mask.sum(-1), exact, err_msg=f"alpha={alpha}")
  # The case float64 gets wrong (NAG-BERT's int(100 * 0.29) = 28).
  assert decoding.ratio_first_window(100, 0.29) == 29 + 2
  assert decoding.ratio_first_window(100, fractions.Fraction(1, 3)) == 33 + 2


def test_argmax_decode():
  logits = jnp.log(jnp.array([[[0.1, 0.9], [0.7, 0.3]]]))
  tokens, score = decoding.argmax_decode(logits)
  np.testing.assert_array_equal(tokens, [[1, 0]])
  np.testing.assert_allclose(score, [np.log(0.9) + np.log(0.7)], rtol=1e-5)


def test_method_checks():
  with pytest.raises(ValueError, match="unknown decode method 'beam'"):
    decoding.check_decode_method("beam")
