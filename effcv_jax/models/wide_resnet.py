"""Wide ResNet-d-k (Zagoruyko & Komodakis 2016), pre-activation blocks.

WRN-28-2 is the standard backbone of semi-supervised CIFAR-10 benchmarks
(FixMatch, Noisy Student's CIFAR experiments). Stride-2 convs pad 1 pixel on
every side; shortcuts are 1x1 convs where the shape changes.

`fixmatch=True` is the WRN of FixMatch's reference (google-research/fixmatch
libml/models.py `ResNet`, the network of USB's and TorchSSL's WRN-28-2 tables):
leaky ReLU (slope 0.1), batch norm with running-average momentum 0.001 in the
PyTorch sense (flax momentum 0.999) and epsilon 1e-3, zero-initialised biases
on every convolution, a Glorot-normal classifier, and the 1x1 shortcut of a
stage's first block taken from the block's raw input rather than from its
pre-activation, except in the first stage (the reference's
`activate_before_residual`). Registered as `wrn{depth}_{k}_fixmatch`;
WRN-28-2 then has 1,469,642 parameters with 10 classes (the plain variant's
1,467,610 plus 2,032 convolution biases). Two details differ from a reference
without changing a parameter: stride-2 3x3 convs pad 1 pixel on every side as
the PyTorch ports (USB, TorchSSL) do, where TF's 'SAME' pads 0 before and 1 after;
and USB's port feeds every stage's shortcut the pre-activation, where the TF
reference (followed here) feeds stages 2 and 3 the raw input.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import DropPath, batch_norm, conv_init, residual_block

_PAD1 = ((1, 1), (1, 1))


class Variant(NamedTuple):
  """What tells FixMatch's WRN from the plain one (module doc): the activation, batch
  norm's flax momentum and epsilon, convolution biases, and whether the shortcut of a
  stage's first block reads the raw input (all stages but the first) or the
  pre-activation."""
  activation: Callable[[jax.Array], jax.Array]
  bn_momentum: float
  bn_epsilon: float
  conv_bias: bool
  raw_shortcut: bool


PLAIN = Variant(nn.relu, 0.9, 1e-5, False, False)
FIXMATCH = Variant(functools.partial(nn.leaky_relu, negative_slope=0.1), 0.999, 1e-3, True, True)


class WideBlock(nn.Module):
  """BN-act-conv3x3-BN-act-[dropout]-conv3x3 + shortcut. NHWC in and out.

  `raw_shortcut`: a projecting shortcut reads the block's input x, not its
  pre-activation act(BN(x)) (FixMatch's blocks outside the first stage)."""
  planes: int
  stride: int
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  conv_backend: str = "auto"
  variant: Variant = PLAIN
  raw_shortcut: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    variant = self.variant
    conv = functools.partial(Conv, backend=self.conv_backend, use_bias=variant.conv_bias,
                             kernel_init=conv_init, dtype=self.dtype)
    bn = functools.partial(batch_norm, train, momentum=variant.bn_momentum,
                           epsilon=variant.bn_epsilon, dtype=self.dtype)
    pre = variant.activation(bn(name="bn1")(x))
    y = conv(self.planes, (3, 3), self.stride, padding=_PAD1, name="conv1")(pre)
    y = variant.activation(bn(name="bn2")(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.planes, (3, 3), 1, padding=_PAD1, name="conv2")(y)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, (1, 1), self.stride, name="shortcut")(x if self.raw_shortcut else pre)
    return x + y


class WideResNet(nn.Module):
  """WRN-depth-widen for 32x32 inputs; depth = 6n + 4.

  `block_dropout_rate` is the dropout between the two convs of each block (the
  paper's); `dropout_rate` applies before the classifier; `drop_path_rate` is the
  stochastic-depth rate of the last block (linear from 0). `fixmatch` selects
  FixMatch's variant (module doc). `remat` recomputes each block's activations in the
  backward pass instead of keeping them (layers.rematerialised; same parameters).
  Input (B, H, W, C) normalised float; output logits (B, num_classes).
  """
  num_classes: int = 10
  depth: int = 28
  widen: int = 2
  block_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  fixmatch: bool = False
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(Conv, backend=self.conv_backend, dtype=self.dtype)
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
    variant = FIXMATCH if self.fixmatch else PLAIN
    blocks_per_stage = (self.depth - 4) // 6
    total_blocks = 3 * blocks_per_stage
    x = conv(16, (3, 3), padding=_PAD1, use_bias=variant.conv_bias, kernel_init=conv_init,
             name="conv1")(x)
    block_class = residual_block(WideBlock, self.remat)
    block_index = 0
    for stage in range(3):
      for i in range(blocks_per_stage):
        stride = 2 if stage > 0 and i == 0 else 1
        rate = self.drop_path_rate * block_index / max(total_blocks - 1, 1)
        x = block_class(16 * self.widen * 2**stage, stride, self.block_dropout_rate,
                        rate, self.conv_backend, variant, variant.raw_shortcut and stage > 0,
                        dtype=self.dtype, name=f"block{stage + 1}_{i}")(x, train)
        block_index += 1
    x = variant.activation(batch_norm(train, name="bn_final", momentum=variant.bn_momentum,
                                      epsilon=variant.bn_epsilon, dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    head_init = nn.initializers.glorot_normal() if self.fixmatch else nn.linear.default_kernel_init
    return nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype, name="head")(x)
