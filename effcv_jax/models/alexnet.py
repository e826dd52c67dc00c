"""AlexNet (Krizhevsky et al. 2012), the single-tower layout of torchvision, and a 32 px variant.

224 px layout (`small_image=False`): five convolutions 11x11/4 (64 channels, padding 2), 5x5
(192, padding 2), 3x3 (384), 3x3 (256), 3x3 (256) (padding 1), each followed by ReLU, with an
overlapping 3x3/2 max-pool after the first, second and fifth; adaptive average pooling to 6x6;
then dropout, fc6 (4096), ReLU, dropout, fc7 (4096), ReLU and the classifier `head`. With 1000
classes it has torchvision's 61,100,840 parameters. Inputs need at least 223 px a side (the
last map is then 6x6); smaller ones are refused rather than up-sampled.

32 px layout (`small_image=True`, for CIFAR): the same network with the first convolution
5x5/1 (padding 2) instead of 11x11/4, so the three max-pools take 32 px to 15, 7 and 3 and the
classifier reads the 3x3x256 map (2,304 features; the adaptive pooling is then the identity).
With 10 classes it has 28,714,826 parameters (2,451,264 in the convolutions). Inputs need at
least 31 px a side.

`batch_norm=True` adds batch norm between every convolution and its ReLU (the convolutions
keep their biases, as torchvision's VGG-BN do): 2,304 more parameters. `dropout_rate` (0.5
like the paper's) applies before fc6 and fc7 and draws from the 'dropout' RNG stream.
Registered as `alexnet`; `small_image` and the other fields are model kwargs.
"""

from typing import Any

import flax.linen as nn
import jax

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import (
    adaptive_avg_pool, batch_norm, check_input_size, conv_init, conv_output_size,
    smallest_input_size)

# (channels, kernel, stride, padding, max-pool after it) of the five convolutions.
CONVS_224 = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
             (256, 3, 1, 1, False), (256, 3, 1, 1, True))
CONVS_32 = ((64, 5, 1, 2, True),) + CONVS_224[1:]
POOL_WINDOW, POOL_STRIDE = 3, 2
HIDDEN = 4096


def feature_size(convs: tuple[tuple[int, int, int, int, bool], ...], side: int) -> int:
  """The side of the last feature map (before the adaptive pooling) for inputs of `side` px
  through `convs` (CONVS_224 or CONVS_32); 0 or less where the map vanishes."""
  for _, kernel, stride, padding, pool in convs:
    side = conv_output_size(side, kernel, stride, padding)
    if pool:
      side = conv_output_size(side, POOL_WINDOW, POOL_STRIDE, 0)
  return side


class AlexNet(nn.Module):
  """AlexNet (module doc). Input (B, H, W, 3) normalised float, H and W at least
  `min_input_size`; output logits (B, num_classes)."""
  num_classes: int = 1000
  small_image: bool = False
  batch_norm: bool = False
  dropout_rate: float = 0.5
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32

  @property
  def convs(self) -> tuple[tuple[int, int, int, int, bool], ...]:
    """The convolution rows (CONVS_224 or CONVS_32) of this layout."""
    return CONVS_32 if self.small_image else CONVS_224

  @property
  def pooled_size(self) -> int:
    """The side of the map the classifier reads (6 at 224 px, 3 at 32 px)."""
    return feature_size(self.convs, 32 if self.small_image else 224)

  @property
  def min_input_size(self) -> int:
    """The smallest input side whose feature map covers pooled_size (223 or 31 px)."""
    return smallest_input_size(lambda side: feature_size(self.convs, side), self.pooled_size)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_input_size(x, self.min_input_size, self.pooled_size,
                     f"alexnet ({32 if self.small_image else 224} px layout)")
    for index, (channels, kernel, stride, padding, pool) in enumerate(self.convs, start=1):
      x = Conv(channels, (kernel, kernel), stride, padding=((padding, padding),) * 2,
               kernel_init=conv_init, backend=self.conv_backend, dtype=self.dtype,
               name=f"conv{index}")(x)
      if self.batch_norm:
        x = batch_norm(train, name=f"bn{index}", dtype=self.dtype)(x)
      x = nn.relu(x)
      if pool:
        x = nn.max_pool(x, (POOL_WINDOW, POOL_WINDOW), strides=(POOL_STRIDE, POOL_STRIDE))
    x = adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))
    x = x.reshape((x.shape[0], -1))
    for name in ("fc6", "fc7"):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(HIDDEN, dtype=self.dtype, name=name)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
