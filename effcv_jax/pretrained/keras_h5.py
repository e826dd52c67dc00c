"""Keras 2 HDF5 weights -> Flax variables; the Keras MobileNet v1 application.

A Keras 2 weights file (`model.save_weights` or a whole `model.save`, which nests
it under 'model_weights') lists its layers in the `layer_names` attribute and
each layer's tensors in that group's `weight_names` attribute. `read_keras_h5`
returns them as {'layer/weight': array}, e.g. 'conv1/kernel',
'conv_dw_1/depthwise_kernel', 'conv1_bn/gamma'. Keras kernels are already HWIO,
so only the depthwise kernels and the 1x1-conv classifier change layout:

  conv K/kernel (kh, kw, in, out)           -> params/K/kernel (same)
  depthwise K/depthwise_kernel (kh, kw, C, m) -> params/K/kernel (kh, kw, 1, C*m)
  BN K/gamma, K/beta                        -> params/K/scale, params/K/bias
  BN K/moving_mean, K/moving_variance       -> batch_stats/K/mean, batch_stats/K/var
  conv_preds/kernel (1, 1, C, N), bias (N,) -> params/head/kernel (C, N), params/head/bias

(Keras 3 `.weights.h5` files use another layout and are not read here.)
"""

import os
import pathlib
import re

import h5py
import numpy as np

from effcv_jax.errors import FileFormatError, UserError
from effcv_jax.files import describe_start
from effcv_jax.models.mobilenet_v1 import BLOCKS, STEM_CHANNELS, MobileNetV1
from effcv_jax.pretrained.common import (MINUS_ONE_TO_ONE, Imported, NameMap, Preprocessing,
                                         Target, WeightImportError, convert_tensors,
                                         identity, model_shapes)

ALPHAS = (0.25, 0.5, 0.75, 1.0)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
H5_REMEDY = ("Download the weights file again (a complete Keras 2 HDF5 file, as "
             "model.save_weights or model.save write it).")


def _text(value) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def h5_problem(path: str, error: Exception) -> str:
  """What is wrong with the HDF5 file `path` that h5py failed to read with `error`."""
  with open(path, "rb") as f:
    head = f.read(16)
  if not head.startswith(_HDF5_SIGNATURE):
    return f"not an HDF5 file: {describe_start(head)}"
  sizes = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(error))
  if sizes:
    return (f"truncated: {sizes[1]} of the {sizes[2]} bytes its header records "
            "(an interrupted download or copy?)")
  return f"corrupt HDF5 file ({type(error).__name__}: {error})"


