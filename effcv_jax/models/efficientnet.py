"""EfficientNet-B0..B7 (Tan & Le 2019), the backbones of Noisy Student.

B0: a 3x3 stride-2 stem convolution with 32 channels, seven stages of MBConv
blocks (`B0_BLOCKS`), a 1x1 convolution to 1280 channels, global average
pooling, dropout and a linear classifier. An MBConv block is a 1x1 expansion
convolution (skipped when the expansion ratio is 1), a depthwise convolution
carrying the block's stride, squeeze-and-excitation on the block's input width
times `se_ratio`, and a linear 1x1 projection; blocks whose input and output
shapes agree add their input back after stochastic depth. Activations are swish
(SiLU); batch norm uses the official TF implementation's momentum 0.99 and
epsilon 1e-3; convolutions pad like TF "SAME".

B1..B7 scale B0 by compound scaling (`SCALING`): channels by
`round_filters(c * width)` and repeats by `ceil(r * depth)`; each variant also
has a native input resolution and a classifier dropout rate. Stochastic depth
grows linearly with the block index as in the official code: block i of n drops
with rate `drop_path_rate * i / n`. For small (32x32) images, `small_image=True`
is the official Noisy Student SVHN/CIFAR model (noisystudent efficientnet_builder.py,
`small_image_model`): stages 2 and 3 stride 1 and the stem's stride 2 kept, a 4x4
final feature map; `stem_stride=1` instead gives 2x2.

Parameter names follow the Keras application (`stem_conv`, `stem_bn`,
`block1a/dwconv`, `block1a/bn`, `block1a/se_reduce`, `block1a/se_expand`,
`block1a/project_conv`, ..., `block2a/expand_conv`, ..., `top_conv`, `top_bn`),
with one submodule per block; the classifier is `head` (Keras: `predictions`).
B0 has 5,288,548 trainable parameters with 1000 classes, like Keras and the
official implementation.

EfficientNet-Lite0..4 (the mobile family of the official repository) are B0's
stages without squeeze-and-excitation, with ReLU6 instead of swish, and with the
stem (32), the head (1280), and the repeats of the first and last stages kept
fixed while the rest scales (`LITE_SCALING`).

Registered as `efficientnet_b0` .. `efficientnet_b7` and `efficientnet_lite0` ..
`efficientnet_lite4`.
"""

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import (BatchNorm, DropPath, batch_norm, conv_init,
                                     residual_block)

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3

# (repeats, kernel, stride, expand ratio, input channels, output channels) of B0's stages.
B0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280

# Depthwise kernels are (k, k, 1, C) in flax: fan-in k * k is the official
# initialiser's fan-out of a TF depthwise kernel (k, k, C, 1).
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# The official classifier initialiser: uniform in +-1 / sqrt(num_classes).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


class Scaling(NamedTuple):
  """Compound-scaling coefficients of a variant, its input size and classifier dropout."""
  width: float
  depth: float
  resolution: int
  dropout: float


SCALING: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}


LITE_SCALING: dict[str, Scaling] = {
    "lite0": Scaling(1.0, 1.0, 224, 0.2),
    "lite1": Scaling(1.0, 1.1, 240, 0.2),
    "lite2": Scaling(1.1, 1.2, 260, 0.3),
    "lite3": Scaling(1.2, 1.4, 280, 0.3),
    "lite4": Scaling(1.4, 1.8, 300, 0.3),
}


def scaling(variant: str) -> Scaling:
  """Coefficients and native resolution of `variant`: 'b0'..'b7', 'lite0'..'lite4', or
  those names prefixed 'efficientnet_'."""
  key = variant.lower().removeprefix("efficientnet_").removeprefix("efficientnet-")
  table = {**SCALING, **LITE_SCALING}
  if key not in table:
    raise ValueError(f"Unknown EfficientNet variant {variant!r}; known: {', '.join(table)}")
  return table[key]


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
  """Channels `filters * width_coefficient` rounded to a multiple of `divisor`.

  Rounds to the nearest multiple (at least `divisor`), one multiple up when the
  nearest would lose more than 10 % of the scaled value.
  """
  scaled = filters * width_coefficient
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  """Blocks of a stage after depth scaling: ceil(repeats * depth_coefficient)."""
  return int(math.ceil(repeats * depth_coefficient))


