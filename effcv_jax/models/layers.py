"""Layers shared by the models: stochastic depth, rematerialised blocks, batch norm, max-pool,
adaptive average pooling, the convolution initialiser, and the arithmetic of feature-map sizes."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


@functools.cache
def rematerialised(block: type[nn.Module]) -> type[nn.Module]:
  """`block` (a module class called as `block(...)(x, train)`) wrapped in flax's `nn.remat`:
  its activations are not kept for the backward pass but recomputed from its input, which
  trades a second forward pass of the block for the memory of its intermediates. `train` is
  static (argument 2, counting `self`), so Python branches on it still work. The wrapped
  class keeps the block's submodule and parameter names, so the same variables fit both."""
  return nn.remat(block, static_argnums=(2,))


def residual_block(block: type[nn.Module], remat: bool) -> type[nn.Module]:
  """The class a model builds its residual blocks with: `block` itself, or with `remat` its
  rematerialised version (`rematerialised`)."""
  return rematerialised(block) if remat else block


def _batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and (biased) variance of x (..., C) over every other axis, in float32,
  as flax's BatchNorm computes them (E[x^2] - E[x]^2, clipped at 0)."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axes)
  return mean, jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))


def _normalise(x, mean, rstd, scale, bias, dtype):
  return ((x.astype(jnp.float32) - mean) * (rstd * scale) + bias).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch normalisation of x (..., C) with the batch's statistics: (y in
  `dtype`, mean (C,), variance (C,)), float32 statistics, scale and bias; y equals flax's
  BatchNorm output.

  Its gradient is the closed form (dx = scale * rstd * (dy - mean(dy) - xhat *
  mean(dy * xhat)), plus the terms of the mean's and variance's cotangents), whose backward
  pass reads x and dy and writes dx, where differentiating flax's version keeps x - mean in
  float32 from the forward pass and reads and writes more full-size arrays: on a CPU, the
  step's element-wise work (benchmarks/batch_norm.py times the step with each)."""
  y, mean, var, _ = _batch_norm_forward(x, scale, bias, epsilon, dtype)
  return y, mean, var


def _batch_norm_forward(x, scale, bias, epsilon, dtype):
  mean, var = _batch_statistics(x)
  rstd = jax.lax.rsqrt(var + epsilon)
  return _normalise(x, mean, rstd, scale, bias, dtype), mean, var, rstd


def _batch_norm_train_fwd(x, scale, bias, epsilon, dtype):
  y, mean, var, rstd = _batch_norm_forward(x, scale, bias, epsilon, dtype)
  return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, dtype, residuals, cotangents):
  del epsilon, dtype
  x, mean, rstd, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x32 = x.astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  dbias = jnp.sum(dy, axes)
  # sum(dy * (x - mean)) from sum(dy * x): no full-size x - mean for XLA to keep between
  # this reduction and dx below.
  dscale = (jnp.sum(dy * x32, axes) - mean * dbias) * rstd
  centred = x32 - mean
  dx = (scale * rstd) * (dy - (dbias + centred * rstd * dscale) / count)
  # The statistics' own cotangents (zero in training, where they only feed the running
  # averages): d mean / dx = 1 / count, d var / dx = 2 (x - mean) / count.
  dx = dx + (dmean + 2.0 * dvar * centred) / count
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
  """Batch normalisation over the last axis with flax's variables (params 'scale', 'bias';
  batch_stats 'mean', 'var', all float32) and outputs: in training, the batch's statistics
  through `batch_norm_train` (a closed-form gradient), the running averages updated with
  `momentum` (not while initialising); otherwise the running averages. `dtype` is the
  output's (None: float32 for float32 or bfloat16 inputs, as flax infers it)."""

  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    dtype = self.dtype or jnp.promote_types(x.dtype, jnp.float32)
    if self.use_running_average:
      rstd = jax.lax.rsqrt(running_var.value + self.epsilon)
      return _normalise(x, running_mean.value, rstd, scale, bias, dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, dtype)
    if not self.is_initializing():
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    return y


