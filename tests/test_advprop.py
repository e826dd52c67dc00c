"""AdvProp (config.adversarial.advprop; train.forward_advprop): the supervised step trains on
the clean and the adversarial images, loss CE(clean) + CE(adversarial), the adversarial ones
normalised by auxiliary batch statistics kept in the train state.

The loss and both statistics are checked against the model applied by hand to the step's own
images; the step composes with weight averages, soft labels, frozen layers, 8 sharded
devices and the non-finite guard; a resumed run equals a straight one bit for bit; preflight
refuses what cannot work. Tiny CNNs on the packaged 8 x 8 digits.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import config_utils, ema, losses, noisy_student, preflight, sharding, train
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.errors import ConfigError
from effcv_jax.robustness import adversarial
from tests import noisy_student_tiny

EPSILON, STEPS = 16.0, 2
ADVPROP = {"adversarial.method": "pgd", "adversarial.epsilon": EPSILON,
           "adversarial.steps": STEPS, "adversarial.advprop": True}


def _config(**overrides):
  return config_utils.with_overrides(digits_tiny.get_config(), {
      "augment": "", "num_steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 2,
      "keep_checkpoints": 10, "optimizer.schedule": "constant", **ADVPROP, **overrides})


def _task_and_state(**overrides):
  return task_lib.init_task_and_state(_config(**overrides), (8, 8, 1), sharding.make_mesh())


def _assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _differs(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))))


@pytest.fixture(scope="module")
def digits_batch():
  """32 packaged digits: {'image': uint8 (32, 8, 8, 1), 'label': int32 (32,)}."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.clip(digits.images[:32] * 16, 0, 255).astype(np.uint8)[..., None]
  return {"image": jnp.asarray(images), "label": jnp.asarray(digits.target[:32], jnp.int32)}


@pytest.fixture(scope="module")
def advprop_step(digits_batch):
  """(task, state before, state after, metrics) of one AdvProp step from a state whose
  auxiliary statistics were moved away from the main ones (so that a pass reading the wrong
  set gives other numbers)."""
  task, state = _task_and_state()
  state = state.replace(aux_batch_stats=jax.tree.map(
      lambda x: x * 1.5 + 0.25, state.batch_stats))
  new_state, metrics = jax.jit(train.train_step, static_argnums=0)(task, state, digits_batch)
  return task, state, new_state, metrics


def test_the_state_keeps_auxiliary_statistics_starting_as_the_main_ones():
  task, state = _task_and_state()
  assert task.adversarial_advprop and type(state) is task_lib.AdvPropTrainState
  assert task_lib.has_aux_batch_stats(state) and not task_lib.has_ema(state)
  _assert_trees_equal(state.aux_batch_stats, state.batch_stats)
  _, with_ema = _task_and_state(ema_decay=0.9)
  assert type(with_ema) is task_lib.AdvPropEmaTrainState and task_lib.has_ema(with_ema)
  _assert_trees_equal(with_ema.aux_batch_stats, with_ema.batch_stats)
  # Evaluation and teaching read the main statistics only.
  assert task_lib.eval_variables(state)["batch_stats"] is state.batch_stats
  _, plain = _task_and_state(**{"adversarial.advprop": False})
  assert type(plain) is task_lib.TrainState and not task_lib.has_aux_batch_stats(plain)


def test_loss_is_clean_plus_adversarial_cross_entropy_each_pass_on_its_own_statistics(
    digits_batch, advprop_step):
  task, state, new_state, metrics = advprop_step
  labels = jax.nn.one_hot(digits_batch["label"], 10)
  images = digits_batch["image"].astype(jnp.float32)

  def by_hand(state):
    aug_key, dropout_key = train.step_keys(state)
    stacked, _ = train.training_images(task, state, aug_key, images, labels)
    clean, attacked = jnp.split(stacked, 2)
    step_size = jnp.float32(train.attack_step_size(task))
    attacks = [adversarial.linf_attack(task, {"params": state.params, "batch_stats": stats},
                                       images, digits_batch["label"],
                                       jax.random.fold_in(aug_key, 1), jnp.float32(EPSILON),
                                       step_size, STEPS, True)
               for stats in (state.aux_batch_stats, state.batch_stats)]

    def training_pass(stats, pixels, key):
      logits, new = task.model.apply(
          {"params": state.params, "batch_stats": stats}, task_lib.model_inputs(task, pixels),
          train=True, mutable=["batch_stats"], rngs={"dropout": key})
      return jnp.mean(losses.softmax_cross_entropy(logits, labels)), new["batch_stats"]

    clean_pass = training_pass(state.batch_stats, clean, dropout_key)
    attacked_pass = training_pass(state.aux_batch_stats, attacked,
                                  jax.random.fold_in(dropout_key, 2))
    return clean, attacked, attacks, clean_pass, attacked_pass

  clean, attacked, attacks, clean_pass, attacked_pass = jax.jit(by_hand)(state)
  # The step's images: the batch and its PGD images made with the auxiliary statistics.
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(images))
  np.testing.assert_allclose(np.asarray(attacked), np.asarray(attacks[0]), atol=1e-4)
  assert float(jnp.max(jnp.abs(attacked - images))) <= EPSILON + 1e-3
  assert float(jnp.max(jnp.abs(attacked - images))) > EPSILON / 2
  assert _differs(attacks[0], attacks[1])   # the main statistics would attack otherwise
  # loss = CE(clean) + CE(adversarial), each part logged.
  (clean_loss, main_stats), (attacked_loss, aux_stats) = clean_pass, attacked_pass
  np.testing.assert_allclose(float(metrics["clean_loss"]), float(clean_loss), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["adversarial_loss"]), float(attacked_loss),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), float(clean_loss + attacked_loss),
                             rtol=1e-5)
  # The clean pass moved the main statistics only, the adversarial pass the auxiliary ones.
  for got, want in ((new_state.batch_stats, main_stats), (new_state.aux_batch_stats, aux_stats)):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
                 jax.device_get(got), jax.device_get(want))
  assert _differs(new_state.batch_stats, state.batch_stats)
  assert _differs(new_state.aux_batch_stats, state.aux_batch_stats)
  assert _differs(main_stats, aux_stats)


