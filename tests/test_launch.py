"""Tests of the launch scripts (launch/tpu/*.sh, launch/slurm/*): shellcheck,
--help, dry-run output, required-argument errors, and the real (non-dry-run)
code paths against stub gcloud/sbatch/srun commands. The TPU workers' side
(the --command scripts) is run for real in a fake $HOME standing in for one
worker. No gcloud, SLURM or network needed; a few seconds.

CI needs shellcheck: `apt-get install -y shellcheck` (the test is skipped,
saying so, when it is not installed).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU = LAUNCH / "tpu"
SLURM = LAUNCH / "slurm"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
ENTRY_POINTS = [p for p in SCRIPTS if p.name != "lib.sh"]
TPU_FLAGS = ["--name", "narlm-v4-32", "--zone", "us-central2-b"]
PRETRAIN = ["--gin_file=narlm/gin/pretrain_base.gin", "--model-dir=gs://bucket/narlm/pretrain_base"]

# A stand-in for gcloud/sbatch/srun: records its argv (one JSON file per call)
# and, for `gcloud compute tpus tpu-vm ssh/scp`, acts as a single TPU worker
# whose $HOME is $STUB_HOME.
STUB = r'''#!PYTHON
import json, os, pathlib, shutil, subprocess, sys
calls = pathlib.Path(os.environ["STUB_CALLS"])
n = len(list(calls.iterdir()))
name = os.path.basename(sys.argv[0])
(calls / f"{n:03d}.json").write_text(json.dumps([name] + sys.argv[1:]))
args = sys.argv[1:]
if name == "gcloud" and args[:3] == ["compute", "tpus", "tpu-vm"] and os.environ.get("STUB_HOME"):
    home = os.environ["STUB_HOME"]
    if args[3] == "ssh":
        command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
        env = dict(os.environ, HOME=home)
        sys.exit(subprocess.run(["sh", "-c", command], cwd=home, env=env).returncode)
    if args[3] == "scp":
        src, dest = args[4], args[5].split(":", 1)[1]
        shutil.copy(src, os.path.join(home, dest))
if name == "sbatch":
    print(f"{1000 + n};cluster")
sys.exit(int(os.environ.get("STUB_RC", "0")))
'''


@pytest.fixture
def sandbox(tmp_path):
  """Environment with stub gcloud/sbatch/srun first on PATH; returns a runner."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  stub = STUB.replace("PYTHON", sys.executable)
  for name in ("gcloud", "sbatch", "srun"):
    path = bin_dir / name
    path.write_text(stub)
    path.chmod(0o755)
  calls = tmp_path / "calls"
  calls.mkdir()
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "NARLM_TPU_", "NARLM_REMOTE", "DRY_RUN", "JAX_PLATFORMS"))}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STUB_CALLS=str(calls),
             TMPDIR=str(tmp_path))

  class Sandbox:
    path = tmp_path

    def run(self, script, *args, extra_env=None, timeout=20):
      e = dict(env, **(extra_env or {}))
      return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                            env=e, cwd=REPO, timeout=timeout)

    def calls(self):
      return [json.loads(p.read_text()) for p in sorted(calls.iterdir())]

  return Sandbox()


def remote_command(argv):
  """The --command=... script of a recorded/printed gcloud ssh call."""
  return next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))


# ----------------------------------------------------------------- static
def test_every_script_is_found():
  names = {str(p.relative_to(LAUNCH)) for p in SCRIPTS}
  assert {"lib.sh", "tpu/lib.sh", "tpu/create.sh", "tpu/setup.sh", "tpu/train.sh",
          "tpu/logs.sh", "tpu/stop.sh", "tpu/delete.sh", "slurm/train.sbatch",
          "slurm/submit.sh"} <= names


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (CI: apt-get install -y shellcheck)")
  result = subprocess.run(["shellcheck", "-x", "-s", "bash", *map(str, SCRIPTS)],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=lambda p: p.name)
def test_strict_mode_and_executable(script):
  text = script.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in text
  assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=lambda p: p.name)
