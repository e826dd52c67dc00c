"""Layers shared by the models: stochastic depth and the convolution initialiser."""

import flax.linen as nn
import jax
import jax.numpy as jnp

# He et al. (2015) normal initialiser scaled by fan-out, as torchvision's ResNets use.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class DropPath(nn.Module):
  """Stochastic depth: zeroes a residual branch for a random subset of the batch.

  Each example keeps its branch with probability 1 - rate; kept branches are
  scaled by 1 / (1 - rate) so the expectation is unchanged. Identity when
  `deterministic` or rate == 0. Draws from the 'dropout' RNG stream.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def batch_norm(train: bool, name: str | None = None, epsilon: float = 1e-5,
               momentum: float = 0.9) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (eps 1e-5, running-average momentum 0.1)."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=epsilon, name=name)


def max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """Non-overlapping max-pool (stride = window, VALID) of x (B, H, W, C) as a reshape and
  a max: the values of nn.max_pool(x, window, strides=window). Its gradient is element-wise
  (to the maxima, shared among ties), where XLA's gradient of reduce_window on CPU tracks
  argmax indices in four full-size int32 arrays and scatters: 13 % of the small CNN's
  train step here (`python -m benchmarks.train_step --part=profile --model=cnn_small`)."""
  kh, kw = window
  b, h, w, c = x.shape
  x = x[:, :h // kh * kh, :w // kw * kw]
  return x.reshape(b, h // kh, kh, w // kw, kw, c).max(axis=(2, 4))
