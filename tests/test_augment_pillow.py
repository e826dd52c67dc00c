"""Colour, lookup-table and geometric ops against Pillow's own implementations, on real images.

Images: 16 CIFAR-10 training images from the local data directory ($EFFCV_DATA_DIR), else 16
tiles of the photo-like logo that dm-pix ships. Tolerances (values in [0, 255]): lookup-table
and colour ops within 1 (Pillow truncates its float results); hue within a per-pixel bound that
follows from Pillow's 8-bit hue and saturation (`_pillow_hue_error_bound`); geometric ops within
2 on at least 99 % of the pixels at least 2 pixels from the border.
"""

import os
import pathlib

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageChops, ImageEnhance, ImageOps

from effcv_jax import augment
from effcv_jax.augment import colour, geometry
from tests.conftest import is_required, missing

NUM_IMAGES = 16
LUT_TOLERANCE = 1.0 + 1e-3


def _real_images() -> np.ndarray:
  """uint8 (16, 32, 32, 3): CIFAR-10 images if available, else tiles of a packaged image."""
  data_dir = os.environ.get("EFFCV_DATA_DIR")
  cifar = pathlib.Path(data_dir or ".") / "cifar10_train.npz"
  if data_dir and cifar.exists():
    from effcv_jax.data import sources  # the project's own loading path
    images, _ = sources.load_arrays(f"npz:{cifar}", "train")
    return np.ascontiguousarray(images[:NUM_IMAGES])
  if is_required("data"):
    missing("data", "cifar10_train.npz not found: the Pillow comparisons would run on the "
            "fallback images only")
  logo = Image.open(pathlib.Path(dm_pix.__file__).parent / "images" / "pix_logo.png").convert("RGB")
  logo = np.asarray(logo.resize((128, 128), Image.BILINEAR))
  return np.stack([logo[y:y + 32, x:x + 32] for y in range(0, 128, 32) for x in range(0, 128, 32)])


@pytest.fixture(scope="module")
def images_uint8():
  return _real_images()


@pytest.fixture(scope="module")
def images(images_uint8):
  return jnp.asarray(images_uint8, jnp.float32)


def pillow(images_uint8, fn) -> np.ndarray:
  """Applies a PIL.Image -> PIL.Image function to each image: float32 (B, H, W, C)."""
  return np.stack([np.asarray(fn(Image.fromarray(image))) for image in images_uint8
                  ]).astype(np.float32)


def assert_lut_close(ours, reference):
  difference = np.abs(np.asarray(ours, np.float32) - reference)
  assert difference.max() <= LUT_TOLERANCE, f"max difference {difference.max()}"


def assert_geometry_close(ours, reference, border=2, tolerance=2.0, fraction=0.99):
  difference = np.abs(np.asarray(ours, np.float32) - reference)[:, border:-border, border:-border]
  close = (difference <= tolerance).all(-1).mean()
  assert close >= fraction, f"only {close:.4f} of pixels agree within {tolerance}"


# --------------------------------------------------------------------------------------------
# Colour and lookup-table ops.
# --------------------------------------------------------------------------------------------

ENHANCERS = {
    "brightness": (colour.adjust_brightness, ImageEnhance.Brightness),
    "contrast": (colour.adjust_contrast, ImageEnhance.Contrast),
    "saturation": (colour.adjust_saturation, ImageEnhance.Color),
    "sharpness": (colour.adjust_sharpness, ImageEnhance.Sharpness),
}


@pytest.mark.parametrize("name", sorted(ENHANCERS))
@pytest.mark.parametrize("factor", [0.1, 0.6, 1.9])
def test_enhancements_match_image_enhance(images, images_uint8, name, factor):
  ours_fn, enhancer = ENHANCERS[name]
  reference = pillow(images_uint8, lambda image: enhancer(image).enhance(factor))
  assert_lut_close(ours_fn(images, factor), reference)
  # The spec op with a fixed factor gives the same result.
  spec_out, _ = augment.build(f"{name}(factor={factor})")(jax.random.key(0), images,
                                                          jnp.zeros((NUM_IMAGES, 1)))
  assert_lut_close(spec_out, reference)


@pytest.mark.parametrize("delta", [100, -60])
def test_additive_brightness_is_clipped_add(images, images_uint8, delta):
  constant = Image.new("RGB", (32, 32), (abs(delta),) * 3)
  combine = ImageChops.add if delta > 0 else ImageChops.subtract
  reference = pillow(images_uint8, lambda image: combine(image, constant))
  assert_lut_close(colour.add_brightness(images, delta), reference)
  out, _ = augment.build(f"brightness_add(delta=({delta}, {delta}))")(jax.random.key(0), images,
                                                                      None)
  assert_lut_close(out, reference)