def test_help(sandbox, script):
  result = sandbox.run(script, "--help")
  assert result.returncode == 0, result.stderr
  assert "Usage:" in result.stdout
  assert sandbox.calls() == []


# ------------------------------------------------------- required arguments
@pytest.mark.parametrize("script,args,missing", [
    (TPU / "create.sh", ["--zone", "z", "--accelerator-type", "v4-32"], "--name"),
    (TPU / "create.sh", ["--name", "n", "--accelerator-type", "v4-32"], "--zone"),
    (TPU / "create.sh", ["--name", "n", "--zone", "z"], "--accelerator-type"),
    (TPU / "setup.sh", ["--zone", "z"], "--name"),
    (TPU / "train.sh", [*TPU_FLAGS, "--model-dir=gs://b/x"], "--gin_file"),
    (TPU / "train.sh", [*TPU_FLAGS, "--gin_file=narlm/gin/pretrain_base.gin"], "--model-dir"),
    (TPU / "train.sh", ["--zone", "z", *PRETRAIN], "--name"),
    (TPU / "logs.sh", ["--name", "n"], "--zone"),
    (TPU / "stop.sh", ["--zone", "z"], "--name"),
    (TPU / "delete.sh", ["--name", "n"], "--zone"),
    (SLURM / "submit.sh", PRETRAIN, "--gpus-per-node"),
    (SLURM / "submit.sh", ["--gpus-per-node=8", "--model-dir=/shared/x"], "--gin_file"),
    (SLURM / "submit.sh", ["--gpus-per-node=8", "--gin_file=narlm/gin/pretrain_base.gin"],
     "--model-dir"),
    (SLURM / "train.sbatch", ["--model-dir=/shared/x"], "--gin_file"),
    (SLURM / "train.sbatch", ["--gin_file=narlm/gin/pretrain_base.gin"], "--model-dir"),
])
def test_missing_required_argument(sandbox, script, args, missing):
  for dry in ({}, {"DRY_RUN": "1"}):
    result = sandbox.run(script, *args, extra_env=dry)
    assert result.returncode != 0
    assert f"missing required {missing}" in result.stderr, result.stderr
  assert sandbox.calls() == []


@pytest.mark.parametrize("script,args,message", [
    (TPU / "create.sh", [*TPU_FLAGS, "--accelerator-type", "v9-8"], "--accelerator-type must"),
    (TPU / "create.sh", [*TPU_FLAGS, "--accelerator-type"], "--accelerator-type needs a value"),
    (TPU / "create.sh", [*TPU_FLAGS, "--accelerator-type", "v4-8", "--spot", "--preemptible"],
     "exclusive"),
    (TPU / "train.sh", [*TPU_FLAGS, *PRETRAIN, "--bogus"], "unknown argument '--bogus'"),
    (TPU / "train.sh", [*TPU_FLAGS, *PRETRAIN, "--env", "not-a-pair"], "KEY=VALUE"),
    (TPU / "train.sh", [*TPU_FLAGS, *PRETRAIN], "DRY_RUN must be 1 or 0"),
    (TPU / "setup.sh", [*TPU_FLAGS, "--git-url=u", "--pip-spec=s"], "exclusive"),
    (TPU / "setup.sh", [*TPU_FLAGS, "--remote-dir=~"], "--remote-dir"),
    (TPU / "logs.sh", [*TPU_FLAGS, "--worker", "w0"], "--worker must"),
    (SLURM / "submit.sh", [*PRETRAIN, "--gpus-per-node=8", "--nodes=0"], "--nodes must"),
    (SLURM / "submit.sh", [*PRETRAIN, "--gpus-per-node=8", "--tasks-per=core"], "--tasks-per"),
    (SLURM / "train.sbatch", PRETRAIN, "not inside a SLURM job"),
])
def test_bad_arguments(sandbox, script, args, message):
  extra_env = {"DRY_RUN": "maybe"} if "DRY_RUN" in message else None
  result = sandbox.run(script, *args, extra_env=extra_env)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr
  assert sandbox.calls() == []


