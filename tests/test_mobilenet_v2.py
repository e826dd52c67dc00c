"""MobileNet v2: the registry model and the uint8 TFLite ImageNet model of the data
directory, imported dequantised.

The import is checked against the NumPy run of the TFLite graph's own wiring on its
dequantised constants (tests/test_pretrained_mobilenet.py::np_tflite_logits) and on the
20 ImageNet photos, centre-cropped to 87.5 % of the shorter side and resized
bilinearly to 224 (TF-slim's evaluation preprocessing).
"""

import re

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import data_file, import_or_skip
from effcv_jax import models
from effcv_jax.pretrained import WeightImportError, read_tflite
from effcv_jax.pretrained.tflite_import import load_tflite_mobilenet_v2
from tests.test_pretrained_mobilenet import TFLITE_V1_FILE, TFLITE_V2_FILE, np_tflite_logits


@pytest.fixture(scope="module")
def tflite_v2():
  import_or_skip("tflite", reason="reading .tflite needs the `tflite` package")
  path = data_file(TFLITE_V2_FILE)
  return read_tflite(path), load_tflite_mobilenet_v2(path)


def test_registry_model_has_the_published_parameter_count():
  model = models.build("mobilenet_v2_1.0", 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3),
                                                                             np.float32)))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
  assert count == 3_504_872      # trainable parameters of the Keras / TF-slim MobileNet v2 1.0


def test_import_equals_the_numpy_run_of_the_tflite_graph(tflite_v2):
  graph, imported = tflite_v2
  assert imported.model_name == "mobilenet_v2_1.0" and imported.num_classes == 1000
  images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  reference = np_tflite_logits(images.astype(np.float64), graph)[:, 1:]   # drop background
  logits = np.asarray(imported.build_model().apply(imported.variables,
                                                   imported.preprocessing(images)))
  np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=2e-3)


def test_v1_file_is_refused_by_the_v2_loader():
  import_or_skip("tflite")
  with pytest.raises(WeightImportError, match=r"MobileNet v2"):
    load_tflite_mobilenet_v2(data_file(TFLITE_V1_FILE))


def test_predicts_the_imagenet_photos(tflite_v2):
  _, imported = tflite_v2
  files = sorted(data_file("imagenet_samples").glob("imagenet_*.jpg"))
  labels = np.array([int(re.fullmatch(r"imagenet_\d+_(\d+)", f.stem)[1]) for f in files])
  crops = []
  for path in files:
    image = Image.open(path).convert("RGB")
    width, height = image.size
    side = 0.875 * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    crops.append(np.asarray(image.resize((224, 224), Image.BILINEAR,
                                         box=(left, top, left + side, top + side))))
  model = imported.build_model()
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      imported.variables, imported.preprocessing(np.stack(crops))))
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  top1_hits = int((top5[:, 0] == labels).sum())
  top5_hits = int((top5 == labels[:, None]).any(-1).sum())
  # The quantised MobileNet v2 1.0 224 has about 70.8 % published ImageNet top-1.
  assert top1_hits >= 16 and top5_hits >= 19, (top1_hits, top5_hits)
