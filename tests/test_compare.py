"""narlm.compare: metrics, baselines, the paired bootstrap, bad input, the
tagger and source framing, and an end-to-end run on real runs."""

import json
import os

import numpy as np
import pytest

from narlm import compare
from narlm import compare_baselines
from train_utils import REPO, run_in_process


def test_token_f1():
  assert compare.token_f1(["a b c"], ["a b c"]) == 100.0
  assert compare.token_f1(["a b c d"], ["x y"]) == 0.0
  # overlap 2 (a, b): precision 2/3, recall 2/4 -> F1 = 4/7
  assert compare.token_f1(["a b c d"], ["a b a"]) == pytest.approx(100 * 4 / 7)
  assert compare.token_f1(["", "a"], ["", ""]) == pytest.approx(50.0)  # both empty = 1
  with pytest.raises(ValueError, match="2 references but 1 predictions"):
    compare.token_f1(["a", "b"], ["a"])


def test_repetition_rate():
  assert compare.repetition_rate([[1, 1, 2, 2, 2], [3]]) == pytest.approx(100 * 3 / 6)
  assert compare.repetition_rate([[1, 2, 1, 2]]) == 0.0
  assert compare.repetition_rate([[], []]) == 0.0


def test_parse_system_errors():
  assert compare.parse_system("ar=/tmp/a:b/run:greedy") == ("ar", "/tmp/a:b/run", "greedy")
  with pytest.raises(ValueError, match="NAME=MODEL_DIR:METHOD"):
    compare.parse_system("/tmp/run:viterbi")
  with pytest.raises(ValueError, match="unknown method 'beam'"):
    compare.parse_system("x=/tmp/run:beam")
  assert compare.parse_system("t=/tmp/run:tag") == ("t", "/tmp/run", "tag")
  assert compare.parse_diff("a, b") == ("a", "b")
  for bad in ("a", "a,a", "a,b,c", ",b", "a+b,b+a"):
    with pytest.raises(ValueError, match="expected A,B"):
      compare.parse_diff(bad)
  assert compare.parse_diff("c0 + c1, n0+n1") == ("c0+c1", "n0+n1")
  for bad in ("a+,b", "a+a,b", "+a,b"):
    with pytest.raises(ValueError, match="distinct names joined by"):
      compare.parse_diff(bad)
  for bad in ("a+b=/tmp/run:argmax", "a,b=/tmp/run:argmax"):
    with pytest.raises(ValueError, match="may not contain"):
      compare.parse_system(bad)


def test_group_differences_average_the_members_per_example():
  def entry(scores, metric="rougeL"):
    return {"test": {"per_example": {"metric": metric, "scores": list(scores)}}}
  rng = np.random.default_rng(0)
  s = {name: rng.uniform(0, 100, 50) for name in ("c0", "c1", "n0", "n1")}
  report = {"systems": {name: entry(v) for name, v in s.items()}}
  (group, single) = compare_baselines.differences(
      report, [("c0+c1", "n0+n1"), ("c0", "n0")], 500, seed=3)
  want = (s["c0"] + s["c1"]) / 2 - (s["n0"] + s["n1"]) / 2
  assert (group["a"], group["b"]) == ("c0+c1", "n0+n1")
  assert group["mean"] == pytest.approx(want.mean())
  assert group == {**group, **compare.paired_bootstrap(want, np.zeros(50), 500, seed=3)}
  assert single["mean"] == pytest.approx((s["c0"] - s["n0"]).mean())
  report["systems"]["b"] = entry(range(50), metric="bleu")
  with pytest.raises(ValueError, match="per-example metrics differ"):
    compare_baselines.differences(report, [("c0+b", "n0")], 10, 0)
  report["systems"]["short"] = entry(range(49))
  with pytest.raises(ValueError, match="different numbers of test examples"):
    compare_baselines.differences(report, [("c0+short", "n0")], 10, 0)
  with pytest.raises(ValueError, match="no system 'c2'"):
    compare_baselines.differences(report, [("c0+c2", "n0")], 10, 0)


