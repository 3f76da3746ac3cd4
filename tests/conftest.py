"""Shared test set-up: CPU-only JAX, quiet TensorFlow, the offline data dir."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = pathlib.Path(os.environ.get("NARLM_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  if not DATA_DIR.is_dir():
    pytest.fail(f"offline data dir {DATA_DIR} is missing (set NARLM_DATA_DIR)")
  return DATA_DIR
