"""Wide ResNet-d-k (Zagoruyko & Komodakis 2016), pre-activation blocks.

WRN-28-2 is the standard backbone of semi-supervised CIFAR-10 benchmarks
(FixMatch, Noisy Student's CIFAR experiments). Stride-2 convs pad 1 pixel on
every side; shortcuts are 1x1 convs where the shape changes.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import DropPath, batch_norm, conv_init

_PAD1 = ((1, 1), (1, 1))


class WideBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 + shortcut. NHWC in and out."""
  planes: int
  stride: int
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  conv_backend: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(Conv, backend=self.conv_backend, dtype=self.dtype)
    pre = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    y = conv(self.planes, (3, 3), self.stride, padding=_PAD1, use_bias=False,
             kernel_init=conv_init, name="conv1")(pre)
    y = nn.relu(batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.planes, (3, 3), 1, padding=_PAD1, use_bias=False,
             kernel_init=conv_init, name="conv2")(y)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, (1, 1), self.stride, use_bias=False,
               kernel_init=conv_init, name="shortcut")(pre)
    return x + y


class WideResNet(nn.Module):
  """WRN-depth-widen for 32x32 inputs; depth = 6n + 4.

  `block_dropout_rate` is the dropout between the two convs of each block (the
  paper's); `dropout_rate` applies before the classifier; `drop_path_rate` is the
  stochastic-depth rate of the last block (linear from 0).
  Input (B, H, W, C) normalised float; output logits (B, num_classes).
  """
  num_classes: int = 10
  depth: int = 28
  widen: int = 2
  block_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(Conv, backend=self.conv_backend, dtype=self.dtype)
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
    blocks_per_stage = (self.depth - 4) // 6
    total_blocks = 3 * blocks_per_stage
    x = conv(16, (3, 3), padding=_PAD1, use_bias=False, kernel_init=conv_init,
             name="conv1")(x)
    block_index = 0
    for stage in range(3):
      for i in range(blocks_per_stage):
        stride = 2 if stage > 0 and i == 0 else 1
        rate = self.drop_path_rate * block_index / max(total_blocks - 1, 1)
        x = WideBlock(16 * self.widen * 2**stage, stride, self.block_dropout_rate,
                      rate, self.conv_backend, self.dtype,
                      name=f"block{stage + 1}_{i}")(x, train)
        block_index += 1
    x = nn.relu(batch_norm(train, name="bn_final", dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
