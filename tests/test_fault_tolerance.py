"""Fault tolerance of narlm.train: preemption (SIGTERM), hard kills (SIGKILL)
at random points including in the middle of a checkpoint write, and damaged
checkpoints (narlm.checkpoints).

Every run is `python -m narlm.train` in a subprocess on the tiny quickstart
config (4 fake CPU devices, a ('data': 2, 'model': 2) mesh, dropout on, 8
steps, a checkpoint every 2 steps, keep 2), so the runs are real trainer runs.

How loss curves are compared. An interrupted job's train_metrics.jsonl is
appended to by every attempt; after a resume from step N the attempt logs
steps N+1, N+2, ... again, so a step can appear more than once. The rule is:
  * every step 1..TRAIN_STEPS is logged at least once;
  * EVERY record of a step (first try and re-runs alike) has exactly the same
    values as the uninterrupted reference run's record of that step (all
    train/* metrics except steps_per_sec; float equality, no tolerance);
  * each attempt's first logged step is its resume step + 1, and its resume
    step (from the trainer's "resuming from ... step N" log line) is the
    newest committed checkpoint on disk when it started.
Checkpoints are compared the same way: every committed checkpoint of an
interrupted job must hold bit-identical arrays to the reference's checkpoint
of that step. "Lost" = a checkpoint whose commit was logged before a kill but
is not restorable after it, or a resume from anything but the newest
committed step; "inconsistent" = a committed checkpoint that fails
verification or differs from the reference.

The many-trial SIGKILL test is marked slow (NARLM_FAULT_TRIALS sets the
number of trials, default 4); the default suite runs one kill mid-write.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np
import pytest

from narlm import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_STEPS = 8
CHECKPOINT_PERIOD = 2
DEVICES = 4
RUN_TIMEOUT = 900  # seconds per trainer run (2 shared CPU cores can be slow)

COMMON_ARGS = [
    "--gin_file=narlm/gin/tiny_cpu.gin",
    f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
    "--gin.BATCH_SIZE=8",
    "--gin.LOG_PERIOD=1",
    f"--gin.CHECKPOINT_PERIOD={CHECKPOINT_PERIOD}",
    "--gin.KEEP_CHECKPOINTS=2",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.NUM_MODEL_PARTITIONS=2",
    "--gin.DROPOUT_RATE=0.1",  # dropout randomness must resume exactly too
    "--gin.WARMUP_STEPS=2",
    "--gin.LEARNING_RATE=0.003",
    "--gin.EVALUATOR_NUM_EXAMPLES=0",
    "--gin.EVAL_STEPS=0",
    "--gin_bindings=from __gin__ import dynamic_registration",
    "--gin_bindings=from narlm import train as train_lib",
    "--gin.train_lib.train.eval_dataset_cfg=None",
]
# Timing metrics differ between runs by nature.
IGNORED_METRICS = {"step", "train/steps_per_sec", "train/cpu_seconds"}
RESUME_RE = re.compile(r"resuming from .* step (\d+)\s*$", re.MULTILINE)
COMMITTED_RE = re.compile(r"Finished saving checkpoint \(finalized tmp dir\) to `[^`]*/(\d+)`")


# ------------------------------------------------------------------ harness
@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> pathlib.Path:
  """A persistent compilation cache shared by this session's trainer runs: the
  reference run compiles, later runs load the same executables (saves ~20 s a
  run on 2 cores)."""
  return tmp_path_factory.mktemp("jax_cache")


def trainer_env(data_dir, jax_cache, devices: int = DEVICES) -> dict:
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
      "TF_CPP_MIN_LOG_LEVEL": "2",
      "CUDA_VISIBLE_DEVICES": "",
      "NARLM_DATA_DIR": str(data_dir),
      "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "PYTHONUNBUFFERED": "1",
  })
  return env


class Run:
  """One `python -m narlm.train` subprocess; output goes to `log`."""

  def __init__(self, model_dir: pathlib.Path, log: pathlib.Path, env: dict,
               extra_args=()):
    self.model_dir, self.log = model_dir, log
    self.start = time.time()
    with open(log, "w") as f:
      self.proc = subprocess.Popen(
          # --verbosity=1: the full log (orbax's commit lines) on stdout
          [sys.executable, "-m", "narlm.train", "--verbosity=1", f'--gin.MODEL_DIR="{model_dir}"',
           *COMMON_ARGS, *extra_args],
          cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

  def alive(self) -> bool:
    return self.proc.poll() is None

  def wait(self, timeout: float = RUN_TIMEOUT) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"trainer run timed out after {timeout}s\n{self.tail()}")

  def kill(self, sig=signal.SIGKILL) -> None:
    if self.alive():
      os.kill(self.proc.pid, sig)  # this process only, by its id
    if sig == signal.SIGKILL:
      self.proc.wait(timeout=60)

  def text(self) -> str:
    return self.log.read_text(errors="replace")

  def tail(self, n: int = 40) -> str:
    lines = [l for l in self.text().splitlines() if "truncated an example" not in l]
    return f"--- {self.log} (last {n} lines) ---\n" + "\n".join(lines[-n:])

  def resumed_from(self) -> Optional[int]:
    m = RESUME_RE.findall(self.text())
    return int(m[-1]) if m else None

  def committed_in_log(self) -> list[int]:
    return sorted({int(s) for s in COMMITTED_RE.findall(self.text())})


@pytest.fixture
def runs():
  """Kills (by pid) any trainer a failing test left running."""
  started: list[Run] = []
  yield started
  for run in started:
    if run.alive():
      run.kill()


def metrics(model_dir: pathlib.Path) -> list[dict]:
  path = model_dir / "train_metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for i, line in enumerate(path.read_text().splitlines()):
    try:
      records.append(json.loads(line))
    except ValueError as e:  # a torn line would be a defect of the trainer
      raise AssertionError(f"{path} line {i + 1} is not valid JSON: {line!r}") from e
  return records


def logged_lines(model_dir: pathlib.Path) -> int:
  """Complete lines of train_metrics.jsonl (cheap; for polling)."""
  try:
    return (model_dir / "train_metrics.jsonl").read_bytes().count(b"\n")
  except FileNotFoundError:
    return 0


def writes_since(root: pathlib.Path, since_ns: int) -> list[str]:
  """The checkpoint writes in progress (tmp dirs) started at or after
  `since_ns`: orbax stamps init_timestamp_nsecs into a new tmp dir's
  _CHECKPOINT_METADATA (before that file exists, the dir's ctime is used). A
  stale tmp dir left by an earlier kill does not count until orbax re-creates
  it for a new save of that step."""
  names = []
  for _, p in checkpoints.uncommitted(root):
    try:
      started = int(json.loads((p / "_CHECKPOINT_METADATA").read_text())["init_timestamp_nsecs"])
    except (OSError, ValueError, KeyError, TypeError):
      try:
        started = os.stat(p).st_ctime_ns
      except FileNotFoundError:
        continue
    if started >= since_ns:
      names.append(p.name)
  return names


def wait_until(pred: Callable[[], bool], run: Run, timeout: float = RUN_TIMEOUT,
               poll: float = 0.05) -> bool:
  """True once pred() holds; False if the run exited first."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if pred():
      return True
    if not run.alive():
      return pred()
    time.sleep(poll)
  run.kill()
  pytest.fail(f"condition not reached within {timeout}s\n{run.tail()}")


def values(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in IGNORED_METRICS}


def assert_curve_matches(records: list[dict], reference: dict[int, dict]) -> collections.Counter:
  """The rule of the module docstring; returns how often each step was logged."""
  by_step: dict[int, list[dict]] = collections.defaultdict(list)
  for r in records:
    by_step[int(r["step"])].append(r)
  assert sorted(by_step) == list(range(1, TRAIN_STEPS + 1)), \
      f"logged steps {sorted(by_step)} != 1..{TRAIN_STEPS}"
  for step, recs in sorted(by_step.items()):
    for r in recs:
      assert values(r) == reference[step], (
          f"step {step}: {values(r)} != uninterrupted {reference[step]}")
  return collections.Counter({s: len(r) for s, r in by_step.items()})


class Reference:
  """The uninterrupted run: per-step metrics and every checkpoint's arrays."""

  def __init__(self, model_dir: pathlib.Path):
    self.model_dir = model_dir
    self.root = pathlib.Path(checkpoints.checkpoint_root(str(model_dir)))
    self.records = {int(r["step"]): values(r) for r in metrics(model_dir)}
    self._arrays: dict[int, dict] = {}

  def arrays(self, step: int) -> dict:
    if step not in self._arrays:
      self._arrays[step] = checkpoints.read_arrays(self.root, step)
    return self._arrays[step]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, jax_cache) -> Reference:
  base = tmp_path_factory.mktemp("reference")
  model_dir = base / "model"
  # Keep every checkpoint (keep-N does not change the numbers) to compare
  # interrupted runs' checkpoints with.
  run = Run(model_dir, base / "run.log", trainer_env(data_dir, jax_cache),
            ["--gin.KEEP_CHECKPOINTS=100"])
  rc = run.wait()
  assert rc == 0, run.tail()
  ref = Reference(model_dir)
  assert sorted(ref.records) == list(range(1, TRAIN_STEPS + 1)), run.tail()
  assert checkpoints.committed_steps(ref.root) == list(
      range(CHECKPOINT_PERIOD, TRAIN_STEPS + 1, CHECKPOINT_PERIOD))
  losses = [ref.records[s]["train/loss"] for s in sorted(ref.records)]
  assert len(set(losses)) == len(losses), f"degenerate loss curve {losses}"
  return ref


