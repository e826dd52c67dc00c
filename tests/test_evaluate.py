"""experiments.evaluate: restores the latest checkpoint and prints one JSON line."""

import json
import os
import subprocess
import sys

import numpy as np

from configs import cifar10_supervised, digits_tiny
from effcv_jax import task as task_lib
from effcv_jax import train
from effcv_jax import workdir as workdir_lib
from experiments import evaluate
from tests.conftest import REPO_ROOT, data_file


def test_evaluate_reproduces_the_runs_own_final_evaluation(tmp_path):
  config = digits_tiny.get_config()
  config.num_steps = 20
  results = train.train_and_evaluate(config, str(tmp_path))
  again = evaluate.evaluate_workdir(str(tmp_path))
  assert again["checkpoint_step"] == 20 and again["num_examples"] == 300
  assert again["accuracy"] == results["accuracy"]
  identity_view = evaluate.evaluate_workdir(str(tmp_path), tta_views="identity")
  assert identity_view["accuracy"] == results["accuracy"]
  np.testing.assert_allclose(identity_view["loss"], results["loss"], rtol=1e-4)
  with_flips = evaluate.evaluate_workdir(str(tmp_path), tta_views="five_shift")
  assert with_flips["num_examples"] == 300 and with_flips["tta"] == "five_shift"
  assert with_flips["accuracy"] != results["accuracy"] or with_flips["loss"] != results["loss"]


def test_cli_on_cifar_resnet20_workdir_with_npz_test_split(tmp_path):
  cifar = data_file("cifar10_train.npz")
  config = cifar10_supervised.get_config("cpu")
  config.num_steps = 2
  config.batch_size = 16
  config.eval_every = 1000
  config.num_holdout = 5000
  config.eval_split = "holdout"
  workdir = tmp_path / "resnet20"
  workdir.mkdir()
  # A workdir as training leaves it, without paying for the 5,000-image evaluation here.
  workdir_lib.save_or_check_config(config, str(workdir))
  from effcv_jax import sharding
  from effcv_jax.checkpoint import Checkpointer
  mesh = sharding.make_mesh()
  task, state = task_lib.init_task_and_state(config, (32, 32, 3), mesh)
  checkpointer = Checkpointer(str(workdir))
  checkpointer.save(2, state)
  checkpointer.close()
  with np.load(cifar) as npz:
    np.savez(tmp_path / "cifar_small.npz", x_test=npz["x_train"][:100], y_test=npz["y_train"][:100])
  output = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
       f"--dataset=npz:{tmp_path / 'cifar_small.npz'}", "--split=test"],
      cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
  lines = output.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result["num_examples"] == 100 and result["checkpoint_step"] == 2
  assert 0.0 <= result["accuracy"] <= 1.0 and result["split"] == "test"


def test_imported_resnet20_workdir_evaluates_like_the_source(tmp_path):
  """num_steps=0 run: the PyTorch weights are imported, saved as checkpoint 0, evaluated."""
  data_file("weights/cifar10_resnet20_torch_names.npz")
  from configs import cifar10_resnet56_pretrained
  config = cifar10_resnet56_pretrained.get_config("20")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 0 and results["num_examples"] == 5000
  # The hold-out is drawn from CIFAR-10 train, which these weights were trained on.
  assert results["accuracy"] > 0.99
  again = evaluate.evaluate_workdir(str(tmp_path))
  assert again["checkpoint_step"] == 0 and again["accuracy"] == results["accuracy"]


def test_cli_evaluates_another_dataset_with_the_training_data_gone(tmp_path):
  """Only the workdir and the evaluation npz are needed: the run's training npz is moved
  away (and no data directory is set) before evaluating on another file."""
  from effcv_jax.data import sources
  images, labels = sources.load_arrays("pkg:digits", "train")
  train_npz = tmp_path / "digits_train.npz"
  np.savez(train_npz, x_train=images[:1000], y_train=labels[:1000],
           x_test=images[1000:1100], y_test=labels[1000:1100])
  other_npz = tmp_path / "other.npz"
  np.savez(other_npz, x_test=images[1100:1250], y_test=labels[1100:1250])
  config = digits_tiny.get_config()
  config.dataset = f"npz:{train_npz}"
  config.num_holdout = 0
  config.eval_split = "test"
  config.num_steps = 10
  config.eval_every = 10
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  train_npz.rename(tmp_path / "moved_away.npz")
  env = {**os.environ, "EFFCV_DATA_DIR": ""}
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
       f"--dataset=npz:{other_npz}", "--split=test"],
      cwd=REPO_ROOT, capture_output=True, text=True, env=env)
  assert completed.returncode == 0, completed.stderr[-2000:]
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  assert result["num_examples"] == 150 and result["checkpoint_step"] == 10
  assert result["dataset"] == f"npz:{other_npz}" and result["split"] == "test"
  # The same checkpoint in-process gives the same numbers.
  again = evaluate.evaluate_workdir(str(workdir), f"npz:{other_npz}", "test")
  assert again["accuracy"] == result["accuracy"] and again["num_examples"] == 150
  # The run's own evaluation set is gone with the training file: that fails, naming it.
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
      cwd=REPO_ROOT, capture_output=True, text=True, env=env)
  assert completed.returncode != 0 and "digits_train.npz" in completed.stderr
