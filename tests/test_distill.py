"""narlm.distill: distilled data files, the seqio task reading them, bad input.

The teacher runs are built as test_serve builds them (random parameters of
the tiny quickstart NAG-BERT and of the tiny AR baseline, an orbax checkpoint
at step 2 and the operative config.gin; a real training costs ~45 s a run).
Random weights emit the same sentence for every input, which would make an
alignment check vacuous, so `input_dependent` saves a step-3 checkpoint whose
outputs depend on the input (see there). Quality does not matter here, only
that the files hold the model's outputs, aligned with their sources.
"""

import html
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from narlm import compare
from narlm import distill
from narlm import predictor
from narlm import serve
from test_serve import make_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLD = ("dev.src", "dev.tgt", "test.src", "test.tgt")


def input_dependent(model_dir: str, step: int = 3) -> None:
  """Saves a checkpoint at `step` whose outputs depend on the input.

  Layer norms become identities, biases zero, the head's transform the
  identity and the (tied) word embeddings N(0, 1), so the residual stream is
  dominated by each position's own token embedding: the NAG-BERT copies its
  input. The AR decoder's cross-attention passes the (uniformly attended)
  source on, value/out kernels 3 x identity, so its output varies with it.
  """
  import jax
  import orbax.checkpoint as ocp
  from narlm import train
  rng = np.random.default_rng(0)

  def fix(path, value):
    names = [str(getattr(k, "key", k)) for k in path]
    value = np.asarray(value)
    if names[-1] == "scale":
      return np.ones_like(value)
    if names[-1] in ("bias", "output_bias"):
      return np.zeros_like(value)
    if names[-2:] == ["transform", "kernel"]:
      return np.eye(value.shape[0], dtype=value.dtype)
    if names[-2:] == ["word_embeddings", "embedding"]:
      return rng.standard_normal(value.shape).astype(value.dtype)
    if "cross_attention" in names and names[-2] in ("value", "out"):
      return 3 * np.eye(value.shape[0], dtype=value.dtype)
    return value

  params = jax.tree_util.tree_map_with_path(fix, train.restore_params(model_dir))
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), options=options) as manager:
    manager.save(step, args=ocp.args.StandardSave({"step": np.int32(step), "params": params}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  del data_dir  # the vocabulary lives there
  root = tmp_path_factory.mktemp("runs")
  nar, ar = str(root / "nar"), str(root / "ar")
  make_run(nar, ["narlm/gin/tiny_cpu.gin"])
  make_run(ar, ["narlm/gin/tiny_cpu.gin", "narlm/gin/models/ar_tiny.gin"])
  for run in (nar, ar):
    input_dependent(run)
    # As a training run's config.gin binds it: the input length caps the
    # length buckets (16, 32), so few programs are compiled.
    with open(os.path.join(run, "config.gin"), "a") as f:
      f.write("TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 32}\n")
  return {"nar": nar, "ar": ar}


def lines(path):
  with open(path, encoding="utf-8") as f:
    return f.read().split("\n")[:-1]


def args(model_dir, out, method="greedy", *extra, task="sentcomp_bert"):
  return ["--model_dir", str(model_dir), "--method", method, "--task", task,
          "--out", str(out), *extra]


def _decoded_one_at_a_time(model_dir, method, max_length, n):
  """The teacher's outputs for the first n train examples, each at batch 1."""
  loaded = serve.load_model(model_dir)
  kwargs = compare.decode_kwargs(loaded, method)
  gen = predictor.Predictor(loaded.model, loaded.params, max_length=max_length)
  vocab = loaded.model.output_vocabulary
  # Framed as the teacher was trained ([CLS] x [SEP]): distill once fed raw ids.
  return [vocab.decode(gen.predict([gen.prepare(ex["inputs"])], **kwargs)[0])
          for ex in compare.load_examples("sentcomp_bert", "train", n)]


def test_distils_train_copies_gold_and_the_task_reads_it(runs, tmp_path, data_dir, monkeypatch):
  root = tmp_path / "distilled"
  out = root / "sentcomp"
  record = distill.main(args(runs["nar"], out, "argmax", "--limit", "5", "--batch_size", "4"))
  assert sorted(os.listdir(out)) == sorted(("train.src", "train.tgt", "distill.json") + GOLD)
  assert os.listdir(root) == ["sentcomp"]  # no temp dir left behind
  src, tgt = lines(out / "train.src"), lines(out / "train.tgt")
  gold_src = [l.strip() for l in lines(data_dir / "sentcomp" / "train.src") if l.strip()]
  assert src == gold_src[:5] and len(tgt) == 5
  # Each line is the teacher's output for *its* source (batches are sorted
  # by length, so a misalignment would show), decoded here one at a time.
  assert tgt == _decoded_one_at_a_time(runs["nar"], "argmax", record["max_length"], 5)
  assert len(set(tgt)) == 5 and all(tgt)  # not a degenerate, vacuous comparison
  assert tgt != lines(data_dir / "sentcomp" / "train.tgt")[:5]
  for name in GOLD:  # gold references, byte for byte
    assert (out / name).read_bytes() == (data_dir / "sentcomp" / name).read_bytes(), name
  written = json.loads((out / "distill.json").read_text())
  assert written == record
  assert (written["step"], written["method"], written["kind"], written["task"]) == (
      3, "argmax", "NagBertModel", "sentcomp_bert")  # the newest checkpoint
  assert written["model_dir"] == os.path.abspath(runs["nar"])
  assert written["splits"]["train"]["examples"] == 5 and written["max_length"] == 32
  assert written["splits"]["validation"]["examples"] == 1000
  assert written["command"].startswith("python -m narlm.distill --model_dir ")
  assert written["wall_s"] > 0

  # The distilled task reads the files through seqio.
  from narlm import tasks
  from narlm.tasks import sources
  vocab = tasks.get_task_or_mixture("sentcomp_bert").output_features["targets"].vocabulary
  task = tasks.get_task_or_mixture("sentcomp_distilled_bert")
  monkeypatch.delenv(sources.DISTILLED_DIR_ENV, raising=False)
  with pytest.raises(FileNotFoundError, match=r"\$NARLM_DISTILLED_DIR is not set"):
    list(task.get_dataset(None, split="train", shuffle=False))
  monkeypatch.setenv(sources.DISTILLED_DIR_ENV, str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match=r"nowhere/sentcomp.*NARLM_DISTILLED_DIR"):
    list(task.get_dataset(None, split="train", shuffle=False))
  monkeypatch.setenv(sources.DISTILLED_DIR_ENV, str(root))
  train = list(task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
  assert [ex["inputs_pretokenized"].decode() for ex in train] == src
  assert [ex["targets_pretokenized"].decode() for ex in train] == tgt
  assert [vocab.decode(ex["targets"]) for ex in train] == tgt  # round-trips the tokeniser
  assert task.source.num_input_examples("validation") == 1000
  gold_test = tasks.get_task_or_mixture("sentcomp_bert").get_dataset(
      None, split="test", shuffle=False).take(3).as_numpy_iterator()
  ours_test = task.get_dataset(None, split="test", shuffle=False).take(3).as_numpy_iterator()
  for a, b in zip(gold_test, ours_test, strict=True):
    assert a["targets_pretokenized"] == b["targets_pretokenized"]
    assert a["targets"].tolist() == b["targets"].tolist()

  # --overwrite replaces an earlier output, here with the AR teacher.
  with pytest.raises(ValueError, match="exists and is not empty"):
    distill.main(args(runs["ar"], out, "greedy", "--limit", "3"))
  record = distill.main(args(runs["ar"], out, "greedy", "--limit", "3", "--overwrite"))
  assert lines(out / "train.src") == src[:3]
  tgt = lines(out / "train.tgt")
  assert tgt == _decoded_one_at_a_time(runs["ar"], "greedy", record["max_length"], 3)
  assert len(set(tgt)) == 3 and all(tgt)
  assert json.loads((out / "distill.json").read_text())["kind"] == "ArSeq2SeqModel"
  assert os.listdir(root) == ["sentcomp"]


def test_the_teacher_is_the_best_validation_checkpoint(runs, tmp_path):
  """An early-stopped run's newest checkpoint is past its optimum: distill
  decodes with best_checkpoint/<step> (here step 2, random weights: every
  output the same sentence), not the newest (step 3, input-dependent)."""
  import shutil
  import orbax.checkpoint as ocp
  from narlm import train
  run = tmp_path / "run"
  shutil.copytree(runs["nar"], run)
  params = train.restore_params(str(run), step=2)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(run / "best_checkpoint", options=options) as manager:
    manager.save(2, args=ocp.args.StandardSave({"step": np.int32(2), "params": params}))
  record = distill.main(args(run, tmp_path / "out", "argmax", "--limit", "4"))
  assert record["step"] == 2
  tgt = lines(tmp_path / "out" / "train.tgt")
  assert len(set(tgt)) == 1  # the step-2 (random) teacher, not step 3's copies
  assert tgt == _decoded_one_at_a_time(str(run), "argmax", record["max_length"], 4)


def test_a_held_out_line_range_is_written_from_the_task(runs, tmp_path, data_dir):
  """IWSLT's validation split is the last 500 lines of its valid files: not a
  whole file to copy, so its examples' strings are written; test is copied."""
  out = tmp_path / "iwslt"
  record = distill.main(args(runs["nar"], out, "argmax", "--limit", "2",
                             task="iwslt14_de_en_bert"))
  gold = data_dir / "iwslt14_de_en"
  assert (out / "test.src").read_bytes() == (gold / "test.de-en.de").read_bytes()
  assert (out / "test.tgt").read_bytes() == (gold / "test.de-en.en").read_bytes()
  for ours, theirs in (("dev.src", "valid.de-en.de"), ("dev.tgt", "valid.de-en.en")):
    # the task's text: IWSLT14's HTML entities are unescaped (&quot; -> ")
    assert lines(out / ours) == [html.unescape(l.strip()) for l in lines(gold / theirs)[-500:]], ours
  assert len(lines(out / "train.src")) == len(lines(out / "train.tgt")) == 2
  assert record["splits"]["validation"] == {"written_from": "task examples", "examples": 500}


def test_a_failed_run_leaves_no_output_and_keeps_the_old_one(runs, tmp_path, monkeypatch):
  monkeypatch.setattr(distill, "decode_examples",
                      lambda p, k, exs, *a: ([[1996]] * len(exs), 0.0))

  def fail(*a):
    raise RuntimeError("killed while copying")

  monkeypatch.setattr(distill, "_copy_gold", fail)
  out = tmp_path / "out"
  with pytest.raises(RuntimeError, match="killed"):
    distill.main(args(runs["ar"], out, "greedy", "--limit", "2"))
  assert os.listdir(tmp_path) == []
  out.mkdir()
  (out / "distill.json").write_text("{}")
  with pytest.raises(RuntimeError, match="killed"):
    distill.main(args(runs["ar"], out, "greedy", "--limit", "2", "--overwrite"))
  assert os.listdir(tmp_path) == ["out"] and os.listdir(out) == ["distill.json"]


def _gigaword_with_empty_train(path):
  path.mkdir()
  (path / "train.src").write_text("")
  (path / "train.tgt").write_text("")
  for stem in ("dev", "test"):
    (path / f"{stem}.src").write_text("a source sentence\n")
    (path / f"{stem}.tgt").write_text("a target\n")


@pytest.mark.parametrize("case,words", [
    ("missing_run", "--model_dir .*nothing does not exist"),
    ("empty_run", "has no config.gin"),
    ("no_checkpoint", "no complete checkpoint under"),
    ("unknown_task", "Unknown seqio task or mixture 'sentcomp_bret'"),
    ("unknown_split", "task sentcomp_bert has no split 'dev'"),
    ("empty_split", "task 'gigaword_bert' split 'train' has no examples"),
    ("out_not_empty", "exists and is not empty .*pass --overwrite"),
    ("overwrite_foreign", "holds no distill.json"),
    ("ar_method_on_nar", "method 'greedy' needs an AR run"),
    ("nar_method_on_ar", "method 'argmax' needs a NAG-BERT run"),
    ("ratio_first_without_alpha", "needs --alpha"),
])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, monkeypatch, capsys, case, words):
  out, model, method, task, extra = tmp_path / "out", runs["ar"], "greedy", "sentcomp_bert", []
  if case == "missing_run":
    model = tmp_path / "nothing"
  elif case == "empty_run":
    model = tmp_path / "empty"
    model.mkdir()
  elif case == "no_checkpoint":
    model = tmp_path / "config_only"
    model.mkdir()
    (model / "config.gin").write_text(open(os.path.join(runs["ar"], "config.gin")).read())
  elif case == "unknown_task":
    task = "sentcomp_bret"
  elif case == "unknown_split":
    extra = ["--splits", "train,dev"]
  elif case == "empty_split":
    _gigaword_with_empty_train(tmp_path / "giga")
    monkeypatch.setenv("NARLM_GIGAWORD_DIR", str(tmp_path / "giga"))
    task = "gigaword_bert"
  elif case in ("out_not_empty", "overwrite_foreign"):
    out.mkdir()
    (out / "keep.txt").write_text("precious\n")
    extra = ["--overwrite"] if case == "overwrite_foreign" else []
  elif case == "ar_method_on_nar":
    model = runs["nar"]
  elif case == "nar_method_on_ar":
    method = "argmax"
  elif case == "ratio_first_without_alpha":
    model, method = runs["nar"], "ratio_first"
  capsys.readouterr()
  assert distill.run_cli(args(model, out, method, *extra, task=task)) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  assert re.search(words, err), err
  if case in ("out_not_empty", "overwrite_foreign"):
    assert os.listdir(out) == ["keep.txt"]
  else:
    assert not out.exists()
  assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_cli_exit_status(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "narlm.distill", *args(tmp_path / "nothing", tmp_path / "out")],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 2, proc.stderr
  # Checked before TensorFlow/JAX are imported: nothing else on stderr.
  assert proc.stderr == f"error: --model_dir {tmp_path / 'nothing'} does not exist\n"
  assert not (tmp_path / "out").exists()


def test_one_line_replaces_only_line_breaks():
  # A newline inside a teacher output would shift every later line of .tgt.
  assert distill._one_line(" a\r\nb\nc\u2028d ") == "a  b c\u2028d"
