"""RandAugment as the official Noisy Student and EfficientNet code runs it (`randaugment_tf`).

The reference is google-research/noisystudent `randaugment.py` (the same policy as the TPU
EfficientNet `autoaugment.py`'s `distort_image_with_randaugment`), TensorFlow 1.x on uint8 images.
`policies.randaugment` is the torchvision-style policy; this one differs on purpose:

* op set: the 16 ops of `TF_RANDAUGMENT_OPS` (Invert, SolarizeAdd and Cutout; no Identity), one
  drawn uniformly per image and layer and always applied (the reference draws a probability per
  op but none of its op functions takes it);
* magnitudes: one fixed level on a scale whose maximum level is 10 (`MAX_LEVEL`); larger levels
  are allowed and extrapolate (level 27: rotate 81 degrees, shear 0.81, translate 2.7 x
  translate_const pixels, cutout half-size int(2.7 x cutout_const));
* parameters (`level_to_arg`): enhance factors (m/10)*1.8 + 0.1 with no random sign; solarize
  threshold int((m/10)*256); posterize keeps int((m/10)*4) bits; SolarizeAdd adds
  int((m/10)*110) below 128; rotate (m/10)*30 degrees, shear (m/10)*0.3 and translate
  (m/10)*translate_const pixels, each with a random sign; Cutout a square of half-size
  int((m/10)*cutout_const) at a uniformly drawn centre, clipped at the borders;
* uint8 execution: the reference casts the image to uint8 first (values truncated) and every op
  returns uint8. The scalar thresholds are converted to uint8 the way TensorFlow 1.x did: the
  solarize threshold wraps modulo 256 (256 -> 0 inverts every pixel; 691 at level 27 -> 179)
  and the posterize shift 8 - bits wraps modulo 256 and is clamped to 7 by TF's shift kernels
  (so 0 bits and more than 8 bits both keep 1 bit). `effective_solarize_threshold` and
  `effective_posterize_bits` give those values;
* the ops' TF definitions, which are not Pillow's: grey is TF's `rgb_to_grayscale` (weights
  0.2989, 0.587, 0.114, scaled by 255.5 and truncated); Contrast's degenerate image is the
  constant H*W/256 (the reference divides the histogram's total count by 256, not the grey
  levels' sum by the pixel count), clipped to 255; Sharpness's smoothed image is truncated, not
  rounded; blends and AutoContrast truncate; Equalize is Pillow's; geometric ops sample with
  nearest neighbour in pixel-index coordinates (shears about the top-left pixel's centre) and
  fill with grey 128, as Cutout does.

The reference's constants: ImageNet uses translate_const 100 and cutout_const 40 (the
defaults here, with the Noisy Student flags' num_layers 2 and magnitude 27); its 32 px path
(CIFAR-10, SVHN) passes translate_const = cutout_const = image_size // 8 = 4 and then applies a
16 x 16 grey Cutout, which is `cutout(size=16, fill=128)` of `erase_mix.py`.

Execution reuses the policies' machinery (`policies.run_policy`: 'map' or 'batched'); the ops'
strengths are fixed by the magnitude, so a layer's `fraction` field carries instead a uniform
draw in [0, 1) per image that places Cutout's centre (pixel floor(u * H * W) in row-major order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effcv_jax.augment import colour, geometry
from effcv_jax.augment.base import BatchOp
from effcv_jax.augment.policies import STRATEGIES, Layer, PolicyOp, run_policy

MAX_LEVEL = 10.0
GREY = 128.0
SOLARIZE_ADD_THRESHOLD = 128.0

# The reference's `available_ops`, in its order (Cutout last, present with its default flag).
TF_RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                      "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                      "TranslateX", "TranslateY", "SolarizeAdd", "Cutout")
SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
ENHANCE_OPS = ("Color", "Contrast", "Brightness", "Sharpness")

# TF's `rgb_to_grayscale` weights.
_GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)

# ---------------------------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------------------------


def level_to_arg(name: str,
                 magnitude: float,
                 translate_const: float = 100.0,
                 cutout_const: float = 40.0) -> float | None:
  """The reference's parameter of op `name` at `magnitude`, before any random sign.

  Rotate: degrees; ShearX/Y: shear; TranslateX/Y: pixels; the enhance ops: factor; Posterize:
  bits kept; Solarize: threshold; SolarizeAdd: addition; Cutout: half the square's side.
  AutoContrast, Equalize and Invert take none (None). Computed in Python floats as the reference
  computes them (so int() truncates 2.7 * 4 to 10).
  """
  fraction = float(magnitude) / MAX_LEVEL
  if name in ("AutoContrast", "Equalize", "Invert"):
    return None
  if name == "Rotate":
    return fraction * 30.0
  if name in ("ShearX", "ShearY"):
    return fraction * 0.3
  if name in ("TranslateX", "TranslateY"):
    return fraction * float(translate_const)
  if name in ENHANCE_OPS:
    return fraction * 1.8 + 0.1
  if name == "Posterize":
    return float(int(fraction * 4))
  if name == "Solarize":
    return float(int(fraction * 256))
  if name == "SolarizeAdd":
    return float(int(fraction * 110))
  if name == "Cutout":
    return float(int(fraction * cutout_const))
  raise ValueError(f"unknown randaugment_tf op {name!r}; valid: {', '.join(TF_RANDAUGMENT_OPS)}")


def effective_solarize_threshold(threshold: float) -> float:
  """The threshold TF 1.x compared uint8 pixels with: `threshold` converted to uint8 (mod 256)."""
  return float(int(threshold) % 256)


def effective_posterize_bits(bits: float) -> float:
  """The bits TF 1.x kept: shift = (8 - bits) as uint8 (mod 256), clamped to 7 by its kernels."""
  shift = min((8 - int(bits)) % 256, 7)
  return float(8 - shift)


# ---------------------------------------------------------------------------------------------
# The ops with the reference's TF semantics: images float (..., H, W, C) holding whole numbers
# in [0, 255]; param of the images' leading shape (or a number); outputs whole numbers.
# ---------------------------------------------------------------------------------------------


def _per_image(param, images: jax.Array) -> jax.Array:
  param = jnp.asarray(param, images.dtype)
  return param.reshape(param.shape + (1,) * (images.ndim - param.ndim))


def _to_uint8(values: jax.Array) -> jax.Array:
  """TF's clip-then-cast to uint8 (truncation), kept as float."""
  return jnp.floor(jnp.clip(values, 0.0, 255.0))


