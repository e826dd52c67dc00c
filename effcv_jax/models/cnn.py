"""A small VGG-style CNN for 28x28 (MNIST-like) and smaller inputs."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models.conv import Conv
from effcv_jax.models.layers import batch_norm, conv_init, max_pool


class SmallCNN(nn.Module):
  """Two stages of [conv3x3-BN-ReLU] x 2 + max-pool, then a hidden dense layer.

  Input (B, H, W, C) float, normalised; output logits (B, num_classes).
  `widths` gives the channels of each stage; `dropout_rate` applies before the
  classifier (a Noisy Student noise source).
  """
  num_classes: int
  widths: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout_rate: float = 0.0
  conv_backend: str = "auto"   # models.conv: auto, onednn, xla or lax
  dtype: Any = None            # computation dtype (models/__init__.py); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for stage, width in enumerate(self.widths):
      for i in range(2):
        x = Conv(width, (3, 3), use_bias=False, kernel_init=conv_init,
                 backend=self.conv_backend, dtype=self.dtype, name=f"conv{stage}_{i}")(x)
        x = nn.relu(batch_norm(train, name=f"bn{stage}_{i}", dtype=self.dtype)(x))
      x = max_pool(x, (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
