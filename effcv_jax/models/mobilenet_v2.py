"""MobileNet v2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks.

A 3x3 stride-2 convolution (32 channels), 17 inverted residual blocks (`BLOCKS`:
a 1x1 expansion to t times the input channels, skipped when t = 1; a 3x3 depthwise
convolution carrying the stride; a linear 1x1 projection; the input added back when
the stride is 1 and the channels agree), a 1x1 convolution to 1280 channels, global
average pooling, dropout and a linear classifier. Every convolution but the
projections is followed by batch norm and ReLU6. `alpha` scales the channels of the
stem and blocks to multiples of 8 (`make_divisible`); the last convolution keeps
1280 unless alpha > 1. Convolutions pad like TensorFlow's "SAME" (models/mobilenet_v1.py
`tf_same_padding`); batch norm uses epsilon 1e-3 and momentum 0.999 as the TF-slim
and Keras models do. `batch_norm=False` gives the convolutions biases instead, for
weights whose batch norm is folded (TFLite).

Module names: `stem`, `block{i}_expand`, `block{i}_depthwise`, `block{i}_project`
(i = 0..16, each with a `_bn` sibling when batch_norm), `top_conv`, `head`.
The TF-slim ImageNet weights expect x / 127.5 - 1 on uint8 pixels.

Registered as `mobilenet_v2_{alpha}` for alpha in 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import batch_norm
from effcv_jax.models.mobilenet_v1 import tf_same_padding

# (expansion t, output channels c before alpha, repeats n, first stride s) of the stages.
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
TOP_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
  """`value` rounded to the nearest multiple of `divisor` (at least `divisor`), one
  multiple up when rounding would lose more than 10 %."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def block_settings(alpha: float) -> list[tuple[int, int, int]]:
  """(expansion, output channels, stride) of the 17 blocks in order."""
  settings = []
  for expansion, channels, repeats, stride in BLOCKS:
    for index in range(repeats):
      settings.append((expansion, make_divisible(channels * alpha), stride if index == 0 else 1))
  return settings


class MobileNetV2(nn.Module):
  """MobileNet v2 classifier. Input (B, H, W, 3) in [-1, 1]; output logits (B, num_classes).

  `dropout_rate` applies to the pooled features before `head` and draws from the
  'dropout' RNG stream when training.
  """
  num_classes: int = 1000
  alpha: float = 1.0
  dropout_rate: float = 0.2
  batch_norm: bool = True
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.999
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32

  def _layer(self, x: jax.Array, features: int, kernel: int, stride: int, groups: int,
             name: str, train: bool, relu6: bool = True) -> jax.Array:
    """Conv (TF "SAME") -> BN (or conv bias) -> ReLU6 (unless not relu6): (B, H, W, C) ->
    (B, H / stride, W / stride, features)."""
    padding = [tf_same_padding(x.shape[1], kernel, stride),
               tf_same_padding(x.shape[2], kernel, stride)]
    x = Conv(features, (kernel, kernel), stride, padding=padding, feature_group_count=groups,
             use_bias=not self.batch_norm, backend=self.conv_backend, dtype=self.dtype,
             name=name)(x)
    if self.batch_norm:
      x = batch_norm(train, name=f"{name}_bn", epsilon=self.bn_epsilon,
                     momentum=self.bn_momentum, dtype=self.dtype)(x)
    return jnp.clip(x, 0.0, 6.0) if relu6 else x

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self._layer(x, make_divisible(STEM_CHANNELS * self.alpha), 3, 2, 1, "stem", train)
    for index, (expansion, channels, stride) in enumerate(block_settings(self.alpha)):
      inputs, in_channels = x, x.shape[-1]
      if expansion != 1:
        x = self._layer(x, in_channels * expansion, 1, 1, 1, f"block{index}_expand", train)
      x = self._layer(x, x.shape[-1], 3, stride, x.shape[-1], f"block{index}_depthwise", train)
      x = self._layer(x, channels, 1, 1, 1, f"block{index}_project", train, relu6=False)
      if stride == 1 and in_channels == channels:
        x = x + inputs
    top = make_divisible(TOP_CHANNELS * self.alpha) if self.alpha > 1.0 else TOP_CHANNELS
    x = self._layer(x, top, 1, 1, 1, "top_conv", train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
