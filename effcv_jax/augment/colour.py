"""Colour and lookup-table augmentations, as Pillow defines them, on float images in [0, 255].

Two layers:

* pure functions `adjust_*(images, param) -> images`: images float (..., H, W, C), C in {1, 3};
  `param` has the leading shape of the images (`()` for one image, `(B,)` for a batch) or is a
  Python number. They are what the policies (`policies.py`) call, batched or one image at a time.
* spec factories (`brightness(factor=...)`, ...) that draw the parameter per image and apply the
  op with probability p; registered in `OPS`.

Pillow semantics reproduced (so that tests can compare against `ImageEnhance` / `ImageOps`):
grayscale is Pillow's fixed-point `L = (19595 R + 38470 G + 7471 B + 2**15) >> 16`; enhancements
blend `degenerate + factor * (image - degenerate)` and clip; contrast's degenerate is the rounded
mean of L; sharpness's is the 3x3 SMOOTH filter, rounded, with border pixels left as they are.
Lookup-table ops read a pixel's bin as `floor(value)` (Pillow's truncation of a float result).
Unlike Pillow, results are not truncated to integers except where the op itself quantizes.

Single-channel images: saturation, hue and grayscale are the identity; the others work per channel.

dm-pix: additive brightness, hue and gamma are dm-pix's ops (`adjust_brightness`, `adjust_hue`,
`adjust_gamma`), which define them as above. Contrast, saturation and grayscale keep Pillow's
definitions, which dm-pix's (those of tf.image) do not share: dm-pix blends contrast with each
channel's own mean, scales saturation in HSV and weighs grey with unrounded luma coefficients.
Solarize and the flips stay ours (see `solarize`; flips are geometric ops folded into warps).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import dm_pix

from effcv_jax.augment.base import (BatchOp, Range, bernoulli, check_probability, sample_range,
                                    sample_symmetric)

MAX_VALUE = 255.0


def _per_image(param, images: jax.Array) -> jax.Array:
  """param of the images' leading shape (or a number) -> broadcastable to (..., H, W, C)."""
  param = jnp.asarray(param, images.dtype)
  return param.reshape(param.shape + (1,) * (images.ndim - param.ndim))


def _clip(images: jax.Array) -> jax.Array:
  return jnp.clip(images, 0.0, MAX_VALUE)


def _blend(degenerate: jax.Array, images: jax.Array, factor) -> jax.Array:
  """Pillow's `Image.blend(degenerate, image, factor)`, clipped, not truncated."""
  return _clip(degenerate + _per_image(factor, images) * (images - degenerate))


def luma(images: jax.Array) -> jax.Array:
  """Pillow's RGB -> L conversion (rounded ITU-R 601-2 luma): (..., H, W, 3) -> (..., H, W, 1)."""
  if images.shape[-1] == 1:
    return images
  red, green, blue = images[..., 0:1], images[..., 1:2], images[..., 2:3]
  return jnp.floor((red * 19595.0 + green * 38470.0 + blue * 7471.0 + 32768.0) / 65536.0)


# ---------------------------------------------------------------------------------------------
# Pure functions: images (..., H, W, C) float in [0, 255], param of the leading shape.
# ---------------------------------------------------------------------------------------------


def adjust_brightness(images: jax.Array, factor) -> jax.Array:
  """Multiplicative brightness, `ImageEnhance.Brightness(img).enhance(factor)`."""
  return _clip(images * _per_image(factor, images))


def add_brightness(images: jax.Array, delta) -> jax.Array:
  """Additive brightness: `img + delta` clipped to [0, 255] (`ImageChops.add` with a constant).

  The addition is dm-pix's `adjust_brightness` (the same op on any value scale)."""
  return _clip(dm_pix.adjust_brightness(images, _per_image(delta, images)))


def mean_luma(images: jax.Array) -> jax.Array:
  """Mean of Pillow's L over each image: (..., H, W, C) -> (..., 1, 1, 1).

  Written as matrix products: XLA on CPU runs a reduction fused with the channel slices of
  `luma` much more slowly than this.
  """
  *lead, height, width, channels = images.shape
  highest = jax.lax.Precision.HIGHEST
  if channels == 1:
    gray = images[..., 0]
  else:
    weights = jnp.asarray([19595.0, 38470.0, 7471.0], images.dtype)
    gray = jnp.floor((jnp.matmul(images, weights, precision=highest) + 32768.0) / 65536.0)
  pixels = height * width
  mean = jnp.matmul(gray.reshape(*lead, pixels),
                    jnp.full((pixels,), 1.0 / pixels, images.dtype),
                    precision=highest)
  return mean.reshape(*lead, 1, 1, 1)


