"""Supervised training from a config file.

  python -m experiments.train --config=configs/fashion_mnist_supervised.py --workdir=runs/fmnist \
      [--config.num_steps=1000] [--data_dir=../shared/data]

Rerunning the same command with the same --workdir resumes from the last checkpoint.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from effcv_jax import metrics, train
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Directory of local dataset files (npz:...); default $EFFCV_DATA_DIR.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.initialize_distributed()
  metrics.quiet_library_logs()
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _DATA_DIR.value)
  print(json.dumps(results))


if __name__ == "__main__":
  cli.run(main)
