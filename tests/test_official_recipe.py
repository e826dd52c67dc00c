"""The official recipes' parts: FixMatch's WRN-28-2, the small-image EfficientNet, TF's RMSProp
and exponential schedule, labelled-only label smoothing, per-iteration unlabelled ratios and
the official stochastic per-class balancing. Numbers are worked by hand from the references'
formulas (cited in each test)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.common import base_config
from effcv_jax import models, noisy_student, optim, preflight
from effcv_jax.data import WithSoftLabels
from effcv_jax.errors import ConfigError
from effcv_jax.pseudo_label import balance_stochastic, select

_X32 = jnp.zeros((1, 32, 32, 3))


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def fixmatch_wrn():
  model = models.build("wrn28_2_fixmatch", 10)
  return model, model.init(jax.random.PRNGKey(0), _X32)


def test_fixmatch_wrn28_2_has_the_reference_parameters(fixmatch_wrn):
  """google-research/fixmatch libml/models.py ResNet(filters=32, scales=3, repeat=4): the
  plain WRN-28-2's 1,467,610 parameters plus a bias on each convolution: the stem (16), two
  3x3 convs per block (4 blocks x 2 x (32 + 64 + 128) = 1,792) and the three 1x1 shortcuts
  (32 + 64 + 128 = 224): 1,469,642."""
  model, variables = fixmatch_wrn
  assert _count(variables["params"]) == 1_467_610 + 16 + 1_792 + 224 == 1_469_642
  params = variables["params"]
  assert params["conv1"]["bias"].shape == (16,)
  assert params["block3_0"]["shortcut"]["bias"].shape == (128,)
  assert not np.any(params["block2_1"]["conv2"]["bias"])          # biases start at 0
  del model
  plain = models.build("wrn28_2", 10)
  assert set(plain.init(jax.random.PRNGKey(0), _X32)["params"]["block1_0"]["conv1"]) == {"kernel"}


def test_fixmatch_wrn_batch_norm_activation_and_shortcuts():
  """Momentum 0.001 in PyTorch's sense (flax 0.999) and epsilon 1e-3; leaky ReLU 0.1; a
  projecting shortcut reads the raw input except in the first stage, where it reads the
  pre-activation (FixMatch's activate_before_residual)."""
  from effcv_jax.models.wide_resnet import FIXMATCH, WideBlock
  assert (FIXMATCH.bn_momentum, FIXMATCH.bn_epsilon) == (0.999, 1e-3)
  np.testing.assert_allclose(FIXMATCH.activation(jnp.array([-2.0, 3.0])), [-0.2, 3.0])
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4)) * 3.0 + 1.0
  for raw in (True, False):
    block = WideBlock(planes=8, stride=2, variant=FIXMATCH, raw_shortcut=raw)
    variables = block.init(jax.random.PRNGKey(0), x, train=False)
    # Zero the residual branch's last conv: the output is the shortcut alone.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "conv2" in jax.tree_util.keystr(path) else v,
        variables)
    out = block.apply(variables, x, train=False)
    stats = variables["batch_stats"]["bn1"]
    pre = FIXMATCH.activation((x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3))
    source = x if raw else pre
    shortcut = variables["params"]["shortcut"]
    expected = (jnp.einsum("bhwc,cd->bhwd", source[:, ::2, ::2], shortcut["kernel"][0, 0])
                + shortcut["bias"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # Training updates the running mean by 0.001 of the batch mean (from 0).
  block = WideBlock(planes=4, stride=1, variant=FIXMATCH)
  variables = block.init(jax.random.PRNGKey(0), x, train=False)
  _, updated = block.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(updated["batch_stats"]["bn1"]["mean"],
                             0.001 * np.mean(np.asarray(x), axis=(0, 1, 2)), rtol=1e-4)


def _top_map(**kwargs):
  model = models.build("efficientnet_b0", 10, **kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _X32))
  _, state = jax.eval_shape(lambda v: model.apply(
      v, _X32, capture_intermediates=lambda mdl, _: mdl.name == "top_bn"), variables)
  return state["intermediates"]["top_bn"]["__call__"][0].shape


def test_small_image_efficientnet_has_a_4x4_final_map():
  """noisystudent efficientnet_builder.py small_image_model: stem stride 2, stages 2 and 3
  stride 1: 32 -> 16 (stem) -> 16 -> 16 -> 8 (stage 4) -> 8 -> 4 (stage 6) -> 4."""
  assert _top_map(small_image=True) == (1, 4, 4, 1280)
  assert _top_map(stem_stride=1) == (1, 2, 2, 1280)
  assert _top_map() == (1, 1, 1, 1280)


def test_exponential_schedule_hand_worked():
  """utils.py build_learning_rate: base * step / warmup before warmup_steps, then
  base * 0.97 ** floor(step / decay_steps) with the step counted from 0."""
  schedule = optim.make_schedule("exponential", 0.256, 1000, 10, decay_rate=0.97,
                                 decay_every_steps=7.5)
  got = [float(schedule(step)) for step in (0, 5, 9, 10, 14, 15, 100)]
  # 0.256 * 0.97 = 0.24832; * 0.97 = 0.2408704; 100 / 7.5 = 13.3: 0.256 * 0.97 ** 13 = 0.1722950
  np.testing.assert_allclose(got, [0.0, 0.128, 0.2304, 0.24832, 0.24832, 0.2408704, 0.1722950],
                             rtol=1e-6)
  smooth = optim.make_schedule("exponential", 1.0, 100, 0, decay_rate=0.5, decay_every_steps=4,
                               staircase=False)
  np.testing.assert_allclose(float(smooth(2)), 0.5 ** 0.5, rtol=1e-6)
  config = base_config()
  config.optimizer.update(schedule="exponential", lr=0.256, warmup_steps=10,
                          decay_every_steps=7.5)
  assert float(optim.schedule_from_config(config.optimizer, 1000)(15)) == pytest.approx(0.2408704)
  with pytest.raises(ConfigError, match="optimizer.decay_every_steps"):
    optim.make_schedule("exponential", 0.1, 100)


def test_exponential_schedule_without_decay_steps_is_refused_by_preflight():
  config = base_config()
  config.dataset = "pkg:digits"
  config.optimizer.schedule = "exponential"
  with pytest.raises(ConfigError, match="decay_every_steps > 0"):
    preflight.check_config(config)
  config.optimizer.decay_every_steps = 12.5
  preflight.check_config(config)


def test_rmsprop_is_tf1s_hand_worked():
  """tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1e-3): ms
  starts at 1; ms = 0.9 ms + 0.1 g^2; mom = 0.9 mom + lr g / sqrt(ms + eps); w -= mom.
  w = 1, lr 0.1, g = 0.5: ms = 0.925, mom = 0.05 / sqrt(0.926) = 0.0519594, w = 0.9480406;
  g = -0.2: ms = 0.8365, mom = 0.0467635 - 0.02 / sqrt(0.8375) = 0.0249092, w = 0.9231314."""
  params = {"w": jnp.array([1.0])}
  tx = optim.build_optimizer(params, name="rmsprop", schedule=lambda step: 0.1, momentum=0.9)
  state = tx.init(params)
  for grad, expected in ((0.5, 0.9480406), (-0.2, 0.9231314)):
    updates, state = tx.update({"w": jnp.array([grad])}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], [expected], rtol=1e-6)


