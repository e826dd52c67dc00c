"""Semi-supervised training (FixMatch, FlexMatch, FreeMatch, SoftMatch, UDA, Mean Teacher,
Pseudo-Label, labels-only) from a config file; the algorithm is config.ssl.algorithm.

  python -m experiments.ssl --config=configs/ssl_cifar10.py:4000 --workdir=runs/ssl_c10_4000 \
      [--config.ssl.algorithm=flexmatch] [--data_dir=../shared/data]

Rerunning the same command with the same --workdir resumes from the last checkpoint.
"""

import json

from effcv_jax.ssl import run
from experiments import cli


def main(argv):
  del argv
  print(json.dumps(run.train_ssl(cli.config(), cli.workdir(), cli.data_dir())))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"), required=("config", "workdir"))