def check_checkpoints(root: pathlib.Path, ref: Reference) -> list[str]:
  """Problems of the committed checkpoints under `root` (empty = all intact
  and bit-identical to the reference's)."""
  problems = []
  for step in checkpoints.committed_steps(root):
    try:
      arrays = checkpoints.read_arrays(root, step)
    except checkpoints.CheckpointError as e:
      problems.append(f"step {step}: {e}")
      continue
    expected = ref.arrays(step)
    if sorted(arrays) != sorted(expected):
      problems.append(f"step {step}: array names differ from the reference's")
      continue
    differ = [k for k in expected if not np.array_equal(arrays[k], expected[k])]
    if differ:
      problems.append(f"step {step}: {len(differ)} arrays differ from the reference's, "
                      f"e.g. {differ[:3]}")
  return problems


def tmp_dirs(root: pathlib.Path) -> list[str]:
  return [p.name for _, p in checkpoints.uncommitted(root)]


# ------------------------------------------------------------- kill scenario
class Job:
  """A training job that is killed and restarted until it finishes."""

  def __init__(self, base: pathlib.Path, env: dict, ref: Reference, runs: list):
    self.base, self.env, self.ref, self.runs = base, env, ref, runs
    base.mkdir(parents=True, exist_ok=True)
    self.model_dir = base / "model"
    self.root = pathlib.Path(checkpoints.checkpoint_root(str(self.model_dir)))
    self.attempts: list[dict] = []
    self.lost = 0
    self.inconsistent = 0

  def _lines(self) -> int:
    return logged_lines(self.model_dir)

  def start(self) -> tuple[Run, int, Optional[int]]:
    expected = max(checkpoints.committed_steps(self.root), default=None)
    lines_before = self._lines()
    run = Run(self.model_dir, self.base / f"attempt{len(self.attempts)}.log", self.env)
    self.runs.append(run)
    return run, lines_before, expected

  def finish_attempt(self, run: Run, lines_before: int, expected: Optional[int],
                     **info) -> dict:
    records = metrics(self.model_dir)[lines_before:]
    resumed = run.resumed_from()
    if resumed is None and not records and info.get("killed"):
      resumed = "killed before restoring"  # nothing to check
    attempt = dict(info, resumed_from=resumed, expected_resume=expected,
                   logged=[int(r["step"]) for r in records], rc=run.proc.returncode,
                   committed_after=checkpoints.committed_steps(self.root),
                   tmp_after=tmp_dirs(self.root), committed_in_log=run.committed_in_log())
    self.attempts.append(attempt)
    # It resumed from the newest committed checkpoint (None = from scratch) ...
    if resumed != "killed before restoring":
      if resumed != expected:
        self.lost += 1
      assert resumed == expected, f"resumed from {resumed}, newest committed was {expected}\n" \
                                  f"{run.tail()}"
    # ... and continued right after it.
    if records:
      assert records[0]["step"] == (expected or 0) + 1, (attempt, run.tail())
    # No checkpoint whose commit was logged went missing (keep-N deletes only
    # older ones, so the newest logged one must still be on disk).
    on_disk = attempt["committed_after"]
    if attempt["committed_in_log"] and max(attempt["committed_in_log"]) > max(on_disk, default=-1):
      self.lost += 1
    assert max(attempt["committed_in_log"], default=-1) <= max(on_disk, default=-1), attempt
    problems = check_checkpoints(self.root, self.ref)
    self.inconsistent += len(problems)
    assert not problems, problems
    return attempt

  def killed_attempt(self, mode: str, rng: random.Random, *,
                     min_save_step: Optional[int] = None, max_delay: float = 0.25) -> dict:
    """Starts an attempt and SIGKILLs it: mode 'save' = while a checkpoint
    write (orbax tmp dir of a step >= min_save_step; default: a random
    checkpoint step this attempt will save) is in progress, 'step' = a random
    time after a random number of this attempt's steps, 'time' = a random time
    after launch (imports, compilation, restore or training)."""
    since = time.time_ns()
    run, lines_before, expected = self.start()
    ahead = range((expected or 0) + 1, TRAIN_STEPS + 1)  # the steps this attempt trains
    delay = 0.0
    if mode == "save":
      if min_save_step is None:
        min_save_step = rng.choice([s for s in ahead if s % CHECKPOINT_PERIOD == 0] or [0])
      def writing():
        return any(int(name.split(".")[0]) >= min_save_step
                   for name in writes_since(self.root, since))
      reached = wait_until(writing, run, poll=0.005)
      delay = rng.uniform(0.0, max_delay)
    elif mode == "step":
      k = rng.randint(1, max(1, len(ahead) - 1))
      reached = wait_until(lambda: self._lines() >= lines_before + k, run)
      delay = rng.uniform(0.0, 1.5)
    elif mode == "time":
      reached = True
      delay = rng.uniform(1.0, 40.0)
    else:
      raise ValueError(mode)
    if reached:
      time.sleep(delay)
    finished = not run.alive()
    run.kill(signal.SIGKILL)
    mid_write = bool(writes_since(self.root, since))  # a write this attempt started was cut
    if mode == "save":
      mode = f"save>={min_save_step}"
    elif mode == "step":
      mode = f"step+{k}"
    return self.finish_attempt(run, lines_before, expected, mode=mode, delay=round(delay, 3),
                               killed=not finished, mid_write=mid_write and not finished)

  def final_attempt(self) -> dict:
    run, lines_before, expected = self.start()
    rc = run.wait()
    assert rc == 0, run.tail()
    attempt = self.finish_attempt(run, lines_before, expected, mode="none", killed=False,
                                  mid_write=False)
    assert attempt["committed_after"] == [TRAIN_STEPS - CHECKPOINT_PERIOD, TRAIN_STEPS], attempt
    assert attempt["tmp_after"] == [], f"leftover interrupted writes {attempt['tmp_after']}"
    return attempt


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
# -------------------------------------------------------------------- tests
def test_sigterm_saves_exits_cleanly_and_resumes(tmp_path, data_dir, jax_cache, reference, runs):
  env = trainer_env(data_dir, jax_cache)
  model_dir = tmp_path / "model"
  root = pathlib.Path(checkpoints.checkpoint_root(str(model_dir)))
  run = Run(model_dir, tmp_path / "first.log", env)
  runs.append(run)
  # Step 3 is not a checkpoint step: the checkpoint must come from the handler.
  assert wait_until(lambda: logged_lines(model_dir) >= 3, run), run.tail()
  run.kill(signal.SIGTERM)
  rc = run.wait()
  assert rc == 0, f"SIGTERM must end the trainer cleanly, got exit code {rc}\n{run.tail()}"
  assert "SIGTERM: saving a checkpoint and exiting" in run.text()
  last = metrics(model_dir)[-1]["step"]
  assert last < TRAIN_STEPS, "the run ended before SIGTERM could interrupt it"
  assert max(checkpoints.committed_steps(root)) == last, (
      f"expected a checkpoint of the last trained step {last}, have "
      f"{checkpoints.committed_steps(root)}")
  assert tmp_dirs(root) == []
  assert not check_checkpoints(root, reference)

  second = Run(model_dir, tmp_path / "second.log", env)
  runs.append(second)
  assert second.wait() == 0, second.tail()
  assert second.resumed_from() == last
  counts = assert_curve_matches(metrics(model_dir), reference.records)
  assert set(counts.values()) == {1}, f"no step should be redone after SIGTERM: {counts}"


