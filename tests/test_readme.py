"""The README's code stays true: its task example registers a working task,
and its first two commands are the ones .ci/run and users run."""

import re

import seqio

from conftest import REPO


def test_readme_add_task_example_registers_a_working_task(data_dir):
  import narlm.tasks  # noqa: F401
  text = (REPO / "README.md").read_text()
  code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  code = code.replace("/data/my_task", str(data_dir / "sentcomp"))
  if "my_task_bert" in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove("my_task_bert")
  exec(compile(code, "README.md", "exec"), {})  # as printed: its own imports
  ds = seqio.get_mixture_or_task("my_task_bert").get_dataset(
      {"inputs": 32, "targets": 32}, split="validation", shuffle=False)
  example = next(iter(ds))
  assert example["inputs"].shape[0] > 0 and example["targets"].shape[0] > 0
  seqio.TaskRegistry.remove("my_task_bert")


def test_readme_user_module_task_is_found_through_a_gin_import(data_dir, tmp_path, monkeypatch):
  """The README's recipe for a task in the user's own module: a gin `import`."""
  import gin
  from narlm import train
  text = (REPO / "README.md").read_text()
  code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  (tmp_path / "my_tasks.py").write_text(code.replace("/data/my_task", str(data_dir / "sentcomp")))
  experiment = re.search(r"```\n(from __gin__ import dynamic_registration\nimport my_tasks\n.*?)```",
                         text, re.S).group(1)
  (tmp_path / "my_experiment.gin").write_text(experiment)
  monkeypatch.syspath_prepend(str(tmp_path))
  if "my_task_bert" in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove("my_task_bert")
  gin.clear_config()
  try:
    train.parse_gin([str(tmp_path / "my_experiment.gin")], ['MODEL_DIR = "/tmp/unused"'])
    assert gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value") == "my_task_bert"
    assert "my_task_bert" in seqio.TaskRegistry.names()
  finally:
    gin.clear_config()
    seqio.TaskRegistry.remove("my_task_bert")


def test_readme_starts_with_the_main_job_and_the_test_command():
  text = (REPO / "README.md").read_text()
  commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
  assert commands[0].startswith("bash scripts/setup.sh && .venv/bin/python -m narlm.train")
  assert "quickstart_cpu.gin" in commands[0]
  assert commands[1] == "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
  assert commands[1] in (REPO / ".ci" / "run").read_text()
