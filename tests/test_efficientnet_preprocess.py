"""The official EfficientNet / Noisy Student pre-processing: crop boxes hand-worked from the
reference's formulas on images of several aspect ratios, TF 1.x bicubic resizing, the pipelines."""

import numpy as np
import pytest

from effcv_jax import data as data_lib
from effcv_jax.data import efficientnet_preprocess as prep
from effcv_jax.data.efficientnet_preprocess import CropBox


class ScriptedRandom:
  """Returns the given floats for random() and whole numbers for integers(n), in order, and
  checks each whole number is below n."""

  def __init__(self, floats, ints):
    self.floats, self.ints = list(floats), list(ints)

  def random(self):
    return self.floats.pop(0)

  def integers(self, n):
    value = self.ints.pop(0)
    assert 0 <= value < n, (value, n)
    return value

  def used_up(self):
    return not self.floats and not self.ints


# (height, width) -> side int(0.875 * min), offsets ((H - side) + 1) // 2, ((W - side) + 1) // 2.
CENTER_BOXES_224 = {
    (375, 500): CropBox(24, 86, 328, 328),  # 0.875 * 375 = 328.125
    (500, 375): CropBox(86, 24, 328, 328),
    (256, 256): CropBox(16, 16, 224, 224),
    (200, 1024): CropBox(13, 425, 175, 175),  # 0.875 * 200 = 175: (25 + 1) // 2, (849 + 1) // 2
}


@pytest.mark.parametrize("shape", sorted(CENTER_BOXES_224))
def test_eval_centre_crop_boxes_at_224(shape):
  assert prep.center_crop_box(*shape, image_size=224) == CENTER_BOXES_224[shape]


def test_eval_centre_crop_boxes_at_the_b1_b2_sizes():
  # 240 / 272 * 375 = 330.88 -> 330, offsets (45 + 1) // 2 = 23, (170 + 1) // 2 = 85.
  assert prep.center_crop_box(375, 500, 240) == CropBox(23, 85, 330, 330)
  # 260 / 292 * 375 = 333.9 -> 333, offsets (42 + 1) // 2 = 21, (167 + 1) // 2 = 84.
  assert prep.center_crop_box(375, 500, 260) == CropBox(21, 84, 333, 333)


def test_distorted_box_of_a_landscape_image():
  # 375 x 500, aspect draw 0.5: ratio 0.75 + 0.5 * (4/3 - 3/4) = 1.0416667. Areas 15000..187500:
  # heights from round(sqrt(15000 / r)) = 120 to round(sqrt(187500 / r)) = 424 -> 375 (the
  # image's height); 120 + 80 = 200, width round(200 r) = 208; top 10 of 175, left 33 of 292.
  rng = ScriptedRandom([0.5], [80, 10, 33])
  assert prep.distorted_crop_box(rng, 375, 500) == CropBox(10, 33, 200, 208)
  assert rng.used_up()


def test_distorted_box_of_a_wide_image_is_limited_by_its_height():
  # 200 x 1024, aspect draw 0.999: r = 1.33275. Heights from round(sqrt(16384 / r)) = 111 to
  # min(392, 200) = 200; 111 + 89 = 200 = the full height (so no row offset is drawn), width
  # round(200 r) = 267, left 500 of 757.
  rng = ScriptedRandom([0.999], [89, 500])
  assert prep.distorted_crop_box(rng, 200, 1024) == CropBox(0, 500, 200, 267)
  assert rng.used_up()


def test_distorted_box_of_a_portrait_image():
  # 500 x 375, aspect draw 0: r = 0.75. Heights from round(sqrt(15000 / 0.75)) = 141 to
  # round(sqrt(187500 / 0.75)) = 500, capped where round(h * 0.75) <= 375: h = 500; 141 + 259
  # = 400, width 300; top 7 of 100, left 70 of 75.
  rng = ScriptedRandom([0.0], [259, 7, 70])
  assert prep.distorted_crop_box(rng, 500, 375) == CropBox(7, 70, 400, 300)


def test_boxes_covering_less_than_a_tenth_are_rejected_and_the_fallback_is_the_centre_crop():
  # Each attempt: ratio 1.0416667, the smallest height 120, width 125: 15000 pixels = 0.08 of
  # the image, below min_object_covered 0.1: rejected, 10 times; then the eval crop.
  rng = ScriptedRandom([0.5] * 10, [0, 0, 0] * 10)
  assert prep.distorted_crop_box(rng, 375, 500) is None
  rng = ScriptedRandom([0.5] * 10, [0, 0, 0] * 10)
  assert prep.train_crop_box(rng, 375, 500, 224) == CENTER_BOXES_224[(375, 500)]
  assert rng.used_up()


