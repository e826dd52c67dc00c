"""PyTorch state_dict import (CIFAR ResNets), structure checks and head surgery.

The imported ResNet-20 is checked against a NumPy forward pass written here
from the PyTorch-layout tensors (no shared code with the importer), and against
the labels of CIFAR-10 training images it was trained on.
"""

import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import data_file, import_or_skip
from effcv_jax import models
from effcv_jax.pretrained import (WeightImportError, check_matches_model, check_variables,
                                  convert_cifar_resnet, load_cifar_resnet, model_shapes,
                                  read_state_dict, replace_head)
from effcv_jax.pretrained.common import flatten, unflatten

NUM_EVAL = 1000
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


# --------------------------------------------------------------------------
# NumPy reference of the PyTorch CIFAR ResNet (tensors in PyTorch layout).

def np_conv3x3(x: np.ndarray, weight_oihw: np.ndarray, stride: int) -> np.ndarray:
  """3x3 conv, padding 1 on every side: x (B, H, W, I), weight (O, I, 3, 3) -> (B, H/s, W/s, O).

  A sum over the 9 kernel offsets of shifted-input matmuls.
  """
  b, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
  out = np.zeros((b, out_h, out_w, weight_oihw.shape[0]), x.dtype)
  for dy in range(3):
    for dx in range(3):
      window = padded[:, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride, :]
      out += window @ weight_oihw[:, :, dy, dx].T
  return out


def np_batch_norm(x: np.ndarray, sd: dict, name: str, eps: float = 1e-5) -> np.ndarray:
  """Inference BN with running statistics, PyTorch names."""
  inv = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"] + eps)
  return (x - sd[f"{name}.running_mean"]) * inv + sd[f"{name}.bias"]