# ----------------------------------------------------------------- dry run
@pytest.mark.parametrize("how", ["flag", "env"])
def test_dry_run_train_pretrain_base_v4_32(sandbox, how):
  args = [*TPU_FLAGS, *PRETRAIN, "--env", "TFDS_DATA_DIR=gs://bucket/tfds",
          "--gin.BATCH_SIZE=512"]
  if how == "flag":
    result = sandbox.run(TPU / "train.sh", *args, "--dry-run")
  else:
    result = sandbox.run(TPU / "train.sh", *args, extra_env={"DRY_RUN": "1"})
  assert result.returncode == 0, result.stderr
  assert sandbox.calls() == []
  out = result.stdout
  assert out.startswith("gcloud compute tpus tpu-vm ssh narlm-v4-32 --zone=us-central2-b "
                        "--worker=all --command=")
  for piece in ["-m narlm.train", "--gin_file=narlm/gin/pretrain_base.gin",
                '--gin.MODEL_DIR="\\"gs://bucket/narlm/pretrain_base\\""',
                "--gin.BATCH_SIZE=512",
                '--gin.train_lib.train.distributed="@train_lib.DistributedConfig()"',
                "export TFDS_DATA_DIR=gs://bucket/tfds", "narlm-logs",
                "train-$h.log", "tail -c", "--pid="]:
    assert piece in out, piece
  # The narlm trainer cannot write gs:// checkpoints yet: the script says so.
  if "os.path.abspath(os.path.join(model_dir" in (REPO / "narlm/train.py").read_text():
    assert "becomes a local directory" in result.stderr


def test_dry_run_train_options(sandbox):
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, '--gin.MODEL_DIR="gs://b/run"',
                       "--gin_file=narlm/gin/finetune_sentcomp_base.gin", "--no-distributed",
                       "--detach", "--project=p", "--internal-ip", "--dry-run", "--",
                       "--gin_search_paths=/opt/gins")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "--project=p" in out and "--internal-ip" in out
  assert '--gin.MODEL_DIR="\\"gs://b/run\\""' in out
  assert "DistributedConfig" not in out
  assert "follow=0" in out
  assert out.rstrip().endswith("fi'")
  assert "--gin_search_paths=/opt/gins" in out


def test_dry_run_train_t5x(sandbox, tmp_path):
  """The shipped experiment file, unchanged, under t5x's train.py."""
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *PRETRAIN, "--trainer=t5x", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert '"$HOME"/t5x/t5x/train.py --alsologtostderr' in result.stdout
  assert "--gin_file=narlm/gin/pretrain_base.gin" in result.stdout
  assert "narlm.train" not in result.stdout
  # A file that includes narlm's own trainer gin directly cannot run under t5x.
  own = tmp_path / "narlm_only.gin"
  own.write_text("include 'narlm/gin/runs/train.gin'\n")
  refused = sandbox.run(TPU / "train.sh", *TPU_FLAGS, f"--gin_file={own}",
                        "--model-dir=gs://b/t5x", "--trainer=t5x", "--dry-run")
  assert refused.returncode != 0 and "narlm/gin/runs/train.gin" in refused.stderr


@pytest.mark.parametrize("accelerator,version,extra,expected", [
    ("v3-8", None, ["--preemptible"], "--version=tpu-ubuntu2204-base --preemptible"),
    ("v4-32", None, ["--spot"], "--version=tpu-ubuntu2204-base --spot"),
    ("v5e-16", None, [], "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", [], "--version=v2-alpha-tpuv5-lite"),
    ("v5p-64", None, ["--reserved"], "--version=v2-alpha-tpuv5 --reserved"),
    ("v4-8", "my-runtime", ["--", "--labels=team=nlp"], "--version=my-runtime --labels=team=nlp"),
])
def test_dry_run_create(sandbox, accelerator, version, extra, expected):
  args = [*TPU_FLAGS, "--accelerator-type", accelerator, "--project", "proj"]
  if version:
    args += ["--version", version]
  result = sandbox.run(TPU / "create.sh", *args, "--dry-run", *extra)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 1
  assert lines[0].startswith("gcloud compute tpus tpu-vm create narlm-v4-32 --zone=us-central2-b "
                             "--project=proj --accelerator-type=")
  assert expected in lines[0]
  assert sandbox.calls() == []


