"""narlm's trainer: gin files, resume, sharding, bad input."""

import json
import logging
import pathlib

import numpy as np
import pytest

from train_utils import FAST, REPO, logged_losses, run_in_process, run_subprocess

GIN_DIR = REPO / "narlm" / "gin"
# narlm-trainer experiments small enough to run a step of on CPU as shipped.
CPU_EXPERIMENTS = ["quickstart_cpu.gin", "tiny_cpu.gin", "pretrain_cpu.gin", "finetune_sentcomp_minilm_cpu.gin"]
# Full-size experiments: real model size, data swapped for the local stand-ins.
FULL_EXPERIMENTS = {
    "pretrain_base.gin": "narlm_wiki_books_local",
    "finetune_sentcomp_base.gin": "sentcomp_bert",
    "finetune_gigaword_base.gin": "sentcomp_bert",
    "finetune_iwslt14_base.gin": "iwslt14_de_en_bert",
}


def test_every_experiment_gin_is_tested():
  shipped = {p.name for p in GIN_DIR.glob("*.gin")}
  assert shipped == set(CPU_EXPERIMENTS) | set(FULL_EXPERIMENTS), shipped


# The README's main job runs in the default suite; the other CPU experiments
# (~20-40 s each) in CI's slow pass.
@pytest.mark.parametrize("gin_file", [
    g if g == "quickstart_cpu.gin" else pytest.param(g, marks=pytest.mark.slow)
    for g in CPU_EXPERIMENTS])
def test_cpu_experiment_runs_one_step(tmp_path, gin_file):
  metrics = run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", "--gin.EVAL_PERIOD=1", *FAST,
                           gin_file=f"narlm/gin/{gin_file}")
  assert np.isfinite(metrics["train/loss"])
  # The last step's periodic evaluation is not repeated as the final one.
  curve = (tmp_path / "run" / "validation_curve.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in curve] == [1]
  assert (tmp_path / "run" / "config.gin").read_text().count("TRAIN_STEPS = 1") == 1
  assert (tmp_path / "run" / "checkpoints" / "1").is_dir()
  if "minilm" in gin_file:
    # Warm start: the first step runs at warmup learning rate 0, so the
    # checkpoint's encoder still equals all-MiniLM-L6-v2's weights.
    from narlm import hf_bert, train
    _, hf = hf_bert.load_hf_bert(hf_bert.minilm_checkpoint_dir())
    ours = train.restore_params(str(tmp_path / "run"))["bert"]["encoder"]
    for path in (("embeddings", "word_embeddings", "embedding"),
                 ("layers_5", "mlp", "wo", "kernel")):
      a, b = ours, hf["encoder"]
      for k in path:
        a, b = a[k], b[k]
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("gin_file,task", sorted(FULL_EXPERIMENTS.items()))
def test_full_size_experiment_runs_one_step(tmp_path, gin_file, task):
  metrics = run_in_process(
      tmp_path / "run", "--gin.TRAIN_STEPS=1", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
      "--gin.INITIAL_CHECKPOINT=None", *FAST, "--gin.BATCH_SIZE=2",
      gin_file=f"narlm/gin/{gin_file}")
  assert np.isfinite(metrics["train/loss"])


def test_model_gins_build(tmp_path):
  """Every model gin parses and builds; parameter counts are as documented."""
  import gin
  import jax
  from narlm import train
  counts = {}
  for path in sorted((GIN_DIR / "models").glob("*.gin")):
    gin.clear_config()
    try:
      # nag_bert.gin / canvas.gin are bodies the size gins include; they need a size.
      extra = ["MODEL_SIZE = 'tiny'"] if path.stem in ("nag_bert", "canvas") else []
      train.parse_gin([str(path)], ["OPTIMIZER = None", *extra])
      model = gin.query_parameter("%MODEL").scoped_configurable_fn()
      shapes = jax.eval_shape(
          lambda r: model.get_initial_variables(r, {"encoder_input_tokens": (1, 8)}),
          jax.random.PRNGKey(0))
      counts[path.stem] = sum(int(np.prod(x.shape))
                              for x in jax.tree_util.tree_leaves(shapes["params"]))
    finally:
      gin.clear_config()
  assert set(counts) >= {"tiny", "small", "base", "large", "minilm_l6", "ar_tiny", "ar_base"}
  # BERT-base / -large encoders are ~110M / ~335M parameters (+ head and CRF).
  assert 105e6 < counts["base"] < 125e6, counts["base"]
  assert 330e6 < counts["large"] < 360e6, counts["large"]
  assert counts["tiny"] < counts["small"] < counts["base"] < counts["large"]


@pytest.mark.slow
@pytest.mark.parametrize("gin_file", ["narlm/gin/tiny_cpu.gin", "narlm/gin/pretrain_cpu.gin"])
def test_kill_and_resume_gives_the_identical_loss_curve(tmp_path, gin_file, caplog):
  """sentcomp, and the pretraining mixture (text files, corruption, mixture
  sampling): the resumed run continues the input stream from its saved
  position, without replaying it, and the curve is the uninterrupted one."""
  common = ["--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=3", *FAST,
            "--gin.DROPOUT_RATE=0.1"]
  run_in_process(tmp_path / "straight", *common, gin_file=gin_file)
  run_in_process(tmp_path / "resumed", *common, "--gin.train_lib.train.stop_after_steps=3",
                 gin_file=gin_file)
  assert sorted(logged_losses(tmp_path / "resumed")) == [1, 2, 3]
  assert (tmp_path / "resumed" / "input_state" / "3" / "process_0" / "meta.json").exists()
  with caplog.at_level(logging.INFO):
    run_in_process(tmp_path / "resumed", *common, gin_file=gin_file)
  assert "input stream continues from its position saved at step 3" in caplog.text
  assert "replaying the input stream" not in caplog.text
  straight, resumed = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "resumed")
  assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([resumed[s] for s in range(1, 7)],
                             [straight[s] for s in range(1, 7)], rtol=1e-6)
  assert len(set(straight.values())) > 1  # the loss moves, so the check has teeth