def read_keras_h5(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{'layer/weight': array} in layer order from a Keras 2 HDF5 weights or model file.

  The ':0' suffix and a repeated layer prefix are dropped: the tensor
  'conv1/kernel:0' of layer 'conv1' becomes 'conv1/kernel'. Raises FileFormatError
  (naming the file and what is wrong) if it is not a complete HDF5 file.
  """
  full = os.path.abspath(path)
  try:
    return _read_layer_tensors(full)
  except (OSError, KeyError, ValueError, RuntimeError) as e:
    if isinstance(e, (UserError, FileNotFoundError)):
      raise
    raise FileFormatError(f"{full}: {h5_problem(full, e)}. {H5_REMEDY}") from e


def _read_layer_tensors(path: str) -> dict[str, np.ndarray]:
  """read_keras_h5 without the translation of h5py's errors."""
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise WeightImportError(f"{path} has no 'layer_names' attribute: not a Keras 2 HDF5 "
                              "weights file (Keras 3 .weights.h5 files are not read here); "
                              "save the weights with Keras 2 (model.save_weights('x.h5'))")
    tensors = {}
    for layer in map(_text, root.attrs["layer_names"]):
      group = root[layer]
      for weight in map(_text, group.attrs.get("weight_names", [])):
        short = weight.rsplit("/", 1)[-1].split(":")[0]
        tensors[f"{layer}/{short}"] = np.asarray(group[weight])
  return tensors


def keras_depthwise_to_flax(x: np.ndarray) -> np.ndarray:
  """Keras depthwise kernel (kh, kw, C, m) -> Flax grouped kernel (kh, kw, 1, C*m).

  Keras' output channel c*m + j reads input c, as does Flax's with
  feature_group_count=C, so this is a reshape.
  """
  kh, kw, channels, multiplier = x.shape
  return np.reshape(x, (kh, kw, 1, channels * multiplier))


def conv1x1_to_dense(x: np.ndarray) -> np.ndarray:
  """1x1 conv kernel (1, 1, in, out) -> Dense kernel (in, out)."""
  if x.shape[:2] != (1, 1):
    raise WeightImportError(f"classifier kernel of shape {x.shape} is not a 1x1 convolution")
  return x[0, 0]


def keras_batch_norm_entries(layer: str) -> NameMap:
  """Keras BatchNormalization (gamma, beta, moving mean/variance, all (C,)) -> Flax."""
  return {
      f"{layer}/gamma": Target(f"params/{layer}/scale", identity),
      f"{layer}/beta": Target(f"params/{layer}/bias", identity),
      f"{layer}/moving_mean": Target(f"batch_stats/{layer}/mean", identity),
      f"{layer}/moving_variance": Target(f"batch_stats/{layer}/var", identity),
  }


def keras_mobilenet_v1_name_map() -> NameMap:
  """Keras MobileNet v1 layer weights -> `MobileNetV1` variables (same layer names)."""
  name_map = {"conv1/kernel": Target("params/conv1/kernel", identity),
              **keras_batch_norm_entries("conv1_bn")}
  for block_id in range(1, len(BLOCKS) + 1):
    dw, pw = f"conv_dw_{block_id}", f"conv_pw_{block_id}"
    name_map[f"{dw}/depthwise_kernel"] = Target(f"params/{dw}/kernel", keras_depthwise_to_flax)
    name_map.update(keras_batch_norm_entries(f"{dw}_bn"))
    name_map[f"{pw}/kernel"] = Target(f"params/{pw}/kernel", identity)
    name_map.update(keras_batch_norm_entries(f"{pw}_bn"))
  name_map["conv_preds/kernel"] = Target("params/head/kernel", conv1x1_to_dense)
  name_map["conv_preds/bias"] = Target("params/head/bias", identity)
  return name_map


def alpha_from_stem(stem_channels: int) -> float:
  """The width multiplier whose stem has `stem_channels` = int(32 * alpha) channels."""
  for alpha in ALPHAS:
    if int(STEM_CHANNELS * alpha) == stem_channels:
      return alpha
  raise WeightImportError(f"stem 'conv1/kernel' has {stem_channels} output channels; "
                          f"no alpha in {ALPHAS} gives that")


def _image_size_from_name(path: pathlib.Path) -> int:
  """Keras names its files mobilenet_{alpha}_{size}...: the size, else 224."""
  match = re.search(r"_(128|160|192|224)(?:_|\.|$)", path.name)
  return int(match[1]) if match else 224


def convert_keras_mobilenet_v1(tensors: dict[str, np.ndarray], image_size: int = 224) -> Imported:
  """{'layer/weight': array} of a Keras MobileNet v1 -> `Imported` for `mobilenet_v1_{alpha}`.

  alpha, depth multiplier and class count are read from the tensor shapes.
  Inputs: x / 127.5 - 1 at `image_size`.
  """
  for name in ("conv1/kernel", "conv_dw_1/depthwise_kernel", "conv_preds/kernel"):
    if name not in tensors:
      raise WeightImportError(f"missing tensor {name!r} is not in the weight file")
  alpha = alpha_from_stem(tensors["conv1/kernel"].shape[-1])
  depth_multiplier = int(tensors["conv_dw_1/depthwise_kernel"].shape[-1])
  num_classes = int(tensors["conv_preds/kernel"].shape[-1])
  kwargs = {"depth_multiplier": depth_multiplier} if depth_multiplier != 1 else {}
  model = MobileNetV1(num_classes=num_classes, alpha=alpha, **kwargs)
  expected = model_shapes(model, (1, image_size, image_size, 3))
  variables = convert_tensors(tensors, keras_mobilenet_v1_name_map(), expected)
  return Imported(variables, f"mobilenet_v1_{alpha}", num_classes, kwargs,
                  Preprocessing(*MINUS_ONE_TO_ONE, image_size=image_size))


def load_keras_mobilenet_v1(path: str | pathlib.Path, image_size: int | None = None) -> Imported:
  """Reads a Keras MobileNet v1 .h5 and converts it (see `convert_keras_mobilenet_v1`).

  image_size: the training resolution; None parses it from a Keras file name
  ('..._0.25_128...' -> 128), else 224.
  """
  path = pathlib.Path(path)
  return convert_keras_mobilenet_v1(read_keras_h5(path),
                                    image_size or _image_size_from_name(path))