def adjust_contrast(images: jax.Array, factor) -> jax.Array:
  """`ImageEnhance.Contrast`: blend with the image's mean grey level (rounded, as Pillow)."""
  return _blend(jnp.floor(mean_luma(images) + 0.5), images, factor)


def adjust_saturation(images: jax.Array, factor) -> jax.Array:
  """`ImageEnhance.Color`: blend with the grey image (factor 0: grey, 1: unchanged)."""
  if images.shape[-1] == 1:
    return images
  return _blend(luma(images), images, factor)


def adjust_hue(images: jax.Array, delta) -> jax.Array:
  """Rotates hue by `delta` turns (in [-0.5, 0.5]) in HSV space: dm-pix's `adjust_hue`.

  Pillow-based pipelines (torchvision) shift an 8-bit hue plane instead: the same rotation up to
  that quantisation."""
  if images.shape[-1] == 1:
    return images
  delta = jnp.asarray(delta, images.dtype)
  delta = delta.reshape(delta.shape + (1,) * (images.ndim - 1 - delta.ndim))  # over (..., H, W)
  return _clip(dm_pix.adjust_hue(images / MAX_VALUE, delta) * MAX_VALUE)


def adjust_gamma(images: jax.Array, gamma) -> jax.Array:
  """255 * (x / 255) ** gamma: dm-pix's `adjust_gamma` on [0, 1]."""
  return _clip(MAX_VALUE * dm_pix.adjust_gamma(images / MAX_VALUE, _per_image(gamma, images)))


def invert(images: jax.Array) -> jax.Array:
  """`ImageOps.invert`: 255 - x."""
  return MAX_VALUE - images


def solarize(images: jax.Array, threshold=128.0) -> jax.Array:
  """`ImageOps.solarize`: pixels >= threshold become 255 - x.

  dm-pix's `solarize` is this op for images in [0, 1] (`1 - x`); on [0, 255] it would need a
  rescale there and back, which leaves whole-number inputs off whole numbers."""
  return jnp.where(images < _per_image(threshold, images), images, MAX_VALUE - images)


def solarize_add(images: jax.Array, addition=30.0, threshold=128.0) -> jax.Array:
  """AutoAugment's SolarizeAdd: pixels < threshold get `addition` added, clipped."""
  added = _clip(images + _per_image(addition, images))
  return jnp.where(images < _per_image(threshold, images), added, images)


def posterize(images: jax.Array, bits) -> jax.Array:
  """`ImageOps.posterize`: keeps the top `bits` (1..8) bits of each value."""
  step = jnp.exp2(8.0 - _per_image(bits, images))
  return jnp.floor(jnp.floor(images) / step) * step


def _bins(images: jax.Array) -> jax.Array:
  return jnp.clip(jnp.floor(images), 0, MAX_VALUE).astype(jnp.int32)


