"""The 15 common corruptions of CIFAR-10-C and ImageNet-C (Hendrycks and Dietterich 2019)
as jitted batch functions.

  corrupt(images, "fog", 3, seed=0, indices=None, constants=None) -> images

Images are (B, H, W, C) with C = 1 or 3, uint8 or float, values in [0, 255]; the result is
float32 (B, H, W, C) in [0, 255], not rounded (round it to store a CIFAR-10-C-like uint8
set). Severities 1..5 take their constants from a table per resolution, `CONSTANTS`:
'cifar' (make_cifar_c.py of the CIFAR-10-C generation, for 32 px) and 'imagenet'
(make_imagenet_c.py, for 224 px); `constants=None` picks 'cifar' for images up to 64 px a
side, else 'imagenet'. Every random draw of image i comes from the key
fold_in(fold_in(fold_in(fold_in(PRNGKey(seed), corruption number), severity), indices[i]))
(indices default to 0..B-1), so an image's corruption depends on (seed, corruption,
severity, index) and never on the rest of its batch.

The formulas follow the generation scripts (pixel values scaled to [0, 1] where they do):
noise (Gaussian, Poisson, salt-and-pepper), defocus (the anti-aliased disk kernel, OpenCV's
filter2D border), glass blur (Gaussian blur, uint8 truncation, the scripts' sequential
pixel copies, blur again), zoom blur (scipy's bilinear zoom of the centre crop, averaged
over the zoom factors), snow, frost, fog (diamond-square plasma fractal), brightness (HSV
value shift), contrast, elastic (random affine, then a smoothed random displacement field),
pixelate (Pillow's BOX resize down and up, with its uint8 rounding after each pass) and JPEG
(`jpeg_image`: libjpeg's fixed-point colour conversion, integer DCT and 4:2:0 resampling, as
Pillow encodes and decodes). JPEG and pixelate round float input to integer levels first (the
scripts see uint8 images). Where the generation scripts call ImageMagick or OpenCV, this module
approximates:
  motion_blur and snow's streaks: ImageMagick's MotionBlurImage as the `imagecorruptions`
    package re-implements it: a one-sided Gaussian of width 2 * radius + 1 along a random
    angle, integer shifts with edge replication;
  elastic_transform: OpenCV's warpAffine is bilinear here in float (OpenCV rounds the
    weights to 1/32);
  glass_blur: the pixel copies follow the scripts' scan order a row at a time (their
    numpy "swap" of two pixel views copies one pixel onto the other; so does this);
  snow: the PNG round trips of the snow layer are modelled as uint8 truncation before the
    streak blur and rounding after it;
  frost: the photographs the `imagecorruptions` package ships (read from the installed
    package, never copied into this repository; the first five, as the scripts draw
    randint(5)), resized by OpenCV-style bilinear sampling (0.2 for 'cifar'); without the
    package, `procedural_frost` textures stand in (see `frost_source`).
Images other than 32 or 224 px take the same constants; fog's fractal has the next power of
two of the larger side, frost photographs are enlarged where they are smaller than the image.
A batch function compiles once per (corruption, table, batch shape) for the corruptions in
TRACED_SEVERITY (the severity is an argument), once per severity as well for the others.
"""

import functools
import importlib.util
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
CIFAR_MAX_SIDE = 64         # constants=None: 'cifar' up to this side, 'imagenet' above

# Per corruption, one entry per severity 1..5. zoom_blur: (stop, step) of
# np.arange(1, stop, step); elastic_transform: (alpha, sigma, affine jitter) in pixels;
# snow: (mean, std, zoom, threshold, blur radius, blur sigma, image weight);
# frost: (image weight, frost weight); fog: (amount, wibble decay); glass_blur: (sigma,
# max shift, iterations); defocus_blur: (radius, alias blur); motion_blur: (radius, sigma).
CONSTANTS = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": tuple(tuple(32 * v for v in c) for c in (
            (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03))),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "frost_scale": 0.2,
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                 (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        # The script's 244 (for 224) is kept: these are its constants.
        "elastic_transform": tuple(tuple(244 * v for v in c) for c in (
            (2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
            (0.12, 0.01, 0.02))),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "frost_scale": 1.0,
    },
}

# ITU-T T.81 Annex K quantisation tables (natural order).
JPEG_LUMINANCE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]])
JPEG_CHROMINANCE = np.array([[17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99],
                             [24, 26, 56, 99, 99, 99, 99, 99], [47, 66, 99, 99, 99, 99, 99, 99]]
                            + [[99] * 8] * 4)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)        # OpenCV's RGB2GRAY (snow)
FROST_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)   # imagecorruptions' rgb2gray (frost, 1 channel)
NUM_FROST_PHOTOS = 5


def constants_name(name_or_side: str | int | None, height: int, width: int) -> str:
  """'cifar' or 'imagenet': the table named, or (None) the one for images of this size."""
  if name_or_side is None:
    return "cifar" if max(height, width) <= CIFAR_MAX_SIDE else "imagenet"
  if name_or_side not in CONSTANTS:
    raise ValueError(f"constants={name_or_side!r}: choose among {', '.join(CONSTANTS)}")
  return name_or_side


def corruption_key(seed: jax.Array | int, corruption: str, severity: int,
                   index: jax.Array | int) -> jax.Array:
  """The key of every random draw of image `index` under (seed, corruption, severity)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), CORRUPTIONS.index(corruption))
  return jax.random.fold_in(jax.random.fold_in(key, severity), index)


# --------------------------------------------------------------------------
# Linear operators built on the host (numpy, cached): each is a matrix applied along
# one image axis, so a separable filter or resampling is out = A_h @ image @ A_w^T.

def _fold(index: np.ndarray, size: int, mode: str) -> np.ndarray:
  """Indices outside [0, size) mapped inside: 'nearest' (edge), 'reflect' (scipy's
  half-sample reflection, d c b a | a b c d) or 'reflect101' (OpenCV's, d c b | a b c d)."""
  if mode == "nearest":
    return np.clip(index, 0, size - 1)
  if mode == "reflect":
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)
  if size == 1:
    return np.zeros_like(index)
  index = np.mod(index, 2 * size - 2)
  return np.where(index >= size, 2 * size - 2 - index, index)


@functools.lru_cache(maxsize=None)
def gaussian_matrix(size: int, sigma: float, truncate: float, mode: str) -> np.ndarray:
  """(size, size) float32: scipy.ndimage.gaussian_filter1d along one axis (radius
  int(truncate * sigma + 0.5), border `mode`); the identity for sigma 0."""
  matrix = np.zeros((size, size), np.float64)
  if sigma <= 1e-15:
    return np.eye(size, dtype=np.float32)
  radius = int(truncate * sigma + 0.5)
  taps = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * taps ** 2 / sigma ** 2)
  weights /= weights.sum()
  rows = np.arange(size)
  for tap, weight in zip(taps, weights):
    np.add.at(matrix, (rows, _fold(rows + tap, size, mode)), weight)
  return matrix.astype(np.float32)


