"""EfficientNet: published sizes, compound scaling, noise only in training, a few training steps.

Big variants are only traced (jax.eval_shape); what runs compiled is a three-block
EfficientNet (B0's first two stages at width 0.25) on 32x32 images, with variables
drawn in NumPy from the traced shapes so that no initialiser has to compile.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effcv_jax import models
from effcv_jax.models import efficientnet as effnet
from effcv_jax.models.layers import DropPath

_X32 = jnp.zeros((2, 32, 32, 3))


def _param_count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(model: nn.Module, x: jax.Array = _X32):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))


@functools.lru_cache(maxsize=None)
def _registered_shapes(name: str):
  return _shapes(models.build(name, 1000))


def _tiny(**kwargs) -> effnet.EfficientNet:
  """block1a (residual, drop-path rate 0), block2a (stride 2), block2b (residual)."""
  fields = dict(num_classes=10, width_coefficient=0.25, dropout_rate=0.0,
                drop_path_rate=0.0, stem_stride=1, blocks=effnet.B0_BLOCKS[:2])
  return effnet.EfficientNet(**{**fields, **kwargs})


def _numpy_variables(model: nn.Module, seed: int = 0):
  """He-normal kernels, zero biases, identity batch norm; shapes from eval_shape."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name or "'scale'" in name:
      return jnp.ones(leaf.shape)
    if "'kernel'" not in name:
      return jnp.zeros(leaf.shape)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, _shapes(model))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(model, variables, x, train, key):
  logits, _ = model.apply(variables, x, train=train, rngs={"dropout": key},
                          mutable=["batch_stats"])
  return logits


@pytest.mark.parametrize("name, params, batch_stats", [
    ("efficientnet_b0", 5_288_548, 42_016),   # Keras: 5,330,571 = these + 7 Normalization values
    ("efficientnet_b1", 7_794_184, 62_048),   # Keras: 7,856,239
    ("efficientnet_b7", 66_347_960, 310_720),  # Keras: 66,658,687
])
def test_parameter_counts_match_keras(name, params, batch_stats):
  variables = _registered_shapes(name)
  assert _param_count(variables["params"]) == params
  assert _param_count(variables["batch_stats"]) == batch_stats


def test_compound_scaling_rounds_filters_and_repeats():
  assert effnet.round_filters(32, 2.0) == 64
  assert effnet.round_filters(1280, 2.0) == 2560
  assert effnet.round_filters(16, 1.1) == 16     # 17.6 -> nearest multiple of 8
  assert effnet.round_filters(40, 1.4) == 56
  assert effnet.round_filters(356, 0.1) == 40    # 35.6 -> 32 would lose > 10 %
  assert effnet.round_filters(4, 0.5) == 8       # never below the divisor
  assert [effnet.round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]
  params = _registered_shapes("efficientnet_b7")["params"]
  assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  assert params["top_conv"]["kernel"].shape == (1, 1, 640, 2560)
  assert len([k for k in params if k.startswith("block")]) == 55
  assert "block6m" in params and "block6n" not in params


def test_scaling_table_and_registry_defaults():
  assert effnet.scaling("b0") == effnet.Scaling(1.0, 1.0, 224, 0.2)
  assert effnet.scaling("efficientnet_b7").resolution == 600
  assert [effnet.scaling(f"b{i}").resolution for i in range(8)] == [
      224, 240, 260, 300, 380, 456, 528, 600]
  b4 = models.build("efficientnet_b4", 10)
  assert (b4.width_coefficient, b4.depth_coefficient, b4.dropout_rate) == (1.4, 1.8, 0.4)
  assert (b4.drop_path_rate, b4.se_ratio, b4.stem_stride) == (0.2, 0.25, 2)
  b0 = models.build("efficientnet_b0", 10, dropout_rate=0.5, drop_path_rate=0.3,
                    stem_stride=1)
  assert (b0.num_classes, b0.dropout_rate, b0.drop_path_rate, b0.stem_stride) == (10, 0.5, 0.3, 1)
  with pytest.raises(ValueError, match="efficientnet_b"):
    models.build("efficientnet_b8", 10)


def test_block_layout_and_logits_shape():
  model = models.build("efficientnet_b0", 10, stem_stride=1)
  variables = _shapes(model)
  block = variables["params"]["block2a"]
  assert set(block) == {"expand_conv", "expand_bn", "dwconv", "bn", "se_reduce",
                        "se_expand", "project_conv", "project_bn"}
  assert block["dwconv"]["kernel"].shape == (3, 3, 1, 96)      # depthwise
  assert block["se_reduce"]["kernel"].shape == (1, 1, 96, 4)   # 0.25 * 16 input channels
  assert "expand_conv" not in variables["params"]["block1a"]   # expansion ratio 1
  logits = jax.eval_shape(lambda v: model.apply(v, _X32), variables)
  assert logits.shape == (2, 10)
  # Stem stride 1 on 32x32 leaves 2x2 before pooling; stride 2 (ImageNet) leaves 1x1.
  features = lambda m: jax.eval_shape(
      lambda v: m.apply(v, _X32, capture_intermediates=lambda mdl, _: mdl.name == "top_bn")[1],
      variables)["intermediates"]["top_bn"]["__call__"][0].shape
  assert features(model) == (2, 2, 2, 1280)
  assert features(models.build("efficientnet_b0", 10)) == (2, 1, 1, 1280)


def test_drop_path_rate_grows_linearly_on_residual_blocks():
  blocks = effnet.block_configs(1.0, 1.0, 0.2)
  assert len(blocks) == 16
  np.testing.assert_allclose([b.drop_path_rate for b in blocks], [0.2 * i / 16 for i in range(16)])
  # The rates the module uses: a DropPath only in blocks with a residual connection.
  model = models.build("efficientnet_b0", 10, drop_path_rate=0.2)
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath):
      seen[context.module.path[0]] = context.module.rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _shapes(model)
  residual = {b.name: b.drop_path_rate for b in blocks
              if b.stride == 1 and b.in_filters == b.out_filters}
  assert set(residual) == {"block2b", "block3b", "block4b", "block4c", "block5b",
                           "block5c", "block6b", "block6c", "block6d"}
  assert seen == residual


def test_dropout_and_drop_path_are_random_in_training_only():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  variables = _numpy_variables(_tiny())
  key1, key2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  for noise in ({"dropout_rate": 0.5}, {"drop_path_rate": 0.9}):
    model = _tiny(**noise)
    # Several keys: two drop-path masks over 4 examples can coincide by chance.
    outputs = [_forward(model, variables, x, True, jax.random.PRNGKey(k)) for k in range(1, 5)]
    assert not all(np.allclose(outputs[0], other) for other in outputs[1:])
  model = _tiny(dropout_rate=0.5, drop_path_rate=0.9)
  logits = _forward(model, variables, x, False, key1)
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
  np.testing.assert_array_equal(logits, _forward(model, variables, x, False, key2))


def test_a_few_training_steps_reduce_the_loss():
  model = _tiny(dropout_rate=0.2, drop_path_rate=0.2)
  variables = _numpy_variables(model)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
  y = jnp.arange(8) % 10
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, batch_stats, opt_state, key):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                      train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state["batch_stats"], opt_state, loss

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  losses = []
  for i in range(6):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]