def batch_norm(train: bool, name: str | None = None, epsilon: float = 1e-5,
               momentum: float = 0.9, dtype: Any = None) -> BatchNorm:
  """BatchNorm with PyTorch's defaults (eps 1e-5, running-average momentum 0.1). `dtype`
  is its output's (None: inferred, float32 for float32 inputs); its statistics, scale and
  bias stay float32 whatever it is."""
  return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                   dtype=dtype, name=name)


def _window_taps(x: jax.Array, window: tuple[int, int]) -> list[jax.Array]:
  """The kh * kw strided views x[:, i::kh, j::kw] of x (B, H, W, C), cropped to whole windows."""
  kh, kw = window
  h, w = x.shape[1] // kh, x.shape[2] // kw
  return [x[:, i:h * kh:kh, j:w * kw:kw] for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """Non-overlapping max-pool (stride = window, VALID) of x (B, H, W, C): the values and the
  gradient of nn.max_pool(x, window, strides=window) (all of it to the first maximum of a
  window), as element-wise maxima of the window's strided views. The forward pass keeps the
  index of each window's maximum (int8) and the gradient is a select: XLA's gradient of
  reduce_window on CPU tracks argmax indices in four full-size int32 arrays and scatters
  (its share of the small CNN's train step: `python -m benchmarks.train_step --part=profile
  --model=cnn_small`)."""
  return _max_pool_fwd(x, window)[0]


def _max_pool_fwd(x, window):
  taps = _window_taps(x, window)
  best, index = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for k, tap in enumerate(taps[1:], start=1):
    index = jnp.where(tap > best, jnp.int8(k), index)     # ties keep the first maximum
    best = jnp.maximum(best, tap)
  return best, (index, x.shape)


def _max_pool_bwd(window, residuals, g):
  index, x_shape = residuals
  kh, kw = window
  b, h, w, c = g.shape
  taps = jnp.stack([jnp.where(index == k, g, 0.0) for k in range(kh * kw)], axis=3)
  dx = taps.reshape(b, h, w, kh, kw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * kh, w * kw, c)
  dx = jnp.pad(dx, ((0, 0), (0, x_shape[1] - h * kh), (0, x_shape[2] - w * kw), (0, 0)))
  return (dx.astype(g.dtype),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) averaging weights of adaptive average pooling along one axis: output
  i averages inputs floor(i * in / out) to ceil((i + 1) * in / out) - 1 (PyTorch's bins)."""
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -(-(i + 1) * in_size // out_size)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Adaptive average pooling of x (B, H, W, C) to (B, size[0], size[1], C) with PyTorch's
  AdaptiveAvgPool2d bins (overlapping where a size does not divide; the identity where the
  sizes are equal)."""
  rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], size[0]), x.dtype)
  cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], size[1]), x.dtype)
  return jnp.einsum("bhwc,ih,jw->bijc", x, rows, cols)


def smallest_input_size(feature_size: Callable[[int], int], needed: int) -> int:
  """The smallest input side s whose feature map side feature_size(s) is at least `needed`;
  feature_size must be non-decreasing and grow without bound."""
  side = 1
  while feature_size(side) < needed:
    side += 1
  return side


def check_input_size(x: jax.Array, smallest: int, pooled: int, model: str) -> None:
  """Raises ValueError when the images x (B, H, W, C) are smaller than `smallest` on a side:
  the feature map of `model` (its description, e.g. 'vgg16_bn (224 px layout)') would then be
  smaller than the `pooled` x `pooled` its classifier reads."""
  if min(x.shape[1:3]) < smallest:
    raise ValueError(
        f"{model} needs inputs of at least {smallest} x {smallest} px (its feature map must "
        f"cover the {pooled} x {pooled} its classifier reads), got {x.shape[1]} x "
        f"{x.shape[2]}: resize the images (config.input_size) or take a layout for smaller "
        "ones (small_image=True: 32 px)")


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """The output side of a convolution or pooling window (floor mode, symmetric padding)."""
  return (size + 2 * padding - kernel) // stride + 1
