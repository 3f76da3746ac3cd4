"""NagBertModel driven the way t5x's train.py / eval.py / infer.py drive a gin
MODEL, and the narlm/gin/t5x/ gin files checked as text -- all WITHOUT t5x.

t5x is not a narlm dependency and is not installed in CI, so this file
replays t5x's calls. References are to t5x HEAD cc342d419ec3 (t5x/*.py;
docs/t5x.md has the full call-site table); the end-to-end proof with real t5x
is in docs/t5x.md ("Verified runs").
"""

import functools
import importlib.util
import inspect
import pathlib
import re

import clu.metrics as clu_metrics
import flax
from flax.linen import partitioning as flax_partitioning
import gin
from gin import config_parser
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import narlm.tasks  # noqa: F401  (registers the seqio tasks)
from narlm import canvas
from narlm import models
from narlm import partitioning as narlm_partitioning

REPO = pathlib.Path(__file__).resolve().parents[1]
T5X_GIN_DIR = REPO / "narlm" / "gin" / "t5x"
TASK = "sentcomp_bert"
LENGTHS = {"inputs": 24, "targets": 24}
BATCH = 2
# Metric names t5x's trainer adds itself (trainer.py:573, 884-887).
T5X_RESERVED_METRICS = {"learning_rate", "learning_rate/current"}


# --------------------------------------------------------------- fixtures
# Model gins replayed: NAG-BERT (tiny) and the canvas model (with its CRF).
MODEL_GINS = {
    "nag_bert": ("narlm/gin/models/tiny.gin", []),
    "canvas": ("narlm/gin/models/canvas.gin",
               ["MODEL_SIZE = 'tiny'", "USE_CRF = True", "DECODE_METHOD = 'mask_predict_crf'",
                "ITERATIONS = 2", f"MAX_CANVAS_LENGTH = {LENGTHS['targets'] - 2}"]),
}


@pytest.fixture(scope="module", params=sorted(MODEL_GINS))
def model(request):
  """MODEL exactly as the t5x experiment gins build it (tiny model gins)."""
  gin_file, bindings = MODEL_GINS[request.param]
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(REPO / gin_file)],
        # Smaller than the gin's defaults only to keep compiles short in CI.
        ["OPTIMIZER = None", "CRF_BEAM_SIZE = 8", "CRF_RANK = 8",
         "encoder.bert_config.num_layers = 1"] + bindings, finalize_config=False)
    yield gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def dataset(model, data_dir):  # pylint: disable=unused-argument
  """utils.py:2026-2046 (get_dataset_inner): the converter is built with
  (pack=, use_custom_packing_ops=) keywords and seqio batches the dataset."""
  converter = model.FEATURE_CONVERTER_CLS(pack=False, use_custom_packing_ops=False)
  assert isinstance(converter, seqio.FeatureConverter)
  return seqio.get_dataset(
      mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, dataset_split="validation",
      shuffle=False, num_epochs=1, feature_converter=converter,
      shard_info=seqio.ShardInfo(index=0, num_shards=1), use_cached=False, seed=42,
      trim_output_features=True, batch_size=BATCH)


@pytest.fixture(scope="module")
def batch(dataset):
  return {k: jnp.asarray(v) for k, v in next(dataset.as_numpy_iterator()).items()}


@pytest.fixture(scope="module")
def shapes(dataset):
  """train.py:277-281: input_shapes/input_types from the element spec."""
  spec = dataset.element_spec
  input_shapes = {k: (BATCH, *v.shape[1:]) for k, v in spec.items()}
  input_types = {k: v.dtype.as_numpy_dtype for k, v in spec.items()}
  return input_shapes, input_types


@pytest.fixture(scope="module")
def variables(model, shapes):
  """utils.py:1049-1062: init_fn(rng=, input_shapes=, input_types=) under
  jax.eval_shape, then jitted (partitioned) for the real init."""
  input_shapes, input_types = shapes

  def initialize(rng):
    return flax.core.freeze(model.get_initial_variables(
        rng=rng, input_shapes=input_shapes, input_types=input_types))

  abstract = jax.eval_shape(initialize, jax.random.PRNGKey(0))
  concrete = jax.jit(initialize)(jax.random.PRNGKey(0))
  return abstract, concrete


