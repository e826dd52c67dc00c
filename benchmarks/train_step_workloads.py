"""The workloads of benchmarks/train_step.py: configs, batches and convolution choices.

A workload is a model of the project's registry built by the train loop's own code from
`configs.common.base_config()` (random uint8 images, 10 classes, no augmentation):
  resnet20    CIFAR ResNet-20 (option-A shortcuts), 32x32x3
  cnn_small   the small CNN (conv 32-32-64-64, dense 256), 28x28x1
  efficientnet_lite0, mobilenet_v2_1.0: depthwise-separable ImageNet networks at 64x64x3
              (small enough for XLA's own grouped convolutions to finish a step in seconds)
The benchmark's convolution names (--convs) map to the models' `conv_backend` field
(models/conv.py): 'onednn' -> 'onednn', 'fast' -> 'xla' (XLA's convolutions, kernel gradient as
matrix products), 'lax' -> 'lax' (lax.conv_general_dilated and XLA's own gradients).
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
# --convs name -> the models' conv_backend.
CONV_BACKENDS = {"onednn": "onednn", "fast": "xla", "lax": "lax"}
# Workloads whose convolutions are mostly depthwise (grouped), at 64 px.
DEPTHWISE_MODELS = ("efficientnet_lite0", "mobilenet_v2_1.0")


def models_conv() -> str:
  """The --convs name of the convolution the models run here by default (conv_backend 'auto'
  in this process): 'onednn' where its extension builds and loads (one CPU device), else 'fast'."""
  from effcv_jax.models import conv

  return "onednn" if conv.backend("auto")[0] == "onednn" else "fast"


def make_config(model: str, batch_size: int, conv: str = "auto", dtype: str = "float32"):
  """(config, image shape (H, W, C)): the project's base config for `model` as the train loop
  would build it, its convolutions on the backend of `conv` (a --convs name or a backend),
  computing in `dtype` (config.dtype: 'float32' or 'bfloat16')."""
  from configs.common import base_config

  config = base_config()
  config.dataset = "synthetic:benchmark"     # never read
  config.augment = ""
  config.batch_size = batch_size
  config.num_classes = NUM_CLASSES
  config.model = model
  config.conv_backend = CONV_BACKENDS.get(conv, conv)
  config.dtype = dtype
  if model == "cnn_small":
    config.model_kwargs.widths = (32, 64)
    config.model_kwargs.hidden = 256
    return config, (28, 28, 1)
  if model in DEPTHWISE_MODELS:
    return config, (64, 64, 3)
  config.input_mean = (0.4914, 0.4822, 0.4465)
  config.input_std = (0.2470, 0.2435, 0.2616)
  return config, (32, 32, 3)


def random_batch(shape: tuple[int, ...], batch_size: int, seed: int = 0,
                 num_classes: int = NUM_CLASSES) -> dict:
  """{"image": uint8 (batch_size, *shape), "label": int32 (batch_size,) in [0, num_classes)},
  random and fixed."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size,) + shape, dtype=np.uint8),
          "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}
