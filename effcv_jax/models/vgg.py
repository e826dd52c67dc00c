"""VGG-11 and VGG-16 (Simonyan & Zisserman 2015, configurations A and D), optionally with batch
norm, for 224 px and 32 px inputs.

Five stages of 3x3 convolutions (padding 1, with biases; ReLU, or batch norm then ReLU) with
64, 128, 256, 512 and 512 channels, each stage ended by a 2x2 max-pool: configuration A
(`vgg11`) has 1, 1, 2, 2, 2 convolutions per stage, D (`vgg16`) 2, 2, 3, 3, 3. Convolutions
are named `conv{stage}_{i}` (and batch norm `bn{stage}_{i}`) from conv1_1, as in the paper.

224 px layout (`small_image=False`, torchvision's): adaptive average pooling of the 7x7x512
map to 7x7, then fc6 (4096), ReLU, dropout, fc7 (4096), ReLU, dropout and the classifier
`head`, `dropout_rate` 0.5 by default. With 1000 classes: vgg11 132,863,336 and vgg16
138,357,544 parameters, vgg11_bn 132,868,840 and vgg16_bn 138,365,992, torchvision's counts.
Inputs need at least 224 px a side (smaller ones are refused rather than up-sampled).

32 px layout (`small_image=True`, the common CIFAR variant): the 1x1x512 map after the fifth
pool goes straight into a single linear classifier `head` (no fc6/fc7), after dropout of
`dropout_rate` (0 by default). With 10 classes: vgg11_bn 9,231,114 and vgg16_bn 14,728,266
parameters. Inputs need at least 32 px a side.

Initialisation follows torchvision's VGG: convolutions He-normal by fan-out with zero biases,
linear layers normal with standard deviation 0.01 and zero biases. Dropout draws from the
'dropout' RNG stream.
"""

from typing import Any

import flax.linen as nn
import jax

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import (
    adaptive_avg_pool, batch_norm, check_input_size, conv_init, max_pool,
    smallest_input_size)

STAGE_CHANNELS = (64, 128, 256, 512, 512)
# Convolutions per stage of each depth (configurations A and D).
STAGE_CONVS = {11: (1, 1, 2, 2, 2), 16: (2, 2, 3, 3, 3)}
HIDDEN = 4096
POOLED_SIZE = {False: 7, True: 1}     # the map the classifier reads, by small_image
dense_init = nn.initializers.normal(0.01)


def feature_size(side: int) -> int:
  """The side of the last feature map for inputs of `side` px: five 2x2 pools (floor)."""
  for _ in STAGE_CHANNELS:
    side //= 2
  return side


class VGG(nn.Module):
  """VGG-`depth` (module doc). Input (B, H, W, 3) normalised float, H and W at least
  `min_input_size`; output logits (B, num_classes)."""
  num_classes: int = 1000
  depth: int = 16
  batch_norm: bool = True
  small_image: bool = False
  dropout_rate: float | None = None   # None: 0.5 at 224 px, 0 at 32 px
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32

  @property
  def pooled_size(self) -> int:
    """The side of the map the classifier reads (7 at 224 px, 1 at 32 px)."""
    return POOLED_SIZE[self.small_image]

  @property
  def min_input_size(self) -> int:
    """The smallest input side whose feature map covers pooled_size (224 or 32 px)."""
    return smallest_input_size(feature_size, self.pooled_size)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth not in STAGE_CONVS:
      raise ValueError(f"VGG depth must be one of {sorted(STAGE_CONVS)}, got {self.depth}")
    name = f"vgg{self.depth}{'_bn' if self.batch_norm else ''}"
    check_input_size(x, self.min_input_size, self.pooled_size,
                     f"{name} ({32 if self.small_image else 224} px layout)")
    for stage, (channels, convs) in enumerate(
        zip(STAGE_CHANNELS, STAGE_CONVS[self.depth]), start=1):
      for i in range(1, convs + 1):
        x = Conv(channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                 backend=self.conv_backend, dtype=self.dtype, name=f"conv{stage}_{i}")(x)
        if self.batch_norm:
          x = batch_norm(train, name=f"bn{stage}_{i}", dtype=self.dtype)(x)
        x = nn.relu(x)
      x = max_pool(x, (2, 2))
    x = adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))
    x = x.reshape((x.shape[0], -1))
    dropout_rate = self.dropout_rate
    if dropout_rate is None:
      dropout_rate = 0.0 if self.small_image else 0.5
    if not self.small_image:
      for layer in ("fc6", "fc7"):
        x = nn.Dense(HIDDEN, kernel_init=dense_init, dtype=self.dtype, name=layer)(x)
        x = nn.Dropout(dropout_rate, deterministic=not train)(nn.relu(x))
    else:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, name="head")(x)
