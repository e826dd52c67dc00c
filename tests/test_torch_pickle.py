"""The pickle-free PyTorch checkpoint reader (effcv_jax/pretrained/torch_pickle.py).

Checkpoints are written here in both layouts torch.save uses (zip archive and the
legacy stream) by a small writer that emits the same opcodes, globals and persistent
ids, so the tests need no torch; the real CIFAR ResNet .th files of the shared data
directory are compared with their .npz copies.
"""

import collections
import dataclasses
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from effcv_jax.errors import FileFormatError
from effcv_jax.pretrained import torch_pickle, torch_state_dict
from tests.conftest import data_file

STORAGE_OF_DTYPE = {np.dtype(d): name for name, d in torch_pickle.STORAGE_DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  elements: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Tensor:
  storage: _Storage
  offset: int
  size: tuple
  stride: tuple


@pytest.fixture
def fake_torch(monkeypatch):
  """Modules `torch` and `torch._utils` holding the names torch.save pickles (so that
  pickle can write them as globals); returns (rebuild function, {storage name: class})."""
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only written")
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  classes = {}
  for name in torch_pickle.STORAGE_DTYPES:
    classes[name] = type(name, (), {"__module__": "torch", "__qualname__": name})
    setattr(torch, name, classes[name])
  torch._utils = utils
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return _rebuild_tensor_v2, classes


def _object_pickle(obj, fake_torch) -> bytes:
  """`obj` pickled as torch.save does: storages by persistent id, tensors by rebuild."""
  rebuild, classes = fake_torch

  class Writer(pickle.Pickler):
    def persistent_id(self, value):
      if isinstance(value, _Storage):
        name = STORAGE_OF_DTYPE[value.elements.dtype]
        return ("storage", classes[name], value.key, "cpu", value.elements.size)
      return None

    def reducer_override(self, value):
      if isinstance(value, _Tensor):
        return rebuild, (value.storage, value.offset, value.size, value.stride, False,
                         collections.OrderedDict())
      return NotImplemented

  buffer = io.BytesIO()
  Writer(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def _write_zip(path, obj, storages, fake_torch):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", _object_pickle(obj, fake_torch))
    archive.writestr("archive/byteorder", "little")
    for storage in storages:
      archive.writestr(f"archive/data/{storage.key}", storage.elements.tobytes())


def _write_legacy(path, obj, storages, fake_torch):
  with open(path, "wb") as f:
    for header in (torch_pickle.LEGACY_MAGIC, 1001,
                   {"protocol_version": 1001, "little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(_object_pickle(obj, fake_torch))
    pickle.dump([s.key for s in storages], f, protocol=2)
    for storage in storages:
      f.write(struct.pack("<q", storage.elements.size) + storage.elements.tobytes())


def _checkpoint():
  """(object to save, its storages, the arrays the reader must return)."""
  rng = np.random.default_rng(0)
  shared = _Storage("0", rng.normal(size=24).astype(np.float32))
  counts = _Storage("1", np.arange(5, dtype=np.int64))
  half = _Storage("2", rng.normal(size=6).astype(np.float16))
  brain = _Storage("3", rng.normal(size=4).astype(ml_dtypes.bfloat16))
  state_dict = collections.OrderedDict([
      ("conv.weight", _Tensor(shared, 0, (2, 3, 2), (6, 2, 1))),
      ("conv.weight_t", _Tensor(shared, 0, (3, 2), (1, 6))),      # a transposed view
      ("fc.bias", _Tensor(shared, 12, (4,), (3,))),               # strided, offset
      ("bn.num_batches_tracked", _Tensor(counts, 4, (), ())),     # a scalar
      ("half", _Tensor(half, 0, (2, 3), (3, 1))),
      ("bf16", _Tensor(brain, 0, (4,), (1,))),
  ])
  expected = {
      "conv.weight": shared.elements[:12].reshape(2, 3, 2),
      "conv.weight_t": shared.elements[:12].reshape(2, 6)[:, :3].T,
      "fc.bias": shared.elements[12::3][:4],
      "bn.num_batches_tracked": np.int64(4),
      "half": half.elements.reshape(2, 3),
      "bf16": brain.elements,
  }
  obj = {"state_dict": state_dict, "epoch": 3, "best_prec1": 91.5}
  return obj, [shared, counts, half, brain], expected


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_both_layouts_read_sizes_strides_offsets_and_dtypes(tmp_path, fake_torch, layout):
  obj, storages, expected = _checkpoint()
  path = tmp_path / "model.pth"
  (_write_zip if layout == "zip" else _write_legacy)(path, obj, storages, fake_torch)
  loaded = torch_pickle.load(path)
  assert loaded["epoch"] == 3 and loaded["best_prec1"] == 91.5
  state_dict = loaded["state_dict"]
  assert isinstance(state_dict, collections.OrderedDict)
  assert list(state_dict) == list(expected)
  for name, want in expected.items():
    got = state_dict[name]
    assert got.dtype == np.asarray(want).dtype, name
    np.testing.assert_array_equal(got, want, err_msg=name)


class _RunsACommand:
  """Pickles as os.system(command): what a malicious checkpoint holds."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_that_calls_os_system_is_refused_and_nothing_runs(tmp_path, layout):
  marker = tmp_path / "ran"
  payload = pickle.dumps({"weight": _RunsACommand(f"touch {marker}")}, protocol=2)
  assert b"system" in payload
  path = tmp_path / "evil.pth"
  if layout == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", payload)
  else:
    with open(path, "wb") as f:
      for header in (torch_pickle.LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, f, protocol=2)
      f.write(payload)
  with pytest.raises(torch_pickle.UnsafePickleError,
                     match=r"evil\.pth asks to run or build (posix|os)\.system.*refused"):
    torch_pickle.load(path)
  assert not marker.exists()
  # The state_dict reader goes through the same unpickler.
  with pytest.raises(torch_pickle.UnsafePickleError):
    torch_state_dict.read_state_dict(path)
  assert not marker.exists()


def test_unknown_classes_of_a_training_script_are_refused(tmp_path):
  path = tmp_path / "model.pt"
  with open(path, "wb") as f:
    for header in (torch_pickle.LEGACY_MAGIC, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(pickle.dumps(collections.Counter(a=1), protocol=2))
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"collections\.Counter"):
    torch_pickle.load(path)


def test_truncated_and_foreign_files_name_the_file(tmp_path, fake_torch):
  obj, storages, _ = _checkpoint()
  whole = tmp_path / "whole.pth"
  _write_legacy(whole, obj, storages, fake_torch)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(whole.read_bytes()[:-10])
  with pytest.raises(FileFormatError, match=rf"{cut}.*truncated"):
    torch_pickle.load(cut)
  text = tmp_path / "notes.pth"
  text.write_text("these are not weights\n")
  with pytest.raises(FileFormatError, match=rf"{text}.*not a readable PyTorch checkpoint"):
    torch_pickle.load(text)


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnet_th_files_equal_their_npz_copies(depth):
  names = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
  loaded = torch_pickle.load(data_file(f"weights/{names[depth]}"))
  assert set(loaded) == {"best_prec1", "state_dict"}
  state_dict = torch_state_dict.read_state_dict(data_file(f"weights/{names[depth]}"))
  with np.load(data_file(f"weights/cifar10_resnet{depth}_torch_names.npz")) as reference:
    assert sorted(state_dict) == sorted(reference.files)
    for name in reference.files:
      assert state_dict[name].dtype == reference[name].dtype, name
      np.testing.assert_array_equal(state_dict[name], reference[name], err_msg=name)
