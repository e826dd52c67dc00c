"""Known errors end an entry point with one line (effcv_jax/errors.py, experiments/cli.py)."""

import errno
import os
import subprocess
import sys

from effcv_jax import errors
from effcv_jax.data import DataError
from tests.conftest import REPO_ROOT


def test_one_line_message_of_user_errors_and_full_disks_only():
  assert errors.one_line_message(errors.ConfigError("batch_size=0:\n  use a positive size")) == (
      "batch_size=0: use a positive size")
  try:
    try:
      raise DataError("digits.npz is damaged")
    except DataError as e:
      raise RuntimeError("while loading") from e
  except RuntimeError as wrapped:
    assert errors.one_line_message(wrapped) == "digits.npz is damaged"   # found in the chain
  full = OSError(errno.ENOSPC, "No space left on device", os.path.join(REPO_ROOT, "x.json"))
  assert errors.one_line_message(RuntimeError("a bug")) is None   # unknown: keeps its traceback
  try:
    raise RuntimeError("save failed") from full
  except RuntimeError as wrapped:
    message = errors.one_line_message(wrapped)
  assert message.startswith("no space left on ") and "x.json" in message
  assert "mounted at" in message and "free space and rerun" in message


def _train(tmp_path, *extra):
  return subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/digits_tiny.py",
       f"--workdir={tmp_path / 'run'}", "--config.dataset=npz:nowhere.npz", *extra],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "EFFCV_DATA_DIR": str(tmp_path)})


def test_entry_point_ends_a_known_error_with_one_line_and_status_2(tmp_path):
  result = _train(tmp_path)
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith(f"ERROR: npz file '{tmp_path / 'nowhere.npz'}' not found")
  assert lines[0].endswith("(--verbose for the traceback)")
  assert not (tmp_path / "run").exists()
  verbose = _train(tmp_path, "--verbose")
  assert verbose.returncode == errors.EXIT_USER_ERROR
  assert "Traceback (most recent call last)" in verbose.stderr and "DataError" in verbose.stderr
  assert verbose.stderr.strip().splitlines()[-1].startswith("ERROR: npz file ")
