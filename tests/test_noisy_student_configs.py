"""The Noisy Student configs: each builds, and the GPU/TPU ones (SVHN, ImageNet) run their
whole loop for a few steps on tiny fake data shaped like theirs."""

import re

import numpy as np
import pytest

from configs import (fashion_mnist_all_labels, noisy_student_cifar10_4000,
                     noisy_student_cifar10_ssl_teacher, noisy_student_fashion_mnist,
                     noisy_student_fashion_mnist_calibrated, noisy_student_fashion_mnist_noise,
                     noisy_student_fashion_mnist_ssl_teacher, noisy_student_imagenet,
                     noisy_student_svhn, noisy_student_quickstart, ssl_cifar10_4000_sweep,
                     ssl_fashion_mnist_1000_sweep)
from effcv_jax import config_utils, models, noisy_student, sweeps
from effcv_jax.errors import ConfigError

# One MBConv block: the EfficientNet code path (stem, block with SE, top conv, head)
# at a compile time a test can afford.
_TINY_BLOCKS = ((1, 3, 1, 1, 32, 16),)


def _shrink(config, dataset, **extra):
  """The same config on a tiny fake dataset: few steps, small batches, one-block model."""
  small = {"dataset": dataset, "num_steps": 2, "batch_size": 16, "eval_batch_size": 16,
           "log_every": 1, "eval_every": 2, "checkpoint_every": 2, **extra}
  if config.teacher.model.startswith("efficientnet"):
    small["model_kwargs.blocks"] = _TINY_BLOCKS
  config.teacher = config_utils.with_overrides(config.teacher, small)
  config.student = config_utils.with_overrides(config.student, small)
  if config.get("student_overrides"):
    config.student_overrides = tuple(
        {**dict(o), **{k: v for k, v in small.items() if k in o},
         "model_kwargs.blocks": _TINY_BLOCKS} for o in config.student_overrides)
  config.pseudo.batch_size, config.pseudo.shard_size = 16, 64
  config.pseudo.per_class = 4
  config.pseudo.threshold = 0.0     # 2-step teachers are not confident
  return config


