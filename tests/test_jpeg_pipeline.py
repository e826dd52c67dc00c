"""The fast host JPEG path (data.jpeg_preprocess) and grain worker processes: the official crop
boxes and flips for the same draws, RGB uint8 output from grey, CMYK and RGBA images, the pixel
difference to the official path on the ImageNet sample photos within stated bounds, clear errors
for damaged records, and the same batches and checkpoint states with 0 and 2 workers."""

import io

import numpy as np
import pytest
from PIL import Image

from configs.common import base_config
from tests.conftest import data_file, missing
from effcv_jax import config_utils, preflight
from effcv_jax.data import efficientnet_preprocess as official
from effcv_jax.data import jpeg_crop
from effcv_jax.data import jpeg_preprocess as fast
from effcv_jax.data import pipeline
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError, FileFormatError

SIZE = 224


def _encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **options)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def photos():
  """(encoded bytes, decoded uint8 (H, W, 3)) of the 20 ImageNet sample photos."""
  files = sorted(data_file("imagenet_samples").glob("imagenet_*.jpg"))
  return [(f.read_bytes(), np.asarray(Image.open(f).convert("RGB"))) for f in files]


@pytest.mark.parametrize("decoder", fast.DECODERS)
def test_boxes_and_flips_are_the_official_samplers(photos, monkeypatch, decoder):
  if decoder == "libjpeg" and not jpeg_crop.available():
    missing("libjpeg", jpeg_crop.unavailable_reason())
  decoded = []   # (box, unflipped image) of every decode
  name = "_crop_decode" if decoder == "libjpeg" else "crop_and_resize"
  original = getattr(fast, name)

  def spy(image, box, image_size, record=None, flip=False):
    decoded.append((box, original(image, box, image_size, record)))
    return decoded[-1][1][:, ::-1] if flip else decoded[-1][1]

  monkeypatch.setattr(fast, name, spy)
  for seed, (data, full) in enumerate(photos[:8]):
    rng_fast, rng_official = np.random.default_rng(seed), np.random.default_rng(seed)
    out = fast.preprocess_for_train({"image": data, "label": 0}, SIZE, rng_fast, decoder)
    box = official.train_crop_box(rng_official, full.shape[0], full.shape[1], SIZE)
    flipped = rng_official.random() < 0.5
    assert len(decoded) == seed + 1 and decoded[-1][0] == box
    # The same draws, in the same order: both generators are left in the same state.
    assert rng_fast.bit_generator.state == rng_official.bit_generator.state
    unflipped = decoded[-1][1]
    np.testing.assert_array_equal(out, unflipped[:, ::-1] if flipped else unflipped)


def test_draft_scale_keeps_the_box_at_least_image_size():
  assert fast.draft_scale(official.CropBox(0, 0, 448, 500), 224) == 2
  assert fast.draft_scale(official.CropBox(0, 0, 447, 500), 224) == 1
  assert fast.draft_scale(official.CropBox(0, 0, 900, 1000), 224) == 4
  assert fast.draft_scale(official.CropBox(0, 0, 1800, 1792), 224) == 8
  assert fast.draft_scale(official.CropBox(0, 0, 100, 100), 224) == 1


