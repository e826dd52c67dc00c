"""CIFAR ResNets (He et al. 2016, section 4.2) with option-A shortcuts.

ResNet-(6n+2): a 3x3 conv with 16 channels, three stages of n basic blocks with
16, 32 and 64 channels (stride 2 at the start of stages 2 and 3), global average
pooling and a linear classifier. Option A: when a block halves the resolution,
the shortcut subsamples by 2 and zero-pads the channels (no parameters).

Module and parameter names follow the PyTorch state_dict of the widely used
reference implementation (`conv1`, `bn1`, `layer1.0.conv1`, ..., `linear`), with
`layer1.0` written `layer1_0`, so that its weights import 1:1. Convolutions pad
1 pixel on every side like PyTorch (not TF "SAME", which pads stride-2 convs
asymmetrically).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import DropPath, batch_norm, conv_init, residual_block

_PAD1 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. Input/output NHWC."""
  planes: int
  stride: int
  drop_path_rate: float = 0.0
  conv_backend: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Conv(self.planes, (3, 3), self.stride, padding=_PAD1, use_bias=False,
             kernel_init=conv_init, backend=self.conv_backend, dtype=self.dtype,
             name="conv1")(x)
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = Conv(self.planes, (3, 3), 1, padding=_PAD1, use_bias=False,
             kernel_init=conv_init, backend=self.conv_backend, dtype=self.dtype,
             name="conv2")(y)
    y = batch_norm(train, name="bn2", dtype=self.dtype)(y)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      extra = self.planes - x.shape[-1]
      shortcut = x[:, ::self.stride, ::self.stride, :]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0),
                                    (extra // 2, extra - extra // 2)))
    return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 inputs; `depth` in {20, 32, 44, 56, 110, ...}.

  `drop_path_rate` is the stochastic-depth rate of the last block, growing
  linearly from 0 over the blocks; `dropout_rate` applies before `linear`. `remat`
  recomputes each block's activations in the backward pass instead of keeping them
  (layers.rematerialised; same parameters and, up to float rounding, same results).
  Input (B, H, W, C) normalised float; output logits (B, num_classes).
  """
  num_classes: int = 10
  depth: int = 20
  width: int = 16
  drop_path_rate: float = 0.0
  dropout_rate: float = 0.0
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
    blocks_per_stage = (self.depth - 2) // 6
    total_blocks = 3 * blocks_per_stage
    x = Conv(self.width, (3, 3), padding=_PAD1, use_bias=False,
             kernel_init=conv_init, backend=self.conv_backend, dtype=self.dtype,
             name="conv1")(x)
    x = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    block_class = residual_block(BasicBlock, self.remat)
    block_index = 0
    for stage in range(3):
      for i in range(blocks_per_stage):
        stride = 2 if stage > 0 and i == 0 else 1
        rate = self.drop_path_rate * block_index / max(total_blocks - 1, 1)
        x = block_class(self.width * 2**stage, stride, rate, self.conv_backend, self.dtype,
                        name=f"layer{stage + 1}_{i}")(x, train)
        block_index += 1
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(x)