def test_rmsprop_weight_decay_and_grad_scale():
  """Coupled L2 on kernels (the official loss adds wd * sum(w^2) / 2): the first step's
  gradient is grad_scale * g + wd * w. With g = 0.5, grad_scale 2, wd 0.1, w = 2: 1.2;
  ms = 0.9 + 0.1 * 1.44 = 1.044; the update is 0.1 * 1.2 / sqrt(1.045) = 0.1173878."""
  params = {"kernel": jnp.full((1, 1), 2.0), "bias": jnp.array([2.0])}
  tx = optim.build_optimizer(params, name="rmsprop", schedule=lambda step: 0.1,
                             weight_decay=0.1, grad_scale=2.0)
  grads = {"kernel": jnp.full((1, 1), 0.5), "bias": jnp.array([0.6])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], [[-0.1173878]], rtol=1e-6)
  # The bias has no decay: 2 * 0.6 = 1.2 too, the same update.
  np.testing.assert_allclose(updates["bias"], [-0.1173878], rtol=1e-6)


def test_labelled_examples_alone_are_smoothed():
  """main.py: tf.losses.softmax_cross_entropy(label_smoothing=0.1) on the labelled examples,
  targets 0.9 * one_hot + 0.1 / K; the pseudo-labels' cross-entropy is not smoothed."""
  source = [{"image": np.zeros((2, 2, 1), np.uint8), "label": 3}]
  record = WithSoftLabels(source, 5, 0.1)[0]
  np.testing.assert_allclose(record["soft_label"], [0.02, 0.02, 0.02, 0.92, 0.02], rtol=1e-6)
  np.testing.assert_array_equal(WithSoftLabels(source, 5)[0]["soft_label"], np.eye(5)[3])
  config = ml_collections.ConfigDict(dict(labelled_label_smoothing=0.1))
  run_data = type("RunData", (), {"train": source})()
  student = ml_collections.ConfigDict(dict(num_classes=5))
  # pylint: disable-next=protected-access
  labelled = noisy_student._labelled_source(config, run_data, student)
  assert labelled.smoothing == 0.1


