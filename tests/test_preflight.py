"""Every mistake in a config is caught before training, before the workdir is touched.

Each case checks the error type (ConfigError), that the message names the dotted key (and
its value, or both shapes), and that a fresh workdir is not created and an existing one is
left byte for byte as it was. Case -> test:

- a key with an impossible value (num_steps < 0, batch sizes, cadences, keep_checkpoints,
  num_labelled, num_holdout, label_smoothing, lr, lr_rules regex, augment spec, model,
  optimiser, seeds, ...): test_impossible_value_is_refused_before_anything_is_written;
  what stays allowed (num_steps = 0, every shipped config):
  test_import_only_run_and_every_shipped_config_pass
- evaluation images of another size or channel count, input_mean / input_std of another
  length than the channel count, labels of a single class, a step that cannot be traced:
  test_config_that_does_not_fit_the_data_is_refused_before_anything_is_written;
  the warning for classes that never occur: test_classes_that_never_occur_are_logged;
  input_size makes another evaluation size fit: test_input_size_lets_eval_images_differ
- images smaller than the model takes (AlexNet, VGG): input_size or image_size below it,
  test_input_size_below_the_models_smallest_is_refused; the data's own size, with the fix,
  test_images_smaller_than_the_model_takes_are_refused_before_anything_is_written
- a batch size the devices do not divide names batch_size:
  test_batch_size_the_devices_do_not_divide_names_the_key
- the train step traced is the one the run uses (make_step, 'soft_label' batches), on
  abstract state: test_the_step_a_run_uses_is_traced_on_its_batch_structure
- the former late failures, reported within seconds and before the first step:
  test_former_late_failures_are_reported_within_seconds
- Noisy Student, distillation and sweeps check the teacher and every student / variant
  before any stage trains: test_noisy_student_names_the_stage_at_fault,
  test_distillation_names_the_config_at_fault,
  test_distillation_command_names_the_run_at_fault_before_the_teacher_trains (CLI),
  test_sweep_names_the_variant_at_fault (CLI)
- the command line: test_command_line_reports_one_line_and_exit_status_2
"""

import importlib
import logging
import os
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from configs import digits_tiny, noisy_student_quickstart
from effcv_jax import config_utils, distill, noisy_student, preflight, sharding, train
from effcv_jax import data as data_lib
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import EXIT_USER_ERROR, ConfigError
from tests.conftest import REPO_ROOT
from tests.test_bad_input import _snapshot

# A preflight failure is reported this many seconds after the call at most (data loading
# and tracing a tiny model); a run of the same config compiles and trains for longer.
WITHIN_SECONDS = 15.0


def _config(**overrides):
  """digits_tiny (the packaged digits), small and short."""
  base = {"model_kwargs.widths": (4,), "model_kwargs.hidden": 8, "augment": "",
          "num_steps": 10, "log_every": 5, "checkpoint_every": 5, "eval_every": 10}
  return config_utils.with_overrides(digits_tiny.get_config(), {**base, **overrides})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """npz files: digits.npz (8x8x1 train), big.npz (10x10x1 test), rgb.npz (8x8x3 test),
  one_class.npz (train labels all 0), nine_classes.npz (no example of class 9)."""
  root = tmp_path_factory.mktemp("data")
  images, labels = data_lib.load_arrays("pkg:digits", "train")
  np.savez(root / "digits.npz", x_train=images, y_train=labels)
  np.savez(root / "big.npz", x_test=np.zeros((20, 10, 10, 1), np.uint8), y_test=labels[:20])
  np.savez(root / "rgb.npz", x_test=np.zeros((20, 8, 8, 3), np.uint8), y_test=labels[:20])
  np.savez(root / "one_class.npz", x_train=images[:200], y_train=np.zeros(200, np.int64))
  keep = labels != 9
  np.savez(root / "nine_classes.npz", x_train=images[keep], y_train=labels[keep])
  return str(root)


@pytest.fixture
def workdirs(tmp_path):
  """(a fresh workdir path, an existing workdir, the existing one's snapshot)."""
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("kept as it is\n")
  return str(tmp_path / "fresh"), str(existing), _snapshot(existing)


