"""grain pipelines: host-side batches of uint8 images and int labels.

Training: an endless, shuffled (reshuffled every epoch), fixed-shape stream; its
iterator state is checkpointed with the model so a resumed run sees exactly the
batches it would have seen. Evaluation: one pass, the last batch padded and
flagged by `mask`, so every example counts exactly once on any number of
processes. Under multi-host each process reads its own slice and yields its
share of the global batch (`global_batch / process_count` examples); training
batches are the same global batches on any number of processes.
Augmentation is not done here: it runs on the accelerator inside the train step.
"""

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import grain
import jax
import numpy as np

from effcv_jax.data.sources import Source


@dataclasses.dataclass(frozen=True)
class Subset:
  """The examples `indices` of `source`, renumbered 0..len(indices)-1."""
  source: Source
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(self.indices[index])]


@dataclasses.dataclass(frozen=True)
class WithSoftLabels:
  """Adds 'soft_label' (float32 (K,), one-hot of 'label', smoothed to (1 - s) * one_hot + s / K
  with `smoothing` s) so hard-labelled records can be mixed with pseudo-labelled ones in one
  batch, and only they are smoothed."""
  source: Source
  num_classes: int
  smoothing: float = 0.0

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self.source[index])
    one_hot = np.eye(self.num_classes, dtype=np.float32)[record["label"]]
    record["soft_label"] = (one_hot * np.float32(1.0 - self.smoothing)
                            + np.float32(self.smoothing / self.num_classes))
    return record


@dataclasses.dataclass(frozen=True)
class ResizedImages:
  """Images of any size (e.g. ImageNet JPEGs from TFDS) as uint8 (size, size, C): the
  shorter side resized to `size` (bilinear, antialiased), then the centre square.
  Host-side, so batches have one shape; augmentation still runs on the accelerator."""
  source: Source
  size: int

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self.source[index])
    record["image"] = resize_and_center_crop(np.asarray(record["image"]), self.size)
    return record


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W[, C]) -> uint8 (size, size, C): shorter side to `size`, centre crop."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if image.ndim == 2:
    image = image[..., None]
  height, width, channels = image.shape
  scale = size / min(height, width)
  new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
  if (new_h, new_w) != (height, width):
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    image = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR)).reshape(new_h, new_w, channels)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return np.ascontiguousarray(image[top:top + size, left:left + size])


def _process_slice() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """This process's share of a global batch; raises if it does not divide."""
  if global_batch_size % process_count:
    raise ValueError(f"batch size {global_batch_size} does not divide by the "
                     f"{process_count} processes")
  return global_batch_size // process_count


def train_iterator(source: Source | Sequence[Source], global_batch_size: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None,
                   weights: Sequence[float] | None = None,
                   record_map: Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]
                   | None = None) -> grain.DatasetIterator:
  """Endless shuffled batches {'image': uint8 (b, H, W, C), 'label': int32 (b,), ...}.

  b = global_batch_size / process_count; the processes' batches, concatenated in
  process order, are those of a single process (the same global batches on any
  number of processes). Every epoch is a new permutation of the source (seeded by
  `seed` and the epoch); incomplete batches never occur. Given
  several sources (records with the same keys), each is shuffled and repeated on
  its own and they are interleaved in the proportions `weights`, so every batch
  holds them in those proportions (e.g. labelled : pseudo-labelled = 1 : 3).
  record_map(record, rng) -> record, if given, runs on every record of the endless stream
  (a grain `random_map` seeded by `seed` and the record's position: new draws every epoch, the
  same ones after a resume), e.g. `efficientnet_preprocess.train_record_map(size)`.
  The returned iterator has get_state()/set_state() for checkpointing.
  """
  sources = [source] if not isinstance(source, (list, tuple)) else list(source)
  for i, part in enumerate(sources):
    if len(part) == 0:
      raise ValueError(f"training source {i} is empty")
  if len(sources) == 1 and len(sources[0]) < global_batch_size:
    raise ValueError(f"training set has {len(sources[0])} examples, fewer than the "
                     f"batch size {global_batch_size}")
  if process_index is None:
    process_index, process_count = _process_slice()
  batch = local_batch_size(global_batch_size, process_count)
  streams = [grain.MapDataset.source(part).shuffle(seed=seed + i).repeat()
             for i, part in enumerate(sources)]
  dataset = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
  if record_map is not None:
    dataset = dataset.random_map(record_map, seed=seed)
  # Cut the stream into local batches, then deal them out: process p's k-th batch is
  # examples [(k n + p) b, (k n + p + 1) b), so the global batch k (the processes' k-th
  # batches in process order) holds the same examples as a single-process run's.
  dataset = dataset.batch(batch, drop_remainder=True)[process_index::process_count]
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
  return iter(dataset.to_iter_dataset(options))


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int) -> int:
  """Batches each process yields so all processes run the same number of steps."""
  per_process = math.ceil(num_examples / process_count)
  return max(1, math.ceil(per_process / local_batch_size(global_batch_size, process_count)))


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  valid = len(batch["label"])
  padded = {k: np.concatenate([v, np.zeros((size - valid,) + v.shape[1:], v.dtype)])
            for k, v in batch.items()}
  padded["mask"] = np.arange(size) < valid
  return padded


def eval_batches(source: Source, global_batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass in order: {'image', 'label', 'mask' (bool, False on padding)}.

  Each process yields `num_eval_batches(...)` batches of b = global/process_count
  examples; padding (zeros, mask False) fills the last one(s).
  """
  if process_index is None:
    process_index, process_count = _process_slice()
  batch = local_batch_size(global_batch_size, process_count)
  local = grain.MapDataset.source(source)[process_index::process_count]
  batches = local.batch(batch, drop_remainder=False) if len(local) else []
  count = 0
  for item in batches:
    count += 1
    yield _pad(item, batch)
  example = source[0]
  empty = {"image": np.zeros((0,) + np.shape(example["image"]), np.uint8),
           "label": np.zeros((0,), np.int32)}
  for _ in range(num_eval_batches(len(source), global_batch_size, process_count) - count):
    yield _pad(empty, batch)
