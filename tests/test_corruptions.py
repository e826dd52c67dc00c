"""The corruptions of effcv_jax/robustness/corruptions.py and the corruption error metrics.

Checked: every corruption x severity is deterministic per (seed, corruption, severity,
image index), keeps shape and range; PSNR falls with severity; JPEG equals Pillow's encode
and decode; the resampling operators equal Pillow's and scipy's; CE, mCE and relative mCE
equal hand-worked numbers. With the `imagecorruptions` package importable, the corruptions
are compared with it (skipped otherwise; it is not in requirements-dev.txt).
"""

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from effcv_jax.robustness import corruption_metrics, corruption_reference
from effcv_jax.robustness import corruptions as C
from tests.conftest import import_or_skip, missing

SIZE = 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
  """Four uint8 (32, 32, 3) photographs: 320 px crops of scikit-learn's two sample
  photographs, box-downscaled like CIFAR-10's images."""
  out = []
  for name in ("china.jpg", "flower.jpg"):
    photo = load_sample_image(name)
    for top, left in ((0, 0), (100, 300)):
      crop = Image.fromarray(photo[top:top + 320, left:left + 320])
      out.append(np.asarray(crop.resize((SIZE, SIZE), Image.BOX)))
  return np.stack(out)


@pytest.fixture(scope="module")
def corrupted(images) -> dict:
  """Every corruption x severity of `images` (seed 0, 'cifar' constants)."""
  return {(c, s): np.asarray(C.corrupt(images, c, s, seed=0))
          for c in C.CORRUPTIONS for s in C.SEVERITIES}


RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform"}


def test_every_corruption_and_severity_keeps_shape_range_and_repeats(images, corrupted):
  reversed_indices = np.arange(len(images))[::-1]
  for (name, severity), out in corrupted.items():
    assert out.shape == images.shape and out.dtype == np.float32, name
    assert out.min() >= 0 and out.max() <= 255, (name, severity)
    again = np.asarray(C.corrupt(images, name, severity, seed=0))
    np.testing.assert_array_equal(again, out, err_msg=f"{name} {severity}")
    # An image's corruption depends on its index, not on the batch around it.
    shuffled = np.asarray(C.corrupt(images[::-1], name, severity, seed=0,
                                    indices=reversed_indices))
    np.testing.assert_array_equal(shuffled, out[::-1], err_msg=f"{name} {severity}")
    other_seed = np.asarray(C.corrupt(images, name, severity, seed=1))
    if name in RANDOM and not (name == "elastic_transform" and severity == 1):
      assert not np.array_equal(other_seed, out), (name, severity)
    elif name not in RANDOM:
      np.testing.assert_array_equal(other_seed, out)
    # Float input in [0, 255] gives the same images as uint8.
  np.testing.assert_array_equal(np.asarray(C.corrupt(images.astype(np.float32), "fog", 2)),
                                corrupted["fog", 2])


# With the published CIFAR-10-C constants, three corruptions do not lose PSNR at every step:
# frost's image weight falls from 0.9 to 0.85 at an unchanged frost weight from severity 3
# to 4 (the image gets closer to the clean one where the frost is darker than it),
# glass_blur alternates between more blur (sigma 0.05, 0.25, 0.4) and a second shuffling
# pass at a smaller sigma (0.25, 0.4), and elastic_transform's random affine shrinks from
# 2.56 to 0.96 px of jitter while its elastic part grows, the affine dominating PSNR.
NOT_MONOTONE_IN_PSNR = {"frost", "glass_blur", "elastic_transform"}


def test_psnr_falls_with_severity(images, corrupted):
  for name in C.CORRUPTIONS:
    psnr = [float(np.mean(C.psnr(corrupted[name, s], images))) for s in C.SEVERITIES]
    assert all(np.isfinite(psnr)), name
    if name in NOT_MONOTONE_IN_PSNR:
      continue
    assert all(a > b for a, b in zip(psnr, psnr[1:])), (name, psnr)
  for name in ("frost", "glass_blur"):
    assert (np.mean(C.psnr(corrupted[name, 5], images))
            < np.mean(C.psnr(corrupted[name, 1], images)) - 1), name