def _kill_job(tmp_path, data_dir, jax_cache, reference, runs, plan, seed):
  job = Job(tmp_path, trainer_env(data_dir, jax_cache), reference, runs)
  rng = random.Random(seed)
  for mode, kwargs in plan(rng):
    attempt = job.killed_attempt(mode, rng, **kwargs)
    if not attempt["killed"]:
      break  # it finished before the kill point
  job.final_attempt()
  counts = assert_curve_matches(metrics(job.model_dir), reference.records)
  return job, counts


@pytest.mark.slow  # a trainer subprocess or two (~40-70 s): CI's slow pass
def test_sigkill_during_checkpoint_write_resumes_from_last_complete(
    tmp_path, data_dir, jax_cache, reference, runs):
  """Kill while step 4 is being written: step 4's tmp dir is left behind,
  orbax ignores it, the job resumes from step 2 and re-saves step 4."""
  job, counts = _kill_job(tmp_path, data_dir, jax_cache, reference, runs,
                          lambda rng: [("save", {"min_save_step": 4, "max_delay": 0.0})],
                          seed=0)
  killed = job.attempts[0]
  assert killed["killed"] and killed["mid_write"], killed
  assert any(name.startswith("4.") for name in killed["tmp_after"]), killed
  assert killed["committed_after"] == [2], killed
  assert job.attempts[1]["resumed_from"] == 2
  assert counts[3] == 2 and counts[1] == 1, counts  # steps 3.. were redone
  assert job.lost == 0 and job.inconsistent == 0


