"""One error contract for the entry points (narlm.cli_errors): a user error is
one `error: ...` line naming the flag/file/value and exit status 2; a bug
keeps its traceback. In-process and fast; narlm.train's and narlm.serve's own
console entry points are tested in test_train.py / test_serve.py.
"""

import pytest

from narlm import cli_errors


def _run(capsys, fn, argv):
  status = fn(argv)
  err = capsys.readouterr().err.strip().splitlines()
  return status, [l for l in err if l.startswith("error: ")]


def _damaged_run(tmp_path):
  """A run dir whose only checkpoint step has a damaged metadata file."""
  run = tmp_path / "damaged"
  step = run / "checkpoints" / "3"
  step.mkdir(parents=True)
  (run / "config.gin").write_text("include 'narlm/gin/models/tiny.gin'\nOPTIMIZER = None\n")
  (step / "_CHECKPOINT_METADATA").write_text("{not json")
  return run


def _compare(argv):
  from narlm import compare
  return compare.cli(argv)


def _distill(argv):
  from narlm import distill
  return distill.run_cli(argv)


def _bench(argv):
  from narlm import bench
  return cli_errors.run(bench.main, argv)


def _t5x_checkpoints(argv):
  from narlm import t5x_checkpoints
  return cli_errors.run(t5x_checkpoints.main, argv)


CASES = [
    ("compare", _compare, lambda t: ["--task", "no_such_task", "--system", f"x={t}:argmax"],
     r"no_such_task"),
    ("compare", _compare, lambda t: ["--task", "sentcomp_bert", "--system", f"x={t}/nowhere:argmax"],
     r"nowhere"),
    ("compare", _compare, lambda t: ["--task", "sentcomp_bert", "--out", f"{t}/no_dir/q.json"],
     r"--out .*no_dir"),
    ("distill", _distill, lambda t: ["--model_dir", f"{t}/nowhere", "--method", "argmax",
                                     "--task", "sentcomp_bert", "--out", f"{t}/out"], r"nowhere"),
    ("bench", _bench, lambda t: ["--quick", "--lengths", "a"], r"--lengths 'a'"),
    ("bench", _bench, lambda t: ["--quick", "--sections", "nope"], r"nope"),
    ("t5x_checkpoints", _t5x_checkpoints,
     lambda t: ["--model_dir", f"{t}/nowhere", "--out", f"{t}/o"], r"nowhere"),
]


@pytest.mark.parametrize("name,fn,argv,named", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_user_error_is_one_line_and_exit_2(tmp_path, capsys, name, fn, argv, named):
  import re
  status, errors = _run(capsys, fn, argv(str(tmp_path)))
  assert status == 2, name
  assert len(errors) == 1 and re.search(named, errors[0]), errors


def test_unwritable_destination_and_damaged_checkpoint_are_user_errors(tmp_path, capsys):
  def write(argv):
    raise PermissionError(13, "Permission denied", str(tmp_path / "out"))
  status, errors = _run(capsys, lambda argv: cli_errors.run(write, argv), [])
  assert status == 2 and errors and "Permission denied" in errors[0]
  from narlm import checkpoints
  def damaged(argv):
    raise checkpoints.CorruptCheckpointError("checkpoint step 3 at /x/3 is damaged", step=3,
                                             path="/x/3")
  status, errors = _run(capsys, lambda argv: cli_errors.run(damaged, argv), [])
  assert status == 2 and errors == ["error: checkpoint step 3 at /x/3 is damaged"]


def test_a_bug_keeps_its_traceback():
  def buggy(argv):
    return {}["missing"]
  with pytest.raises(KeyError):
    cli_errors.run(buggy, [])


def test_the_trainer_console_uses_the_same_error_prefix():
  """narlm.train reports through logging; its console lines carry the same
  lower-case `error: ` / `warning: ` prefix as the other entry points."""
  import logging
  from narlm import console
  fmt = console._ConsoleFormatter()  # pylint: disable=protected-access

  def line(level, msg, *args):
    return fmt.format(logging.LogRecord("root", level, __file__, 1, msg, args, None))

  assert line(logging.ERROR, "could not parse gin config %s", "['bad.gin']") == (
      "error: could not parse gin config ['bad.gin']")
  assert line(logging.WARNING, "OUTPUT_VOCAB lacks %s", "5%") == "warning: OUTPUT_VOCAB lacks 5%"


def test_progress_eta_follows_the_cpu_budget_when_it_stops_the_run_first():
  from narlm import console as console_lib
  metrics = {"train/loss": 2.0}
  plain = console_lib.progress_line(50, 100000, metrics, 0.5, 99950)
  assert "ETA 55h" in plain and "budget" not in plain
  budget = console_lib.progress_line(50, 100000, metrics, 0.5, 99950, budget_eta_seconds=600)
  assert budget.endswith("ETA 10m00s (CPU budget)")
  later = console_lib.progress_line(50, 100, metrics, 0.5, 50, budget_eta_seconds=600)
  assert later.endswith("ETA 1m40s")  # the last step comes before the budget