def test_composes_with_ema_soft_labels_frozen_layers_sharding_and_the_nonfinite_guard(
    digits_batch):
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8           # tests/conftest.py's fake devices
  task, state = _task_and_state(**{"ema_decay": 0.9,
                                   "optimizer.lr_rules": ((r"conv0_0/.*", 0.0), (".*", 1.0))})
  step = train.jit_train_step(task, mesh)
  soft = 0.7 * jax.nn.one_hot(digits_batch["label"], 10) + 0.03
  batch = sharding.to_global({"image": np.asarray(digits_batch["image"]),
                              "label": np.asarray(digits_batch["label"]),
                              "soft_label": np.asarray(soft, np.float32)}, mesh)
  before = jax.device_get(state)
  state, metrics = step(state, batch)
  after = jax.device_get(state)
  assert float(metrics["nonfinite"]) == 0.0
  np.testing.assert_allclose(float(metrics["loss"]),
                             float(metrics["clean_loss"] + metrics["adversarial_loss"]),
                             rtol=1e-6)
  # lr_rules: the frozen convolution kept its kernel, the others moved.
  np.testing.assert_array_equal(after.params["conv0_0"]["kernel"],
                                before.params["conv0_0"]["kernel"])
  assert _differs(after.params["conv1_0"], before.params["conv1_0"])
  # Both statistics moved, apart; the averages follow the main statistics, never the others.
  assert _differs(after.batch_stats, before.batch_stats)
  assert _differs(after.aux_batch_stats, before.aux_batch_stats)
  assert _differs(after.aux_batch_stats, after.batch_stats)
  decay = float(ema.decay_at(0.9, 1))
  jax.tree.map(lambda got, old, new: np.testing.assert_allclose(
      got, decay * old + (1 - decay) * new, rtol=1e-5, atol=1e-7),
               after.ema["batch_stats"], before.ema["batch_stats"], after.batch_stats)
  # A non-finite target leaves everything, the auxiliary statistics included, unchanged.
  broken = dict(batch, soft_label=sharding.to_global(
      {"x": np.full(soft.shape, np.nan, np.float32)}, mesh)["x"])
  state, metrics = step(state, broken)
  assert float(metrics["nonfinite"]) == 1.0 and int(state.step) == 2
  _assert_trees_equal(state.replace(step=after.step), after)


@pytest.mark.parametrize("model, model_kwargs", [
    ("resnet8", {}), ("wrn10_1", {}), ("efficientnet_b0", {"small_image": True})])
