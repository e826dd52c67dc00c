"""MobileNet v1 from Keras HDF5 and from a uint8 TFLite flatbuffer.

Both imports are checked against NumPy forward passes written here (TF "SAME"
padding, tensors in the files' own layouts) and on the 20 ImageNet photos in
the data directory, resized to 128x128 with PIL bilinear (whole image, aspect
ratio not kept), the preprocessing with which the original Keras model gets
8/20 top-1 and 13/20 top-5.
"""

import pathlib
import re

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import data_file, import_or_skip
from effcv_jax import models
from effcv_jax.models.mobilenet_v1 import tf_same_padding
from effcv_jax.pretrained import (WeightImportError, check_matches_model,
                                  load_keras_mobilenet_v1, load_tflite_mobilenet_v1,
                                  read_keras_h5, read_tflite, replace_head)
from effcv_jax.pretrained.keras_h5 import convert_keras_mobilenet_v1

KERAS_FILE = "weights/keras_mobilenet_v1_0.25_128_imagenet.h5"
TFLITE_V1_FILE = "weights/mobilenet_v1_0.25_128_quant.tflite"
TFLITE_V2_FILE = "weights/mobilenet_v2_1.0_224_quant.tflite"
SIZE = 128


# --------------------------------------------------------------------------
# NumPy reference convolutions with TensorFlow "SAME" padding.

def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF: output ceil(size / stride); padding total split with the extra pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def np_conv_same(x: np.ndarray, kernel: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
  """x (B, H, W, C); kernel (kh, kw, C, O), or (kh, kw, C) when depthwise."""
  b, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  pad_h, pad_w = same_pads(h, kh, stride), same_pads(w, kw, stride)
  padded = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  out_h, out_w = -(-h // stride), -(-w // stride)
  out = 0.0
  for dy in range(kh):
    for dx in range(kw):
      window = padded[:, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride, :]
      out = out + (window * kernel[dy, dx] if depthwise else window @ kernel[dy, dx])
  return out


STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)   # depthwise strides of blocks 1..13


def np_keras_mobilenet(images: np.ndarray, h5_path: pathlib.Path) -> np.ndarray:
  """Logits of the Keras MobileNet v1 from its .h5 (Keras layouts), float64."""
  with h5py.File(h5_path, "r") as f:
    w = lambda layer, name: f[layer][layer][f"{name}:0"][()].astype(np.float64)

    def bn_relu6(x, layer):
      x = (x - w(layer, "moving_mean")) / np.sqrt(w(layer, "moving_variance") + 1e-3)
      return np.clip(x * w(layer, "gamma") + w(layer, "beta"), 0, 6)

    x = images / 127.5 - 1.0
    x = bn_relu6(np_conv_same(x, w("conv1", "kernel"), 2, False), "conv1_bn")
    for i, stride in enumerate(STRIDES, start=1):
      dw = w(f"conv_dw_{i}", "depthwise_kernel")[..., 0]          # (3, 3, C, 1) -> (3, 3, C)
      x = bn_relu6(np_conv_same(x, dw, stride, True), f"conv_dw_{i}_bn")
      x = bn_relu6(np_conv_same(x, w(f"conv_pw_{i}", "kernel"), 1, False), f"conv_pw_{i}_bn")
    pooled = x.mean(axis=(1, 2))
    return pooled @ w("conv_preds", "kernel")[0, 0] + w("conv_preds", "bias")


def np_tflite_logits(images: np.ndarray, graph) -> np.ndarray:
  """Runs the graph's ops (MobileNet v1 and v2 kinds) on dequantized constants in float64
  up to the logits.

  Follows the graph's own tensor wiring. Returns the input of SOFTMAX, (B, 1001).
  """
  deq = lambda i: graph.tensors[i].dequantized().astype(np.float64)
  env = {graph.inputs[0]: images / 128.0 - 1.0}
  for op in graph.ops:
    if op.kind == "SOFTMAX":
      return env[op.inputs[0]]
    x = env[op.inputs[0]]
    if op.kind == "ADD":
      y = x + env[op.inputs[1]]
    elif op.kind == "CONV_2D":
      y = np_conv_same(x, np.einsum("ohwi->hwio", deq(op.inputs[1])), op.options["stride"][0],
                       False) + deq(op.inputs[2])
    elif op.kind == "DEPTHWISE_CONV_2D":
      y = np_conv_same(x, deq(op.inputs[1])[0], op.options["stride"][0], True) + deq(op.inputs[2])
    elif op.kind == "AVERAGE_POOL_2D":
      assert op.options["filter"] == x.shape[1:3]
      y = x.mean(axis=(1, 2), keepdims=True)
    elif op.kind == "RESHAPE":
      y = x.reshape((x.shape[0],) + graph.tensors[op.outputs[0]].shape[1:])
    else:
      raise NotImplementedError(op.kind)
    if op.options.get("activation") == "RELU6":
      y = np.clip(y, 0, 6)
    env[op.outputs[0]] = y
  raise AssertionError("no SOFTMAX")


# --------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="module")
def photos():
  """The 20 photos as uint8 (20, 128, 128, 3) and their ImageNet-1k labels."""
  folder = data_file("imagenet_samples")
  files = sorted(folder.glob("imagenet_*.jpg"))
  assert len(files) == 20
  labels = np.array([int(re.fullmatch(r"imagenet_\d+_(\d+)", f.stem)[1]) for f in files])
  images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE),
                                                                     Image.BILINEAR))
                     for f in files])
  return images, labels


