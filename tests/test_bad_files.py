"""Bad files get one clear error naming the file, what is wrong with it and what to do.

Case -> test:
- npz data (text named .npz, truncated, corrupt, pickled objects, a single .npy):
  test_bad_npz_is_a_file_format_error, test_bad_npz_is_refused_before_the_workdir_exists,
  test_bad_npz_through_the_cli_is_one_line
- Keras HDF5, TFLite, PyTorch state_dict (.npz, .safetensors, .pth) weights:
  test_bad_keras_h5_names_the_file, test_bad_tflite_names_the_file,
  test_bad_state_dict_names_the_file, test_bad_pytorch_pickle_names_the_file (needs torch)
- pseudo-label shards and manifests: test_bad_pseudo_label_files_name_the_file
- unknown tfds: name: test_unknown_tfds_name_gets_close_matches_and_the_offline_advice
- damaged checkpoint (array file truncated or overwritten, metadata or data-iterator file
  deleted): test_damaged_checkpoint_names_the_intact_one_and_leaves_the_workdir,
  test_advice_for_a_damaged_checkpoint_resumes_bit_identically,
  test_no_intact_checkpoint_says_to_start_again, test_damaged_checkpoint_through_the_cli
  (an unfitting checkpoint stays a CheckpointMismatchError:
  test_bad_input.py::test_checkpoint_that_does_not_fit_the_state_is_refused)
- full disk: test_atomic_write_on_a_full_disk_names_the_device,
  test_full_disk_during_training_then_rerun_is_bit_identical (on a small tmpfs; skipped
  through `missing("mount")` where mounting is not allowed)
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import config_utils, errors, files, pseudo_label, sharding, train
from effcv_jax import data as data_lib
from effcv_jax import task as task_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.pretrained import read_keras_h5, read_state_dict
from tests.conftest import REPO_ROOT, import_or_skip, missing

# The digits_tiny run of these tests, small and short: checkpoints at 10, 20, 30.
_OVERRIDES = {"model_kwargs.widths": (4,), "model_kwargs.hidden": 8, "augment": "",
              "num_steps": 30, "log_every": 10, "checkpoint_every": 10, "eval_every": 30}


def _config(**overrides):
  return config_utils.with_overrides(digits_tiny.get_config(), {**_OVERRIDES, **overrides})


def _cli_overrides(**overrides) -> list[str]:
  """--config.KEY=VALUE flags for experiments.train of _config(**overrides)."""
  return [f"--config.{key}={value}" for key, value in {**_OVERRIDES, **overrides}.items()]


def _snapshot(root) -> dict[str, tuple[int, int, str]]:
  """{relative path: (size, mtime_ns, sha256)} of every file under root."""
  found = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      found[os.path.relpath(path, root)] = (os.path.getsize(path), os.stat(path).st_mtime_ns,
                                            digest)
  return found


def _run_cli(args, timeout=180):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)


def _assert_one_error_line(result, *fragments) -> str:
  """Exit status 2, one `ERROR:` line holding every fragment, no traceback; the line."""
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def _matches(pattern: str, text: str) -> bool:
  return re.search(pattern, text) is not None


def _valid_npz_bytes(tmp_path) -> bytes:
  images = np.zeros((20, 8, 8), np.uint8)
  np.savez(tmp_path / "valid.npz", x_train=images, y_train=np.arange(20) % 10)
  return (tmp_path / "valid.npz").read_bytes()


# --------------------------------------------------------------------------
# Data and weight files.


def _bad_npz(tmp_path, kind: str) -> pathlib.Path:
  """An npz file damaged in the way `kind` names."""
  path = tmp_path / "bad.npz"
  raw = _valid_npz_bytes(tmp_path)
  if kind == "text":
    path.write_text("x,y\n0,1\n")
  elif kind == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  elif kind == "corrupt":
    with zipfile.ZipFile(tmp_path / "valid.npz") as archive:
      offset = archive.getinfo("x_train.npy").header_offset + 100
    path.write_bytes(raw[:offset] + b"\xff" * 64 + raw[offset + 64:])
  elif kind == "pickled":
    np.savez(path, x_train=np.array([{"a": 1}] * 20, dtype=object), y_train=np.zeros(20, int))
  elif kind == "npy":
    np.save(tmp_path / "single.npy", np.zeros(3))
    shutil.move(tmp_path / "single.npy", path)
  return path


_NPZ_PROBLEMS = {
    "text": r"not an npz archive: it starts with text \('x,y'\)",
    "truncated": r"truncated \(no zip directory at the end of its \d+ bytes\)",
    "corrupt": r"corrupt \(Bad CRC-32 for file 'x_train.npy'\)",
    "pickled": r"it holds Python objects \(pickled arrays\), which are never loaded",
    "npy": r"not an npz archive: it is a single \.npy array \(np\.save\)",
}


@pytest.mark.parametrize("kind", list(_NPZ_PROBLEMS))
def test_bad_npz_is_a_file_format_error(tmp_path, kind):
  path = _bad_npz(tmp_path, kind)
  with pytest.raises(errors.FileFormatError) as raised:
    data_lib.load_source(f"npz:{path}", "train")
  message = str(raised.value)
  assert message.startswith(f"{path.resolve()}: ")
  assert "allow_pickle" not in message
  assert _matches(_NPZ_PROBLEMS[kind], message)
  assert "re-create it with np.savez(PATH, x_train=images, y_train=labels" in message


def test_bad_npz_is_refused_before_the_workdir_exists(tmp_path):
  path = _bad_npz(tmp_path, "truncated")
  workdir = tmp_path / "run"
  with pytest.raises(errors.FileFormatError, match=r"bad\.npz: truncated"):
    train.train_and_evaluate(_config(dataset=f"npz:{path}"), str(workdir))
  assert not workdir.exists()


def test_bad_npz_through_the_cli_is_one_line(tmp_path):
  path = _bad_npz(tmp_path, "text")
  workdir = tmp_path / "run"
  result = _run_cli(["--config=configs/digits_tiny.py", f"--workdir={workdir}",
                     f"--config.dataset=npz:{path}"])
  _assert_one_error_line(result, f"{path.resolve()}: not an npz archive: it starts with text",
                         "np.savez(PATH")
  assert not workdir.exists()


def _tiny_keras_h5(path: pathlib.Path) -> None:
  """A Keras 2 weights file with one dense layer."""
  h5py = import_or_skip("h5py")
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"dense"]
    group = f.create_group("dense")
    group.attrs["weight_names"] = [b"dense/kernel:0"]
    group.create_dataset("dense/kernel:0", data=np.arange(4096, dtype=np.float32))


def test_bad_keras_h5_names_the_file(tmp_path):
  good = tmp_path / "good.h5"
  _tiny_keras_h5(good)
  assert read_keras_h5(good)["dense/kernel"].shape == (4096,)
  raw = good.read_bytes()
  truncated, text = tmp_path / "truncated.h5", tmp_path / "text.h5"
  truncated.write_bytes(raw[:len(raw) // 2])
  text.write_text("<html>404 Not Found</html>\n")
  for path, problem in [(truncated, f"truncated: {len(raw) // 2} of the {len(raw)} bytes its "
                                    "header records"),
                        (text, "not an HDF5 file: it starts with text ('<html>404")]:
    with pytest.raises(errors.FileFormatError) as raised:
      read_keras_h5(path)
    assert str(raised.value).startswith(f"{path.resolve()}: {problem}"), str(raised.value)
    assert "Download the weights file again" in str(raised.value)


def test_bad_tflite_names_the_file(tmp_path):
  import_or_skip("tflite")
  from effcv_jax.pretrained import read_tflite  # pylint: disable=import-outside-toplevel
  text, truncated = tmp_path / "text.tflite", tmp_path / "truncated.tflite"
  text.write_text("version https://git-lfs.github.com/spec/v1\n")
  # A flatbuffer header (root table offset, TFL3 identifier) whose tables are cut off.
  truncated.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8)
  with pytest.raises(errors.FileFormatError) as raised:
    read_tflite(text)
  assert str(raised.value).startswith(
      f"{text.resolve()}: not a TFLite flatbuffer (no TFL3 identifier at byte 4; it starts "
      "with text ('version https://git-lfs")
  with pytest.raises(errors.FileFormatError) as raised:
    read_tflite(truncated)
  assert str(raised.value).startswith(
      f"{truncated.resolve()}: truncated or corrupt TFLite flatbuffer of 16 bytes")
  assert "Download the .tflite file again" in str(raised.value)


def test_bad_state_dict_names_the_file(tmp_path):
  raw = _valid_npz_bytes(tmp_path)
  cases = {tmp_path / "sd.npz": (raw[:100], "truncated (no zip directory"),
           tmp_path / "sd.safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
                                         "not a complete safetensors file")}
  for path, (content, problem) in cases.items():
    path.write_bytes(content)
    with pytest.raises(errors.FileFormatError) as raised:
      read_state_dict(path)
    assert str(raised.value).startswith(f"{path.resolve()}: {problem}"), str(raised.value)
    assert "Download the weights file again, or re-export the state_dict" in str(raised.value)


def test_bad_pytorch_pickle_names_the_file(tmp_path):
  path = tmp_path / "resnet20.th"
  path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)     # a zip header and nothing else
  with pytest.raises(errors.FileFormatError,
                     match=rf"{path}.* not a readable PyTorch checkpoint .*re-download"):
    read_state_dict(path)


def _finished_pass(out_dir: pathlib.Path) -> pathlib.Path:
  """A one-shard pseudo-label pass over 4 examples; the shard's path."""
  spec = {"num_shards": 1, "pool_size": 4, "num_classes": 2, "temperature": 1.0,
          "process_count": 1}
  out_dir.mkdir()
  shard = out_dir / "shard_00000.p0of1.npz"
  files.write_npz_atomic(str(shard), {
      "spec": np.array(json.dumps(spec)), "indices": np.arange(4),
      "confidence": np.full(4, 0.5, np.float32), "log_probs": np.log(np.full((4, 2), 0.5))})
  files.write_json_atomic(str(out_dir / "manifest.p0of1.json"), {
      "spec": spec, "process_index": 0, "shards": [{"file": shard.name}]})
  return shard


