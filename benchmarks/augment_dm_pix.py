"""Our colour and flip ops against dm-pix's: speed and how far their results are apart.

    python -m benchmarks.augment_dm_pix   # writes benchmarks/results/augment_dm_pix.json

For each op, ours (effcv_jax.augment.colour, images float in [0, 255], Pillow semantics) and the
dm-pix op closest to it (images in [0, 1], rescaled around the call) run on the same batch with
the same fixed parameter: CIFAR-10 training images from $EFFCV_DATA_DIR (random uint8 images
without it), at 32x32 and resized to 224x224 (--sizes, SIZExBATCH). Reported per op and size:
median milliseconds per batch of each (one `jax.jit` each, compiled first, every call waited
for, --calls calls of each, alternating, after 2 warm-up calls) and the largest absolute difference of their results
in [0, 255] units. A difference of 0 (up to float rounding) means the same semantics; a large
one names a semantic difference (see `OPS`, `note`). Where ours now calls dm-pix itself
(brightness_add, hue, gamma) the pair compares the two call paths.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Callable

import numpy as np
from absl import app, flags

from benchmarks.machine import machine_info

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "benchmarks/results/augment_dm_pix.json", "Results file.")
flags.DEFINE_list("sizes", ["32x256", "224x32"], "SIZExBATCH settings.")
flags.DEFINE_integer("calls", 20, "Timed calls per op and implementation (the median is kept).")

MAX_VALUE = 255.0


def _ops() -> dict[str, tuple[Callable, Callable, str]]:
  """name -> (ours(images [0, 255]) -> images, dm-pix's(images [0, 255]) -> images, note)."""
  import dm_pix
  import jax
  import jax.numpy as jnp

  from effcv_jax import augment
  from effcv_jax.augment import colour

  def scaled(fn):  # a dm-pix op on [0, 1] images, called on [0, 255] ones
    return lambda x: jnp.clip(fn(x / MAX_VALUE) * MAX_VALUE, 0.0, MAX_VALUE)

  def spec_op(spec):
    pipeline = augment.build(spec)
    return lambda x: pipeline(jax.random.key(0), x, None)[0]

  def grey_dm_pix(x):
    return jnp.broadcast_to(dm_pix.rgb_to_grayscale(x, keep_dims=True), x.shape)

  return {
      "brightness_add": (lambda x: colour.add_brightness(x, 40.0),
                         lambda x: jnp.clip(dm_pix.adjust_brightness(x, 40.0), 0.0, MAX_VALUE),
                         "x + delta, clipped: the same op"),
      "hue": (lambda x: colour.adjust_hue(x, 0.2), scaled(lambda y: dm_pix.adjust_hue(y, 0.2)),
              "HSV hue rotation by delta turns: the same op"),
      "gamma": (lambda x: colour.adjust_gamma(x, 0.6),
                scaled(lambda y: dm_pix.adjust_gamma(y, 0.6)),
                "255 * (x / 255) ** gamma: the same op"),
      "solarize": (lambda x: colour.solarize(x, 128.0),
                   scaled(lambda y: dm_pix.solarize(y, 128.0 / MAX_VALUE)),
                   "x >= threshold -> max - x: the same op once rescaled to [0, 1]"),
      "contrast": (lambda x: colour.adjust_contrast(x, 1.6),
                   scaled(lambda y: dm_pix.adjust_contrast(y, 1.6)),
                   "Pillow blends with the image's rounded mean grey level (one value per "
                   "image); dm-pix (as tf.image) with each channel's own mean"),
      "saturation": (lambda x: colour.adjust_saturation(x, 1.6),
                     scaled(lambda y: dm_pix.adjust_saturation(y, 1.6)),
                     "Pillow (ImageEnhance.Color) blends with the grey image, channels "
                     "clipped to [0, 255]; dm-pix scales the HSV saturation, clipped to [0, 1]"),
      "grayscale": (colour.grayscale, grey_dm_pix,
                    "Pillow's L is the rounded fixed-point 601-2 luma; dm-pix's unrounded "
                    "0.2989 R + 0.587 G + 0.114 B"),
      "flip_lr": (spec_op("flip_lr(p=1.0)"), dm_pix.flip_left_right,
                  "exact in both; ours is a geometric op that folds into one warp with the "
                  "spec's neighbouring geometric ops"),
  }


def load_images(size: int, batch: int) -> tuple[np.ndarray, str]:
  """float32 (batch, size, size, 3) in [0, 255] and where they came from."""
  import jax

  data_dir = os.environ.get("EFFCV_DATA_DIR")
  cifar = pathlib.Path(data_dir or ".") / "cifar10_train.npz"
  if data_dir and cifar.exists():
    from effcv_jax.data import sources

    images, _ = sources.load_arrays(f"npz:{cifar}", "train")
    images, source = images[:batch], "cifar10_train"
  else:
    images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    source = "random uint8"
  images = np.asarray(images, np.float32)
  if size != images.shape[1]:
    images = np.asarray(jax.image.resize(images, (batch, size, size, 3), "bilinear"))
    images = np.clip(np.round(images), 0.0, MAX_VALUE)
    source += f", bilinear-resized to {size}x{size}"
  return images, source


def median_ms_pair(ours, theirs, images, calls: int) -> tuple[list[float], list[object]]:
  """Median milliseconds of `ours(images)` and `theirs(images)` and their results.

  Both are compiled first and called twice untimed; then their calls alternate, so that a
  change of the machine's load during the run weighs on both alike."""
  import jax

  compiled = [jax.jit(fn).lower(images).compile() for fn in (ours, theirs)]
  outs = []
  for fn in compiled:
    jax.block_until_ready(fn(images))  # warm-up
    outs.append(jax.block_until_ready(fn(images)))
  seconds = [[], []]
  for _ in range(calls):
    for index, fn in enumerate(compiled):
      start = time.perf_counter()
      jax.block_until_ready(fn(images))
      seconds[index].append(time.perf_counter() - start)
  return [round(1e3 * float(np.median(values)), 3) for values in seconds], outs


def main(argv):
  del argv
  import jax

  results = {"command": " ".join(["python -m benchmarks.augment_dm_pix"] + sys.argv[1:]),
             "machine": machine_info(),
             "dm_pix": __import__("dm_pix").__version__,
             "load_average_start": os.getloadavg(),
             "notes": ["ms: median milliseconds per batch of a jitted call, ours and dm-pix's "
                       "calls alternating; max_abs_difference: largest |ours - dm-pix| over the "
                       "batch, in [0, 255] units.",
                       "Pairs that run the same code (brightness_add, hue, gamma: ours calls "
                       "dm-pix) show how far timings move with the machine's load alone."],
             "sizes": {}}
  ops = _ops()
  for setting in FLAGS.sizes:
    size, batch = (int(v) for v in setting.split("x"))
    images, source = load_images(size, batch)
    device_images = jax.device_put(images)
    per_op = {}
    for name, (ours, theirs, note) in ops.items():
      (ours_ms, theirs_ms), (ours_out, theirs_out) = median_ms_pair(ours, theirs, device_images,
                                                                   FLAGS.calls)
      difference = np.abs(np.asarray(ours_out, np.float64) - np.asarray(theirs_out, np.float64))
      per_op[name] = {"ours_ms": ours_ms, "dm_pix_ms": theirs_ms,
                      "max_abs_difference": round(float(difference.max()), 4),
                      "mean_abs_difference": round(float(difference.mean()), 4),
                      "note": note}
      print(f"{setting} {name:15s} ours {ours_ms:8.3f} ms  dm-pix {theirs_ms:8.3f} ms  "
            f"max |diff| {difference.max():8.4f}", flush=True)
    results["sizes"][setting] = {"images": source, "ops": per_op}
  results["load_average_end"] = os.getloadavg()
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