# ----------------------------------------------------------- the contract
def test_model_attributes_t5x_reads(model):
  assert isinstance(model, (models.NagBertModel, canvas.CanvasModel))
  # train.py:350-356: TrainStateInitializer(optimizer_def=model.optimizer_def,
  # init_fn=model.get_initial_variables); utils.py:1073 takes init_fn.__self__.
  assert hasattr(model, "optimizer_def")
  assert model.get_initial_variables.__self__ is model
  # utils.py:1075-1079: optional `module.scan_layers`.
  assert not getattr(model.module, "scan_layers", False)
  for name in ("loss_fn", "eval_fn", "predict_batch", "predict_batch_with_aux", "score_batch"):
    assert callable(getattr(model, name)), name


def test_feature_converter_refuses_packing(model):
  # t5x's run gins default to pack=True; narlm/gin/t5x/runs/common.gin turns
  # it off. Packing must fail loudly, not silently mix examples.
  with pytest.raises(ValueError, match="pack"):
    model.FEATURE_CONVERTER_CLS(pack=True, use_custom_packing_ops=False)
  # eval.py:104-114 and infer.py:466 call it with pack=False only.
  assert isinstance(model.FEATURE_CONVERTER_CLS(pack=False), seqio.FeatureConverter)


def test_dataset_has_the_model_features(batch, shapes):
  input_shapes, _ = shapes
  assert set(batch) == {"encoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"}
  length = max(LENGTHS.values())
  for name, value in batch.items():
    assert value.shape == (BATCH, length) == input_shapes[name], name


def test_initial_variables_are_params_and_params_axes(variables):
  abstract, concrete = variables
  # train_state.py:115-175: anything besides params/params_axes would become
  # flax_mutables needing its own *_axes collection and 4-argument loss_fn.
  assert set(abstract) == {"params", "params_axes"}
  assert set(concrete) == {"params", "params_axes"}
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]), sep="/")
  axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params_axes"]), sep="/")
  # One AxisMetadata '<name>_axes' per parameter, with one name per dimension.
  for path, leaf in params.items():
    axes_path = f"{path}_axes"
    assert axes_path in axes, f"no params_axes for {path}"
    assert isinstance(axes[axes_path], flax_partitioning.AxisMetadata), axes_path
    assert len(axes[axes_path].names) == leaf.ndim, axes_path
  assert len(axes) == len(params)
  # train_state.py:88-96 (_validate_params_axes), what FlaxOptimTrainState runs.
  names = flax_partitioning.get_axis_names(abstract["params_axes"])
  missing = set(params) - set(flax.traverse_util.flatten_dict(names, sep="/"))
  assert not missing


def test_every_logical_axis_has_a_narlm_rule(variables):
  # runs/common.gin appends narlm's rules to t5x's standard rules
  # (partitioning.standard_logical_axis_rules.additional_rules).
  abstract, _ = variables
  axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params_axes"]))
  used = {name for meta in axes.values() for name in meta.names}
  ruled = {name for name, _ in narlm_partitioning.standard_logical_axis_rules()}
  assert used <= ruled, f"logical axes without a rule: {sorted(used - ruled)}"


def test_init_without_input_types(model, shapes):
  # eval.py:280 / infer.py:503: TrainStateInitializer(..., input_types=None).
  input_shapes, _ = shapes
  out = jax.eval_shape(functools.partial(model.get_initial_variables,
                                         input_shapes=input_shapes, input_types=None),
                       jax.random.PRNGKey(1))
  assert set(out) == {"params", "params_axes"}


def _check_metrics(metrics):
  assert metrics, "no metrics"
  assert not set(metrics) & T5X_RESERVED_METRICS
  assert not any(name.startswith("timing/") for name in metrics)
  for name, metric in metrics.items():
    assert isinstance(metric, clu_metrics.Metric), f"{name} is {type(metric)}, not a clu Metric"
  # trainer.py:70-85 merges per-step metrics with Metric.merge; the writer
  # calls compute().
  merged = {k: v.merge(metrics[k]) for k, v in metrics.items()}
  values = {k: float(np.asarray(v.compute())) for k, v in merged.items()}
  assert all(np.isfinite(v) for v in values.values()), values
  return values


