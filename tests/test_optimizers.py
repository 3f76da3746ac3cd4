"""narlm.optimizers: BERT's weight-decay mask, the CRF's own learning rate;
narlm.train's independent init / dropout random streams."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from narlm import optimizers
from narlm import train


def toy_params():
  return {"bert": {"layers_0": {"attention": {"query": {"kernel": jnp.ones((4, 4)),
                                                        "bias": jnp.ones((4,))}},
                                "attention_layer_norm": {"scale": jnp.ones((4,)),
                                                         "bias": jnp.ones((4,))}},
                   "embeddings": {"word_embeddings": {"embedding": jnp.ones((8, 4))}},
                   "head": {"output_bias": jnp.ones((8,))}},
          "crf": {"e1": jnp.ones((8, 2)), "e2": jnp.ones((8, 2))}}


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_weight_decay_skips_biases_and_layer_norms(name):
  params = toy_params()
  tx = optimizers.create_optimizer(name, 1e-2, crf_learning_rate=1e-1, weight_decay=0.5,
                                   clip_gradient_norm=None)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  state = tx.init(params)
  for _ in range(3):  # zero gradients: only weight decay moves a parameter
    updates, state = tx.update(zero, state, params)
    params = optax.apply_updates(params, updates)
  moved = jax.tree_util.tree_map(lambda p: bool(np.any(np.asarray(p) != 1.0)), params)
  layer = moved["bert"]["layers_0"]
  assert layer["attention"]["query"]["kernel"] and moved["bert"]["embeddings"][
      "word_embeddings"]["embedding"] and moved["crf"]["e1"]
  assert not layer["attention"]["query"]["bias"]
  assert not any(layer["attention_layer_norm"].values())
  assert not moved["bert"]["head"]["output_bias"]
  # the old behaviour stays available, and then every parameter decays
  tx_all = optimizers.create_optimizer(name, 1e-2, weight_decay=0.5, clip_gradient_norm=None,
                                       decay_everything=True)
  updates, _ = tx_all.update(zero, tx_all.init(toy_params()), toy_params())
  assert all(bool(np.any(np.asarray(u) != 0)) for u in jax.tree_util.tree_leaves(updates))


def test_decay_mask_names():
  mask = optimizers.decay_mask(toy_params())
  assert mask["bert"]["layers_0"]["attention_layer_norm"] == {"scale": False, "bias": False}
  assert mask["crf"] == {"e1": True, "e2": True}


def test_dropout_stream_is_not_another_seeds_init_key():
  for seed in range(4):
    root = np.asarray(jax.random.key_data(train.dropout_root_key(seed)))
    for other in range(8):
      assert not np.array_equal(root, np.asarray(jax.random.key_data(jax.random.PRNGKey(other))))
    assert not np.array_equal(root, np.asarray(jax.random.key_data(train.dropout_root_key(seed + 1))))
