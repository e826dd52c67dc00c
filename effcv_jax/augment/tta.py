"""Test-time augmentation: average the softmax probabilities of deterministic views of a batch.

A views string lists views separated by `|`; a view is one deterministic op, or several joined
by `+` (applied left to right), in the spec language of `spec.py`:

    "identity|flip_lr|shift(dx=2, dy=-2)|flip_lr+shift(dx=2, dy=2)"

View ops: `identity`, `flip_lr`, `flip_ud`, `shift(dx=0, dy=0, pad_mode='reflect', fill=0)` (the
image moved by whole pixels, the border filled as `random_crop`'s padding: a fixed crop of the
padded image), `zoom(fraction=0.875)` (the central box of that side fraction, resized back to
the input size), and the fixed geometric ops of the spec language (`crop(...)`, `center_crop(...)`,
`rot90(k=...)`, `affine(...)`). Every view must keep the input size.

Presets (`PRESETS`): 'identity'; 'flip'; 'five_shift' (the identity and the four diagonal shifts
by `shift` pixels, default 2, as crops at the corners of the padded image) and 'ten_shift' (those
five and their mirror images); 'flip_zoom' (identity, flip, centre zoom and its flip).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from effcv_jax.augment import geometry, spec
from effcv_jax.augment.base import Fill, GeometricOp

LogitsFn = Callable[[jax.Array], jax.Array]


def _five_shift(shift: int) -> list[str]:
  shifts = [(0, 0), (shift, shift), (shift, -shift), (-shift, shift), (-shift, -shift)]
  return ["identity" if (dx, dy) == (0, 0) else f"shift(dx={dx}, dy={dy})" for dx, dy in shifts]


_FIVE_SHIFT = _five_shift(2)
PRESETS = {
    "identity": "identity",
    "flip": "identity|flip_lr",
    "five_shift": "|".join(_FIVE_SHIFT),
    "ten_shift": "|".join(_FIVE_SHIFT + ["flip_lr"] + [f"flip_lr+{view}" for view in _FIVE_SHIFT[1:]]),
    "flip_zoom": "identity|flip_lr|zoom|flip_lr+zoom",
}


def identity() -> GeometricOp:
  """The unchanged image."""
  return GeometricOp("identity", lambda key, batch_size, hw:
                     (geometry.identity_matrices(batch_size), hw))


def shift(dx: int = 0, dy: int = 0, pad_mode: str = "reflect", fill: Fill = 0.0) -> GeometricOp:
  """Moves the content right by dx and down by dy whole pixels; the border as random_crop pads it."""
  if pad_mode not in geometry.MODES:
    raise ValueError(f"pad_mode must be one of {geometry.MODES}, got {pad_mode!r}")

  def sample(key, batch_size, hw):
    del key
    return jnp.broadcast_to(geometry.translation_matrix(float(dx), float(dy)),
                            (batch_size, 3, 3)), hw

  return GeometricOp("shift", sample, None, pad_mode, fill)


def zoom(fraction: float = 0.875, interpolation: str = "bilinear") -> GeometricOp:
  """The central box of side `fraction` of the image, resized back to the image size."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"zoom: fraction must be in (0, 1], got {fraction!r}")

  def sample(key, batch_size, hw):
    del key
    box_h, box_w = hw[0] * fraction, hw[1] * fraction
    matrix = geometry.box_matrix((hw[1] - box_w) / 2.0, (hw[0] - box_h) / 2.0, box_w, box_h, hw)
    return jnp.broadcast_to(matrix, (batch_size, 3, 3)), hw

  return GeometricOp("zoom", sample, interpolation, "edge")


VIEW_OPS = {
    "identity": identity,
    "flip_lr": lambda: geometry.flip_lr(p=1.0),
    "flip_ud": lambda: geometry.flip_ud(p=1.0),
    "shift": shift,
    "zoom": zoom,
    "crop": geometry.crop,
    "center_crop": geometry.center_crop,
    "rot90": geometry.rot90,
    "affine": geometry.affine,
}


def parse_views(views: str) -> list[list[tuple[str, dict]]]:
  """A views string (or preset name) -> per view, its list of (op name, kwargs)."""
  views = PRESETS.get(views.strip(), views)
  parsed = []
  for view in spec.split_top_level(views, "|"):
    if not view:
      raise ValueError(f"TTA views {views!r} contain an empty view; presets: {', '.join(PRESETS)}")
    parsed.append([spec.parse_op(part) for part in spec.split_top_level(view, "+")])
  return parsed


def build_views(views: str) -> list[Callable[[jax.Array], jax.Array]]:
  """One function images (B, H, W, C) -> (B, H, W, C) per view; deterministic."""
  functions = []
  for view in parse_views(views):
    ops = [spec.make_op(name, kwargs, VIEW_OPS) for name, kwargs in view]
    if any(not isinstance(op, GeometricOp) for op in ops):
      raise ValueError("TTA views must be geometric")
    augment = spec.chain(spec.stages_from_ops(ops))
    functions.append(lambda images, augment=augment: augment(jax.random.key(0), images,
                                                             jnp.zeros((images.shape[0], 0)))[0])
  return functions


def predict_probs(logits_fn: LogitsFn, images: jax.Array, views: str = "flip") -> jax.Array:
  """Mean softmax probability over the views.

  Args:
    logits_fn: float images (B, H, W, C) in [0, 255] -> logits (B, K).
    images: (B, H, W, C), float in [0, 255] (uint8 is converted).
    views: a views string or a preset name (see module docstring).
  Returns: float32 (B, K) probabilities.
  """
  images = images.astype(jnp.float32)
  total = None
  view_fns = build_views(views)
  for view_fn in view_fns:
    view = view_fn(images)
    if view.shape != images.shape:
      raise ValueError(f"TTA view changed the image shape {images.shape} -> {view.shape}")
    probs = jax.nn.softmax(logits_fn(view).astype(jnp.float32), axis=-1)
    total = probs if total is None else total + probs
  return total / len(view_fns)