def equalize(images: jax.Array) -> jax.Array:
  """`ImageOps.equalize`, per image and channel: a lookup table from the 256-bin histogram."""
  *lead, height, width, channels = images.shape
  bins = _bins(images).reshape(-1, height * width, channels)  # (N, P, C)
  count = bins.shape[0]
  # One histogram per (image, channel): flat bin ids (N, P, C) into N * C * 256 counters.
  hist_ids = (jnp.arange(count)[:, None, None] * channels +
              jnp.arange(channels)[None, None, :]) * 256 + bins
  hist = jnp.zeros((count * channels * 256,), jnp.int32).at[hist_ids.reshape(-1)].add(1)
  hist = hist.reshape(count, channels, 256)
  # Pillow: step = (pixels - count of the highest non-empty bin) // 255; lut[i] = (step // 2 + #below i) // step.
  # The highest non-empty bin is read from the histogram, not from another pass over the pixels.
  levels = jnp.arange(256)
  highest = jnp.max(jnp.where(hist > 0, levels, -1), axis=-1, keepdims=True)  # (N, C, 1)
  top_count = jnp.sum(jnp.where(levels == highest, hist, 0), axis=-1)  # (N, C)
  step = (height * width - top_count) // 255  # (N, C)
  below = jnp.cumsum(hist, axis=-1) - hist  # exclusive cumulative count (N, C, 256)
  safe_step = jnp.maximum(step, 1)[..., None]
  lut = jnp.minimum((safe_step // 2 + below) // safe_step, 255).astype(images.dtype)
  # XLA on CPU fuses the table's computation into the gather below and redoes it for every pixel
  # (scalar integer divisions: the whole op several times slower). A product with the identity
  # materialises the 256-entry tables first; it is exact (one non-zero term per sum).
  lut = jnp.matmul(lut, jnp.eye(256, dtype=lut.dtype), precision=jax.lax.Precision.HIGHEST)
  equalized = lut.reshape(-1)[hist_ids]  # (N, P, C)
  keep = (step == 0)[:, None, :]  # a flat (or single-valued) channel is left as it is
  out = jnp.where(keep, images.reshape(count, height * width, channels), equalized)
  return out.reshape(images.shape)


def per_channel_reduce(reduce, images: jax.Array) -> jax.Array:
  """`reduce` (jnp.min, jnp.max, ...) over H and W of each channel: (..., H, W, C) -> (..., 1, 1, C).

  The pixels are read as rows of k pixels (k * C values, k up to 32): XLA on CPU reduces over a
  3-wide minor axis several times more slowly than over a wide one.
  """
  *lead, height, width, channels = images.shape
  pixels_per_row = math.gcd(height * width, 32)
  rows = images.reshape(*lead, height * width // pixels_per_row, pixels_per_row * channels)
  partial = reduce(rows, axis=-2).reshape(*lead, pixels_per_row, channels)
  return reduce(partial, axis=-2).reshape(*lead, 1, 1, channels)


def autocontrast(images: jax.Array) -> jax.Array:
  """`ImageOps.autocontrast`: stretches each channel's [min, max] to [0, 255] (flat channels kept)."""
  low = per_channel_reduce(jnp.min, images)
  high = per_channel_reduce(jnp.max, images)
  flat = high <= low
  scale = MAX_VALUE / jnp.where(flat, 1.0, high - low)
  return jnp.where(flat, images, _clip((images - low) * scale))


def smooth(images: jax.Array) -> jax.Array:
  """Pillow's `ImageFilter.SMOOTH` ([[1,1,1],[1,5,1],[1,1,1]] / 13), rounded; border pixels kept."""
  height, width = images.shape[-3], images.shape[-2]
  if height < 3 or width < 3:
    return images
  rows = images[..., :-2, :, :] + images[..., 1:-1, :, :] + images[..., 2:, :, :]  # 3-row sums
  box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # 3x3 sums (..., H-2, W-2, C)
  centre = images[..., 1:-1, 1:-1, :]
  inner = jnp.round((box + 4.0 * centre) / 13.0)
  pad = [(0, 0)] * (images.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
  padded = jnp.pad(inner, pad)
  border = jnp.ones((height, width, 1), bool).at[1:-1, 1:-1].set(False)
  return jnp.where(border, images, padded)


def adjust_sharpness(images: jax.Array, factor) -> jax.Array:
  """`ImageEnhance.Sharpness`: blend with the smoothed image (0: smooth, 1: unchanged, 2: sharper)."""
  return _blend(smooth(images), images, factor)


def grayscale(images: jax.Array) -> jax.Array:
  """Pillow's `convert('L')`, repeated over the channels (C=1: unchanged)."""
  return jnp.broadcast_to(luma(images), images.shape)


# ---------------------------------------------------------------------------------------------
# Spec ops: parameters drawn per image; applied with probability p.
# ---------------------------------------------------------------------------------------------


def _colour_op(name: str, p: float, draw, transform) -> BatchOp:
  """draw(key, B) -> params (B,); transform(images, params) -> images."""
  p = check_probability(p)

  def apply(key, images, labels):
    param_key, p_key = jax.random.split(key)
    batch = images.shape[0]
    out = transform(images, draw(param_key, batch))
    if p < 1.0:
      out = jnp.where(bernoulli(p_key, batch, p)[:, None, None, None], out, images)
    return out, labels

  return BatchOp(name, apply)


def _no_param(key, batch):
  return None


def brightness(factor: Range = (0.6, 1.4), p: float = 1.0) -> BatchOp:
  """Multiplicative (Pillow) brightness; factor a number or (low, high) drawn per image."""
  return _colour_op("brightness", p, lambda k, b: sample_range(k, b, factor), adjust_brightness)


def brightness_add(delta: Range = 32.0, p: float = 1.0) -> BatchOp:
  """Additive brightness `x + delta` clipped; delta m -> U(-m, m), (low, high) -> U(low, high)."""
  return _colour_op("brightness_add", p, lambda k, b: sample_symmetric(k, b, delta), add_brightness)


def contrast(factor: Range = (0.6, 1.4), p: float = 1.0) -> BatchOp:
  """Pillow contrast; factor a number or (low, high) drawn per image."""
  return _colour_op("contrast", p, lambda k, b: sample_range(k, b, factor), adjust_contrast)


def saturation(factor: Range = (0.6, 1.4), p: float = 1.0) -> BatchOp:
  """Pillow colour balance (ImageEnhance.Color); factor a number or (low, high) per image."""
  return _colour_op("saturation", p, lambda k, b: sample_range(k, b, factor), adjust_saturation)


def hue(delta: Range = 0.1, p: float = 1.0) -> BatchOp:
  """Hue rotation by delta turns; m -> U(-m, m), (low, high) -> U(low, high); |delta| <= 0.5."""
  return _colour_op("hue", p, lambda k, b: sample_symmetric(k, b, delta), adjust_hue)


def gamma(gamma: Range = (0.8, 1.25), p: float = 1.0) -> BatchOp:
  """Gamma curve 255 * (x/255)**gamma; gamma a number or (low, high) per image."""
  return _colour_op("gamma", p, lambda k, b: sample_range(k, b, gamma), adjust_gamma)


def invert_op(p: float = 1.0) -> BatchOp:
  """255 - x with probability p."""
  return _colour_op("invert", p, _no_param, lambda x, _: invert(x))


def solarize_op(threshold: Range = 128.0, p: float = 1.0) -> BatchOp:
  """Inverts pixels >= threshold (a number or (low, high) per image)."""
  return _colour_op("solarize", p, lambda k, b: sample_range(k, b, threshold), solarize)


def solarize_add_op(addition: Range = 30.0, threshold: float = 128.0, p: float = 1.0) -> BatchOp:
  """Adds `addition` (a number or (low, high) per image) to pixels < threshold, clipped."""
  return _colour_op("solarize_add", p, lambda k, b: sample_range(k, b, addition),
                    lambda x, a: solarize_add(x, a, threshold))


def posterize_op(bits: int | tuple[int, int] = 4, p: float = 1.0) -> BatchOp:
  """Keeps `bits` bits per value; bits an int in 1..8 or (low, high) drawn per image, inclusive."""
  low, high = (bits, bits) if isinstance(bits, int) else (int(bits[0]), int(bits[1]))
  if not 1 <= low <= high <= 8:
    raise ValueError(f"posterize: bits must be in 1..8, got {bits!r}")
  draw = lambda k, b: jax.random.randint(k, (b,), low, high + 1).astype(jnp.float32)
  return _colour_op("posterize", p, draw, posterize)


def equalize_op(p: float = 1.0) -> BatchOp:
  """Histogram equalization (Pillow) with probability p."""
  return _colour_op("equalize", p, _no_param, lambda x, _: equalize(x))


def autocontrast_op(p: float = 1.0) -> BatchOp:
  """Per-channel contrast stretch (Pillow) with probability p."""
  return _colour_op("autocontrast", p, _no_param, lambda x, _: autocontrast(x))


def sharpness(factor: Range = (0.6, 1.4), p: float = 1.0) -> BatchOp:
  """Pillow sharpness; factor a number or (low, high) drawn per image."""
  return _colour_op("sharpness", p, lambda k, b: sample_range(k, b, factor), adjust_sharpness)


def grayscale_op(p: float = 1.0) -> BatchOp:
  """Grey image (Pillow's L) with probability p."""
  return _colour_op("grayscale", p, _no_param, lambda x, _: grayscale(x))


# name -> factory, for the spec language (see spec.py).
OPS = {
    "brightness": brightness,
    "brightness_add": brightness_add,
    "contrast": contrast,
    "saturation": saturation,
    "color": saturation,
    "hue": hue,
    "gamma": gamma,
    "invert": invert_op,
    "solarize": solarize_op,
    "solarize_add": solarize_add_op,
    "posterize": posterize_op,
    "equalize": equalize_op,
    "autocontrast": autocontrast_op,
    "sharpness": sharpness,
    "grayscale": grayscale_op,
}