def test_unlabelled_ratio_per_iteration():
  config = ml_collections.ConfigDict(dict(unlabelled_ratio=2.0, unlabelled_ratios=(1.0, 3.0)))
  assert [noisy_student.unlabelled_ratio(config, i) for i in (1, 2, 5)] == [1.0, 3.0, 3.0]
  config.unlabelled_ratios = ()
  assert noisy_student.unlabelled_ratio(config, 4) == 2.0
  bad = ml_collections.ConfigDict(dict(unlabelled_ratios=(1.0, -3.0)))
  with pytest.raises(ConfigError, match="unlabelled_ratios"):
    preflight.check_rules(bad, noisy_student.SETTINGS_RULES)


# Class 0: 0.96 and 0.93 are the 2 wanted (threshold 0.93), 0.87 / 0.5 / 0.35 are dropped and
# 0.2 is below the confidence threshold 0.3. Class 1: three in the bin [0.55, 0.56), kept
# 2/3 of a time each. Class 2: one example, kept twice. Class 3 (per_class 2): 0.7 and 0.45,
# kept once each.
_CLASSES = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3, 3])
_CONFIDENCE = np.array([0.96, 0.93, 0.87, 0.5, 0.35, 0.2, 0.555, 0.551, 0.552, 0.4, 0.7, 0.45])


def test_stochastic_balancing_hand_worked():
  """filter_unlabel.py: per class the highest 0.01 threshold >= 0.3 that per_class examples
  reach; each kept example copied per_class / n times, rounded stochastically."""
  counts = np.stack([np.bincount(balance_stochastic(_CLASSES, _CONFIDENCE, 2, 4, 0.3, seed),
                                 minlength=len(_CLASSES)) for seed in range(600)])
  np.testing.assert_array_equal(counts[:, [0, 1]], 1)              # class 0: exactly these two
  np.testing.assert_array_equal(counts[:, [2, 3, 4, 5]], 0)
  np.testing.assert_array_equal(counts[:, 9], 2)                   # class 2: 2 / 1 copies
  np.testing.assert_array_equal(counts[:, [10, 11]], 1)            # class 3: 2 / 2 copies
  class_1 = counts[:, 6:9]
  assert set(np.unique(class_1)) == {0, 1}
  np.testing.assert_allclose(class_1.mean(axis=0), 2 / 3, atol=0.07)  # 600 draws: sd 0.019
  # per_class 5 for class 3: 2.5 copies each, 2 or 3.
  fives = np.stack([np.bincount(balance_stochastic(_CLASSES, _CONFIDENCE, 5, 4, 0.3, seed),
                                minlength=len(_CLASSES))[10:12] for seed in range(600)])
  assert set(np.unique(fives)) == {2, 3}
  np.testing.assert_allclose(fives.mean(axis=0), 2.5, atol=0.07)


def test_select_with_stochastic_balance_keeps_soft_labels():
  probs = np.repeat(((1.0 - _CONFIDENCE) / 3)[:, None], 4, axis=1).astype(np.float32)
  probs[np.arange(len(_CLASSES)), _CLASSES] = _CONFIDENCE     # the argmax above 0.3
  indices = np.arange(100, 100 + len(_CLASSES))
  chosen, labels = select(indices, probs, _CONFIDENCE, threshold=0.3, per_class=2,
                          balance="stochastic", seed=3)
  assert {100, 101, 109, 110, 111} <= set(chosen.tolist())
  assert not {102, 103, 104, 105} & set(chosen.tolist())
  np.testing.assert_array_equal(labels, probs[chosen - 100])
  with pytest.raises(ValueError, match="balance"):
    select(indices, probs, balance="top")
