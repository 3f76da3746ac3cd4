"""Tests of narlm.modules.encoder (no torch needed; HF parity is in
tests/test_hf_bert.py)."""

import dataclasses
import functools

import flax
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narlm.modules import encoder as enc

VOCAB = 50
CFG = enc.BertConfig.tiny(VOCAB, max_position_embeddings=16)
TOKENS = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 0, 0, 0]], np.int32)


@functools.lru_cache(maxsize=None)
def _jit_apply(model):
  # One compilation per (model, static args): eager op-by-op dispatch of the
  # whole network is several times slower on the shared CI CPUs.
  return jax.jit(model.apply, static_argnames=('deterministic', 'method'))


def forward(model, variables, tokens=TOKENS, mask=None, types=None, **kwargs):
  """(hidden, logits); mask/types always passed explicitly so that most
  calls share one compiled signature."""
  mask = np.asarray(tokens) != 0 if mask is None else mask
  types = np.zeros_like(tokens) if types is None else types
  return _jit_apply(model)(variables, tokens, attention_mask=mask,
                           token_type_ids=types, **kwargs)


@pytest.fixture(scope='module')
def tied():
  model = enc.BertWithHead(CFG)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), TOKENS)
  return model, variables


@pytest.fixture(scope='module')
def untied(tied):
  model = enc.BertWithHead(CFG.replace(tie_output_embeddings=False))
  # Tracing init (no compile) gives the untied structure and axis names;
  # values: the tied model's plus a random output kernel (saves a compile).
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), TOKENS)
  kernel = shapes['params']['head']['output_kernel']
  params = flax.core.unfreeze(tied[1]['params'])
  params['head']['output_kernel'] = jnp.asarray(
      np.random.RandomState(0).normal(0, 0.02, kernel.shape), kernel.dtype)
  assert (jax.tree_util.tree_structure(params) ==
          jax.tree_util.tree_structure(shapes['params']))
  return model, {'params': params, 'params_axes': shapes['params_axes']}


# ----------------------------------------------------------------- config


def test_named_sizes():
  expected = {'tiny': (2, 64, 2, 256), 'small': (4, 512, 8, 2048),
              'base': (12, 768, 12, 3072), 'large': (24, 1024, 16, 4096)}
  for size, (layers, hidden, heads, mlp) in expected.items():
    cfg = enc.bert_config(size, 1000)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads,
            cfg.intermediate_size) == (layers, hidden, heads, mlp)
    assert cfg.head_dim == hidden // heads
    assert getattr(enc.BertConfig, size)(1000) == cfg
  assert enc.BertConfig.base(10, num_layers=3).num_layers == 3
  with pytest.raises(ValueError, match='Unknown BERT size'):
    enc.bert_config('huge', 10)


def test_config_dtype_and_validation():
  cfg = enc.BertConfig.tiny(10, dtype=jnp.bfloat16)
  assert cfg.dtype == 'bfloat16' and cfg.compute_dtype == jnp.bfloat16
  assert cfg == enc.BertConfig.tiny(10, dtype='bfloat16')
  hash(cfg)  # frozen + hashable: usable as a static jit argument
  with pytest.raises(ValueError, match='not divisible'):
    enc.BertConfig(vocab_size=10, hidden_size=10, num_heads=3)
  assert enc.BertConfig(vocab_size=10, hidden_size=10, num_heads=3,
                        head_dim=4).head_dim == 4
  with pytest.raises(ValueError, match='hidden_act'):
    enc.BertConfig.tiny(10, hidden_act='swish')
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.vocab_size = 3  # type: ignore


def test_from_hf_dict():
  hf = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
            num_attention_heads=12, intermediate_size=1536,
            max_position_embeddings=512, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.2, hidden_act='gelu',
            pad_token_id=0, model_type='bert',
            position_embedding_type='absolute')
  cfg = enc.BertConfig.from_hf_dict(hf, dtype='bfloat16')
  assert (cfg.num_layers, cfg.head_dim, cfg.attention_dropout, cfg.dtype) == (
      6, 32, 0.2, 'bfloat16')
  assert cfg.tie_output_embeddings
  with pytest.raises(ValueError, match='absolute'):
    enc.BertConfig.from_hf_dict({**hf, 'position_embedding_type': 'relative_key'})
  with pytest.raises(ValueError, match='model_type'):
    enc.BertConfig.from_hf_dict({**hf, 'model_type': 'roberta'})


# ----------------------------------------------------------------- params


