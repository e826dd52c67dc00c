"""Crop decoding of JPEGs and Pillow's bicubic box resize, in C (jpeg_crop.c, beside this
file), for the host input pipeline (data.jpeg_preprocess).

`crop_resize` decodes only the rows and columns of a box (and the few around it that the
resampling filter reaches) with libjpeg-turbo's partial decoding, as tf.data's
decode_and_crop_jpeg does, at a DCT scale of num/8, and resizes the box to the output size
with Pillow's antialiased bicubic (within two levels of `Image.resize(size, BICUBIC, box=...)`
on the same decoded pixels, except where the first of its two passes overshoots 0..255 and
Pillow ran them in the other order: enlarged hard edges). Pixels next to the decoded region's
edges can differ from a full decode by a few levels (the chroma upsampling sees no neighbours
past the region).

The library is compiled on first use (a C compiler and libjpeg-turbo's headers:
`apt-get install gcc libjpeg-turbo8-dev` or `libjpeg62-turbo-dev`) into $EFFCV_CACHE_DIR
(default ~/.cache/effcv_jax), keyed by the source and the CPU's instruction-set flags (it is
built for the CPU it runs on). `available()` says whether it could be built;
`unavailable_reason()` why not; callers fall back to Pillow.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import pathlib
import platform

import numpy as np

from effcv_jax import native_build

_SOURCE = pathlib.Path(__file__).with_name("jpeg_crop.c")
_MESSAGE_SIZE = 200
# Return codes of the C functions.
_DONE, _FAILED, _UNSUPPORTED_COLOURS = 0, 1, 2


def _library_path() -> pathlib.Path:
  digest = hashlib.sha256(_SOURCE.read_bytes())
  digest.update((" ".join(sorted(native_build.cpu_flags())) or platform.machine()).encode())
  return native_build.cache_dir() / f"jpeg_crop-{digest.hexdigest()[:16]}.so"


def _build(output: pathlib.Path) -> None:
  """Compiles jpeg_crop.c into `output` (native_build.compile_library)."""
  compiler = native_build.find_compiler("CC", ("gcc", "cc"), "C")
  native_build.compile_library(
      [compiler, "-O3", "-march=native", "-shared", "-fPIC", str(_SOURCE), "-ljpeg", "-lm"],
      output, _SOURCE, hint=" (it needs libjpeg-turbo's headers: apt-get install "
      "libjpeg-turbo8-dev or libjpeg62-turbo-dev)")


@functools.cache
def _load() -> ctypes.CDLL | str:
  """The loaded library (built once per machine), or why it is not available."""
  handle = native_build.load_library(_library_path(), _build)
  if isinstance(handle, str):
    return handle
  pointer, integer, double = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
  integers = ctypes.POINTER(ctypes.c_int)
  handle.effcv_jpeg_info.argtypes = [ctypes.c_char_p, ctypes.c_ulong, integers, integers,
                                     integers, ctypes.c_char_p]
  handle.effcv_jpeg_crop_resize.argtypes = [ctypes.c_char_p, ctypes.c_ulong, integer,
                                            double, double, double, double, integer, integer,
                                            integer, pointer, ctypes.c_char_p]
  handle.effcv_resize_bicubic.argtypes = [pointer, integer, integer, integer, double, double,
                                          double, double, integer, integer, pointer]
  for function in (handle.effcv_jpeg_info, handle.effcv_jpeg_crop_resize,
                   handle.effcv_resize_bicubic):
    function.restype = integer
  return handle


def available() -> bool:
  """Whether the C functions can run here (building them on the first call)."""
  return not isinstance(_load(), str)


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True)."""
  loaded = _load()
  return loaded if isinstance(loaded, str) else None


def _library() -> ctypes.CDLL:
  loaded = _load()
  if isinstance(loaded, str):
    raise RuntimeError(f"the C JPEG crop decoder is unavailable: {loaded}")
  return loaded


def is_jpeg(data: bytes) -> bool:
  """Whether `data` starts with a JPEG's start-of-image marker."""
  return data[:2] == b"\xff\xd8"


def jpeg_info(data: bytes) -> tuple[int, int, bool]:
  """(width, height, whether this path decodes it: grey, RGB or YCbCr) from the JPEG header.
  Raises ValueError with libjpeg's message when the data is no JPEG it reads."""
  width, height, rgb = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
  message = ctypes.create_string_buffer(_MESSAGE_SIZE)
  status = _library().effcv_jpeg_info(data, len(data), ctypes.byref(width),
                                      ctypes.byref(height), ctypes.byref(rgb), message)
  if status != _DONE:
    raise ValueError(message.value.decode(errors="replace"))
  return width.value, height.value, bool(rgb.value)


def crop_resize(data: bytes, box: tuple[float, float, float, float], scale_num: int,
                out_size: tuple[int, int], flip: bool = False) -> np.ndarray | None:
  """The box (left, top, right, bottom; full-size pixel coordinates, fractions allowed) of the
  JPEG `data`, decoded at scale scale_num / 8 (1..8), resized to out_size (height, width)
  with Pillow's bicubic and, with `flip`, mirrored left to right (a contiguous array either
  way). Returns uint8 (height, width, 3), or None when the image's colour
  space is one this path does not convert (CMYK, YCCK). Raises ValueError with libjpeg's
  message when the data is damaged or ends before the box's last row."""
  if not 1 <= scale_num <= 8:
    raise ValueError(f"scale_num must be 1..8, got {scale_num}")
  height, width = out_size
  out = np.empty((height, width, 3), np.uint8)
  message = ctypes.create_string_buffer(_MESSAGE_SIZE)
  status = _library().effcv_jpeg_crop_resize(data, len(data), scale_num, *map(float, box),
                                             height, width, int(flip), out.ctypes.data,
                                             message)
  if status == _UNSUPPORTED_COLOURS:
    return None
  if status != _DONE:
    raise ValueError(message.value.decode(errors="replace"))
  return out


def resize_bicubic(image: np.ndarray, box: tuple[float, float, float, float],
                   out_size: tuple[int, int]) -> np.ndarray:
  """uint8 image (H, W) or (H, W, C), C <= 4: the box (left, top, right, bottom) resized to
  out_size (height, width) as Pillow's `Image.resize(size, BICUBIC, box=box)` does: within two
  levels (each of the two passes rounds), except where the first pass overshoots 0..255 (both
  clip the intermediate, and the order of the passes then matters). Returns uint8
  (height, width[, C])."""
  image = np.ascontiguousarray(image, np.uint8)
  channels = 1 if image.ndim == 2 else image.shape[2]
  if image.ndim not in (2, 3) or not 1 <= channels <= 4:
    raise ValueError(f"image must be (H, W) or (H, W, C<=4) uint8, got {image.shape}")
  out = np.empty(tuple(out_size) + image.shape[2:], np.uint8)
  status = _library().effcv_resize_bicubic(image.ctypes.data, image.shape[0], image.shape[1],
                                           channels, *map(float, box), out_size[0],
                                           out_size[1], out.ctypes.data)
  if status != _DONE:
    raise MemoryError("resize_bicubic: out of memory")
  return out
