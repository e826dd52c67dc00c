"""PyTorch state_dicts -> Flax variables; CIFAR ResNets (`resnet{20,32,44,56,...}`).

Reads a state_dict ({name: tensor}) from `.npz`, `.safetensors` or a `.pth`/`.th`/`.pt`
checkpoint (torch_pickle.py: both torch.save layouts, no torch needed, no pickle code
run). Then maps PyTorch names and layouts to the Flax model explicitly:

  conv `X.weight` (out, in, kh, kw)  -> params/X/kernel (kh, kw, in, out)
  linear `X.weight` (out, in)         -> params/X/kernel (in, out); `X.bias` -> params/X/bias
  BN `X.weight`, `X.bias`             -> params/X/scale, params/X/bias
  BN `X.running_mean`, `running_var`  -> batch_stats/X/mean, batch_stats/X/var
  BN `X.num_batches_tracked`          -> ignored
with module paths `layer1.0.conv1` written `layer1_0/conv1`.
"""

import pathlib
import re
from typing import Mapping

import numpy as np

from effcv_jax import files
from effcv_jax.errors import FileFormatError
from effcv_jax.models.resnet_cifar import CifarResNet
from effcv_jax.pretrained import torch_pickle
from effcv_jax.pretrained.common import (IMAGENET_TORCH, Imported, NameMap, Preprocessing,
                                         Target, WeightImportError, convert_tensors,
                                         identity, model_shapes, oihw_to_hwio,
                                         out_in_to_in_out)

PICKLE_SUFFIXES = (".pth", ".th", ".pt")
IGNORED = (r"(.*\.)?num_batches_tracked",)   # BN step counters: not model variables
STATE_DICT_REMEDY = ("Download the weights file again, or re-export the state_dict "
                     "(np.savez(PATH, **{k: v.numpy() for k, v in state_dict.items()})).")
CIFAR_PREPROCESSING = Preprocessing(*IMAGENET_TORCH, image_size=32)


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str = "module.") -> dict:
  """Drops `prefix` (DataParallel's 'module.') from names that all carry it."""
  if state_dict and all(name.startswith(prefix) for name in state_dict):
    return {name[len(prefix):]: value for name, value in state_dict.items()}
  return dict(state_dict)


