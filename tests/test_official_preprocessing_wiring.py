"""config.host_preprocessing='efficientnet' in runs: training reads the full images and cuts
the official random crops in the train iterator, evaluation and a teacher's pass read the
official centre crop; checked on a tiny in-memory dataset of non-square images of several
sizes (a source of such records, as TFDS gives for ImageNet)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import distill_cifar10_resnet56_to_resnet20
from configs.common import base_config
from effcv_jax import config_utils, distill, noisy_student, preflight, pseudo_label, sharding, train
from effcv_jax import data as data_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import efficientnet_preprocess as prep
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.data import sources
from effcv_jax.errors import ConfigError, ResumeRefusedError
from tests import noisy_student_tiny

SPEC = "varied:tiny"
SIZE = 16
SHAPES = ((20, 28), (31, 17), (24, 24), (18, 40))   # (height, width), cycled


def _records(count: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, SHAPES[i % len(SHAPES)] + (3,), dtype=np.uint8),
           "label": np.int32(i % 10)} for i in range(count)]


SPLITS = {"train": _records(96, 0), "test": _records(24, 1)}


def _load_source(original):
  """sources.load_source that also opens SPEC: lists of records of different sizes."""
  def load(spec, split, data_dir=None):
    return SPLITS[split] if spec == SPEC else original(spec, split, data_dir)
  return load


@pytest.fixture(scope="module")
def varied_data():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sources, "load_source", _load_source(sources.load_source))
    yield patch


def _config(**overrides):
  config = base_config()
  config.update(dict(dataset=SPEC, eval_split="test", image_size=SIZE,
                     host_preprocessing="efficientnet", model="cnn_small", batch_size=16,
                     eval_batch_size=16, num_steps=2, log_every=1, eval_every=2,
                     checkpoint_every=1, keep_checkpoints=5, augment=""))
  config.model_kwargs.widths = (8, 16)
  config.model_kwargs.hidden = 32
  config.optimizer.lr = 0.05
  return config_utils.with_overrides(config, overrides)


def _expected_eval_images(records):
  return np.stack([prep.CenterCropped(records, SIZE)[i]["image"] for i in range(len(records))])


def test_config_refuses_an_unknown_host_preprocessing_and_a_missing_size():
  with pytest.raises(ConfigError, match=r"config.host_preprocessing = 'inception' .*"
                     r"allowed: one of '', 'efficientnet'"):
    preflight.check_config(_config(host_preprocessing="inception"))
  with pytest.raises(ConfigError, match=r"config.teacher.host_preprocessing = 'efficientnet' "
                     r"needs config.teacher.image_size > 0 \(it is 0\)"):
    preflight.check_config(_config(image_size=0), "teacher.")
  preflight.check_config(_config())
  preflight.check_config(_config(host_preprocessing="", image_size=0))


def test_run_data_keeps_training_images_whole_and_centre_crops_evaluation(varied_data):
  run_data = run_data_lib.load_run_data(_config())
  assert run_data.image_shape == (SIZE, SIZE, 3)
  assert [run_data.train[i]["image"].shape[:2] for i in range(4)] == list(SHAPES)
  # The 31 x 17 test image: side int(16 / 48 * 17) = 5, offsets (26 + 1) // 2 = 13 and
  # (12 + 1) // 2 = 6; the crop resized by TF 1.x bicubic and rounded.
  crop = SPLITS["test"][1]["image"][13:18, 6:11]
  expected = np.clip(np.rint(prep.resize_bicubic_tf1(crop, SIZE)), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(run_data.eval[1]["image"], expected)
  # A hold-out carved out of the training split is evaluated on the same crops.
  holdout = run_data_lib.load_eval_source(_config(num_holdout=20), "", "holdout")
  assert len(holdout) == 20 and holdout[0]["image"].shape == (SIZE, SIZE, 3)
  # Without its record map the full images cannot be batched: the run relies on it.
  with pytest.raises(ValueError):
    next(data_lib.train_iterator(run_data.train, 16, 0, process_index=0, process_count=1))
  record_map = run_data_lib.train_record_map(_config())
  batch = next(data_lib.train_iterator(run_data.train, 16, 0, process_index=0,
                                       process_count=1, record_map=record_map))
  assert batch["image"].shape == (16, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert run_data_lib.train_record_map(_config(host_preprocessing="")) is None


def _final_params(workdir):
  _, _, state, step = workdir_lib.restore_latest(workdir, (SIZE, SIZE, 3), sharding.make_mesh())
  return step, jax.device_get(state.params)


@pytest.fixture(scope="module")
def run(varied_data, tmp_path_factory):
  """A 2-step run (its results, evaluation batches and final parameters), then the same run
  resumed from its step-1 checkpoint."""
  workdir = str(tmp_path_factory.mktemp("run"))
  seen = []
  evaluate = train.evaluate

  def recording_evaluate(eval_fn, variables, batches, mesh):
    batches = list(batches)
    seen.append(batches)
    return evaluate(eval_fn, variables, batches, mesh)

  varied_data.setattr(train, "evaluate", recording_evaluate)
  try:
    results = train.train_and_evaluate(_config(), workdir)
  finally:
    varied_data.setattr(train, "evaluate", evaluate)
  uninterrupted = _final_params(workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))   # as if it had died after step 1
  train.train_and_evaluate(_config(), workdir)
  return workdir, results, seen, uninterrupted


def test_a_two_step_run_evaluates_on_the_centre_crops(run):
  _, results, seen, _ = run
  assert results["step"] == 2 and results["num_examples"] == 24
  assert len(seen) == 1
  images = np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"])] for b in seen[0]])
  np.testing.assert_array_equal(images, _expected_eval_images(SPLITS["test"]))


def test_resume_with_the_official_crops_is_bit_exact(run):
  workdir, _, _, (step_a, params_a) = run
  step_b, params_b = _final_params(workdir)
  assert step_a == step_b == 2
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["host_preprocessing"] == "efficientnet"
  with pytest.raises(ResumeRefusedError, match="host_preprocessing: 'efficientnet' there, '' now"):
    workdir_lib.check_config(_config(host_preprocessing=""), workdir)


def _noisy_student_config():
  config = noisy_student_tiny.get_config()
  shared = {"dataset": SPEC, "num_holdout": 0, "eval_split": "test", "num_labelled": 40,
            "host_preprocessing": "efficientnet", "image_size": SIZE, "batch_size": 16,
            "eval_batch_size": 16, "num_steps": 2, "log_every": 1, "eval_every": 2,
            "checkpoint_every": 2}
  config.teacher = config_utils.with_overrides(config.teacher, shared)
  # The student trains and is evaluated at another resolution than its teacher's.
  config.student = config_utils.with_overrides(config.student, {**shared, "image_size": 20})
  config.num_iterations = 1
  config.pseudo.threshold = 0.0
  return config


def test_students_must_share_the_teachers_host_preprocessing(tmp_path):
  config = _noisy_student_config()
  config.student_overrides = ({"host_preprocessing": ""},)
  with pytest.raises(ConfigError, match="student 1 has host_preprocessing='', the teacher "
                     "'efficientnet'"):
    noisy_student.check_settings(config, str(tmp_path))


def test_noisy_student_teacher_labels_its_centre_crops_and_student_trains_on_full_images(
    varied_data, tmp_path):
  config = _noisy_student_config()
  labelled_pools = []
  label_pool = pseudo_label.label_pool

  def recording_label_pool(variables, task, pool_source, out_dir, **kwargs):
    labelled_pools.append(pool_source)
    return label_pool(variables, task, pool_source, out_dir, **kwargs)

  varied_data.setattr(pseudo_label, "label_pool", recording_label_pool)
  try:
    summary = noisy_student.run(config, str(tmp_path / "run"))
  finally:
    varied_data.setattr(pseudo_label, "label_pool", label_pool)
  assert [row["stage"] for row in summary["stages"]] == ["teacher", "student_1"]
  assert summary["stages"][1]["pseudo_labels"]["pool"] == 56
  # The teacher (16 px) labelled the centre crops of the 56 unlabelled training images.
  pool = noisy_student.load_data(config).unlabelled
  assert [pool[i]["image"].shape[:2] for i in range(2)] != [(SIZE, SIZE)] * 2
  (labelled,) = labelled_pools
  np.testing.assert_array_equal(
      np.stack([labelled[i]["image"] for i in range(len(labelled))]),
      _expected_eval_images([pool[i] for i in range(len(pool))]))
  # The 20 px student evaluated the 24 test images at its own resolution.
  student_dir = str(tmp_path / "run" / "student_1")
  student_data = run_data_lib.load_run_data(workdir_lib.load_config(student_dir))
  assert student_data.image_shape == (20, 20, 3)
  assert summary["stages"][1]["num_examples"] == 24


def test_distillation_teacher_pass_reads_the_centre_crops(varied_data, tmp_path):
  config = distill_cifar10_resnet56_to_resnet20.get_config()
  config.teacher = _config(num_labelled=40)
  config.student = _config(num_labelled=40, **{"model_kwargs.widths": (4, 8)})
  config.distill.batch_size, config.distill.shard_size = 32, 64
  labelled_pools = []
  label_pool = pseudo_label.label_pool

  def recording_label_pool(variables, task, pool_source, out_dir, **kwargs):
    labelled_pools.append(pool_source)
    return label_pool(variables, task, pool_source, out_dir, **kwargs)

  varied_data.setattr(pseudo_label, "label_pool", recording_label_pool)
  try:
    result = distill.run(config, str(tmp_path))
  finally:
    varied_data.setattr(pseudo_label, "label_pool", label_pool)
  assert result["student"]["step"] == 2
  run_data = run_data_lib.load_run_data(config.student)
  # The labelled split, then the unlabelled pool, each as centre crops of the whole images.
  assert [len(pool) for pool in labelled_pools] == [40, 56]
  for pool, whole in zip(labelled_pools, (run_data.train, run_data.unlabelled)):
    np.testing.assert_array_equal(np.stack([pool[i]["image"] for i in range(len(pool))]),
                                  _expected_eval_images([whole[i] for i in range(len(whole))]))