def test_difference_to_the_official_path_is_within_the_stated_bounds(photos):
  """Stated bounds, in levels of 255, over the 20 photos: against the official path (full
  decode, crop, TF 1.x bicubic, truncation) mean absolute difference < 6 over all crops and
  < 20 for any one crop (Pillow antialiases where TF 1.x aliases; fine textures differ most);
  against Pillow's own resize of the fully decoded image, i.e. what draft mode alone changes
  (crops shrunk 4x or more, decoded at 1/2 or 1/4), < 1.5 on average and < 4 for any crop."""
  to_reference, to_full_decode = [], []
  for seed, (data, full) in enumerate(photos):
    rng = np.random.default_rng(seed)
    out = fast.preprocess_for_train({"image": data, "label": 0}, SIZE, rng)
    reference = official.to_uint8(official.preprocess_for_train(full, SIZE,
                                                                np.random.default_rng(seed)))
    to_reference.append(np.abs(out.astype(np.float64) - reference).mean())
    evaluated = fast.preprocess_for_eval({"image": data}, SIZE)
    reference = np.clip(np.rint(official.preprocess_for_eval(full, SIZE)), 0, 255)
    to_reference.append(np.abs(evaluated - reference).mean())
    size = 112   # eval crop of 448 px (512 px photos): scale 1/2 or 1/4 (the 1024 px photo)
    box = official.center_crop_box(full.shape[0], full.shape[1], size)
    assert fast.draft_scale(box, size) >= 2
    drafted = fast.crop_and_resize(Image.open(io.BytesIO(data)), box, size)
    plain = Image.fromarray(full).resize(
        (size, size), Image.Resampling.BICUBIC,
        box=(box.left, box.top, box.left + box.width, box.top + box.height))
    to_full_decode.append(np.abs(drafted - np.asarray(plain, np.float64)).mean())
  assert np.mean(to_reference) < 6 and np.max(to_reference) < 20, to_reference
  assert np.mean(to_full_decode) < 1.5 and np.max(to_full_decode) < 4, to_full_decode


def test_crop_decoding_changes_a_fraction_of_a_level_against_pillow(photos):
  """Stated bounds, levels of 255, the same boxes: the C crop decoder against Pillow's full
  decode (decoder 'pillow') on the 20 photos, 5 training crops and the eval crop each: mean
  absolute difference < 0.15 over all crops and < 0.5 for any one; 99.9 % of the pixels of
  every crop within 6 (the few that differ more sit next to the decoded region's edges)."""
  if not jpeg_crop.available():
    missing("libjpeg", jpeg_crop.unavailable_reason())
  means, tails = [], []
  for seed, (data, _) in enumerate(photos):
    record = {"image": data, "label": 0}
    pairs = [(fast.preprocess_for_train(record, SIZE, np.random.default_rng(10 * seed + k)),
              fast.preprocess_for_train(record, SIZE, np.random.default_rng(10 * seed + k),
                                        "pillow")) for k in range(5)]
    pairs.append((fast.preprocess_for_eval(record, SIZE),
                  fast.preprocess_for_eval(record, SIZE, "pillow")))
    for ours, pillow in pairs:
      difference = np.abs(ours.astype(np.int64) - pillow)
      means.append(difference.mean())
      tails.append(np.percentile(difference, 99.9))
  assert np.mean(means) < 0.15 and np.max(means) < 0.5, means
  assert np.max(tails) <= 6, tails


@pytest.mark.parametrize("mode, colour", [("L", 90), ("CMYK", (10, 200, 30, 0)),
                                          ("RGBA", (200, 40, 90, 128))])
def test_grey_cmyk_and_rgba_images_become_rgb(mode, colour):
  image = Image.new(mode, (300, 200), colour)
  data = _encode(image, "PNG") if mode == "RGBA" else _encode(image, quality=95)
  expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[0, 0]
  if mode == "RGBA":
    np.testing.assert_array_equal(expected, (200, 40, 90))   # alpha dropped, not blended
  record = {"image": data, "label": np.int32(3)}
  train = fast.train_record_map(64)(record, np.random.default_rng(0))
  evaluated = fast.DecodedCenterCrop([record], 64)[0]
  for out in (train["image"], evaluated["image"]):
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).max() <= 2
  assert train["label"] == 3 and evaluated["label"] == 3


def test_decoded_arrays_take_the_same_crop_without_a_draft(photos):
  data, full = photos[0]
  from_bytes = fast.preprocess_for_eval({"image": data}, 64)
  from_array = fast.preprocess_for_eval({"image": full}, 64)
  assert from_array.shape == (64, 64, 3)
  # 448 px eval crop: the bytes are decoded at 1/4 (draft), the array resized whole; the
  # draft's block averages move a pixel by about 2 levels on average (< 3 stated).
  difference = float(np.abs(from_bytes.astype(int) - from_array).mean())
  assert 0 < difference < 3, difference


