"""One experiment file for both trainers: narlm's trainer reads t5x's includes.

Runs without t5x: the include of t5x's run gin resolves to narlm's, the t5x
glue is skipped, and what only t5x understands is refused with its name.
"""

import pathlib

import gin
import pytest

from narlm import gin_includes
from narlm import train

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = REPO / "narlm" / "gin"
EXPERIMENTS = (sorted(GIN_DIR.glob("*.gin")) + sorted(GIN_DIR.glob("compare/*_minilm_*.gin"))
               + sorted(p for p in GIN_DIR.glob("pretraining_effect/*.gin") if not p.stem.endswith("_run")))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _experiment(tmp_path, body: str, name="exp.gin") -> str:
  path = tmp_path / name
  path.write_text("include 'narlm/gin/models/tiny.gin'\n" + body, encoding="utf-8")
  return str(path)


BASICS = """
MIXTURE_OR_TASK_NAME = 'sentcomp_bert'
TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}
TRAIN_STEPS = 2
"""


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_every_experiment_parses_for_narlms_trainer(path, monkeypatch, tmp_path):
  """The same files test_t5x_interface checks for t5x's route."""
  monkeypatch.setenv("NARLM_DISTILLED_DIR", str(tmp_path))  # the distilled arms name it
  train.parse_gin([str(path.relative_to(REPO))], ["MODEL_DIR = '/tmp/unused'"])
  assert gin.query_parameter("train_lib.train.model") is not None
  assert isinstance(gin.query_parameter("%RANDOM_SEED"), int)
  # narlm's trainer read its own run gin, never t5x's glue.
  read = [p for p, _ in gin_includes._files_read]  # pylint: disable=protected-access
  assert any(p.endswith("narlm/gin/runs/train.gin") for p in read)
  assert not any("/gin/t5x/" in p for p in read), read


def test_t5x_run_gin_include_resolves_to_narlms(tmp_path):
  for run in ("pretrain", "finetune"):
    gin.clear_config()
    exp = _experiment(tmp_path, f"include 't5x/configs/runs/{run}.gin'\n"
                      "include 'narlm/gin/t5x/runs/common.gin'\n" + BASICS + "RANDOM_SEED = 7\n")
    train.parse_gin([exp], ["MODEL_DIR = '/tmp/unused'"])
    assert gin.query_parameter("train_lib.train.model") is not None
    assert gin.query_parameter("%RANDOM_SEED") == 7
    assert gin.query_parameter("%TRAIN_STEPS") == 2


def test_t5x_only_binding_is_refused_with_narlms_equivalent(tmp_path):
  exp = _experiment(tmp_path, "include 'narlm/gin/runs/pretrain.gin'\n" + BASICS)
  with pytest.raises(ValueError, match=r"trainer\.Trainer\.num_microbatches is a binding for "
                     r"t5x's trainer.*GRAD_ACCUM_STEPS"):
    train.parse_gin([exp], ["MODEL_DIR = '/tmp/unused'",
                            "trainer.Trainer.num_microbatches = 2"])
  gin.clear_config()
  # In a file, gin's location names the file and line.
  bad = _experiment(tmp_path, "include 'narlm/gin/runs/pretrain.gin'\n" + BASICS
                    + "utils.SaveCheckpointConfig.period = 3\n", name="bad.gin")
  with pytest.raises(ValueError, match=r"(?s)utils\.SaveCheckpointConfig.*CHECKPOINT_PERIOD.*bad\.gin"):
    train.parse_gin([bad], ["MODEL_DIR = '/tmp/unused'"])


def test_a_macro_under_its_old_name_is_refused(tmp_path):
  exp = _experiment(tmp_path, "include 'narlm/gin/runs/pretrain.gin'\n" + BASICS + "SEED = 3\n")
  with pytest.raises(ValueError, match=r"SEED is bound by .*exp\.gin.*RANDOM_SEED"):
    train.parse_gin([exp], ["MODEL_DIR = '/tmp/unused'"])
  gin.clear_config()
  ok = _experiment(tmp_path, "include 'narlm/gin/runs/pretrain.gin'\n" + BASICS, name="ok.gin")
  with pytest.raises(ValueError, match=r"command-line binding 'INFER_EVAL_EXAMPLES = 4'.*"
                     r"EVALUATOR_NUM_EXAMPLES"):
    train.parse_gin([ok], ["MODEL_DIR = '/tmp/unused'", "INFER_EVAL_EXAMPLES = 4"])


def test_bad_files_are_named(tmp_path):
  missing = _experiment(tmp_path, "include 'narlm/gin/runs/nope.gin'\n" + BASICS)
  with pytest.raises(ValueError, match=r"(?s)gin file not found: narlm/gin/runs/nope\.gin.*exp\.gin"):
    train.parse_gin([missing], ["MODEL_DIR = '/tmp/unused'"])
  gin.clear_config()
  latin1 = tmp_path / "latin1.gin"
  latin1.write_bytes("# caf\xe9\n".encode("latin-1") + BASICS.encode())
  with pytest.raises(ValueError, match=r"latin1\.gin is not UTF-8"):
    train.parse_gin([str(latin1)], ["MODEL_DIR = '/tmp/unused'"])
  gin.clear_config()
  odd = _experiment(tmp_path, "include narlm/gin/runs/pretrain.gin\n" + BASICS, name="odd.gin")
  with pytest.raises(ValueError, match=r"odd\.gin: cannot read the include statement"):
    train.parse_gin([odd], ["MODEL_DIR = '/tmp/unused'"])
  with pytest.raises(FileNotFoundError, match="gin file not found: nowhere.gin"):
    train.parse_gin(["nowhere.gin"], [])


def test_line_numbers_survive_the_rewrite(tmp_path):
  """gin's error locations point at the real file and line."""
  exp = _experiment(tmp_path, "include 'narlm/gin/runs/pretrain.gin'\n" + BASICS
                    + "BATCH_SIZE = (\n")
  with pytest.raises(ValueError, match=r"exp\.gin"):
    train.parse_gin([exp], ["MODEL_DIR = '/tmp/unused'"])
