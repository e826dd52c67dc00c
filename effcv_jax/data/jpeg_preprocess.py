"""The official EfficientNet crops cut straight from encoded JPEG records: only the crop's
rows and columns decoded (C, data.jpeg_crop) or, where that path is not available, with Pillow;
either way decoded at the smallest scale the crop allows and resampled only inside the crop.

Records hold the encoded image (bytes, as TFDS gives ImageNet without decoding it) under
'image'. The crop boxes are `efficientnet_preprocess`'s, drawn from the same generator in the
same order (`train_crop_box`, then the flip draw), so for one rng both paths cut the same box
of the same image and flip it alike; the header alone gives the image's size for the draw.
Then:

* scale: libjpeg's DCT scaling decodes the image at 1/s of its size, s the largest of 8, 4, 2
  and 1 that keeps the box, so scaled, at least image_size on both sides (`draft_scale`); the
  scaled IDCT keeps each block's lowest frequencies (a low-pass filter);
* decode: decoder 'libjpeg' (the default) decodes only the box's rows and columns and the
  few around them the resampling reaches (libjpeg-turbo's partial decoding, as tf.data's
  decode_and_crop_jpeg); grey, RGB and YCbCr JPEGs that end with their end-of-image marker
  take it when data.jpeg_crop is available, every other record (CMYK, a PNG, a truncated file,
  a C library that could not be built) Pillow's full decode (`Image.draft`), as decoder
  'pillow' does for all;
* crop and resize in one pass: Pillow's bicubic of the box, with fractional coordinates, to
  S x S (`Image.resize((S, S), BICUBIC, box=the box / s)`, or its C copy in data.jpeg_crop,
  equal within two levels); CMYK, palette and RGBA images (a PNG among JPEGs) are converted to
  RGB first (alpha dropped);
* flip: left-right, after the resize, as the reference.

How this differs from the reference path (full decode, `crop`, `resize_bicubic_tf1`,
`to_uint8`), pixel values only, the boxes being equal:

* Pillow's bicubic is Keys' cubic with a = -0.5 on pixel centres, its support widened by the
  reduction factor (antialiased); TF 1.x's is a = -0.75 at out_index * in / out (a shift of up
  to half an input pixel) and samples without antialiasing when it shrinks;
* DCT scaling: libjpeg's scaled IDCT does the first factor s of that shrinking; its filter
  differs from a bicubic one;
* Pillow rounds to uint8, the reference truncates (to_uint8): half a level on average;
* partial decoding: next to the decoded region's edges the chroma upsampling sees no
  neighbours past it, a few levels on a few pixels.

On the ImageNet sample photos (tests/test_jpeg_pipeline.py states the bounds) the mean absolute
difference to the reference path is a few levels of 255, largest on fine textures, where the
reference aliases; what DCT scaling alone changes is one or two levels, what partial decoding
changes a fraction of a level on average.

How a run uses these: HOST_PREPROCESSING['efficientnet_fast'] is (DecodedCenterCrop,
train_record_map), beside efficientnet_preprocess's 'efficientnet'. Records whose image is
already a uint8 array (H, W[, C]) take the same crop and resize without a DCT scale, so the
pair works on any source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import Any, Callable

import numpy as np
from PIL import Image

from effcv_jax.data import efficientnet_preprocess as official
from effcv_jax.data import jpeg_crop
from effcv_jax.data.sources import Source
from effcv_jax.errors import FileFormatError

DRAFT_SCALES = (8, 4, 2, 1)
DECODERS = ("libjpeg", "pillow")
_END_OF_IMAGE = b"\xff\xd9"
# Modes resized as they are (Pillow resizes them band by band); any other is converted to RGB.
_RESIZED_MODES = ("RGB", "L")


def record_name(record: dict[str, Any]) -> str:
  """How an error names a record: its 'file_name' (TFDS ImageNet has one), else its label,
  size in bytes and the first 12 hex digits of the SHA-1 of its encoded image."""
  name = record.get("file_name")
  if name is not None:
    return repr(name.decode() if isinstance(name, bytes) else str(name))
  data = record.get("image")
  if isinstance(data, (bytes, bytearray)):
    digest = hashlib.sha1(data).hexdigest()[:12]
    return f"(label {record.get('label')}, {len(data)} bytes, sha1 {digest}...)"
  return f"(label {record.get('label')})"


def _is_encoded(image: Any) -> bool:
  return isinstance(image, (bytes, bytearray)) or (
      isinstance(image, np.ndarray) and image.dtype.kind in "SO")


def _as_bytes(image: Any) -> bytes:
  if isinstance(image, np.ndarray):
    image = image.item() if image.ndim == 0 else image.tobytes()
  return bytes(image)


def open_record_image(record: dict[str, Any]) -> Image.Image:
  """The record's image as an unloaded (lazy) Pillow image: encoded bytes are opened (only
  the header is read), a uint8 array (H, W[, C]) is wrapped. Raises FileFormatError naming
  the record when the bytes are no image Pillow reads."""
  image = record["image"]
  if not _is_encoded(image):
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    return Image.fromarray(array)
  try:
    return Image.open(io.BytesIO(_as_bytes(image)))
  except (OSError, SyntaxError, ValueError) as error:
    raise FileFormatError(
        f"record {record_name(record)}: its image is not a readable JPEG ({error}); the "
        "dataset file is damaged: prepare it again, or drop the record") from error


def draft_scale(box: official.CropBox, image_size: int) -> int:
  """The largest DCT scale 1/s (s in 8, 4, 2, 1) that keeps `box` at least image_size on both
  sides once scaled."""
  side = min(box.height, box.width)
  return next(s for s in DRAFT_SCALES if s == 1 or side >= s * image_size)


def crop_and_resize(image: Image.Image, box: official.CropBox, image_size: int,
                    record: dict[str, Any] | None = None) -> np.ndarray:
  """`box` of `image` (an unloaded image from `open_record_image`) resized to image_size x
  image_size with Pillow's bicubic, decoding at the DCT scale `draft_scale` allows.

  Returns: uint8 (image_size, image_size, 3). Raises FileFormatError naming `record` (the
  record the image came from, `record_name`) when the data is truncated or corrupt."""
  scale = draft_scale(box, image_size)
  width, height = image.size
  if scale > 1 and image.format == "JPEG":
    image.draft("RGB", (width // scale, height // scale))
    scale_x, scale_y = width / image.size[0], height / image.size[1]
  else:
    scale_x = scale_y = 1.0
  try:
    image.load()
  except (OSError, SyntaxError, ValueError) as error:
    raise FileFormatError(
        f"record {record_name(record or {})}: its JPEG could not be decoded ({error}); the "
        "dataset file is damaged or truncated: prepare it again, or drop the record") from error
  if image.mode not in _RESIZED_MODES:
    image = image.convert("RGB")
  region = (box.left / scale_x, box.top / scale_y, (box.left + box.width) / scale_x,
            (box.top + box.height) / scale_y)
  resized = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=region)
  if resized.mode != "RGB":
    resized = resized.convert("RGB")
  return np.asarray(resized)


def _crop_decodable(record: dict[str, Any], decoder: str) -> tuple[bytes, int, int] | None:
  """(encoded bytes, width, height) when the record's image takes the C crop decoder
  (module docstring), else None: Pillow decodes it (and names any damage)."""
  if decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
  image = record["image"]
  if decoder != "libjpeg" or not _is_encoded(image) or not jpeg_crop.available():
    return None
  data = _as_bytes(image)
  # Without its end-of-image marker a JPEG is truncated (or carries trailing bytes), which a
  # partial decode may not reach: Pillow's full decode tells the two apart.
  if not (jpeg_crop.is_jpeg(data) and data.endswith(_END_OF_IMAGE)):
    return None
  try:
    width, height, decodes_to_rgb = jpeg_crop.jpeg_info(data)
  except ValueError:
    return None
  return (data, width, height) if decodes_to_rgb else None


def _crop_decode(data: bytes, box: official.CropBox, image_size: int,
                 record: dict[str, Any], flip: bool = False) -> np.ndarray:
  """`box` of the JPEG `data` at the DCT scale `draft_scale` allows, resized to image_size x
  image_size and, with `flip`, mirrored left to right (data.jpeg_crop.crop_resize). Returns
  uint8 (image_size, image_size, 3), contiguous."""
  region = (box.left, box.top, box.left + box.width, box.top + box.height)
  try:
    out = jpeg_crop.crop_resize(data, region, 8 // draft_scale(box, image_size),
                                (image_size, image_size), flip)
  except ValueError as error:
    raise FileFormatError(
        f"record {record_name(record)}: its JPEG could not be decoded ({error}); the "
        "dataset file is damaged or truncated: prepare it again, or drop the record") from error
  assert out is not None, "_crop_decodable admits only grey, RGB and YCbCr JPEGs"
  return out


def preprocess_for_train(record: dict[str, Any], image_size: int, rng: np.random.Generator,
                         decoder: str = "libjpeg") -> np.ndarray:
  """The record's training image: efficientnet_preprocess.train_crop_box (the same draws),
  the box decoded and resized (`decoder`: module docstring), left-right flip with probability
  1/2 (the draw after the box's). Returns uint8 (image_size, image_size, 3) (from Pillow, a
  reversed view when flipped; the C decoder writes it mirrored)."""
  decodable = _crop_decodable(record, decoder)
  if decodable is not None:
    data, width, height = decodable
    box = official.train_crop_box(rng, height, width, image_size)
    return _crop_decode(data, box, image_size, record, flip=rng.random() < 0.5)
  image = open_record_image(record)
  width, height = image.size
  box = official.train_crop_box(rng, height, width, image_size)
  out = crop_and_resize(image, box, image_size, record)
  # A flipped view, not a copy: batching copies it once.
  return out[:, ::-1] if rng.random() < 0.5 else out


def preprocess_for_eval(record: dict[str, Any], image_size: int,
                        decoder: str = "libjpeg") -> np.ndarray:
  """The record's eval image: efficientnet_preprocess.center_crop_box, decoded and resized
  (`decoder`: module docstring). Returns uint8 (image_size, image_size, 3)."""
  decodable = _crop_decodable(record, decoder)
  if decodable is not None:
    data, width, height = decodable
    return _crop_decode(data, official.center_crop_box(height, width, image_size), image_size,
                        record)
  image = open_record_image(record)
  width, height = image.size
  box = official.center_crop_box(height, width, image_size)
  return crop_and_resize(image, box, image_size, record)


def _without_name(record: dict[str, Any]) -> dict[str, Any]:
  """A copy of the record without 'file_name' (a string; batches hold arrays only)."""
  return {key: value for key, value in record.items() if key != "file_name"}


@dataclasses.dataclass(frozen=True)
class DecodedCenterCrop:
  """A source of encoded (or full-size) images as uint8 (image_size, image_size, 3) eval
  images (`preprocess_for_eval` with `decoder`): for evaluation and a teacher's pass."""
  source: Source
  image_size: int
  decoder: str = "libjpeg"

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source[index]
    out = _without_name(record)
    out["image"] = preprocess_for_eval(record, self.image_size, self.decoder)
    return out


@dataclasses.dataclass(frozen=True)
class TrainRecordMap:
  """The per-record function for `grain.MapDataset.random_map` (picklable, so it runs in
  grain's worker processes): the record's encoded image replaced by `preprocess_for_train`'s
  uint8 (image_size, image_size, 3) image (with `decoder`); a 'file_name' key is dropped."""
  image_size: int
  decoder: str = "libjpeg"

  def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    out = _without_name(record)
    out["image"] = preprocess_for_train(record, self.image_size, rng, self.decoder)
    return out


def train_record_map(image_size: int, decoder: str = "libjpeg"
                     ) -> Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]:
  """The `record_map` of pipeline.train_iterator: `TrainRecordMap(image_size, decoder)`."""
  return TrainRecordMap(image_size, decoder)


# name -> (eval/pseudo-labelling source wrapper, training record map factory).
HOST_PREPROCESSING = {"efficientnet_fast": (DecodedCenterCrop, train_record_map)}