@functools.lru_cache(maxsize=None)
def clipped_zoom_matrix(size: int, factor: float) -> np.ndarray:
  """(size, size) float32 along one axis: the centre ceil(size / factor) pixels zoomed by
  `factor` with scipy.ndimage.zoom(order=1) (corner-aligned), the centre `size` kept."""
  crop = int(np.ceil(size / factor))
  top = (size - crop) // 2
  zoomed = int(round(crop * factor))
  trim = (zoomed - size) // 2
  matrix = np.zeros((size, size), np.float64)
  for row in range(size):
    coordinate = (row + trim) * (crop - 1) / max(zoomed - 1, 1)
    low = min(int(np.floor(coordinate)), crop - 1)
    high = min(low + 1, crop - 1)
    weight = coordinate - low
    matrix[row, top + low] += 1 - weight
    matrix[row, top + high] += weight
  return matrix.astype(np.float32)


@functools.lru_cache(maxsize=None)
def pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32: Pillow's BOX resampling along one axis (its
  precompute_coeffs: support 0.5 * max(scale, 1), weights normalised per output pixel)."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 0.5 * filter_scale
  matrix = np.zeros((out_size, in_size), np.float64)
  for out in range(out_size):
    centre = (out + 0.5) * scale
    low = max(int(centre - support + 0.5), 0)
    high = min(int(centre + support + 0.5), in_size)
    taps = (np.arange(low, high) - centre + 0.5) / filter_scale
    weights = ((taps > -0.5) & (taps <= 0.5)).astype(np.float64)
    matrix[out, low:high] = weights / max(weights.sum(), 1e-12)
  return matrix.astype(np.float32)