@pytest.fixture(scope="module")
def train_outputs(model, variables, batch):
  """One jitted step holding both trainer calls (one compile keeps CI fast)."""
  _, concrete = variables

  @jax.jit
  def step(params, batch, dropout_rng):
    # trainer.py:734-748: value_and_grad(model.loss_fn, has_aux=True)(params,
    # batch, dropout_rng), positional.
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(params, batch, dropout_rng)
    # trainer.py:899-917 (eval_step): model.eval_fn(params, batch), positional.
    eval_loss, eval_metrics = model.eval_fn(params, batch)
    return loss, metrics, grads, eval_loss, eval_metrics

  first = step(concrete["params"], batch, jax.random.PRNGKey(3))
  again = step(concrete["params"], batch, jax.random.PRNGKey(4))
  return concrete["params"], first, again


def test_loss_fn_as_the_trainer_calls_it(train_outputs):
  params, (loss, metrics, grads, _, _), _ = train_outputs
  assert np.isfinite(float(loss))
  values = _check_metrics(metrics)
  assert values["loss"] == pytest.approx(float(loss), rel=1e-5)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_eval_fn_as_the_trainer_calls_it(train_outputs):
  _, (_, _, _, eval_loss, eval_metrics), (_, _, _, eval_loss_again, _) = train_outputs
  assert float(eval_loss) == float(eval_loss_again)  # deterministic: no dropout
  _check_metrics(eval_metrics)


@pytest.fixture(scope="module")
def infer_outputs(model, variables, batch):
  """The evaluator's / infer.py's three inference steps, in one compile."""
  _, concrete = variables
  # utils.py:1584-1602 (get_infer_fn): infer_step(params, batch, rng) when the
  # signature has 'rng', else infer_step(params, batch); the batch still holds
  # the targets (the evaluator feeds the cached model features). eval.py:145-164
  # wraps predict_batch, predict_batch_with_aux and score_batch.
  for fn in (model.predict_batch, model.predict_batch_with_aux):
    assert "rng" in inspect.signature(fn).parameters
  assert "rng" not in inspect.signature(model.score_batch).parameters

  @jax.jit
  def infer(params, batch, rng):
    return (model.predict_batch_with_aux(params, batch, rng),
            model.predict_batch_with_aux(params, batch, None),
            model.predict_batch(params, batch, None),
            model.score_batch(params, batch))

  return infer(concrete["params"], batch, jax.random.PRNGKey(5))


def test_predict_batch_with_aux_as_the_evaluator_calls_it(model, batch, infer_outputs):
  (tokens, aux), (tokens_no_rng, aux_no_rng), predicted, _ = infer_outputs
  length = batch["encoder_input_tokens"].shape[1]
  assert tokens.shape == (BATCH, length) and tokens.dtype == jnp.int32
  assert {"scores", "length"} <= set(aux)
  assert aux["scores"].shape == aux["length"].shape == (BATCH,)
  np.testing.assert_array_equal(tokens, tokens_no_rng)
  np.testing.assert_allclose(aux["scores"], aux_no_rng["scores"])
  np.testing.assert_array_equal(tokens, predicted)
  # seqio decodes each prediction with the output vocabulary.
  for row, n in zip(np.asarray(tokens), np.asarray(aux["length"])):
    assert isinstance(model.output_vocabulary.decode(row[:n].tolist()), str)
    assert isinstance(model.output_vocabulary.decode(row.tolist()), str)


def test_score_batch_as_infer_calls_it(infer_outputs):
  scores = np.asarray(infer_outputs[3])
  assert scores.shape == (BATCH,) and scores.dtype == np.float32
  assert np.isfinite(scores).all()


def test_vocabularies_match_the_task(model):
  # utils.py:1917-1949 (verify_matching_vocabs; unconditional in
  # infer.py:453-454) compares with `!=`.
  task = seqio.get_mixture_or_task(TASK)
  assert not model.input_vocabulary != task.output_features["inputs"].vocabulary
  assert not model.output_vocabulary != task.output_features["targets"].vocabulary


