"""AlexNet and VGG: torchvision's parameter counts (traced with jax.eval_shape: nothing is
allocated or compiled at 224 px), the feature-map arithmetic and the smallest input each layout
takes, adaptive average pooling against hand-worked values, and forward passes of the 32 px
layouts (batch 2): dropout, batch norm and the convolution backends; the CIFAR-10 augment sweep
rows that train them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import augment_methods, noisy_student_cifar10_4000
from effcv_jax import models, preflight, sweeps, task
from effcv_jax.models import alexnet, vgg
from effcv_jax.models.layers import adaptive_avg_pool
from effcv_jax.pretrained import default_head_patterns


def _abstract_variables(model, side: int):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3))))


def _param_count(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, kwargs, classes, side, params", [
    ("alexnet", {}, 1000, 224, 61_100_840),             # torchvision alexnet
    ("alexnet", {"batch_norm": True}, 1000, 224, 61_100_840 + 2 * (64 + 192 + 384 + 256 + 256)),
    ("vgg11", {}, 1000, 224, 132_863_336),              # torchvision vgg11
    ("vgg11_bn", {}, 1000, 224, 132_868_840),           # torchvision vgg11_bn
    ("vgg16", {}, 1000, 224, 138_357_544),              # torchvision vgg16
    ("vgg16_bn", {}, 1000, 224, 138_365_992),           # torchvision vgg16_bn
    ("alexnet", {"small_image": True}, 10, 32, 28_714_826),
    ("vgg11_bn", {"small_image": True}, 10, 32, 9_231_114),
    ("vgg16_bn", {"small_image": True}, 10, 32, 14_728_266),
])
def test_parameter_counts_and_logits_shape(name, kwargs, classes, side, params):
  model = models.build(name, classes, **kwargs)
  variables = _abstract_variables(model, side)
  assert _param_count(variables["params"]) == params
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, side, side, 3))), variables)
  assert logits.shape == (2, classes)


def test_layer_shapes_follow_the_papers_tables():
  params = _abstract_variables(models.build("alexnet", 1000), 224)["params"]
  assert [params[f"conv{i}"]["kernel"].shape for i in range(1, 6)] == [
      (11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
  assert params["fc6"]["kernel"].shape == (6 * 6 * 256, 4096)
  params = _abstract_variables(models.build("alexnet", 10, small_image=True), 32)["params"]
  assert params["conv1"]["kernel"].shape == (5, 5, 3, 64)
  assert params["fc6"]["kernel"].shape == (3 * 3 * 256, 4096)
  variables = _abstract_variables(models.build("vgg16_bn", 1000), 224)
  convs = [(s, i) for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
  assert set(variables["params"]) == ({f"conv{s}_{i}" for s, i in convs}
                                      | {f"bn{s}_{i}" for s, i in convs} | {"fc6", "fc7", "head"})
  assert set(variables["batch_stats"]) == {f"bn{s}_{i}" for s, i in convs}
  assert variables["params"]["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
  params = _abstract_variables(models.build("vgg11", 10, small_image=True), 32)["params"]
  assert set(params) == {"conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2",
                         "conv5_1", "conv5_2", "head"}
  assert params["head"]["kernel"].shape == (512, 10)


def test_feature_map_arithmetic_and_smallest_inputs():
  # 224 px: conv 11x11/4 pad 2 -> 55, pool 3/2 -> 27, conv 5x5 -> 27, pool -> 13, pool -> 6.
  assert alexnet.feature_size(alexnet.CONVS_224, 224) == 6
  # 222 px: (222 - 7) // 4 + 1 = 54 -> 26 -> 12 -> 5.
  assert alexnet.feature_size(alexnet.CONVS_224, 222) == 5
  assert alexnet.feature_size(alexnet.CONVS_32, 32) == 3      # 32 -> 15 -> 7 -> 3
  assert alexnet.feature_size(alexnet.CONVS_32, 30) == 2      # 30 -> 14 -> 6 -> 2
  assert vgg.feature_size(224) == 7 and vgg.feature_size(223) == 6 and vgg.feature_size(32) == 1
  sizes = {(name, small): models.min_input_size(models.build(name, 10, small_image=small))
           for name in ("alexnet", "vgg11_bn", "vgg16") for small in (False, True)}
  assert sizes == {("alexnet", False): 223, ("alexnet", True): 31, ("vgg11_bn", False): 224,
                   ("vgg11_bn", True): 32, ("vgg16", False): 224, ("vgg16", True): 32}
  assert models.min_input_size(models.build("resnet20", 10)) == 1


@pytest.mark.parametrize("name, kwargs, side, message", [
    ("alexnet", {}, 222, r"alexnet \(224 px layout\) needs inputs of at least 223 x 223 px "
                         r"\(its feature map must cover the 6 x 6 its classifier reads\), got "
                         r"222 x 222"),
    ("vgg16_bn", {}, 32, r"vgg16_bn \(224 px layout\) needs inputs of at least 224 x 224 px"),
    ("vgg11", {"small_image": True}, 28, r"vgg11 \(32 px layout\) needs inputs of at least "
                                         r"32 x 32 px \(its feature map must cover the 1 x 1"),
])
def test_too_small_inputs_are_refused_not_upsampled(name, kwargs, side, message):
  model = models.build(name, 10, **kwargs)
  with pytest.raises(ValueError, match=message):
    _abstract_variables(model, side)


def test_adaptive_avg_pool_matches_hand_worked_bins():
  # x[h, w] = 10 h + w on 5x5; bins of 5 -> 3 are rows/cols {0, 1}, {1, 2, 3}, {3, 4}.
  grid = 10.0 * np.arange(5)[:, None] + np.arange(5)[None, :]
  x = jnp.asarray(np.stack([grid, -grid], axis=-1)[None])       # (1, 5, 5, 2)
  means = np.array([0.5, 2.0, 3.5])
  expected = 10.0 * means[:, None] + means[None, :]
  np.testing.assert_allclose(adaptive_avg_pool(x, (3, 3))[0, ..., 0], expected, rtol=1e-6)
  np.testing.assert_allclose(adaptive_avg_pool(x, (3, 3))[0, ..., 1], -expected, rtol=1e-6)
  np.testing.assert_array_equal(adaptive_avg_pool(x, (5, 5)), x)
  # 2 -> 3 (PyTorch's up-sampling bins {0}, {0, 1}, {1}); 4 -> 1 is the global mean.
  pair = jnp.asarray([[[[1.0], [3.0]]]])                        # (1, 1, 2, 1)
  np.testing.assert_allclose(adaptive_avg_pool(pair, (1, 3))[0, 0, :, 0], [1.0, 2.0, 3.0])
  np.testing.assert_allclose(adaptive_avg_pool(x, (1, 1))[0, 0, 0], [22.0, -22.0], rtol=1e-6)


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))


@pytest.fixture(scope="module")
def small_models(images):
  """{name: (32 px model, its initialised variables)} for the forward-pass tests."""
  built = {}
  for name in ("alexnet", "vgg11_bn"):
    model = models.build(name, 10, small_image=True)
    built[name] = model, jax.jit(model.init)(jax.random.PRNGKey(0), images)
  return built


@pytest.mark.parametrize("name, dropout_by_default", [("alexnet", True), ("vgg11_bn", False)])
def test_32px_forward_pass_dropout_and_batch_norm(images, small_models, name,
                                                  dropout_by_default):
  model, variables = small_models[name]
  logits = model.apply(variables, images)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  np.testing.assert_array_equal(logits, model.apply(variables, images))

  def train(seed):
    return model.apply(variables, images, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.PRNGKey(seed)})
  (first, updates), (second, _) = train(1), train(2)
  assert (not np.allclose(first, second)) == dropout_by_default
  if "batch_stats" in variables:   # vgg11_bn: the running means move towards the batch's
    old = variables["batch_stats"]["bn1_1"]["mean"]
    assert not np.allclose(updates["batch_stats"]["bn1_1"]["mean"], old)


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn"])
def test_convolution_backends_give_the_same_logits(images, small_models, name):
  """The convolutions go through models/conv.py: 'auto' (oneDNN on one CPU) and 'xla' agree
  with lax's reference on the same weights."""
  model, variables = small_models[name]
  outputs = {backend: jax.jit(model.clone(conv_backend=backend).apply)(variables, images)
             for backend in ("lax", "auto", "xla")}
  for backend in ("auto", "xla"):
    np.testing.assert_allclose(outputs[backend], outputs["lax"], rtol=1e-4, atol=1e-4)


