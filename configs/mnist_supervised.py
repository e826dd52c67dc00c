"""MNIST, small CNN, all 60,000 labels; evaluated on the official test split.

  python -m experiments.train --config=configs/mnist_supervised.py \
      --workdir=runs/mnist --data_dir=../shared/data

Reads npz:mnist.npz from the data directory (--data_dir or $EFFCV_DATA_DIR).
"""

from configs.common import base_config


def get_config():
  config = base_config()
  config.dataset = "npz:mnist.npz"
  config.eval_split = "test"
  config.input_mean = (0.1307,)
  config.input_std = (0.3081,)
  config.model = "cnn_small"
  config.augment = "random_crop(padding=2)"
  config.num_steps = 2000
  config.optimizer.lr = 0.05
  config.optimizer.warmup_steps = 100
  return config