def blend(degenerate: jax.Array, images: jax.Array, factor) -> jax.Array:
  """The reference's `blend`: degenerate + factor * (image - degenerate), clipped, truncated."""
  return _to_uint8(degenerate + _per_image(factor, images) * (images - degenerate))


def grayscale(images: jax.Array) -> jax.Array:
  """TF's `rgb_to_grayscale` on uint8: trunc(255.5 * sum(w * x / 255)): (..., H, W, 1).

  A single-channel image is its own grey."""
  if images.shape[-1] == 1:
    return images
  scaled = images * jnp.float32(1.0 / 255.0)
  grey = (scaled[..., 0:1] * _GREY_WEIGHTS[0] + scaled[..., 1:2] * _GREY_WEIGHTS[1] +
          scaled[..., 2:3] * _GREY_WEIGHTS[2])
  return _to_uint8(grey * 255.5)


def adjust_color(images: jax.Array, factor) -> jax.Array:
  """Color: blend with the grey image."""
  return blend(jnp.broadcast_to(grayscale(images), images.shape), images, factor)


def adjust_contrast(images: jax.Array, factor) -> jax.Array:
  """Contrast: blend with the constant trunc(min(H * W / 256, 255)) (the reference's 'mean')."""
  height, width = images.shape[-3], images.shape[-2]
  degenerate = float(int(min(height * width / 256.0, 255.0)))
  return blend(jnp.full_like(images, degenerate), images, factor)


def adjust_brightness(images: jax.Array, factor) -> jax.Array:
  """Brightness: blend with black."""
  return blend(jnp.zeros_like(images), images, factor)