def test_constants_follow_the_image_size():
  assert C.constants_name(None, 32, 32) == "cifar"
  assert C.constants_name(None, 28, 28) == "cifar"
  assert C.constants_name(None, 224, 224) == "imagenet"
  assert C.constants_name("imagenet", 32, 32) == "imagenet"
  with pytest.raises(ValueError, match="choose among"):
    C.constants_name("svhn", 32, 32)
  for table in C.CONSTANTS.values():
    assert all(len(table[c]) == 5 for c in C.CORRUPTIONS)
  assert C.CONSTANTS["cifar"]["jpeg_compression"] == (80, 65, 58, 50, 40)
  assert C.CONSTANTS["imagenet"]["jpeg_compression"] == (25, 18, 15, 10, 7)
  with pytest.raises(ValueError, match="severity"):
    C.corrupt(np.zeros((1, 32, 32, 3), np.uint8), "fog", 6)


def test_grayscale_and_other_sizes(images):
  gray = images[..., :1]
  for name in ("snow", "frost", "jpeg_compression"):
    out = np.asarray(C.corrupt(gray[:2, :28, :28], name, 3))
    assert out.shape == (2, 28, 28, 1) and 0 <= out.min() and out.max() <= 255, name


# --------------------------------------------------------------------------
# JPEG against Pillow.

