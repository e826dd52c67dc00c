"""The published CIFAR-10 ResNet-56 (PyTorch weights in the data directory), imported, not trained.

  python -m experiments.train --config=configs/cifar10_resnet56_pretrained.py \
      --workdir=runs/cifar10_resnet56_pretrained --data_dir=../shared/data
  python -m experiments.evaluate --workdir=runs/cifar10_resnet56_pretrained            # hold-out
  python -m experiments.evaluate --workdir=runs/cifar10_resnet56_pretrained \
      --dataset=npz:PATH --split=test                                                 # a test split

num_steps = 0: the run imports the weights (option-A ResNet-56, inputs normalised with the
ImageNet mean/std as the weights expect), saves them as checkpoint 0 and evaluates. The
5,000 hold-out images come from CIFAR-10 *train*, on which these weights were trained, so
the hold-out accuracy is near 100 %; the reported test accuracy (93.62 %) needs the official
test split (TFDS `cifar10`, split `test`, or an npz of it). `:DEPTH` picks 20, 32, 44 or 56.
"""

import ml_collections

from configs import cifar10_supervised

_DEPTHS = (20, 32, 44, 56)


def get_config(depth: str = "56"):
  depth = int(depth)
  if depth not in _DEPTHS:
    raise ValueError(f"depth must be one of {_DEPTHS}, got {depth}")
  config = cifar10_supervised.get_config("cpu")
  config.model = f"resnet{depth}"
  config.input_mean = (0.485, 0.456, 0.406)
  config.input_std = (0.229, 0.224, 0.225)
  config.num_steps = 0
  config.init_from = ml_collections.ConfigDict(dict(
      kind="torch_cifar_resnet", path=f"weights/cifar10_resnet{depth}_torch_names.npz",
      new_head=False, head_patterns=(), check_preprocessing=True))
  return config