@functools.lru_cache(maxsize=None)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """The scripts' defocus kernel: the disk x^2 + y^2 <= radius^2 on a (2L+1)^2 grid
  (L = 8, or the radius when larger), normalised, then OpenCV's GaussianBlur (3x3, or 5x5
  for radius > 8, sigma alias_blur, reflect-101 border)."""
  half = 8 if radius <= 8 else int(radius)
  grid = np.arange(-half, half + 1)
  xs, ys = np.meshgrid(grid, grid)
  disk = ((xs ** 2 + ys ** 2) <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  ksize = 3 if radius <= 8 else 5
  taps = np.arange(ksize) - (ksize - 1) / 2
  gauss = np.exp(-taps ** 2 / (2 * alias_blur ** 2))
  gauss /= gauss.sum()
  padded = np.pad(disk, ksize // 2, mode="reflect")
  rows = sum(w * padded[i:i + disk.shape[0], :] for i, w in enumerate(gauss))
  out = sum(w * rows[:, i:i + disk.shape[1]] for i, w in enumerate(gauss))
  return out.astype(np.float32)


def _bilinear_resize_cv2(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
  """OpenCV's INTER_LINEAR resize (half-pixel centres, no antialiasing), float (H, W, C)."""
  def axis(in_size, out_size):
    source = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, source - low
  low, high, weight = axis(image.shape[0], out_height)
  image = image[low] * (1 - weight)[:, None, None] + image[high] * weight[:, None, None]
  low, high, weight = axis(image.shape[1], out_width)
  return image[:, low] * (1 - weight)[None, :, None] + image[:, high] * weight[None, :, None]


# --------------------------------------------------------------------------
# Frost textures.

def frost_photo_dir() -> str | None:
  """The frost photographs' folder of the installed `imagecorruptions` package, or None
  (found without importing the package)."""
  try:
    spec = importlib.util.find_spec("imagecorruptions")
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  folder = os.path.join(list(spec.submodule_search_locations)[0], "frost")
  return folder if os.path.isdir(folder) else None


def procedural_frost(seed: int, height: int = 400, width: int = 600) -> np.ndarray:
  """A frost-like uint8 (height, width, 3) texture: a smooth haze plus thin bright needles
  (random segments, lightly blurred), tinted blue-white. Stands in for the photographs."""
  rng = np.random.default_rng(seed)
  haze = rng.standard_normal((height, width))
  haze = gaussian_matrix(height, 25.0, 3.0, "reflect") @ haze @ gaussian_matrix(
      width, 25.0, 3.0, "reflect").T
  haze = (haze - haze.min()) / (np.ptp(haze) + 1e-12)
  needles = np.zeros((height, width))
  for _ in range(height * width // 150):
    row, col = rng.uniform(0, height), rng.uniform(0, width)
    angle, length = rng.uniform(0, np.pi), rng.uniform(4, 40)
    steps = np.linspace(0, length, int(length * 2))
    rows = np.clip((row + steps * np.sin(angle)).astype(int), 0, height - 1)
    cols = np.clip((col + steps * np.cos(angle)).astype(int), 0, width - 1)
    needles[rows, cols] = np.maximum(needles[rows, cols], rng.uniform(0.3, 1.0))
  needles = gaussian_matrix(height, 0.7, 3.0, "reflect") @ needles @ gaussian_matrix(
      width, 0.7, 3.0, "reflect").T
  level = np.clip(0.15 + 0.45 * haze + 1.2 * needles, 0, 1)
  tint = np.array([0.85, 0.93, 1.0])
  return np.round(255 * level[..., None] * tint).astype(np.uint8)


def frost_source() -> str:
  """Where `frost` takes its textures from: the package's photographs or the procedural
  stand-in (for reports)."""
  folder = frost_photo_dir()
  if folder is None:
    return "procedural textures (imagecorruptions is not installed)"
  return f"the frost photographs of the installed imagecorruptions package ({folder})"


@functools.lru_cache(maxsize=None)
def frost_bank(scale: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """The five frost textures resized by `scale` (enlarged further where smaller than
  height x width), zero-padded into uint8 (5, Hmax, Wmax, 3), and their (5, 2) sizes."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  folder = frost_photo_dir()
  if folder is not None:
    names = sorted(os.listdir(folder))[:NUM_FROST_PHOTOS]
    photos = []
    for name in names:
      with Image.open(os.path.join(folder, name)) as photo:
        photos.append(np.asarray(photo.convert("RGB")))
  else:
    photos = [procedural_frost(seed) for seed in range(NUM_FROST_PHOTOS)]
  resized = []
  for photo in photos:
    factor = max(scale, 1.1 * height / photo.shape[0], 1.1 * width / photo.shape[1])
    if factor == 1.0:
      resized.append(photo)
      continue
    out_h, out_w = round(photo.shape[0] * factor), round(photo.shape[1] * factor)
    resized.append(np.clip(np.round(_bilinear_resize_cv2(photo.astype(np.float64), out_h,
                                                         out_w)), 0, 255).astype(np.uint8))
  sizes = np.array([p.shape[:2] for p in resized])
  bank = np.zeros((len(resized), sizes[:, 0].max(), sizes[:, 1].max(), 3), np.uint8)
  for i, photo in enumerate(resized):
    bank[i, :photo.shape[0], :photo.shape[1]] = photo
  return bank, sizes


# --------------------------------------------------------------------------
# Pieces shared by several corruptions (one image (H, W, C), float32).

def _separable(image: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """rows @ image @ cols^T on each channel of (H, W, C) (or of (H, W))."""
  if image.ndim == 2:
    return jnp.asarray(rows) @ image @ jnp.asarray(cols).T
  return jnp.einsum("ih,hwc,jw->ijc", jnp.asarray(rows), image, jnp.asarray(cols))


def _gray(image: jax.Array) -> jax.Array:
  """(H, W, C) -> (H, W, 1): OpenCV's RGB2GRAY, or the channel itself."""
  if image.shape[-1] == 1:
    return image
  return jnp.tensordot(image, jnp.asarray(GRAY_WEIGHTS, image.dtype), axes=1)[..., None]


def motion_blur_image(image: jax.Array, radius, sigma, angle_degrees: jax.Array,
                      max_radius: int | None = None, as_loop: bool = False) -> jax.Array:
  """(H, W, C) or (H, W) blurred along `angle_degrees`: sum over i < 2 * radius + 1 of
  w_i * image shifted by -ceil(i * (sin, cos)(angle) - 0.5) pixels with edges repeated,
  w_i a normalised one-sided Gaussian (sigma); shifts reaching the image size stop the
  sum (the imagecorruptions re-implementation of ImageMagick's MotionBlurImage). radius
  and sigma may be traced; then max_radius (static) bounds the radius. The taps are
  summed unrolled (rows and columns indexed with clipping: one fused pass) or, as_loop,
  as windows of the edge-padded image in a loop: for a result used more than once, as
  XLA fuses the unrolled sum into each consumer and redoes it there."""
  height, width = image.shape[:2]
  taps = np.arange(2 * (radius if max_radius is None else max_radius) + 1)
  weights = jnp.exp(-jnp.asarray(taps, jnp.float32) ** 2 / (2 * jnp.square(sigma)))
  weights = jnp.where(taps < 2 * radius + 1, weights, 0.0)
  weights = weights / weights.sum()
  angle = jnp.deg2rad(angle_degrees)
  tap_numbers = jnp.asarray(taps, jnp.float32)
  dys = -jnp.ceil(tap_numbers * jnp.sin(angle) - 0.5).astype(jnp.int32)
  dxs = -jnp.ceil(tap_numbers * jnp.cos(angle) - 0.5).astype(jnp.int32)
  inside = jnp.cumsum((jnp.abs(dys) >= height) | (jnp.abs(dxs) >= width)) == 0
  weights = jnp.where(inside, weights, 0.0)
  if not as_loop:
    out = jnp.zeros(image.shape, jnp.float32)
    for i in range(len(taps)):
      rows = jnp.clip(jnp.arange(height) - dys[i], 0, height - 1)
      cols = jnp.clip(jnp.arange(width) - dxs[i], 0, width - 1)
      out = out + weights[i] * jnp.take(jnp.take(image, rows, axis=0), cols, axis=1)
    return out
  # Every shift is at most its tap number, and one as large as the image stops the sum,
  # so windows of the edge-padded image are the clipped shifts.
  pad = int(min(taps[-1], max(height, width) - 1))
  padded = jnp.pad(image, ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2), mode="edge")

  def add_tap(i, out):
    start = (pad - dys[i], pad - dxs[i]) + (0,) * (image.ndim - 2)
    return out + weights[i] * jax.lax.dynamic_slice(padded, start, image.shape)

  return jax.lax.fori_loop(0, len(taps), add_tap, jnp.zeros(image.shape, jnp.float32))


def plasma_fractal(key: jax.Array, size: int, wibble_decay: float) -> jax.Array:
  """(size, size) float32 in [0, 1]: the diamond-square heightmap of the scripts (size a
  power of two; at each level the new points are the mean of their 4 neighbours (with
  wrap-around) plus wibble * U(-wibble, wibble), wibble 100 divided by `wibble_decay` per
  level), rescaled to [0, 1]."""
  grid = jnp.zeros((size, size), jnp.float32)
  step, wibble = size, 100.0
  while step >= 2:
    half = step // 2
    key, k_square, k_left, k_top = jax.random.split(key, 4)
    corners = grid[0::step, 0::step]
    total = corners + jnp.roll(corners, -1, axis=0)
    total = total + jnp.roll(total, -1, axis=1)
    noise = jax.random.uniform(k_square, total.shape, jnp.float32, -wibble, wibble)
    grid = grid.at[half::step, half::step].set(total / 4 + wibble * noise)
    centres, corners = grid[half::step, half::step], grid[0::step, 0::step]
    left = centres + jnp.roll(centres, 1, axis=0) + corners + jnp.roll(corners, -1, axis=1)
    noise = jax.random.uniform(k_left, left.shape, jnp.float32, -wibble, wibble)
    grid = grid.at[0::step, half::step].set(left / 4 + wibble * noise)
    top = centres + jnp.roll(centres, 1, axis=1) + corners + jnp.roll(corners, -1, axis=0)
    noise = jax.random.uniform(k_top, top.shape, jnp.float32, -wibble, wibble)
    grid = grid.at[half::step, 0::step].set(top / 4 + wibble * noise)
    step //= 2
    wibble /= wibble_decay
  grid = grid - grid.min()
  return grid / grid.max()


def _bilinear_sample(image: jax.Array, rows: jax.Array, cols: jax.Array,
                     fold: Callable[[jax.Array, int], jax.Array]) -> jax.Array:
  """image (H, W, C) at float (rows, cols) (H, W) by bilinear interpolation; `fold` maps
  integer indices inside the image."""
  height, width = image.shape[:2]
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  wr, wc = (rows - row0)[..., None], (cols - col0)[..., None]
  row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)
  r0, r1 = fold(row0, height), fold(row0 + 1, height)
  c0, c1 = fold(col0, width), fold(col0 + 1, width)
  return ((1 - wr) * ((1 - wc) * image[r0, c0] + wc * image[r0, c1])
          + wr * ((1 - wc) * image[r1, c0] + wc * image[r1, c1]))


def _reflect101(index: jax.Array, size: int) -> jax.Array:
  if size == 1:
    return jnp.zeros_like(index)
  index = jnp.mod(index, 2 * size - 2)
  return jnp.where(index >= size, 2 * size - 2 - index, index)


def _clamp(index: jax.Array, size: int) -> jax.Array:
  return jnp.clip(index, 0, size - 1)


def _reflect_coordinate(coordinate: jax.Array, size: int) -> jax.Array:
  """scipy map_coordinates' mode='reflect' for a float coordinate: mirrored about -0.5
  and size - 0.5, into [-0.5, size - 0.5]."""
  period = jnp.mod(coordinate + 0.5, 2 * size)
  return jnp.where(period > size, 2 * size - period, period) - 0.5


# --------------------------------------------------------------------------
# The corruptions of one image x (H, W, C) float32 in [0, 255] with its key. `c` is the
# severity's constants (a float32 array row where the severity is traced) and
# `where` = (table name, severity: an int or a traced int32).

def _per_severity(where, corruption: str, build: Callable) -> jax.Array:
  """build(constants of the severity), for a traced severity as a stack over the five
  severities indexed by it (host-built arrays of one shape)."""
  table, severity = where
  constants = CONSTANTS[table][corruption]
  if isinstance(severity, int):
    return jnp.asarray(build(constants[severity - 1]))
  return jnp.asarray(np.stack([build(c) for c in constants]))[severity - 1]


def _max_radius(where, corruption: str, column: int) -> int:
  return int(max(c[column] for c in CONSTANTS[where[0]][corruption]))

def _gaussian_noise(x, key, c, _):
  x = x / 255
  return jnp.clip(x + c * jax.random.normal(key, x.shape), 0, 1) * 255


@functools.lru_cache(maxsize=None)
def poisson_cdf_table(rate_scale: float, length: int) -> np.ndarray:
  """(256, length) float32: row v the CDF P(K <= k), k < length, of Poisson(v / 255 *
  rate_scale), its last entry set to 1 (length reaches far beyond the mean)."""
  rates = np.arange(256) / 255 * rate_scale
  ks = np.arange(length)
  log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, length)))])
  with np.errstate(divide="ignore", invalid="ignore"):
    log_pmf = ks[None, :] * np.log(rates[:, None]) - rates[:, None] - log_factorial[None, :]
  log_pmf[0] = np.where(ks == 0, 0.0, -np.inf)
  cdf = np.cumsum(np.exp(log_pmf), axis=1)
  cdf[:, -1] = 1.0
  return cdf.astype(np.float32)


