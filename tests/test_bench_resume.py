"""python -m narlm.bench_resume on a tiny config (seconds)."""

import json


def test_bench_resume_times_replay_and_restore_of_the_same_batch(tmp_path, capsys):
  """python -m narlm.bench_resume: both resumes must reach the uninterrupted
  stream's next batch (it raises otherwise); the JSON carries both times."""
  from narlm import bench_resume
  out = tmp_path / "resume.json"
  assert bench_resume.main(["--gin_file=narlm/gin/tiny_cpu.gin", "--step", "4",
                            "--gin", "BATCH_SIZE=4", "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  assert result["task"] == "sentcomp_bert" and result["batch_size"] == 4
  assert result["same_batch_after_resume"] is True
  assert result["resume_replay_seconds"] > 0 and result["resume_restore_seconds"] > 0
  assert json.loads(capsys.readouterr().out) == result