@pytest.mark.slow
def test_sigkill_at_random_points(tmp_path, data_dir, jax_cache, reference, runs):
  """NARLM_FAULT_TRIALS jobs (default 4), each killed twice at seeded random
  points (the first kill of the first job mid-write), then run to the end."""
  trials = int(os.environ.get("NARLM_FAULT_TRIALS", "4"))
  summary = collections.Counter()

  def plan(trial):
    def make(rng):
      modes = [rng.choice(["save", "step", "time"]) for _ in range(2)]
      if trial == 0:
        modes[0] = "save"
      return [(m, {}) for m in modes]
    return make

  details = []
  for trial in range(trials):
    job, counts = _kill_job(tmp_path / f"trial{trial}", data_dir, jax_cache, reference, runs,
                            plan(trial), seed=1000 + trial)
    killed = [a for a in job.attempts if a["killed"]]
    summary["trials"] += 1
    summary["kills"] += len(killed)
    summary["kills_mid_checkpoint_write"] += sum(a["mid_write"] for a in killed)
    summary["attempts"] += len(job.attempts)
    summary["redone_steps"] += sum(c - 1 for c in counts.values())
    summary["lost"] += job.lost
    summary["inconsistent"] += job.inconsistent
    details.append([(a["mode"], a.get("delay"), a["resumed_from"], a["logged"], a["committed_after"],
                     a["tmp_after"]) for a in job.attempts])
  print("\nSIGKILL trials:", dict(summary))
  for trial, d in enumerate(details):
    print(f"  trial {trial}: (mode, delay, resumed_from, logged, committed_after, tmp_after)")
    for a in d:
      print(f"    {a}")
  assert summary["lost"] == 0 and summary["inconsistent"] == 0
  assert summary["kills_mid_checkpoint_write"] >= 1, "no kill landed in a checkpoint write"