class BlockConfig(NamedTuple):
  """One MBConv block of a scaled network; `name` is Keras's (`block2a`, `block2b`, ...)."""
  name: str
  in_filters: int
  out_filters: int
  kernel: int
  stride: int
  expand_ratio: int
  drop_path_rate: float


def block_configs(width_coefficient: float, depth_coefficient: float,
                  drop_path_rate: float,
                  blocks: tuple[tuple[int, ...], ...] = B0_BLOCKS,
                  fixed_ends: bool = False) -> list[BlockConfig]:
  """The blocks of the network scaled from `blocks`, in order.

  The first block of a stage takes the stage's stride and input width; the
  others stride 1 from the output width. Block i of n has stochastic-depth rate
  drop_path_rate * i / n (the official schedule; the first block has 0).
  fixed_ends (the Lite family): the first and last stages keep their repeats and
  the first stage its input width (the unscaled stem's).
  """
  last = len(blocks) - 1
  stages = [(r if fixed_ends and n in (0, last) else round_repeats(r, depth_coefficient), k, s, e,
             i if fixed_ends and n == 0 else round_filters(i, width_coefficient),
             round_filters(o, width_coefficient))
            for n, (r, k, s, e, i, o) in enumerate(blocks)]
  total = sum(stage[0] for stage in stages)
  configs = []
  for stage, (repeats, kernel, stride, expand, in_filters, out_filters) in enumerate(stages):
    for j in range(repeats):
      index = len(configs)
      configs.append(BlockConfig(
          name=f"block{stage + 1}{chr(ord('a') + j)}",
          in_filters=in_filters if j == 0 else out_filters,
          out_filters=out_filters, kernel=kernel, stride=stride if j == 0 else 1,
          expand_ratio=expand, drop_path_rate=drop_path_rate * index / total))
  return configs


ACTIVATIONS = {"swish": nn.silu, "relu6": nn.relu6}


def _bn(train: bool, name: str, dtype: Any = None) -> BatchNorm:
  return batch_norm(train, name=name, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, dtype=dtype)


class MBConv(nn.Module):
  """Mobile inverted bottleneck with squeeze-and-excitation. (B, H, W, C) -> (B, H', W', out).

  Adds the input back (after stochastic depth at `drop_path_rate`) when stride is
  1 and the channels are unchanged. `se_ratio` <= 0 removes the excitation.
  """
  out_filters: int
  kernel: int = 3
  stride: int = 1
  expand_ratio: int = 1
  se_ratio: float = 0.25
  drop_path_rate: float = 0.0
  conv_backend: str = "auto"
  activation: str = "swish"    # ACTIVATIONS key
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(Conv, backend=self.conv_backend, dtype=self.dtype)
    act = ACTIVATIONS[self.activation]
    in_filters = x.shape[-1]
    expanded = in_filters * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = conv(expanded, (1, 1), use_bias=False, kernel_init=conv_init,
               name="expand_conv")(y)
      y = act(_bn(train, "expand_bn", self.dtype)(y))
    y = conv(expanded, (self.kernel, self.kernel), self.stride, padding="SAME",
             feature_group_count=expanded, use_bias=False,
             kernel_init=depthwise_init, name="dwconv")(y)
    y = act(_bn(train, "bn", self.dtype)(y))
    if 0 < self.se_ratio <= 1:
      se_filters = max(1, int(in_filters * self.se_ratio))
      s = jnp.mean(y, axis=(1, 2), keepdims=True)
      s = nn.silu(conv(se_filters, (1, 1), kernel_init=conv_init, name="se_reduce")(s))
      s = conv(expanded, (1, 1), kernel_init=conv_init, name="se_expand")(s)
      y = y * nn.sigmoid(s)
    y = conv(self.out_filters, (1, 1), use_bias=False, kernel_init=conv_init,
             name="project_conv")(y)
    y = _bn(train, "project_bn", self.dtype)(y)
    if self.stride == 1 and in_filters == self.out_filters:
      y = DropPath(self.drop_path_rate, name="drop_path")(y, deterministic=not train)
      y = y + x
    return y


