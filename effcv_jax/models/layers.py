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