# ----------------------------------------------------------- damaged files
def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "default").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(p: pathlib.Path) -> None:
  os.truncate(p, p.stat().st_size // 2)


DAMAGE = {
    # name: (how, what the message names, found without reading the arrays)
    "truncated_data_file": (lambda s: _truncate(_largest_data_file(s)), "OUT_OF_RANGE", False),
    "empty_data_file": (lambda s: os.truncate(_largest_data_file(s), 0), "is empty (0 bytes)",
                        True),
    "deleted_tree_metadata": (lambda s: (s / "default" / "_METADATA").unlink(),
                              "_METADATA is missing", True),
    "truncated_tree_metadata": (lambda s: _truncate(s / "default" / "_METADATA"),
                                "is not valid JSON", True),
    "deleted_ocdbt_manifest": (lambda s: (s / "default" / "manifest.ocdbt").unlink(),
                               "manifest.ocdbt is missing", True),
    "deleted_item": (lambda s: shutil.rmtree(s / "default"), "default is missing", True),
}


@pytest.fixture
def damaged_copy(tmp_path, reference):
  """A copy of the reference's checkpoints (steps 2, 4, 6, 8)."""
  root = tmp_path / "checkpoints"
  shutil.copytree(reference.root, root)
  return root


# orbax leaves "Event loop is closed" noise behind a failed read.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_fails_clearly(damaged_copy, damage, caplog):
  root = damaged_copy
  how, expected_text, structural = DAMAGE[damage]
  how(root / "8")
  assert checkpoints.committed_steps(root) == [2, 4, 6, 8]  # orbax still lists it
  assert bool(checkpoints.check_step(root, 8)) == structural
  with pytest.raises(checkpoints.CorruptCheckpointError) as info:
    checkpoints.latest_valid_step(root, read_data=True)
  message = str(info.value)
  assert info.value.step == 8 and info.value.path == str(root / "8")
  assert f"checkpoint step 8 at {root / '8'} is damaged" in message
  assert expected_text in message
  assert f"previous checkpoint (step 6)" in message and f"mv {root / '8'}" in message
  # Opt-in fall-back (for tools): warns naming the damaged step, returns 6.
  with caplog.at_level("WARNING"):
    assert checkpoints.latest_valid_step(root, read_data=True, on_corrupt="fallback") == 6
  assert f"checkpoint step 8 at {root / '8'} is damaged" in caplog.text
  # The documented remedy: move the step aside; orbax then resumes from 6.
  moved = checkpoints.quarantine(root, 8)
  assert moved.name.startswith("8.corrupt-")
  assert checkpoints.committed_steps(root) == [2, 4, 6]
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(root) as manager:
    assert manager.latest_step() == 6


def test_interrupted_write_is_ignored_and_reported(damaged_copy, caplog):
  root = damaged_copy
  # What a kill in the middle of saving step 10 leaves behind.
  shutil.copytree(root / "8", root / "10.orbax-checkpoint-tmp")
  _truncate(_largest_data_file(root / "10.orbax-checkpoint-tmp"))
  assert checkpoints.committed_steps(root) == [2, 4, 6, 8]
  assert [(s, p.name) for s, p in checkpoints.uncommitted(root)] == [
      (10, "10.orbax-checkpoint-tmp")]
  with caplog.at_level("WARNING"):
    assert checkpoints.latest_valid_step(root, read_data=True) == 8
  assert "10.orbax-checkpoint-tmp" in caplog.text and "interrupted" in caplog.text
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(root) as manager:
    assert manager.latest_step() == 8


def test_intact_checkpoints_verify(reference):
  for step in checkpoints.committed_steps(reference.root):
    checkpoints.verify_step(reference.root, step, read_data=True)
  arrays = reference.arrays(TRAIN_STEPS)
  assert "['step']" in arrays and int(arrays["['step']"]) == TRAIN_STEPS
  assert any(k.startswith("['params']") for k in arrays)
  assert checkpoints.check_step(reference.root, 99) == [
      f"checkpoint directory {reference.root / '99'} is missing"]


def _trainer_validates_checkpoints() -> bool:
  return "checkpoints.restore(" in (REPO / "narlm" / "train.py").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not _trainer_validates_checkpoints(),
                    reason="narlm/train.py does not restore through narlm.checkpoints yet")