def _poisson_table_length(rate_scale: float) -> int:
  return int(rate_scale + 12 * np.sqrt(rate_scale) + 30)


BIN_MANTISSA_BITS = 6       # uniform_bins: mantissa bits kept of min(u, 1 - u)
_SMALLEST_BIN_BITS = (127 - 23) << BIN_MANTISSA_BITS      # 2^-23, jax's finest uniform step
_HALF_BIN_BITS = 126 << BIN_MANTISSA_BITS                 # 1/2


def uniform_bins(u: jax.Array) -> jax.Array:
  """int32 bins of float32 u in [0, 1), increasing with u: the exponent and top
  BIN_MANTISSA_BITS mantissa bits of min(u, 1 - u) (exact in float32), mirrored for
  u >= 1/2; fine near 0 and 1 where a CDF's steps crowd. Assumes u a multiple of 2^-23,
  as jax.random.uniform's float32 draws are."""
  lower = u < 0.5
  nearer = jnp.where(lower, u, 1 - u)
  bits = jax.lax.shift_right_logical(jax.lax.bitcast_convert_type(nearer, jnp.int32),
                                     23 - BIN_MANTISSA_BITS)
  bits = jnp.maximum(bits - _SMALLEST_BIN_BITS + 1, 0)
  top = _HALF_BIN_BITS - _SMALLEST_BIN_BITS + 1
  return jnp.where(lower, bits, 2 * top - bits)


@functools.lru_cache(maxsize=None)
def uniform_bin_bounds() -> tuple[np.ndarray, np.ndarray]:
  """The least and greatest float32 multiple of 2^-23 in [0, 1) of each `uniform_bins`
  bin ((num_bins,) each; 2 for a bin no draw falls in)."""
  draws = np.arange(2 ** 23, dtype=np.float32) * np.float32(2.0 ** -23)
  with jax.ensure_compile_time_eval():      # the device's own arithmetic, also while tracing
    bins = np.asarray(jax.jit(uniform_bins)(jnp.asarray(draws)))
  least, greatest = np.full(bins[-1] + 1, 2.0, np.float32), np.full(bins[-1] + 1, 2.0, np.float32)
  starts = np.flatnonzero(np.diff(bins, prepend=-1))
  least[bins[starts]] = draws[starts]
  greatest[bins[starts]] = draws[np.append(starts[1:], len(draws)) - 1]
  return least, greatest


@functools.lru_cache(maxsize=None)
def poisson_guide_table(rate_scale: float, length: int) -> np.ndarray:
  """(256, num_bins) int32 for `poisson_cdf_table`: per level and `uniform_bins` bin, the
  least and greatest count #{k: CDF(k) < u} over the bin's u, packed as least << 16 |
  greatest."""
  cdf = poisson_cdf_table(rate_scale, length)
  least, greatest = uniform_bin_bounds()
  low = np.stack([np.searchsorted(row, least, "left") for row in cdf])
  high = np.stack([np.searchsorted(row, greatest, "left") for row in cdf])
  return ((low << 16) | high).astype(np.int32)


def _shot_noise(x, key, c, where):
  """Poisson(level / 255 * c) / c per value, the level the value rounded to 0..255 (the
  scripts see uint8 images): sampled exactly by inverting the CDF of each of the 256
  rates (host-built tables): `poisson_guide_table` narrows the count from u's bin, a
  binary search on the CDF finishes it; far faster than jax.random.poisson here."""
  length = max(_poisson_table_length(k) for k in CONSTANTS[where[0]]["shot_noise"])
  table = _per_severity(where, "shot_noise", lambda k: poisson_cdf_table(float(k), length))
  guides = [poisson_guide_table(float(k), length) for k in CONSTANTS[where[0]]["shot_noise"]]
  widest = max(int(((g & 0xFFFF) - (g >> 16)).max()) for g in guides)
  guide = _per_severity(where, "shot_noise", lambda k: poisson_guide_table(float(k), length))
  levels = _round_uint8(x).astype(jnp.int32)
  uniform = jax.random.uniform(key, x.shape)
  packed = guide[levels, uniform_bins(uniform)]
  low, high = jnp.right_shift(packed, 16), jnp.bitwise_and(packed, 0xFFFF)
  for _ in range(int(np.ceil(np.log2(widest + 1)))):
    middle = (low + high) // 2
    below = table[levels, middle] < uniform
    low, high = jnp.where(below, middle + 1, low), jnp.where(below, high, middle)
  return jnp.clip(low.astype(jnp.float32) / c, 0, 1) * 255