# -------------------------------------------------------- baselines, stats
def test_lead_words_takes_the_ceiling_of_r_n():
  ten = " ".join("abcdefghij")
  assert compare_baselines.lead_words(ten, 0.3) == "a b c"  # 0.3 * 10 = 3.0000000000000004
  assert compare_baselines.lead_words(ten, 0.25) == "a b c"  # ceil(2.5)
  assert compare_baselines.lead_words(ten, 0.2) == "a b"
  assert compare_baselines.lead_words(ten, 1.0) == ten
  assert compare_baselines.lead_words("one", 0.2) == "one"
  assert compare_baselines.lead_words("", 0.5) == ""
  assert compare_baselines.LEAD_RATIOS[0] == 0.2 and compare_baselines.LEAD_RATIOS[-1] == 1.0
  assert len(compare_baselines.LEAD_RATIOS) == 17
  assert compare_baselines.parse_baselines("lead", ()) == ("lead",)
  assert compare_baselines.parse_baselines("none", ("copy",)) == ()
  assert compare_baselines.parse_baselines(None, ("copy",)) == ("copy",)
  with pytest.raises(ValueError, match="unknown baseline"):
    compare_baselines.parse_baselines("copy,oracle", ())
  with pytest.raises(ValueError, match=r"in \(0, 1\]"):
    compare_baselines.parse_ratios("0.5,1.5")


def test_sentence_scores_use_the_task_metric_settings():
  from narlm.tasks import metrics
  refs = ["the dogs were running home", "a b c", "completely different words here"]
  preds = ["the dog ran home", "a b c", "nothing in common"]
  scores = compare_baselines.sentence_scores("rougeL", refs, preds)
  assert scores[1] == 100.0 and scores[2] == 0.0
  # Stemming: "dogs"/"dog" and "running"/"run" match as in metrics.rouge.
  assert np.mean(scores) == pytest.approx(metrics.rouge(refs, preds)["rougeL"], abs=1e-9)
  bleu = compare_baselines.sentence_scores("sentence_bleu", refs, preds)
  assert bleu[1] == pytest.approx(100.0) and bleu[2] == 0.0
  with pytest.raises(ValueError, match="unknown per-example metric"):
    compare_baselines.sentence_scores("meteor", refs, preds)


def test_paired_bootstrap_known_answers():
  rng = np.random.default_rng(0)
  b = rng.integers(0, 400, size=300) / 4.0  # exact in binary: a - b is exact
  same = compare.paired_bootstrap(b, b, 2000, seed=0)
  assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}
  shifted = compare.paired_bootstrap(b + 2.5, b, 2000, seed=0)
  assert shifted == {"mean": 2.5, "low": 2.5, "high": 2.5}
  # Noisy differences: the interval is the sampling spread of the mean
  # (about +-1.96 sd / sqrt(n)), and deterministic for a seed.
  noise = rng.standard_normal(400)
  clear = compare.paired_bootstrap(b[:300] + 0.5 + noise[:300], b[:300], 2000, seed=1)
  assert clear["low"] > 0 and clear["low"] < clear["mean"] < clear["high"]
  half_width = 1.96 * noise[:300].std() / np.sqrt(300)
  assert (clear["high"] - clear["low"]) / 2 == pytest.approx(half_width, rel=0.15)
  assert compare.paired_bootstrap(b[:300] + 0.5 + noise[:300], b[:300], 2000, seed=1) == clear
  centred = noise - noise.mean()
  null = compare.paired_bootstrap(centred, np.zeros(400), 2000, seed=2)
  assert null["low"] < 0 < null["high"] and null["mean"] == pytest.approx(0, abs=1e-12)
  with pytest.raises(ValueError, match="equally long"):
    compare.paired_bootstrap([1.0, 2.0], [1.0], 10, 0)
  with pytest.raises(ValueError, match="at least one"):
    compare.paired_bootstrap([], [], 10, 0)


