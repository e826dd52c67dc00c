"""Geometric augmentations: per-image affine matrices and one 2-D warp that applies them.

Coordinates. Every matrix here maps *output* coordinates to *input* coordinates (an inverse
map, as Pillow's `Image.transform` and `warp_affine` below use), in continuous pixel coordinates:
the pixel in row i, column j covers [j, j+1) x [i, i+1) and has its centre at (j + 0.5, i + 0.5);
points are (x=column, y=row). Matrices are float32 (..., 3, 3) with last row (0, 0, 1).

Composition. If op A is applied first and op B second, the output of B at point p shows the
input at `M_A @ M_B @ p`, so a sequence of ops folds into one matrix by right-multiplication
(`compose`), and the whole sequence costs one warp.

The warp follows Pillow's sampling rules, so results agree with Pillow's `Image.transform`:
nearest takes the pixel that contains the point; bilinear interpolates between the 4 nearest pixel
centres, clamping at the image edge; with mode 'constant' an output pixel whose point falls outside
the input rectangle gets the fill value. Modes 'reflect' (as `np.pad(mode='reflect')`) and 'edge'
extend the image instead.

Why not dm-pix: `dm_pix.affine_transform` treats (H, W, C) as a 3-D volume and interpolates in
3-D, which is slower on CPU; this warp is a flat gather over H*W per image.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax.augment.base import (Fill, GeometricOp, Range, bernoulli, check_probability,
                                    fill_array, sample_range, sample_symmetric)

INTERPOLATIONS = ("bilinear", "nearest")
MODES = ("constant", "reflect", "edge")

# ---------------------------------------------------------------------------------------------
# Matrices (all output -> input, continuous coordinates, float32 (..., 3, 3)).
# ---------------------------------------------------------------------------------------------


def affine_matrix(a, b, c, d, e, f) -> jax.Array:
  """Stacks broadcastable entries into (..., 3, 3): u = a*x + b*y + c, v = d*x + e*y + f."""
  a, b, c, d, e, f = jnp.broadcast_arrays(
      *[jnp.asarray(t, jnp.float32) for t in (a, b, c, d, e, f)])
  zeros, ones = jnp.zeros_like(a), jnp.ones_like(a)
  rows = [jnp.stack([a, b, c], -1), jnp.stack([d, e, f], -1), jnp.stack([zeros, zeros, ones], -1)]
  return jnp.stack(rows, -2)


def identity_matrices(batch_size: int) -> jax.Array:
  """(B, 3, 3) identities."""
  return jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (batch_size, 3, 3))


def compose(first: jax.Array, second: jax.Array) -> jax.Array:
  """The matrix of applying the op of `first`, then the op of `second` (both (..., 3, 3))."""
  return jnp.einsum("...ij,...jk->...ik", first, second)


def translation_matrix(dx, dy) -> jax.Array:
  """Moves the content right by dx and down by dy pixels."""
  return affine_matrix(1.0, 0.0, -jnp.asarray(dx, jnp.float32), 0.0, 1.0,
                       -jnp.asarray(dy, jnp.float32))


def flip_lr_matrix(width: int, batch_shape=()) -> jax.Array:
  return affine_matrix(jnp.full(batch_shape, -1.0), 0.0, float(width), 0.0, 1.0, 0.0)


def flip_ud_matrix(height: int, batch_shape=()) -> jax.Array:
  return affine_matrix(jnp.ones(batch_shape), 0.0, 0.0, 0.0, -1.0, float(height))


def rotation_matrix(cos,
                    sin,
                    in_hw: tuple[int, int],
                    out_hw: tuple[int, int] | None = None) -> jax.Array:
  """Counter-clockwise rotation (Pillow's `Image.rotate` sense) about the image centres.

  Args:
    cos, sin: cosine and sine of the angle, broadcastable arrays.
    in_hw, out_hw: input and output sizes (they differ for a 90-degree turn of a non-square
      image); the output centre maps onto the input centre.
  """
  out_hw = out_hw or in_hw
  in_cx, in_cy = in_hw[1] / 2.0, in_hw[0] / 2.0
  out_cx, out_cy = out_hw[1] / 2.0, out_hw[0] / 2.0
  cos, sin = jnp.asarray(cos, jnp.float32), jnp.asarray(sin, jnp.float32)
  # u = cos*(x - out_cx) - sin*(y - out_cy) + in_cx ; v = sin*(x - out_cx) + cos*(y - out_cy) + in_cy
  return affine_matrix(cos, -sin, in_cx - cos * out_cx + sin * out_cy, sin, cos,
                       in_cy - sin * out_cx - cos * out_cy)


def rotation_matrix_degrees(degrees, in_hw: tuple[int, int]) -> jax.Array:
  radians = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  return rotation_matrix(jnp.cos(radians), jnp.sin(radians), in_hw)


def shear_x_matrix(shear) -> jax.Array:
  """u = x + shear * y: the AutoAugment shear, about the top-left corner (Pillow (1, s, 0, 0, 1, 0))."""
  return affine_matrix(1.0, shear, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(shear) -> jax.Array:
  """v = shear * x + y, about the top-left corner (Pillow (1, 0, 0, s, 1, 0))."""
  return affine_matrix(1.0, 0.0, 0.0, shear, 1.0, 0.0)


def box_matrix(left, top, box_width, box_height, out_hw: tuple[int, int]) -> jax.Array:
  """Maps the output rectangle [0, out_w) x [0, out_h) onto the input box (a crop + resize)."""
  out_h, out_w = out_hw
  box_width = jnp.asarray(box_width, jnp.float32)
  box_height = jnp.asarray(box_height, jnp.float32)
  return affine_matrix(box_width / out_w, 0.0, left, 0.0, box_height / out_h, top)


def solve_affine_from_points(src_points, dst_points) -> np.ndarray:
  """The 2x3 matrix A with A @ (x, y, 1) = dst for three point pairs (OpenCV's getAffineTransform).

  Args:
    src_points, dst_points: three (x, y) points each, float.
  Returns: float64 (2, 3).
  """
  src = np.asarray(src_points, np.float64).reshape(3, 2)
  dst = np.asarray(dst_points, np.float64).reshape(3, 2)
  src_h = np.concatenate([src, np.ones((3, 1))], axis=1)  # (3, 3): rows (x, y, 1)
  if abs(np.linalg.det(src_h)) < 1e-9:
    raise ValueError(f"affine: source points {src.tolist()} are collinear")
  return np.linalg.solve(src_h, dst).T


def three_point_matrix(src_points, dst_points) -> np.ndarray:
  """The warp matrix (output -> input, continuous coordinates) that moves src points onto dst.

  Points are pixel-index coordinates as in OpenCV: the centre of the pixel in row i, column j is
  (j, i). Equivalent to `cv2.warpAffine(img, cv2.getAffineTransform(src, dst), ...)`.
  Returns: float32 (3, 3).
  """
  forward = np.eye(3)
  forward[:2] = solve_affine_from_points(src_points, dst_points)  # index coords, input -> output
  inverse = np.linalg.inv(forward)
  to_index, to_continuous = np.eye(3), np.eye(3)
  to_index[:2, 2] = -0.5
  to_continuous[:2, 2] = 0.5
  return (to_continuous @ inverse @ to_index).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The warp.
# ---------------------------------------------------------------------------------------------


def _extend_index(index: jax.Array, size: int, mode: str) -> jax.Array:
  """Integer indices outside [0, size) brought back inside: reflect / edge (clamp)."""
  if mode == "reflect" and size > 1:
    period = 2 * (size - 1)
    index = jnp.mod(index, period)
    return jnp.where(index >= size, period - index, index)
  return jnp.clip(index, 0, size - 1)


def _gather(flat_images: jax.Array, rows: jax.Array, cols: jax.Array, width: int) -> jax.Array:
  """flat_images (B, H*W, C), rows/cols int32 (B, N) in range -> (B, N, C)."""
  flat_index = (rows * width + cols)[..., None]
  return jnp.take_along_axis(flat_images, flat_index, axis=1, mode="promise_in_bounds")


def warp_affine(images: jax.Array,
                matrices: jax.Array,
                out_hw: tuple[int, int] | None = None,
                interpolation: str = "bilinear",
                mode: str = "constant",
                fill: Fill = 0.0) -> jax.Array:
  """Resamples each image through its own affine matrix.

  Args:
    images: float (B, H, W, C).
    matrices: (B, 3, 3), output -> input, continuous pixel coordinates (see module docstring).
    out_hw: output (height, width); defaults to (H, W).
    interpolation: 'bilinear' or 'nearest'.
    mode: 'constant' (outside pixels get `fill`), 'reflect' or 'edge'.
    fill: a number or one value per channel.
  Returns: (B, out_H, out_W, C), the dtype of `images`.
  """
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  batch, height, width, channels = images.shape
  out_h, out_w = out_hw or (height, width)
  xs = jnp.arange(out_w, dtype=jnp.float32)[None, None, :] + 0.5
  ys = jnp.arange(out_h, dtype=jnp.float32)[None, :, None] + 0.5
  # The barrier materializes the (B, 3, 3) matrices, so that XLA does not recompute how they
  # were made (trigonometry, selects) for every pixel.
  m = jax.lax.optimization_barrier(matrices.astype(jnp.float32))[:, :2, :, None, None]

  def coordinate(row: int) -> jax.Array:  # (B, out_h * out_w): input x (row 0) or y (row 1)
    value = m[:, row, 0] * xs + m[:, row, 1] * ys + m[:, row, 2]
    return value.reshape(batch, out_h * out_w)

  u, v = coordinate(0), coordinate(1)
  flat_images = images.reshape(batch, height * width, channels)

  if interpolation == "nearest":
    cols, rows = jnp.floor(u).astype(jnp.int32), jnp.floor(v).astype(jnp.int32)
    out = _gather(flat_images, _extend_index(rows, height, mode), _extend_index(cols, width, mode),
                  width)
  else:
    fu, fv = u - 0.5, v - 0.5
    col0f, row0f = jnp.floor(fu), jnp.floor(fv)
    wx, wy = (fu - col0f)[..., None], (fv - row0f)[..., None]
    col0, row0 = col0f.astype(jnp.int32), row0f.astype(jnp.int32)
    col0, col1 = _extend_index(col0, width, mode), _extend_index(col0 + 1, width, mode)
    row0, row1 = _extend_index(row0, height, mode), _extend_index(row0 + 1, height, mode)
    top = _gather(flat_images, row0, col0, width) * (1 - wx) + _gather(
        flat_images, row0, col1, width) * wx
    bottom = _gather(flat_images, row1, col0, width) * (1 - wx) + _gather(
        flat_images, row1, col1, width) * wx
    out = top * (1 - wy) + bottom * wy

  if mode == "constant":
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    out = jnp.where(inside[..., None], out, fill_array(fill, channels).astype(out.dtype))
  return out.reshape(batch, out_h, out_w, channels).astype(images.dtype)


# ---------------------------------------------------------------------------------------------
# Geometric ops of the spec language: each returns a GeometricOp that samples matrices.
# ---------------------------------------------------------------------------------------------


def _with_probability(matrices: jax.Array, key: jax.Array, p: float) -> jax.Array:
  """Replaces the matrices of images that skip the op (probability 1 - p) by identities."""
  if p >= 1.0:
    return matrices
  apply = bernoulli(key, matrices.shape[0], p)
  return jnp.where(apply[:, None, None], matrices, identity_matrices(matrices.shape[0]))


def _check_geometry_args(interpolation: str | None, mode: str | None) -> None:
  if interpolation is not None and interpolation not in INTERPOLATIONS:
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
  if mode is not None and mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def flip_lr(p: float = 0.5) -> GeometricOp:
  """Mirrors each image left-right with probability p."""
  p = check_probability(p)

  def sample(key, batch_size, hw):
    return _with_probability(flip_lr_matrix(hw[1], (batch_size,)), key, p), hw

  return GeometricOp("flip_lr", sample)


def flip_ud(p: float = 0.5) -> GeometricOp:
  """Flips each image upside down with probability p."""
  p = check_probability(p)

  def sample(key, batch_size, hw):
    return _with_probability(flip_ud_matrix(hw[0], (batch_size,)), key, p), hw

  return GeometricOp("flip_ud", sample)


_QUARTER_TURN_COS = (1.0, 0.0, -1.0, 0.0)
_QUARTER_TURN_SIN = (0.0, 1.0, 0.0, -1.0)


def rot90(k: int | None = 1, p: float = 1.0) -> GeometricOp:
  """Turns each image by k * 90 degrees counter-clockwise (k in 0..3; None: random k per image).

  A fixed odd k on a non-square image swaps height and width (as Pillow's `transpose`);
  a random k needs square images.
  """
  p = check_probability(p)
  if k is not None and k not in (0, 1, 2, 3):
    raise ValueError(f"rot90: k must be 0, 1, 2, 3 or None, got {k!r}")

  def sample(key, batch_size, hw):
    turn_key, p_key = jax.random.split(key)
    if k is None:
      if hw[0] != hw[1]:
        raise ValueError(f"rot90(k=None) needs square images, got {hw}")
      turns = jax.random.randint(turn_key, (batch_size,), 0, 4)
      cos, sin = jnp.asarray(_QUARTER_TURN_COS)[turns], jnp.asarray(_QUARTER_TURN_SIN)[turns]
      return _with_probability(rotation_matrix(cos, sin, hw), p_key, p), hw
    out_hw = (hw[1], hw[0]) if k % 2 else hw
    if out_hw != hw and p < 1.0:
      raise ValueError("rot90 with p < 1 needs square images")
    matrix = rotation_matrix(_QUARTER_TURN_COS[k], _QUARTER_TURN_SIN[k], hw, out_hw)
    return _with_probability(jnp.broadcast_to(matrix, (batch_size, 3, 3)), p_key, p), out_hw

  return GeometricOp("rot90", sample)


def rotate(degrees: Range = 30.0,
           interpolation: str = "bilinear",
           mode: str = "constant",
           fill: Fill = 0.0,
           p: float = 1.0) -> GeometricOp:
  """Rotates counter-clockwise about the centre by an angle drawn per image.

  degrees: m -> uniform in [-m, m); (low, high) -> uniform in [low, high).
  """
  p = check_probability(p)
  _check_geometry_args(interpolation, mode)

  def sample(key, batch_size, hw):
    angle_key, p_key = jax.random.split(key)
    angles = sample_symmetric(angle_key, batch_size, degrees)
    return _with_probability(rotation_matrix_degrees(angles, hw), p_key, p), hw

  return GeometricOp("rotate", sample, interpolation, mode, fill)


def _shear_op(name: str, matrix_fn, shear: Range, interpolation, mode, fill, p) -> GeometricOp:
  p = check_probability(p)
  _check_geometry_args(interpolation, mode)

  def sample(key, batch_size, hw):
    shear_key, p_key = jax.random.split(key)
    return _with_probability(matrix_fn(sample_symmetric(shear_key, batch_size, shear)), p_key,
                             p), hw

  return GeometricOp(name, sample, interpolation, mode, fill)


def shear_x(shear: Range = 0.3,
            interpolation: str = "bilinear",
            mode: str = "constant",
            fill: Fill = 0.0,
            p: float = 1.0) -> GeometricOp:
  """Horizontal shear u = x + s*y about the top-left corner (AutoAugment's); s drawn per image."""
  return _shear_op("shear_x", shear_x_matrix, shear, interpolation, mode, fill, p)


def shear_y(shear: Range = 0.3,
            interpolation: str = "bilinear",
            mode: str = "constant",
            fill: Fill = 0.0,
            p: float = 1.0) -> GeometricOp:
  """Vertical shear v = s*x + y about the top-left corner; s drawn per image."""
  return _shear_op("shear_y", shear_y_matrix, shear, interpolation, mode, fill, p)


def _translate_op(name: str, axis: int, pixels: Range | None, fraction: Range | None, interpolation,
                  mode, fill, p) -> GeometricOp:
  p = check_probability(p)
  _check_geometry_args(interpolation, mode)
  if (pixels is None) == (fraction is None):
    raise ValueError(f"{name}: give exactly one of pixels= or fraction=")

  def sample(key, batch_size, hw):
    shift_key, p_key = jax.random.split(key)
    if pixels is not None:
      shifts = sample_symmetric(shift_key, batch_size, pixels)
    else:
      shifts = sample_symmetric(shift_key, batch_size, fraction) * hw[1 - axis]
    dx, dy = (shifts, 0.0) if axis == 0 else (0.0, shifts)
    return _with_probability(translation_matrix(dx, dy), p_key, p), hw

  return GeometricOp(name, sample, interpolation, mode, fill)


def translate_x(pixels: Range | None = None,
                fraction: Range | None = None,
                interpolation: str = "bilinear",
                mode: str = "constant",
                fill: Fill = 0.0,
                p: float = 1.0) -> GeometricOp:
  """Moves the content right by a shift drawn per image (in pixels, or as a fraction of width)."""
  return _translate_op("translate_x", 0, pixels, fraction, interpolation, mode, fill, p)


def translate_y(pixels: Range | None = None,
                fraction: Range | None = None,
                interpolation: str = "bilinear",
                mode: str = "constant",
                fill: Fill = 0.0,
                p: float = 1.0) -> GeometricOp:
  """Moves the content down by a shift drawn per image (in pixels, or as a fraction of height)."""
  return _translate_op("translate_y", 1, pixels, fraction, interpolation, mode, fill, p)


def _as_hw(size) -> tuple[int, int] | None:
  if size is None:
    return None
  if isinstance(size, int):
    return (size, size)
  height, width = size
  return (int(height), int(width))


def random_crop(size: int | Sequence[int] | None = None,
                padding: int = 4,
                pad_mode: str = "reflect",
                fill: Fill = 0.0) -> GeometricOp:
  """Pads by `padding` pixels on each side, then crops `size` (default: the input size) at a
  uniformly drawn integer offset per image (the CIFAR recipe). pad_mode: 'reflect' (as
  `np.pad(mode='reflect')`), 'constant' (with `fill`) or 'edge'."""
  _check_geometry_args(None, pad_mode)
  if padding < 0:
    raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
  crop_hw = _as_hw(size)

  def sample(key, batch_size, hw):
    out_h, out_w = crop_hw or hw
    if out_h > hw[0] + 2 * padding or out_w > hw[1] + 2 * padding:
      raise ValueError(f"random_crop: size {(out_h, out_w)} exceeds padded input {hw} + {padding}")
    y_key, x_key = jax.random.split(key)
    top = jax.random.randint(y_key, (batch_size,), 0, hw[0] + 2 * padding - out_h + 1) - padding
    left = jax.random.randint(x_key, (batch_size,), 0, hw[1] + 2 * padding - out_w + 1) - padding
    return translation_matrix(-left.astype(jnp.float32), -top.astype(jnp.float32)), (out_h, out_w)

  return GeometricOp("random_crop", sample, None, pad_mode, fill)


def crop(top: int,
         left: int,
         height: int,
         width: int,
         size: int | Sequence[int] | None = None,
         interpolation: str = "bilinear",
         mode: str = "constant",
         fill: Fill = 0.0) -> GeometricOp:
  """Crops the fixed box rows [top, top+height), columns [left, left+width) (as Pillow's
  `Image.crop((left, top, left+width, top+height))`); with `size` the box is resized to it."""
  _check_geometry_args(interpolation, mode)
  out_hw = _as_hw(size) or (height, width)
  exact = out_hw == (height, width)

  def sample(key, batch_size, hw):
    del key
    matrix = box_matrix(float(left), float(top), float(width), float(height), out_hw)
    return jnp.broadcast_to(matrix, (batch_size, 3, 3)), out_hw

  return GeometricOp("crop", sample, None if exact else interpolation, mode, fill)


def center_crop(size: int | Sequence[int],
                resize_to_input: bool = False,
                interpolation: str = "bilinear") -> GeometricOp:
  """Crops the central `size` box (offsets rounded as Pillow/torchvision do); with
  resize_to_input the box is scaled back to the input size (a centre zoom)."""
  crop_h, crop_w = _as_hw(size)

  def sample(key, batch_size, hw):
    del key
    if crop_h > hw[0] or crop_w > hw[1]:
      raise ValueError(f"center_crop: size {(crop_h, crop_w)} exceeds input {hw}")
    top, left = int(round((hw[0] - crop_h) / 2.0)), int(round((hw[1] - crop_w) / 2.0))
    out_hw = hw if resize_to_input else (crop_h, crop_w)
    matrix = box_matrix(float(left), float(top), float(crop_w), float(crop_h), out_hw)
    return jnp.broadcast_to(matrix, (batch_size, 3, 3)), out_hw

  return GeometricOp("center_crop", sample, interpolation if resize_to_input else None, "edge")


def random_resized_crop(scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        size: int | Sequence[int] | None = None,
                        interpolation: str = "bilinear") -> GeometricOp:
  """Inception-style crop: a box of area fraction ~ U(scale) and aspect ratio log-uniform in
  `ratio`, at a uniform position, resized to `size` (default: the input size).

  Unlike torchvision (which retries up to 10 times), a box that does not fit is shrunk to fit;
  boxes have sub-pixel positions; no antialiasing when shrinking.
  """
  _check_geometry_args(interpolation, None)
  out_size = _as_hw(size)
  scale_low, scale_high = float(scale[0]), float(scale[1])
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

  def sample(key, batch_size, hw):
    height, width = hw
    out_hw = out_size or hw
    area_key, ratio_key, x_key, y_key = jax.random.split(key, 4)
    area = jax.random.uniform(area_key,
                              (batch_size,), minval=scale_low, maxval=scale_high) * height * width
    aspect = jnp.exp(
        jax.random.uniform(ratio_key, (batch_size,), minval=log_ratio[0], maxval=log_ratio[1]))
    box_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
    box_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
    left = jax.random.uniform(x_key, (batch_size,)) * (width - box_w)
    top = jax.random.uniform(y_key, (batch_size,)) * (height - box_h)
    return box_matrix(left, top, box_w, box_h, out_hw), out_hw

  return GeometricOp("random_resized_crop", sample, interpolation, "edge")


def affine(src: Sequence[Sequence[float]],
           dst: Sequence[Sequence[float]],
           interpolation: str = "bilinear",
           mode: str = "constant",
           fill: Fill = 0.0) -> GeometricOp:
  """The affine transform that moves three src points onto three dst points (OpenCV's
  getAffineTransform + warpAffine), points as (x, y) pixel indices. The output keeps the input size."""
  _check_geometry_args(interpolation, mode)
  matrix = jnp.asarray(three_point_matrix(src, dst))

  def sample(key, batch_size, hw):
    del key
    return jnp.broadcast_to(matrix, (batch_size, 3, 3)), hw

  return GeometricOp("affine", sample, interpolation, mode, fill)


# name -> factory, for the spec language (see spec.py).
OPS = {
    "flip_lr": flip_lr,
    "flip_ud": flip_ud,
    "rot90": rot90,
    "rotate": rotate,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "translate_x": translate_x,
    "translate_y": translate_y,
    "random_crop": random_crop,
    "crop": crop,
    "center_crop": center_crop,
    "random_resized_crop": random_resized_crop,
    "affine": affine,
}