def _impulse_noise(x, key, c, _):
  """skimage.util.random_noise(mode='s&p', amount=c): each value independently replaced
  with probability c, by 1 or 0 with even odds."""
  k_flip, k_salt = jax.random.split(key)
  flipped = jax.random.uniform(k_flip, x.shape) < c
  salt = jax.random.uniform(k_salt, x.shape) < 0.5
  return jnp.where(flipped, jnp.where(salt, 255.0, 0.0), x)


@functools.lru_cache(maxsize=None)
def filter2d_operators(radius: float, alias_blur: float, height: int,
                       width: int) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV's filter2D with `disk_kernel` (reflect-101 border) as row gathers and column
  matrices: out[h] = sum_a x[rows[a, h]] @ columns[a].T, rows (K, H) int32, columns
  (K, W, W) float32 (each holds kernel row a with the border folded in)."""
  kernel = disk_kernel(radius, alias_blur).astype(np.float64)
  size = kernel.shape[0]
  half = size // 2
  rows = _fold(np.arange(height)[None, :] + np.arange(size)[:, None] - half, height,
               "reflect101").astype(np.int32)
  columns = np.zeros((size, width, width))
  outputs = np.arange(width)
  for tap in range(size):
    source = _fold(outputs + tap - half, width, "reflect101")
    for a in range(size):
      np.add.at(columns[a], (outputs, source), kernel[a, tap])
  return rows, columns.astype(np.float32)


DENSE_FILTER_MAX_PIXELS = 4096     # up to 64 x 64: defocus as one (HW, HW) matrix product


@functools.lru_cache(maxsize=None)
def filter2d_matrix(radius: float, alias_blur: float, height: int, width: int) -> np.ndarray:
  """`filter2d_operators` as one (H W, H W) float32 matrix on the flattened image."""
  rows, columns = filter2d_operators(radius, alias_blur, height, width)
  matrix = np.zeros((height * width, height * width))
  for a in range(rows.shape[0]):
    selection = np.zeros((height, height))
    selection[np.arange(height), rows[a]] = 1.0
    matrix += np.kron(selection, columns[a])
  return matrix.astype(np.float32)


def _defocus_blur(x, key, c, _):
  del key
  height, width, channels = x.shape
  x = x / 255
  if height * width <= DENSE_FILTER_MAX_PIXELS:
    matrix = filter2d_matrix(float(c[0]), float(c[1]), height, width)
    out = (jnp.asarray(matrix) @ x.reshape(height * width, channels)).reshape(x.shape)
  else:
    rows, columns = filter2d_operators(float(c[0]), float(c[1]), height, width)
    out = jnp.einsum("khvc,kwv->hwc", x[jnp.asarray(rows)], jnp.asarray(columns))
  return jnp.clip(out, 0, 1) * 255


def _glass_blur(x, key, c, where):
  """Blur, truncate to uint8, then `iterations` scans over the pixels (h from H - d down
  to d + 1, w likewise inside) each copying the pixel (h + dy, w + dx), dx and dy uniform
  integers in [-d, d), onto (h, w) in turn; blur again. The severity is static: the
  scans run a row at a time (`_glass_row`), on the first of the shifts the scripts'
  order draws (rows (dx, dy) of a (H W max(iterations), 2) draw)."""
  delta, iterations = int(c[1]), int(c[2])
  height, width = x.shape[:2]
  blur_rows = gaussian_matrix(height, c[0], 4.0, "nearest")
  blur_cols = gaussian_matrix(width, c[0], 4.0, "nearest")
  x = jnp.floor(_separable(x / 255, blur_rows, blur_cols) * 255)
  inner_rows, inner_cols = height - 2 * delta, width - 2 * delta
  if inner_rows > 0 and inner_cols > 0:
    # Drawn as the first rows of the (H W max(iterations), 2) draw: the same numbers.
    shifts = jax.random.randint(key, (iterations * inner_rows * inner_cols, 2), -delta, delta)
    shifts = shifts.reshape(iterations * inner_rows, inner_cols, 2)
    x = jax.lax.fori_loop(
        0, iterations * inner_rows,
        lambda step, image: _glass_row(image, step % inner_rows, shifts[step], delta), x)
  return jnp.clip(_separable(x / 255, blur_rows, blur_cols), 0, 1) * 255


def _glass_row(image: jax.Array, row: jax.Array, shifts: jax.Array, delta: int) -> jax.Array:
  """One row of a glass-blur scan: h = H - delta - row, w = W - delta - j for j = 0, 1, ...
  (shifts (W - 2 delta, 2), (dx, dy) per j) each taking the pixel (h + dy, w + dx) in
  turn. A source in another row, or at w or left of it, is still the image's; one right
  of w in the row (inside) was set before, so the copies follow those links (pointer
  doubling) to a pixel of the first kind."""
  height, width = image.shape[:2]
  count = shifts.shape[0]
  h = height - delta - row
  offsets = jnp.arange(count)
  dx, dy = shifts[:, 0], shifts[:, 1]
  cols = width - delta - offsets
  taken = image[h + dy, cols + dx]                     # (count, C)
  linked = (dy == 0) & (dx > 0) & (cols + dx <= width - delta)
  source = jnp.where(linked, offsets - dx, offsets)
  for _ in range(max(int(np.ceil(np.log2(count))), 0)):
    source = source[source]
  return jax.lax.dynamic_update_slice(image, taken[source][None, ::-1], (h, delta + 1, 0))


def _motion_blur(x, key, c, where):
  angle = jax.random.uniform(key, (), jnp.float32, -45, 45)
  return jnp.clip(motion_blur_image(x, c[0], c[1], angle,
                                    _max_radius(where, "motion_blur", 0)), 0, 255)


def _zoom_factors(c) -> np.ndarray:
  return np.arange(1, c[0], c[1])


@functools.lru_cache(maxsize=None)
def zoom_blur_matrix(height: int, width: int, factors: tuple[float, ...]) -> np.ndarray:
  """(H W, H W) float32 on the flattened image: the identity plus the clipped zoom
  (`clipped_zoom_matrix` along both axes) by each factor."""
  matrix = np.eye(height * width)
  for factor in factors:
    matrix += np.kron(clipped_zoom_matrix(height, factor).astype(np.float64),
                      clipped_zoom_matrix(width, factor).astype(np.float64))
  return matrix.astype(np.float32)


def _zoom_blur(x, key, c, _):
  del key
  height, width, channels = x.shape
  factors = tuple(float(factor) for factor in _zoom_factors(c))
  x = x / 255
  if height * width <= DENSE_FILTER_MAX_PIXELS:
    matrix = jnp.asarray(zoom_blur_matrix(height, width, factors))
    out = (matrix @ x.reshape(height * width, channels)).reshape(x.shape)
  else:
    out = x
    for factor in factors:
      out = out + _separable(x, clipped_zoom_matrix(height, factor),
                             clipped_zoom_matrix(width, factor))
  return jnp.clip(out / (len(factors) + 1), 0, 1) * 255


def _snow(x, key, c, where):
  mean, std, _, threshold, radius, sigma, weight = (c[i] for i in range(7))
  height, width = x.shape[:2]
  k_layer, k_angle = jax.random.split(key)
  x = x / 255
  layer = mean + std * jax.random.normal(k_layer, (height, width))
  layer = _separable(layer,
                     _per_severity(where, "snow", lambda k: clipped_zoom_matrix(height, k[2])),
                     _per_severity(where, "snow", lambda k: clipped_zoom_matrix(width, k[2])))
  layer = jnp.clip(jnp.where(layer < threshold, 0.0, layer), 0, 1)
  layer = jnp.floor(layer * 255)
  angle = jax.random.uniform(k_angle, (), jnp.float32, -135, -45)
  layer = motion_blur_image(layer, radius, sigma, angle, _max_radius(where, "snow", 4),
                            as_loop=True)
  layer = jnp.round(layer)[..., None] / 255
  x = weight * x + (1 - weight) * jnp.maximum(x, _gray(x) * 1.5 + 0.5)
  return jnp.clip(x + layer + layer[::-1, ::-1], 0, 1) * 255


def _frost(x, key, c, where):
  table = where[0]
  height, width, channels = x.shape
  bank, sizes = frost_bank(CONSTANTS[table]["frost_scale"], height, width)
  k_pick, k_row, k_col = jax.random.split(key, 3)
  pick = jax.random.randint(k_pick, (), 0, len(sizes))
  size = jnp.asarray(sizes)[pick]
  row = jax.random.randint(k_row, (), 0, size[0] - height)
  col = jax.random.randint(k_col, (), 0, size[1] - width)
  frost = jax.lax.dynamic_slice(jnp.asarray(bank), (pick, row, col, 0),
                                (1, height, width, 3))[0].astype(jnp.float32)
  if channels == 1:
    frost = jnp.tensordot(frost, jnp.asarray(FROST_GRAY_WEIGHTS, jnp.float32), axes=1)[..., None]
  return jnp.clip(c[0] * x + c[1] * frost, 0, 255)


def _fog(x, key, c, _):
  height, width = x.shape[:2]
  size = 1 << (max(height, width) - 1).bit_length()
  x = x / 255
  peak = x.max()
  x = x + c[0] * plasma_fractal(key, size, c[1])[:height, :width, None]
  return jnp.clip(x * peak / (peak + c[0]), 0, 1) * 255


def _brightness(x, key, c, _):
  """HSV value + c (clipped), hue and saturation kept: every channel scales by
  value' / value (a black pixel becomes grey value')."""
  del key
  x = x / 255
  value = x.max(axis=-1, keepdims=True)
  brighter = jnp.clip(value + c, 0, 1)
  out = jnp.where(value > 0, x * brighter / jnp.maximum(value, 1e-12), brighter)
  return jnp.clip(out, 0, 1) * 255


def _contrast(x, key, c, _):
  del key
  x = x / 255
  means = x.mean(axis=(0, 1), keepdims=True)
  return jnp.clip((x - means) * c + means, 0, 1) * 255


def _elastic_transform(x, key, c, where):
  alpha, jitter = c[0], c[2]
  height, width = x.shape[:2]
  k_affine, k_dx, k_dy = jax.random.split(key, 3)
  x = x / 255
  centre = np.array([height // 2, width // 2], np.float64)
  square = min(height, width) // 3
  source = np.array([centre + square, [centre[0] + square, centre[1] - square],
                     centre - square], np.float64)
  target = jnp.asarray(source, jnp.float32) + jax.random.uniform(k_affine, (3, 2), jnp.float32,
                                                                -jitter, jitter)
  # OpenCV's getAffineTransform maps the points (as (x, y)) source -> target; warpAffine
  # samples the source at the inverse map of each output pixel.
  # (Closed forms: batched solves are slow on CPU.)
  design = np.concatenate([source, np.ones((3, 1))], axis=1)
  forward = (jnp.asarray(np.linalg.inv(design), jnp.float32) @ target).T      # (2, 3)
  (a, b), (c, d) = forward[0, :2], forward[1, :2]
  linear_inverse = jnp.stack([jnp.stack([d, -b]), jnp.stack([-c, a])]) / (a * d - b * c)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  points = jnp.stack([cols - forward[0, 2], rows - forward[1, 2]], axis=-1)
  source_xy = points @ linear_inverse.T
  x = _bilinear_sample(x, source_xy[..., 1], source_xy[..., 0], _reflect101)
  blur_rows = _per_severity(where, "elastic_transform",
                            lambda k: gaussian_matrix(height, float(k[1]), 3.0, "reflect"))
  blur_cols = _per_severity(where, "elastic_transform",
                            lambda k: gaussian_matrix(width, float(k[1]), 3.0, "reflect"))
  dx = _separable(jax.random.uniform(k_dx, (height, width), jnp.float32, -1, 1), blur_rows,
                  blur_cols) * alpha
  dy = _separable(jax.random.uniform(k_dy, (height, width), jnp.float32, -1, 1), blur_rows,
                  blur_cols) * alpha
  sample_rows = _reflect_coordinate(rows + dy, height)
  sample_cols = _reflect_coordinate(cols + dx, width)
  out = _bilinear_sample(x, sample_rows, sample_cols, _clamp)
  return jnp.clip(out, 0, 1) * 255


def _round_uint8(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.floor(x + 0.5), 0, 255)


def _pixelate(x, key, c, _):
  """Pillow's BOX resize to (int(W c), int(H c)) and back, each pass (horizontal, then
  vertical) rounded to uint8 as Pillow's 8-bit resampling does."""
  del key
  height, width = x.shape[:2]
  small_h, small_w = int(height * c), int(width * c)
  x = _round_uint8(x)
  for (rows_in, rows_out), (cols_in, cols_out) in (((height, small_h), (width, small_w)),
                                                   ((small_h, height), (small_w, width))):
    x = _round_uint8(jnp.einsum("hwc,jw->hjc", x, jnp.asarray(pil_box_matrix(cols_in,
                                                                             cols_out))))
    x = _round_uint8(jnp.einsum("ih,hwc->iwc", jnp.asarray(pil_box_matrix(rows_in, rows_out)),
                                x))
  return x


