"""A Noisy Student config small enough for tests: 20-step CNNs on the packaged digits.

Two iterations (students of widths (8, 16) then (16, 16)); the pool is the 1,297 digits
outside the 200 labels and 300 held out. Used in-process by tests/test_noisy_student.py
and as a --config file by its SIGKILL and report tests.
"""

import ml_collections

from configs import noisy_student_quickstart
from effcv_jax import config_utils


def get_config():
  config = noisy_student_quickstart.get_config()
  shared = {"dataset": "pkg:digits", "num_holdout": 300, "num_labelled": 200,
            "model_kwargs.widths": (8, 16), "model_kwargs.hidden": 32, "augment": "",
            "batch_size": 32, "eval_batch_size": 64, "num_steps": 20, "log_every": 10,
            "eval_every": 20, "checkpoint_every": 10, "input_mean": (0.5,), "input_std": (0.5,)}
  config.teacher = config_utils.with_overrides(config.teacher, shared)
  config.student = config_utils.with_overrides(
      config.student, {**shared, "augment": "randaugment(num_ops=2, magnitude=9)"})
  config.num_iterations = 2
  config.student_overrides = ({"model_kwargs.widths": (8, 16)}, {"model_kwargs.widths": (16, 16)})
  config.pseudo.batch_size = 128
  config.pseudo.shard_size = 512
  config.pseudo.threshold = 0.15       # 20-step teachers are not confident
  # One ablation for experiments.noisy_student_report's test.
  config.ablations = ml_collections.ConfigDict({"hard_labels": {"pseudo.hard": True}},
                                               allow_dotted_keys=True)
  return config
