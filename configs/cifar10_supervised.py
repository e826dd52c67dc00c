"""CIFAR-10, ResNet-20 (He et al. 2016), 45,000 train / 5,000 class-balanced validation.

  # the paper's recipe (64k steps of 128 = 182 epochs; a GPU run):
  python -m experiments.train --config=configs/cifar10_supervised.py \
      --workdir=runs/cifar10_resnet20 --data_dir=../shared/data
  # a CPU budget (8,000 steps; the step's speed: benchmarks/results/train_step.json):
  python -m experiments.train --config=configs/cifar10_supervised.py:cpu \
      --workdir=runs/cifar10_resnet20_cpu --data_dir=../shared/data
  # evaluate on the official test split (from TFDS or any npz with x_test/y_test):
  python -m experiments.evaluate --workdir=runs/cifar10_resnet20 --dataset=npz:PATH --split=test

Reads npz:cifar10_train.npz (the 50,000 training images); the validation split is
the fixed, class-balanced 5,000 of split_seed 0.
"""

from configs.common import base_config


def get_config(budget: str = "full"):
  config = base_config()
  config.dataset = "npz:cifar10_train.npz"
  config.num_holdout = 5000
  config.eval_split = "holdout"
  config.input_mean = (0.4914, 0.4822, 0.4465)
  config.input_std = (0.2470, 0.2435, 0.2616)
  config.model = "resnet20"
  config.augment = "flip_lr|random_crop(padding=4)"
  config.batch_size = 128
  config.optimizer.lr = 0.1
  config.optimizer.weight_decay = 1e-4
  if budget == "full":
    config.num_steps = 64000
    config.eval_every = 4000
  elif budget == "cpu":
    config.num_steps = 8000
    config.eval_every = 2000
  else:
    raise ValueError(f"budget must be 'full' or 'cpu', got {budget!r}")
  return config
