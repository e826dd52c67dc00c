"""The semi-supervised runner (effcv_jax/ssl/run.py): a run stopped and resumed equals an
uninterrupted one; bad settings fail before the workdir is written; the CIFAR-10 configs."""

import json
import os

import pytest

from configs import digits_tiny, ssl_cifar10
from effcv_jax import preflight, sharding, train
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.ssl import algorithms, run


def _config(num_steps, **ssl):
  config = digits_tiny.get_config()
  config.num_labelled = 50
  config.batch_size, config.num_steps = 8, num_steps
  config.optimizer.schedule = "constant"  # the same updates whatever num_steps says
  config.log_every = config.checkpoint_every = config.eval_every = 2
  config.ssl.update({**dict(algorithm="flexmatch", mu=2, threshold=0.6,
                            weak_augment="random_crop(padding=1)",
                            strong_augment="random_crop(padding=1)|cutout(size=4)"), **ssl})
  return config


def _train_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f) if line.get("split") == "train"]


def _with_ema(config):
  config.ema_decay = 0.5
  return config


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
  """With weight averages (config.ema_decay): checkpointed, resumed and evaluated."""
  straight = run.train_ssl(_with_ema(_config(4)), str(tmp_path / "straight"))
  first = run.train_ssl(_with_ema(_config(2)), str(tmp_path / "resumed"))
  assert first["step"] == 2
  resumed = run.train_ssl(_with_ema(_config(4)), str(tmp_path / "resumed"))
  assert resumed["step"] == 4 and resumed["algorithm"] == "flexmatch"
  facts = ("accuracy", "loss", "accuracy_raw", "loss_raw")
  assert [resumed[k] for k in facts] == [straight[k] for k in facts]
  assert resumed["loss"] != resumed["loss_raw"]  # evaluated with the averages
  # The run's train state restores like a supervised run's (evaluate, export, teach).
  config = _with_ema(_config(4))
  mesh = sharding.make_mesh()
  run_data = run_data_lib.load_run_data(config)
  _, task, state, step = workdir_lib.restore_latest(str(tmp_path / "resumed"),
                                                   run_data.image_shape, mesh)
  again = train.evaluate_state(train.jit_eval_step(task, mesh), state, run_data.eval,
                               config.eval_batch_size, mesh)
  assert step == 4 and [again[k] for k in facts] == [resumed[k] for k in facts]
  lines = [_train_lines(tmp_path / name) for name in ("straight", "resumed")]
  assert [line["loss"] for line in lines[0]] == [line["loss"] for line in lines[1]]
  assert any(line["mask_rate"] > 0 for line in lines[0])  # the unlabelled loss took part


def test_bad_ssl_setting_fails_before_the_workdir_is_written(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match="config.ssl.mu = 0"):
    run.train_ssl(_config(2, mu=0), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("setting", ["4000", "250,cpu,flexmatch", "40,gpu", "4000,cpu,uda"])
def test_cifar10_configs_pass_preflight(setting):
  config = ssl_cifar10.get_config(setting)
  preflight.check_config(config)
  labels = int(setting.split(",")[0])
  assert config.num_labelled == labels and config.num_holdout == 5000 and config.split_seed == 0
  algorithm = (setting.split(",") + ["", "fixmatch"])[2] or "fixmatch"
  for key, value in algorithms.PAPER_DEFAULTS[algorithm].items():
    assert config.ssl[key] == value
