"""Top-1 / top-5 of the importable ImageNet models on the 20 photos of the data directory.

  python -m experiments.imagenet_samples --data_dir=../shared/data \
      --report=reports/imagenet_samples.json

A sanity check of each import, not an accuracy measurement: 20 photos (label in the file
name, imagenet_NN_LABEL.jpg), each read and cropped as `experiments.predict` does (EXIF
orientation, the central crop of the model's evaluation, bicubic resize). The report puts
each count beside the model's published ImageNet top-1, which is quoted, not measured here.
"""

import json
import pathlib
import re

import numpy as np
from absl import flags

from effcv_jax import files
from effcv_jax.data import sources
from effcv_jax.errors import ConfigError
from experiments import cli, predict

_REPORT = flags.DEFINE_string("report", "reports/imagenet_samples.json", "Output JSON.")

PHOTOS = "imagenet_samples"
# Published ImageNet top-1 (%) of the original models, with where it is published.
PUBLISHED_TOP1 = {
    "efficientnet_lite0": (75.1, "TensorFlow EfficientNet-Lite README (tensorflow/tpu)"),
    "efficientnet_lite1": (76.7, "TensorFlow EfficientNet-Lite README (tensorflow/tpu)"),
    "efficientnet_lite2": (77.6, "TensorFlow EfficientNet-Lite README (tensorflow/tpu)"),
    "mobilenet_v2_tflite": (70.8, "TFLite hosted models, Mobilenet_V2_1.0_224_quant"),
    "mobilenet_v1_keras": (41.5, "Keras applications, MobileNet alpha 0.25 at 128 px"),
}


def photo_files(data_dir: str | None) -> tuple[list[pathlib.Path], np.ndarray]:
  """The photos (sorted) and their ImageNet-1k labels."""
  root = sources.resolve_data_dir(data_dir)
  folder = pathlib.Path(root or "") / PHOTOS
  paths = sorted(folder.glob("imagenet_*.jpg")) if root else []
  if not paths:
    raise ConfigError(f"no photos imagenet_NN_LABEL.jpg in {folder}: pass --data_dir=DIR (or "
                      f"set {sources.DATA_DIR_ENV}) to the data directory holding {PHOTOS}/")
  labels = np.array([int(re.fullmatch(r"imagenet_\d+_(\d+)", p.stem)[1]) for p in paths])
  return paths, labels


def hits(predictor: predict.Predictor, paths: list[pathlib.Path],
         labels: np.ndarray) -> tuple[int, int]:
  """(top-1, top-5) correct counts of `predictor` on the photos."""
  images = np.stack([predict.centre_crop(predict.read_image(p, predictor.channels),
                                         predictor.image_size, predictor.crop_fraction)
                     for p in paths])
  top5 = np.argsort(-predictor.logits(images), axis=-1)[:, :5]
  return int((top5[:, 0] == labels).sum()), int((top5 == labels[:, None]).any(-1).sum())


def main(argv):
  del argv
  paths, labels = photo_files(cli.data_dir())
  models = {}
  for name, (published, source) in PUBLISHED_TOP1.items():
    predictor = predict.pretrained_predictor(name, cli.data_dir())
    top1, top5 = hits(predictor, paths, labels)
    models[name] = {"top1": top1, "top5": top5, "image_size": predictor.image_size,
                    "crop_fraction": round(predictor.crop_fraction, 4),
                    "published_imagenet_top1": published, "published_source": source}
  report = {"title": "ImageNet models on the 20 photos of the data directory",
            "command": cli.reproducing_command("experiments.imagenet_samples"),
            "photos": len(paths), "models": models}
  files.write_json_atomic(_REPORT.value, report)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  cli.run(main, shared_flags=("data_dir",))
