"""The official EfficientNet / Noisy Student ImageNet pre-processing, on the host, in NumPy.

The reference is google-research/noisystudent `preprocessing.py` (TensorFlow 1.x):

* eval (and the teacher's pseudo-labelling pass): `center_crop_box` cuts the central square of
  side int(image_size / (image_size + crop_padding) * min(H, W)) (crop_padding 32, so 224/256
  of the short side at 224 px), offsets ((H - side) + 1) // 2 and ((W - side) + 1) // 2; the
  square is resized to image_size x image_size by `resize_bicubic_tf1`;
* train: `train_crop_box` samples a box of the FULL image as
  `tf.image.sample_distorted_bounding_box` does with the reference's arguments (`distorted_crop_box`: area fraction in (0.08, 1), aspect
  ratio width / height uniform in (3/4, 4/3), at most 10 attempts, the box covering at least 0.1
  of the image); when no attempt succeeds, or the box is the whole image, the eval centre crop
  is used instead. The box is resized by `resize_bicubic_tf1` and flipped left-right with
  probability 1/2.

`resize_bicubic_tf1` is TF 1.x's `tf.image.resize_bicubic` with its defaults (no aligned
corners, no half-pixel centres: input coordinate = output index * in_size / out_size; Keys'
cubic with a = -0.75 read from a 1025-entry table; edge pixels repeated; no antialiasing). Its
output is float32 and not clipped, as the reference's; `to_uint8` truncates to uint8 the way the
reference casts before RandAugment (exact for training; at evaluation the reference feeds the
float image, so uint8 storage moves a pixel by less than one level).

The reference's 32 px (CIFAR-10, SVHN) path does none of this: its images stay 32 x 32 and its
training augmentation runs on the device: `randaugment_tf(translate_const=4, cutout_const=4)`,
then `cutout(size=16, fill=128)`, then `random_crop(padding=4, pad_mode='reflect')` and (not
for SVHN) `flip_lr`.

How a run uses these: `CenterCropped(source, image_size)` wraps a source of full-size images
for evaluation and for the teacher's pass over the unlabelled pool; `train_record_map(size)`
is the `record_map` of `pipeline.train_iterator`, given the full-size training sources (new boxes
every epoch, the same ones after a resume). `HOST_PREPROCESSING` names the pair (name ->
(eval wrapper, train map factory)) for a config to select by name.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from effcv_jax.data.sources import Source

CROP_PADDING = 32
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10
MIN_OBJECT_COVERED = 0.1
# TF's bicubic coefficient table: 1024 steps per pixel, Keys' cubic with a = -0.75.
_TABLE_SIZE = 1024
_CUBIC_A = -0.75


class CropBox(NamedTuple):
  """A crop in pixels: rows [top, top + height), columns [left, left + width)."""
  top: int
  left: int
  height: int
  width: int


class UniformSource(Protocol):
  """What `distorted_crop_box` draws from (a `numpy.random.Generator` is one):
  random() -> float in [0, 1); integers(n) -> int in [0, n)."""

  def random(self) -> float:
    ...

  def integers(self, n: int) -> int:
    ...


# ---------------------------------------------------------------------------------------------
# Crop boxes.
# ---------------------------------------------------------------------------------------------


def center_crop_box(height: int, width: int, image_size: int,
                    crop_padding: int = CROP_PADDING) -> CropBox:
  """The reference's eval crop of an H x W image: the central square of side
  int(image_size / (image_size + crop_padding) * min(H, W)), computed in float32 as TF does.

  (The TPU EfficientNet code uses crop_padding = round(image_size * (1 / 0.875 - 1)) instead,
  which differs from 32 above 224 px.)"""
  fraction = np.float32(image_size / (image_size + crop_padding))
  side = int(fraction * np.float32(min(height, width)))
  return CropBox(((height - side) + 1) // 2, ((width - side) + 1) // 2, side, side)


def _lrint(value) -> int:
  """C's lrintf: round half to even."""
  return int(np.rint(np.float32(value)))