def smooth(images: jax.Array) -> jax.Array:
  """The SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13) truncated; border pixels kept."""
  height, width = images.shape[-3], images.shape[-2]
  if height < 3 or width < 3:
    return images
  rows = images[..., :-2, :, :] + images[..., 1:-1, :, :] + images[..., 2:, :, :]
  box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
  inner = _to_uint8((box + 4.0 * images[..., 1:-1, 1:-1, :]) / 13.0)
  pad = [(0, 0)] * (images.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
  border = jnp.ones((height, width, 1), bool).at[1:-1, 1:-1].set(False)
  return jnp.where(border, images, jnp.pad(inner, pad))


def adjust_sharpness(images: jax.Array, factor) -> jax.Array:
  """Sharpness: blend with the smoothed image."""
  return blend(smooth(images), images, factor)


def autocontrast(images: jax.Array) -> jax.Array:
  """AutoContrast: each channel's [min, max] stretched to [0, 255], truncated; flat kept."""
  low = colour.per_channel_reduce(jnp.min, images)
  high = colour.per_channel_reduce(jnp.max, images)
  flat = high <= low
  scale = 255.0 / jnp.where(flat, 1.0, high - low)
  return jnp.where(flat, images, _to_uint8(images * scale - low * scale))


def posterize(images: jax.Array, bits) -> jax.Array:
  """Posterize with the reference's bits (TF's uint8 wrap and shift clamp applied)."""
  shift = jnp.clip(jnp.mod(8.0 - jnp.floor(jnp.asarray(bits, jnp.float32)), 256.0), 0.0, 7.0)
  return colour.posterize(images, 8.0 - shift)


def solarize(images: jax.Array, threshold) -> jax.Array:
  """Solarize with the reference's threshold, converted to uint8 (mod 256) as TF 1.x did."""
  return colour.solarize(images, jnp.mod(jnp.floor(jnp.asarray(threshold, jnp.float32)), 256.0))


def solarize_add(images: jax.Array, addition) -> jax.Array:
  """SolarizeAdd: pixels below 128 get `addition` added, clipped to [0, 255]."""
  return colour.solarize_add(images, addition, SOLARIZE_ADD_THRESHOLD)


def cutout_at(images: jax.Array, placement, pad_size: int, fill: float = GREY) -> jax.Array:
  """The reference's cutout: rows [cy - pad, cy + pad) x columns [cx - pad, cx + pad), clipped
  to the image, set to `fill`, the centre pixel (cy, cx) being number floor(placement * H * W)
  in row-major order (placement uniform in [0, 1) makes cy and cx independent and uniform).

  images (..., H, W, C); placement of the leading shape (or a number) -> (..., H, W, C).
  """
  height, width = images.shape[-3], images.shape[-2]
  placement = jnp.asarray(placement, jnp.float32)
  index = jnp.clip(jnp.floor(placement * (height * width)), 0, height * width - 1).astype(jnp.int32)
  centre_y = (index // width)[..., None, None]
  centre_x = (index % width)[..., None, None]
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = ((rows >= centre_y - pad_size) & (rows < centre_y + pad_size) &
            (cols >= centre_x - pad_size) & (cols < centre_x + pad_size))
  return jnp.where(inside[..., None], jnp.asarray(fill, images.dtype), images)


def shear_x_matrix(shear) -> jax.Array:
  """TF's x-shear in pixel-index coordinates (input x = x + shear * y), as a continuous-coordinate
  warp matrix (`geometry.py`'s convention): u = x + shear * y - shear / 2."""
  shear = jnp.asarray(shear, jnp.float32)
  return geometry.affine_matrix(1.0, shear, -0.5 * shear, 0.0, 1.0, 0.0)


def shear_y_matrix(shear) -> jax.Array:
  """TF's y-shear in pixel-index coordinates: v = shear * x + y - shear / 2."""
  shear = jnp.asarray(shear, jnp.float32)
  return geometry.affine_matrix(1.0, 0.0, 0.0, shear, 1.0, -0.5 * shear)


def translate_matrix(pixels, axis: int) -> jax.Array:
  """TF's translate by `pixels` along x (axis 0) or y (axis 1): output(p) = input(p + pixels),
  i.e. the content moves left (up) by `pixels`."""
  pixels = jnp.asarray(pixels, jnp.float32)
  return (geometry.translation_matrix(-pixels, 0.0) if axis == 0 else
          geometry.translation_matrix(0.0, -pixels))


def apply_geometric(images: jax.Array, matrices: jax.Array) -> jax.Array:
  """A batch (B, H, W, C) through its (B, 3, 3) matrices, as the reference's geometric ops
  sample: nearest neighbour, grey 128 outside."""
  return geometry.warp_affine(images, matrices, images.shape[1:3], "nearest", "constant", GREY)


# ---------------------------------------------------------------------------------------------
# The op space and the policy.
# ---------------------------------------------------------------------------------------------


def _constant(value: float):
  """A PolicyOp strength that ignores the layer's fraction: the fixed parameter per image."""
  return lambda fraction, hw: jnp.full(jnp.shape(fraction), value, jnp.float32)


def op_space(magnitude: float, translate_const: float, cutout_const: float) -> list[PolicyOp]:
  """The 16 ops of TF_RANDAUGMENT_OPS, in order, with their parameters fixed by `magnitude`.

  Cutout's strength is the layer's fraction itself (its placement draw, see the module doc).
  """
  arg = {
      name: level_to_arg(name, magnitude, translate_const, cutout_const)
      for name in TF_RANDAUGMENT_OPS
  }
  pad_size = int(arg["Cutout"])
  no_param = _constant(0.0)
  ops = {
      "AutoContrast": PolicyOp("AutoContrast", no_param, colour_fn=lambda x, s: autocontrast(x)),
      "Equalize": PolicyOp("Equalize", no_param, colour_fn=lambda x, s: colour.equalize(x)),
      "Invert": PolicyOp("Invert", no_param, colour_fn=lambda x, s: colour.invert(x)),
      "Rotate": PolicyOp("Rotate", _constant(arg["Rotate"]), True,
                         matrix_fn=geometry.rotation_matrix_degrees),
      "Posterize": PolicyOp("Posterize", _constant(arg["Posterize"]), colour_fn=posterize),
      "Solarize": PolicyOp("Solarize", _constant(arg["Solarize"]), colour_fn=solarize),
      "Color": PolicyOp("Color", _constant(arg["Color"]), colour_fn=adjust_color),
      "Contrast": PolicyOp("Contrast", _constant(arg["Contrast"]), colour_fn=adjust_contrast),
      "Brightness": PolicyOp("Brightness", _constant(arg["Brightness"]),
                             colour_fn=adjust_brightness),
      "Sharpness": PolicyOp("Sharpness", _constant(arg["Sharpness"]), colour_fn=adjust_sharpness),
      "ShearX": PolicyOp("ShearX", _constant(arg["ShearX"]), True,
                         matrix_fn=lambda s, hw: shear_x_matrix(s)),
      "ShearY": PolicyOp("ShearY", _constant(arg["ShearY"]), True,
                         matrix_fn=lambda s, hw: shear_y_matrix(s)),
      "TranslateX": PolicyOp("TranslateX", _constant(arg["TranslateX"]), True,
                             matrix_fn=lambda t, hw: translate_matrix(t, 0)),
      "TranslateY": PolicyOp("TranslateY", _constant(arg["TranslateY"]), True,
                             matrix_fn=lambda t, hw: translate_matrix(t, 1)),
      "SolarizeAdd": PolicyOp("SolarizeAdd", _constant(arg["SolarizeAdd"]),
                              colour_fn=solarize_add),
      "Cutout": PolicyOp("Cutout", lambda fraction, hw: fraction,
                         colour_fn=lambda x, u: cutout_at(x, u, pad_size)),
  }
  return [ops[name] for name in TF_RANDAUGMENT_OPS]


def draw_layers(key: jax.Array, batch_size: int, num_layers: int, num_ops: int) -> list[Layer]:
  """Per image and layer: the op (uniform over num_ops), Cutout's placement draw (in the
  `fraction` field) and the sign of the signed ops (+1 or -1 with probability 1/2)."""
  layers = []
  for layer_key in jax.random.split(key, num_layers):
    op_key, place_key, sign_key = jax.random.split(layer_key, 3)
    op_index = jax.random.randint(op_key, (batch_size,), 0, num_ops)
    placement = jax.random.uniform(place_key, (batch_size,), jnp.float32)
    sign = jnp.where(jax.random.bernoulli(sign_key, 0.5, (batch_size,)), 1.0, -1.0)
    layers.append(Layer(op_index, placement, sign))
  return layers


def randaugment_tf(num_layers: int = 2,
                   magnitude: float = 27.0,
                   translate_const: float = 100.0,
                   cutout_const: float = 40.0,
                   cutout_op: bool = True,
                   strategy: str = "auto") -> BatchOp:
  """RandAugment with the official Noisy Student semantics (see the module docstring).

  num_layers ops per image, each drawn uniformly from TF_RANDAUGMENT_OPS (without Cutout when
  cutout_op is False, the reference's `--cutout_op=false`) and applied at `magnitude` (any
  level >= 0; the scale's maximum is 10). Defaults: the reference's ImageNet path (translate
  100 px, cutout half-size 40 px at level 10) with its flags' 2 layers at magnitude 27; its
  32 px path uses translate_const = cutout_const = 4. Images are truncated to whole numbers in
  [0, 255] first (the reference's uint8 cast) and stay whole numbers.
  strategy: 'map', 'batched' or 'auto', as `policies.randaugment`.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  if num_layers < 0 or magnitude < 0 or translate_const < 0 or cutout_const < 0:
    raise ValueError(f"randaugment_tf: need num_layers, magnitude, translate_const and "
                     f"cutout_const >= 0; got {num_layers}, {magnitude}, {translate_const}, "
                     f"{cutout_const}")
  space = op_space(magnitude, translate_const, cutout_const)
  if not cutout_op:
    space = space[:-1]
  probabilities = [1.0 / len(space)] * len(space)

  def apply(key, images, labels):
    images = _to_uint8(images)
    if num_layers == 0:
      return images, labels
    layers = draw_layers(key, images.shape[0], num_layers, len(space))
    return run_policy(images, layers, space, strategy, GREY, "nearest", probabilities), labels

  return BatchOp("randaugment_tf", apply)


# name -> factory, for the spec language (see spec.py).
OPS = {"randaugment_tf": randaugment_tf}
