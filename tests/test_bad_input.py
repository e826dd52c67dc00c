"""Bad input gets a clear error and loses nothing.

Each case checks the error type, that the message says what is wrong and how to fix
it, and that an existing workdir (checkpoints, config.json, metrics.jsonl,
results.json, TensorBoard files) or report is left byte for byte as it was; a
fresh workdir is not even created. Case -> test (cases covered elsewhere noted):

- unknown dataset spec, missing local file (path, --data_dir / EFFCV_DATA_DIR):
  test_missing_data_file_leaves_the_workdir_untouched,
  test_unknown_spec_and_missing_absolute_path_create_nothing
  (test_data.py::test_npz_errors_name_the_problem: no data directory set)
- TFDS dataset not prepared offline: test_unprepared_tfds_fails_fast_and_creates_nothing
  (test_data.py::test_tfds_offline_fails_fast_with_advice: load_source alone)
- npz with missing keys, wrong dtype or shape, labels out of range, NaN pixels:
  test_malformed_npz_is_refused_before_the_workdir_exists (train and eval splits),
  test_malformed_npz_under_an_existing_workdir_leaves_it_untouched
  (test_data.py: uint8, missing keys, negative labels, length mismatch)
- empty or too-small unlabelled pool (Noisy Student):
  test_noisy_student_refuses_an_empty_or_too_small_pool; a split the dataset cannot
  supply (num_labelled / num_holdout): test_split_sizes_name_the_setting_to_change
- unknown config key or wrong type: test_with_overrides_names_the_key_and_suggests_one,
  test_noisy_student_checks_every_student_config_before_training,
  test_command_line_typo_fails_before_main, test_sweep_typo_fails_before_any_variant_trains
- incompatible checkpoint (another model, class count or optimizer):
  test_resuming_with_another_model_or_class_count_is_refused,
  test_checkpoint_that_does_not_fit_the_state_is_refused
- pretrained weights with missing or mis-shaped tensors:
  test_unfitting_pretrained_weights_are_refused_before_the_workdir_exists
  (test_pretrained*.py: the importers alone)
- batch size not divisible by the device count:
  test_batch_size_must_divide_by_the_devices
- NaN loss: test_nan_loss_keeps_the_last_good_checkpoint_and_every_file
  (test_train.py::test_nan_loss_stops_run_and_keeps_last_good_checkpoint: parameters)
"""

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import digits_tiny, noisy_student_quickstart
from effcv_jax import config_utils, noisy_student, train
from effcv_jax import data as data_lib
from effcv_jax import task as task_lib
from effcv_jax.checkpoint import CheckpointMismatchError
from effcv_jax.pretrained import WeightImportError
from tests.conftest import REPO_ROOT
from tests.test_pretrained import fake_state_dict


def _config(**overrides):
  """digits_tiny on an npz copy of the digits, small and short."""
  base = {"dataset": "npz:digits.npz", "model_kwargs.widths": (4,), "model_kwargs.hidden": 8,
          "augment": "", "num_steps": 10, "log_every": 5, "checkpoint_every": 5,
          "eval_every": 10, "eval_batch_size": 304}
  return config_utils.with_overrides(digits_tiny.get_config(), {**base, **overrides})