def _sample_box(rng: UniformSource, height: int, width: int, aspect_ratio: np.float32,
                area_range: tuple[float, float]) -> CropBox | None:
  """One attempt of TF's GenerateRandomCrop: the height uniform over the whole numbers that keep
  the area in range, the width round(height * aspect_ratio), the position uniform."""
  min_area = np.float32(area_range[0]) * np.float32(width) * np.float32(height)
  max_area = np.float32(area_range[1]) * np.float32(width) * np.float32(height)
  box_h = _lrint(np.sqrt(np.float32(min_area / aspect_ratio)))
  max_h = _lrint(np.sqrt(np.float32(max_area / aspect_ratio)))
  if _lrint(max_h * aspect_ratio) > width:
    max_h = int((width + 0.5 - float(np.float32(1e-7))) / float(aspect_ratio))
    if _lrint(max_h * aspect_ratio) > width:
      max_h -= 1
  max_h = min(max_h, height)
  box_h = min(box_h, max_h)
  if box_h < max_h:
    box_h += int(rng.integers(max_h - box_h + 1))
  box_w = _lrint(box_h * aspect_ratio)
  area = np.float32(box_w * box_h)
  if area < min_area:
    box_h += 1
    box_w = _lrint(box_h * aspect_ratio)
    area = np.float32(box_w * box_h)
  if area > max_area:
    box_h -= 1
    box_w = _lrint(box_h * aspect_ratio)
    area = np.float32(box_w * box_h)
  if (area < min_area or area > max_area or box_w > width or box_h > height or box_w <= 0 or
      box_h <= 0):
    return None
  top = int(rng.integers(height - box_h)) if box_h < height else 0
  left = int(rng.integers(width - box_w)) if box_w < width else 0
  return CropBox(top, left, box_h, box_w)


def distorted_crop_box(rng: UniformSource,
                       height: int,
                       width: int,
                       area_range: tuple[float, float] = AREA_RANGE,
                       aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE,
                       max_attempts: int = MAX_ATTEMPTS,
                       min_object_covered: float = MIN_OBJECT_COVERED) -> CropBox | None:
  """`tf.image.sample_distorted_bounding_box` of the whole image (no bounding boxes): up to
  max_attempts boxes, each with aspect ratio (width / height) uniform in aspect_ratio_range;
  the first whose area is within area_range and covers at least min_object_covered of the
  image is returned; None when no attempt succeeds (TF then returns the whole image)."""
  low, high = np.float32(aspect_ratio_range[0]), np.float32(aspect_ratio_range[1])
  image_area = np.float32(height * width)
  for _ in range(max_attempts):
    aspect_ratio = np.float32(np.float32(rng.random()) * (high - low) + low)
    box = _sample_box(rng, height, width, aspect_ratio, area_range)
    if box is not None and box.height * box.width >= 1 and (
        np.float32(box.height * box.width) / image_area >= np.float32(min_object_covered)):
      return box
  return None


def train_crop_box(rng: UniformSource, height: int, width: int, image_size: int,
                   crop_padding: int = CROP_PADDING) -> CropBox:
  """The reference's training crop: `distorted_crop_box` of the full image, or the eval centre
  crop when the sampled box is the whole image (which is also TF's answer when every attempt
  fails)."""
  box = distorted_crop_box(rng, height, width)
  if box is None or (box.height, box.width) == (height, width):
    return center_crop_box(height, width, image_size, crop_padding)
  return box


