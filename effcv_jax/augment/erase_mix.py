"""Erasing (cutout, random erasing) and batch mixing (Mixup, CutMix) with soft labels.

All functions take float32 images (B, H, W, C) in [0, 255] and labels (B, K) (one-hot or soft)
and draw their parameters per image. Mixing pairs image i with image `partner[i]` of a random
permutation of the batch and mixes labels with the same weight as pixels, so mixed labels still
sum to 1. CutMix's label weight is the exact fraction of pixels that were *not* pasted over.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp

from effcv_jax.augment.base import BatchOp, Fill, bernoulli, check_probability, fill_array, per_image

# A fill for erased boxes: a number, one number per channel, or 'noise' (uniform in [0, 255]).
EraseFill = Union[float, int, Sequence[float], str]


def box_mask(top: jax.Array, left: jax.Array, bottom: jax.Array, right: jax.Array,
             hw: tuple[int, int]) -> jax.Array:
  """bool (B, H, W, 1): True inside rows [top, bottom) and columns [left, right) of each image.

  top, left, bottom, right: int32 (B,).
  """
  rows = jnp.arange(hw[0])[None, :, None]
  cols = jnp.arange(hw[1])[None, None, :]
  inside_rows = (rows >= top[:, None, None]) & (rows < bottom[:, None, None])
  inside_cols = (cols >= left[:, None, None]) & (cols < right[:, None, None])
  return (inside_rows & inside_cols)[..., None]


def _fill_values(key: jax.Array, images: jax.Array, fill: EraseFill) -> jax.Array:
  """What erased pixels get: broadcastable to images."""
  if isinstance(fill, str):
    if fill != "noise":
      raise ValueError(f"fill must be a number, one per channel, or 'noise'; got {fill!r}")
    return jax.random.uniform(key, images.shape, images.dtype, 0.0, 255.0)
  return fill_array(fill, images.shape[-1]).astype(images.dtype)


def cutout_boxes(key: jax.Array, batch_size: int, hw: tuple[int, int], size: tuple[int, int]):
  """Boxes of `size` centred uniformly on the image and clipped to it (DeVries & Taylor 2017).

  Returns: (top, left, bottom, right), each int32 (B,).
  """
  y_key, x_key = jax.random.split(key)
  centre_y = jax.random.randint(y_key, (batch_size,), 0, hw[0])
  centre_x = jax.random.randint(x_key, (batch_size,), 0, hw[1])
  top = jnp.clip(centre_y - size[0] // 2, 0, hw[0])
  left = jnp.clip(centre_x - size[1] // 2, 0, hw[1])
  bottom = jnp.clip(centre_y - size[0] // 2 + size[0], 0, hw[0])
  right = jnp.clip(centre_x - size[1] // 2 + size[1], 0, hw[1])
  return top, left, bottom, right


def cutout(size: int | Sequence[int] = 16, fill: EraseFill = 0.0, p: float = 1.0) -> BatchOp:
  """Erases one box of `size` pixels (a number or (height, width)) per image, centred uniformly
  and clipped at the border, with probability p; `fill` a number, per-channel values or 'noise'."""
  p = check_probability(p)
  box_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

  def apply(key, images, labels):
    batch, height, width, _ = images.shape
    box_key, p_key, fill_key = jax.random.split(key, 3)
    top, left, bottom, right = cutout_boxes(box_key, batch, (height, width), box_hw)
    erase = box_mask(top, left, bottom, right,
                     (height, width)) & per_image(bernoulli(p_key, batch, p))
    return jnp.where(erase, _fill_values(fill_key, images, fill), images), labels

  return BatchOp("cutout", apply)


def random_erasing(p: float = 0.5,
                   scale: Sequence[float] = (0.02, 0.33),
                   ratio: Sequence[float] = (0.3, 3.3),
                   fill: EraseFill = 0.0) -> BatchOp:
  """Random erasing (Zhong et al. 2017, torchvision's RandomErasing): with probability p erase a
  box of area fraction ~ U(scale) and aspect ratio (height / width) log-uniform in `ratio`, at a
  uniform position. A box that does not fit is shrunk to fit (torchvision retries instead)."""
  p = check_probability(p)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

  def apply(key, images, labels):
    batch, height, width, _ = images.shape
    area_key, ratio_key, y_key, x_key, p_key, fill_key = jax.random.split(key, 6)
    area = jax.random.uniform(area_key, (batch,), minval=scale[0], maxval=scale[1]) * height * width
    aspect = jnp.exp(
        jax.random.uniform(ratio_key, (batch,), minval=log_ratio[0], maxval=log_ratio[1]))
    box_h = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, height).astype(jnp.int32)
    box_w = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, width).astype(jnp.int32)
    top = jnp.floor(jax.random.uniform(y_key, (batch,)) * (height - box_h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(x_key, (batch,)) * (width - box_w + 1)).astype(jnp.int32)
    erase = box_mask(top, left, top + box_h, left + box_w, (height, width))
    erase = erase & per_image(bernoulli(p_key, batch, p))
    return jnp.where(erase, _fill_values(fill_key, images, fill), images), labels

  return BatchOp("random_erasing", apply)


# ---------------------------------------------------------------------------------------------
# Mixing.
# ---------------------------------------------------------------------------------------------


def partners(key: jax.Array, batch_size: int) -> jax.Array:
  """int32 (B,): the image each image is mixed with (a random permutation of the batch, drawn
  by sorting uniform keys: one sort, cheaper to compile than `jax.random.permutation`)."""
  return jnp.argsort(jax.random.uniform(key, (batch_size,)))


def mix_labels(labels: jax.Array, partner_labels: jax.Array, keep: jax.Array) -> jax.Array:
  """keep*labels + (1-keep)*partner_labels; labels (B, K), keep (B,): the weight of each
  image's own label."""
  keep = keep[:, None].astype(labels.dtype)
  return keep * labels + (1.0 - keep) * partner_labels


def mixup_images(images, partner_images, keep):
  """keep (B,): the weight of each image's own pixels; returns keep*x + (1-keep)*partner."""
  keep = per_image(keep).astype(images.dtype)
  return keep * images + (1.0 - keep) * partner_images


def cutmix_boxes(key: jax.Array, keep: jax.Array, hw: tuple[int, int]):
  """Boxes of area about (1 - keep) of the image, centred uniformly, clipped (Yun et al. 2019).

  keep: float (B,) in [0, 1]. Returns (top, left, bottom, right) int32 (B,) and the exact
  kept fraction (B,) = 1 - box area / image area after clipping.
  """
  y_key, x_key = jax.random.split(key)
  centre_y = jax.random.randint(y_key, keep.shape, 0, hw[0])
  centre_x = jax.random.randint(x_key, keep.shape, 0, hw[1])
  return boxes_around(centre_y, centre_x, keep, hw)


def boxes_around(centre_y: jax.Array, centre_x: jax.Array, keep: jax.Array,
                 hw: tuple[int, int]):
  """CutMix's boxes at given centres: sides floor(side * sqrt(1 - keep)), rows
  [centre_y - cut_h // 2, centre_y + cut_h // 2) (columns alike), clipped to the image.

  centre_y, centre_x: int32 (B,); keep: float (B,) in [0, 1]. Returns (top, left, bottom,
  right) int32 (B,) and the exact kept fraction (B,) = 1 - box area / image area.
  """
  height, width = hw
  cut = jnp.sqrt(1.0 - keep)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  top, bottom = jnp.clip(centre_y - cut_h // 2, 0, height), jnp.clip(centre_y + cut_h // 2, 0,
                                                                     height)
  left, right = jnp.clip(centre_x - cut_w // 2, 0, width), jnp.clip(centre_x + cut_w // 2, 0, width)
  kept = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / float(height * width)
  return (top, left, bottom, right), kept


def sample_gamma(key: jax.Array,
                 alpha: float,
                 shape: tuple[int, ...],
                 proposals: int = 8) -> jax.Array:
  """Gamma(alpha, 1) samples by Marsaglia & Tsang's method with a fixed number of proposals.

  Same distribution as `jax.random.gamma` (a proposal is rejected with probability < 5 %, so
  all 8 are rejected with probability < 4e-11, where the mode is returned), but without its
  rejection loop, which takes seconds to compile. alpha: a Python float > 0.
  """
  boost_key, normal_key, uniform_key = jax.random.split(key, 3)
  shape_alpha = alpha + 1.0 if alpha < 1.0 else alpha  # alpha < 1: Gamma(a) = Gamma(a+1) * U**(1/a)
  d = shape_alpha - 1.0 / 3.0
  c = 1.0 / math.sqrt(9.0 * d)
  normal = jax.random.normal(normal_key, (proposals,) + shape)
  log_uniform = jnp.log(jax.random.uniform(uniform_key, (proposals,) + shape, minval=1e-30))
  cube = (1.0 + c * normal)**3
  safe_cube = jnp.maximum(cube, 1e-30)
  accepted = (cube > 0) & (log_uniform
                           < 0.5 * normal**2 + d - d * safe_cube + d * jnp.log(safe_cube))
  first = jnp.argmax(accepted, axis=0)  # index of the first accepted proposal (0 if none)
  value = jnp.take_along_axis(d * safe_cube, first[None], axis=0)[0]
  value = jnp.where(jnp.any(accepted, axis=0), value, d)
  if alpha < 1.0:
    value = value * jax.random.uniform(boost_key, shape, minval=1e-30)**(1.0 / alpha)
  return value


def sample_beta(key: jax.Array, alpha: float, shape: tuple[int, ...]) -> jax.Array:
  """Beta(alpha, alpha) samples as X / (X + Y), X, Y ~ Gamma(alpha); alpha = 1: uniform."""
  if alpha == 1.0:
    return jax.random.uniform(key, shape)
  x_key, y_key = jax.random.split(key)
  x, y = sample_gamma(x_key, alpha, shape), sample_gamma(y_key, alpha, shape)
  return x / jnp.maximum(x + y, 1e-30)


def sample_keep(key: jax.Array, batch_size: int, alpha: float, p: float) -> jax.Array:
  """Per-image own-image weight ~ Beta(alpha, alpha); 1 for images that skip mixing."""
  beta_key, p_key = jax.random.split(key)
  keep = sample_beta(beta_key, alpha, (batch_size,))
  return jnp.where(bernoulli(p_key, batch_size, p), keep, 1.0)


def check_alpha(alpha: float, name: str) -> float:
  """alpha as a float; ValueError naming `name` unless it is > 0."""
  if float(alpha) <= 0:
    raise ValueError(f"{name} must be > 0, got {alpha!r}")
  return float(alpha)


def _mixup_and_cutmix(key, images, labels, mixup_alpha, cutmix_alpha, cutmix_prob, p):
  """Shared body: each image is mixed (probability p) by CutMix (probability cutmix_prob) or Mixup."""
  batch, height, width, _ = images.shape
  partner_key, mixup_key, cutmix_key, box_key, switch_key = jax.random.split(key, 5)
  partner = partners(partner_key, batch)
  partner_images, partner_labels = images[partner], labels[partner]
  use_cutmix = bernoulli(switch_key, batch, cutmix_prob)

  mixed_images, keep = images, jnp.ones((batch,), jnp.float32)
  if cutmix_prob < 1.0:
    mixup_keep = sample_keep(mixup_key, batch, mixup_alpha, p)
    mixed_images = mixup_images(images, partner_images, jnp.where(use_cutmix, 1.0, mixup_keep))
    keep = mixup_keep
  if cutmix_prob > 0.0:
    boxes, cutmix_keep = cutmix_boxes(box_key, sample_keep(cutmix_key, batch, cutmix_alpha, p),
                                      (height, width))
    pasted = box_mask(*boxes, (height, width)) & per_image(use_cutmix)
    mixed_images = jnp.where(pasted, partner_images, mixed_images)
    keep = jnp.where(use_cutmix, cutmix_keep, keep)
  return mixed_images, mix_labels(labels, partner_labels, keep)


def mixup(alpha: float = 0.2, p: float = 1.0) -> BatchOp:
  """Mixup (Zhang et al. 2018): x = l*x + (1-l)*x[partner], same for labels, l ~ Beta(alpha, alpha)
  per image; each image mixed with probability p."""
  alpha, p = check_alpha(alpha, "alpha"), check_probability(p)
  return BatchOp("mixup", lambda key, x, y: _mixup_and_cutmix(key, x, y, alpha, 1.0, 0.0, p),
                 mixes=True)


def cutmix(alpha: float = 1.0, p: float = 1.0) -> BatchOp:
  """CutMix (Yun et al. 2019): pastes a box of the partner image; labels weighted by the exact
  pasted area; box area fraction about 1 - l, l ~ Beta(alpha, alpha) per image."""
  alpha, p = check_alpha(alpha, "alpha"), check_probability(p)
  return BatchOp("cutmix", lambda key, x, y: _mixup_and_cutmix(key, x, y, 1.0, alpha, 1.0, p),
                 mixes=True)


def mixup_or_cutmix(mixup_alpha: float = 0.8,
                    cutmix_alpha: float = 1.0,
                    switch_prob: float = 0.5,
                    p: float = 1.0) -> BatchOp:
  """Per image, CutMix with probability switch_prob, else Mixup (timm's recipe); mixed with
  probability p."""
  mixup_alpha = check_alpha(mixup_alpha, "mixup_alpha")
  cutmix_alpha = check_alpha(cutmix_alpha, "cutmix_alpha")
  switch_prob, p = check_probability(switch_prob, "switch_prob"), check_probability(p)
  return BatchOp(
      "mixup_or_cutmix",
      lambda key, x, y: _mixup_and_cutmix(key, x, y, mixup_alpha, cutmix_alpha, switch_prob, p),
      mixes=True)


# name -> factory, for the spec language (see spec.py).
OPS = {
    "cutout": cutout,
    "random_erasing": random_erasing,
    "mixup": mixup,
    "cutmix": cutmix,
    "mixup_or_cutmix": mixup_or_cutmix,
}
