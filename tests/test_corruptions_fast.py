"""The fast formulations of effcv_jax/robustness/corruptions.py against the direct ones
they replace: motion blur as windows of the padded image (against per-tap clipped row and
column indexing), glass blur a row at a time (against the scripts' pixel-by-pixel copies
in NumPy), shot noise through the guide tables (against counting the CDF entries below
each uniform), zoom blur as one matrix (against the sum of separable zooms).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effcv_jax.robustness import corruptions as C


@pytest.fixture(scope="module")
def images() -> np.ndarray:
  """Three uint8 (32, 32, 3) images: smooth ramps plus noise, so that every shift shows."""
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 200, 32)
  base = ramp[:, None, None] * 0.6 + ramp[None, :, None] * 0.4
  return np.clip(base + rng.uniform(0, 55, (3, 32, 32, 3)), 0, 255).astype(np.uint8)


def clipped_shift_motion_blur(image, radius, sigma, angle_degrees):
  """The direct formulation: per tap, rows and columns shifted with indices clipped."""
  image = np.asarray(image, np.float64)
  height, width = image.shape[:2]
  taps = np.arange(2 * radius + 1)
  weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
  weights /= weights.sum()
  angle = np.deg2rad(np.float32(angle_degrees))
  out = np.zeros_like(image)
  for i in taps:
    dy = -int(np.ceil(np.float32(i) * np.sin(angle, dtype=np.float32) - 0.5))
    dx = -int(np.ceil(np.float32(i) * np.cos(angle, dtype=np.float32) - 0.5))
    if abs(dy) >= height or abs(dx) >= width:
      break
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    out += weights[i] * image[rows][:, cols]
  return out


@pytest.mark.parametrize("as_loop", [False, True])
def test_motion_blur_windows_equal_clipped_shifts(images, as_loop):
  # Radius 20 on 12 px: shifts reach past the image and stop the sum.
  for image, radius, sigma, angle in ((images[0], 6, 2.0, 30.0), (images[1], 9, 2.5, -40.0),
                                      (images[2][:12, :12], 20, 15.0, -100.0),
                                      (images[0][..., 0], 12, 8.0, -60.0)):
    ours = C.motion_blur_image(jnp.asarray(image, jnp.float32), radius, sigma,
                               jnp.float32(angle), max_radius=20, as_loop=as_loop)
    np.testing.assert_allclose(np.asarray(ours),
                               clipped_shift_motion_blur(image, radius, sigma, angle),
                               atol=1e-3, err_msg=f"radius {radius} angle {angle}")


def pixel_by_pixel_glass_blur(image, key, sigma, delta, iterations, most_iterations):
  """The scripts' order: blur, truncate, copy pixel by pixel from the shifts drawn as
  (H W most_iterations, 2), blur again (the blurs as the module's own)."""
  height, width = image.shape[:2]
  rows = C.gaussian_matrix(height, sigma, 4.0, "nearest")
  cols = C.gaussian_matrix(width, sigma, 4.0, "nearest")
  x = np.floor(np.asarray(C._separable(jnp.asarray(image, jnp.float32) / 255, rows, cols))
               * 255)
  shifts = np.asarray(jax.random.randint(key, (height * width * most_iterations, 2),
                                         -jnp.int32(delta), jnp.int32(delta)))
  copy = 0
  for _ in range(iterations):
    for h in range(height - delta, delta, -1):
      for w in range(width - delta, delta, -1):
        dx, dy = shifts[copy]
        x[h, w] = x[h + dy, w + dx]
        copy += 1
  return np.clip(np.asarray(C._separable(jnp.asarray(x) / 255, rows, cols)), 0, 1) * 255


@pytest.mark.parametrize("table,severity", [("imagenet", 3), ("imagenet", 5), ("cifar", 4)])
def test_glass_blur_by_rows_equals_pixel_by_pixel_copies(images, table, severity):
  sigma, delta, iterations = C.CONSTANTS[table]["glass_blur"][severity - 1]
  most = max(int(k[2]) for k in C.CONSTANTS[table]["glass_blur"])
  ours = np.asarray(C.corrupt(images[:2], "glass_blur", severity, constants=table,
                              indices=[7, 8]))
  for i, index in enumerate((7, 8)):
    key = C.corruption_key(0, "glass_blur", severity, index)
    expected = pixel_by_pixel_glass_blur(images[i], key, sigma, delta, iterations, most)
    np.testing.assert_allclose(ours[i], expected, atol=1e-3)


def test_uniform_bins_hold_their_draws():
  least, greatest = C.uniform_bin_bounds()
  draws = np.concatenate([np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (100_000,))),
                          np.float32([0, 2.0 ** -23, 0.5 - 2.0 ** -23, 0.5, 1 - 2.0 ** -23])])
  bins = np.asarray(C.uniform_bins(jnp.asarray(draws)))
  assert np.all(least[bins] <= draws) and np.all(draws <= greatest[bins])
  order = np.argsort(draws)
  assert np.all(np.diff(bins[order]) >= 0)      # bins grow with u


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_shot_noise_equals_counting_the_cdf(images, table):
  length = max(C._poisson_table_length(k) for k in C.CONSTANTS[table]["shot_noise"])
  for severity in (1, 3, 5):
    rate = C.CONSTANTS[table]["shot_noise"][severity - 1]
    cdf = C.poisson_cdf_table(float(rate), length)
    ours = np.asarray(C.corrupt(images, "shot_noise", severity, constants=table))
    for index, image in enumerate(images):
      uniform = np.asarray(jax.random.uniform(
          C.corruption_key(0, "shot_noise", severity, index), image.shape))
      counts = (cdf[image.astype(int)] < uniform[..., None]).sum(axis=-1)
      expected = np.clip(counts.astype(np.float32) / rate, 0, 1) * 255
      np.testing.assert_allclose(ours[index], expected, rtol=1e-6, err_msg=f"{severity}")


def test_zoom_blur_matrix_equals_the_sum_of_separable_zooms(images):
  factors = (1.0, 1.05, 1.13, 1.31)
  image = images[0].astype(np.float64) / 255
  expected = image.copy()
  for factor in factors:
    rows, cols = C.clipped_zoom_matrix(32, factor), C.clipped_zoom_matrix(32, factor)
    expected += np.einsum("ih,hwc,jw->ijc", rows, image, cols)
  ours = (C.zoom_blur_matrix(32, 32, factors) @ image.reshape(1024, 3)).reshape(image.shape)
  np.testing.assert_allclose(ours, expected, atol=1e-5)