def _write_npz(path, splits, shape, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, count in splits.items():
    arrays[f"x_{split}"] = rng.integers(0, 256, (count,) + shape, dtype=np.uint8)
    arrays[f"y_{split}"] = (np.arange(count) % num_classes).astype(np.uint8 if num_classes <= 256
                                                                  else np.int32)
  np.savez(path, **arrays)


NS_CONFIGS = (noisy_student_quickstart, noisy_student_fashion_mnist,
              noisy_student_fashion_mnist_noise, noisy_student_fashion_mnist_calibrated,
              noisy_student_fashion_mnist_ssl_teacher, noisy_student_cifar10_ssl_teacher,
              noisy_student_cifar10_4000, noisy_student_svhn, noisy_student_imagenet)


def _noise(config, iteration):
  """(RandAugment in the student's augment spec, the built student's dropout rate, its
  stochastic-depth rate or None where the model has none)."""
  student = noisy_student.student_config(config, iteration)
  model = models.build(student.model, student.num_classes, **student.model_kwargs)
  for name, value in student.model_kwargs.items():     # the config's settings reach the model
    if name in ("dropout_rate", "drop_path_rate"):
      assert getattr(model, name) == value, (name, value)
  return (bool(re.search(r"randaugment(_tf)?\(", student.augment)), model.dropout_rate,
          getattr(model, "drop_path_rate", None))


# The official scripts' B0 and B1 students have no RandAugment (noisystudent
# local_scripts/imagenet/train_offline.sh sets --augment_name=v1 from B2 on): dropout and
# stochastic depth are their noise.
WITHOUT_RANDAUGMENT = {("noisy_student_imagenet", 1), ("noisy_student_imagenet", 2)}


@pytest.mark.parametrize("module", NS_CONFIGS, ids=lambda m: m.__name__.split(".")[-1])
def test_every_student_is_noised(module):
  """Noisy Student's student learns under noise: RandAugment in its augment spec, dropout
  > 0, and stochastic depth > 0 where its model has it and the config sets it; the `no_noise`
  ablations remove exactly that noise."""
  config = module.get_config()
  for iteration in range(1, config.num_iterations + 1):
    randaugment, dropout, drop_path = _noise(config, iteration)
    official_without = (module.__name__.split(".")[-1], iteration) in WITHOUT_RANDAUGMENT
    assert randaugment != official_without and dropout > 0.0, (iteration, randaugment, dropout)
    student = noisy_student.student_config(config, iteration)
    if "drop_path_rate" in student.model_kwargs:
      assert drop_path > 0.0, iteration
  for name, overrides in config.get("ablations", {}).items():
    ablation = config_utils.with_overrides(config, {"num_iterations": 1, **dict(overrides)})
    randaugment, dropout, _ = _noise(ablation, 1)
    if name.endswith("no_noise"):
      assert not randaugment and dropout == 0.0, name
    else:
      assert randaugment and dropout > 0.0, name
  for group, variants in config.get("seed_groups", {}).items():   # only variants that exist
    assert set(variants) <= set(config.get("ablations", {})) | {"student_1"}, group


def test_every_config_builds_its_models():
  for module in NS_CONFIGS:
    config = module.get_config()
    for iteration in range(1, config.num_iterations + 1):
      student = noisy_student.student_config(config, iteration)
      models.build(student.model, student.num_classes, **student.model_kwargs)
      assert student.num_classes == config.teacher.num_classes
    # The selection threshold is a confidence: in [0, 1), so some pseudo-labels can pass.
    assert 0.0 <= config.pseudo.threshold < 1.0, module.__name__
    # Ablations as the report applies them: each changes the run and builds its student.
    one_iteration = config_utils.with_overrides(config, {"num_iterations": 1}).to_dict()
    for name, overrides in config.get("ablations", {}).items():
      ablation = config_utils.with_overrides(config, {"num_iterations": 1, **dict(overrides)})
      assert ablation.to_dict() != one_iteration, name
      student = noisy_student.student_config(ablation, 1)
      models.build(student.model, student.num_classes, **student.model_kwargs)
  gpu = noisy_student_cifar10_4000.get_config("gpu")
  assert (gpu.teacher.model, gpu.student.model) == ("wrn28_2", "wrn28_4")
  imagenet = noisy_student_imagenet.get_config()
  assert [noisy_student.student_config(imagenet, i).model for i in range(1, 9)] == [
      f"efficientnet_b{i}" for i in range(8)]


def test_official_configs_follow_the_scripts():
  """A few of the parity table's rows (docs/methods.md), as numbers."""
  imagenet = noisy_student_imagenet.get_config()
  teacher = imagenet.teacher
  assert (teacher.optimizer.name, teacher.optimizer.lr, teacher.optimizer.weight_decay) == (
      "rmsprop", 0.256, 1e-5)
  assert teacher.batch_size == 4096 and teacher.num_steps == 109474
  assert teacher.optimizer.warmup_steps == 1563                 # int(5 * 1281167 / 4096)
  assert teacher.optimizer.decay_every_steps == pytest.approx(750.68, abs=0.01)
  b7 = noisy_student.student_config(imagenet, 8)
  assert (b7.image_size, b7.batch_size, b7.model_kwargs.dropout_rate) == (600, 16384, 0.5)
  # The official crops at every stage's resolution (efficientnet_builder.py), none in the step.
  stages = [teacher] + [noisy_student.student_config(imagenet, i) for i in range(1, 9)]
  assert [stage.image_size for stage in stages] == [224, 224, 240, 260, 300, 380, 456, 528, 600]
  assert all(stage.host_preprocessing == "efficientnet" and stage.input_size == 0
             and "crop" not in stage.augment and "flip" not in stage.augment
             for stage in stages)
  assert "magnitude=27" in b7.augment and noisy_student.unlabelled_ratio(imagenet, 8) == 3.0
  b4 = noisy_student.student_config(imagenet, 5)
  assert b4.num_steps == 2 * 109474 and "magnitude=15" in b4.augment
  assert (imagenet.pseudo.store, imagenet.pseudo.balance) == ("soft", "stochastic")
  assert imagenet.labelled_label_smoothing == 0.1 and b7.label_smoothing == 0.0
  assert teacher.ema_decay == b7.ema_decay == 0.9999                # main.py moving_average_decay
  svhn = noisy_student_svhn.get_config()
  assert (svhn.teacher.batch_size, svhn.student.batch_size) == (128, 768)
  assert svhn.student.optimizer.weight_decay == 1e-4
  assert svhn.teacher.ema_decay == svhn.student.ema_decay == 0.9999
  assert svhn.student.model_kwargs.dropout_rate == 0.2 and svhn.student.model_kwargs.small_image
  # main.py --final_base_lr 0.0002: the per-256 rate 0.016 reaches it over the steps after
  # the 5 warm-up epochs: 69,257 / 128 = 541.07 steps per epoch, (109474 * 128 / 69257 - 5)
  # / (ln(0.0002 / 0.016) / ln(0.97)) = 197.33 / 143.87 = 1.3716 epochs = 742.14 steps.
  decay_every_steps = svhn.student.optimizer.decay_every_steps
  assert decay_every_steps == pytest.approx(742.14, abs=0.01)
  assert svhn.student.optimizer.warmup_steps == 2705
  assert 0.016 * 0.97 ** ((109474 - 5 * 541.0703) / decay_every_steps) == pytest.approx(0.0002)


def test_svhn_config_runs_with_extra_as_the_unlabelled_pool(tmp_path):
  _write_npz(tmp_path / "svhn.npz", {"train": 48, "test": 16, "extra": 64}, (32, 32, 3), 10)
  config = _shrink(noisy_student_svhn.get_config(), "npz:svhn.npz", num_holdout=0)
  config.unlabelled_dataset = "npz:svhn.npz"
  config.num_iterations = 1
  summary = noisy_student.run(config, str(tmp_path / "run"), data_dir=str(tmp_path))
  assert [row["stage"] for row in summary["stages"]] == ["teacher", "student_1"]
  stats = summary["stages"][1]["pseudo_labels"]
  assert stats["pool"] == 64
  assert stats["selected"] == sum(stats["per_class"]) > 0     # balanced: about 4 per class
  assert summary["stages"][1]["num_examples"] == 16


def test_imagenet_config_runs_on_images_of_another_size_cropped_on_the_host(tmp_path):
  _write_npz(tmp_path / "imagenet.npz", {"train": 64, "validation": 16, "pool": 48},
             (20, 28, 3), 1000)
  config = _shrink(noisy_student_imagenet.get_config(), "npz:imagenet.npz",
                   image_size=16, input_size=16)
  config.unlabelled_dataset = "npz:imagenet.npz"
  config.unlabelled_split = "pool"
  config.num_iterations = 1
  config.pseudo.per_class = 0
  summary = noisy_student.run(config, str(tmp_path / "run"), data_dir=str(tmp_path))
  assert summary["stages"][1]["model"] == "efficientnet_b0"
  assert summary["stages"][1]["pseudo_labels"]["pool"] == 48
  assert summary["stages"][0]["num_examples"] == 16


def test_unlabelled_images_of_another_shape_are_refused(tmp_path):
  _write_npz(tmp_path / "a.npz", {"train": 48, "test": 16}, (16, 16, 3), 10)
  _write_npz(tmp_path / "b.npz", {"extra": 32}, (8, 8, 3), 10)
  config = _shrink(noisy_student_svhn.get_config(), "npz:a.npz", num_holdout=0)
  config.unlabelled_dataset = "npz:b.npz"
  with pytest.raises(ValueError, match=r"unlabelled images npz:b.npz have shape \(8, 8, 3\)"):
    noisy_student.load_data(config, str(tmp_path))


def test_the_all_labels_ceiling_is_the_fashion_mnist_student_with_every_label():
  """configs/fashion_mnist_all_labels.py: the 1,000-label reports' student, its schedule and
  test split, with all labels; one variant without its noise."""
  student = noisy_student_fashion_mnist.get_config().student
  configs = sweeps.variant_configs(fashion_mnist_all_labels.get_config())
  assert config_utils.differences(student, configs["student_noise"]) == {"num_labelled": -1}
  assert config_utils.differences(student, configs["flip_crop"]) == {
      "num_labelled": -1, "augment": noisy_student_fashion_mnist.FLIP_CROP,
      "model_kwargs.dropout_rate": 0.0}


@pytest.mark.parametrize("module, argument, sweep, run, algorithm, steps", [
    (noisy_student_fashion_mnist_ssl_teacher, None, ssl_fashion_mnist_1000_sweep,
     "softmatch_seed_1", "softmatch", 6000),
    (noisy_student_fashion_mnist_ssl_teacher, "softmatch_24k_seed_0",
     ssl_fashion_mnist_1000_sweep, "softmatch_24k_seed_0", "softmatch", 24000),
    (noisy_student_cifar10_ssl_teacher, None, ssl_cifar10_4000_sweep, "fixmatch_seed_0",
     "fixmatch", 20000)],
    ids=["fashion_mnist", "fashion_mnist_softmatch_24k", "cifar10"])
def test_ssl_teachers_are_the_sweeps_runs_with_the_reports_students(module, argument, sweep,
                                                                     run, algorithm, steps):
  """The semi-supervised teachers (the default one, or the run named by the config string):
  the teacher is exactly the sweep's run (its config, its workdir), one iteration, and the
  ablations and seed group are the student's seeds; a run the sweep does not have is refused
  by name."""
  config = module.get_config() if argument is None else module.get_config(argument)
  expanded, _ = sweeps.with_seeds(sweep.get_config())
  assert config.teacher.to_dict() == sweeps.variant_configs(expanded)[run].to_dict()
  assert (config.teacher.ssl.algorithm, config.teacher.num_steps) == (algorithm, steps)
  assert config.teacher_workdir.endswith(f"/{run}") and config.num_iterations == 1
  assert all(dict(overrides) == {"student.seed": int(name.rsplit("_", 1)[1])}
             for name, overrides in config.ablations.items())
  assert list(config.seed_groups.values()) == [["student_1", "student_seed_1", "student_seed_2"]]
  with pytest.raises(ConfigError, match="the sweep has no run 'fixmatch_seed_9'"):
    sweeps.run_config(sweep.get_config(), "fixmatch_seed_9")
