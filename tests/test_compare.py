"""narlm.compare: metrics, CLI checks, and an end-to-end run on real runs."""

import json

import numpy as np
import pytest

from narlm import compare
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


def test_missing_run_dir_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.gin not found"):
    compare.main(["--task", "sentcomp_bert", "--system", f"x={tmp_path}/nothing:argmax",
                  "--limit", "2"])


SMALL = ["--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.BATCH_SIZE=4",
         "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_ASYNC=False", "--gin.WARMUP_STEPS=0",
         "--gin.EVAL_STEPS=1"]


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
    assert entry["train"]["step"] == 1
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
def test_every_other_compare_gin_runs_one_step(tmp_path, gin_file):
  metrics = run_in_process(tmp_path / "run", "--gin.TRAIN_STEPS=1", *SMALL,
                           gin_file=f"narlm/gin/compare/{gin_file}")
  assert np.isfinite(metrics["train/loss"])