def np_cifar_resnet(images_uint8: np.ndarray, sd: dict, depth: int) -> np.ndarray:
  """Logits of the reference CIFAR ResNet (option-A shortcuts), float64."""
  relu = lambda v: np.maximum(v, 0.0)
  x = (images_uint8 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  x = relu(np_batch_norm(np_conv3x3(x, sd["conv1.weight"], 1), sd, "bn1"))
  for stage in (1, 2, 3):
    for block in range((depth - 2) // 6):
      name = f"layer{stage}.{block}"
      stride = 2 if stage > 1 and block == 0 else 1
      y = relu(np_batch_norm(np_conv3x3(x, sd[f"{name}.conv1.weight"], stride), sd, f"{name}.bn1"))
      y = np_batch_norm(np_conv3x3(y, sd[f"{name}.conv2.weight"], 1), sd, f"{name}.bn2")
      shortcut = x
      if stride != 1 or x.shape[-1] != y.shape[-1]:   # option A: subsample, zero-pad channels
        extra = y.shape[-1] - x.shape[-1]
        shortcut = np.pad(x[:, ::2, ::2, :],
                          ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
      x = relu(y + shortcut)
  pooled = x.mean(axis=(1, 2))
  return pooled @ sd["linear.weight"].T + sd["linear.bias"]


# --------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="module")
def resnet20_file():
  return data_file("weights/cifar10_resnet20_torch_names.npz")


@pytest.fixture(scope="module")
def resnet20(resnet20_file):
  return load_cifar_resnet(resnet20_file)


@pytest.fixture(scope="module")
def cifar_head():
  """The first NUM_EVAL CIFAR-10 training images (uint8 NHWC) and labels."""
  with np.load(data_file("cifar10_train.npz")) as data:
    return data["x_train"][:NUM_EVAL], data["y_train"][:NUM_EVAL].astype(np.int64)


def fake_state_dict(depth: int = 8, num_classes: int = 10, seed: int = 0) -> dict:
  """Random tensors with the names and PyTorch shapes of CIFAR ResNet-`depth`."""
  rng = np.random.default_rng(seed)
  sd = {}

  def bn(name, c):
    sd.update({f"{name}.weight": rng.normal(size=c), f"{name}.bias": rng.normal(size=c),
               f"{name}.running_mean": rng.normal(size=c),
               f"{name}.running_var": rng.uniform(0.5, 2, size=c),
               f"{name}.num_batches_tracked": np.array(7)})

  sd["conv1.weight"] = rng.normal(size=(16, 3, 3, 3))
  bn("bn1", 16)
  in_planes = 16
  for stage, planes in zip((1, 2, 3), (16, 32, 64)):
    for block in range((depth - 2) // 6):
      name = f"layer{stage}.{block}"
      sd[f"{name}.conv1.weight"] = rng.normal(size=(planes, in_planes, 3, 3))
      bn(f"{name}.bn1", planes)
      sd[f"{name}.conv2.weight"] = rng.normal(size=(planes, planes, 3, 3))
      bn(f"{name}.bn2", planes)
      in_planes = planes
  sd["linear.weight"] = rng.normal(size=(num_classes, 64))
  sd["linear.bias"] = rng.normal(size=num_classes)
  return {k: np.asarray(v, np.float32 if v.ndim else np.int64) for k, v in sd.items()}


# --------------------------------------------------------------------------
# The real ResNet-20.

def test_resnet20_matches_numpy_reference_and_labels(resnet20, resnet20_file, cifar_head):
  images, labels = cifar_head
  model = resnet20.build_model()
  assert (resnet20.model_name, resnet20.num_classes) == ("resnet20", 10)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits = np.asarray(apply(resnet20.variables, resnet20.preprocessing(images)))

  with np.load(resnet20_file) as data:
    sd = {k: data[k].astype(np.float64) for k in data.files}
  reference = np.concatenate([np_cifar_resnet(images[i:i + 250], sd, depth=20)
                              for i in range(0, NUM_EVAL, 250)])

  np.testing.assert_array_equal(logits.argmax(-1), reference.argmax(-1))
  np.testing.assert_allclose(logits, reference, atol=2e-3 * np.abs(reference).max())
  accuracy = float((logits.argmax(-1) == labels).mean())
  assert accuracy >= 0.98, accuracy      # seen: 0.999 (training images)


def test_resnet20_preprocessing_is_imagenet_mean_std(resnet20):
  prep = resnet20.preprocessing
  assert prep.config_overrides() == {"input_mean": (0.485, 0.456, 0.406),
                                     "input_std": (0.229, 0.224, 0.225)}
  x = np.array([[[[0, 128, 255]]]], np.uint8)
  np.testing.assert_allclose(prep(x), (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)


def test_imported_variables_match_model_init(resnet20):
  check_matches_model(resnet20.variables, resnet20.build_model(), (1, 32, 32, 3))
  assert set(resnet20.variables) == {"params", "batch_stats"}


# --------------------------------------------------------------------------
# Name and layout mapping on fake state_dicts.

def test_fake_state_dict_maps_names_and_layouts():
  sd = fake_state_dict(depth=8)
  imported = convert_cifar_resnet(sd)               # depth inferred
  assert imported.model_name == "resnet8"
  params, stats = imported.variables["params"], imported.variables["batch_stats"]
  w = sd["layer2.0.conv1.weight"]                   # (out, in, kh, kw)
  kernel = np.asarray(params["layer2_0"]["conv1"]["kernel"])   # (kh, kw, in, out)
  assert kernel.shape == (3, 3, 16, 32)
  assert kernel[2, 0, 5, 7] == w[7, 5, 2, 0]
  np.testing.assert_array_equal(params["linear"]["kernel"], sd["linear.weight"].T)
  np.testing.assert_array_equal(params["layer3_0"]["bn2"]["scale"], sd["layer3.0.bn2.weight"])
  np.testing.assert_array_equal(params["bn1"]["bias"], sd["bn1.bias"])
  np.testing.assert_array_equal(stats["layer1_0"]["bn1"]["mean"], sd["layer1.0.bn1.running_mean"])
  np.testing.assert_array_equal(stats["layer1_0"]["bn1"]["var"], sd["layer1.0.bn1.running_var"])


def test_num_batches_tracked_is_ignored_and_optional():
  """BN step counters are not model variables: with or without them the conversion gives the
  same variables, one per other tensor, none holding a counter, shaped as the model's."""
  full = fake_state_dict()
  counters = [k for k in full if k.endswith(".num_batches_tracked")]
  assert counters                                   # the fake carries them, as PyTorch's do
  without = {k: v for k, v in full.items() if k not in counters}
  with_counters, without_counters = convert_cifar_resnet(full), convert_cifar_resnet(without)
  assert with_counters.model_name == without_counters.model_name == "resnet8"
  converted, expected = flatten(with_counters.variables), flatten(without_counters.variables)
  assert converted.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(converted[path], value, err_msg=path)
  assert len(converted) == len(without)             # every other tensor, once
  assert not any("num_batches" in path or "tracked" in path for path in converted)
  check_variables(with_counters.variables, model_shapes(models.build("resnet8", 10),
                                                        (1, 32, 32, 3)))


def test_missing_tensor_is_named():
  sd = fake_state_dict()
  del sd["layer2.0.bn2.running_var"]
  with pytest.raises(WeightImportError, match=r"missing tensor 'layer2\.0\.bn2\.running_var'"):
    convert_cifar_resnet(sd)


def test_unexpected_tensor_is_named():
  sd = fake_state_dict()
  sd["layer1.0.shortcut.0.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  with pytest.raises(WeightImportError,
                     match=r"unexpected tensor 'layer1\.0\.shortcut\.0\.weight'"):
    convert_cifar_resnet(sd)


def test_extra_block_for_given_depth_is_unexpected():
  with pytest.raises(WeightImportError, match=r"unexpected tensor 'layer1\.1\.conv1\.weight' "
                                              r"\(and \d+ more\)"):
    convert_cifar_resnet(fake_state_dict(depth=14), depth=8)


def test_misshaped_tensor_is_named():
  sd = fake_state_dict()
  sd["layer2.0.conv1.weight"] = np.zeros((32, 32, 3, 3), np.float32)   # in should be 16
  with pytest.raises(WeightImportError, match=r"tensor 'layer2\.0\.conv1\.weight' has shape "
                                              r"\(32, 32, 3, 3\).*expects \(3, 3, 16, 32\)"):
    convert_cifar_resnet(sd)


def test_misshaped_linear_is_named():
  sd = fake_state_dict()
  sd["linear.weight"] = np.zeros((10, 63), np.float32)
  with pytest.raises(WeightImportError, match=r"tensor 'linear\.weight'"):
    convert_cifar_resnet(sd)


def test_class_count_comes_from_linear():
  imported = convert_cifar_resnet(fake_state_dict(num_classes=100))
  assert imported.num_classes == 100
  assert imported.variables["params"]["linear"]["kernel"].shape == (64, 100)


# --------------------------------------------------------------------------
# File formats.

def test_npz_and_safetensors_with_module_prefix(tmp_path):
  sd = fake_state_dict()
  prefixed = {f"module.{k}": v for k, v in sd.items()}
  np.savez(tmp_path / "w.npz", **prefixed)
  save_file(prefixed, str(tmp_path / "w.safetensors"))
  for name in ("w.npz", "w.safetensors"):
    read = read_state_dict(tmp_path / name)
    assert sorted(read) == sorted(sd)               # prefix gone (safetensors sorts names)
    for key in sd:
      np.testing.assert_array_equal(read[key], sd[key])
  a = load_cifar_resnet(tmp_path / "w.npz").variables
  b = load_cifar_resnet(tmp_path / "w.safetensors").variables
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_unknown_suffix_is_refused(tmp_path):
  (tmp_path / "w.pkl").write_bytes(b"")
  with pytest.raises(WeightImportError, match="unknown state_dict format"):
    read_state_dict(tmp_path / "w.pkl")


def test_torch_pickle_equals_npz_without_torch(monkeypatch, resnet20):
  monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` raises ImportError
  from_th = load_cifar_resnet(data_file("weights/resnet20-12fca82f.th"))
  assert from_th.model_name == "resnet20"
  jax.tree.map(np.testing.assert_array_equal, from_th.variables, resnet20.variables)


# --------------------------------------------------------------------------
# Structure check and head surgery.

def test_check_variables_names_first_difference(resnet20):
  expected = model_shapes(models.build("resnet20", 10), (1, 32, 32, 3))
  flat = flatten(resnet20.variables)
  missing = unflatten({k: v for k, v in flat.items() if k != "params/layer3_2/bn1/scale"})
  with pytest.raises(WeightImportError, match=r"missing variable 'params/layer3_2/bn1/scale'"):
    check_variables(missing, expected)
  extra = unflatten({**flat, "params/extra/kernel": np.zeros(3)})
  with pytest.raises(WeightImportError, match=r"unexpected variable 'params/extra/kernel'"):
    check_variables(extra, expected)
  bad = unflatten({**flat, "batch_stats/bn1/mean": np.zeros(17)})
  with pytest.raises(WeightImportError, match=r"'batch_stats/bn1/mean' has shape \(17,\)"):
    check_variables(bad, expected)


def test_replace_head_keeps_backbone_and_reports_new_paths(resnet20):
  variables, new_paths = replace_head(resnet20.variables, "resnet20", 100, jax.random.key(1))
  assert new_paths == ["linear/bias", "linear/kernel"]
  new_model = models.build("resnet20", 100)
  check_matches_model(variables, new_model, (1, 32, 32, 3))
  assert variables["params"]["linear"]["kernel"].shape == (64, 100)
  old, new = flatten(resnet20.variables), flatten(variables)
  assert set(old) == set(new)
  for path, value in old.items():
    if not path.startswith("params/linear/"):
      np.testing.assert_array_equal(new[path], value)   # bit-identical backbone
      assert new[path] is value
  x = np.zeros((2, 32, 32, 3), np.float32)
  assert new_model.apply(variables, x).shape == (2, 100)


def test_replace_head_with_module_and_custom_patterns():
  imported = convert_cifar_resnet(fake_state_dict(depth=8))
  variables, new_paths = replace_head(imported.variables, imported.build_model(), 5,
                                      jax.random.key(0),
                                      head_patterns=[r"linear/.*", r"layer3_0/bn2/.*"])
  assert new_paths == ["layer3_0/bn2/bias", "layer3_0/bn2/scale", "linear/bias", "linear/kernel"]
  assert variables["params"]["linear"]["kernel"].shape == (64, 5)
  # A re-initialised BN starts at scale 1 and running var 1, whatever it was.
  np.testing.assert_array_equal(variables["batch_stats"]["layer3_0"]["bn2"]["var"], np.ones(64))
  np.testing.assert_array_equal(variables["params"]["layer3_0"]["bn2"]["scale"], np.ones(64))
  np.testing.assert_array_equal(variables["params"]["layer3_0"]["bn1"]["scale"],
                                imported.variables["params"]["layer3_0"]["bn1"]["scale"])


def test_replace_head_refuses_wrong_backbone(resnet20):
  with pytest.raises(WeightImportError, match=r"unexpected variable '\w+/layer1_1/"):
    replace_head(resnet20.variables, "resnet8", 10, jax.random.key(0))
  with pytest.raises(WeightImportError, match=r"backbone variable '\w+/layer1_1/"):
    replace_head(fake_resnet8_variables(), "resnet20", 10, jax.random.key(0))
  with pytest.raises(WeightImportError, match=r"backbone variable 'params/bn1/bias' has "
                                              r"shape \(16,\), the model expects \(32,\)"):
    replace_head(resnet20.variables, "resnet20", 10, jax.random.key(0), width=32)
  with pytest.raises(WeightImportError, match="match no parameter"):
    replace_head(resnet20.variables, "resnet20", 10, jax.random.key(0), head_patterns=["fc/.*"])


def fake_resnet8_variables():
  return convert_cifar_resnet(fake_state_dict(depth=8)).variables
