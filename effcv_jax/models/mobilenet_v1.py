"""MobileNet v1 (Howard et al. 2017) laid out like the Keras application.

A 3x3 stride-2 convolution, 13 depthwise-separable blocks (3x3 depthwise conv,
then 1x1 pointwise conv, each followed by batch norm and ReLU6), global average
pooling, dropout and a linear classifier. `alpha` (the width multiplier) scales
every layer's channels as `int(channels * alpha)`; `depth_multiplier` is the
number of depthwise outputs per input channel.

Module names follow the Keras layer names (`conv1`, `conv1_bn`, `conv_dw_1`,
`conv_dw_1_bn`, `conv_pw_1`, ..., `conv_pw_13_bn`) so that Keras weights import
by name; the classifier is a Dense layer named `head` (Keras uses an equivalent
1x1 convolution `conv_preds` on the pooled features). Convolutions pad like
TensorFlow's "SAME": for stride 2 on an even size the one padding pixel goes
after (bottom/right), not before. Batch norm uses Keras's epsilon 1e-3 and
momentum 0.99. With `batch_norm=False` the convolutions carry biases instead,
for weights whose batch norm was folded into the convolutions (TFLite).

The Keras and TF-slim ImageNet weights expect inputs scaled to [-1, 1]
(x / 127.5 - 1 on uint8 pixels) at 128, 160, 192 or 224 pixels.

Registered as `mobilenet_v1_{alpha}` for alpha in 0.25, 0.5, 0.75, 1.0.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models import layers
from effcv_jax.models.conv import Conv

# (pointwise channels before `alpha`, depthwise stride) of blocks 1..13.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
STEM_CHANNELS = 32


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of TF "SAME" for one spatial dimension.

  The output has ceil(size / stride) positions; the total padding needed is split
  with the smaller half before, so stride 2 on an even size pads (0, 1) for a 3x3
  kernel, where PyTorch-style padding=1 would pad (1, 1).
  """
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv_norm_relu6(x: jax.Array, *, features: int, kernel: int, stride: int,
                     groups: int, name: str, train: bool, batch_norm: bool,
                     bn_epsilon: float, bn_momentum: float, conv_backend: str,
                     dtype: Any = None) -> jax.Array:
  """Conv (TF "SAME" padding) -> BN (or conv bias) -> ReLU6, inside a compact module.

  x: (B, H, W, C). groups == C makes the convolution depthwise; its kernel is
  then (k, k, 1, features), output channel c * (features // C) + m reading input c.
  Submodules are named `name` and `name + '_bn'`.
  """
  padding = [tf_same_padding(x.shape[1], kernel, stride),
             tf_same_padding(x.shape[2], kernel, stride)]
  x = Conv(features, (kernel, kernel), stride, padding=padding,
           feature_group_count=groups, use_bias=not batch_norm, backend=conv_backend,
           dtype=dtype, name=name)(x)
  if batch_norm:
    x = layers.batch_norm(train, name=f"{name}_bn", epsilon=bn_epsilon, momentum=bn_momentum,
                          dtype=dtype)(x)
  return jnp.clip(x, 0.0, 6.0)


class MobileNetV1(nn.Module):
  """MobileNet v1 classifier. Input (B, H, W, 3) in [-1, 1]; output logits (B, num_classes).

  `dropout_rate` (Keras default 1e-3) applies to the pooled features before
  `head` and draws from the 'dropout' RNG stream when training.
  """
  num_classes: int = 1000
  alpha: float = 1.0
  depth_multiplier: int = 1
  dropout_rate: float = 1e-3
  batch_norm: bool = True
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.99
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layer = functools.partial(
        _conv_norm_relu6, train=train, batch_norm=self.batch_norm,
        bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
        conv_backend=self.conv_backend, dtype=self.dtype)
    x = layer(x, features=int(STEM_CHANNELS * self.alpha), kernel=3, stride=2,
              groups=1, name="conv1")
    for block_id, (channels, stride) in enumerate(BLOCKS, start=1):
      in_channels = x.shape[-1]
      x = layer(x, features=in_channels * self.depth_multiplier, kernel=3,
                stride=stride, groups=in_channels, name=f"conv_dw_{block_id}")
      x = layer(x, features=int(channels * self.alpha), kernel=1, stride=1,
                groups=1, name=f"conv_pw_{block_id}")
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)