def test_damaged_records_raise_an_error_naming_the_record(photos):
  data = photos[3][0]
  truncated = {"image": data[:len(data) // 3], "label": np.int32(7),
               "file_name": b"n01440764_10026.JPEG"}
  with pytest.raises(FileFormatError, match=r"record 'n01440764_10026.JPEG': its JPEG could "
                     r"not be decoded .*truncated"):
    fast.train_record_map(SIZE)(truncated, np.random.default_rng(0))
  unnamed = {"image": data[:len(data) // 3], "label": np.int32(7)}
  with pytest.raises(FileFormatError, match=r"record \(label 7, \d+ bytes, sha1 [0-9a-f]{12}"):
    fast.preprocess_for_eval(unnamed, SIZE)
  with pytest.raises(FileFormatError, match=r"record \(label 1, 9 bytes, .*not a readable"):
    fast.preprocess_for_eval({"image": b"not a jpg", "label": 1}, SIZE)


def test_a_file_name_key_is_dropped_from_the_output():
  record = {"image": _encode(Image.new("RGB", (80, 60), (1, 2, 3))), "label": np.int32(0),
            "file_name": b"x.JPEG"}
  assert set(fast.train_record_map(32)(record, np.random.default_rng(1))) == {"image", "label"}
  assert set(fast.DecodedCenterCrop([record], 32)[0]) == {"image", "label"}


class _Records:
  """Encoded photos as a source of records {'image': bytes, 'label': int32}."""

  def __init__(self, encoded):
    self.encoded = encoded

  def __len__(self):
    return len(self.encoded)

  def __getitem__(self, index):
    return {"image": self.encoded[index], "label": np.int32(index)}


def test_worker_processes_give_the_same_batches_and_states(photos):
  # Small re-encoded photos keep the workers' start the main cost.
  encoded = [_encode(Image.fromarray(full).resize((96, 72)), quality=90)
             for _, full in photos[:12]]
  source, record_map = _Records(encoded), fast.train_record_map(32)
  in_process = pipeline.train_iterator(source, 4, seed=5, process_index=0, process_count=1,
                                       record_map=record_map)
  expected = [next(in_process) for _ in range(5)]
  workers = pipeline.train_iterator(source, 4, seed=5, process_index=0, process_count=1,
                                    record_map=record_map, num_workers=2)
  try:
    got = [next(workers) for _ in range(4)]
    state = workers.get_state()
    assert state == {"next_index": 4}
    for batch, want in zip(got, expected):
      assert set(batch) == {"image", "label"} and batch["image"].shape == (4, 32, 32, 3)
      np.testing.assert_array_equal(batch["image"], want["image"])
      np.testing.assert_array_equal(batch["label"], want["label"])
    # A state saved with workers restores in-process and the reverse (the same format).
    resumed = pipeline.train_iterator(source, 4, seed=5, process_index=0, process_count=1,
                                      record_map=record_map)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected[4]["image"])
    workers.set_state({"next_index": 1})
    np.testing.assert_array_equal(next(workers)["image"], expected[1]["image"])
  finally:
    workers.close()
  with pytest.raises(ValueError, match="num_workers = -1"):
    pipeline.train_iterator(source, 4, seed=5, process_index=0, process_count=1,
                            num_workers=-1)


def test_a_config_selects_the_fast_pair_and_the_worker_count():
  config = config_utils.with_overrides(base_config(), dict(
      dataset="npz:cifar10_train.npz", image_size=SIZE, host_preprocessing="efficientnet_fast",
      data_workers=2))
  preflight.check_config(config)
  assert isinstance(run_data_lib.train_record_map(config), fast.TrainRecordMap)
  assert isinstance(run_data_lib.as_evaluated(config, [{}]), fast.DecodedCenterCrop)
  with pytest.raises(ConfigError, match=r"config.data_workers = -1"):
    preflight.check_config(config_utils.with_overrides(config, dict(data_workers=-1)))