def test_trainer_refuses_damaged_checkpoint_then_resumes_after_quarantine(
    tmp_path, data_dir, jax_cache, reference, runs):
  env = trainer_env(data_dir, jax_cache)
  model_dir = tmp_path / "model"
  root = pathlib.Path(checkpoints.checkpoint_root(str(model_dir)))
  shutil.copytree(reference.root, root)
  for step in (6, 8):  # a job that was at step 4 ...
    shutil.rmtree(root / str(step))
  _truncate(_largest_data_file(root / "4"))  # ... whose latest checkpoint got damaged
  shutil.copytree(root / "2", root / "4.orbax-checkpoint-tmp")  # and an interrupted write

  run = Run(model_dir, tmp_path / "damaged.log", env)
  runs.append(run)
  assert run.wait() == 2, run.tail()  # a refused start: one message, exit status 2
  text = run.text()
  assert f"checkpoint step 4 at {root / '4'} is damaged" in text, run.tail()
  assert "OUT_OF_RANGE" in text and "previous checkpoint (step 2)" in text
  assert "4.orbax-checkpoint-tmp" in text  # the interrupted write is reported
  assert metrics(model_dir) == []

  checkpoints.quarantine(root, 4)
  resumed = Run(model_dir, tmp_path / "resumed.log", env)
  runs.append(resumed)
  assert resumed.wait() == 0, resumed.tail()
  assert resumed.resumed_from() == 2
  records = metrics(model_dir)
  assert [r["step"] for r in records] == list(range(3, TRAIN_STEPS + 1))
  for r in records:
    assert values(r) == reference.records[r["step"]]
  assert not check_checkpoints(root, reference)
  assert tmp_dirs(root) == []
