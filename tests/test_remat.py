"""Rematerialised residual blocks (config.remat, models/layers.py `rematerialised`).

- the variables (names, shapes, initial values) are the same with and without remat, so
  checkpoints and imported weights fit both: test_same_variables_with_and_without_remat
- one step of the project's train step (train.train_step, stochastic depth on) gives the same
  loss, gradients and batch statistics: test_one_train_step_is_the_same_with_remat
- the forward pass of a deeper model keeps far fewer activations for the backward pass:
  test_remat_keeps_fewer_activations_for_the_backward_pass. (Not XLA's compiled memory
  analysis: XLA's CPU compiler drops the optimisation barriers that keep the recomputation
  next to the backward pass, so on CPU the compiled step's temporaries do not shrink;
  benchmarks/remat_memory.py records both.)
- config.remat reaches the model (task.build_model), a run may resume with it switched
  (workdir RESUMABLE_KEYS), and preflight refuses a non-bool and a model without blocks to
  rematerialise: test_config_remat_builds_a_rematerialised_model,
  test_preflight_refuses_remat_it_cannot_apply
"""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import digits_tiny
from effcv_jax import config_utils, models, preflight, task as task_lib, train
from effcv_jax import workdir as workdir_lib
from effcv_jax.errors import ConfigError

# One expanding stage of two MBConv blocks: the second adds its input back (stochastic depth).
_TINY_BLOCKS = ((2, 3, 2, 6, 16, 16),)
_IMAGE_SHAPE = (16, 16, 3)

# (registry name, kwargs): a CIFAR ResNet (on the default convolutions: oneDNN's custom calls
# where they load), a WRN (FixMatch's, with block dropout) and an EfficientNet, tiny, each with
# stochastic depth so that remat must replay the same draws.
_MODELS = {
    "resnet": ("resnet8", dict(width=4, drop_path_rate=0.3, conv_backend="auto")),
    "wrn": ("wrn10_1_fixmatch", dict(block_dropout_rate=0.3, drop_path_rate=0.3)),
    "efficientnet": ("efficientnet_b0", dict(blocks=_TINY_BLOCKS, drop_path_rate=0.5,
                                             dropout_rate=0.2)),
}


def _task(name: str, kwargs: dict, remat: bool) -> task_lib.Task:
  """A 10-class task of model `name` (convolutions on XLA unless kwargs say otherwise) whose
  optimiser is plain SGD at lr 1 (so an update is minus the gradient)."""
  model = models.build(name, 10, remat=remat, **{"conv_backend": "xla", **kwargs})
  return task_lib.Task(model=model, tx=optax.sgd(1.0), num_classes=10, input_mean=(0.5,),
                       input_std=(0.25,))


def _batch(batch_size: int, image_shape=_IMAGE_SHAPE) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (batch_size,) + image_shape, dtype=np.uint8),
          "label": rng.integers(0, 10, batch_size).astype(np.int32)}


@pytest.fixture(scope="module", params=sorted(_MODELS))
def stepped(request):
  """{remat: (state before, state after one train step, metrics)} of one model."""
  name, kwargs = _MODELS[request.param]
  out = {}
  for remat in (False, True):
    task = _task(name, kwargs, remat)
    state = task_lib.create_train_state(task, _IMAGE_SHAPE, seed=0)
    new_state, metrics = jax.jit(functools.partial(train.train_step, task))(state, _batch(8))
    out[remat] = (state, new_state, metrics)
  return out


def _paths(tree) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_same_variables_with_and_without_remat(stepped):
  plain, remat = stepped[False][0], stepped[True][0]
  for collection in ("params", "batch_stats"):
    plain_tree, remat_tree = getattr(plain, collection), getattr(remat, collection)
    assert _paths(remat_tree) == _paths(plain_tree)
    assert len(_paths(plain_tree)) > 10
    jax.tree.map(np.testing.assert_array_equal, remat_tree, plain_tree)


def test_one_train_step_is_the_same_with_remat(stepped):
  (before, plain, plain_metrics), (_, remat, remat_metrics) = stepped[False], stepped[True]
  assert float(plain_metrics["loss"]) > 0
  np.testing.assert_allclose(remat_metrics["loss"], plain_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(remat_metrics["grad_norm"], plain_metrics["grad_norm"], rtol=1e-5)
  # SGD at lr 1: params after = params before - gradient.
  plain_grads = jax.tree.map(jnp.subtract, before.params, plain.params)
  remat_grads = jax.tree.map(jnp.subtract, before.params, remat.params)
  assert float(optax.tree.norm(plain_grads)) > 0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               remat_grads, plain_grads)
  # The batch statistics moved, and moved the same way.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before.batch_stats,
                       plain.batch_stats)
  assert max(jax.tree.leaves(moved)) > 0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               remat.batch_stats, plain.batch_stats)


def _residual_bytes(remat: bool) -> int:
  """Bytes of the activations the training forward pass of ResNet-32 (width 8, 32 px
  batches of 32) keeps for its backward pass (train.backward_residual_bytes)."""
  task = _task("resnet32", dict(width=8), remat)
  state = task_lib.create_train_state(task, (32, 32, 3), seed=0, abstract=True)
  return train.backward_residual_bytes(task, state, (32, 32, 32, 3))


def test_remat_keeps_fewer_activations_for_the_backward_pass():
  plain, remat = _residual_bytes(False), _residual_bytes(True)
  # Without remat every convolution, batch norm and ReLU output of the 15 blocks is kept;
  # with it only each block's input (and the stem's and head's own).
  assert remat < 0.25 * plain, (remat, plain)


def test_config_remat_builds_a_rematerialised_model():
  base = digits_tiny.get_config()
  base.model, base.model_kwargs = "resnet8", ml_collections.ConfigDict()
  assert base.remat is False and task_lib.build_model(base).remat is False
  config = config_utils.with_overrides(base, {"remat": True})
  assert task_lib.build_model(config).remat is True
  preflight.check_config(config)
  saved = json.loads(base.to_json())
  assert workdir_lib.differing_keys(saved, config) == []
  del saved["remat"]       # a config.json written before the key existed
  assert workdir_lib.differing_keys(saved, base) == []
  assert workdir_lib.differing_keys(saved, config_utils.with_overrides(base, {"seed": 1})) == [
      ("seed", 0, 1)]


def _with_raw(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
  """`config` with `key` set to `value` past ConfigDict's type check (as a hand-edited
  config.json could have it)."""
  raw = config.to_dict()
  raw[key] = value
  return ml_collections.ConfigDict(raw)


@pytest.mark.parametrize("overrides, message", [
    ({"remat": True}, "config.remat = True does not fit config.model = 'cnn_small': model "
                      "'cnn_small' (SmallCNN) has no remat field, so its blocks cannot be "
                      "rematerialised (the residual models resnet*, wrn*, efficientnet_* have "
                      "it); set --config.remat=False"),
    ({"remat": 1}, "config.remat = 1 is out of range (allowed: True or False)"),
    ({"model_kwargs.remat": True}, "model_kwargs.remat is not read: set the config field remat"),
])
def test_preflight_refuses_remat_it_cannot_apply(overrides, message):
  config = digits_tiny.get_config()
  for key, value in overrides.items():
    if key.startswith("model_kwargs."):
      config.model_kwargs[key.split(".", 1)[1]] = value
    else:
      config = _with_raw(config, key, value)
  with pytest.raises(ConfigError) as error:
    preflight.check_config(config)
  assert message in str(error.value)