def test_baselines_need_no_model(tmp_path):
  """copy and lead (the defaults of a ROUGE task) are scored like systems;
  --diff bootstraps their per-example scores."""
  from narlm import tasks
  from narlm.tasks import metrics
  out = tmp_path / "quality.json"
  report = compare.main(["--task", "sentcomp_bert", "--limit", "30", "--latency_examples", "3",
                         "--diff", "copy,lead", "--bootstrap_samples", "500", "--out", str(out)])
  assert list(report["systems"]) == ["copy", "lead"]
  copy, lead = report["systems"]["copy"], report["systems"]["lead"]
  assert copy["kind"] == lead["kind"] == "baseline"
  assert copy["latency_ms_batch1"] >= 0 and "ms_per_sentence_batch32" in copy
  # copy: the task's own metric of (normalised source, reference).
  task = tasks.get_task_or_mixture("sentcomp_bert")
  test = compare.load_examples("sentcomp_bert", "test", 30)
  targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
             for ex in test]
  assert copy["test"]["rougeL"] == pytest.approx(
      metrics.rouge(targets, [t["source"] for t in targets])["rougeL"])
  # lead: r maximises validation ROUGE-L; r = 1 is the copy baseline.
  sweep = lead["ratio_sweep"]
  assert set(sweep) == {f"{r:g}" for r in compare_baselines.LEAD_RATIOS}
  assert sweep[f"{lead['ratio']:g}"]["rougeL"] == max(r["rougeL"] for r in sweep.values())
  assert sweep["1"]["rougeL"] == pytest.approx(copy["validation"]["rougeL"])
  assert lead["test"]["mean_output_tokens"] < copy["test"]["mean_output_tokens"]
  for entry in (copy, lead):
    per = entry["test"]["per_example"]
    assert per["metric"] == "rougeL" and len(per["scores"]) == 30
    assert np.mean(per["scores"]) == pytest.approx(entry["test"]["rougeL"], abs=1e-3)
  (diff,) = report["differences"]
  assert (diff["a"], diff["b"], diff["metric"]) == ("copy", "lead", "rougeL")
  assert diff["mean"] == pytest.approx(
      np.mean(copy["test"]["per_example"]["scores"]) -
      np.mean(lead["test"]["per_example"]["scores"]))
  assert diff["low"] <= diff["mean"] <= diff["high"]
  text = out.read_text()
  assert json.loads(text)["tasks"]["sentcomp_bert"]["differences"] == report["differences"]
  scores_line = next(l for l in text.splitlines() if '"scores": [' in l)
  assert scores_line.count(",") == 29  # one line for the 30 scores
  table = compare.to_markdown(json.loads(text))
  assert f"| lead | lead | {lead['ratio']:g} |" in table and "| copy | copy |" in table
  assert "| copy − lead | rougeL |" in table


# ------------------------------------------------------------- bad input
def make_run(model_dir, gin_files, bindings=(), seed=0, checkpoint=True):
  """A run directory as narlm.train leaves it (config.gin + checkpoints/<step>),
  with random parameters (as tests/test_serve.py builds its runs)."""
  import gin
  import jax
  import orbax.checkpoint as ocp
  from narlm import train
  gin.clear_config()
  try:
    train.parse_gin(gin_files, [f'MODEL_DIR = "{model_dir}"', *bindings])
    model = gin.config.ConfigurableReference("MODEL/gin.macro", True).scoped_configurable_fn()
    abstract = jax.eval_shape(
        lambda r: model.get_initial_variables(r, {"encoder_input_tokens": (1, 8)}),
        jax.random.PRNGKey(seed))
    config = gin.operative_config_str()
  finally:
    gin.clear_config()
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(config)
  if checkpoint:
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) * 0.05).astype(s.dtype), abstract["params"])
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), options=options) as m:
      m.save(1, args=ocp.args.StandardSave({"step": np.int32(1), "params": params}))


TINY_TAGGER = (["narlm/gin/models/tagger_minilm_l6.gin", "narlm/gin/runs/train.gin"],
               ["MIXTURE_OR_TASK_NAME = 'sentcomp_bert'",
                "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 32}", "TRAIN_STEPS = 1",
                "BATCH_SIZE = 2", "encoder.bert_config.hidden_size = 32",
                "encoder.bert_config.num_layers = 1", "encoder.bert_config.num_heads = 2",
                "encoder.bert_config.intermediate_size = 64"])


@pytest.fixture(scope="module")
def tagger_run(tmp_path_factory, data_dir):
  del data_dir  # the vocabulary lives there
  run = str(tmp_path_factory.mktemp("runs") / "tagger")
  make_run(run, *TINY_TAGGER)
  return run


def test_bad_run_dirs_name_the_system(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"--system x: run directory .*nothing does not "
                     "exist"):
    compare.main(["--task", "sentcomp_bert", "--system", f"x={tmp_path}/nothing:argmax",
                  "--limit", "2"])
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"--system y: run directory .*empty is empty"):
    compare.main(["--task", "sentcomp_bert", "--system", f"y={tmp_path}/empty:tag",
                  "--limit", "2"])
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="other has no config.gin"):
    compare.main(["--task", "sentcomp_bert", "--system", f"y={tmp_path}/other:tag",
                  "--limit", "2"])
  make_run(str(tmp_path / "no_ckpt"), *TINY_TAGGER, checkpoint=False)
  with pytest.raises(FileNotFoundError, match=r"--system z: run directory .*no_ckpt: no "
                     "checkpoints under"):
    compare.main(["--task", "sentcomp_bert", "--system", f"z={tmp_path}/no_ckpt:tag",
                  "--limit", "2", "--baselines", "none"])