def test_bad_pseudo_label_files_name_the_file(tmp_path):
  out_dir = tmp_path / "labels"
  shard = _finished_pass(out_dir)
  assert pseudo_label.load_pseudo_labels(str(out_dir))[1].shape == (4, 2)
  raw = shard.read_bytes()
  shard.write_bytes(raw[:len(raw) - 30])
  with pytest.raises(errors.FileFormatError) as raised:
    pseudo_label.load_pseudo_labels(str(out_dir))
  assert str(raised.value).startswith(f"{shard.resolve()}: truncated")
  assert "Delete it and rerun the same command" in str(raised.value)
  manifest = out_dir / "manifest.p0of1.json"
  manifest.write_text(manifest.read_text()[:20])
  with pytest.raises(errors.FileFormatError,
                     match=rf"{manifest.resolve()}: not a complete JSON manifest .*Delete it"):
    pseudo_label.load_pseudo_labels(str(out_dir))


def test_unknown_tfds_name_gets_close_matches_and_the_offline_advice(tmp_path, monkeypatch):
  import_or_skip("tensorflow_datasets")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  workdir = tmp_path / "run"
  with pytest.raises(data_lib.DataError) as raised:
    train.train_and_evaluate(_config(dataset="tfds:mnistt", eval_split="test"), str(workdir))
  message = str(raised.value)
  assert message.startswith("dataset spec 'tfds:mnistt': 'mnistt' is not a TFDS dataset "
                            "(did you mean tfds:mnist")
  assert "npz:PATH" in message and "--data_dir" in message and "Available datasets" not in message
  assert not workdir.exists()