LUT_OPS = [
    ("invert", lambda x: colour.invert(x), ImageOps.invert),
    ("solarize_100", lambda x: colour.solarize(x, 100), lambda im: ImageOps.solarize(im, 100)),
    ("solarize_200", lambda x: colour.solarize(x, 200), lambda im: ImageOps.solarize(im, 200)),
    ("posterize_1", lambda x: colour.posterize(x, 1), lambda im: ImageOps.posterize(im, 1)),
    ("posterize_4", lambda x: colour.posterize(x, 4), lambda im: ImageOps.posterize(im, 4)),
    ("posterize_7", lambda x: colour.posterize(x, 7), lambda im: ImageOps.posterize(im, 7)),
    ("equalize", colour.equalize, ImageOps.equalize),
    ("autocontrast", colour.autocontrast, ImageOps.autocontrast),
    ("grayscale", colour.grayscale, lambda im: im.convert("L").convert("RGB")),
    ("gamma_0.6", lambda x: colour.adjust_gamma(x, 0.6), lambda im: im.point(lambda v: 255 *
                                                                             (v / 255)**0.6)),
    ("gamma_1.8", lambda x: colour.adjust_gamma(x, 1.8), lambda im: im.point(lambda v: 255 *
                                                                             (v / 255)**1.8)),
]


@pytest.mark.parametrize("name, ours_fn, pillow_fn", LUT_OPS, ids=[op[0] for op in LUT_OPS])
def test_lookup_table_ops_match_image_ops(images, images_uint8, name, ours_fn, pillow_fn):
  assert_lut_close(ours_fn(images), pillow(images_uint8, pillow_fn))


def test_solarize_add_matches_its_lookup_table(images, images_uint8):
  table = np.array([min(v + 40, 255) if v < 128 else v for v in range(256)])
  assert_lut_close(colour.solarize_add(images, 40, 128), table[images_uint8].astype(np.float32))


def test_lookup_table_ops_on_grayscale_images_match_pillow(images_uint8):
  gray = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images_uint8])
  gray_float = jnp.asarray(gray[..., None], jnp.float32)
  for ours_fn, pillow_fn in [(colour.equalize, ImageOps.equalize),
                             (colour.autocontrast, ImageOps.autocontrast),
                             (lambda x: colour.adjust_contrast(x, 0.4),
                              lambda im: ImageEnhance.Contrast(im).enhance(0.4))]:
    reference = np.stack([np.asarray(pillow_fn(Image.fromarray(g))) for g in gray
                         ]).astype(np.float32)
    assert_lut_close(ours_fn(gray_float)[..., 0], reference)
  # Colour-only ops are the identity on one channel.
  for fn in (lambda x: colour.adjust_saturation(x, 0.2), lambda x: colour.adjust_hue(x, 0.3),
             colour.grayscale):
    np.testing.assert_array_equal(fn(gray_float), gray_float)