def _jpeg_compression(x, key, c, where):
  del key, c
  return jpeg_tables_image(
      x, _per_severity(where, "jpeg_compression", lambda q: jpeg_quality_table(JPEG_LUMINANCE, q)),
      _per_severity(where, "jpeg_compression",
                    lambda q: jpeg_quality_table(JPEG_CHROMINANCE, q)), "4:2:0")


CORRUPTION_FUNCTIONS = {name: globals()[f"_{name}"] for name in CORRUPTIONS}


# --------------------------------------------------------------------------
# JPEG.

def jpeg_quality_table(base: np.ndarray, quality: int) -> np.ndarray:
  """libjpeg's jpeg_quality_scaling of a base table (as Pillow's encoder applies it,
  baseline: entries clamped to [1, 255])."""
  quality = min(max(int(quality), 1), 100)
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return np.clip((base * scale + 50) // 100, 1, 255)


# libjpeg's integer ("islow") DCT: Loeffler-Ligtenberg-Moschytz with 13-bit constants.
_FIX = {"0_298": 2446, "0_390": 3196, "0_541": 4433, "0_765": 6270, "0_899": 7373,
        "1_175": 9633, "1_501": 12299, "1_847": 15137, "1_961": 16069, "2_053": 16819,
        "2_562": 20995, "3_072": 25172}
_CONST_BITS, _PASS1_BITS = 13, 2


def _descale(value: jax.Array, bits: int) -> jax.Array:
  return jnp.right_shift(value + (1 << (bits - 1)), bits)


def _odd_part(v0, v1, v2, v3):
  """The rotations shared by the forward and inverse odd parts (LL&M figure 8): for the
  inputs (i0, i1, i2, i3) the four products tmp + z of libjpeg's jfdctint/jidctint."""
  z5 = (v0 + v1 + v2 + v3) * _FIX["1_175"]
  z1 = (v0 + v3) * -_FIX["0_899"]
  z2 = (v1 + v2) * -_FIX["2_562"]
  z3 = (v0 + v2) * -_FIX["1_961"] + z5
  z4 = (v1 + v3) * -_FIX["0_390"] + z5
  return (v0 * _FIX["0_298"] + z1 + z3, v1 * _FIX["2_053"] + z2 + z4,
          v2 * _FIX["3_072"] + z2 + z3, v3 * _FIX["1_501"] + z1 + z4)


def _fdct_pass(d: jax.Array, first: bool) -> jax.Array:
  """One 1-D pass of jpeg_fdct_islow along the last axis (int32 (..., 8))."""
  d = [d[..., i] for i in range(8)]
  t0, t7, t1, t6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
  t2, t5, t3, t4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS
  if first:
    o0, o4 = jnp.left_shift(t10 + t11, _PASS1_BITS), jnp.left_shift(t10 - t11, _PASS1_BITS)
  else:
    o0, o4 = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS)
  z1 = (t12 + t13) * _FIX["0_541"]
  o2 = _descale(z1 + t13 * _FIX["0_765"], shift)
  o6 = _descale(z1 - t12 * _FIX["1_847"], shift)
  o7, o5, o3, o1 = (_descale(v, shift) for v in _odd_part(t4, t5, t6, t7))
  return jnp.stack([o0, o1, o2, o3, o4, o5, o6, o7], axis=-1)


