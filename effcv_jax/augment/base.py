"""Types and small helpers shared by every augmentation module.

Conventions used throughout `effcv_jax.augment`:

* images: float32 (B, H, W, C), values in [0, 255], C in {1, 3};
* labels: float32 (B, K), one-hot or soft;
* an augmentation is `AugmentFn(key, images, labels) -> (images, labels)`, pure and jit-able;
* random parameters are drawn per image (shape (B,) or (B, n)), never once per batch.

An op of a spec is one of two kinds:

* `BatchOp`: applies itself to the whole batch (colour ops, erasing, mixing, policies);
* `GeometricOp`: only *samples* one affine matrix per image; consecutive geometric ops are
  composed into one matrix and applied by one warp (see `geometry.py`, `spec.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp

AugmentFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# saliency_fn(images (B, H, W, C) float, labels (B, K)) -> float32 (B, H, W), larger = more salient:
# what the train step hands to ops that need the current model (see BatchOp.needs_saliency).
SaliencyFn = Callable[[jax.Array, jax.Array], jax.Array]

# A number (fixed for all images) or a (low, high) pair (uniform per image).
Range = Union[float, int, Sequence[float]]
# A fill value for pixels that come from outside the image: one number or one per channel.
Fill = Union[float, int, Sequence[float]]

# sample(key, batch_size, (in_height, in_width)) -> (matrices (B, 3, 3), (out_height, out_width))
MatrixSampler = Callable[[jax.Array, int, tuple[int, int]], tuple[jax.Array, tuple[int, int]]]


@dataclasses.dataclass(frozen=True)
class BatchOp:
  """An op applied to the whole batch: `apply(key, images, labels) -> (images, labels)`.

  Attributes:
    name: the op's spec name.
    apply: the op; with `needs_saliency`, `apply(key, images, labels, saliency_fn)`.
    mixes: whether it mixes each image with another image of the batch (Mixup, CutMix, FMix,
      ...): such ops need more than one image per device (preflight.check_run).
    needs_saliency: whether `apply` takes a `SaliencyFn` built by the train step from the
      current model (PuzzleMix); `Pipeline.__call__` passes it on.
    needs_step: whether `apply` takes the keyword `step` (int32 scalar: the updates applied so
      far), for ops whose behaviour follows a schedule (PBA's policy schedule, pba_policy.py);
      `Pipeline.__call__` passes it on.
  """

  name: str
  apply: Callable[..., tuple[jax.Array, jax.Array]]
  mixes: bool = False
  needs_saliency: bool = False
  needs_step: bool = False


@dataclasses.dataclass(frozen=True)
class GeometricOp:
  """An op that samples one affine matrix per image; the warp is done by the caller.

  Attributes:
    name: the op's spec name.
    sample: `sample(key, B, (H, W)) -> (matrices (B, 3, 3), (out_H, out_W))`; each matrix maps
      output points (x=column, y=row, 1) to input points, in continuous pixel coordinates
      (pixel centres at +0.5, see `geometry.py`).
    interpolation: 'bilinear' or 'nearest'; None when the op maps the pixel grid onto the pixel
      grid (flips, integer shifts, 90-degree turns), where any interpolation is exact.
    mode: how pixels from outside the input are filled: 'constant' (with `fill`), 'reflect'
      or 'edge'; None when the op never samples outside (flips).
    fill: the constant for mode 'constant' (a number or one per channel).
  """

  name: str
  sample: MatrixSampler
  interpolation: str | None = None
  mode: str | None = None
  fill: Fill = 0.0


def sample_range(key: jax.Array, batch_size: int, value: Range) -> jax.Array:
  """One value per image: `value` itself if it is a number, else uniform in [low, high).

  Returns: float32 (B,).
  """
  if isinstance(value, (int, float)):
    return jnp.full((batch_size,), float(value), jnp.float32)
  low, high = _as_pair(value)
  return jax.random.uniform(key, (batch_size,), jnp.float32, low, high)


def sample_symmetric(key: jax.Array, batch_size: int, value: Range) -> jax.Array:
  """Like `sample_range`, but a single number m means uniform in [-m, m). Returns (B,)."""
  if isinstance(value, (int, float)):
    value = (-float(value), float(value))
  return sample_range(key, batch_size, value)


def _as_pair(value: Sequence[float]) -> tuple[float, float]:
  values = tuple(float(v) for v in value)
  if len(values) != 2 or values[0] > values[1]:
    raise ValueError(f"expected a number or a (low, high) pair, got {value!r}")
  return values


def bernoulli(key: jax.Array, batch_size: int, p: float) -> jax.Array:
  """Which images an op applies to: bool (B,), each True with probability p."""
  if p >= 1.0:
    return jnp.ones((batch_size,), bool)
  if p <= 0.0:
    return jnp.zeros((batch_size,), bool)
  return jax.random.bernoulli(key, p, (batch_size,))


def per_image(values: jax.Array, ndim: int = 4) -> jax.Array:
  """Reshapes per-image values (B,) to (B, 1, 1, 1) so they broadcast over (B, H, W, C)."""
  return jnp.reshape(values, values.shape + (1,) * (ndim - values.ndim))


def fill_array(fill: Fill, channels: int) -> jax.Array:
  """A fill value as float32 (C,)."""
  values = jnp.asarray(fill, jnp.float32).reshape(-1)
  if values.shape[0] not in (1, channels):
    raise ValueError(f"fill {fill!r} has {values.shape[0]} values for {channels} channels")
  return jnp.broadcast_to(values, (channels,))


def check_probability(p: float, name: str = "p") -> float:
  if not 0.0 <= float(p) <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {p!r}")
  return float(p)