# --------------------------------------------------------------------------
# Checkpoints.


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished run (checkpoints 10, 20, 30) and its results."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  results = train.train_and_evaluate(_config(), workdir)
  return workdir, results


@pytest.fixture
def run_copy(finished_run, tmp_path):
  """A copy of the finished run (mtimes kept)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir, copy_function=shutil.copy2)
  return workdir


def _array_files(step_dir: str) -> list[str]:
  """The files that hold the saved arrays' data (orbax's OCDBT data files, in state/d and
  state/ocdbt.process_0/d)."""
  return sorted(os.path.join(directory, name)
                for directory, _, names in os.walk(os.path.join(step_dir, "state"))
                if os.path.basename(directory) == "d" for name in names)


def _damage(step_dir: str, kind: str) -> None:
  """Damages checkpoint directory `step_dir` as `kind` names."""
  if kind == "truncated_arrays":
    for path in _array_files(step_dir):
      os.truncate(path, 10)
  elif kind == "overwritten_arrays":
    for path in _array_files(step_dir):
      with open(path, "r+b") as f:
        f.write(b"\x00" * os.path.getsize(path))
  elif kind == "deleted_metadata":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  elif kind == "deleted_data_state":
    os.remove(os.path.join(step_dir, "data", "process_0-of-1.json"))


_DAMAGE_PROBLEMS = {
    "truncated_arrays": r"Error reading .* in OCDBT database at local file",
    "overwritten_arrays": r"Error reading .* in OCDBT database at local file",
    "deleted_metadata": r"its metadata cannot be read \(FileNotFoundError: Metadata file "
                        r"\(named _METADATA\) does not exist",
    "deleted_data_state": r"process_0-of-1\.json does not exist",
}


@pytest.mark.parametrize("kind", list(_DAMAGE_PROBLEMS))
def test_damaged_checkpoint_names_the_intact_one_and_leaves_the_workdir(run_copy, kind):
  checkpoints = os.path.join(run_copy, "checkpoints")
  _damage(os.path.join(checkpoints, "30"), kind)
  before = _snapshot(run_copy)
  with pytest.raises(errors.FileFormatError) as raised:
    train.train_and_evaluate(_config(num_steps=40), run_copy)
  message = str(raised.value)
  assert message.startswith(f"checkpoint 30 ({checkpoints}/30) is damaged (a file of it is "
                            "missing, truncated or overwritten) and cannot be restored: ")
  assert _matches(_DAMAGE_PROBLEMS[kind], message), message
  assert message.endswith(
      f"Checkpoint 20 in {checkpoints} is intact. To resume from it, move the damaged "
      f"checkpoint aside (mv {checkpoints}/30 {checkpoints}/30.damaged) and rerun the same "
      "command.")
  assert "another model" not in message
  assert _snapshot(run_copy) == before


def test_advice_for_a_damaged_checkpoint_resumes_bit_identically(run_copy, finished_run):
  checkpoints = os.path.join(run_copy, "checkpoints")
  _damage(os.path.join(checkpoints, "30"), "truncated_arrays")
  with pytest.raises(errors.FileFormatError, match="Checkpoint 20 .* is intact"):
    train.train_and_evaluate(_config(), run_copy)
  os.rename(os.path.join(checkpoints, "30"), os.path.join(checkpoints, "30.damaged"))
  results = train.train_and_evaluate(_config(), run_copy)
  reference = finished_run[1]
  assert (results["accuracy"], results["loss"]) == (reference["accuracy"], reference["loss"])
  assert os.path.isdir(os.path.join(checkpoints, "30.damaged"))


def test_no_intact_checkpoint_says_to_start_again(run_copy):
  checkpoints = os.path.join(run_copy, "checkpoints")
  for step in ("20", "30"):
    _damage(os.path.join(checkpoints, step), "deleted_metadata")
  _damage(os.path.join(checkpoints, "10"), "truncated_arrays")
  before = _snapshot(run_copy)
  with pytest.raises(errors.FileFormatError) as raised:
    train.train_and_evaluate(_config(num_steps=40), run_copy)
  assert str(raised.value).endswith(
      f"No older checkpoint restores intact either (tried steps 20, 10). Start the run again: "
      f"move {checkpoints} aside (mv {checkpoints} {checkpoints}.damaged) and rerun the same "
      "command, or use a new --workdir.")
  assert _snapshot(run_copy) == before


def test_damaged_checkpoint_through_the_cli(run_copy):
  checkpoints = os.path.join(run_copy, "checkpoints")
  _damage(os.path.join(checkpoints, "30"), "overwritten_arrays")
  before = _snapshot(run_copy)
  result = _run_cli(["--config=configs/digits_tiny.py", f"--workdir={run_copy}",
                     *_cli_overrides(num_steps=40)])
  _assert_one_error_line(result, f"checkpoint 30 ({checkpoints}/30) is damaged",
                         f"mv {checkpoints}/30 {checkpoints}/30.damaged")
  assert len(result.stderr.splitlines()) < 10, result.stderr
  assert _snapshot(run_copy) == before


# --------------------------------------------------------------------------
# A full disk.


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 2 MiB tmpfs mounted at tmp_path/disk (unmounted afterwards)."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2048k", "tmpfs",
                            str(mount_point)], capture_output=True, text=True)
  if mounted.returncode:
    missing("mount", f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", str(mount_point)], check=True)


def _fill(mount_point: pathlib.Path, leave_bytes: int) -> pathlib.Path:
  """A filler file that leaves `leave_bytes` free on the mount."""
  free = shutil.disk_usage(mount_point).free
  filler = mount_point / "filler"
  with open(filler, "wb") as f:
    f.write(b"\0" * max(free - leave_bytes, 0))
  return filler


# experiments.train, with the disk of argv[1] filled (but argv[2] bytes) just before the
# checkpoint of step argv[3] is saved; the training flags follow.
_TRAIN_FILLING_THE_DISK = """
import os, runpy, shutil, sys
from effcv_jax import checkpoint
mount_point, leave_bytes, fill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
save = checkpoint.Checkpointer.save
def filling_save(self, step, *args, **kwargs):
  if step == fill_at:
    with open(os.path.join(mount_point, "filler"), "wb") as f:
      f.write(b"\\0" * (shutil.disk_usage(mount_point).free - leave_bytes))
  return save(self, step, *args, **kwargs)