def test_vocabulary_mismatch_is_refused_before_decoding(tagger_run):
  # A BERT-vocabulary run on the T5-tokenised task: its ids mean other tokens.
  with pytest.raises(ValueError, match=r"--system t: the run in .* has input vocabulary "
                     r"WordPieceVocabulary .*task 'sentcomp_t5' tokenises its inputs with "
                     "SentencePieceVocabulary"):
    compare.main(["--task", "sentcomp_t5", "--system", f"t={tagger_run}:tag", "--limit", "2"])


EMPTY_TEST_TASK = "narlm_compare_test_empty_test_split"


def _register_empty_test_split_task():
  import seqio
  import tensorflow as tf
  from narlm.tasks import finetuning, metrics
  if EMPTY_TEST_TASK in seqio.TaskRegistry.names():
    return

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    n = 0 if split == "test" else 2
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant(["a long source sentence ."] * n, tf.string),
        "targets": tf.constant(["a sentence ."] * n, tf.string)})

  seqio.TaskRegistry.add(
      EMPTY_TEST_TASK, source=seqio.FunctionDataSource(dataset_fn, splits=["validation", "test"]),
      output_features=finetuning.BERT_FEATURES, preprocessors=[seqio.preprocessors.tokenize],
      postprocess_fn=finetuning.prep.postprocess_for(finetuning.BERT),
      metric_fns=[metrics.rouge])