def _idct_pass(c: jax.Array, first: bool) -> jax.Array:
  """One 1-D pass of jpeg_idct_islow along the last axis (int32 (..., 8))."""
  c = [c[..., i] for i in range(8)]
  z1 = (c[2] + c[6]) * _FIX["0_541"]
  tmp2, tmp3 = z1 - c[6] * _FIX["1_847"], z1 + c[2] * _FIX["0_765"]
  tmp0 = jnp.left_shift(c[0] + c[4], _CONST_BITS)
  tmp1 = jnp.left_shift(c[0] - c[4], _CONST_BITS)
  t10, t13, t11, t12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
  o0, o1, o2, o3 = _odd_part(c[7], c[5], c[3], c[1])
  shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
  out = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
  return jnp.stack([_descale(v, shift) for v in out], axis=-1)


def _code_plane(plane: jax.Array, table: jax.Array) -> jax.Array:
  """One component plane (H, W) of integer levels, H and W multiples of 8, through
  libjpeg's coding: level shift -128, jpeg_fdct_islow (rows, then columns), quantisation
  (|x| + 4q) // 8q with the sign kept, dequantisation, jpeg_idct_islow (columns, then
  rows), +128 clipped to [0, 255]."""
  height, width = plane.shape
  blocks = plane.astype(jnp.int32).reshape(height // 8, 8, width // 8, 8).transpose(0, 2, 1, 3)
  blocks = blocks - 128
  coefficients = _fdct_pass(_fdct_pass(blocks, True).swapaxes(-1, -2), False).swapaxes(-1, -2)
  table = jnp.asarray(table, jnp.int32)
  divisor = 8 * table
  quantised = jnp.sign(coefficients) * ((jnp.abs(coefficients) + divisor // 2) // divisor)
  dequantised = quantised * table
  columns = _idct_pass(dequantised.swapaxes(-1, -2), True).swapaxes(-1, -2)
  decoded = _idct_pass(columns, False) + 128
  decoded = jnp.clip(decoded, 0, 255).astype(jnp.float32)
  return decoded.transpose(0, 2, 1, 3).reshape(height, width)


def _pad_to(plane: jax.Array, multiple: int) -> jax.Array:
  height, width = plane.shape
  return jnp.pad(plane, ((0, -height % multiple), (0, -width % multiple)), mode="edge")


def _downsample_h2v2(plane: jax.Array) -> jax.Array:
  """libjpeg's h2v2_downsample of an int32 (2h, 2w) plane: (sum of 2x2 + bias) >> 2,
  the bias alternating 1, 2 along each output row."""
  height, width = plane.shape
  sums = plane.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3))
  bias = 1 + (jnp.arange(width // 2) % 2)
  return jnp.right_shift(sums + bias[None, :], 2)


def _fancy_upsample(plane: jax.Array) -> jax.Array:
  """libjpeg's h2v2_fancy_upsample of an int32 (h, w) chroma plane to (2h, 2w):
  column sums 3 * nearer row + farther row, then (3 * nearer sum + farther sum + 8 or 7)
  >> 4 for the left or right output pixel, edges repeated."""
  padded = jnp.pad(plane, 1, mode="edge")
  centre = padded[1:-1]
  above, below = 3 * centre + padded[:-2], 3 * centre + padded[2:]
  rows = jnp.stack([above, below], axis=1).reshape(-1, padded.shape[1])
  left = jnp.right_shift(3 * rows[:, 1:-1] + rows[:, :-2] + 8, 4)
  right = jnp.right_shift(3 * rows[:, 1:-1] + rows[:, 2:] + 7, 4)
  return jnp.stack([left, right], axis=2).reshape(rows.shape[0], -1)


def _fix16(value: float) -> int:
  return int(value * 65536 + 0.5)


def _rgb_to_ycc(r, g, b):
  """libjpeg's jccolor.c RGB -> YCbCr in 16-bit fixed point (int32 planes)."""
  half, offset = 1 << 15, 128 << 16
  y = jnp.right_shift(_fix16(0.299) * r + _fix16(0.587) * g + _fix16(0.114) * b + half, 16)
  cb = jnp.right_shift(-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b
                       + offset + half - 1, 16)
  cr = jnp.right_shift(_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b
                       + offset + half - 1, 16)
  return y, cb, cr


def _ycc_to_rgb(y, cb, cr):
  """libjpeg's jdcolor.c YCbCr -> RGB in 16-bit fixed point, clipped to [0, 255]."""
  half = 1 << 15
  cb, cr = cb - 128, cr - 128
  r = y + jnp.right_shift(_fix16(1.402) * cr + half, 16)
  g = y + jnp.right_shift(-_fix16(0.34414) * cb + half - _fix16(0.71414) * cr, 16)
  b = y + jnp.right_shift(_fix16(1.772) * cb + half, 16)
  return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255)


def jpeg_image(x: jax.Array, quality: int, subsampling: str = "4:2:0") -> jax.Array:
  """One image (H, W, C) in [0, 255] (rounded to integer levels first) through a JPEG
  encode and decode at `quality` as libjpeg(-turbo) does them with its default integer
  DCT: JFIF YCbCr in libjpeg's fixed point (C = 3; C = 1 is coded as luminance alone),
  chroma at full resolution ('4:4:4') or 2x2-averaged and restored by libjpeg's fancy
  upsampling ('4:2:0', Pillow's default), 8x8 blocks (edges repeated to fill them)
  quantised with the standard tables scaled by libjpeg's quality formula (Pillow's
  encoder). Entropy coding is lossless and skipped. Returns float32 integer levels."""
  return jpeg_tables_image(x, jpeg_quality_table(JPEG_LUMINANCE, quality),
                           jpeg_quality_table(JPEG_CHROMINANCE, quality), subsampling)


def jpeg_tables_image(x: jax.Array, luminance: jax.Array, chrominance: jax.Array,
                      subsampling: str) -> jax.Array:
  """`jpeg_image` with the (8, 8) quantisation tables given (they may be traced)."""
  height, width, channels = x.shape
  x = _round_uint8(x).astype(jnp.int32)
  if channels == 1:
    return _code_plane(_pad_to(x[..., 0], 8), luminance)[:height, :width, None]
  y, cb, cr = _rgb_to_ycc(x[..., 0], x[..., 1], x[..., 2])
  if subsampling == "4:4:4":
    planes = [_code_plane(_pad_to(p, 8), t)[:height, :width]
              for p, t in ((y, luminance), (cb, chrominance), (cr, chrominance))]
  elif subsampling == "4:2:0":
    planes = [_code_plane(_pad_to(y, 16), luminance)[:height, :width]]
    for plane in (cb, cr):
      small = _code_plane(_downsample_h2v2(_pad_to(plane, 16)), chrominance)
      planes.append(_fancy_upsample(small.astype(jnp.int32))[:height, :width])
  else:
    raise ValueError(f"subsampling={subsampling!r}: choose '4:4:4' or '4:2:0'")
  y, cb, cr = (p.astype(jnp.int32) for p in planes)
  return _ycc_to_rgb(y, cb, cr).astype(jnp.float32)


def jpeg(images: jax.Array, quality: int, subsampling: str = "4:2:0") -> jax.Array:
  """`jpeg_image` over a batch (B, H, W, C), jitted per (quality, subsampling, shape)."""
  return _jitted_jpeg(int(quality), subsampling)(images)


@functools.lru_cache(maxsize=None)
def _jitted_jpeg(quality: int, subsampling: str):
  return jax.jit(jax.vmap(lambda x: jpeg_image(x.astype(jnp.float32), quality, subsampling)))


# --------------------------------------------------------------------------
# The batch functions.

# Corruptions whose array shapes do not depend on the severity: one compilation serves the
# five severities (their constants are indexed by a traced severity).
TRACED_SEVERITY = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur",
                             "snow", "frost", "fog", "brightness", "contrast",
                             "elastic_transform", "jpeg_compression"})


