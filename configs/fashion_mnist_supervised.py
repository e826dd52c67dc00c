"""Fashion-MNIST, small CNN, all 60,000 labels; evaluated on the official test split.

  python -m experiments.train --config=configs/fashion_mnist_supervised.py \
      --workdir=runs/fashion_mnist --data_dir=../shared/data

Reads npz:fashion_mnist.npz (x_train/y_train, x_test/y_test) from the data
directory (--data_dir or $EFFCV_DATA_DIR).
"""

from configs.common import base_config


def get_config():
  config = base_config()
  config.dataset = "npz:fashion_mnist.npz"
  config.eval_split = "test"
  config.input_mean = (0.2860,)
  config.input_std = (0.3530,)
  config.model = "cnn_small"
  config.model_kwargs.dropout_rate = 0.3
  config.augment = "flip_lr|random_crop(padding=2)"
  config.batch_size = 128
  config.num_steps = 3000
  config.optimizer.lr = 0.05
  config.optimizer.warmup_steps = 100
  config.eval_every = 1000
  return config