def test_dry_run_create_queued(sandbox):
  result = sandbox.run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v5p-8", "--queued",
                       "--spot", extra_env={"DRY_RUN": "1"})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == (
      "gcloud compute tpus queued-resources create narlm-v4-32 --node-id=narlm-v4-32 "
      "--zone=us-central2-b --accelerator-type=v5p-8 --runtime-version=v2-alpha-tpuv5 --spot")


def test_dry_run_setup_local_source(sandbox):
  result = sandbox.run(TPU / "setup.sh", *TPU_FLAGS, "--dry-run")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  tarball = f"{sandbox.path}/narlm-src-narlm-v4-32.tgz"
  assert lines[0].startswith(f"env COPYFILE_DISABLE=1 tar -C {REPO} -czf {tarball} ")
  assert "--exclude=.git" in lines[0]
  assert lines[1] == (f"gcloud compute tpus tpu-vm scp {tarball} narlm-v4-32:narlm-src.tgz "
                      "--zone=us-central2-b --worker=all")
  assert lines[2].startswith("gcloud compute tpus tpu-vm ssh narlm-v4-32 --zone=us-central2-b "
                             "--worker=all --command=")
  script = result.stdout.split("--command=", 1)[1]
  for piece in ["source_mode=local", "python_bin=python3.11", 'pip install -q -e "$repo"',
                'pip install -q "jax[tpu]==$jax_version" -f "$jax_tpu_index"',
                "jax_tpu_index=https://storage.googleapis.com/jax-releases/libtpu_releases.html"]:
    assert piece in script, piece
  assert not pathlib.Path(tarball).exists()
  assert sandbox.calls() == []


