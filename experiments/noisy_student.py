"""Noisy Student self-training, the whole loop, resumable.

  python -m experiments.noisy_student        # quickstart: offline, packaged MNIST digits
  python -m experiments.noisy_student --config=configs/noisy_student_fashion_mnist.py \
      --workdir=runs/ns_fashion_mnist --data_dir=../shared/data

Rerunning the same command resumes at the stage and step where it stopped. Prints a
summary table (teacher, student 1..K) and writes WORKDIR/summary.json.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from effcv_jax import metrics, noisy_student
from experiments import cli

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs",
                               "noisy_student_quickstart.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Noisy Student config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/noisy_student_quickstart",
                               "Directory of the run's stages and summary.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Local data directory; default $EFFCV_DATA_DIR.")


def main(argv):
  del argv
  cli.initialize_distributed()
  metrics.quiet_library_logs()
  summary = noisy_student.run(_CONFIG.value, _WORKDIR.value, _DATA_DIR.value)
  print(noisy_student.format_summary(summary))
  print(json.dumps({row["stage"]: row["accuracy"] for row in summary["stages"]}))


if __name__ == "__main__":
  cli.run(main)