def _pillow_hue(image: Image.Image, delta: float) -> Image.Image:
  """torchvision's Pillow hue shift: add delta * 255 to the uint8 hue plane (wrapping)."""
  hue, saturation, value = image.convert("HSV").split()
  shifted = (np.asarray(hue).astype(np.int32) + int(round(delta * 255))) % 256
  return Image.merge(
      "HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), saturation, value)).convert("RGB")


def _pillow_hue_error_bound(images_uint8: np.ndarray, delta: float) -> np.ndarray:
  """Largest difference, per pixel, between an exact hue rotation and `_pillow_hue`: (B, H, W).

  Pillow's HSV image holds hue and saturation as truncated 8-bit fractions, so its result is an
  exact rotation of a slightly different colour. Hue, in turns, is off by up to 1/255 (truncation)
  plus the rounding of the shift to a whole 1/255 step, plus 1/255 more where the shifted value
  wraps around 256 instead of 255. An RGB channel moves by at most 6 * chroma per turn of hue
  (chroma = max - min of the pixel, which a rotation keeps). Saturation is off by up to 1/255,
  which moves a channel by up to value/255; Pillow rounds each channel back to an integer (0.5).
  """
  pixels = images_uint8.astype(np.float64)
  value, chroma = pixels.max(-1), pixels.max(-1) - pixels.min(-1)
  shift = int(round(delta * 255))
  pillow_hue = np.stack([np.asarray(Image.fromarray(image).convert("HSV"))[..., 0]
                         for image in images_uint8]).astype(np.int64)
  wraps = (pillow_hue + shift < 0) | (pillow_hue + shift >= 256)
  hue_error = (1.0 + abs(shift - delta * 255) + wraps) / 255
  return 6.0 * chroma * hue_error + value / 255 + 0.5


@pytest.mark.parametrize("delta", [0.2, -0.35, 0.5])
def test_hue_matches_pillow_hsv_up_to_its_8_bit_hue(images, images_uint8, delta):
  difference = np.abs(
      np.asarray(colour.adjust_hue(images, delta)) -
      pillow(images_uint8, lambda im: _pillow_hue(im, delta))).max(-1)
  bound = _pillow_hue_error_bound(images_uint8, delta) + 1e-3
  worst = np.unravel_index(np.argmax(difference / bound), bound.shape)
  assert np.all(difference <= bound), (
      f"pixel {worst} of {images_uint8[worst]} differs by {difference[worst]:.2f} > "
      f"{bound[worst]:.2f}")


def test_colour_ops_keep_range_shape_and_dtype(images):
  for name in ("brightness", "brightness_add", "contrast", "saturation", "hue", "gamma", "invert",
               "solarize", "solarize_add", "posterize(bits=(1, 8))", "equalize", "autocontrast",
               "sharpness(factor=(0, 3))", "grayscale"):
    out, _ = augment.build(name)(jax.random.key(1), images, jnp.zeros((NUM_IMAGES, 3)))
    assert out.shape == images.shape and out.dtype == jnp.float32, name
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0, name


def test_colour_op_parameters_differ_per_image(images):
  same = jnp.broadcast_to(images[:1], images.shape)
  out, _ = augment.build("brightness(factor=(0.5, 1.5))")(jax.random.key(2), same, None)
  assert len({round(float(v), 3) for v in jnp.mean(out, axis=(1, 2, 3))}) == NUM_IMAGES
  out, _ = augment.build("invert(p=0.5)")(jax.random.key(3), same, None)
  inverted = np.asarray(jnp.all(out == 255.0 - same, axis=(1, 2, 3)))
  assert 0 < inverted.sum() < NUM_IMAGES


# --------------------------------------------------------------------------------------------
# Geometric ops.
# --------------------------------------------------------------------------------------------

FILL = (10, 200, 30)


def _warp(images, matrix, interpolation="bilinear", fill=FILL, out_hw=None):
  matrices = jnp.broadcast_to(matrix, (images.shape[0], 3, 3))
  return geometry.warp_affine(images, matrices, out_hw, interpolation, "constant", fill)


RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("degrees", [17.0, -33.0, 90.0, 180.0])
def test_rotate_matches_image_rotate(images, images_uint8, interpolation, degrees):
  reference = pillow(
      images_uint8, lambda im: im.rotate(degrees, resample=RESAMPLE[interpolation], fillcolor=FILL))
  assert_geometry_close(
      _warp(images, geometry.rotation_matrix_degrees(degrees, (32, 32)), interpolation), reference)
  spec = f"rotate(degrees=({degrees}, {degrees}), interpolation='{interpolation}', fill={FILL})"
  out, _ = augment.build(spec)(jax.random.key(0), images, None)
  assert_geometry_close(out, reference)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("name, amount, pillow_data", [
    ("shear_x", 0.3, (1, 0.3, 0, 0, 1, 0)),
    ("shear_x", -0.2, (1, -0.2, 0, 0, 1, 0)),
    ("shear_y", 0.25, (1, 0, 0, 0.25, 1, 0)),
    ("translate_x", 5.5, (1, 0, -5.5, 0, 1, 0)),
    ("translate_y", -7.0, (1, 0, 0, 0, 1, 7.0)),
])
def test_shear_and_translate_match_image_transform(images, images_uint8, interpolation, name,
                                                   amount, pillow_data):
  reference = pillow(
      images_uint8, lambda im: im.transform(
          im.size, Image.AFFINE, pillow_data, RESAMPLE[interpolation], fillcolor=FILL))
  argument = "pixels" if name.startswith("translate") else "shear"
  spec = f"{name}({argument}=({amount}, {amount}), interpolation='{interpolation}', fill={FILL})"
  out, _ = augment.build(spec)(jax.random.key(0), images, None)
  assert_geometry_close(out, reference)


def test_flips_and_quarter_turns_are_exact(images, images_uint8):
  for spec, pillow_fn in [("flip_lr(p=1.0)", ImageOps.mirror), ("flip_ud(p=1.0)", ImageOps.flip),
                          ("rot90(k=1)", lambda im: im.transpose(Image.ROTATE_90)),
                          ("rot90(k=2)", lambda im: im.transpose(Image.ROTATE_180)),
                          ("rot90(k=3)", lambda im: im.transpose(Image.ROTATE_270)),
                          ("rot90(k=1)|flip_lr(p=1.0)",
                           lambda im: ImageOps.mirror(im.transpose(Image.ROTATE_90)))]:
    out, _ = augment.build(spec)(jax.random.key(0), images, None)
    np.testing.assert_array_equal(out, pillow(images_uint8, pillow_fn), err_msg=spec)


def test_rot90_of_a_non_square_image_swaps_its_sides(images_uint8):
  wide = images_uint8[:, :20, :, :]
  out, _ = augment.build("rot90(k=1)")(jax.random.key(0), jnp.asarray(wide, jnp.float32), None)
  np.testing.assert_array_equal(out, pillow(wide, lambda im: im.transpose(Image.ROTATE_90)))


def test_crops_match_image_crop_and_extent(images, images_uint8):
  out, _ = augment.build("crop(top=5, left=3, height=20, width=17)")(jax.random.key(0), images,
                                                                     None)
  np.testing.assert_array_equal(out, pillow(images_uint8, lambda im: im.crop((3, 5, 20, 25))))
  out, _ = augment.build("center_crop(size=24)")(jax.random.key(0), images, None)
  np.testing.assert_array_equal(out, images[:, 4:28, 4:28])
  out, _ = augment.build("crop(top=5, left=3, height=20, width=17, size=(32, 32))")(
      jax.random.key(0), images, None)
  reference = pillow(
      images_uint8, lambda im: im.transform((32, 32), Image.EXTENT, (3, 5, 20, 25), Image.BILINEAR))
  assert_geometry_close(out, reference)


def test_random_resized_crop_samples_boxes_inside_the_image(images):
  fn = augment.build("random_resized_crop(scale=(0.2, 0.5), size=24)")
  out, _ = fn(jax.random.key(0), images, None)
  assert out.shape == (NUM_IMAGES, 24, 24, 3)
  matrices, _ = geometry.random_resized_crop(scale=(0.2, 0.5)).sample(jax.random.key(0), 1000,
                                                                      (32, 32))
  width, height, left, top = matrices[:, 0, 0] * 32, matrices[:, 1,
                                                              1] * 32, matrices[:, 0,
                                                                                2], matrices[:, 1,
                                                                                             2]
  area = np.asarray(width * height) / 1024
  assert area.min() >= 0.2 - 1e-4 and area.max() <= 0.5 + 1e-4
  assert float(left.min()) >= 0 and float(jnp.max(left + width)) <= 32 + 1e-3
  assert float(top.min()) >= 0 and float(jnp.max(top + height)) <= 32 + 1e-3


def test_three_point_affine_maps_the_points_exactly():
  src, dst = ((3, 4), (28, 6), (10, 29)), ((5, 2), (25, 9), (6, 27))
  forward = geometry.solve_affine_from_points(src, dst)
  np.testing.assert_allclose(forward @ np.array([[x, y, 1.0] for x, y in src]).T,
                             np.array(dst).T,
                             atol=1e-9)
  # An image with three distinct dots at src shows them at dst after the warp.
  image = np.zeros((1, 32, 32, 3), np.float32)
  for value, (x, y) in zip((50.0, 150.0, 250.0), src):
    image[0, y, x] = value
  for interpolation in ("bilinear", "nearest"):
    out, _ = augment.build(f"affine(src={src}, dst={dst}, interpolation='{interpolation}')")(
        jax.random.key(0), jnp.asarray(image), None)
    for value, (x, y) in zip((50.0, 150.0, 250.0), dst):
      np.testing.assert_allclose(out[0, y, x], value, atol=1e-3)


def test_three_point_affine_matches_image_transform(images, images_uint8):
  src, dst = ((3, 4), (28, 6), (10, 29)), ((5, 2), (25, 9), (6, 27))
  inverse = geometry.three_point_matrix(src, dst)
  data = tuple(float(v) for v in inverse[:2].reshape(-1))
  reference = pillow(images_uint8,
                     lambda im: im.transform(im.size, Image.AFFINE, data, Image.BILINEAR))
  out, _ = augment.build(f"affine(src={src}, dst={dst})")(jax.random.key(0), images, None)
  assert_geometry_close(out, reference)


def test_folded_warp_equals_sequential_warps(images):
  spec = "rotate(degrees=(20, 20), interpolation='nearest')|shear_x(shear=(0.1, 0.1), interpolation='nearest')"
  folded, _ = augment.build(spec)(jax.random.key(0), images, None)
  assert augment.build(spec).stage_names == ("rotate+shear_x",)
  composed = geometry.compose(geometry.rotation_matrix_degrees(20.0, (32, 32)),
                              geometry.shear_x_matrix(0.1))
  np.testing.assert_array_equal(folded, _warp(images, composed, "nearest", 0.0))


def test_geometric_parameters_differ_per_image(images):
  same = jnp.broadcast_to(images[:1], images.shape)
  out, _ = augment.build("rotate(degrees=30)")(jax.random.key(4), same, None)
  assert len({np.asarray(image).tobytes() for image in out}) == NUM_IMAGES
