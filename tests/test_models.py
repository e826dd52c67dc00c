"""Models: sizes of the published architectures, shapes, shortcuts, dropout and stochastic depth."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effcv_jax import models
from effcv_jax.models.layers import DropPath, max_pool


def _param_count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, shape, params", [
    ("resnet20", (32, 32, 3), 269_722),    # He et al. 2016: 0.27M
    ("resnet56", (32, 32, 3), 853_018),    # 0.85M
    ("wrn28_2", (32, 32, 3), 1_467_610),   # FixMatch's WRN-28-2: 1.5M
    ("cnn_small", (28, 28, 1), 468_010),
])
def test_parameter_counts_and_logits_shape(name, shape, params):
  model = models.build(name, 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape)))
  assert _param_count(variables["params"]) == params
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((4,) + shape)), variables)
  assert logits.shape == (4, 10)


def test_resnet_layout_matches_pytorch_names():
  model = models.build("resnet20", 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert set(params) == {"conv1", "bn1", "linear"} | {f"layer{s}_{i}" for s in (1, 2, 3) for i in range(3)}
  # option A: the first block of stage 2 has no projection parameters.
  assert set(params["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2"}
  assert params["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 16, 32)


def test_option_a_shortcut_is_subsample_and_zero_pad():
  from effcv_jax.models.resnet_cifar import BasicBlock
  block = BasicBlock(planes=32, stride=2)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 16))
  variables = block.init(jax.random.PRNGKey(0), x, train=False)
  # zero the residual branch: the output is relu(shortcut(x)).
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "bn2" in str(path) and "scale" in str(path) else v,
      variables)
  y = block.apply(variables, x, train=False)
  expected = jnp.pad(jax.nn.relu(x[:, ::2, ::2, :]), ((0, 0), (0, 0), (0, 0), (8, 8)))
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_drop_path_drops_whole_examples_and_keeps_expectation():
  x = jnp.ones((4000, 3))
  y = DropPath(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  per_example = np.asarray(y[:, 0])
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6)
  assert np.all(y == y[:, :1])
  assert abs(per_example.mean() - 1.0) < 0.05
  assert np.array_equal(DropPath(0.25).apply({}, x, deterministic=True), x)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", {"drop_path_rate": 0.5}), ("resnet20", {"dropout_rate": 0.5}),
    ("wrn16_1", {"block_dropout_rate": 0.5}), ("cnn_small", {"dropout_rate": 0.5})])
def test_noise_is_random_in_training_and_off_in_inference(name, kwargs):
  shape = (2, 28, 28, 1) if name == "cnn_small" else (2, 32, 32, 3)
  model = models.build(name, 10, **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = model.init(jax.random.PRNGKey(0), x)
  train = lambda seed: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.PRNGKey(seed)})[0]
  assert not np.allclose(train(1), train(2))
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match="resnet"):
    models.build("vgg19", 10)
  with pytest.raises(ValueError, match="6n\\+2"):
    models.build("resnet21", 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 4)])
def test_max_pool_equals_flax_in_values_and_gradient(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  x = x.at[0, :4, :4].set(1.0)    # tied windows: the gradient goes to the first maximum
  np.testing.assert_array_equal(max_pool(x, (2, 2)), nn.max_pool(x, (2, 2), strides=(2, 2)))
  ours, flax_grad = (jax.grad(lambda x_, f=f: jnp.sum(f(x_) ** 2))(x) for f in (
      lambda x_: max_pool(x_, (2, 2)), lambda x_: nn.max_pool(x_, (2, 2), strides=(2, 2))))
  np.testing.assert_array_equal(ours, flax_grad)