def test_dry_run_setup_git_and_pip(sandbox):
  result = sandbox.run(TPU / "setup.sh", *TPU_FLAGS, "--git-url=https://example.com/narlm.git",
                       "--git-ref=v0.1.0", "--with-t5x", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "tpu-vm scp" not in result.stdout and "COPYFILE_DISABLE" not in result.stdout
  for piece in ["source_mode=git", "git_url=https://example.com/narlm.git", "git_ref=v0.1.0",
                "with_t5x=1", "--worker=all"]:
    assert piece in result.stdout, piece
  result = sandbox.run(TPU / "setup.sh", *TPU_FLAGS, "--pip-spec",
                       "git+https://example.com/narlm.git@main", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "source_mode=pip" in result.stdout
  assert 'pip_spec=git+https://example.com/narlm.git@main' in result.stdout
  assert sandbox.calls() == []


def test_dry_run_setup_script_is_valid_sh(sandbox):
  result = sandbox.run(TPU / "setup.sh", *TPU_FLAGS, "--dry-run")
  script = result.stdout.split("--command='", 1)[1]
  script = script[:script.rindex("'")].replace("'\\''", "'")
  check = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
  assert check.returncode == 0, check.stderr


def test_dry_run_logs_stop_delete(sandbox):
  result = sandbox.run(TPU / "logs.sh", *TPU_FLAGS, "--worker=0", "--lines=20", "--follow",
                       "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "--worker=0 --command=" in result.stdout and "lines=20" in result.stdout
  assert "follow=1" in result.stdout
  result = sandbox.run(TPU / "stop.sh", *TPU_FLAGS, "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "--worker=all" in result.stdout and "signal=TERM" in result.stdout
  result = sandbox.run(TPU / "delete.sh", *TPU_FLAGS, "--yes", "--dry-run")
  assert result.stdout.strip() == ("gcloud compute tpus tpu-vm delete narlm-v4-32 "
                                   "--zone=us-central2-b --quiet")
  result = sandbox.run(TPU / "delete.sh", *TPU_FLAGS, "--queued", "--dry-run")
  assert result.stdout.strip() == ("gcloud compute tpus queued-resources delete narlm-v4-32 "
                                   "--zone=us-central2-b --force")
  assert sandbox.calls() == []


FINETUNE = ["--gin_file=narlm/gin/finetune_gigaword_base.gin",
            "--model-dir=/shared/narlm/gigaword",
            '--gin.INITIAL_CHECKPOINT="/shared/models/bert-base-uncased"']


def test_dry_run_submit_finetune(sandbox):
  result = sandbox.run(SLURM / "submit.sh", "--nodes=2", "--gpus-per-node=8", "--time=24:00:00",
                       "--partition=gpu", "--sbatch-arg=--exclusive", "--chain=2", *FINETUNE,
                       "--env", "NARLM_GIGAWORD_DIR=/shared/data/gigaword", "--dry-run")
  assert result.returncode == 0, result.stderr
  first, second = result.stdout.splitlines()
  assert first.startswith("sbatch --parsable --job-name=narlm-finetune_gigaword_base --nodes=2 "
                          "--ntasks-per-node=8 --gpus-per-node=8 --time=24:00:00 "
                          "--partition=gpu --exclusive ")
  for piece in [f"{SLURM}/train.sbatch", "--tasks-per=gpu", "--gpus-per-node=8",
                "--gin_file=narlm/gin/finetune_gigaword_base.gin",
                "--model-dir=/shared/narlm/gigaword",
                "--gin.INITIAL_CHECKPOINT='\"/shared/models/bert-base-uncased\"'",
                "--env=NARLM_GIGAWORD_DIR=/shared/data/gigaword"]:
    assert piece in first, piece
  assert "--dependency='afterany:<job-1>'" in second
  assert sandbox.calls() == []


def test_submit_makes_model_dir_absolute_and_uses_gres(sandbox):
  result = sandbox.run(SLURM / "submit.sh", "--gpus-per-node=4", "--gres", "--tasks-per=node",
                       "--gin_file=narlm/gin/pretrain_base.gin", "--model-dir=runs/x",
                       "--dry-run")
  assert result.returncode == 0, result.stderr
  assert f"--model-dir={REPO}/runs/x" in result.stdout
  assert "--gres=gpu:4" in result.stdout and "--ntasks-per-node=1" in result.stdout


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4",
             "SLURM_JOB_NODELIST": "gpu[01-02]"}


@pytest.mark.parametrize("tasks_per,ntasks,ids", [("gpu", "8", None), ("node", "2", "[0,1,2,3]")])
def test_dry_run_sbatch(sandbox, tasks_per, ntasks, ids):
  result = sandbox.run(SLURM / "train.sbatch", f"--tasks-per={tasks_per}", *FINETUNE,
                       "--coordinator-port=12345", "--env=NCCL_DEBUG=WARN",
                       extra_env=dict(SLURM_ENV, DRY_RUN="1"))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[:4] == ["export JAX_PLATFORMS=cuda", "export PYTHONUNBUFFERED=1",
                       "export JAX_COORDINATOR_PORT=12345", "export NCCL_DEBUG=WARN"]
  srun = lines[4]
  assert srun.startswith(f"srun --nodes=2 --ntasks={ntasks} "
                         f"--ntasks-per-node={int(ntasks) // 2} --kill-on-bad-exit=1 --label "
                         "python3 -m narlm.train --gin_file=narlm/gin/finetune_gigaword_base.gin "
                         "--gin.MODEL_DIR='\"/shared/narlm/gigaword\"' ")
  assert "--gin.train_lib.train.distributed='@train_lib.DistributedConfig()'" in srun
  if ids:
    assert f"--gin.train_lib.DistributedConfig.local_device_ids='{ids}'" in srun
  else:
    assert "local_device_ids" not in srun
  assert sandbox.calls() == []


def test_dry_run_sbatch_with_t5x(sandbox):
  """Same experiment gin, t5x's train.py: its own multi-process GPU flag, no
  narlm distributed bindings; per-node processes and a missing checkout refused."""
  env = dict(SLURM_ENV, DRY_RUN="1")
  result = sandbox.run(SLURM / "train.sbatch", "--trainer=t5x", "--t5x-dir=/opt/t5x/", *FINETUNE,
                       extra_env=env)
  assert result.returncode == 0, result.stderr
  srun = [l for l in result.stdout.splitlines() if l.startswith("srun ")][0]
  assert ("--label python3 /opt/t5x/t5x/train.py "
          "--gin_file=narlm/gin/finetune_gigaword_base.gin") in srun
  assert srun.endswith("--multiprocess_gpu --alsologtostderr")
  assert "narlm.train" not in srun and "DistributedConfig" not in srun
  refused = sandbox.run(SLURM / "train.sbatch", "--trainer=t5x", "--t5x-dir=/opt/t5x",
                        "--tasks-per=node", *FINETUNE, extra_env=env)
  assert refused.returncode != 0 and "one process per GPU" in refused.stderr
  no_dir = sandbox.run(SLURM / "train.sbatch", "--trainer=t5x", *FINETUNE, extra_env=env)
  assert no_dir.returncode != 0 and "--t5x-dir" in no_dir.stderr
  bad = sandbox.run(SLURM / "train.sbatch", "--trainer=jax", *FINETUNE, extra_env=env)
  assert bad.returncode != 0 and "--trainer must be narlm or t5x" in bad.stderr
  # submit.sh forwards the choice to the job.
  sub = sandbox.run(SLURM / "submit.sh", "--gpus-per-node=8", "--trainer=t5x",
                    "--t5x-dir=/opt/t5x", *FINETUNE, extra_env={"DRY_RUN": "1"})
  assert sub.returncode == 0, sub.stderr
  assert "--trainer=t5x" in sub.stdout and "--t5x-dir=/opt/t5x" in sub.stdout


# ------------------------------------------------------ real runs (stubs)
def test_real_create_and_delete_call_gcloud(sandbox):
  assert sandbox.run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v4-32",
                     "--spot").returncode == 0
  assert sandbox.run(TPU / "delete.sh", *TPU_FLAGS, "--yes").returncode == 0
  assert sandbox.calls() == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "narlm-v4-32", "--zone=us-central2-b",
       "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"],
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", "narlm-v4-32", "--zone=us-central2-b",
       "--quiet"]]
  failed = sandbox.run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v4-32",
                       extra_env={"STUB_RC": "1"})
  assert failed.returncode == 1