def _snapshot(root) -> dict[str, tuple[int, int, str]]:
  """{relative path: (size, mtime_ns, sha256)} of every file under root."""
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      files[os.path.relpath(path, root)] = (os.path.getsize(path), os.stat(path).st_mtime_ns,
                                            digest)
  return files


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_arrays("pkg:digits", "train")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, digits):
  """A local data directory holding digits.npz (x_train NHW uint8, y_train)."""
  root = tmp_path_factory.mktemp("data")
  images, labels = digits
  np.savez(root / "digits.npz", x_train=images[..., 0], y_train=labels)
  return str(root)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  train.train_and_evaluate(_config(), workdir, data_dir)
  return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
  """A copy of the finished run (mtimes kept) and its snapshot."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir, copy_function=shutil.copy2)
  before = _snapshot(workdir)
  assert {"config.json", "metrics.jsonl", "results.json"} <= set(before)
  assert any(path.startswith("checkpoints") for path in before)
  return workdir, before


def _write_npz(directory: pathlib.Path, **arrays) -> str:
  directory.mkdir(exist_ok=True)
  np.savez(directory / "bad.npz", **arrays)
  return str(directory)


# --------------------------------------------------------------------------
# Data.


def test_missing_data_file_leaves_the_workdir_untouched(run_copy, tmp_path):
  workdir, before = run_copy
  elsewhere = str(tmp_path / "elsewhere")
  with pytest.raises(data_lib.DataError) as error:
    train.train_and_evaluate(_config(), workdir, elsewhere)
  message = str(error.value)
  assert os.path.join(elsewhere, "digits.npz") in message
  assert "--data_dir" in message and "EFFCV_DATA_DIR" in message
  assert _snapshot(workdir) == before


def test_unknown_spec_and_missing_absolute_path_create_nothing(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  with pytest.raises(data_lib.DataError, match=r"Unknown dataset spec 'digits\.npz'.*"
                                               r"npz:PATH.*for a local file: npz:digits\.npz"):
    train.train_and_evaluate(_config(dataset="digits.npz"), workdir, data_dir)
  missing = str(tmp_path / "nowhere" / "digits.npz")
  with pytest.raises(data_lib.DataError, match=rf"'{missing}' not found: check the path"):
    train.train_and_evaluate(_config(dataset=f"npz:{missing}"), workdir, data_dir)
  assert not os.path.exists(workdir)


def test_unprepared_tfds_fails_fast_and_creates_nothing(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  workdir = str(tmp_path / "run")
  start = time.perf_counter()
  with pytest.raises(data_lib.DataError,
                     match=r"'mnist' is not prepared.*tfds build mnist.*npz:PATH.*--data_dir"):
    train.train_and_evaluate(_config(dataset="tfds:mnist", eval_split="test"), workdir)
  assert time.perf_counter() - start < 20
  assert not os.path.exists(workdir)


_IMAGES = np.zeros((40, 8, 8), np.uint8)
_LABELS = np.arange(40) % 10


@pytest.mark.parametrize("arrays, overrides, pattern", [
    ({"x_train": np.where(np.eye(8, dtype=bool), np.nan, 0.5).astype(np.float32)[None]
                 .repeat(40, 0), "y_train": _LABELS}, {},
     r"images must be uint8 \(0\.\.255\), got float32 with 320 NaN pixels \(drop or repair.*"
     r"astype\(np\.uint8\)"),
    ({"x_train": np.zeros((40, 3, 8, 8), np.uint8), "y_train": _LABELS}, {},
     r"\(40, 3, 8, 8\) look channels-first \(NCHW\); store them NHWC: x\.transpose\(0, 2, 3, 1\)"),
    ({"x_train": np.zeros((40, 64), np.uint8), "y_train": _LABELS}, {},
     r"images must be NHW or NHWC, got shape \(40, 64\)"),
    ({"x_train": _IMAGES, "y_train": np.eye(10, dtype=np.int64)[_LABELS]}, {},
     r"labels must be a 1-D integer array.*int64 \(40, 10\).*y\.argmax\(-1\)"),
    ({"x_train": _IMAGES, "y_train": _LABELS + 5}, {},
     r"bad\.npz \[train\] has label 14 but config\.num_classes = 10: set num_classes to at "
     r"least 15 \(--config\.num_classes=15\) or fix the labels"),
    ({"x_train": _IMAGES, "y_train": _LABELS, "x_test": _IMAGES[:8], "y_test": np.full(8, 10)},
     {"eval_split": "test"}, r"\[test\] has label 10 but config\.num_classes = 10"),
    ({"x_train": _IMAGES, "y_train": _LABELS}, {"eval_split": "test"},
     r"split 'test' needs keys \('x_test', 'y_test'\); missing \['x_test', 'y_test'\]; the file "
     r"has \['x_train', 'y_train'\]\. Save the arrays under those names or choose a split"),
    ({"x_train": _IMAGES[:0], "y_train": _LABELS[:0]}, {}, r"bad\.npz \[train\]: no examples"),
], ids=["nan_float", "nchw", "flat", "one_hot", "label_range", "eval_label_range",
        "missing_keys", "empty"])
def test_malformed_npz_is_refused_before_the_workdir_exists(tmp_path, arrays, overrides, pattern):
  data_dir = _write_npz(tmp_path / "data", **arrays)
  workdir = str(tmp_path / "run")
  config = _config(dataset="npz:bad.npz", num_holdout=10, **overrides)
  with pytest.raises(data_lib.DataError, match=pattern):
    train.train_and_evaluate(config, workdir, data_dir)
  assert not os.path.exists(workdir)


def test_malformed_npz_under_an_existing_workdir_leaves_it_untouched(run_copy, tmp_path, digits):
  workdir, before = run_copy
  images = digits[0][..., 0].astype(np.float32) / 255
  images[3, 2, 2] = np.nan
  (tmp_path / "data").mkdir()
  np.savez(tmp_path / "data" / "digits.npz", x_train=images, y_train=digits[1])
  with pytest.raises(data_lib.DataError, match="got float32 with 1 NaN pixels"):
    train.train_and_evaluate(_config(), workdir, str(tmp_path / "data"))
  assert _snapshot(workdir) == before


def test_split_sizes_name_the_setting_to_change(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"num_labelled=1700: class \d has \d+ examples, need 170 "
                                       r"\(the training split after the hold-out.*set num_labelled"):
    train.train_and_evaluate(_config(num_labelled=1700), str(tmp_path / "run"), data_dir)
  assert not os.path.exists(tmp_path / "run")


# --------------------------------------------------------------------------
# Noisy Student.


def _noisy_student_config(**teacher):
  config = noisy_student_quickstart.get_config()
  shared = {"dataset": "npz:digits.npz", "num_holdout": 300, "num_labelled": 200,
            "batch_size": 32, "model_kwargs.widths": (4, 8), "num_steps": 10, **teacher}
  config.teacher = config_utils.with_overrides(config.teacher, shared)
  config.student = config_utils.with_overrides(config.student, shared)
  return config


@pytest.fixture
def noisy_student_workdir(tmp_path):
  """A Noisy Student workdir with a summary and a teacher's results, and its snapshot."""
  workdir = tmp_path / "ns"
  (workdir / "teacher").mkdir(parents=True)
  (workdir / "summary.json").write_text('{"stages": []}')
  (workdir / "teacher" / "results.json").write_text('{"step": 10}')
  return str(workdir), _snapshot(workdir)


