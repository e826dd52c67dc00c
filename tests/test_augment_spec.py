"""The spec language, the basic train-time ops (flip, random crop, cutout) and their randomness."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effcv_jax import augment
from effcv_jax.augment import spec as spec_lib

BATCH, SIZE, CLASSES = 8, 12, 5


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
  labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]
  return images, labels


@pytest.fixture(scope="module")
def basic_fn():
  return jax.jit(augment.build("flip_lr|random_crop(padding=4)|cutout(size=4)"))


def test_parse_spec_grammar():
  assert spec_lib.parse_spec("") == []
  assert spec_lib.parse_spec(" none ") == []
  assert spec_lib.parse_spec("flip_lr | random_crop(padding=4, pad_mode='constant')") == [
      ("flip_lr", {}), ("random_crop", {
          "padding": 4,
          "pad_mode": "constant"
      })
  ]
  assert spec_lib.parse_spec(
      "affine(src=((0, 0), (1, 0), (0, 1)), dst=[(1, 1), (2, 1), (1, 2)])") == [("affine", {
          "src": ((0, 0), (1, 0), (0, 1)),
          "dst": [(1, 1), (2, 1), (1, 2)]
      })]
  assert spec_lib.split_top_level("a(x='|')|b") == ["a(x='|')", "b"]


@pytest.mark.parametrize("spec, message", [
    ("flip_lrr", "unknown augmentation op 'flip_lrr'; valid ops: .*flip_lr"),
    ("random_crop(padding=4, pading=2)", "no argument 'pading'; valid arguments: size, padding"),
    ("random_crop(4)", "by keyword"),
    ("cutout(size=x)", "not a Python literal"),
    ("flip_lr||cutout", "empty op"),
    ("random_crop(pad_mode='wrap')", "mode must be one of"),
])
def test_bad_specs_raise_value_error(spec, message):
  with pytest.raises(ValueError, match=message):
    augment.build(spec)


def test_identity_spec_returns_inputs(batch):
  images, labels = batch
  for spec in ("", "none"):
    out_images, out_labels = augment.build(spec)(jax.random.key(0), images, labels)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)


def test_uint8_images_are_converted_once(batch):
  images, labels = batch
  out, _ = augment.build("flip_lr(p=1.0)")(jax.random.key(0), images.astype(np.uint8), labels)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_flip_lr_and_flip_ud_are_exact(batch):
  images, labels = batch
  out, _ = augment.build("flip_lr(p=1.0)")(jax.random.key(0), images, labels)
  np.testing.assert_array_equal(out, images[:, :, ::-1])
  out, _ = augment.build("flip_ud(p=1.0)")(jax.random.key(0), images, labels)
  np.testing.assert_array_equal(out, images[:, ::-1])
  out, _ = augment.build("flip_lr(p=0.5)")(jax.random.key(1), images, labels)
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(np.asarray(out), images)]
  kept = [np.array_equal(o, i) for o, i in zip(np.asarray(out), images)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "edge"])
def test_random_crop_is_a_crop_of_the_padded_image(batch, pad_mode):
  images, labels = batch
  padding = 3
  fn = augment.build(f"random_crop(padding={padding}, pad_mode='{pad_mode}', fill=7)")
  out = np.asarray(fn(jax.random.key(2), images, labels)[0])
  np_mode = {"reflect": "reflect", "constant": "constant", "edge": "edge"}[pad_mode]
  kwargs = {"constant_values": 7} if pad_mode == "constant" else {}
  offsets = []
  for image, result in zip(images, out):
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=np_mode, **kwargs)
    matches = [(dy, dx)
               for dy in range(2 * padding + 1)
               for dx in range(2 * padding + 1)
               if np.array_equal(padded[dy:dy + SIZE, dx:dx + SIZE], result)]
    assert matches, "output is not a crop of the padded image"
    offsets.append(matches[0])
  assert len(set(offsets)) > 1, "all images got the same crop offset"


def test_random_crop_with_smaller_size(batch):
  images, labels = batch
  out, _ = augment.build("random_crop(size=8, padding=0)")(jax.random.key(0), images, labels)
  assert out.shape == (BATCH, 8, 8, 3)
  for image, result in zip(images, np.asarray(out)):
    assert any(np.array_equal(image[y:y + 8, x:x + 8], result) for y in range(5) for x in range(5))


def test_cutout_erases_one_clipped_box_per_image(batch):
  images, labels = batch
  images = images + 1.0  # no pixel is 0 before erasing
  out, _ = augment.build("cutout(size=4, fill=0)")(jax.random.key(3), images, labels)
  erased = np.asarray(out) == 0
  assert np.array_equal(erased.all(-1), erased.any(-1))  # all channels of a pixel together
  for image_erased, image, result in zip(erased[..., 0], images, np.asarray(out)):
    rows, cols = np.nonzero(image_erased)
    assert 0 < len(rows) <= 16
    box = np.zeros_like(image_erased)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert np.array_equal(box, image_erased)  # one rectangle
    np.testing.assert_array_equal(result[~image_erased], image[~image_erased])


def test_same_key_same_output_and_images_get_different_parameters(batch, basic_fn):
  images, labels = batch
  same = np.repeat(images[:1], BATCH, axis=0)
  first, first_labels = basic_fn(jax.random.key(5), same, labels)
  second, _ = basic_fn(jax.random.key(5), same, labels)
  third, _ = basic_fn(jax.random.key(6), same, labels)
  np.testing.assert_array_equal(first, second)
  assert not np.array_equal(first, third)
  assert len({np.asarray(image).tobytes() for image in first}) > BATCH // 2
  np.testing.assert_array_equal(first_labels, labels)
  assert first.shape == images.shape and first.dtype == jnp.float32


def test_consecutive_geometric_ops_fold_into_one_warp():
  fn = augment.build("flip_lr|random_crop(padding=4)|rotate(degrees=10)|cutout|flip_ud|rot90")
  assert fn.stage_names == ("flip_lr+random_crop", "rotate", "cutout", "flip_ud+rot90")
  fn = augment.build(
      "flip_lr|rotate(degrees=10, fill=3)|shear_x(fill=3)|translate_x(pixels=2, fill=3)")
  assert fn.stage_names == ("flip_lr+rotate+shear_x+translate_x",)


def test_pipeline_is_a_frozen_hashable_record_of_its_spec_and_stages(batch):
  images, labels = batch
  spec = "flip_lr|random_crop(padding=4)|cutout(size=4)"
  pipeline = augment.build(spec)
  assert isinstance(pipeline, augment.Pipeline)
  assert pipeline.spec == spec and len(pipeline.stages) == 2
  assert all(isinstance(stage, augment.BatchOp) for stage in pipeline.stages)
  with pytest.raises(dataclasses.FrozenInstanceError):
    pipeline.spec = "none"  # type: ignore[misc]
  assert hash(pipeline) == hash(pipeline) and pipeline == pipeline
  # Running it is running its stages in order, each with its own key split from the call's key.
  key = jax.random.key(7)
  expected_images, expected_labels = images, labels
  for stage, stage_key in zip(pipeline.stages, jax.random.split(key, 2)):
    expected_images, expected_labels = stage.apply(stage_key, expected_images, expected_labels)
  out_images, out_labels = jax.jit(pipeline)(key, images, labels)
  np.testing.assert_array_equal(out_images, expected_images)
  np.testing.assert_array_equal(out_labels, expected_labels)
  # The empty pipeline is the identity (after the float conversion).
  empty = augment.build("none")
  assert empty.stages == () and empty.spec == "none"
  out_images, _ = empty(key, images.astype(np.uint8), labels)
  assert out_images.dtype == jnp.float32
  np.testing.assert_array_equal(out_images, images.astype(np.uint8).astype(np.float32))