def make_worker(home: pathlib.Path, python_body: str) -> None:
  """A fake TPU worker: ~/narlm and a ~/narlm-venv/bin/python stub."""
  (home / "narlm").mkdir(parents=True)
  py = home / "narlm-venv" / "bin" / "python"
  py.parent.mkdir(parents=True)
  py.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"arg: $a\"; done\n" + python_body)
  py.chmod(0o755)


def test_real_train_runs_on_worker_and_streams_log(sandbox):
  home = sandbox.path / "worker"
  make_worker(home, 'echo "cwd: $(pwd)"; echo "tfds: $TFDS_DATA_DIR"; exit 7\n')
  env = {"STUB_HOME": str(home)}
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *PRETRAIN,
                       "--env=TFDS_DATA_DIR=gs://bucket/my tfds", extra_env=env)
  assert result.returncode == 7, result.stdout + result.stderr
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  out = result.stdout
  # Every argument arrives intact as one word, in order.
  expected_args = ["-m", "narlm.train", "--gin_file=narlm/gin/pretrain_base.gin",
                   '--gin.MODEL_DIR="gs://bucket/narlm/pretrain_base"',
                   "--gin_bindings=from __gin__ import dynamic_registration",
                   "--gin_bindings=from narlm import train as train_lib",
                   "--gin.train_lib.train.distributed=@train_lib.DistributedConfig()"]
  assert [line.split("arg: ", 1)[1] for line in out.splitlines() if "arg: " in line] \
      == expected_args
  assert f"[{host}] arg: -m" in out
  assert f"[{host}] cwd: {home}/narlm" in out
  assert f"[{host}] tfds: gs://bucket/my tfds" in out
  assert f"[{host}] trainer exited with status 7" in out
  log = (home / "narlm-logs" / f"train-{host}.log").read_text()
  assert "=== narlm launch" in log and "arg: narlm.train" in log
  assert (home / "narlm-logs" / f"train-{host}.exit").read_text().strip() == "7"
  [call] = sandbox.calls()
  assert call[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "narlm-v4-32",
                      "--zone=us-central2-b", "--worker=all", call[8]]
  assert call[8].startswith("--command=")

  # A second launch appends to the log and streams only its own lines.
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *PRETRAIN, extra_env=env)
  assert result.returncode == 7
  assert result.stdout.count("trainer exited") == 1
  assert log.count("=== narlm launch") == 1
  log = (home / "narlm-logs" / f"train-{host}.log").read_text()
  assert log.count("=== narlm launch") == 2

  # logs.sh shows the status and the end of the log.
  result = sandbox.run(TPU / "logs.sh", *TPU_FLAGS, "--lines=3", extra_env=env)
  assert result.returncode == 0, result.stderr
  assert f"[{host}] status: exited with status 7" in result.stdout
  assert f"[{host}] trainer exited" not in result.stdout  # that is train.sh's line, not the log's