@pytest.mark.parametrize("num_labelled, student_batch_size, pattern", [
    (-1, 32, r"unlabelled pool is empty \(1497 training examples after the hold-out "
             r"\(num_holdout=300\), of which 1497 labelled \(teacher\.num_labelled=-1\)\): set "
             r"teacher\.num_labelled below"),
    (1440, 128, r"pool has 57 examples, fewer than the 96 pseudo-labelled examples of one "
                r"student batch \(student batch_size=128, unlabelled_ratio=3\.0; .*of which 1440 "
                r"labelled.*label fewer examples.*or lower unlabelled_ratio"),
], ids=["empty", "too_small"])
def test_noisy_student_refuses_an_empty_or_too_small_pool(noisy_student_workdir, data_dir,
                                                          num_labelled, student_batch_size,
                                                          pattern):
  workdir, before = noisy_student_workdir
  config = _noisy_student_config(num_labelled=num_labelled)
  config.student.batch_size = student_batch_size
  with pytest.raises(ValueError, match=pattern):
    noisy_student.run(config, workdir, data_dir)
  assert _snapshot(workdir) == before


@pytest.mark.parametrize("student_overrides, error, pattern", [
    (({}, {"optimizer.lrr": 0.1}), KeyError,
     r"student_overrides of iteration 2: config override 'optimizer\.lrr': no such key 'lrr'; "
     r"did you mean 'lr'\?"),
    (({"batch_size": "64"},), TypeError,
     r"iteration 1: config override 'batch_size': '64' has type str, the key holds int"),
    (({"batch_size": 60},), ValueError,
     r"student 1: batch size 60 does not divide by the 8 devices; use a multiple of 8 \(e\.g\. 64\)"),
    (({"num_classes": 5},), ValueError, r"student 1 has num_classes=5, the teacher 10"),
], ids=["typo", "type", "batch_size", "classes"])
def test_noisy_student_checks_every_student_config_before_training(
    noisy_student_workdir, data_dir, student_overrides, error, pattern):
  workdir, before = noisy_student_workdir
  config = _noisy_student_config()
  config.num_iterations = 2
  config.student_overrides = student_overrides
  with pytest.raises(error, match=pattern):
    noisy_student.run(config, workdir, data_dir)
  assert _snapshot(workdir) == before


# --------------------------------------------------------------------------
# Config keys and types.


