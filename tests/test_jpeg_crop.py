"""The C crop decoder and box resize (data.jpeg_crop) on generated JPEGs: its resize equals
Pillow's within two levels, crop decoding equals Pillow's full decode within stated bounds at
every DCT scale, damaged data raises, CMYK is declined, and data.jpeg_preprocess falls back to
Pillow when the library is missing."""

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from effcv_jax.data import jpeg_crop
from effcv_jax.data import jpeg_preprocess as fast
from tests.conftest import missing



@pytest.fixture(autouse=True)
def _needs_the_library():
  """Every test here needs the compiled decoder (gcc and libjpeg-turbo's headers)."""
  if not jpeg_crop.available():
    missing("libjpeg", jpeg_crop.unavailable_reason())


def _photo_like(height: int, width: int, seed: int) -> np.ndarray:
  """uint8 (height, width, 3): smooth colour gradients, a few hard-edged shapes and noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  channels = [127 + 100 * np.sin(2 * np.pi * (f1 * x + f2 * y) + phase)
              for f1, f2, phase in rng.uniform(0.3, 3.0, (3, 3))]
  image = np.stack(channels, -1)
  for _ in range(6):
    top, left = rng.integers(0, height - 20), rng.integers(0, width - 20)
    image[top:top + rng.integers(10, 80), left:left + rng.integers(10, 80)] = rng.uniform(
        0, 255, 3)
  image += rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image: Image.Image, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", **options)
  return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_equals_pillows_within_two_levels(channels):
  """On photo-like images (gradients, shapes, noise in 20..235: neither pass leaves 0..255,
  where the order of the passes would matter), random fractional boxes, up and down."""
  rng = np.random.default_rng(channels)
  for index in range(12):
    height, width = (int(v) for v in rng.integers(24, 300, 2))
    image = (20 + _photo_like(height, width, index) * (215 / 255)).astype(np.uint8)
    image = image[..., 0] if channels == 1 else image
    left, top = rng.uniform(0, width / 4), rng.uniform(0, height / 4)
    box = (left, top, rng.uniform(left + 2, width), rng.uniform(top + 2, height))
    out_h, out_w = (int(v) for v in rng.integers(4, 260, 2))   # up- and downsampling
    pillow = np.asarray(Image.fromarray(image).resize((out_w, out_h),
                                                      Image.Resampling.BICUBIC, box=box))
    ours = jpeg_crop.resize_bicubic(image, box, (out_h, out_w))
    assert ours.shape == pillow.shape
    difference = np.abs(ours.astype(int) - pillow)
    assert difference.max() <= 2 and difference.mean() < 0.3, (image.shape, box, (out_h, out_w))


@pytest.mark.parametrize("subsampling, mode", [(2, "RGB"), (0, "RGB"), (0, "L")])
@pytest.mark.parametrize("scale_num", [8, 4, 2, 1])
def test_crop_decoding_equals_a_full_decode_within_stated_bounds(subsampling, mode, scale_num):
  """Against Pillow's decode of the whole image at the same DCT scale (draft), then Pillow's
  resize of the same box: mean absolute difference < 0.5 levels per crop, 99.9 % of the
  pixels within 6 (partial decoding changes only pixels next to the decoded region's edges)."""
  photo = Image.fromarray(_photo_like(360, 480, scale_num)).convert(mode)
  data = _jpeg(photo, quality=90, subsampling=subsampling)
  assert jpeg_crop.is_jpeg(data) and jpeg_crop.jpeg_info(data) == (480, 360, True)
  rng = np.random.default_rng(0)
  for _ in range(6):
    left, top = rng.uniform(0, 200), rng.uniform(0, 150)
    box = (left, top, left + rng.uniform(40, 480 - left), top + rng.uniform(40, 360 - top))
    ours = jpeg_crop.crop_resize(data, box, scale_num, (56, 64))
    full = Image.open(io.BytesIO(data))
    full.draft("RGB", (480 * scale_num // 8, 360 * scale_num // 8))
    full = full.convert("RGB")
    sx, sy = full.size[0] / 480, full.size[1] / 360
    scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    pillow = np.asarray(full.resize((64, 56), Image.Resampling.BICUBIC, box=scaled))
    difference = np.abs(ours.astype(int) - pillow)
    assert ours.shape == (56, 64, 3) and ours.dtype == np.uint8
    assert difference.mean() < 0.5 and np.percentile(difference, 99.9) <= 6, (
        box, difference.mean(), difference.max())


def test_a_flipped_crop_is_the_mirror_image_and_contiguous():
  data = _jpeg(Image.fromarray(_photo_like(200, 240, 4)), quality=90)
  box = (13.5, 20.25, 201.0, 180.75)
  plain = jpeg_crop.crop_resize(data, box, 8, (40, 48))
  flipped = jpeg_crop.crop_resize(data, box, 8, (40, 48), flip=True)
  np.testing.assert_array_equal(flipped, plain[:, ::-1])
  assert flipped.flags.c_contiguous


def test_damaged_data_raises_and_cmyk_is_declined():
  data = _jpeg(Image.fromarray(_photo_like(200, 240, 1)), quality=90)
  whole = (0, 0, 240, 200)
  with pytest.raises(ValueError, match="Premature end"):
    jpeg_crop.crop_resize(data[:len(data) // 2], whole, 8, (32, 32))
  with pytest.raises(ValueError, match="JPEG"):
    jpeg_crop.crop_resize(b"\xff\xd8 not a jpeg at all", whole, 8, (32, 32))
  with pytest.raises(ValueError, match="scale_num"):
    jpeg_crop.crop_resize(data, whole, 9, (32, 32))
  cmyk = _jpeg(Image.new("CMYK", (64, 48), (10, 200, 30, 0)))
  assert jpeg_crop.jpeg_info(cmyk) == (64, 48, False)
  assert jpeg_crop.crop_resize(cmyk, (0, 0, 64, 48), 8, (16, 16)) is None
  assert not jpeg_crop.is_jpeg(b"\x89PNG\r\n")


def test_preprocessing_falls_back_to_pillow_without_the_library(monkeypatch):
  data = _jpeg(Image.fromarray(_photo_like(300, 400, 2)), quality=90)
  record = {"image": data, "label": 0}
  pillow = fast.preprocess_for_train(record, 96, np.random.default_rng(3), "pillow")
  monkeypatch.setattr(jpeg_crop, "available", lambda: False)
  fallback = fast.preprocess_for_train(record, 96, np.random.default_rng(3))
  np.testing.assert_array_equal(fallback, pillow)
  with pytest.raises(ValueError, match="decoder must be one of"):
    fast.preprocess_for_eval(record, 96, "turbo")


def test_a_failed_build_names_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setenv("CC", "false")
  with pytest.raises(RuntimeError, match="libjpeg-turbo's headers"):
    jpeg_crop._build(pathlib.Path(tmp_path) / "jpeg_crop.so")
  assert not list(tmp_path.iterdir())
