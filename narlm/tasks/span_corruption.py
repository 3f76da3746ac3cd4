"""A stronger NAR pretraining objective: shifts both ways, a masking ratio per example.

`nar_denoise` (preprocessors.py) corrupts with span deletion and 15% i.i.d.
BERT masking. Two weaknesses for a NAR generator with a CRF:

1. Deletion only: the clean target is never shorter than its input, so
   target position j always copies from an input position at or before j.
   Compression and summarisation need the opposite (position j copies from
   a *later* source position), which pretraining then never shows.
2. 15% i.i.d. masking with a loss on every position: most target positions
   are plain copies, and two adjacent uncertain positions, the only place
   where the CRF's transition scores learn anything, are rare (~2%).

`both_ways_denoise` therefore corrupts `targets` (a clean span) into `inputs`
by, in order:

  1. span deletion: spans of `span` tokens start at each position with a
     probability that removes about `delete_rate` of the tokens (input
     shorter: target j copies from input <= j);
  2. span insertion: spans of `span` tokens are inserted before random
     positions, adding about `insert_rate` of the length (so 10% deletion and
     10% insertion keep the length on average), half of the time a copy of
     the following `span` tokens (a stutter), else random regular tokens
     (input longer: target j copies from input > j);
  3. span masking with a ratio r drawn per example from U(mask_ratio_range)
     (0.15-0.8 by default, as masked-diffusion LMs do): mask spans of `span`
     tokens start so that about r of the tokens are selected; selected
     tokens become the mask token (80%), a random token (10%) or stay (10%).
     High r gives runs of adjacent masked positions, where the CRF learns.

The loss stays on every real target position (narlm.losses), so the model
learns where to copy from as well as what to fill in. Deterministic given
seqio's seeds (stateless ops); a non-empty target never gets an empty input.
"""

from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from narlm.tasks import preprocessors as prep

NUM_SEEDS = 7


def _span_starts_rate(rate: float, span: int) -> float:
  """Probability of a span start per position so that ~`rate` is covered."""
  return 1.0 - (1.0 - min(max(rate, 0.0), 0.999)) ** (1.0 / span)


def _cover(starts: tf.Tensor, span: int) -> tf.Tensor:
  """[n] bool span starts -> [n] bool positions covered by a span."""
  n = tf.size(starts)
  padded = tf.concat([tf.zeros([span - 1], tf.bool), starts], 0)
  return tf.reduce_any(tf.stack([padded[k:k + n] for k in range(span)]), axis=0)


def corrupt_both_ways(tokens: tf.Tensor, seeds: Sequence[tf.Tensor], *, mask_id: int,
                      random_ids: tf.Tensor, delete_rate: float = 0.1,
                      insert_rate: float = 0.1, span: int = 3,
                      mask_ratio_range: tuple[float, float] = (0.15, 0.8),
                      random_frac: float = 0.1, keep_frac: float = 0.1) -> tf.Tensor:
  """[n] clean tokens -> corrupted tokens (module docstring); needs 7 seeds."""
  lo, hi = mask_ratio_range
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"mask_ratio_range must be 0 <= lo <= hi <= 1, got {mask_ratio_range}")
  if span < 1:
    raise ValueError(f"span must be >= 1, got {span}")
  tokens = tf.convert_to_tensor(tokens)
  random_ids = tf.convert_to_tensor(random_ids, tokens.dtype)
  n = tf.size(tokens)
  # 1. span deletion (never everything).
  deleted = _cover(tf.random.stateless_uniform([n], seed=seeds[0])
                   < _span_starts_rate(delete_rate, span), span)
  deleted = tf.logical_and(deleted, tf.logical_not(tf.reduce_all(deleted)))
  kept = tf.boolean_mask(tokens, tf.logical_not(deleted))
  m = tf.size(kept)
  # 2. span insertion before position i: a copy of kept[i:i+span] (clipped at
  # the end) or random tokens. Row i of `index` lists the kept positions that
  # make up its segment: `span` inserted ones (if any), then i itself.
  insert = tf.random.stateless_uniform([m], seed=seeds[1]) < insert_rate / span
  stutter = tf.random.stateless_uniform([m], seed=seeds[2]) < 0.5
  positions = tf.range(m)
  copies = tf.minimum(positions[:, None] + tf.range(span)[None, :], tf.maximum(m - 1, 0))
  index = tf.concat([copies, positions[:, None]], axis=1)  # [m, span + 1]
  keep_slot = tf.concat([tf.tile(insert[:, None], [1, span]),
                         tf.ones([m, 1], tf.bool)], axis=1)
  is_random = tf.concat([tf.tile(tf.logical_not(stutter)[:, None], [1, span]),
                         tf.zeros([m, 1], tf.bool)], axis=1)
  flat_index = tf.boolean_mask(index, keep_slot)
  flat_random = tf.boolean_mask(is_random, keep_slot)
  k = tf.size(flat_index)
  picks = tf.random.stateless_uniform([k], seed=seeds[3], minval=0,
                                      maxval=tf.size(random_ids), dtype=tf.int32)
  grown = tf.where(flat_random, tf.gather(random_ids, picks), tf.gather(kept, flat_index))
  # 3. span masking at a ratio drawn for this example.
  ratio = tf.random.stateless_uniform([], seed=seeds[4], minval=lo, maxval=hi)
  p_start = 1.0 - tf.pow(1.0 - tf.minimum(ratio, 0.999), 1.0 / span)
  selected = _cover(tf.random.stateless_uniform([k], seed=seeds[5]) < p_start, span)
  action = tf.random.stateless_uniform([k], seed=seeds[6])
  to_mask = tf.logical_and(selected, action < 1.0 - random_frac - keep_frac)
  to_random = tf.logical_and(selected, tf.logical_and(action >= 1.0 - random_frac - keep_frac,
                                                      action < 1.0 - keep_frac))
  # Random replacements reuse `picks` shifted: independent enough of step 2's
  # and saves a seed.
  replacement = tf.gather(random_ids, tf.math.floormod(picks + 7919, tf.size(random_ids)))
  out = tf.where(to_random, replacement, grown)
  return tf.where(to_mask, tf.cast(mask_id, out.dtype), out)


def both_ways_denoise(dataset: tf.data.Dataset,
                      output_features: Mapping[str, seqio.Feature],
                      delete_rate: float = 0.1,
                      insert_rate: float = 0.1,
                      span: int = 3,
                      mask_ratio_range: tuple[float, float] = (0.15, 0.8),
                      mask_id: Optional[int] = None,
                      random_ids: Optional[Sequence[int]] = None) -> tf.data.Dataset:
  """seqio preprocessor: targets (clean tokens) -> inputs (corrupt_both_ways)."""
  if mask_id is None or random_ids is None:
    default_mask, default_random = prep.corruption_ids(output_features["inputs"].vocabulary)
    mask_id = default_mask if mask_id is None else mask_id
    random_ids = default_random if random_ids is None else random_ids
  random_ids = tf.constant(list(random_ids), tf.int32)

  @seqio.map_over_dataset(num_seeds=NUM_SEEDS)
  def corrupt(ex, seeds):
    ex = dict(ex)
    ex["inputs"] = corrupt_both_ways(
        ex["targets"], seeds, mask_id=mask_id, random_ids=random_ids,
        delete_rate=delete_rate, insert_rate=insert_rate, span=span,
        mask_ratio_range=mask_ratio_range)
    return ex

  return corrupt(dataset)  # pylint: disable=no-value-for-parameter