def test_the_step_traces_on_every_family_with_batch_norm(model, model_kwargs):
  """The AdvProp step of a ResNet, a WRN and an EfficientNet on 32 px images, traced
  (jax.eval_shape on 8 devices, nothing computed): both statistics trees come back whole."""
  config = _config(model=model, **{"adversarial.steps": 1})
  _with_group("model_kwargs", model_kwargs, keep=False)(config)
  mesh = sharding.make_mesh()
  task, state = task_lib.init_task_and_state(config, (32, 32, 3), mesh, abstract=True)
  batch = {"image": jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
  new_state, metrics = jax.eval_shape(train.jit_train_step(task, mesh), state, batch)
  assert type(new_state) is task_lib.AdvPropTrainState
  assert jax.tree.leaves(new_state.batch_stats)
  assert jax.tree.structure(new_state.aux_batch_stats) == jax.tree.structure(state.batch_stats)
  assert {"clean_loss", "adversarial_loss"} <= set(metrics)


@pytest.fixture(scope="module")
def resumed_and_straight(tmp_path_factory):
  """The states at step 4 of a straight 4-step AdvProp run (with weight averages) and of one
  trained 2 steps, then resumed from its checkpoint for 2 more; and the latter's state at 2."""
  root = tmp_path_factory.mktemp("advprop_resume")
  config = _config(ema_decay=0.9)
  train.train_and_evaluate(config, str(root / "straight"))
  train.train_and_evaluate(_config(ema_decay=0.9, num_steps=2), str(root / "resumed"))
  at_two = _restored(str(root / "resumed"))
  train.train_and_evaluate(config, str(root / "resumed"))
  return _restored(str(root / "straight")), _restored(str(root / "resumed")), at_two


def _restored(workdir):
  """The latest checkpoint's state of the run in `workdir`, on the host."""
  config = workdir_lib.load_config(workdir)
  _, template = task_lib.init_task_and_state(config, (8, 8, 1), sharding.make_mesh(),
                                             abstract=True)
  checkpointer = Checkpointer(workdir)
  try:
    return jax.device_get(checkpointer.restore(checkpointer.latest_step(), template))
  finally:
    checkpointer.close()


def test_a_resumed_run_equals_a_straight_one_bit_for_bit(resumed_and_straight):
  straight, resumed, at_two = resumed_and_straight
  assert type(resumed) is task_lib.AdvPropEmaTrainState
  assert int(at_two.step) == 2 and int(resumed.step) == int(straight.step) == 4
  assert _differs(at_two.aux_batch_stats, at_two.batch_stats)   # restored apart
  _assert_trees_equal(resumed.aux_batch_stats, straight.aux_batch_stats)
  _assert_trees_equal(resumed, straight)


def _with_group(group, values, keep=True):
  """A config change replacing group `group` with one holding `values` (added to its keys with
  `keep`): values of another type than the defaults', which an override refuses."""
  def change(config):
    config[group] = ml_collections.ConfigDict({**(config[group].to_dict() if keep else {}),
                                               **values})
  return change


@pytest.mark.parametrize("overrides, change, pattern", [
    ({"adversarial.method": ""}, None,
     r"^config\.adversarial\.advprop = True needs config\.adversarial\.method = 'pgd' or "
     r"'fgsm' \(it is ''\)"),
    ({"freeze_batch_stats": True}, None,
     r"^config\.adversarial\.advprop = True and config\.freeze_batch_stats = True do not "
     r"combine"),
    ({}, _with_group("adversarial", {"advprop": 1}),
     r"^config\.adversarial\.advprop = 1 is out of range \(allowed: True or False\)"),
    ({"model": "alexnet"}, _with_group("model_kwargs", {"small_image": True}, keep=False),
     r"^config\.adversarial\.advprop = True needs a model with batch norm, but config\.model "
     r"= 'alexnet' with config\.model_kwargs = \{'small_image': True\} has no batch "
     r"statistics"),
    ({"augmix.jsd": True, "augment": "augmix"}, None,
     r"^config\.augmix\.jsd = True and config\.adversarial\.method = 'pgd' do not combine"),
], ids=["no_attack", "frozen_statistics", "not_a_flag", "no_batch_norm", "augmix_jsd"])
def test_preflight_refuses_what_advprop_cannot_train(overrides, change, pattern):
  config = _config(**overrides)
  if change is not None:
    change(config)
  with pytest.raises(ConfigError, match=pattern):
    preflight.check_config(config)


def test_preflight_accepts_advprop_on_models_with_batch_norm():
  preflight.check_config(_config())
  with_batch_norm = _config(model="alexnet")
  _with_group("model_kwargs", {"small_image": True, "batch_norm": True},
              keep=False)(with_batch_norm)
  preflight.check_config(with_batch_norm)
  with pytest.raises(ConfigError, match=r"^config\.adversarial\.advprop = True is read by "
                     r"the supervised train step only; the semi-supervised step would"):
    preflight.refuse_supervised_only_keys(_config(**{"adversarial.method": ""}), "",
                                          "the semi-supervised step")


def _noisy_student_config(**student):
  config = noisy_student_tiny.get_config()
  config.student = config_utils.with_overrides(config.student, {
      "adversarial.method": "pgd", "adversarial.epsilon": 2.0, "adversarial.steps": 2,
      "adversarial.step_size": 1.0, "adversarial.advprop": True, **student})
  return config


def test_a_noisy_student_student_with_advprop_passes_preflight(tmp_path):
  config = _noisy_student_config()
  students = noisy_student.check_settings(config, str(tmp_path))
  assert all(s.adversarial.advprop for s in students)
  run_data = noisy_student.load_data(config)
  # Traces the teacher's and both students' train steps on soft-labelled batches.
  noisy_student.check_stages(config, str(tmp_path), run_data, students)
  frozen = _noisy_student_config(freeze_batch_stats=True)
  with pytest.raises(ConfigError, match=r"^student 1.*config\.student\.adversarial\.advprop "
                     r"= True and config\.student\.freeze_batch_stats = True"):
    noisy_student.check_settings(frozen, str(tmp_path))
