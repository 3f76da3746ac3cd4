"""scripts/quality_comparison.sh's orchestration, with a stand-in Python.

The script trains for hours; what can go wrong in it without any training is
the order (a distilled arm must not start before its teacher has been trained
and the training split distilled), the reuse of finished runs, and the systems
and differences handed to narlm.compare. A fake interpreter records each call
(module, arguments, NARLM_DISTILLED_DIR) and makes the files the real modules
would leave behind.
"""

import json
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]

FAKE_PYTHON = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as f:
  f.write(json.dumps({"args": args, "distilled_dir": os.environ.get("NARLM_DISTILLED_DIR")}) + "\n")
module = args[1]
if os.environ.get("FAIL_RUN") and any(os.environ["FAIL_RUN"] in a for a in args):
  sys.exit(1)
if module == "narlm.train":
  model_dir = next(a for a in args if a.startswith("--gin.MODEL_DIR=")).split("=", 1)[1].strip('"')
  os.makedirs(model_dir)
elif module == "narlm.distill":
  out = args[args.index("--out") + 1]
  os.makedirs(out)
  open(os.path.join(out, "distill.json"), "w").write("{}")
"""


def run_script(tmp_path, systems, seed="0", fail_run="", check=True):
  python = tmp_path / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  calls = tmp_path / "calls.jsonl"
  calls.unlink(missing_ok=True)
  calls.touch()
  env = dict(os.environ, PYTHON=str(python), CALLS=str(calls), SYSTEMS=systems, SEED=seed,
             BUDGET="7", FAIL_RUN=fail_run)
  result = subprocess.run(["bash", "scripts/quality_comparison.sh", str(tmp_path / "out")],
                          cwd=REPO, env=env, check=check, capture_output=True, text=True,
                          timeout=60)
  return [json.loads(line) for line in calls.read_text().splitlines()], result


def trained_dirs(calls):
  return [next(a for a in c["args"] if a.startswith("--gin.MODEL_DIR=")).rsplit("/", 1)[1].strip('"')
          for c in calls if c["args"][1] == "narlm.train"]


def test_distilled_arms_wait_for_the_teacher_and_the_distilled_split(tmp_path):
  calls, _ = run_script(tmp_path, "crf_aligned crf_distilled nar_distilled prefix_lm_distilled")
  modules = [c["args"][1] for c in calls]
  distill = modules.index("narlm.distill")
  before, after = trained_dirs(calls[:distill]), trained_dirs(calls[distill:])
  assert sorted(before) == ["sentcomp_crf_aligned_s0", "sentcomp_tagger_s0"]
  assert sorted(after) == ["sentcomp_crf_distilled_s0", "sentcomp_nar_distilled_s0",
                           "sentcomp_prefix_lm_distilled_s0"]
  out = str(tmp_path / "out")
  assert calls[distill]["args"][2:] == ["--model_dir", f"{out}/sentcomp_tagger_s0", "--method",
                                        "tag", "--task", "sentcomp_bert", "--out",
                                        f"{out}/distilled/sentcomp"]
  assert all(c["distilled_dir"] == f"{out}/distilled" for c in calls)
  for c in calls:
    if c["args"][1] == "narlm.train":
      assert "--gin.MAX_TRAIN_CPU_SECONDS=7" in c["args"]
  compare = calls[-1]["args"]
  assert compare[1] == "narlm.compare" and modules.count("narlm.compare") == 1
  systems = [compare[i + 1] for i, a in enumerate(compare) if a == "--system"]
  assert f"distilled_nar={out}/sentcomp_nar_distilled_s0:argmax" in systems
  assert f"distilled_ar_prefix_lm={out}/sentcomp_prefix_lm_distilled_s0:greedy" in systems
  diffs = [compare[i + 1] for i, a in enumerate(compare) if a == "--diff"]
  assert "distilled_crf,distilled_nar" in diffs and "distilled_crf,distilled_crf_argmax" in diffs


def test_finished_runs_and_distillation_are_reused(tmp_path):
  run_script(tmp_path, "crf_distilled tagger")
  calls, _ = run_script(tmp_path, "crf_distilled tagger")
  assert [c["args"][1] for c in calls] == ["narlm.compare"]


def test_the_teacher_is_the_seed_0_tagger_whatever_the_seed(tmp_path):
  calls, _ = run_script(tmp_path, "tagger nar_distilled", seed="1")
  assert trained_dirs(calls) == ["sentcomp_tagger_s1", "sentcomp_tagger_s0",
                                 "sentcomp_nar_distilled_s1"]
  teacher_call = [c for c in calls if c["args"][1] == "narlm.train"][1]
  assert "--gin.RANDOM_SEED=0" in teacher_call["args"]


def test_a_failed_training_stops_the_script_after_the_others_finish(tmp_path):
  calls, result = run_script(tmp_path, "crf_aligned nar_aligned tagger", fail_run="crf_aligned",
                             check=False)
  assert result.returncode != 0 and "a training failed" in result.stderr
  assert sorted(trained_dirs(calls)) == ["sentcomp_crf_aligned_s0", "sentcomp_nar_aligned_s0",
                                         "sentcomp_tagger_s0"]
  assert "narlm.compare" not in [c["args"][1] for c in calls]


def test_an_unknown_system_stops_the_script_before_any_training(tmp_path):
  calls, result = run_script(tmp_path, "crf_aligned crf_distiled", check=False)
  assert result.returncode == 2 and "unknown system crf_distiled" in result.stderr
  assert calls == []