def _load_torch_pickle(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A `.pth`/`.th`/`.pt` file -> {name: array}, read by the restricted unpickler of
  torch_pickle.py (no torch needed, no code of the file run); accepts a bare state_dict
  or a dict holding one under 'state_dict'."""
  obj = torch_pickle.load(path)
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise WeightImportError(f"{path} holds a {type(obj).__name__}, not a state_dict")
  return {name: value for name, value in obj.items() if isinstance(value, np.ndarray)}


def _load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A `.safetensors` file -> {name: array}; FileFormatError if it is not a complete one."""
  # pylint: disable-next=import-outside-toplevel
  from safetensors import SafetensorError
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return load_file(str(path))
  except SafetensorError as e:
    raise FileFormatError(f"{path.resolve()}: not a complete safetensors file ({e}). "
                          f"{STATE_DICT_REMEDY}") from e


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{tensor name: array} in file order from .npz, .safetensors, .pth/.th/.pt.

  A 'module.' prefix (from torch.nn.DataParallel) is removed.
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix == ".npz":
    state_dict, _ = files.read_npz(str(path), STATE_DICT_REMEDY)
  elif suffix == ".safetensors":
    state_dict = _load_safetensors(path)
  elif suffix in PICKLE_SUFFIXES:
    state_dict = _load_torch_pickle(path)
  else:
    raise WeightImportError(f"unknown state_dict format {path.name!r}: expected .npz, "
                            f".safetensors or one of {PICKLE_SUFFIXES}")
  return strip_prefix(state_dict)


def conv_entries(torch_module: str, flax_module: str) -> NameMap:
  """Bias-free conv: `m.weight` (O, I, kh, kw) -> params/m/kernel (kh, kw, I, O)."""
  return {f"{torch_module}.weight": Target(f"params/{flax_module}/kernel", oihw_to_hwio)}


def batch_norm_entries(torch_module: str, flax_module: str) -> NameMap:
  """BatchNorm2d affine parameters and running statistics (all (C,))."""
  return {
      f"{torch_module}.weight": Target(f"params/{flax_module}/scale", identity),
      f"{torch_module}.bias": Target(f"params/{flax_module}/bias", identity),
      f"{torch_module}.running_mean": Target(f"batch_stats/{flax_module}/mean", identity),
      f"{torch_module}.running_var": Target(f"batch_stats/{flax_module}/var", identity),
  }


def linear_entries(torch_module: str, flax_module: str) -> NameMap:
  """nn.Linear: weight (out, in) -> kernel (in, out); bias (out,)."""
  return {
      f"{torch_module}.weight": Target(f"params/{flax_module}/kernel", out_in_to_in_out),
      f"{torch_module}.bias": Target(f"params/{flax_module}/bias", identity),
  }


def cifar_resnet_name_map(depth: int) -> NameMap:
  """PyTorch names of the reference CIFAR ResNet-`depth` -> `CifarResNet` variables.

  conv1, bn1, layer{s}.{i}.{conv1,bn1,conv2,bn2} for stages s = 1..3 and
  blocks i < (depth - 2) / 6, linear. Option-A shortcuts have no tensors.
  """
  if (depth - 2) % 6:
    raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
  name_map = {**conv_entries("conv1", "conv1"), **batch_norm_entries("bn1", "bn1")}
  for stage in range(1, 4):
    for block in range((depth - 2) // 6):
      torch_block, flax_block = f"layer{stage}.{block}", f"layer{stage}_{block}"
      for layer in ("1", "2"):
        name_map.update(conv_entries(f"{torch_block}.conv{layer}", f"{flax_block}/conv{layer}"))
        name_map.update(batch_norm_entries(f"{torch_block}.bn{layer}", f"{flax_block}/bn{layer}"))
  name_map.update(linear_entries("linear", "linear"))
  return name_map


def cifar_resnet_depth(state_dict: Mapping[str, np.ndarray]) -> int:
  """6n + 2 from the largest block index `layer1.{n-1}` in the names."""
  blocks = [int(m[1]) for name in state_dict
            if (m := re.match(r"layer1\.(\d+)\.", name))]
  if not blocks:
    raise WeightImportError("no 'layer1.N.' tensors: not a CIFAR ResNet state_dict")
  return 6 * (max(blocks) + 1) + 2


def convert_cifar_resnet(state_dict: Mapping[str, np.ndarray],
                         depth: int | None = None) -> Imported:
  """A CIFAR ResNet state_dict ({name: array}) -> `Imported` for `resnet{depth}`.

  depth: inferred from the names when None. The class count comes from
  `linear.weight`. Raises WeightImportError on the first missing, unexpected or
  mis-shaped tensor.
  """
  depth = depth or cifar_resnet_depth(state_dict)
  if "linear.weight" not in state_dict:
    raise WeightImportError("missing tensor 'linear.weight' is not in the weight file")
  num_classes = int(np.shape(state_dict["linear.weight"])[0])
  model = CifarResNet(num_classes=num_classes, depth=depth)
  expected = model_shapes(model, (1, 32, 32, 3))
  variables = convert_tensors(state_dict, cifar_resnet_name_map(depth), expected, IGNORED)
  return Imported(variables, f"resnet{depth}", num_classes, {}, CIFAR_PREPROCESSING)


def load_cifar_resnet(path: str | pathlib.Path, depth: int | None = None) -> Imported:
  """Reads a CIFAR ResNet state_dict file (.npz, .safetensors, .th, ...) and converts it.

  The weights expect ImageNet mean/std normalisation of x / 255
  (`Imported.preprocessing`), 32x32 inputs.
  """
  return convert_cifar_resnet(read_state_dict(path), depth)