@pytest.mark.parametrize('which', ['tied', 'untied'])
def test_every_param_has_axis_names(which, request):
  _, variables = request.getfixturevalue(which)
  params = variables['params']
  axes = flax.core.unfreeze(
      nn_partitioning.get_axis_names(variables['params_axes']))
  assert (jax.tree_util.tree_structure(params) ==
          jax.tree_util.tree_structure(
              axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
  flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  flat_axes = dict(jax.tree_util.tree_flatten_with_path(
      axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0])
  for path, value in flat_params.items():
    assert len(flat_axes[path]) == value.ndim, path
  a = axes['encoder']
  assert tuple(a['embeddings']['word_embeddings']['embedding']) == ('vocab', 'embed')
  assert tuple(a['embeddings']['position_embeddings']['embedding']) == ('length', 'embed')
  assert tuple(a['embeddings']['token_type_embeddings']['embedding']) == ('type_vocab', 'embed')
  layer = a['layers_1']
  assert tuple(layer['attention']['query']['kernel']) == ('embed', 'joined_kv')
  assert tuple(layer['attention']['out']['kernel']) == ('joined_kv', 'embed')
  assert tuple(layer['mlp']['wi']['kernel']) == ('embed', 'mlp')
  assert tuple(layer['mlp']['wo']['kernel']) == ('mlp', 'embed')
  assert tuple(layer['mlp']['wi']['bias']) == ('mlp',)
  assert tuple(layer['mlp_layer_norm']['scale']) == ('embed',)
  assert tuple(axes['head']['output_bias']) == ('vocab',)


def test_param_shapes(tied, untied):
  p = tied[1]['params']
  assert set(p) == {'encoder', 'head'}
  assert set(p['encoder']) == {'embeddings', 'layers_0', 'layers_1'}
  assert p['encoder']['embeddings']['word_embeddings']['embedding'].shape == (VOCAB, 64)
  assert p['encoder']['embeddings']['position_embeddings']['embedding'].shape == (16, 64)
  assert p['encoder']['layers_0']['mlp']['wi']['kernel'].shape == (64, 256)
  assert 'output_kernel' not in p['head']
  assert untied[1]['params']['head']['output_kernel'].shape == (64, VOCAB)


# ----------------------------------------------------------------- forward


def test_forward_shapes_and_dtypes(tied):
  model, variables = tied
  hidden, logits = forward(model, variables)
  assert hidden.shape == (2, 6, 64) and hidden.dtype == jnp.float32
  assert logits.shape == (2, 6, VOCAB) and logits.dtype == jnp.float32
  # Defaults: mask = tokens != pad_id, token types 0.
  default_hidden, _ = _jit_apply(model)(variables, TOKENS)
  np.testing.assert_allclose(default_hidden, hidden, atol=1e-6)
  np.testing.assert_allclose(
      _jit_apply(model)(variables, hidden, method=model.logits), logits,
      atol=1e-6)


def test_encode_method(tied):
  model, variables = tied
  hidden, _ = forward(model, variables)
  encoded = _jit_apply(model)(variables, TOKENS, method=model.encode)
  np.testing.assert_allclose(encoded, hidden, atol=1e-6)


def test_tied_head_uses_word_embeddings(tied, untied):
  """Editing an embedding row the input never uses moves only that logit
  column when tied, and nothing when untied."""
  unused_row = 42
  assert unused_row not in TOKENS

  def bump(variables):
    params = jax.tree_util.tree_map(lambda x: x, variables['params'])
    table = params['encoder']['embeddings']['word_embeddings']['embedding']
    params['encoder']['embeddings']['word_embeddings']['embedding'] = (
        # Not a constant shift: LN outputs have zero mean, so a constant row
        # offset would leave the logits unchanged.
        table.at[unused_row].add(jnp.linspace(-1.0, 1.0, table.shape[1])))
    return {**variables, 'params': params}

  model, variables = tied
  _, before = forward(model, variables)
  _, after = forward(model, bump(variables))
  delta = np.abs(np.asarray(after - before)).max(axis=(0, 1))
  assert delta[unused_row] > 1e-3
  assert np.delete(delta, unused_row).max() < 1e-6

  model, variables = untied
  _, before = forward(model, variables)
  _, after = forward(model, bump(variables))
  np.testing.assert_allclose(after, before, atol=1e-6)
  kernel = variables['params']['head']['output_kernel']
  params = {**variables['params'],
            'head': {**variables['params']['head'],
                     'output_kernel': kernel.at[:, unused_row].add(
                         jnp.linspace(-1.0, 1.0, kernel.shape[0]))}}
  _, moved = forward(model, {**variables, 'params': params})
  assert np.abs(np.asarray(moved - before))[..., unused_row].max() > 1e-3


def test_padded_keys_are_ignored(tied):
  """Real positions do not see the contents of masked keys; padded positions
  still get (query) hidden states."""
  model, variables = tied
  mask = TOKENS != 0
  other = np.where(mask, TOKENS, 33)  # garbage under the padding
  h1, _ = forward(model, variables, TOKENS, mask)
  h2, _ = forward(model, variables, other, mask)
  np.testing.assert_allclose(np.asarray(h1)[mask], np.asarray(h2)[mask],
                             atol=1e-5)
  assert np.abs(np.asarray(h1 - h2)[~mask]).max() > 1e-3
  # An all-True mask lets real positions see the padding.
  h3, _ = forward(model, variables, TOKENS, np.ones_like(mask))
  assert np.abs(np.asarray(h3 - h1)[mask]).max() > 1e-3


def test_token_type_ids_matter(tied):
  model, variables = tied
  h0, _ = forward(model, variables)
  h1, _ = forward(model, variables, types=np.ones_like(TOKENS))
  assert np.abs(np.asarray(h1 - h0)).max() > 1e-3


def test_bf16_close_to_fp32(tied):
  model, variables = tied
  h32, l32 = forward(model, variables)
  model16 = enc.BertWithHead(CFG.replace(dtype='bfloat16'))
  h16, l16 = forward(model16, variables)
  assert h16.dtype == jnp.bfloat16 and l16.dtype == jnp.float32
  assert np.isfinite(np.asarray(h16, np.float32)).all()
  assert np.isfinite(np.asarray(l16)).all()
  np.testing.assert_allclose(np.asarray(h16, np.float32), h32, atol=0.1)
  np.testing.assert_allclose(l16, l32, atol=0.05)


def test_dropout(tied):
  model, variables = tied
  train = lambda m, seed: forward(
      m, variables, deterministic=False,
      rngs={'dropout': jax.random.PRNGKey(seed)})[0]
  h_a, h_b = train(model, 1), train(model, 2)
  assert np.abs(np.asarray(h_a - h_b)).max() > 1e-3
  np.testing.assert_allclose(train(model, 1), h_a)  # same rng, same mask
  h_det = forward(model, variables)[0]
  assert np.abs(np.asarray(h_a - h_det)).max() > 1e-3
  # deterministic=True ignores the dropout rng.
  for seed in (1, 2):
    np.testing.assert_allclose(
        forward(model, variables, deterministic=True,
                rngs={'dropout': jax.random.PRNGKey(seed)})[0], h_det)


def test_input_validation(tied):
  model, variables = tied
  # eval_shape traces without compiling: the checks run at trace time.
  check = lambda tokens, **kw: jax.eval_shape(
      functools.partial(model.apply, **kw), variables, tokens)
  with pytest.raises(ValueError, match='exceeds max_position_embeddings=16'):
    check(np.ones((1, 17), np.int32))
  check(np.ones((1, 16), np.int32))  # the limit itself is fine
  with pytest.raises(ValueError, match=r'\[batch, length\]'):
    check(np.ones((6,), np.int32))
  with pytest.raises(ValueError, match='integer'):
    check(np.ones((1, 6), np.float32))
  with pytest.raises(ValueError, match='attention_mask shape'):
    check(TOKENS, attention_mask=np.ones((2, 5), bool))
  with pytest.raises(ValueError, match='token_type_ids shape'):
    check(TOKENS, token_type_ids=np.ones((2, 5), np.int32))
  # Eager (un-jitted) calls check too.
  with pytest.raises(ValueError, match='exceeds max_position_embeddings'):
    model.apply(variables, np.ones((1, 17), np.int32))


def test_sharding_constraints_under_rules(tied):
  """The logical names resolve under t5x-style rules on a 1-device mesh."""
  rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
           ('heads', 'model'), ('joined_kv', 'model'), ('embed', None),
           ('kv', None), ('length', None), ('type_vocab', None)]
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                           ('data', 'model'))
  model, variables = tied
  # A fresh function per lowering: jit's trace cache does not key on flax's
  # axis rules, so re-jitting `model.apply` could reuse a stale trace.
  lower = lambda: jax.jit(lambda v, x: model.apply(v, x)).lower(
      variables, TOKENS).as_text()
  # flax's constraint is a no-op unless an *abstract* mesh is set, which the
  # legacy `with mesh:` no longer does in recent JAX: use jax.set_mesh.
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    # Lowering resolves every logical constraint; compiling adds nothing.
    text = lower()
  assert text.count('sharding_constraint') >= 10
  # Without rules the constraints vanish (no-op), as documented.
  with jax.set_mesh(mesh):
    text = lower()
  assert 'sharding_constraint' not in text
