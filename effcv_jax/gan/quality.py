"""Sample quality measured with the project's own classifiers: a Fréchet distance between
the penultimate-layer features of real and generated images (FID's formula on another
network's features), and the sample grid (one row per class).

The accuracy of a classifier trained only on generated images is measured by
experiments/gan_quality.py with the standard trainer on `generated_source`'s images.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax import files
from effcv_jax import task as task_lib
from effcv_jax.data import sources


def features_and_logits(task: task_lib.Task, variables: Any, images: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """One inference-mode pass of the classifier over float images (B, H, W, C) in [0, 255]:
  (the inputs (B, F) of its last dense layer (its head), what FID takes from Inception's
  pool layer; its float32 logits (B, K))."""
  captured = []

  def capture_head_input(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture_head_input):
    logits = task_lib.predict_logits(task, variables, images)
  return captured[-1].astype(jnp.float32).reshape((images.shape[0], -1)), logits


def penultimate_features(task: task_lib.Task, variables: Any, images: jax.Array) -> jax.Array:
  """The inputs (B, F) of the classifier's last dense layer (features_and_logits)."""
  return features_and_logits(task, variables, images)[0]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean (F,), covariance (F, F) with N - 1 in the denominator) of features (N, F)."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray,
                     cov_b: np.ndarray) -> float:
  """The Fréchet distance between Gaussians N(mean_a, cov_a) and N(mean_b, cov_b):
  ||mean_a - mean_b||^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a cov_b)^(1/2)). The trace of the
  square root is the sum of the square roots of the eigenvalues of cov_a cov_b (real and
  non-negative for covariances; rounding's small negative or imaginary parts are dropped)."""
  eigenvalues = np.linalg.eigvals(np.asarray(cov_a, np.float64) @ np.asarray(cov_b, np.float64))
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues.real, 0.0, None)))
  difference = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
  return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
  """int32 (num_classes * per_class,): 0 repeated per_class times, then 1, ..."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def sample_grid(images: np.ndarray, rows: int) -> np.ndarray:
  """Images (rows * n, H, W, C) -> one image (rows * H, n * W, C): row r holds images
  r * n .. r * n + n - 1 left to right (with balanced_labels, one class per row)."""
  count, height, width, channels = images.shape
  per_row = count // rows
  grid = images[:rows * per_row].reshape(rows, per_row, height, width, channels)
  return grid.transpose(0, 2, 1, 3, 4).reshape(rows * height, per_row * width, channels)


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 image (H, W, 1 or 3) to `path` as PNG, atomically."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  pixels = np.asarray(image, np.uint8)
  pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  files.replace_atomically(path, lambda f: pil.save(f, format="PNG"), "wb")


def generated_source(images: np.ndarray, labels: np.ndarray) -> sources.ArraySource:
  """A training source of generated images: float pixels (N, H, W, C) in [0, 255] rounded
  to uint8, with their int labels (N,)."""
  pixels = np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)
  return sources.ArraySource(pixels, np.asarray(labels, np.int32))