class EfficientNet(nn.Module):
  """EfficientNet classifier; the defaults are B0. Input (B, H, W, C) normalised float.

  Output logits (B, num_classes). `dropout_rate` applies to the pooled features;
  `drop_path_rate` is the stochastic-depth rate reached after the last block
  (the official drop_connect_rate). Both draw from the 'dropout' RNG stream when
  training. `small_image` sets stages 2 and 3 to stride 1 (module doc). `blocks` is the stage table
  before scaling, rows as in `B0_BLOCKS`. `activation` 'swish' or 'relu6';
  `fixed_stem_head` keeps the stem and head widths and the first and last stages'
  repeats unscaled (the Lite family, with se_ratio 0 and relu6). `remat` recomputes each
  MBConv block's activations in the backward pass instead of keeping them
  (layers.rematerialised; same parameters and, up to float rounding, same results).
  """
  num_classes: int = 1000
  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  dropout_rate: float = 0.2
  drop_path_rate: float = 0.2
  se_ratio: float = 0.25
  stem_stride: int = 2
  blocks: tuple[tuple[int, int, int, int, int, int], ...] = B0_BLOCKS
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  activation: str = "swish"
  fixed_stem_head: bool = False
  small_image: bool = False
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(Conv, backend=self.conv_backend, dtype=self.dtype)
    act = ACTIVATIONS[self.activation]
    scale_width = 1.0 if self.fixed_stem_head else self.width_coefficient
    x = conv(round_filters(STEM_FILTERS, scale_width), (3, 3),
             self.stem_stride, padding="SAME", use_bias=False,
             kernel_init=conv_init, name="stem_conv")(x)
    x = act(_bn(train, "stem_bn", self.dtype)(x))
    blocks = tuple(row[:2] + (1,) + row[3:] if self.small_image and stage in (1, 2) else row
                   for stage, row in enumerate(self.blocks))
    block_class = residual_block(MBConv, self.remat)
    for block in block_configs(self.width_coefficient, self.depth_coefficient,
                               self.drop_path_rate, blocks, self.fixed_stem_head):
      x = block_class(block.out_filters, block.kernel, block.stride, block.expand_ratio,
                      self.se_ratio, block.drop_path_rate, self.conv_backend, self.activation,
                      dtype=self.dtype, name=block.name)(x, train)
    x = conv(round_filters(HEAD_FILTERS, scale_width), (1, 1),
             use_bias=False, kernel_init=conv_init, name="top_conv")(x)
    x = act(_bn(train, "top_bn", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, name="head")(x)


def build_variant(variant: str, num_classes: int = 1000, **kwargs: Any) -> EfficientNet:
  """EfficientNet `variant` ('b0'..'b7', 'lite0'..'lite4') with its coefficients and
  dropout (and, for Lite, no squeeze-and-excitation, relu6, fixed stem and head);
  kwargs override."""
  coefficients = scaling(variant)
  fields = dict(width_coefficient=coefficients.width,
                depth_coefficient=coefficients.depth,
                dropout_rate=coefficients.dropout)
  if variant.lower().removeprefix("efficientnet_") in LITE_SCALING:
    fields.update(se_ratio=0.0, activation="relu6", fixed_stem_head=True)
  fields.update(kwargs)
  return EfficientNet(num_classes=num_classes, **fields)