@pytest.mark.slow
def test_grad_accumulation_matches_full_batch(tmp_path):
  # No warm-up: a schedule that starts at learning rate 0 makes step 1's
  # update exactly zero and the comparison vacuous. Real sentcomp batches:
  # the micro-batches hold different numbers of target tokens.
  args = ["--gin.TRAIN_STEPS=4", *FAST, "--gin.DROPOUT_RATE=0.0", "--gin.WARMUP_STEPS=0"]
  run_in_process(tmp_path / "full", *args)
  run_in_process(tmp_path / "accum", *args, "--gin.GRAD_ACCUM_STEPS=2")
  full, accum = logged_losses(tmp_path / "full"), logged_losses(tmp_path / "accum")
  assert len({round(full[s], 4) for s in range(1, 5)}) == 4  # the parameters move
  np.testing.assert_allclose([accum[s] for s in range(1, 5)], [full[s] for s in range(1, 5)],
                             rtol=2e-4)


SHARDING_SCRIPT = r"""
import json, sys
import jax
from jax.sharding import PartitionSpec as P
import gin
from narlm import train
sys.argv = sys.argv[:1]
gin.clear_config()
train.parse_gin(["narlm/gin/tiny_cpu.gin"], ["MODEL_DIR='/unused'", "NUM_MODEL_PARTITIONS=2"])
model = gin.query_parameter("%MODEL").scoped_configurable_fn()
trainer = train.Trainer(model, num_model_partitions=2)
state = trainer.init_state((8, 32))
def spec(x): return [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
p = state["params"]
out = {
  "devices": jax.device_count(),
  "mesh": dict(trainer.mesh.shape),
  "word_embeddings": spec(p["bert"]["encoder"]["embeddings"]["word_embeddings"]["embedding"]),
  "mlp_wi": spec(p["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]),
  "mlp_wo": spec(p["bert"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]),
  "query": spec(p["bert"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]),
  "crf_e1": spec(p["crf"]["E1"]),
  "ln_scale": spec(p["bert"]["encoder"]["embeddings"]["layer_norm"]["scale"]),
  "adam_mu_wi_shards": len(jax.tree_util.tree_leaves(state["opt_state"])[1].addressable_shards),
}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_eight_fake_devices_shard_by_rules_and_match_one_device(tmp_path):
  import os
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert result["devices"] == 8 and result["mesh"] == {"data": 4, "model": 2}
  assert result["word_embeddings"] == ["model", None]      # ('vocab', 'embed')
  assert result["mlp_wi"] == [None, "model"]               # ('embed', 'mlp')
  assert result["mlp_wo"] == ["model", None]               # ('mlp', 'embed')
  assert result["query"] == [None, "model"]                # ('embed', 'joined_kv')
  assert result["crf_e1"] == ["model", None]               # ('vocab', 'crf_rank')
  assert result["ln_scale"] in ([], [None])                # replicated
  # Same 3-step loss on 8 devices (data 4 x model 2) as on 1 device.
  args = ["--gin.TRAIN_STEPS=3", *FAST, "--gin.DROPOUT_RATE=0.0", "--gin.WARMUP_STEPS=0"]
  run_subprocess(tmp_path / "one", *args, devices=1)
  run_subprocess(tmp_path / "eight", *args, "--gin.NUM_MODEL_PARTITIONS=2", devices=8)
  one, eight = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "eight")
  np.testing.assert_allclose([eight[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)],
                             rtol=1e-4)


# ------------------------------------------------------------------ bad input
def test_unknown_task_names_close_matches(tmp_path):
  with pytest.raises(ValueError, match="sentcomp_bert"):
    run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", *FAST,
                   "--gin.MIXTURE_OR_TASK_NAME='sentcomp_bertt'")


def test_malformed_and_missing_gin_files(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'narlm/gin/tiny_cpu.gin'\nTRAIN_STEPS = = 3\n")
  with pytest.raises(ValueError, match="could not parse gin config"):
    run_in_process(tmp_path / "run", gin_file=str(bad))
  with pytest.raises(FileNotFoundError, match="gin file not found: nope.gin"):
    run_in_process(tmp_path / "run", gin_file="nope.gin")
  from narlm import train
  with pytest.raises(ValueError, match="unknown argument '--bogus'"):
    train.split_gin_args(["--gin_file=x.gin", "--bogus"])
  # A typo'd or t5x-only macro would be silently ignored by gin: refused.
  with pytest.raises(ValueError, match="LEARNIG_RATE.*did you mean LEARNING_RATE"):
    run_in_process(tmp_path / "run", "--gin.LEARNIG_RATE=0.1")
  with pytest.raises(ValueError, match="macro INITIAL_CHECKPOINT_PATH"):
    run_in_process(tmp_path / "run", "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'")
  # Nothing similar: the message lists what can be set.
  with pytest.raises(ValueError, match=r"NOT_A_MACRO.*the macros they use are .*BATCH_SIZE"):
    run_in_process(tmp_path / "run", "--gin.NOT_A_MACRO=3")
  assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
  from narlm import train
  with pytest.raises(train.TrainingError, match="non-finite loss .* at step (\\d+)") as info:
    run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=50", *FAST, "--gin.CHECKPOINT_PERIOD=1",
                   "--gin.OPTIMIZER_NAME='sgd'", "--gin.LEARNING_RATE=1e30",
                   "--gin.CLIP_GRADIENT_NORM=None", "--gin.WARMUP_STEPS=0")
  import re
  bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps and max(steps) == bad_step - 1
  params = train.restore_params(str(tmp_path / "run"))
  import jax
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))
  # config.gin is written when training starts, so a run that died can be
  # served / compared from its last good checkpoint.
  from narlm import serve
  loaded = serve.load_model(str(tmp_path / "run"))
  assert type(loaded.model).__name__ == "NagBertModel"
  assert not list((tmp_path / "run").glob("config.gin.tmp*"))


def test_inference_eval_with_outputs_of_different_lengths():
  """seqio stacks predictions into one array: rows must keep their length."""
  import gin
  import jax.numpy as jnp
  from narlm import train
  gin.clear_config()
  try:
    train.parse_gin(["narlm/gin/tiny_cpu.gin"], ["MODEL_DIR='/unused'"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  trainer = train.Trainer(model)

  def fake_predict(params, batch, **decode_kwargs):
    del params, decode_kwargs
    tokens = batch["encoder_input_tokens"]
    # Copy the source, cut after a row-dependent number of tokens.
    lengths = jnp.arange(tokens.shape[0]) % 5 + 1
    keep = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return jnp.where(keep, tokens, 0), {"length": lengths, "scores": jnp.zeros(tokens.shape[:1])}

  model.predict_batch_with_aux = fake_predict  # what the trainer's predictor runs
  cfg = train.DatasetConfig("sentcomp_bert", {"inputs": 32, "targets": 32}, split="validation",
                            batch_size=4, shuffle=False)
  metrics, samples = train.evaluate_with_metrics(trainer, None, cfg, step=0, num_examples=10)
  rouge1 = metrics["sentcomp_bert"]["rouge1"]
  assert 0 < rouge1 < 100
  assert len(samples) == 3 and all(len(s[1].split()) <= 5 for s in samples)


def test_cpu_budget_counts_cpu_time_logged_before_a_resume(tmp_path):
  from narlm import train
  assert train._train_cpu_seconds_logged(str(tmp_path), 10) == 0.0  # no log yet
  (tmp_path / "train_metrics.jsonl").write_text(
      '{"step": 5, "train/loss": 1.0, "train/cpu_seconds": 50.0}\n'
      '{"step": 10, "train/loss": 1.0, "train/cpu_seconds": 100.0}\n'
      '{"step": 15, "train/loss": 1.0, "train/cpu_seconds": 150.0}\n'  # after the checkpoint
      '{"step": 1')  # cut short by a kill
  assert train._train_cpu_seconds_logged(str(tmp_path), 10) == 100.0
  assert train._train_cpu_seconds_logged(str(tmp_path), 7) == 50.0
  with pytest.raises(ValueError, match="max_train_cpu_seconds must be > 0"):
    run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", "--gin.MAX_TRAIN_CPU_SECONDS=0", *FAST)


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_console_shows_progress_for_people_and_the_log_file_keeps_the_rest(tmp_path):
  run = tmp_path / "run"
  proc = run_subprocess(run, "--gin.TRAIN_STEPS=4", *FAST, "--gin.LOG_PERIOD=2")
  out = proc.stdout.splitlines()
  assert out[0].startswith("narlm.train  narlm/gin/tiny_cpu.gin -> ")
  assert any(l.startswith("training 4 steps, from scratch; full log: ")
             and l.endswith(str(run / "train.log")) for l in out), out
  assert any(l.startswith("model    NagBertModel (NagBertNetwork, ") for l in out)
  assert [l.split("(")[0].strip() for l in out if l.startswith("step ")] == ["step 2/4",
                                                                           "step 4/4"]
  assert out[-1].startswith("done: step 4")
  assert len(out) <= 12, proc.stdout
  noise = ("CheckpointManager", "I0000", "oneDNN", "orbax", "feature:")
  console = proc.stdout + proc.stderr
  assert not [l for l in console.splitlines() if any(n in l for n in noise)], console
  log = (run / "train.log").read_text()
  assert "CheckpointManager" in log and "step 4/4" in log  # library INFO lines kept here
  # --verbosity=1 brings everything back to the console
  proc = run_subprocess(tmp_path / "verbose", "--gin.TRAIN_STEPS=1", *FAST, "--verbosity=1")
  assert "CheckpointManager" in proc.stdout + proc.stderr
  # a user error: one line on stderr naming the binding, exit status 2
  bad = run_subprocess(tmp_path / "bad", "--gin.LEARNIG_RATE=1", check=False)
  assert bad.returncode == 2, bad.stderr
  assert bad.stderr.strip().splitlines() == [
      l for l in bad.stderr.strip().splitlines() if "LEARNIG_RATE" in l] != [], bad.stderr


def test_nonfinite_loss_is_tracked_on_device_and_reported_with_its_step():
  import jax.numpy as jnp
  from narlm import train
  nonfinite = (jnp.int32(-1), jnp.float32(0.0))
  for step, loss in enumerate([1.0, 2.0, float("nan"), 3.0, float("inf")], start=1):
    nonfinite = train.track_nonfinite(nonfinite, jnp.float32(loss), step)
  assert int(nonfinite[0]) == 3 and np.isnan(float(nonfinite[1]))  # the first one is kept
  with pytest.raises(train.TrainingError, match="non-finite loss nan at step 3;.*step 2"):
    train._raise_if_nonfinite(nonfinite, last_checkpoint=2)
  train._raise_if_nonfinite((jnp.int32(-1), jnp.float32(0.0)), None)  # finite: no error


def _counting_dataset(n: int, produced: list):
  """range(n) as {'x': [2] int64} batches; `produced` records every element
  the source makes (a replay makes them again, a restore does not)."""
  import tensorflow as tf

  def record(x):
    produced.append(int(x))
    return x
  return tf.data.Dataset.range(n).map(
      lambda x: {"x": tf.stack([tf.py_function(record, [x], tf.int64)] * 2)})


def test_train_input_prefetches_in_order_and_runs_ahead():
  from narlm.train_data import TrainInput
  put_calls = []

  def put(batch):
    put_calls.append(int(batch["x"][0]))
    return int(batch["x"][0]) * 10

  stream = TrainInput(_counting_dataset(5, []), put, prefetch=2)
  assert next(stream) == 0 and put_calls == [0, 1, 2]  # two batches already in flight
  assert [next(stream) for _ in range(6)] == [10, 20, 30, 40, 0, 10]  # repeats
  assert [next(TrainInput(_counting_dataset(3, []), put, prefetch=0)) for _ in range(1)] == [0]
  with pytest.raises(ValueError, match="prefetch_batches must be >= 0"):
    TrainInput(_counting_dataset(3, []), put, prefetch=-1)


def test_train_input_resumes_from_its_saved_position_without_replaying(tmp_path):
  from narlm.train_data import TrainInput
  produced = []
  first = TrainInput(_counting_dataset(1000, produced), lambda b: int(b["x"][0]),
                     prefetch=2, fingerprint={"task": "t"})
  assert [next(first) for _ in range(300)] == list(range(300))
  first.save(str(tmp_path), 300)
  expected = [next(first) for _ in range(5)]

  produced.clear()
  resumed = TrainInput(_counting_dataset(1000, produced), lambda b: int(b["x"][0]),
                       prefetch=2, fingerprint={"task": "t"})
  assert resumed.restore(str(tmp_path), 300) is None
  assert [next(resumed) for _ in range(5)] == expected == list(range(300, 305))
  # Nothing consumed is made again (tf.data may restore elements it had
  # already buffered ahead, so fewer than 5 can be new).
  assert all(x >= 300 for x in produced) and len(produced) < 20

  # No position, or one of other data settings: a reason, and replay is exact.
  other = TrainInput(_counting_dataset(1000, []), lambda b: int(b["x"][0]),
                     fingerprint={"task": "other"})
  assert "no input position saved for step 7" in other.restore(str(tmp_path), 7)
  assert "other data settings" in other.restore(str(tmp_path), 300)
  produced.clear()
  other = TrainInput(_counting_dataset(1000, produced), lambda b: int(b["x"][0]),
                     fingerprint={"task": "other"})
  other.replay(300)
  assert [next(other) for _ in range(5)] == expected
  assert sorted(produced)[:300] == list(range(300))  # the replay made them all again
  # A write cut off before its meta.json is not a position.
  (tmp_path / "input_state" / "300" / "process_0" / "meta.json").rename(tmp_path / "meta.json")
  assert "no input position saved for step 300" in other.restore(str(tmp_path), 300)
  TrainInput.prune(str(tmp_path), keep_steps=[7])
  assert not (tmp_path / "input_state" / "300").exists()


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_resume_with_a_changed_config_is_a_config_error_not_damage(tmp_path):
  """A changed CRF_RANK (the probe of the reliability issue) used to be called
  'damaged' with advice to move good checkpoints aside: orbax's shape-mismatch
  text contains 'truncat'. Now the metadata is compared with the model."""
  from narlm import checkpoints
  args = ["--gin.TRAIN_STEPS=1", *FAST, "--gin.CHECKPOINT_PERIOD=1", "--gin.EVAL_PERIOD=0"]
  run_in_process(tmp_path / "run", *args)
  with pytest.raises(checkpoints.CheckpointError) as info:
    run_in_process(tmp_path / "run", *args[1:], "--gin.TRAIN_STEPS=2", "--gin.CRF_RANK=16")
  message = str(info.value)
  assert not isinstance(info.value, checkpoints.CorruptCheckpointError)
  assert "written by a different configuration" in message and "files are fine" in message
  assert "crf/E1: checkpoint float32[30522, 32], current model float32[30522, 16]" in message
  assert "damaged" not in message and "mv " not in message
  # The same config resumes.
  run_in_process(tmp_path / "run", *args[1:], "--gin.TRAIN_STEPS=2")
  assert sorted(logged_losses(tmp_path / "run")) == [1, 2]


@pytest.mark.parametrize("binding, message", [
    ("--gin.BATCH_SIZE='a'", "batch_size .* must be a positive integer, got 'a'"),
    ("--gin.BATCH_SIZE=0", "batch_size .* must be a positive integer, got 0"),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}",
     r"task_feature_lengths\['inputs'\] .* got 0"),
])
def test_bad_data_settings_name_the_binding(tmp_path, binding, message):
  with pytest.raises(ValueError, match=message):
    run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", *FAST, binding)


def test_unclosed_parenthesis_in_a_gin_file_is_a_parse_error(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'narlm/gin/tiny_cpu.gin'\nTRAIN_STEPS = (3\n")
  with pytest.raises(ValueError, match="could not parse gin config.*EOF in multi-line"):
    run_in_process(tmp_path / "run", gin_file=str(bad))


# ------------------------------------------- issue #13 probes without a test
def test_a_task_with_another_vocabulary_is_refused_before_step_1(tmp_path):
  """Issue #13 probe 2a: a T5-vocabulary task (sentcomp_t5, 32,100 ids) with
  a BERT-vocabulary model (30,522 ids) must fail before step 1 naming the
  vocabulary mismatch (narlm.compare checks this; the trainer should too)."""
  with pytest.raises(ValueError, match=r"(?is)vocabular.*sentcomp_t5|sentcomp_t5.*vocabular"):
    run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", *FAST, "--gin.EVAL_PERIOD=0",
                   "--gin.MIXTURE_OR_TASK_NAME='sentcomp_t5'")
  assert not (tmp_path / "run" / "checkpoints" / "1").exists()
  assert not (tmp_path / "run" / "train_metrics.jsonl").exists()


@pytest.mark.parametrize("src, tgt", [(b"", b""), (b"\n  \n\t\n", b"a\nb\nc\n")],
                         ids=["empty_files", "blank_source_lines"])
def test_an_empty_task_is_a_clear_error_not_stop_iteration(tmp_path, src, tgt):
  """Issue #13 probe 3a: a task whose files are empty (or whose every source
  line is blank) must be a ValueError naming the task, not a bare
  StopIteration from the input pipeline."""
  import seqio
  from narlm.tasks import finetuning, sources
  name = f"narlm_test_empty_task_{tmp_path.name}"
  for split in ("train", "validation"):
    (tmp_path / f"{split}.src").write_bytes(src)
    (tmp_path / f"{split}.tgt").write_bytes(tgt)
  seqio.TaskRegistry.add(
      name, source=sources.PairedTextFileSource(
          {"train": ("train.src", "train.tgt"), "validation": ("validation.src",
                                                               "validation.tgt")},
          base_dir=str(tmp_path)),
      output_features=finetuning.BERT_FEATURES, preprocessors=finetuning.TEXT_PAIR_PREPROCESSORS,
      postprocess_fn=finetuning.prep.postprocess_for(finetuning.BERT))
  try:
    with pytest.raises(ValueError, match=rf"(?s){name}.*(no (training )?examples|empty)"):
      run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", *FAST, "--gin.EVAL_PERIOD=0",
                     f"--gin.MIXTURE_OR_TASK_NAME='{name}'")
  finally:
    seqio.TaskRegistry.remove(name)


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_a_read_only_model_dir_is_a_clear_error(tmp_path):
  """Issue #13 probe 3d: a MODEL_DIR that cannot be written is a user error:
  exit status 2 and a short message naming the directory, no traceback."""
  import os
  import shutil
  import subprocess
  import sys
  prefix = []
  if os.geteuid() == 0:  # root ignores permission bits unless it drops CAP_DAC_OVERRIDE
    if not shutil.which("setpriv"):
      pytest.skip("running as root without setpriv: cannot make a directory read-only")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o555)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
  try:
    for model_dir in (locked, locked / "run"):  # existing and to be created
      proc = subprocess.run(
          [*prefix, sys.executable, "-m", "narlm.train", "--gin_file=narlm/gin/tiny_cpu.gin",
           f'--gin.MODEL_DIR="{model_dir}"', "--gin.TRAIN_STEPS=1", *FAST],
          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
      assert proc.returncode == 2, proc.stderr[-3000:]
      assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
      assert str(locked) in proc.stderr, proc.stderr[-3000:]
  finally:
    locked.chmod(0o755)


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_nonfinite_loss_under_python_m_is_one_line_no_traceback(tmp_path):
  """Issue #13 probe 3e: under `python -m narlm.train` train.py is __main__,
  while the gin-configured train() raises narlm.train.TrainingError: the
  console must still show the one-line message (exit status 1), no traceback."""
  proc = run_subprocess(tmp_path / "run", "--gin.TRAIN_STEPS=20", *FAST,
                        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
                        "--gin.BATCH_SIZE=4", "--gin.OPTIMIZER_NAME='sgd'",
                        "--gin.LEARNING_RATE=1e30", "--gin.CLIP_GRADIENT_NORM=None",
                        "--gin.WARMUP_STEPS=0", check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert 1 <= len(lines) <= 2 and "non-finite loss" in lines[0], proc.stderr[-3000:]


def _tiny_cpu_model(*bindings: str):
  """The model narlm/gin/tiny_cpu.gin builds under `bindings` (gin left clear)."""
  import gin
  from narlm import train
  gin.clear_config()
  try:
    train.parse_gin(["narlm/gin/tiny_cpu.gin"], list(bindings))
    return gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_a_pretraining_run_warm_starts_fine_tuning_bit_equal(tmp_path, caplog):
  """Milestone 2 -> 1: INITIAL_CHECKPOINT may be a narlm run directory. Every
  parameter the two models share is copied bit for bit (the pretraining run's
  encoder, head and CRF); the fine-tuning run then trains from them."""
  import jax
  from narlm import train
  pretrain = tmp_path / "pretrain"
  run_in_process(pretrain, "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2",
                 "--gin.EVAL_PERIOD=0", "--gin.EVALUATOR_NUM_EXAMPLES=0")
  pretrained = train.restore_params(str(pretrain))
  model = _tiny_cpu_model(f"MODEL_DIR = '{tmp_path / 'ft'}'", "RANDOM_SEED = 7")
  fresh = jax.device_get(model.get_initial_variables(
      jax.random.PRNGKey(7), {"encoder_input_tokens": (1, 8)})["params"])
  warm = model.warm_start_from_run(fresh, str(pretrain))
  flat_warm = jax.tree_util.tree_leaves_with_path(warm)
  flat_pre = dict(jax.tree_util.tree_leaves_with_path(pretrained))
  assert len(flat_warm) == len(flat_pre)
  for path, value in flat_warm:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_pre[path]),
                                  err_msg=jax.tree_util.keystr(path))
  # ... and differ from a fresh init (the check can fail).
  assert not np.array_equal(np.asarray(fresh["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]),
                            np.asarray(warm["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]))
  # The trainer takes the run directory as INITIAL_CHECKPOINT and trains on.
  caplog.set_level("INFO")
  metrics = run_in_process(tmp_path / "ft", "--gin.TRAIN_STEPS=1",
                           f"--gin.INITIAL_CHECKPOINT='{pretrain}'",
                           "--gin.EVAL_PERIOD=0", "--gin.EVALUATOR_NUM_EXAMPLES=0")
  assert np.isfinite(metrics["train/loss"])
  assert f"warm start from the narlm run {pretrain}: " in caplog.text, [
      r.getMessage() for r in caplog.records if "warm" in r.getMessage()]
  # Another model size shares paths with other shapes: refused by name.
  other = _tiny_cpu_model(f"MODEL_DIR = '{tmp_path / 'x'}'",
                          "encoder.bert_config.hidden_size = 32")
  other_params = jax.device_get(other.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 8)})["params"])
  with pytest.raises(ValueError, match="shared parameter\\(s\\) differ"):
    other.warm_start_from_run(other_params, str(pretrain))