def test_with_overrides_names_the_key_and_suggests_one():
  base = digits_tiny.get_config()
  with pytest.raises(KeyError) as error:
    config_utils.with_overrides(base, {"batch_sise": 64})
  assert str(error.value) == ("config override 'batch_sise': no such key 'batch_sise'; "
                              "did you mean 'batch_size'?")
  with pytest.raises(config_utils.ConfigKeyError, match=r"no such key 'optimiser'; did you "
                                                        r"mean 'optimizer'\?"):
    config_utils.with_overrides(base, {"optimiser.lr": 0.1})
  with pytest.raises(config_utils.ConfigKeyError, match=r"no such key 'zzz'; the keys there "
                                                        r"are \['decay_every_steps', 'decay_rate', "
                                                        r"'grad_clip_norm', 'grad_scale', 'lr'"):
    config_utils.with_overrides(base, {"optimizer.zzz": 0.1})
  with pytest.raises(config_utils.ConfigKeyError, match=r"'batch_size\.x': no such key 'x' "
                                                        r"\(its parent is a int value"):
    config_utils.with_overrides(base, {"batch_size.x": 1})
  with pytest.raises(TypeError, match=r"'num_steps': 1\.5 has type float, the key holds int "
                                      r"\(now 60\); give a value of that type"):
    config_utils.with_overrides(base, {"num_steps": 1.5})
  assert base.batch_size == 32 and base.num_steps == 60 and base.optimizer.lr == 0.05


def _run_cli(args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def test_command_line_typo_fails_before_main(run_copy):
  workdir, before = run_copy
  result = _run_cli(["experiments.train", "--config=configs/digits_tiny.py",
                     f"--workdir={workdir}", "--config.batch_sise=64"])
  assert result.returncode == 1
  assert ("FATAL Flags parsing error: --config.batch_sise=64: the config has no key "
          "'batch_sise'. Did you mean \"batch_size\"") in result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(workdir) == before


def test_sweep_typo_fails_before_any_variant_trains(tmp_path):
  sweep_config = tmp_path / "sweep.py"
  sweep_config.write_text(
      "import ml_collections\n"
      "from configs import digits_tiny\n\n\n"
      "def get_config():\n"
      "  variants = {'good': {'num_steps': 5}, 'bad': {'optimizer.lrr': 0.1}}\n"
      "  return ml_collections.ConfigDict(dict(\n"
      "      base=digits_tiny.get_config(), title='t', variants=ml_collections.ConfigDict(\n"
      "          variants, allow_dotted_keys=True)))\n")
  report = tmp_path / "reports" / "sweep"
  report.parent.mkdir()
  report.with_suffix(".json").write_text('{"variants": {}}')
  report.with_suffix(".png").write_bytes(b"png")
  before = _snapshot(report.parent)
  result = _run_cli(["experiments.sweep", f"--config={sweep_config}",
                     f"--workdir={tmp_path / 'runs'}", f"--report={report}"])
  assert result.returncode != 0
  assert ("sweep variant 'bad': config override 'optimizer.lrr': no such key 'lrr'; "
          "did you mean 'lr'?") in result.stderr
  assert not os.path.exists(tmp_path / "runs")
  assert _snapshot(report.parent) == before


# --------------------------------------------------------------------------
# Checkpoints and pretrained weights.


@pytest.mark.parametrize("overrides, pattern", [
    ({"model": "resnet8"}, r"holds a run with a different model \(model: 'cnn_small' there, "
                           r"'resnet8' now\).*Use a new --workdir, or the config the run was "
                           r"started with"),
    ({"num_classes": 12}, r"different num_classes \(num_classes: 10 there, 12 now\)"),
], ids=["model", "num_classes"])
def test_resuming_with_another_model_or_class_count_is_refused(run_copy, data_dir, overrides,
                                                               pattern):
  workdir, before = run_copy
  with pytest.raises(ValueError, match=pattern):
    train.train_and_evaluate(_config(num_steps=20, **overrides), workdir, data_dir)
  assert _snapshot(workdir) == before


def test_checkpoint_that_does_not_fit_the_state_is_refused(run_copy, data_dir):
  """A config.json that says adamw beside sgd checkpoints (a config that differs from
  config.json is refused before: tests/test_workdir_safety.py)."""
  workdir, _ = run_copy
  config = _config(num_steps=20, **{"optimizer.name": "adamw"})
  config_file = os.path.join(workdir, "config.json")
  with open(config_file, "w") as f:
    f.write(config.to_json(indent=2))
  before = _snapshot(workdir)
  with pytest.raises(CheckpointMismatchError,
                     match=r"checkpoint 10 in .*checkpoints does not fit the train state of this "
                           r"config \(another model, class count, optimizer or lr_rules\?\): "
                           r".*opt_state.*Resume with the config the run was started with"):
    train.train_and_evaluate(config, workdir, data_dir)
  assert _snapshot(workdir) == before


@pytest.mark.parametrize("mangle, pattern", [
    (lambda sd: sd.pop("layer2.0.bn2.running_var"),
     r"missing tensor 'layer2\.0\.bn2\.running_var' is not in the weight file"),
    (lambda sd: sd.update({"linear.weight": np.zeros((10, 63), np.float32)}),
     r"tensor 'linear\.weight' has shape \(10, 63\).*the model expects \(64, 10\)"),
], ids=["missing", "misshaped"])
def test_unfitting_pretrained_weights_are_refused_before_the_workdir_exists(
    tmp_path, digits, mangle, pattern):
  state_dict = fake_state_dict(depth=8)
  mangle(state_dict)
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  np.savez(data_dir / "weights.npz", **state_dict)
  images, labels = digits
  np.savez(data_dir / "rgb.npz", x_train=images.repeat(3, axis=-1), y_train=labels)
  config = _config(dataset="npz:rgb.npz", model="resnet8", model_kwargs={},
                   input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225),
                   **{"init_from.kind": "torch_cifar_resnet", "init_from.path": "weights.npz"})
  workdir = str(tmp_path / "run")
  with pytest.raises(WeightImportError, match=pattern) as error:
    train.train_and_evaluate(config, workdir, str(data_dir))
  message = str(error.value)
  assert f"init_from '{data_dir / 'weights.npz'}' (kind 'torch_cifar_resnet')" in message
  assert "Check that init_from.path is a complete" in message
  assert not os.path.exists(workdir)