def test_narlm_does_not_import_t5x():
  offenders = [
      str(p.relative_to(REPO)) for p in (REPO / "narlm").rglob("*.py")
      if re.search(r"^\s*(import t5x|from t5x)", p.read_text(encoding="utf-8"), re.M)]
  assert not offenders
  setup = (REPO / "setup.py").read_text(encoding="utf-8")
  assert not re.search(r"[\"']t5x", setup)


# ------------------------------------------------- gin files (text only)
T5X_RUN_GINS = {f"t5x/configs/runs/{n}.gin" for n in ("pretrain", "finetune", "eval", "infer")}
# Macros t5x's run gins define (a narlm gin may reference them).
T5X_MACROS = {
    "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "MODEL_DIR", "BATCH_SIZE",
    "USE_CACHED_TASKS", "MIXTURE_OR_TASK_MODULE", "SHUFFLE_TRAIN_EXAMPLES", "USE_HARDWARE_RNG",
    "RANDOM_SEED", "TRAIN_STEPS_RELATIVE", "INITIAL_CHECKPOINT_PATH", "DROPOUT_RATE",
    "EVAL_STEPS", "EVAL_PERIOD", "EVALUATOR_USE_MEMORY_CACHE", "EVALUATOR_NUM_EXAMPLES",
    "JSON_WRITE_N_RESULTS", "CHECKPOINT_PATH", "INFER_OUTPUT_DIR", "EVAL_OUTPUT_DIR",
}
T5X_MODULES = {"t5x.optimizers", "t5x.partitioning", "t5x.trainer", "t5x.utils",
               "t5x.adafactor", "t5x.gin_utils"}
GIN_DIR = REPO / "narlm" / "gin"
# One file per experiment, for both trainers: the shipped experiments and the
# comparison arms (narlm/gin/runs/pretrain.gin explains how).
EXPERIMENT_GINS = sorted(GIN_DIR.glob("*.gin")) + sorted(GIN_DIR.glob("compare/*_minilm_*.gin"))
ALL_GINS = sorted(set(T5X_GIN_DIR.rglob("*.gin")) | set((GIN_DIR / "runs").glob("*.gin"))
                  | set(EXPERIMENT_GINS))


class _Delegate(config_parser.ParserDelegate):
  """Records references and macros instead of resolving them."""

  def __init__(self):
    self.references, self.macros = [], []

  def configurable_reference(self, scoped_configurable_name, evaluate):
    self.references.append(scoped_configurable_name)
    return ("@", scoped_configurable_name)

  def macro(self, macro_name):
    self.macros.append(macro_name)
    return ("%", macro_name)


@functools.lru_cache(maxsize=None)
def _parse(path: pathlib.Path):
  delegate = _Delegate()
  statements = list(config_parser.ConfigParser(path.read_text(encoding="utf-8"), delegate))
  return statements, tuple(delegate.references), tuple(delegate.macros)


def _closure(path: pathlib.Path):
  """(narlm files, t5x includes) reachable by `include` from `path`."""
  files, t5x_includes, todo = [], set(), [path]
  while todo:
    current = todo.pop()
    if current in files:
      continue
    files.append(current)
    for st in _parse(current)[0]:
      if isinstance(st, config_parser.IncludeStatement):
        if st.filename.startswith("t5x/"):
          t5x_includes.add(st.filename)
        else:
          todo.append(REPO / st.filename)
  return files, t5x_includes


