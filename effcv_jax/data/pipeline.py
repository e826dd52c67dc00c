"""grain pipelines: host-side batches of uint8 images and int labels.

Training: an endless, shuffled (reshuffled every epoch), fixed-shape stream; its
iterator state is checkpointed with the model so a resumed run sees exactly the
batches it would have seen. Evaluation: one pass, the last batch padded and
flagged by `mask`, so every example counts exactly once on any number of
processes. Under multi-host each process reads its own slice and yields its
share of the global batch (`global_batch / process_count` examples); training
batches are the same global batches on any number of processes.
Augmentation is not done here: it runs on the accelerator inside the train step; a
training `record_map` (host decoding and cropping) may run in grain worker processes
(`num_workers`), with the same batches and the same checkpointed state as in-process.
"""

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import grain
from absl import flags
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
                   | None = None, num_workers: int = 0) -> grain.DatasetIterator:
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
  num_workers > 0 reads and maps the records in that many grain worker processes (spawned:
  the sources and record_map must pickle), each making every num_workers-th batch: the same
  batches, in the same order, as num_workers = 0 (in this process).
  The returned iterator has get_state()/set_state() for checkpointing; its state,
  {'next_index': batches read}, is the same for any num_workers, so a run may resume with
  another worker count.
  """
  sources = [source] if not isinstance(source, (list, tuple)) else list(source)
  for i, part in enumerate(sources):
    if len(part) == 0:
      raise ValueError(f"training source {i} is empty")
  if len(sources) == 1 and len(sources[0]) < global_batch_size:
    raise ValueError(f"training set has {len(sources[0])} examples, fewer than the "
                     f"batch size {global_batch_size}")
  if not isinstance(num_workers, int) or num_workers < 0:
    raise ValueError(f"num_workers = {num_workers!r}: the data worker processes, an integer "
                     ">= 0 (0 maps the records in this process)")
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
  if num_workers:
    return WorkerBatches(dataset, num_workers, options)
  return iter(dataset.to_iter_dataset(options))


class WorkerBatches(grain.DatasetIterator):
  """The batches of a (sliced, endless) MapDataset of batches made in `num_workers` grain
  worker processes (`IterDataset.mp_prefetch`), batch k by worker k % num_workers.

  Its state is {'next_index': batches read}, as the in-process iterator's: set_state stops
  the workers and the next batch starts new ones at that index. close() stops them for good
  (they also stop when the iterator is garbage-collected)."""

  def __init__(self, batches: grain.MapDataset, num_workers: int, options: grain.ReadOptions):
    super().__init__()
    self._batches = batches
    self._num_workers = num_workers
    self._options = options
    self._next_index = 0
    self._iterator = None

  def _start(self) -> None:
    if not flags.FLAGS.is_parsed():
      # grain reads its (absl) flags when it starts workers; outside an absl app (a test, a
      # notebook) they hold their defaults.
      flags.FLAGS.mark_as_parsed()
    dataset = self._batches[self._next_index:].to_iter_dataset(self._options)
    self._iterator = iter(dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=self._num_workers, per_worker_buffer_size=2)))

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    self._next_index += 1
    # Plain arrays: a worker's batch arrives in shared memory, freed once this copy is made.
    return {key: np.array(value) for key, value in batch.items()}

  def get_state(self) -> dict[str, Any]:
    return {"next_index": self._next_index}

  def set_state(self, state: dict[str, Any]) -> None:
    self._stop_workers()
    self._next_index = int(state["next_index"])

  def _stop_workers(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def close(self) -> None:
    """Stops the worker processes; the iterator yields nothing more."""
    self._stop_workers()
    super().close()


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
