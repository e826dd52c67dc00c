"""Noisy Student self-training, the whole loop, resumable.

  python -m experiments.noisy_student        # quickstart: offline, packaged MNIST digits
  python -m experiments.noisy_student --config=configs/noisy_student_fashion_mnist.py \
      --workdir=runs/ns_fashion_mnist --data_dir=../shared/data

Rerunning the same command resumes at the stage and step where it stopped. Prints a
summary table (teacher, student 1..K) and writes WORKDIR/summary.json.
"""

import json
import os

from effcv_jax import noisy_student
from experiments import cli

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs",
                               "noisy_student_quickstart.py")


def main(argv):
  del argv
  summary = noisy_student.run(cli.config(), cli.workdir(), cli.data_dir())
  print(noisy_student.format_summary(summary))
  print(json.dumps({row["stage"]: row["accuracy"] for row in summary["stages"]}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          defaults={"config": _DEFAULT_CONFIG, "workdir": "runs/noisy_student_quickstart"})
