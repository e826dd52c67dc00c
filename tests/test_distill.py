"""Knowledge distillation: the losses, the frozen-teacher step, ensembles and a whole run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_tiny, distill_cifar10_resnet56_to_resnet20
from effcv_jax import config_utils, distill, losses, pseudo_label, sharding, train
from effcv_jax import task as task_lib

K = 10


def _logits(seed, shape=(16, K), scale=3.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


# --------------------------------------------------------------------------
# Losses.


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_distillation_loss_is_zero_when_student_equals_teacher(temperature):
  logits = _logits(0)
  np.testing.assert_allclose(losses.distillation_loss(logits, logits, temperature), 0.0, atol=1e-5)
  other = losses.distillation_loss(_logits(1), logits, temperature)
  assert np.all(other > 0)


def test_distillation_loss_is_kl_times_t_squared():
  student, teacher, temperature = _logits(0), _logits(1), 3.0
  p = jax.nn.softmax(teacher / temperature)
  log_q = jax.nn.log_softmax(student / temperature)
  expected = temperature ** 2 * jnp.sum(p * (jnp.log(p) - log_q), -1)
  np.testing.assert_allclose(losses.distillation_loss(student, teacher, temperature), expected,
                             rtol=1e-5)


def test_t_squared_keeps_gradient_magnitudes_comparable_across_temperatures():
  student, teacher = _logits(0, scale=1.0), _logits(1, scale=1.0)

  def grad_norm(temperature, scaled=True):
    def loss(s):
      value = jnp.mean(losses.distillation_loss(s, teacher, temperature))
      return value if scaled else value / temperature ** 2
    return float(jnp.linalg.norm(jax.grad(loss)(student)))

  scaled = {t: grad_norm(t) for t in (2.0, 4.0, 8.0, 16.0)}
  for t in (4.0, 8.0, 16.0):    # T^2 KL: the gradient tends to (s - t) / (K B), independent of T
    assert 0.8 < scaled[t] / scaled[2.0] < 1.25, scaled
  unscaled_ratio = grad_norm(16.0, scaled=False) / grad_norm(2.0, scaled=False)
  assert unscaled_ratio < 0.02     # without T^2 it shrinks as 1 / T^2 (1/64 here)


def test_alpha_one_is_cross_entropy_and_unlabelled_examples_only_distil():
  student, teacher = _logits(0), _logits(1)
  labels = jax.nn.one_hot(jnp.arange(16) % K, K)
  probs = losses.softmax_with_temperature(teacher, 2.0)
  everyone = jnp.ones(16)
  loss, parts = losses.distillation_objective(student, probs, labels, everyone, alpha=1.0,
                                              temperature=2.0)
  np.testing.assert_allclose(loss, jnp.mean(losses.softmax_cross_entropy(student, labels)),
                             rtol=1e-6)
  np.testing.assert_allclose(parts["student_loss"], loss, rtol=1e-6)

  nobody = jnp.zeros(16)
  loss, _ = losses.distillation_objective(student, probs, labels, nobody, alpha=1.0,
                                          temperature=2.0)
  np.testing.assert_allclose(loss, jnp.mean(losses.distillation_loss(student, teacher, 2.0)),
                             rtol=1e-5)

  mask = jnp.arange(16) < 10       # padding is ignored
  masked, _ = losses.distillation_objective(student, probs, labels, everyone, alpha=0.3,
                                            temperature=2.0, mask=mask)
  first, _ = losses.distillation_objective(student[:10], probs[:10], labels[:10], everyone[:10],
                                           alpha=0.3, temperature=2.0)
  np.testing.assert_allclose(masked, first, rtol=1e-6)


def test_soft_voting_is_the_mean_of_probabilities_and_hard_voting_the_majority():
  logits = _logits(0, (3, 8, K))
  np.testing.assert_allclose(losses.ensemble_probs(logits, "soft", 2.0),
                             jnp.mean(jax.nn.softmax(logits / 2.0), axis=0), rtol=1e-6)
  votes = jnp.array([[0, 1], [0, 2], [3, 2]])      # 3 teachers, 2 examples
  hard = losses.ensemble_probs(10.0 * jax.nn.one_hot(votes, 4), "hard")
  np.testing.assert_allclose(hard, [[2 / 3, 0, 0, 1 / 3], [0, 1 / 3, 2 / 3, 0]], rtol=1e-6)
  assert list(jnp.argmax(hard, -1)) == [0, 2]
  with pytest.raises(ValueError, match="'soft' or 'hard'"):
    losses.ensemble_probs(logits, "median")


# --------------------------------------------------------------------------
# The step: teachers frozen, not differentiated, clean vs consistent teaching.


def _task(widths, augment="flip_lr"):
  config = digits_tiny.get_config()
  config.model_kwargs.widths = widths
  config.augment = augment
  return config


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh()
  shape = (8, 8, 1)
  student_task, student_state = task_lib.init_task_and_state(_task((8, 8)), shape, mesh)
  teacher_config = _task((8, 16))
  teacher_config.seed = 1
  teacher_task, teacher_state = task_lib.init_task_and_state(teacher_config, shape, mesh)
  teacher_vars = {"params": teacher_state.params, "batch_stats": teacher_state.batch_stats}
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16,) + shape).astype(np.uint8),
           "label": rng.integers(0, K, 16).astype(np.int32),
           "labelled": np.arange(16) < 8}
  return mesh, student_task, student_state, teacher_task, teacher_vars, batch


def _copy(tree):
  return jax.tree.map(np.array, tree)


def test_teacher_variables_unchanged_and_student_trained(setup):
  mesh, task, state, teacher_task, teacher_vars, batch = setup
  before = _copy(teacher_vars)
  student_before = _copy(state.params)
  spec = distill.Distillation(teachers=(teacher_task,), alpha=0.5, temperature=2.0)
  step = distill.jit_distill_step(task, spec, mesh)
  state = jax.tree.map(jnp.copy, state)     # the step donates its state
  for _ in range(3):
    state, metrics = step(state, (teacher_vars,), sharding.to_global(batch, mesh))
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, _copy(teacher_vars), before)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), _copy(state.params),
                         student_before)
  assert all(jax.tree.leaves(changed))


def _count_convolutions(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  return str(jaxpr).count("conv_general_dilated")


def test_no_gradient_is_computed_for_the_teacher(setup):
  """The distillation step runs the teacher's convolutions forward only: its convolution
  count is the supervised step's (student forward + backward) plus the teacher's forward."""
  _, task, state, teacher_task, teacher_vars, batch = setup
  spec = distill.Distillation(teachers=(teacher_task,))
  distill_convs = _count_convolutions(
      lambda s, t, b: distill.distill_step(task, spec, s, t, b), state, (teacher_vars,), batch)
  supervised_convs = _count_convolutions(
      lambda s, b: train.train_step(task, s, b), state, {k: batch[k] for k in ("image", "label")})
  teacher_forward = _count_convolutions(
      lambda v, x: task_lib.predict_logits(teacher_task, v, x), teacher_vars,
      batch["image"].astype(np.float32))
  assert teacher_forward == 4
  assert distill_convs == supervised_convs + teacher_forward


def test_clean_teaching_equals_precomputed_probabilities_consistent_differs(setup):
  mesh, task, state, teacher_task, teacher_vars, batch = setup
  clean = distill.Distillation(teachers=(teacher_task,), temperature=2.0, teaching="clean")
  logits = task_lib.predict_logits(teacher_task, teacher_vars, jnp.asarray(batch["image"], jnp.float32))
  precomputed = {**batch, "teacher_probs": np.asarray(losses.softmax_with_temperature(logits, 2.0))}

  def one_step(spec, b):
    new_state, metrics = distill.distill_step(task, spec, state, (teacher_vars,), b)
    return new_state.params, metrics["distill_loss"]

  live_params, live_loss = one_step(clean, batch)
  pre_params, pre_loss = one_step(dataclasses.replace(clean, teachers=()), precomputed)
  np.testing.assert_allclose(live_loss, pre_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), live_params, pre_params)
  _, consistent_loss = one_step(dataclasses.replace(clean, teaching="consistent"), batch)
  assert abs(float(consistent_loss) - float(live_loss)) > 1e-4    # flip_lr changed its view


def test_settings_are_checked():
  with pytest.raises(ValueError, match="teaching must be one of"):
    distill.Distillation(teaching="noisy")
  with pytest.raises(ValueError, match="alpha"):
    distill.Distillation(alpha=1.5)


def test_records_hide_the_labels_of_unlabelled_examples():
  source = [{"image": np.zeros((2, 2, 1), np.uint8), "label": 7}]
  probs = np.full((1, K), 0.1, np.float32)
  unlabelled = distill.DistillRecords(source, labelled=False, teacher_probs=probs)[0]
  assert unlabelled["label"] == -1 and not unlabelled["labelled"]
  np.testing.assert_array_equal(unlabelled["teacher_probs"], probs[0])
  labelled = distill.DistillRecords(source, labelled=True)[0]
  assert labelled["label"] == 7 and labelled["labelled"] and "teacher_probs" not in labelled


# --------------------------------------------------------------------------
# A whole run on the packaged digits, and the CIFAR-10 config.


def _tiny_run_config(teacher_outputs):
  teacher = digits_tiny.get_config()
  teacher.num_labelled = 300
  teacher.num_steps = 30
  student = config_utils.with_overrides(teacher, {"model_kwargs.widths": (4, 8),
                                                  "num_steps": 20, "eval_every": 20})
  config = distill_cifar10_resnet56_to_resnet20.get_config()
  config.teacher, config.student = teacher, student
  config.distill.teacher_outputs = teacher_outputs
  config.distill.batch_size, config.distill.shard_size = 128, 512
  return config


@pytest.fixture(scope="module")
def precomputed_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("distill")
  config = _tiny_run_config("precomputed")
  return workdir, config, distill.run(config, str(workdir))


def test_run_trains_teacher_then_distils_with_precomputed_outputs_and_resumes(precomputed_run):
  workdir, config, result = precomputed_run
  student = result["student"]
  assert student["step"] == 20 and student["num_examples"] == 300
  assert result["teachers"][0]["step"] == 30
  _, probs, _ = pseudo_label.load_pseudo_labels(
      str(workdir / "teacher_probs" / "unlabelled" / "teacher_0"), temperature=4.0)
  assert probs.shape == (1797 - 300 - 300, K)     # the pool, labelled at T = 4
  again = distill.run(config, str(workdir))      # finished: resumes to the same result
  assert again["student"]["accuracy"] == student["accuracy"]


def test_run_with_a_live_teacher_from_a_finished_workdir(precomputed_run, tmp_path):
  workdir, _, _ = precomputed_run
  config = _tiny_run_config("live")
  config.teacher_workdirs = (str(workdir / "teacher"),)
  result = distill.run(config, str(tmp_path))
  assert result["teachers"] == [] and result["student"]["step"] == 20
  assert not (tmp_path / "teacher").exists() and not (tmp_path / "teacher_probs").exists()


def test_cifar10_config_runs_are_valid_overrides():
  config = distill_cifar10_resnet56_to_resnet20.get_config()
  assert config.teacher.init_from.kind == "torch_cifar_resnet"
  assert config.student.num_labelled == 5000 and config.student.num_holdout == 5000
  for name, spec in config.runs.items():
    overrides = {k: v for k, v in spec.items() if k != "mode"}
    variant = config_utils.with_overrides(config, overrides)
    assert spec["mode"] in ("distill", "labels_only"), name
    assert variant.student.num_steps == config.student.num_steps


def test_a_report_row_is_kept_only_for_the_same_run():
  config = _tiny_run_config("precomputed")
  spec = {"mode": "distill"}
  row = {"accuracy": 0.5, "mode": "distill", "overrides": {}, "steps": 20,
         "config_sha256": distill.run_fingerprint(config)}
  assert distill.kept_report_row(row, spec, config) == {**row, "kept_from_report": True}
  elsewhere = config_utils.with_overrides(config, {"teacher_probs_dir": "/elsewhere/probs"})
  assert distill.kept_report_row(row, spec, elsewhere) is not None   # where, not what
  hotter = config_utils.with_overrides(config, {"distill.temperature": 2.0})
  assert distill.kept_report_row(row, spec, hotter) is None
  assert distill.kept_report_row(None, spec, config) is None
  legacy = {k: v for k, v in row.items() if k != "config_sha256"}   # rows before fingerprints
  assert distill.kept_report_row(legacy, spec, hotter) is not None
  assert distill.kept_report_row(legacy, {"mode": "labels_only"}, config) is None
  assert distill.kept_report_row({**legacy, "steps": 10}, spec, config) is None