def test_real_train_detach_refuses_second_run_and_stop(sandbox):
  home = sandbox.path / "worker"
  make_worker(home, "trap 'echo got TERM; exit 0' TERM\nwhile :; do sleep 0.1; done\n")
  env = {"STUB_HOME": str(home)}
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *PRETRAIN, "--detach", extra_env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  pid = int((home / "narlm-logs" / f"train-{host}.pid").read_text())
  try:
    again = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *PRETRAIN, "--detach", extra_env=env)
    assert again.returncode == 3
    assert "already running" in again.stderr
    status = sandbox.run(TPU / "logs.sh", *TPU_FLAGS, extra_env=env)
    assert f"status: running (pid {pid})" in status.stdout
    stop = sandbox.run(TPU / "stop.sh", *TPU_FLAGS, extra_env=env)
    assert stop.returncode == 0, stop.stderr
    assert "sent SIGTERM" in stop.stdout
    rc_file = home / "narlm-logs" / f"train-{host}.exit"
    deadline = time.time() + 10
    while not rc_file.exists() and time.time() < deadline:
      time.sleep(0.05)
    assert rc_file.read_text().strip() == "0"
    assert "got TERM" in (home / "narlm-logs" / f"train-{host}.log").read_text()
  finally:  # only what this test started: the trainer stub (child of pid) and pid
    subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def test_real_train_without_setup_fails_clearly(sandbox):
  home = sandbox.path / "empty-worker"
  home.mkdir()
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *PRETRAIN, extra_env={"STUB_HOME": str(home)})
  assert result.returncode == 3
  assert "run launch/tpu/setup.sh first" in result.stderr


def test_real_sbatch_runs_srun(sandbox):
  result = sandbox.run(SLURM / "train.sbatch", *FINETUNE, extra_env=SLURM_ENV)
  assert result.returncode == 0, result.stderr
  [call] = sandbox.calls()
  assert call[:9] == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4",
                      "--kill-on-bad-exit=1", "--label", "python3", "-m", "narlm.train"]
  assert '--gin.MODEL_DIR="/shared/narlm/gigaword"' in call
  assert '--gin.INITIAL_CHECKPOINT="/shared/models/bert-base-uncased"' in call
  assert "narlm: job 4242 on gpu[01-02]: 2 node(s) x 4 task(s)" in result.stdout


def test_real_submit_chains_jobs(sandbox):
  result = sandbox.run(SLURM / "submit.sh", "--gpus-per-node=8", "--chain=2", *FINETUNE)
  assert result.returncode == 0, result.stderr
  first, second = sandbox.calls()
  assert first[0] == "sbatch" and not any(a.startswith("--dependency") for a in first)
  assert "--dependency=afterany:1000" in second
  assert result.stdout.split() == ["1000", "1001"]
  script_index = second.index(str(SLURM / "train.sbatch"))
  assert second[script_index + 1:] == [
      "--tasks-per=gpu", "--gpus-per-node=8", "--gin_file=narlm/gin/finetune_gigaword_base.gin",
      "--model-dir=/shared/narlm/gigaword",
      '--gin.INITIAL_CHECKPOINT="/shared/models/bert-base-uncased"']