@pytest.fixture(scope="module")
def keras_path():
  return data_file(KERAS_FILE)


@pytest.fixture(scope="module")
def keras_mobilenet(keras_path):
  return load_keras_mobilenet_v1(keras_path)


@pytest.fixture(scope="module")
def tflite_v1():
  import_or_skip("tflite", reason="reading .tflite needs the `tflite` package")
  path = data_file(TFLITE_V1_FILE)
  return read_tflite(path), load_tflite_mobilenet_v1(path)


def predict(imported, images: np.ndarray) -> np.ndarray:
  model = imported.build_model()
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      imported.variables, imported.preprocessing(images)))


def hits(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
  """(top-1, top-5) correct counts."""
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  return int((top5[:, 0] == labels).sum()), int((top5 == labels[:, None]).any(-1).sum())


# --------------------------------------------------------------------------
# Model.

@pytest.mark.parametrize("size, kernel, stride, pads", [
    (128, 3, 2, (0, 1)), (127, 3, 2, (1, 1)), (6, 3, 2, (0, 1)), (128, 3, 1, (1, 1)),
    (128, 1, 1, (0, 0)), (4, 1, 2, (0, 0))])
def test_tf_same_padding(size, kernel, stride, pads):
  assert tf_same_padding(size, kernel, stride) == pads


def test_registry_builds_keras_sized_model():
  model = models.build("mobilenet_v1_0.25", 1000)
  from effcv_jax.pretrained import model_shapes
  shapes = model_shapes(model, (1, SIZE, SIZE, 3))
  assert sum(int(np.prod(s)) for s in shapes.values()) == 475_544   # the Keras file's count
  assert shapes["params/conv_dw_2/kernel"] == (3, 3, 1, 16)
  assert shapes["params/head/kernel"] == (256, 1000)


# --------------------------------------------------------------------------
# Keras.

def test_keras_mobilenet_matches_numpy_reference(keras_mobilenet, keras_path, photos):
  images, labels = photos
  assert (keras_mobilenet.model_name, keras_mobilenet.num_classes) == ("mobilenet_v1_0.25", 1000)
  assert keras_mobilenet.preprocessing.image_size == SIZE
  logits = predict(keras_mobilenet, images)
  reference = np_keras_mobilenet(images, keras_path)
  np.testing.assert_allclose(logits, reference, atol=1e-3 * np.abs(reference).max())
  np.testing.assert_array_equal(logits.argmax(-1), reference.argmax(-1))
  top1, top5 = hits(logits, labels)
  assert top1 >= 8 and top5 >= 13, (top1, top5)      # seen: 8 and 13, as the original


def test_keras_tensors_named_by_layer(keras_path):
  tensors = read_keras_h5(keras_path)
  assert tensors["conv1/kernel"].shape == (3, 3, 3, 8)
  assert tensors["conv_dw_1/depthwise_kernel"].shape == (3, 3, 8, 1)
  assert tensors["conv_preds/kernel"].shape == (1, 1, 256, 1000)
  assert len(tensors) == 1 + 4 + 13 * 10 + 2


def test_keras_depthwise_and_head_layouts(keras_mobilenet, keras_path):
  tensors = read_keras_h5(keras_path)
  params = keras_mobilenet.variables["params"]
  dw = tensors["conv_dw_5/depthwise_kernel"]                       # (3, 3, 64, 1)
  np.testing.assert_array_equal(params["conv_dw_5"]["kernel"][:, :, 0, :], dw[:, :, :, 0])
  np.testing.assert_array_equal(params["head"]["kernel"], tensors["conv_preds/kernel"][0, 0])
  stats = keras_mobilenet.variables["batch_stats"]
  np.testing.assert_array_equal(stats["conv_pw_13_bn"]["var"],
                                tensors["conv_pw_13_bn/moving_variance"])


def test_keras_errors_name_the_tensor(keras_path):
  tensors = read_keras_h5(keras_path)
  broken = {k: v for k, v in tensors.items() if k != "conv_pw_7_bn/moving_mean"}
  with pytest.raises(WeightImportError, match=r"missing tensor 'conv_pw_7_bn/moving_mean'"):
    convert_keras_mobilenet_v1(broken, SIZE)
  broken = {**tensors, "conv_pw_3/kernel": np.zeros((1, 1, 32, 33), np.float32)}
  with pytest.raises(WeightImportError, match=r"tensor 'conv_pw_3/kernel' has shape "
                                              r"\(1, 1, 32, 33\)"):
    convert_keras_mobilenet_v1(broken, SIZE)
  broken = {**tensors, "conv_pw_3/bias": np.zeros(32, np.float32)}
  with pytest.raises(WeightImportError, match=r"unexpected tensor 'conv_pw_3/bias'"):
    convert_keras_mobilenet_v1(broken, SIZE)


def test_mobilenet_head_surgery(keras_mobilenet):
  variables, new_paths = replace_head(keras_mobilenet.variables, "mobilenet_v1_0.25", 10,
                                      jax.random.key(0))
  assert new_paths == ["head/bias", "head/kernel"]
  check_matches_model(variables, models.build("mobilenet_v1_0.25", 10), (1, SIZE, SIZE, 3))
  old = keras_mobilenet.variables
  assert variables["params"]["conv_pw_13"]["kernel"] is old["params"]["conv_pw_13"]["kernel"]
  assert variables["batch_stats"]["conv1_bn"]["mean"] is old["batch_stats"]["conv1_bn"]["mean"]


# --------------------------------------------------------------------------
# TFLite.

def test_tflite_mobilenet_matches_numpy_graph_run(tflite_v1, photos):
  graph, imported = tflite_v1
  images, labels = photos
  assert (imported.model_name, imported.num_classes) == ("mobilenet_v1_0.25", 1000)
  assert imported.model_kwargs == {"batch_norm": False}
  np.testing.assert_allclose(imported.preprocessing.mean, [128 / 255] * 3)
  logits = predict(imported, images)
  reference = np_tflite_logits(images, graph)[:, 1:]              # drop 'background'
  np.testing.assert_allclose(logits, reference, atol=1e-3 * np.abs(reference).max())
  np.testing.assert_array_equal(logits.argmax(-1), reference.argmax(-1))
  top1, top5 = hits(logits, labels)
  assert top1 >= 7 and top5 >= 13, (top1, top5)      # seen: 8 and 15


def test_tflite_dequantization(tflite_v1):
  graph, _ = tflite_v1
  conv = graph.ops[0]
  weights = graph.tensors[conv.inputs[1]]
  assert weights.dtype == "UINT8" and weights.shape == (8, 3, 3, 3)
  expected = (weights.data.astype(np.float32) - weights.zero_point[0]) * weights.scale[0]
  np.testing.assert_allclose(weights.dequantized(), expected, rtol=1e-6)
  bias = graph.tensors[conv.inputs[2]]
  assert bias.dtype == "INT32"
  np.testing.assert_allclose(bias.scale[0], graph.tensors[0].scale[0] * weights.scale[0],
                             rtol=1e-6)


def test_tflite_keeps_background_class_on_request():
  import_or_skip("tflite")
  imported = load_tflite_mobilenet_v1(data_file(TFLITE_V1_FILE), drop_background=False)
  assert imported.num_classes == 1001
  assert imported.variables["params"]["head"]["kernel"].shape == (256, 1001)


def test_tflite_reader_parses_mobilenet_v2_and_v1_loader_refuses_it():
  import_or_skip("tflite")
  path = data_file(TFLITE_V2_FILE)
  graph = read_tflite(path)
  kinds = [op.kind for op in graph.ops]
  assert len(kinds) == 66 and kinds.count("ADD") == 10
  assert graph.tensors[graph.ops[0].inputs[1]].dequantized().shape == (32, 3, 3, 3)
  with pytest.raises(WeightImportError, match=r"op 2 is CONV_2D .*stride': \(1, 1\)"):
    load_tflite_mobilenet_v1(path)
