"""A seconds-long smoke run on scikit-learn's packaged 8x8 digits (no data files needed).

  python -m experiments.train --config=configs/digits_tiny.py --workdir=runs/digits_tiny

Used by the tests for the train/checkpoint/resume paths; 300 of the 1,797 digits
are held out (class-balanced) for evaluation.
"""

from configs.common import base_config


def get_config():
  config = base_config()
  config.dataset = "pkg:digits"
  config.num_holdout = 300
  config.eval_split = "holdout"
  config.model = "cnn_small"
  config.model_kwargs.widths = (8, 16)
  config.model_kwargs.hidden = 32
  config.augment = "random_crop(padding=1)"
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_steps = 60
  config.optimizer.lr = 0.05
  config.log_every = 5
  config.eval_every = 30
  config.checkpoint_every = 10
  return config