# --------------------------------------------- the bindings narlm receives
# Runs narlm.train.main on command lines the scripts produced, with
# jax.distributed.initialize replaced by a recorder that stops the run: proves
# the gin flags parse and that train() gets the DistributedConfig.
NARLM_MAIN = """
import json, sys, types
import gin, jax
# train() imports these (and through them TensorFlow, ~5 s) before it calls
# jax.distributed.initialize; nothing of them is used before that.
for name in ("clu.metric_writers", "clu.periodic_actions"):
  sys.modules[name] = types.ModuleType(name)
class Stop(Exception):
  pass
calls = []
def initialize(**kwargs):
  calls.append(kwargs)
  raise Stop()
jax.distributed.initialize = initialize
from narlm import train
results = []
for argv in json.loads(sys.argv[1]):
  gin.clear_config()
  try:
    train.main(argv)
    results.append("no jax.distributed.initialize call")
  except Stop:  # gin may re-raise a proxy of it: still a Stop
    results.append(dict(calls[-1], MODEL_DIR=gin.query_parameter("MODEL_DIR/macro.value")))
print("RESULTS " + json.dumps(results))
"""

# Macros an experiment gin defines, for runs/train.gin alone (fast: no model imports).
MIN_MACROS = ["--gin.MODEL=None", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8",
              '--gin.MIXTURE_OR_TASK_NAME="x"',
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}"]


def narlm_main(argvs):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, "-c", NARLM_MAIN, json.dumps(argvs)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULTS "))
  return json.loads(line[len("RESULTS "):])


def tpu_trainer_args(sandbox, *args):
  """The trainer argv train.sh delivers on a (fake) worker, after `-m narlm.train`."""
  home = sandbox.path / "worker"
  make_worker(home, "")
  result = sandbox.run(TPU / "train.sh", *TPU_FLAGS, *args, extra_env={"STUB_HOME": str(home)})
  assert result.returncode == 0, result.stdout + result.stderr
  argv = [l.split("arg: ", 1)[1] for l in result.stdout.splitlines() if "arg: " in l]
  assert argv[:2] == ["-m", "narlm.train"]
  return argv[2:]


def slurm_trainer_args(sandbox, *args):
  """The trainer argv in train.sbatch's srun call, after `-m narlm.train`."""
  result = sandbox.run(SLURM / "train.sbatch", *args, extra_env=SLURM_ENV)
  assert result.returncode == 0, result.stderr
  srun = sandbox.calls()[-1]
  return srun[srun.index("narlm.train") + 1:]


def test_generated_bindings_reach_narlm_train(sandbox):
  gin = "--gin_file=narlm/gin/runs/train.gin"
  tpu = tpu_trainer_args(sandbox, gin, "--model-dir=gs://bucket/run", "--", *MIN_MACROS)
  slurm = slurm_trainer_args(sandbox, "--tasks-per=node", gin, "--model-dir=/shared/run",
                             "--", *MIN_MACROS)
  assert narlm_main([tpu, slurm]) == [
      {"coordinator_address": None, "num_processes": None, "process_id": None,
       "local_device_ids": None, "MODEL_DIR": "gs://bucket/run"},
      {"coordinator_address": None, "num_processes": None, "process_id": None,
       "local_device_ids": [0, 1, 2, 3], "MODEL_DIR": "/shared/run"}]


@pytest.mark.slow
def test_generated_bindings_with_experiment_gins(sandbox):
  """Same, with the real experiment gins (imports the model code: ~15 s)."""
  tpu = tpu_trainer_args(sandbox, *PRETRAIN)
  slurm = slurm_trainer_args(sandbox, *FINETUNE)
  pretrain, finetune = narlm_main([tpu, slurm])
  assert pretrain["MODEL_DIR"] == "gs://bucket/narlm/pretrain_base"
  assert pretrain["local_device_ids"] is None
  assert finetune["MODEL_DIR"] == "/shared/narlm/gigaword"
  assert finetune["local_device_ids"] is None  # one task per GPU: JAX uses SLURM_LOCALID
