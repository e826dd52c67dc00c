"""A seconds-long GAN run on scikit-learn's packaged 8x8 digits (no data files needed), with
the 300 class-balanced held-out digits of configs/digits_tiny.py as its evaluation split.

  python -m experiments.gan --config=configs/gan_digits_tiny.py --workdir=runs/gan_digits_tiny

Used by the tests of the GAN trainer, its resume and the mixing of its samples.
"""

from configs.common import gan_base_config


def get_config():
  config = gan_base_config()
  config.dataset = "pkg:digits"
  config.num_holdout = 300
  config.eval_split = "holdout"
  config.batch_size = 16
  config.num_steps = 6
  config.gan.noise_dim = 8
  config.gan.width = 4
  config.gan.groups = 2
  config.gan.num_eval_images = 32
  config.gan.grid_per_class = 3
  config.log_every = 2
  config.eval_every = 3
  config.checkpoint_every = 2
  return config