# --------------------------------------------------------------------------
# Devices and numerics.


def test_batch_size_must_divide_by_the_devices(run_copy, data_dir, tmp_path):
  workdir, before = run_copy
  for target in (workdir, str(tmp_path / "fresh")):
    with pytest.raises(ValueError, match=r"batch size 30 does not divide by the 8 devices; use "
                                         r"a multiple of 8 \(e\.g\. 32\)"):
      train.train_and_evaluate(_config(num_steps=20, batch_size=30), target, data_dir)
  assert _snapshot(workdir) == before
  assert not os.path.exists(tmp_path / "fresh")


def test_nan_loss_keeps_the_last_good_checkpoint_and_every_file(run_copy, data_dir):
  workdir, _ = run_copy
  config = _config(num_steps=20, input_std=(0.0,))   # inputs become inf -> loss NaN
  with open(os.path.join(workdir, "config.json"), "w") as f:   # a resume must match it
    f.write(config.to_json(indent=2))
  before = _snapshot(workdir)
  with pytest.raises(task_lib.NonFiniteLossError,
                     match=r"not finite .*The last good checkpoint is step 10 in .*checkpoints\. "
                           r"Lower the learning rate or enable optimizer\.grad_clip_norm"):
    train.train_and_evaluate(config, workdir, data_dir)
  after = _snapshot(workdir)
  assert {path: after.get(path) for path in before} == before
  new = set(after) - set(before)
  assert all(path.startswith("tensorboard") for path in new), new   # this session's event file


@pytest.mark.parametrize("entry_point, shared", [
    ("train", ("config", "workdir", "data_dir")),
    ("evaluate", ("workdir", "data_dir")),
    ("noisy_student", ("config", "workdir", "data_dir")),
    ("noisy_student_report", ("config", "workdir", "data_dir")),
    ("distill", ("config", "workdir", "data_dir")),
    ("sweep", ("config", "workdir", "data_dir")),
    ("augment_gallery", ("data_dir",)),
])
def test_every_entry_point_starts_through_cli_run_and_lists_the_multi_host_flags(
    entry_point, shared):
  source = (REPO_ROOT / "experiments" / f"{entry_point}.py").read_text()
  assert "cli.run(main" in source and "app.run(" not in source
  assert "initialize_distributed" not in source     # cli.run joins the run before main
  result = _run_cli([f"experiments.{entry_point}", "--help"])   # absl exits 1 after --help
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  listed = set(re.findall(r"^\s+--(\w+):", result.stdout, re.MULTILINE))
  assert {"distributed", "coordinator_address", "num_processes", "process_id",
          "local_device_ids"} <= listed
  assert set(shared) <= listed
