"""Draws every augmentation op and policy of `effcv_jax.augment` on real images, to one PNG.

    python -m experiments.augment_gallery --out=reports/augment_gallery.png
    python -m experiments.augment_gallery --dataset=npz:cifar10_train.npz --data_dir=../shared/data

Each panel shows the same few images after one op (a spec of the spec language, written above
it) with one random key; the first panel shows them unchanged. Images come from `--dataset`
(CIFAR-10 from the local data directory by default: `--data_dir` or $EFFCV_DATA_DIR); when it is
not there, from the packaged `pkg:digits` dataset, with a note printed.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "reports/augment_gallery.png", "Output PNG.")
flags.DEFINE_string("dataset", "npz:cifar10_train.npz",
                    "Dataset spec (see effcv_jax.data.sources).")
flags.DEFINE_string("fallback_dataset", "pkg:digits",
                    "Dataset used when --dataset cannot be loaded.")
flags.DEFINE_integer("num_images", 4, "Images per panel (a square number draws a square tile).")
flags.DEFINE_integer("seed", 0, "Random seed for the images chosen and the augmentations.")
flags.DEFINE_integer("columns", 6, "Panels per row.")


def gallery_specs(height: int, width: int, channels: int) -> list[str]:
  """One spec per panel, with strengths large enough to see on small images."""
  affine_src = ((0, 0), (width - 1, 0), (0, height - 1))
  affine_dst = ((width // 8, height // 6), (width - 1, 0), (width // 5, height - 1))
  marker = (255, 0, 0) if channels == 3 else 255  # fill for the affine panel
  return [
      "none",
      # Geometry.
      "flip_lr(p=1.0)",
      "flip_ud(p=1.0)",
      "rot90(k=None)",
      "rotate(degrees=30)",
      "shear_x(shear=0.3)",
      "shear_y(shear=0.3)",
      "translate_x(fraction=0.25)",
      "translate_y(fraction=0.25)",
      f"random_crop(padding={max(1, height // 8)}, pad_mode='reflect')",
      f"random_crop(padding={max(1, height // 8)}, pad_mode='constant', fill=128)",
      "random_resized_crop(scale=(0.25, 1.0))",
      f"affine(src={affine_src}, dst={affine_dst}, fill={marker})",
      "rotate(degrees=20)|shear_x(shear=0.2)|flip_lr",
      # Colour and lookup tables.
      "brightness(factor=(0.3, 1.7))",
      "brightness_add(delta=80)",
      "contrast(factor=(0.2, 1.8))",
      "saturation(factor=(0.0, 2.0))",
      "hue(delta=0.5)",
      "gamma(gamma=(0.4, 2.5))",
      "invert",
      "solarize(threshold=128)",
      "solarize_add(addition=60)",
      "posterize(bits=3)",
      "equalize",
      "autocontrast",
      "sharpness(factor=(0.0, 3.0))",
      "grayscale",
      # Erasing and mixing.
      f"cutout(size={max(1, height // 3)})",
      "random_erasing(p=1.0, fill='noise')",
      "mixup(alpha=1.0)",
      "cutmix(alpha=1.0)",
      "mixup_or_cutmix",
      # Policies.
      "randaugment(num_ops=2, magnitude=9)",
      "randaugment(num_ops=2, magnitude=9, magnitude_std=0.5)",
      "trivial_augment_wide",
      "autoaugment(policy='imagenet')",
      "autoaugment(policy='cifar10')",
      "autoaugment(policy='svhn')",
      "augmix",
      f"flip_lr|random_crop(padding={max(1, height // 8)})|randaugment(num_ops=2, magnitude=9)|cutout(size={max(1, height // 4)})",
  ]


def load_images(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
  """uint8 (N, H, W, C) images, int labels and the dataset spec they came from."""
  from effcv_jax.data import sources

  for dataset in (FLAGS.dataset, FLAGS.fallback_dataset):
    try:
      images, labels = sources.load_arrays(dataset, "train", cli.data_dir())
    except (ValueError, OSError) as error:
      print(f"cannot load {dataset} ({error}); trying {FLAGS.fallback_dataset}")
      continue
    if images.ndim == 3:
      images = images[..., None]
    chosen = np.random.default_rng(seed).choice(len(images), num_images, replace=False)
    return images[chosen], labels[chosen], dataset
  raise SystemExit("no dataset could be loaded")


def tile(images: np.ndarray) -> np.ndarray:
  """(N, H, W, C) -> one (rows*H, cols*W, C) mosaic with 1-pixel white gaps."""
  count, height, width, channels = images.shape
  cols = math.ceil(math.sqrt(count))
  rows = math.ceil(count / cols)
  mosaic = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1, channels), 255, np.uint8)
  for index, image in enumerate(images):
    row, col = divmod(index, cols)
    mosaic[row * (height + 1):row * (height + 1) + height,
           col * (width + 1):col * (width + 1) + width] = image
  return mosaic


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from effcv_jax import augment

  images, labels, dataset = load_images(FLAGS.num_images, FLAGS.seed)
  num_classes = int(labels.max()) + 1
  float_images = jnp.asarray(images, jnp.float32)
  one_hot = jax.nn.one_hot(jnp.asarray(labels), num_classes)
  specs = gallery_specs(*images.shape[1:])
  rows = math.ceil(len(specs) / FLAGS.columns)
  figure, axes = plt.subplots(rows, FLAGS.columns, figsize=(2.6 * FLAGS.columns, 3.1 * rows))
  for index, (axis, spec) in enumerate(zip(axes.reshape(-1), specs)):
    out, _ = jax.jit(augment.build(spec))(jax.random.key(FLAGS.seed + index), float_images, one_hot)
    mosaic = tile(np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8))
    axis.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic,
                cmap="gray",
                vmin=0,
                vmax=255,
                interpolation="nearest")
    axis.set_title(_wrap(spec), fontsize=7)
  for axis in axes.reshape(-1):
    axis.axis("off")
  figure.suptitle(f"effcv_jax.augment on {dataset} (one random key per panel)", fontsize=11)
  figure.tight_layout(rect=(0, 0, 1, 0.985))
  out_path = pathlib.Path(FLAGS.out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(out_path, dpi=90)
  print(f"wrote {out_path} ({len(specs)} panels from {dataset})")


def _wrap(text: str, width: int = 38) -> str:
  """Breaks a spec into lines at '|' or ', ' so it fits above a panel."""
  lines, line = [], ""
  for piece in text.replace("|", "|\u200b").replace(", ", ",\u200b").split("\u200b"):
    if line and len(line) + len(piece) > width:
      lines.append(line)
      line = ""
    line += piece
  return "\n".join(lines + [line]).replace(",", ", ").replace(",  ", ", ")


if __name__ == "__main__":
  cli.run(main, shared_flags=("data_dir",))