def test_registry_names_and_batch_norm_suffix():
  assert not models.build("vgg16", 10).batch_norm and models.build("vgg16_bn", 10).batch_norm
  assert models.build("vgg11_bn", 10).depth == 11
  assert not models.build("alexnet", 10).batch_norm
  for unknown in ("vgg19", "vgg16bn", "alexnet_bn"):
    with pytest.raises(ValueError, match="Unknown model"):
      models.build(unknown, 10)
  for name in ("alexnet", "vgg16"):   # head surgery (pretrained/head.py) finds the classifier
    assert default_head_patterns(models.build(name, 10)) == (r"head/.*",)


def test_architecture_rows_build_and_pass_preflight():
  """configs/augment_methods.py:cifar10's architecture rows: the 4,000-label task of the Noisy
  Student teacher (its flip + crop row) with AlexNet and VGG-11-BN in their 32 px layouts,
  AlexNet at its paper's learning rate; every row passes preflight."""
  configs = sweeps.variant_configs(augment_methods.get_config("cifar10"))
  teacher = noisy_student_cifar10_4000.get_config("cpu").teacher
  resnet, alex, vgg11 = (configs[name] for name in
                         ("flip_crop", "alexnet_flip_crop", "vgg11_bn_flip_crop"))
  assert resnet.to_dict() == teacher.to_dict()
  alex_model, vgg_model = task.build_model(alex), task.build_model(vgg11)
  assert isinstance(alex_model, alexnet.AlexNet) and alex_model.small_image
  assert isinstance(vgg_model, vgg.VGG) and vgg_model.small_image
  assert (vgg_model.depth, vgg_model.batch_norm) == (11, True)
  assert (alex.optimizer.lr, vgg11.optimizer.lr) == (0.01, teacher.optimizer.lr)
  for config in (resnet, alex, vgg11):
    preflight.check_config(config)
    assert (config.num_labelled, config.num_holdout, config.num_steps) == (4000, 5000, 6000)
    assert config.augment == teacher.augment