checkpoint.Checkpointer.save = filling_save
sys.argv = ["experiments/train.py"] + sys.argv[4:]
runpy.run_module("experiments.train", run_name="__main__")
"""


def test_atomic_write_on_a_full_disk_names_the_device(small_tmpfs):
  path = small_tmpfs / "results.json"
  files.write_json_atomic(str(path), {"accuracy": 0.5})
  _fill(small_tmpfs, 0)
  with pytest.raises(errors.DiskFullError) as raised:
    files.write_json_atomic(str(path), {"accuracy": 0.75, "padding": "x" * 100_000})
  assert str(raised.value).startswith(
      f"no space left on device tmpfs (mounted at {small_tmpfs}) while writing {path} "
      f"({path} is unchanged): free space and rerun the same command")
  assert json.loads(path.read_text()) == {"accuracy": 0.5}
  assert not os.path.exists(f"{path}.tmp")


def _restored_state(workdir: str, step: int):
  """The train state of checkpoint `step` in `workdir` (of a _config() run)."""
  mesh = sharding.make_mesh()
  _, template = task_lib.init_task_and_state(_config(), (8, 8, 1), mesh, abstract=True)
  checkpointer = Checkpointer(workdir)
  try:
    return jax.device_get(checkpointer.restore(step, template))
  finally:
    checkpointer.close()


def test_full_disk_during_training_then_rerun_is_bit_identical(small_tmpfs, finished_run):
  workdir = small_tmpfs / "run"
  args = ["--config=configs/digits_tiny.py", f"--workdir={workdir}", *_cli_overrides()]
  # The checkpoint of step 30 (about 100 KiB) finds 32 KiB free: its asynchronous save fails.
  result = subprocess.run(
      [sys.executable, "-c", _TRAIN_FILLING_THE_DISK, str(small_tmpfs), str(32 * 1024), "30",
       *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
      env=dict(os.environ, EFFCV_TCMALLOC="0"))
  checkpoints = workdir / "checkpoints"
  _assert_one_error_line(
      result, "no space left on device tmpfs", f"(mounted at {small_tmpfs})",
      f"The last intact checkpoint is step 20 in {checkpoints}",
      "Free space on that device and rerun the same command")
  assert "RESOURCE_EXHAUSTED" not in result.stderr, result.stderr[-3000:]
  assert sorted(os.listdir(checkpoints)) == ["10", "20", "30.orbax-checkpoint-tmp"]
  assert not (workdir / "results.json").exists()
  reference = finished_run[0]
  jax.tree.map(np.testing.assert_array_equal, _restored_state(str(workdir), 20),
               _restored_state(reference, 20))

  (small_tmpfs / "filler").unlink()
  rerun = _run_cli(args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert sorted(os.listdir(checkpoints)) == ["10", "20", "30"]
  results = json.loads((workdir / "results.json").read_text())
  expected = finished_run[1]
  assert (results["accuracy"], results["loss"]) == (expected["accuracy"], expected["loss"])
  jax.tree.map(np.testing.assert_array_equal, _restored_state(str(workdir), 30),
               _restored_state(reference, 30))