def _refused(config, workdirs, data_dir=None) -> list[str]:
  """The ConfigError messages of train_and_evaluate on a fresh and an existing workdir;
  asserts neither was created or changed and that each came within WITHIN_SECONDS."""
  fresh, existing, before = workdirs
  messages = []
  for workdir in (fresh, existing):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
      train.train_and_evaluate(config, workdir, data_dir)
    assert time.perf_counter() - start < WITHIN_SECONDS
    messages.append(str(error.value))
  assert not os.path.exists(fresh)
  assert _snapshot(existing) == before
  assert messages[0] == messages[1]
  return messages


# --------------------------------------------------------------------------
# check_config: one key at a time.


@pytest.mark.parametrize("overrides, named", [
    ({"num_steps": -5}, "config.num_steps = -5 is out of range (allowed: an integer >= 0)"),
    ({"batch_size": 0}, "config.batch_size = 0 is out of range (allowed: an integer >= 1)"),
    ({"batch_size": -32}, "config.batch_size = -32"),
    ({"batch_size": -30}, "config.batch_size = -30 is out of range (allowed: an integer >= 1)"),
    ({"eval_batch_size": 0}, "config.eval_batch_size = 0 is out of range"),
    ({"log_every": 0}, "config.log_every = 0 is out of range (allowed: an integer >= 1)"),
    ({"eval_every": 0}, "config.eval_every = 0"),
    ({"checkpoint_every": 0}, "config.checkpoint_every = 0"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints = 0 is out of range (allowed: an "
                              "integer >= 1): the checkpoints kept; with 0 none would be left "
                              "and the trained model would be lost"),
    ({"num_labelled": 0}, "config.num_labelled = 0 is out of range (allowed: -1 (every "
                          "example left after the hold-out) or an integer >= 1)"),
    ({"num_labelled": -2}, "config.num_labelled = -2"),
    ({"num_holdout": -1}, "config.num_holdout = -1"),
    ({"label_smoothing": 1.0}, "config.label_smoothing = 1.0 is out of range (allowed: a "
                               "number in [0.0, 1.0))"),
    ({"label_smoothing": -0.1}, "config.label_smoothing = -0.1"),
    ({"optimizer.lr": 0.0}, "config.optimizer.lr = 0.0 is out of range (allowed: a number "
                            "> 0.0)"),
    ({"optimizer.lr": -0.1}, "config.optimizer.lr = -0.1"),
    ({"optimizer.lr_rules": (("conv[0-9/.*", 1.0), (".*", 1.0))},
     "config.optimizer.lr_rules[0]: pattern 'conv[0-9/.*' is not a valid regular expression"),
    ({"optimizer.lr_rules": (("head/.*",),)}, "config.optimizer.lr_rules[0] = ('head/.*',) is "
                                              "not a (regex, multiplier) pair"),
    ({"optimizer.name": "sgdd"}, "config.optimizer.name = 'sgdd' is out of range (allowed: "
                                 "one of 'sgd', 'adamw', 'rmsprop')"),
    ({"optimizer.decay_rate": 0.0}, "config.optimizer.decay_rate = 0.0"),
    ({"optimizer.rms_epsilon": 0.0}, "config.optimizer.rms_epsilon = 0.0"),
    ({"optimizer.grad_scale": -1.0}, "config.optimizer.grad_scale = -1.0"),
    ({"optimizer.schedule": "linear"}, "config.optimizer.schedule = 'linear'"),
    ({"optimizer.momentum": 1.0}, "config.optimizer.momentum = 1.0"),
    ({"optimizer.warmup_steps": -1}, "config.optimizer.warmup_steps = -1"),
    ({"optimizer.weight_decay": -1e-4}, "config.optimizer.weight_decay = -0.0001"),
    ({"optimizer.grad_clip_norm": -1.0}, "config.optimizer.grad_clip_norm = -1.0"),
    ({"augment": "flip_lr|random_crop(padding=4"},
     "config.augment = 'flip_lr|random_crop(padding=4' does not parse: cannot parse "
     "augmentation op 'random_crop(padding=4'"),
    ({"augment": "flip_lr|no_such_op"}, "config.augment = 'flip_lr|no_such_op' does not parse: "
                                        "unknown augmentation op 'no_such_op'"),
    ({"input_mean": ()}, "config.input_mean = () is out of range (allowed: a non-empty tuple "
                         "of numbers"),
    ({"input_std": ("a",)}, "config.input_std = ('a',)"),
    ({"num_classes": 1}, "config.num_classes = 1 is out of range (allowed: an integer >= 2)"),
    ({"split_seed": -1}, "config.split_seed = -1"),
    ({"seed": -1}, "config.seed = -1"),
    ({"image_size": -8}, "config.image_size = -8"),
    ({"input_size": -8}, "config.input_size = -8"),
    ({"conv_backend": "gpu"}, "config.conv_backend = 'gpu' is out of range (allowed: one of "
                              "'auto', 'onednn', 'xla', 'lax')"),
    ({"init_from.kind": "keras"}, "config.init_from.kind = 'keras'"),
    ({"ema_decay": 1.0}, "config.ema_decay = 1.0 is out of range (allowed: a number in "
                         "[0.0, 1.0)): the decay of the weights' moving average"),
    ({"ema_decay": -0.5}, "config.ema_decay = -0.5 is out of range"),
    ({"dtype": "float16"}, "config.dtype = 'float16' is out of range (allowed: one of "
                           "'float32', 'bfloat16')"),
    ({"watchdog.stall_factor": 0.0}, "config.watchdog.stall_factor = 0.0"),
    ({"model": "resnet7b"}, "config.model = 'resnet7b' with config.model_kwargs = "
                            "{'hidden': 8, 'widths': (4,)} cannot be built: Unknown model "
                            "'resnet7b'"),
    ({"model_kwargs.widthz": (4,)}, "config.model_kwargs = {'hidden': 8, 'widths': (4,), "
                                    "'widthz': (4,)} cannot be built: SmallCNN.__init__() got "
                                    "an unexpected keyword argument 'widthz'"),
    ({"num_holdout": 0}, "config.eval_split = 'holdout' needs config.num_holdout > 0 (it is 0)"),
    ({"dataset": ""}, "config.dataset is empty"),
    ({"augmix.jsd": True, "augment": "flip_lr"},
     "config.augmix.jsd = True needs config.augment to end with the augmix op (it is 'flip_lr')"),
    ({"augmix.jsd": True, "augment": "augmix|flip_lr"}, "to end with the augmix op"),
    ({"augmix.jsd_weight": -1.0}, "config.augmix.jsd_weight = -1.0 is out of range"),
    ({"augment": "augmix(depth=0)"}, "config.augment = 'augmix(depth=0)' does not parse: "
                                     "augmix: depth must be an integer >= 1, or -1"),
    ({"augmix.jsd": True, "augment": "augmix", "adversarial.method": "pgd"},
     "config.augmix.jsd = True and config.adversarial.method = 'pgd' do not combine"),
    ({"adversarial.method": "cw"}, "config.adversarial.method = 'cw' is out of range (allowed: "
                                   "one of '', 'pgd', 'fgsm')"),
    ({"adversarial.epsilon": 0.0}, "config.adversarial.epsilon = 0.0 is out of range (allowed: "
                                   "a number in (0.0, 255.0])"),
    ({"adversarial.steps": 0}, "config.adversarial.steps = 0 is out of range"),
    ({"adversarial.step_size": -2.0}, "config.adversarial.step_size = -2.0 is out of range"),
], ids=lambda value: "-".join(value) if isinstance(value, dict) else None)
def test_impossible_value_is_refused_before_anything_is_written(overrides, named, workdirs):
  config = _config(**overrides)
  with pytest.raises(ConfigError) as error:
    preflight.check_config(config)
  assert named in str(error.value)
  assert _refused(config, workdirs) == [str(error.value)] * 2


def test_import_only_run_and_every_shipped_config_pass():
  preflight.check_config(_config(num_steps=0))
  checked = []
  for path in sorted((REPO_ROOT / "configs").glob("*.py")):
    if path.stem in ("__init__", "common"):
      continue
    config = importlib.import_module(f"configs.{path.stem}").get_config()
    for part in ("teacher", "student", "base"):
      if part in config:
        try:
          preflight.check_config(config[part], f"{part}.")
        except ConfigError as e:
          # The official Noisy Student configs name RandAugment's official-semantics op,
          # which another branch adds; until then their augment spec alone is refused.
          if "unknown augmentation op 'randaugment_tf'" not in str(e):
            raise
        checked.append(f"{path.stem}.{part}")
    if "model" in config:
      preflight.check_config(config)
      checked.append(path.stem)
  assert {"digits_tiny", "cifar10_resnet56_pretrained", "noisy_student_quickstart.student",
          "augment_ablation.base", "distill_cifar10_resnet56_to_resnet20.teacher"} <= set(checked)


# --------------------------------------------------------------------------
# check_run: the config against its data, the steps traced on the real shapes.


@pytest.mark.parametrize("overrides, named", [
    ({"eval_dataset": "npz:big.npz", "eval_split": "test"},
     ["the evaluation images (config.eval_dataset='npz:big.npz' config.eval_split='test') "
      "have shape (10, 10, 1), the training images ('npz:digits.npz' [train]) (8, 8, 1)",
      "set config.image_size (resizes both on the host) or config.input_size"]),
    ({"eval_dataset": "npz:rgb.npz", "eval_split": "test"},
     ["have shape (8, 8, 3), the training images ('npz:digits.npz' [train]) (8, 8, 1)",
      "evaluate on images with 1 channel(s): choose another config.eval_dataset / "
      "config.eval_split"]),
    ({"input_mean": (0.5, 0.5, 0.5)},
     ["config.input_mean = (0.5, 0.5, 0.5) has 3 values, but the images of 'npz:digits.npz' "
      "have 1 channel(s): give 1 value"]),
    ({"input_std": (0.2, 0.2)}, ["config.input_std = (0.2, 0.2) has 2 values"]),
    ({"dataset": "npz:one_class.npz", "num_holdout": 0, "eval_split": "train"},
     ["the labelled training split (dataset 'npz:one_class.npz' [train] with num_holdout=0, "
      "num_labelled=-1: 200 examples) has only class 0: a classifier trained on it learns "
      "nothing", "(config.dataset, config.train_split) or the split (config.num_labelled)"]),
    ({"model_kwargs.hidden": -1},
     ["the model cannot be initialised on images of shape (8, 8, 1) (traced, nothing "
      "computed)", "Keys most likely at fault: config.model, config.model_kwargs, "
      "config.input_size"]),
    ({"model_kwargs.dropout_rate": "high"},
     ["the train step on image uint8(32, 8, 8, 1), label int32(32,) cannot run (traced "
      "before training, nothing computed): TypeError", "Keys most likely at fault: "
      "config.augment, config.input_mean, config.input_std, config.model_kwargs"]),
    ({"optimizer.lr_rules": (("conv.*", 1.0),)},
     ["parameter 'bn0_0/bias' matches no rule of optimizer.lr_rules ['conv.*']: end the rules "
      "with ('.*', 1.0) to catch all"]),
], ids=["eval_size", "eval_channels", "mean_length", "std_length", "one_class", "init",
        "train_step", "lr_rules_cover"])
def test_config_that_does_not_fit_the_data_is_refused_before_anything_is_written(
    data_dir, workdirs, overrides, named):
  config = _config(**{"dataset": "npz:digits.npz", **overrides})
  message = _refused(config, workdirs, data_dir)[0]
  for part in named:
    assert part in message


def test_classes_that_never_occur_are_logged(data_dir, caplog):
  config = _config(dataset="npz:nine_classes.npz", num_holdout=270)
  with caplog.at_level(logging.WARNING):
    run_data_lib.load_run_data(config, data_dir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("has no example of class(es) [9] of num_classes=10: the model cannot learn them"
             in w and "npz:nine_classes.npz" in w for w in warnings), warnings


@pytest.fixture(scope="module")
def digits_run_data(data_dir):
  return run_data_lib.load_run_data(_config(dataset="npz:digits.npz"), data_dir)


def test_input_size_lets_eval_images_differ(data_dir):
  config = _config(dataset="npz:digits.npz", eval_dataset="npz:big.npz", eval_split="test",
                   input_size=8)
  run_data = run_data_lib.load_run_data(config, data_dir)
  preflight.check_run(config, run_data, sharding.make_mesh(), make_step=train.jit_train_step,
                      make_eval_step=train.jit_eval_step)


def test_the_step_a_run_uses_is_traced_on_its_batch_structure(digits_run_data):
  config = _config(dataset="npz:digits.npz")
  mesh = sharding.make_mesh()
  seen = []

  def make_step(task, step_mesh):
    def step(state, batch):
      seen.append((state, {k: (v.shape, v.dtype) for k, v in batch.items()}))
      return train.train_step(task, state, batch)
    return step

  sources = [data_lib.WithSoftLabels(digits_run_data.train, 10)]
  preflight.check_run(config, digits_run_data, mesh, make_step=make_step,
                      make_eval_step=train.jit_eval_step, train_sources=sources)
  (state, batch), = seen
  assert batch == {"image": ((32, 8, 8, 1), np.uint8), "label": ((32,), np.int32),
                   "soft_label": ((32, 10), np.float32)}
  assert all(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(state))

  def make_failing_step(task, step_mesh):
    return lambda state, batch: (state, {"probs": batch["teacher_probs"]})

  with pytest.raises(ConfigError, match=r"the train step on image uint8\(32, 8, 8, 1\), label "
                                        r"int32\(32,\), soft_label float32\(32, 10\) cannot run "
                                        r".*KeyError: 'teacher_probs'\. Keys most likely"):
    preflight.check_run(config, digits_run_data, mesh, make_step=make_failing_step,
                        make_eval_step=train.jit_eval_step, train_sources=sources)


def _model_config(model, input_size=0, image_size=0, **model_kwargs):
  """_config with another model, its kwargs, and the sizes the model's inputs are resized to."""
  config = _config(dataset="npz:digits.npz", model=model, input_size=input_size,
                   image_size=image_size)
  config.model_kwargs = ml_collections.ConfigDict(model_kwargs)
  return config


@pytest.mark.parametrize("config, named", [
    (_model_config("vgg11_bn", input_size=32),
     "config.input_size = 32, but config.model = 'vgg11_bn' needs inputs of at least 224 px a "
     "side (smaller ones leave a feature map smaller than its classifier reads): set "
     "--config.input_size=224 or more (resizes inside the step) or "
     "--config.model_kwargs.small_image=True (the model's layout for 32 px images)"),
    (_model_config("alexnet", image_size=28, small_image=True),
     "config.image_size = 28, but config.model = 'alexnet' with config.model_kwargs = "
     "{'small_image': True} needs inputs of at least 31 px a side (smaller ones leave a feature "
     "map smaller than its classifier reads): set --config.input_size=31 or more (resizes "
     "inside the step)"),
], ids=["vgg_224", "alexnet_32"])
def test_input_size_below_the_models_smallest_is_refused(config, named):
  with pytest.raises(ConfigError) as error:
    preflight.check_config(config)
  assert str(error.value) == named


def test_models_smallest_input_size_passes():
  preflight.check_config(_model_config("alexnet", input_size=223))
  preflight.check_config(_model_config("vgg16_bn", input_size=32, small_image=True))
  preflight.check_config(_model_config("vgg11", image_size=24, input_size=224))


def test_images_smaller_than_the_model_takes_are_refused_before_anything_is_written(
    data_dir, workdirs):
  message = _refused(_model_config("vgg11_bn", small_image=True), workdirs, data_dir)[0]
  assert message == (
      "the images of 'npz:digits.npz' are 8 px a side (config.input_size = 0 and "
      "config.image_size = 0 keep their size), but config.model = 'vgg11_bn' with "
      "config.model_kwargs = {'small_image': True} needs inputs of at least 32 px a side "
      "(smaller ones leave a feature map smaller than its classifier reads): set "
      "--config.input_size=32 or more (resizes inside the step)")


def test_batch_size_the_devices_do_not_divide_names_the_key():
  with pytest.raises(ConfigError, match=r"^batch size 30 does not divide by the 8 devices; use a "
                                        r"multiple of 8 \(e\.g\. 32\) for batch_size "
                                        r"\(--config\.batch_size=32\)$"):
    sharding.check_batch_size(30, sharding.make_mesh())


@pytest.mark.parametrize("overrides, key", [
    ({"eval_dataset": "npz:big.npz", "eval_split": "test"}, "config.eval_dataset"),
    ({"eval_batch_size": 0}, "config.eval_batch_size"),
    ({"checkpoint_every": 0}, "config.checkpoint_every"),
    ({"log_every": 0}, "config.log_every"),
    ({"batch_size": 0}, "config.batch_size"),
    ({"num_labelled": 0}, "config.num_labelled"),
    ({"optimizer.lr_rules": (("conv(", 1.0),)}, "config.optimizer.lr_rules"),
    ({"input_mean": (0.5, 0.5, 0.5)}, "config.input_mean"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints"),
    ({"num_steps": -5}, "config.num_steps"),
], ids=lambda value: "-".join(value) if isinstance(value, dict) else None)
def test_former_late_failures_are_reported_within_seconds(data_dir, workdirs, overrides, key):
  """Each used to train to the end (or exit 0 with a lost or untrained model); now the
  error comes before the first step: no step runs, no workdir is created or changed."""
  concrete_steps = []

  def counting_step(task, mesh):
    step = train.jit_train_step(task, mesh)

    def counted(state, batch):
      if not isinstance(batch["image"], jax.core.Tracer):
        concrete_steps.append(1)
      return step(state, batch)
    return counted

  config = _config(dataset="npz:digits.npz", **overrides)
  fresh, existing, before = workdirs
  for workdir in (fresh, existing):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
      train.train_and_evaluate(config, workdir, data_dir, make_step=counting_step)
    assert time.perf_counter() - start < WITHIN_SECONDS
  assert not concrete_steps
  assert not os.path.exists(fresh) and _snapshot(existing) == before


# --------------------------------------------------------------------------
# Noisy Student, distillation, sweeps: every stage and variant before any trains.


def _noisy_student_config(**student):
  config = noisy_student_quickstart.get_config()
  shared = {"dataset": "pkg:digits", "num_holdout": 300, "num_labelled": 200,
            "batch_size": 32, "model_kwargs.widths": (4,), "num_steps": 10}
  config.teacher = config_utils.with_overrides(config.teacher, shared)
  config.student = config_utils.with_overrides(config.student, {**shared, **student})
  return config


@pytest.mark.parametrize("change, pattern", [
    (lambda c: c.teacher.update({"num_steps": -1}),
     r"^teacher: config\.teacher\.num_steps = -1 is out of range \(allowed: an integer >= 0\)"),
    (lambda c: c.update({"student_overrides": ({}, {"checkpoint_every": 0}),
                         "num_iterations": 2}),
     r"^student 2 \(config\.student with student_overrides\[1\] = \{'checkpoint_every': 0\}\): "
     r"config\.student\.checkpoint_every = 0 is out of range"),
    (lambda c: c.pseudo.update({"threshold": -0.5}),
     r"^config\.pseudo\.threshold = -0\.5 is out of range \(allowed: a number >= 0\.0\)"),
    (lambda c: c.student.update({"input_mean": (0.5, 0.5, 0.5)}),
     r"^student 1: config\.student\.input_mean = \(0\.5, 0\.5, 0\.5\) has 3 values, but the "
     r"images of 'pkg:digits' have 1 channel"),
], ids=["teacher", "student_2", "pseudo", "student_data"])
def test_noisy_student_names_the_stage_at_fault(tmp_path, change, pattern):
  config = _noisy_student_config()
  change(config)
  workdir = tmp_path / "ns"
  start = time.perf_counter()
  with pytest.raises(ConfigError, match=pattern):
    noisy_student.run(config, str(workdir))
  assert time.perf_counter() - start < WITHIN_SECONDS
  assert not workdir.exists()


def _distill_config():
  config = importlib.import_module("configs.distill_cifar10_resnet56_to_resnet20").get_config()
  config.teacher = _config(num_labelled=300)
  config.student = _config(num_labelled=300)
  return config


@pytest.mark.parametrize("change, pattern", [
    (lambda c: c.teacher.update({"eval_every": 0}),
     r"^teacher: config\.teacher\.eval_every = 0 is out of range"),
    (lambda c: c.student.update({"checkpoint_every": 0}),
     r"^student: config\.student\.checkpoint_every = 0 is out of range"),
    (lambda c: c.distill.update({"alpha": 2.0}),
     r"^config\.distill\.alpha = 2\.0 is out of range \(allowed: a number in \[0\.0, 1\.0\]\)"),
    (lambda c: c.distill.update({"teaching": "consistent"}),
     r"^config\.distill\.teacher_outputs = 'precomputed' sees clean images only: set "
     r"config\.distill\.teaching = 'clean'"),
    (lambda c: c.student.update({"num_classes": 12}),
     r"^config\.student\.num_classes = 12, config\.teacher\.num_classes = 10"),
    (lambda c: c.student.update({"input_std": (0.2, 0.2)}),
     r"^student: config\.student\.input_std = \(0\.2, 0\.2\) has 2 values"),
    (lambda c: c.student.adversarial.update({"method": "fgsm"}),
     r"^config\.student\.adversarial\.method = 'fgsm' is read by the supervised train step "
     r"only; the distillation step would ignore it"),
], ids=["teacher", "student", "alpha", "teaching", "classes", "student_data", "adversarial"])
def test_distillation_names_the_config_at_fault(tmp_path, change, pattern):
  config = _distill_config()
  change(config)
  workdir = tmp_path / "distill"
  with pytest.raises(ConfigError, match=pattern):
    distill.run(config, str(workdir))
  assert not workdir.exists()


def _run_cli(args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("ERROR:")]


def test_sweep_names_the_variant_at_fault(tmp_path):
  sweep_config = tmp_path / "sweep.py"
  sweep_config.write_text(
      "import ml_collections\n"
      "from configs import digits_tiny\n\n\n"
      "def get_config():\n"
      "  variants = {'good': {'num_steps': 5}, 'bad': {'keep_checkpoints': 0}}\n"
      "  return ml_collections.ConfigDict(dict(\n"
      "      base=digits_tiny.get_config(), title='t', variants=ml_collections.ConfigDict(\n"
      "          variants, allow_dotted_keys=True)))\n")
  result = _run_cli(["experiments.sweep", f"--config={sweep_config}",
                     f"--workdir={tmp_path / 'runs'}", f"--report={tmp_path / 'report'}"])
  assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
  lines = _error_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      "ERROR: sweep variant 'bad': config.keep_checkpoints = 0 is out of range")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "runs").exists()


def test_distillation_command_names_the_run_at_fault_before_the_teacher_trains(tmp_path):
  config_file = tmp_path / "distill_config.py"
  config_file.write_text(
      "import ml_collections\n"
      "from configs import digits_tiny, distill_cifar10_resnet56_to_resnet20\n\n\n"
      "def get_config():\n"
      "  config = distill_cifar10_resnet56_to_resnet20.get_config()\n"
      "  config.teacher = digits_tiny.get_config()\n"
      "  config.student = digits_tiny.get_config()\n"
      "  config.runs = ml_collections.ConfigDict(\n"
      "      {'labels_only': {'mode': 'labels_only'},\n"
      "       'bad': {'mode': 'distill', 'student.eval_batch_size': 0}},\n"
      "      allow_dotted_keys=True)\n"
      "  return config\n")
  workdir = tmp_path / "runs"
  result = _run_cli(["experiments.distill", f"--config={config_file}", f"--workdir={workdir}",
                     f"--report={tmp_path / 'report'}"])
  assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
  lines = _error_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      "ERROR: distill run 'bad': student: config.student.eval_batch_size = 0 is out of range")
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_command_line_reports_one_line_and_exit_status_2(tmp_path):
  workdir = tmp_path / "run"
  result = _run_cli(["experiments.train", "--config=configs/digits_tiny.py",
                     f"--workdir={workdir}", "--config.checkpoint_every=0"])
  assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
  assert _error_lines(result.stderr) == [
      "ERROR: config.checkpoint_every = 0 is out of range (allowed: an integer >= 1): the "
      "steps between checkpoints. Set --config.checkpoint_every to an allowed value. "
      "(--verbose for the traceback)"]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()