def _pillow_jpeg(image: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
  buffer = io.BytesIO()
  Image.fromarray(image.squeeze()).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    return np.asarray(decoded).reshape(image.shape)


@pytest.mark.parametrize("quality", [80, 40, 7])
def test_jpeg_equals_pillow_encode_and_decode(images, quality):
  """libjpeg's integer DCT, quantisation, colour conversion and (4:2:0) downsampling and
  fancy upsampling reproduced: every pixel equal to Pillow's (bound: 1 level)."""
  for subsampling, name in ((0, "4:4:4"), (2, "4:2:0")):
    reference = np.stack([_pillow_jpeg(i, quality, subsampling) for i in images])
    ours = np.asarray(C.jpeg(images, quality, name))
    assert np.abs(ours - reference).max() <= 1, name
    assert np.mean(ours == reference) > 0.999, name
  gray = images[..., :1]
  reference = np.stack([_pillow_jpeg(i, quality, 0) for i in gray])
  assert np.abs(np.asarray(C.jpeg(gray, quality, "4:4:4")) - reference).max() <= 1
  # The corruption is Pillow's default (4:2:0) at the table's quality.
  severity = C.CONSTANTS["cifar"]["jpeg_compression"].index(quality) + 1 if quality in (
      80, 40) else None
  if severity:
    reference = np.stack([_pillow_jpeg(i, quality, -1) for i in images])
    corrupted = np.asarray(C.corrupt(images, "jpeg_compression", severity))
    assert np.abs(corrupted - reference).max() <= 1


def test_jpeg_tables_are_pillows():
  buffer = io.BytesIO()
  Image.new("RGB", (16, 16)).save(buffer, "JPEG", quality=7)
  with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
    tables = decoded.quantization
  np.testing.assert_array_equal(np.reshape(tables[0], (8, 8)),
                                C.jpeg_quality_table(C.JPEG_LUMINANCE, 7))
  np.testing.assert_array_equal(np.reshape(tables[1], (8, 8)),
                                C.jpeg_quality_table(C.JPEG_CHROMINANCE, 7))
  # libjpeg's scaling by hand: quality 80 -> 200 - 160 = 40 %, (16 * 40 + 50) // 100 = 6.
  assert C.jpeg_quality_table(C.JPEG_LUMINANCE, 80)[0, 0] == 6
  assert C.jpeg_quality_table(C.JPEG_LUMINANCE, 100).max() == 1


# --------------------------------------------------------------------------
# Pieces against Pillow, scipy and hand-worked values.

def test_pixelate_equals_pillow_box_down_and_up(images):
  for severity, factor in zip(C.SEVERITIES, C.CONSTANTS["cifar"]["pixelate"]):
    small = int(SIZE * factor)
    reference = np.stack([np.asarray(Image.fromarray(i).resize((small, small), Image.BOX)
                                     .resize((SIZE, SIZE), Image.BOX)) for i in images])
    ours = np.asarray(C.corrupt(images, "pixelate", severity))
    assert np.abs(ours - reference).max() <= 1, severity


def test_resampling_matrices_equal_scipy():
  ndimage = import_or_skip("scipy.ndimage", "scipy")
  rng = np.random.default_rng(1)
  signal = rng.uniform(size=20)
  for mode in ("nearest", "reflect"):
    for sigma in (0.4, 1.5, 7.0):
      np.testing.assert_allclose(C.gaussian_matrix(20, sigma, 3.0, mode) @ signal,
                                 ndimage.gaussian_filter1d(signal, sigma, mode=mode,
                                                           truncate=3.0), atol=1e-6)
  image = rng.uniform(size=(32, 32))
  for factor in (1.06, 1.25, 2.25):
    crop = int(np.ceil(32 / factor))
    top = (32 - crop) // 2
    zoomed = ndimage.zoom(image[top:top + crop, top:top + crop], factor, order=1)
    trim = (zoomed.shape[0] - 32) // 2
    matrix = C.clipped_zoom_matrix(32, factor)
    np.testing.assert_allclose(matrix @ image @ matrix.T,
                               zoomed[trim:trim + 32, trim:trim + 32], atol=1e-5)


def test_defocus_kernel_and_filter_by_hand(images):
  # Radius 0.3: the disk is the centre pixel alone, blurred by the 3x3 Gaussian (sigma 0.4).
  kernel = C.disk_kernel(0.3, 0.4)
  side = np.exp(-1 / (2 * 0.4 ** 2))
  gauss = np.array([side, 1, side]) / (1 + 2 * side)
  expected = np.zeros((17, 17))
  expected[7:10, 7:10] = np.outer(gauss, gauss)
  np.testing.assert_allclose(kernel, expected, atol=1e-6)
  assert C.disk_kernel(10, 0.5).shape == (21, 21)
  ndimage = import_or_skip("scipy.ndimage", "scipy")
  reference = np.stack([ndimage.correlate(images[0, ..., ch] / 255, C.disk_kernel(1.5, 0.1),
                                          mode="mirror") for ch in range(3)], -1)
  ours = np.asarray(C.corrupt(images[:1], "defocus_blur", 5))[0]
  np.testing.assert_allclose(ours, np.clip(reference, 0, 1) * 255, atol=1e-3)


def test_brightness_and_contrast_by_hand():
  import colorsys  # pylint: disable=import-outside-toplevel
  pixels = np.array([[[[200, 100, 50], [0, 0, 0], [10, 250, 120], [255, 255, 255]]]], np.uint8)
  out = np.asarray(C.corrupt(pixels, "brightness", 3, constants="cifar"))[0, 0]
  for pixel, got in zip(pixels[0, 0] / 255, out / 255):
    h, s, v = colorsys.rgb_to_hsv(*pixel)
    np.testing.assert_allclose(got, colorsys.hsv_to_rgb(h, s, min(v + 0.15, 1)), atol=1e-6)
  image = np.array([[[[0, 0, 0], [100, 100, 100]], [[200, 200, 200], [255, 255, 255]]]],
                   np.uint8)
  mean = (0 + 100 + 200 + 255) / 4
  out = np.asarray(C.corrupt(image, "contrast", 5, constants="cifar"))[0, ..., 0]
  np.testing.assert_allclose(out, (np.array([[0, 100], [200, 255]]) - mean) * 0.15 + mean,
                             atol=1e-3)


def test_motion_blur_of_a_point_by_hand():
  point = np.zeros((9, 9), np.float32)
  point[4, 4] = 1.0
  blurred = np.asarray(C.motion_blur_image(point, 2, 1.0, 0.0))
  taps = np.exp(-np.arange(5) ** 2 / 2.0)
  taps /= taps.sum()
  # Angle 0: tap i shifts the image by -i columns, so the point spreads to its left.
  np.testing.assert_allclose(blurred[4, :5], taps[::-1], atol=1e-6)
  assert blurred[4, 5:].sum() == 0 and blurred[:4].sum() == 0


def test_elastic_without_jitter_or_displacement_is_the_identity(images):
  import jax  # pylint: disable=import-outside-toplevel
  # Severity 1 of 'cifar' has no displacement field (sigma 0, alpha 0); no jitter either.
  # pylint: disable-next=protected-access
  identity = jax.jit(lambda x: C._elastic_transform(x, jax.random.PRNGKey(0), (0.0, 0.0, 0.0),
                                                    ("cifar", 1)))
  np.testing.assert_allclose(np.asarray(identity(images[0].astype(np.float32))), images[0],
                             atol=1e-3)


def test_plasma_fractal_spans_zero_to_one():
  import jax  # pylint: disable=import-outside-toplevel
  grid = np.asarray(jax.jit(C.plasma_fractal, static_argnums=1)(jax.random.PRNGKey(3), 32, 2.0))
  assert grid.shape == (32, 32) and grid.min() == 0 and grid.max() == 1
  assert np.std(grid) > 0.05


def test_frost_reads_the_installed_photographs_or_says_procedural():
  source = C.frost_source()
  bank, sizes = C.frost_bank(0.2, 32, 32)
  assert len(sizes) == 5 and (sizes >= 32).all() and bank.dtype == np.uint8
  if C.frost_photo_dir() is None:
    assert source.startswith("procedural")
  else:
    assert "imagecorruptions" in source
    # frost2.png is 560 x 315; OpenCV's resize by 0.2 gives 112 x 63.
    assert [63, 112] in sizes.tolist()


# --------------------------------------------------------------------------
# Against the imagecorruptions package (ImageNet-C constants), where it is importable.

def _reference():
  try:
    return corruption_reference.reference_module()
  except ImportError as error:
    missing("imagecorruptions", f"imagecorruptions is not importable ({error}); it is not a "
            "requirement (it pulls in opencv-python and scikit-image): see "
            "benchmarks/corruption_reference.py")


# Deterministic in both, same formula and constants: ours equals the reference up to the
# reference's uint8 truncation and OpenCV's fixed-point filters.
SAME_PIXELS = ("defocus_blur", "zoom_blur", "brightness", "contrast", "jpeg_compression")


def test_against_imagecorruptions(images):
  reference = _reference()
  for name in SAME_PIXELS:
    for severity in (1, 3, 5):
      theirs = np.stack([reference.corrupt(i, severity, name) for i in images]).astype(float)
      ours = np.asarray(C.corrupt(images, name, severity, constants="imagenet"))
      assert np.mean(C.psnr(np.floor(ours), theirs)) > 40, (name, severity)


# --------------------------------------------------------------------------
# Corruption error metrics against hand-worked numbers.

def test_corruption_errors_by_hand():
  errors = {"fog": [0.1, 0.2, 0.3], "snow": [0.2, 0.2, 0.5]}
  baseline = {"fog": [0.2, 0.4, 0.6], "snow": [0.3, 0.3, 0.3], "blur": [0.5, 0.5, 0.5]}
  # CE_fog = 0.6 / 1.2 = 0.5; CE_snow = 0.9 / 0.9 = 1.0; mCE = 0.75.
  # Clean errors 0.05 and 0.1: relative CE_fog = (0.6 - 0.15) / (1.2 - 0.3) = 0.5,
  # relative CE_snow = (0.9 - 0.15) / (0.9 - 0.3) = 1.25; relative mCE = 0.875.
  metrics = corruption_metrics.mean_corruption_errors(errors, 0.05, baseline, 0.1, "teacher")
  assert metrics["baseline"] == "teacher" and metrics["corruptions"] == ["fog", "snow"]
  assert metrics["ce"] == pytest.approx({"fog": 0.5, "snow": 1.0})
  assert metrics["mce"] == pytest.approx(0.75)
  assert metrics["relative_ce"] == pytest.approx({"fog": 0.5, "snow": 1.25})
  assert metrics["relative_mce"] == pytest.approx(0.875)
  assert metrics["error"] == pytest.approx({"fog": 0.2, "snow": 0.3})
  assert metrics["mean_error"] == pytest.approx(0.25)
  # A model against itself: every CE and relative CE is 1.
  same = corruption_metrics.mean_corruption_errors(baseline, 0.1, baseline, 0.1, "self")
  assert same["mce"] == pytest.approx(1.0) and same["relative_mce"] == pytest.approx(1.0)
  assert corruption_metrics.relative_corruption_error([0.1], 0.1, [0.2], 0.2) == 0.0
  assert corruption_metrics.relative_corruption_error([0.2], 0.1, [0.2], 0.2) == float("inf")
  with pytest.raises(ValueError, match="severities"):
    corruption_metrics.corruption_error([0.1, 0.2], [0.1])
  with pytest.raises(ValueError, match="no corruption in common"):
    corruption_metrics.mean_corruption_errors({"fog": [0.1]}, 0, {"snow": [0.1]}, 0, "b")


def test_accuracies_to_errors_orders_severities():
  accuracy = {"fog": {"10": 0.1, "2": 0.8, "1": 0.9}}
  assert corruption_metrics.accuracies_to_errors(accuracy) == {
      "fog": pytest.approx([0.1, 0.2, 0.9])}