def test_empty_split_and_bad_flags(capsys, data_dir):
  del data_dir
  _register_empty_test_split_task()
  with pytest.raises(ValueError, match=f"task '{EMPTY_TEST_TASK}' split 'test' has no examples"):
    compare.main(["--task", EMPTY_TEST_TASK])
  # The CLI: one line on stderr, exit status 2.
  capsys.readouterr()
  assert compare.cli(["--task", EMPTY_TEST_TASK]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "split 'test'" in err
  for argv, message in (
      (["--diff", "copy,nar"], "--diff copy,nar: no system named 'nar'"),
      (["--baselines", "none"], "nothing to compare"),
      (["--baselines", "copy,copy"], "names a baseline twice"),
      (["--baselines", "copy", "--system", "copy=/x:tag"], "names must be unique")):
    with pytest.raises(ValueError, match=message):
      compare.main(["--task", "sentcomp_bert", "--limit", "2", *argv])


# -------------------------------------------------------- tagger, framing
def test_tagger_run_is_compared_with_method_tag(tagger_run):
  report = compare.main(["--task", "sentcomp_bert", "--limit", "4", "--latency_examples", "2",
                         "--batch_size", "4", "--baselines", "copy",
                         "--system", f"tagger={tagger_run}:tag", "--diff", "tagger,copy"])
  entry = report["systems"]["tagger"]
  assert entry["kind"] == "TaggerModel" and entry["method"] == "tag"
  assert entry["test"]["examples"] == 4 and len(entry["test"]["per_example"]["scores"]) == 4
  assert np.isfinite(entry["test"]["rougeL"]) and entry["latency_ms_batch1"] > 0
  assert report["differences"][0]["a"] == "tagger"
  with pytest.raises(ValueError, match=r"method 'viterbi' needs a NAG-BERT run, this is "
                     r"TaggerModel \(use :tag\)"):
    compare.main(["--task", "sentcomp_bert", "--limit", "2", "--baselines", "none",
                  "--system", f"x={tagger_run}:viterbi"])


SMALL = ["--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.BATCH_SIZE=4",
         "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_ASYNC=False", "--gin.WARMUP_STEPS=0",
         "--gin.EVAL_STEPS=1", "--gin.EVALUATOR_NUM_EXAMPLES=8"]


# Trains two MiniLM runs (~3 min on 2 cores): CI's slow pass, keeping the
# default suite under its ~15 min budget.
@pytest.mark.slow
def test_cpu_budget_stops_training_and_compare_reads_the_runs(tmp_path):
  """The two sentcomp comparison gins (NAR+CRF, BERT2BERT AR from MiniLM)
  warm-start as documented and train under a CPU budget that stops them
  early, and narlm.compare scores
  the runs: a NAR system, a ratio-first system with its alpha chosen on
  validation, and the AR system."""
  runs = {}
  for name in ("crf", "ar"):
    runs[name] = tmp_path / name
    # WARMUP_STEPS=1: the one step runs at learning rate 0, so the weights
    # are still the warm start's (checked below).
    metrics = run_in_process(runs[name], "--gin.MAX_TRAIN_CPU_SECONDS=0.001", *SMALL,
                             "--gin.WARMUP_STEPS=1",
                             gin_file=f"narlm/gin/compare/sentcomp_minilm_{name}.gin")
    records = [json.loads(l) for l in (runs[name] / "train_metrics.jsonl").read_text().splitlines()]
    # The budget is checked before every step after the first: one step, then stop.
    assert records[-1] == {"step": 1, "train/cpu_seconds": pytest.approx(
        records[-1]["train/cpu_seconds"]), "train/stopped_by_cpu_budget": 1.0}
    assert records[-1]["train/cpu_seconds"] > 0
    assert (runs[name] / "checkpoints" / "1").is_dir()
    assert np.isfinite(metrics["eval/loss"])  # the final evaluation still ran
  # BERT2BERT: the AR decoder starts from MiniLM's encoder layers.
  from narlm import hf_bert, train
  _, hf = hf_bert.load_hf_bert(hf_bert.minilm_checkpoint_dir())
  params = train.restore_params(str(runs["ar"]))
  for layer, path in (("layers_3", ("attention", "query", "kernel")),
                      ("layers_5", ("mlp", "wo", "kernel"))):
    ours, theirs = params["decoder"][layer], hf["encoder"][layer]
    for k in path:
      ours, theirs = ours[{"attention": "self_attention"}.get(k, k)], theirs[k]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)
  out = tmp_path / "quality.json"
  out.write_text(json.dumps({"tasks": {"other": {"kept": True}}}))
  report = compare.main([
      "--task", "sentcomp_bert", "--key", "sentcomp", "--limit", "6", "--latency_examples", "2",
      "--batch_size", "4", "--alphas", "0.5,1.5",
      "--system", f"nar_crf={runs['crf']}:viterbi",
      "--system", f"nar_crf_ratio_first={runs['crf']}:ratio_first",
      "--system", f"ar={runs['ar']}:greedy", "--out", str(out)])
  document = json.loads(out.read_text())
  assert document["tasks"]["other"] == {"kept": True}
  assert document["tasks"]["sentcomp"]["systems"].keys() == report["systems"].keys()
  assert report["metric"] == "rougeL"
  rf = report["systems"]["nar_crf_ratio_first"]
  assert rf["alpha"] in (0.5, 1.5) and set(rf["alpha_sweep"]) == {"0.5", "1.5"}
  best = max(rf["alpha_sweep"].values(), key=lambda r: r["rougeL"])
  assert rf["validation"]["rougeL"] == best["rougeL"]
  for name, entry in report["systems"].items():
    test = entry["test"]
    for key in ("rouge1", "rouge2", "rougeL", "token_f1", "repetition_rate",
                "reference_repetition_rate", "mean_output_tokens", "ms_per_sentence_batch4"):
      assert np.isfinite(test[key]), (name, key)
    assert test["examples"] == 6 and len(test["samples"]) == 3
    assert entry["latency_ms_batch1"] > 0
    if entry["kind"] != "baseline":
      assert entry["train"]["step"] == 1
  assert list(report["systems"])[-2:] == ["copy", "lead"]  # the default baselines
  assert report["systems"]["ar"]["kind"] == "ArSeq2SeqModel"
  table = compare.to_markdown(document)
  assert "**sentcomp** (6 test examples" in table
  assert table.count("| nar_crf_ratio_first | ratio_first |") == 1
  assert "| ar | greedy |" in table and "1.0×" in table  # AR vs itself
  # Ratio-first with alpha 0.5 keeps floor(0.5 n) + 2 positions: never more.
  with pytest.raises(ValueError, match="needs an AR run"):
    compare.main(["--task", "sentcomp_bert", "--limit", "2",
                  "--system", f"x={runs['crf']}:greedy"])


@pytest.mark.slow
@pytest.mark.parametrize("gin_file", sorted(
    p.name for p in (REPO / "narlm" / "gin" / "compare").glob("*_minilm_*.gin")
    # These two are trained by the end-to-end test above.
    if p.name not in ("sentcomp_minilm_crf.gin", "sentcomp_minilm_ar.gin")))
def test_every_other_compare_gin_runs_one_step(tmp_path, gin_file, data_dir, monkeypatch):
  if "_distilled" in gin_file:  # reads $NARLM_DISTILLED_DIR/sentcomp: a small stand-in
    root = tmp_path / "distilled" / "sentcomp"
    root.mkdir(parents=True)
    for name in ("train", "dev", "test"):
      for ext in ("src", "tgt"):
        lines = (data_dir / "sentcomp" / f"{name}.{ext}").read_text(encoding="utf-8")
        (root / f"{name}.{ext}").write_text("".join(lines.splitlines(True)[:64]),
                                            encoding="utf-8")
    monkeypatch.setenv("NARLM_DISTILLED_DIR", str(tmp_path / "distilled"))
  metrics = run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", *SMALL,
                           gin_file=f"narlm/gin/compare/{gin_file}")
  assert np.isfinite(metrics["train/loss"])