def test_a_whole_image_sample_falls_back_to_the_centre_crop():
  # 256 x 256, ratio 1: heights 72..256; 72 + 184 = 256: the whole image (TF's "bad" case).
  rng = ScriptedRandom([(1.0 - 0.75) / (4 / 3 - 0.75)], [184])
  assert prep.train_crop_box(rng, 256, 256, 224) == CENTER_BOXES_224[(256, 256)]


@pytest.mark.parametrize("shape", sorted(CENTER_BOXES_224))
def test_sampled_boxes_follow_the_constraints(shape):
  rng = np.random.default_rng(0)
  height, width = shape
  fallbacks = 0
  for _ in range(200):
    box = prep.train_crop_box(rng, height, width, 224)
    if box == CENTER_BOXES_224[shape]:
      fallbacks += 1
      continue
    assert 0 <= box.top and box.top + box.height <= height
    assert 0 <= box.left and box.left + box.width <= width
    assert box.height * box.width >= 0.1 * height * width
    assert 0.75 - 1 / box.height <= box.width / box.height <= 4 / 3 + 1 / box.height
  assert fallbacks < 100


def test_resize_bicubic_tf1_hand_worked():
  # 1 x 2 -> 1 x 4: input x = out * 0.5. Keys a = -0.75: k(0.5) = 0.59375, k(1.5) = -0.09375.
  # out 1: 0.59375 * 100 - 0.09375 * 100 = 50; out 3 at 1.5 (edge repeated): 109.375.
  image = np.asarray([[0.0, 100.0]])
  out = prep.resize_bicubic_tf1(image, (1, 4))
  np.testing.assert_allclose(out, [[0.0, 50.0, 100.0, 109.375]], atol=1e-4)
  # Shrinking 4 -> 2 samples input 0 and 2 (no half-pixel offset, no antialiasing).
  np.testing.assert_allclose(prep.resize_bicubic_tf1(np.asarray([[1.0, 2.0, 3.0, 4.0]]), (1, 2)),
                             [[1.0, 3.0]], atol=1e-4)
  # A constant image stays constant; channels are resized alike.
  flat = prep.resize_bicubic_tf1(np.full((7, 5, 3), 77, np.uint8), 9)
  assert flat.shape == (9, 9, 3) and flat.dtype == np.float32
  np.testing.assert_allclose(flat, 77.0, atol=1e-3)


def test_eval_and_train_images():
  image = np.random.default_rng(1).integers(0, 256, (200, 300, 3)).astype(np.uint8)
  box = prep.center_crop_box(200, 300, 64)
  expected = prep.resize_bicubic_tf1(image[box.top:box.top + box.height,
                                           box.left:box.left + box.width], 64)
  np.testing.assert_array_equal(prep.preprocess_for_eval(image, 64), expected)
  rng, twin = np.random.default_rng(5), np.random.default_rng(5)
  train = prep.preprocess_for_train(image, 64, rng)
  box = prep.train_crop_box(twin, 200, 300, 64)
  resized = prep.resize_bicubic_tf1(prep.crop(image, box), 64)
  flipped = twin.random() < 0.5
  np.testing.assert_array_equal(train, resized[:, ::-1] if flipped else resized)
  np.testing.assert_array_equal(prep.to_uint8(np.asarray([-3.0, 12.9, 300.0])), [0, 12, 255])


def test_host_wrappers_give_fixed_size_uint8_records():
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (60, 30),
                                                                         (32, 32))]
  source = [{"image": image, "label": i} for i, image in enumerate(images)]
  wrapper, train_map = prep.HOST_PREPROCESSING["efficientnet"]
  for index in range(3):
    record = wrapper(source, 24)[index]
    assert record["image"].shape == (24, 24, 3) and record["image"].dtype == np.uint8
    assert record["label"] == index
  source = data_lib.Subset(source, np.arange(3))  # one source (a list would be several)
  first = data_lib.train_iterator(source, 3, seed=0, process_index=0, process_count=1,
                                  record_map=train_map(24))
  batches = [next(first) for _ in range(4)]
  assert all(b["image"].shape == (3, 24, 24, 3) and b["image"].dtype == np.uint8 for b in batches)
  again = data_lib.train_iterator(source, 3, seed=0, process_index=0, process_count=1,
                                  record_map=train_map(24))
  for batch in batches:
    np.testing.assert_array_equal(next(again)["image"], batch["image"])
  # Each epoch (one batch here) draws new crops of image 0.
  crops = [b["image"][list(b["label"]).index(0)] for b in batches]
  assert any(not np.array_equal(crops[0], other) for other in crops[1:])