def test_gin_folders_are_packages():
  # gin's resource reader needs regular packages (docs/t5x.md, "gin paths").
  for folder in {p.parent for p in ALL_GINS}:
    assert (folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize("path", ALL_GINS, ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_gin_file_syntax_imports_and_includes(path):
  statements, references, _ = _parse(path)
  imports = [st for st in statements if isinstance(st, config_parser.ImportStatement)]
  bound = {st.bound_name() for st in imports}
  for st in imports:
    if st.module.startswith(("__gin__", "__main__")):
      continue
    if st.module.startswith("t5x"):
      assert st.module in T5X_MODULES, f"{path.name}: unexpected t5x module {st.module}"
    else:
      assert importlib.util.find_spec(st.module) is not None, f"{path.name}: {st.module}"
  for st in statements:
    if isinstance(st, config_parser.IncludeStatement):
      if st.filename.startswith("t5x/"):
        assert st.filename in T5X_RUN_GINS, f"{path.name}: {st.filename}"
      else:
        assert st.filename.startswith("narlm/gin/"), st.filename
        assert (REPO / st.filename).is_file(), f"{path.name}: missing {st.filename}"
  # gin's dynamic_registration imports are per file: every dotted selector or
  # reference must start with a name this very file imported.
  selectors = [st.selector for st in statements
               if isinstance(st, config_parser.BlockDeclaration)
               or (isinstance(st, config_parser.BindingStatement) and st.arg_name != "")]
  selectors += [ref.rsplit("/", 1)[-1] for ref in references]
  for name in selectors:
    if "." in name:
      assert name.split(".")[0] in bound, f"{path.name}: '{name}' without an import"
  if selectors:
    assert any(st.module == "__gin__.dynamic_registration" for st in imports), path.name


@pytest.mark.parametrize("path", ALL_GINS, ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_gin_file_header(path):
  lines = path.read_text(encoding="utf-8").splitlines()
  header = []
  for line in lines:
    if not line.startswith("#"):
      break
    header.append(line)
  text = "\n".join(header)
  for field in ("Provides:", "Requires:", "Commonly overridden:", "Launch"):
    assert field in text, f"{path.name}: header lacks '{field}'"


@pytest.mark.parametrize("path", EXPERIMENT_GINS, ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_experiment_gin_is_complete(path):
  """Under t5x (includes followed as t5x reads them): the include chain
  reaches t5x's run gin and narlm's glue, every macro is defined."""
  files, t5x_includes = _closure(path)
  assert t5x_includes & {"t5x/configs/runs/pretrain.gin", "t5x/configs/runs/finetune.gin"}
  defined, referenced, bindings = set(), set(), {}
  for f in files:
    statements, _, macros = _parse(f)
    referenced.update(macros)
    for st in statements:
      if isinstance(st, config_parser.BindingStatement):
        if st.arg_name == "":
          defined.add(st.selector)
        bindings[(st.scope, st.selector, st.arg_name)] = st.value
  assert {"MODEL", "OPTIMIZER"} <= defined
  missing = referenced - defined - T5X_MACROS
  assert not missing, f"macros used but never defined: {sorted(missing)}"
  # The experiment sets the macros t5x marks %gin.REQUIRED (MODEL_DIR and
  # INITIAL_CHECKPOINT_PATH come from the command line).
  own = {st.selector for st in _parse(path)[0]
         if isinstance(st, config_parser.BindingStatement) and st.arg_name == ""}
  assert {"MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS"} <= own | defined
  task = [st.value for f in files for st in _parse(f)[0]
          if isinstance(st, config_parser.BindingStatement)
          and st.selector == "MIXTURE_OR_TASK_NAME"][-1]
  narlm.tasks.get_task_or_mixture(task)
  # NAG-BERT cannot pack; narlm's tasks are not cached.
  assert bindings[("train", "utils.DatasetConfig", "pack")] is False
  assert bindings[("train_eval", "utils.DatasetConfig", "pack")] is False
  assert [st.value for f in files for st in _parse(f)[0]
          if isinstance(st, config_parser.BindingStatement)
          and st.selector == "USE_CACHED_TASKS"][-1] is False
  assert ("", "optimizers.OptaxWrapper", "optax_optimizer") in bindings
  assert bindings[("", "trainer.Trainer", "learning_rate_fn")] == (
      "@", "narlm_optimizers.create_schedule")
  # The header's launch command names this very file.
  text = path.read_text(encoding="utf-8")
  if path.parent == GIN_DIR:
    assert f"--gin_file=narlm/gin/{path.name}" in text
  # Nothing in the t5x route binds narlm's own trainer (t5x would fail on it).
  for f in files:
    assert not re.search(r"^include\s+'narlm/gin/runs/train\.gin'|^\s*train_lib\.train",
                         f.read_text(encoding="utf-8"), flags=re.MULTILINE), f