# ---------------------------------------------------------------------------------------------
# Resizing and the two pipelines.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _cubic_table() -> np.ndarray:
  """(1025, 2): Keys' cubic at x and at x + 1 for x = i / 1024 (TF's coefficient table)."""
  x = np.arange(_TABLE_SIZE + 1, dtype=np.float64) / _TABLE_SIZE
  a = _CUBIC_A
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far_x = x + 1
  far = ((a * far_x - 5 * a) * far_x + 8 * a) * far_x - 4 * a
  return np.stack([near, far], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64: TF 1.x resize_bicubic's weights along one axis."""
  table = _cubic_table()
  scale = np.float32(in_size / out_size)
  matrix = np.zeros((out_size, in_size))
  for out_index in range(out_size):
    position = np.float32(out_index * scale)
    base = int(np.floor(position))
    offset = _lrint(np.float32(position - base) * _TABLE_SIZE)
    weights = (table[offset, 1], table[offset, 0], table[_TABLE_SIZE - offset, 0],
               table[_TABLE_SIZE - offset, 1])
    for tap, weight in zip(range(base - 1, base + 3), weights):
      matrix[out_index, min(max(tap, 0), in_size - 1)] += weight
  return matrix


def resize_bicubic_tf1(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """TF 1.x `tf.image.resize_bicubic(image, size)` (see the module docstring).

  image: (H, W, C) or (H, W), any real dtype. size: side or (height, width).
  Returns: float32 (size_h, size_w, C) (or (size_h, size_w)), not clipped.
  """
  out_h, out_w = (size, size) if isinstance(size, int) else size
  rows = _resize_matrix(image.shape[0], out_h)
  cols = _resize_matrix(image.shape[1], out_w)
  values = np.asarray(image, np.float64)
  out = np.tensordot(rows, values, axes=(1, 0))  # (out_h, W, ...)
  out = np.moveaxis(np.tensordot(cols, out, axes=(1, 1)), 0, 1)  # (out_h, out_w, ...)
  return out.astype(np.float32)


def crop(image: np.ndarray, box: CropBox) -> np.ndarray:
  """The pixels of `box`: (box.height, box.width, ...)."""
  return image[box.top:box.top + box.height, box.left:box.left + box.width]


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Clip to [0, 255] and truncate, as the reference's cast before RandAugment."""
  return np.floor(np.clip(image, 0.0, 255.0)).astype(np.uint8)


def preprocess_for_eval(image: np.ndarray, image_size: int,
                        crop_padding: int = CROP_PADDING) -> np.ndarray:
  """The reference's eval image: centre crop, bicubic to image_size. (H, W, C) -> float32
  (image_size, image_size, C)."""
  box = center_crop_box(image.shape[0], image.shape[1], image_size, crop_padding)
  return resize_bicubic_tf1(crop(image, box), image_size)


def preprocess_for_train(image: np.ndarray, image_size: int, rng: np.random.Generator,
                         crop_padding: int = CROP_PADDING) -> np.ndarray:
  """The reference's training image before RandAugment: `train_crop_box`, bicubic to
  image_size, left-right flip with probability 1/2. (H, W, C) -> float32 (S, S, C)."""
  box = train_crop_box(rng, image.shape[0], image.shape[1], image_size, crop_padding)
  resized = resize_bicubic_tf1(crop(image, box), image_size)
  return resized[:, ::-1] if rng.random() < 0.5 else resized


# ---------------------------------------------------------------------------------------------
# Wiring into the host pipeline.
# ---------------------------------------------------------------------------------------------


def _with_channels(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  return image[..., None] if image.ndim == 2 else image


@dataclasses.dataclass(frozen=True)
class CenterCropped:
  """A source of full-size images as uint8 (image_size, image_size, C) eval images
  (`preprocess_for_eval`, rounded to uint8): for evaluation and the teacher's pass."""
  source: Source
  image_size: int

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self.source[index])
    image = preprocess_for_eval(_with_channels(record["image"]), self.image_size)
    record["image"] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return record


def train_record_map(image_size: int) -> Callable[[dict[str, Any], np.random.Generator],
                                                  dict[str, Any]]:
  """The per-record function for `grain.MapDataset.random_map`: the record's full-size image
  replaced by `preprocess_for_train`'s, truncated to uint8 (`to_uint8`)."""

  def map_record(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    record = dict(record)
    image = preprocess_for_train(_with_channels(record["image"]), image_size, rng)
    record["image"] = to_uint8(image)
    return record

  return map_record


# name -> (eval/pseudo-labelling source wrapper, training record map factory).
HOST_PREPROCESSING = {"efficientnet": (CenterCropped, train_record_map)}