@functools.lru_cache(maxsize=None)
def _jitted(corruption: str, table: str, static_severity: int | None):
  one_image = CORRUPTION_FUNCTIONS[corruption]

  def batch(images, seed, indices, severity):
    if static_severity is None:
      constant = jnp.asarray(np.asarray(CONSTANTS[table][corruption], np.float32))[severity - 1]
    else:
      severity = static_severity
      constant = CONSTANTS[table][corruption][severity - 1]
    keys = jax.vmap(lambda i: corruption_key(seed, corruption, severity, i))(indices)
    out = jax.vmap(lambda x, k: one_image(x, k, constant, (table, severity)))(
        images.astype(jnp.float32), keys)
    return jnp.clip(out, 0, 255).astype(jnp.float32)

  return jax.jit(batch)


def corruption_fn(corruption: str, severity: int, table: str):
  """The jitted fn(images (B, H, W, C) uint8 or float in [0, 255], seed int, indices (B,)
  int) -> float32 (B, H, W, C) in [0, 255] of one corruption at one severity with the
  constants `table` (compiled once per corruption, table and shape, and per severity
  for the corruptions outside TRACED_SEVERITY)."""
  if corruption not in CORRUPTIONS:
    raise ValueError(f"corruption={corruption!r}: choose among {', '.join(CORRUPTIONS)}")
  if severity not in SEVERITIES:
    raise ValueError(f"severity={severity}: choose 1..5")
  if corruption in TRACED_SEVERITY:
    fn = _jitted(corruption, table, None)
    return lambda images, seed, indices: fn(images, seed, indices, jnp.int32(severity))
  fn = _jitted(corruption, table, severity)
  return lambda images, seed, indices: fn(images, seed, indices, jnp.int32(0))


def corrupt(images, corruption: str, severity: int, *, seed: int = 0, indices=None,
            constants: str | None = None) -> jax.Array:
  """`corruption` at `severity` (1..5) of images (B, H, W, C), C = 1 or 3, uint8 or float
  in [0, 255]: float32 (B, H, W, C) in [0, 255]. indices (B,) int: the images' positions
  in their split (default 0..B-1), which with `seed` key their random draws; constants:
  'cifar', 'imagenet' or None (by image size, see `constants_name`)."""
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images of shape {images.shape}: expected (B, H, W, 1 or 3)")
  table = constants_name(constants, images.shape[1], images.shape[2])
  if indices is None:
    indices = np.arange(images.shape[0])
  indices = jnp.asarray(indices, jnp.int32)
  return corruption_fn(corruption, int(severity), table)(images, jnp.int32(seed), indices)


def psnr(a, b, axis=(-3, -2, -1)) -> np.ndarray:
  """Peak signal-to-noise ratio (dB, peak 255) between images in [0, 255], over `axis`
  (per image by default); inf where they are equal."""
  error = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=axis)
  with np.errstate(divide="ignore"):
    return 10 * np.log10(255.0 ** 2 / error)

