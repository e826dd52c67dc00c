"""Trains a class-conditional GAN (effcv_jax/gan) on a run's labelled split, from a config file.

  python -m experiments.gan --config=configs/gan_fashion_mnist_1000.py \
      --workdir=runs/gan_fashion_mnist_1000 [--data_dir=../shared/data]

Rerunning the same command with the same --workdir resumes from the last checkpoint. The
workdir's samples.png shows samples of every class (one row per class); measure their quality
with experiments/gan_quality.py and mix them into a classifier's batches with
--config.gan_augment.workdir=WORKDIR --config.gan_augment.ratio=R.
"""

import json

from effcv_jax.gan import run
from experiments import cli


def main(argv):
  del argv
  print(json.dumps(run.train_gan(cli.config(), cli.workdir(), cli.data_dir())))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"), required=("config", "workdir"))
