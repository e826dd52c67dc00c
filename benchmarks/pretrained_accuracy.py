"""Accuracy of imported CIFAR ResNets on the CIFAR-10 training images.

  python -m benchmarks.pretrained_accuracy --depths=56 --data_dir=../shared/data

Imports `weights/cifar10_resnet{depth}_torch_names.npz` with
`effcv_jax.pretrained.load_cifar_resnet`, evaluates it on the first `--limit`
images of `cifar10_train.npz` (all 50,000 by default; the weights were trained
on them, so expect near-training accuracy, not the published test accuracy)
and prints one JSON line per model with `accuracy`, `num_examples` and seconds.
"""

import json
import pathlib
import time

import jax
import numpy as np
from absl import app, flags

from effcv_jax.pretrained import load_cifar_resnet

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/data", "Directory with cifar10_train.npz and weights/.")
flags.DEFINE_list("depths", ["56"], "CIFAR ResNet depths to evaluate.")
flags.DEFINE_integer("limit", 50_000, "Number of training images to evaluate.")
flags.DEFINE_integer("batch_size", 500, "Evaluation batch size.")


def evaluate(depth: int, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
  """Top-1 accuracy of the imported ResNet-`depth` on uint8 NHWC `images`."""
  path = pathlib.Path(FLAGS.data_dir) / "weights" / f"cifar10_resnet{depth}_torch_names.npz"
  imported = load_cifar_resnet(path)
  model = imported.build_model()
  predict = jax.jit(lambda v, x: model.apply(v, x, train=False).argmax(-1))
  start = time.time()
  correct = 0
  for i in range(0, len(images), batch_size):
    batch = imported.preprocessing(images[i:i + batch_size])
    predictions = np.asarray(predict(imported.variables, batch))
    correct += int((predictions == labels[i:i + batch_size]).sum())
  return {"model": imported.model_name, "weights": path.name,
          "accuracy": correct / len(images), "num_examples": len(images),
          "seconds": round(time.time() - start, 1), "device": str(jax.devices()[0])}


def main(argv):
  del argv
  with np.load(pathlib.Path(FLAGS.data_dir) / "cifar10_train.npz") as data:
    images = data["x_train"][:FLAGS.limit]
    labels = data["y_train"][:FLAGS.limit].astype(np.int64)
  for depth in FLAGS.depths:
    print(json.dumps(evaluate(int(depth), images, labels, FLAGS.batch_size)), flush=True)


if __name__ == "__main__":
  app.run(main)
