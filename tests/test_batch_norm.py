"""models.layers.BatchNorm against flax's nn.BatchNorm, whose variables and results it keeps:
training outputs, gradients (the closed form of batch_norm_train against autodiff), running
averages, evaluation outputs, float32 and bfloat16, and the same results on 1 and 8 devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from effcv_jax.models import layers

SHAPE = (16, 5, 5, 6)


def _inputs(dtype):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x = (2.0 * jax.random.normal(keys[0], SHAPE) + 0.5).astype(dtype)
  variables = {"params": {"scale": 1.0 + 0.3 * jax.random.normal(keys[1], SHAPE[-1:]),
                          "bias": 0.2 * jax.random.normal(keys[2], SHAPE[-1:])},
               "batch_stats": {"mean": jnp.full(SHAPE[-1:], 0.1),
                               "var": jnp.full(SHAPE[-1:], 1.5)}}
  cotangent = jax.random.normal(keys[3], SHAPE)
  return x, variables, cotangent


def _train_step(module, variables, x, cotangent):
  """(output, new batch_stats, gradients of sum(relu(y) * cotangent) for params and x)."""
  def loss(params, x_):
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x_,
                              mutable=["batch_stats"])
    return jnp.sum(jax.nn.relu(y.astype(jnp.float32)) * cotangent), (y, updates)
  (_, (y, updates)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
      variables["params"], x)
  return y, updates["batch_stats"], grads


@pytest.mark.parametrize("dtype, module_dtype", [
    (jnp.float32, None), (jnp.bfloat16, jnp.bfloat16), (jnp.bfloat16, None)])
def test_batch_norm_equals_flax_in_training_and_evaluation(dtype, module_dtype):
  """Within rounding: float32 to 1e-5, bfloat16 arrays (inputs, outputs, input gradients)
  to about one bfloat16 step (2^-8 relative); float32 evaluation outputs equal."""
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  x, variables, cotangent = _inputs(dtype)
  kwargs = dict(momentum=0.8, epsilon=1e-3, dtype=module_dtype)
  ours = layers.BatchNorm(use_running_average=False, **kwargs)
  flax_bn = nn.BatchNorm(use_running_average=False, **kwargs)
  # The same variables, initialised alike, and left alone by initialisation.
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
      jnp.shape, flax_bn.init(jax.random.PRNGKey(1), x))
  initial = ours.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(initial["batch_stats"]["var"], np.ones(SHAPE[-1:]))
  np.testing.assert_array_equal(initial["params"]["scale"], np.ones(SHAPE[-1:]))

  got, want = (_train_step(m, variables, x, cotangent) for m in (ours, flax_bn))
  assert got[0].dtype == want[0].dtype
  np.testing.assert_allclose(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32),
                             atol=tolerance * 10, rtol=tolerance)
  for stat in ("mean", "var"):     # momentum * old + (1 - momentum) * the batch's
    np.testing.assert_allclose(got[1][stat], want[1][stat], rtol=1e-5, atol=1e-6)
  for name, have, expected in zip(("params", "x"), got[2], want[2]):
    for leaf_have, leaf_want in zip(jax.tree.leaves(have), jax.tree.leaves(expected)):
      scale = float(np.max(np.abs(np.asarray(leaf_want, np.float32))))
      np.testing.assert_allclose(np.asarray(leaf_have, np.float32),
                                 np.asarray(leaf_want, np.float32), atol=tolerance * scale,
                                 err_msg=name)

  evaluate = [m.copy(use_running_average=True) for m in (ours, flax_bn)]
  outputs = [np.asarray(m.apply(variables, x), np.float32) for m in evaluate]
  if dtype == jnp.float32:
    np.testing.assert_array_equal(outputs[0], outputs[1])
  else:
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=2.0 ** -7, atol=2.0 ** -7)


def test_closed_form_gradient_equals_autodiff_including_the_statistics():
  """A loss of the output and of the batch statistics: the custom VJP (with the mean's and
  variance's cotangents) against differentiating the same forward computation."""
  x, variables, cotangent = _inputs(jnp.float32)
  scale, bias = variables["params"]["scale"], variables["params"]["bias"]

  def reference(x_, scale_, bias_):
    mean, var = layers._batch_statistics(x_)
    y = (x_ - mean) * (jax.lax.rsqrt(var + 1e-3) * scale_) + bias_
    return y, mean, var

  def loss(function):
    def value(x_, scale_, bias_):
      y, mean, var = function(x_, scale_, bias_)
      return jnp.sum(y * cotangent) + jnp.sum(jnp.sin(mean)) + 3.0 * jnp.sum(var ** 2)
    return jax.jit(jax.grad(value, (0, 1, 2)))

  ours = loss(lambda *a: layers.batch_norm_train(*a, 1e-3, jnp.float32))(x, scale, bias)
  want = loss(reference)(x, scale, bias)
  for have, expected in zip(ours, want):
    np.testing.assert_allclose(have, expected, rtol=2e-4, atol=2e-4)


def test_one_and_eight_devices_agree():
  x, variables, cotangent = _inputs(jnp.float32)
  module = layers.BatchNorm(use_running_average=False)
  one = _train_step(module, variables, x, cotangent)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  eight = _train_step(module, variables, sharded, cotangent)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
