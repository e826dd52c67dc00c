"""Noisy Student pseudo-labelling: sharded teacher inference over an unlabelled pool,
selection of the examples to train on, and the pseudo-labelled dataset.

Three steps, each usable alone:

  manifest = label_pool(variables, task, pool, out_dir, mesh=mesh, batch_size=1024,
                        shard_size=50_000)                    # teacher pass, resumable
  indices, probs, confidence = load_pseudo_labels(out_dir)    # merged, sorted by index
  chosen, labels = select(indices, probs, confidence, threshold=0.3, per_class=K)
  student_source = PseudoLabelledSource(pool, chosen, labels) # for data.train_iterator

The pass. The pool is cut into shards, contiguous index ranges of `shard_size`
examples. Each shard is read in padded batches (`data.eval_batches` over a
`Subset`, the last batch masked) and labelled by one jitted function with the
batch sharded over the ('data',) mesh and the teacher replicated: the jit
successor of a pmap, same data-parallel semantics. The teacher sees the clean
image (uint8 -> float, normalised by `train.predict_logits` with the teacher's
own mean/std), optionally averaged over test-time-augmentation views
(`augment.tta.predict_probs`). Memory does not grow with the pool: batches are
read one shard at a time (a background thread prefetches the next batches while
the device computes) and each shard's labels are written, from a background
thread, as soon as the shard is done.

Under multi-host, process p of n labels `[p::n]` of every shard's index range
and writes its own part file; nothing is gathered across hosts (only which
shards are finished, a few bytes, so all processes skip the same shards); the
pass ends with a barrier, so every part is on disk when it returns. The reader
merges the parts. Simulate it on one host by passing `process_index` and
`process_count` explicitly.

On-disk layout of `out_dir` (written by process p of n):
  shard_{s:05d}.p{p}of{n}.npz   one part of shard s, arrays:
      indices     int64 (m,)      pool indices, increasing
      confidence  float32 (m,)    max probability at the pass temperature
      log_probs   float16 (m, K)  log-probabilities at the pass temperature   [store='soft']
      topk_classes int32 (m, k), topk_log_probs float16 (m, k)  the k largest [store='topk']
      spec        str             JSON of the pass spec (below)
  manifest.p{p}of{n}.json       written last: spec, and the list of p's parts
Every file is written to `<name>.tmp` in the same directory and renamed with
`os.replace`, so a file that exists is complete. A rerun with the same spec skips
the shards whose parts exist; a rerun whose spec differs (another teacher, pool,
temperature, storage or process count) refuses to mix its shards with the old.

Temperature. The pass stores log-probabilities of softmax(logits / T) for the
pass temperature T (float16, clipped at -65504 so it stays finite), not
probabilities: since log p_T = logits / T - c, a label at any other temperature
T' follows exactly as softmax(log p_T * T / T'), even for classes whose
probability underflows float16. `load_pseudo_labels(out_dir, temperature=T')`
does this; the softmax also renormalises the float16 rounding to sum 1. With TTA
the stored distribution is the mean over views of softmax(logits_v / T), and
re-tempering sharpens or softens that mean. With store='topk' the classes
outside the top k get probability 0 and the top k are renormalised.
"""

import dataclasses
import functools
import glob
import hashlib
import itertools
import json
import os
import queue
import re
import threading
import time
from concurrent import futures
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from effcv_jax import sharding, train
from effcv_jax.files import write_json_atomic, write_npz_atomic
from effcv_jax.augment import tta
from effcv_jax.data import pipeline
from effcv_jax.data.sources import Source

FORMAT_VERSION = 1
STORE_KINDS = ("soft", "topk")
_FLOAT16_MIN = float(np.finfo(np.float16).min)    # -65504: log(0) is stored as this
_FINGERPRINT_LEAVES = 4


# --------------------------------------------------------------------------
# File names and atomic writes.


def part_suffix(process_index: int, process_count: int) -> str:
  """'p{index}of{count}': the part of a shard (or manifest) one process writes."""
  return f"p{process_index}of{process_count}"


def shard_path(out_dir: str, shard: int, process_index: int, process_count: int) -> str:
  return os.path.join(out_dir, f"shard_{shard:05d}.{part_suffix(process_index, process_count)}.npz")


def manifest_path(out_dir: str, process_index: int, process_count: int) -> str:
  return os.path.join(out_dir, f"manifest.{part_suffix(process_index, process_count)}.json")


# --------------------------------------------------------------------------
# Fingerprints: guards against resuming with another teacher or pool.


def teacher_fingerprint(variables: Any) -> str:
  """16 hex digits from the tree structure, shapes, dtypes and the values of a few leaves.

  The values of `_FINGERPRINT_LEAVES` leaves evenly spaced in flattening order
  (first and last included) are hashed: any training step changes them all. A
  guard against accidents, not a cryptographic identity.
  """
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  digest = hashlib.sha256()
  for path, leaf in leaves:
    digest.update(f"{jax.tree_util.keystr(path)}:{np.shape(leaf)}:{leaf.dtype};".encode())
  picks = np.unique(np.linspace(0, len(leaves) - 1, min(_FINGERPRINT_LEAVES, len(leaves))).round())
  for i in picks.astype(int):
    digest.update(np.ascontiguousarray(jax.device_get(leaves[i][1])).tobytes())
  return digest.hexdigest()[:16]


def pool_fingerprint(pool_source: Source) -> str:
  """16 hex digits from the pool's length and its first, middle and last images."""
  digest = hashlib.sha256(str(len(pool_source)).encode())
  for i in sorted({0, len(pool_source) // 2, len(pool_source) - 1}):
    digest.update(np.ascontiguousarray(pool_source[i]["image"]).tobytes())
  return digest.hexdigest()[:16]


# --------------------------------------------------------------------------
# Shards and process slices.


def shard_ranges(pool_size: int, shard_size: int) -> list[tuple[int, int]]:
  """[(start, stop), ...]: contiguous index ranges of `shard_size` (the last one shorter)."""
  return [(start, min(start + shard_size, pool_size)) for start in range(0, pool_size, shard_size)]


def process_indices(start: int, stop: int, process_index: int, process_count: int) -> np.ndarray:
  """int64 (m,): the pool indices process `process_index` labels in shard [start, stop)."""
  return np.arange(start, stop, dtype=np.int64)[process_index::process_count]


@dataclasses.dataclass(frozen=True)
class _ImagesOnly:
  """An unlabelled `source` with a dummy label (eval_batches pads a 'label' field)."""
  source: Source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.source[index]["image"], "label": np.int32(0)}


# --------------------------------------------------------------------------
# The jitted labelling function.


def make_label_fn(task: train.Task, *, store: str = "soft", top_k: int = 5,
                  temperature: float = 1.0, views: str | None = None
                  ) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
  """label(variables, uint8 images (B, H, W, C)) -> per-example arrays (a pure function).

  Returns {'confidence': float32 (B,), 'log_probs': float16 (B, K)} for store='soft',
  {'confidence', 'topk_classes': int32 (B, k), 'topk_log_probs': float16 (B, k)}
  for store='topk'. Log-probabilities are those of softmax(logits / temperature),
  averaged over the TTA `views` (an `augment.tta` views string) when given.
  """
  if store not in STORE_KINDS:
    raise ValueError(f"store must be one of {STORE_KINDS}, got {store!r}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if store == "topk" and not 1 <= top_k <= task.num_classes:
    raise ValueError(f"top_k must be in [1, {task.num_classes}], got {top_k}")

  def label(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
    def tempered_logits(float_images: jax.Array) -> jax.Array:
      logits = train.predict_logits(task, variables, float_images)
      return logits.astype(jnp.float32) / temperature

    float_images = images.astype(jnp.float32)
    if views is None:
      log_probs = jax.nn.log_softmax(tempered_logits(float_images), axis=-1)
    else:
      log_probs = jnp.log(tta.predict_probs(tempered_logits, float_images, views))
    log_probs = jnp.maximum(log_probs, _FLOAT16_MIN)
    out = {"confidence": jnp.exp(jnp.max(log_probs, axis=-1))}
    if store == "soft":
      out["log_probs"] = log_probs.astype(jnp.float16)
    else:
      top_values, top_classes = jax.lax.top_k(log_probs, top_k)
      out["topk_classes"] = top_classes.astype(jnp.int32)
      out["topk_log_probs"] = top_values.astype(jnp.float16)
    return out

  return label


@functools.lru_cache(maxsize=8)
def jit_label_fn(task: train.Task, mesh: jax.sharding.Mesh, *, store: str = "soft",
                 top_k: int = 5, temperature: float = 1.0, views: str | None = None):
  """`make_label_fn` jitted: teacher replicated, batch and outputs sharded on 'data'.

  Cached on its (hashable) arguments, so passes with the same teacher compile once.
  """
  label_fn = make_label_fn(task, store=store, top_k=top_k, temperature=temperature, views=views)
  return jax.jit(label_fn, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.batch_sharding(mesh))


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order (all rows on one host)."""
  if array.is_fully_addressable:
    return np.asarray(array)
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def _local_batch_size(batch_size: int, mesh: jax.sharding.Mesh, process_count: int) -> int:
  """Rows per process per step: ceil(batch_size / process_count), rounded up to a
  multiple of the mesh devices this host drives (so its rows split evenly)."""
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  per_process = -(-batch_size // process_count)
  return -(-per_process // local_devices) * local_devices


# --------------------------------------------------------------------------
# Streaming helpers.


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


_END = object()


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
  """Iterates `items` in a background thread, at most `depth` ahead of the consumer.

  Exceptions are re-raised in the consumer; closing the generator stops the thread.
  """
  buffer: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item: Any) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put(item):
          return
      put(_END)
    except BaseException as error:  # pylint: disable=broad-except
      put(_Failure(error))

  thread = threading.Thread(target=produce, name="pseudo_label_prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is _END:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join()


def _shard_batches(pool: Source, ranges: list[tuple[int, int]], shards: list[int],
                   local_batch: int, process_index: int, process_count: int,
                   mesh: jax.sharding.Mesh) -> Iterator[tuple[int, jax.Array, np.ndarray]]:
  """(shard, images sharded on 'data' (global B, H, W, C), local mask bool (b,)) per batch."""
  readable = pool if "label" in pool[0] else _ImagesOnly(pool)
  for shard in shards:
    start, stop = ranges[shard]
    subset = pipeline.Subset(readable, np.arange(start, stop))
    for batch in pipeline.eval_batches(subset, local_batch * process_count,
                                       process_index, process_count):
      images = sharding.to_global({"image": batch["image"]}, mesh)["image"]
      yield shard, images, batch["mask"]


def _done_on_every_process(done_here: np.ndarray, process_count: int) -> np.ndarray:
  """bool (S,): shards finished by every process (a tiny all-gather under real multi-host)."""
  if process_count == 1 or jax.process_count() == 1:
    return done_here
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.all(multihost_utils.process_allgather(done_here), axis=0)


def _wait_for_every_process(name: str, process_count: int) -> None:
  """A barrier under real multi-host: returns once every process got here, so all
  parts and manifests are on disk before any process reads them."""
  if process_count > 1 and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _read_spec(npz_path: str) -> dict[str, Any]:
  with np.load(npz_path) as npz:
    return json.loads(str(npz["spec"]))


def _check_out_dir(out_dir: str, spec: dict[str, Any], process_index: int,
                   process_count: int) -> np.ndarray:
  """bool (S,): shards whose part this process has already written with the same spec.

  Raises ValueError if out_dir holds parts or manifests of a different pass.
  """
  for path in glob.glob(os.path.join(out_dir, "manifest.*.json")):
    with open(path) as f:
      other = json.load(f)["spec"]
    if other != spec:
      changed = sorted(k for k in spec if other.get(k) != spec[k])
      raise ValueError(f"{out_dir} holds pseudo-labels of another pass ({path} differs in "
                       f"{changed}); use another out_dir or delete it")
  suffix = part_suffix(process_index, process_count)
  foreign = [p for p in glob.glob(os.path.join(out_dir, "shard_*.npz"))
             if not re.search(rf"\.p\d+of{process_count}\.npz$", p)]
  if foreign:
    raise ValueError(f"{out_dir} holds parts written by another process count "
                     f"(e.g. {os.path.basename(foreign[0])}); use another out_dir")
  done = np.zeros(spec["num_shards"], bool)
  for shard in range(spec["num_shards"]):
    path = shard_path(out_dir, shard, process_index, process_count)
    if os.path.exists(path):
      if _read_spec(path) != spec:
        raise ValueError(f"{path} was written by another pass (teacher, pool or settings "
                         f"differ); use another out_dir or delete it")
      done[shard] = True
  for tmp in glob.glob(os.path.join(out_dir, f"*.{suffix}.*.tmp")):
    os.remove(tmp)    # left by an interrupted write
  return done


def _write_part(path: str, indices: np.ndarray, outputs: list[dict[str, jax.Array]],
                masks: list[np.ndarray], spec_json: str) -> None:
  """Fetches one shard's per-batch device outputs, drops the padding, writes the part."""
  mask = np.concatenate(masks)
  arrays = {key: np.concatenate([_local_rows(out[key]) for out in outputs])[mask]
            for key in outputs[0]}
  if len(arrays["confidence"]) != len(indices):
    raise RuntimeError(f"{path}: labelled {len(arrays['confidence'])} examples, "
                       f"expected {len(indices)}")
  write_npz_atomic(path, {"indices": indices, **arrays, "spec": np.array(spec_json)})


# --------------------------------------------------------------------------
# The pass.


def label_pool(variables: Mapping[str, Any], task: train.Task, pool_source: Source,
               out_dir: str, *, mesh: jax.sharding.Mesh, batch_size: int, shard_size: int,
               store: str = "soft", top_k: int = 5, temperature: float = 1.0,
               views: str | None = None, process_index: int | None = None,
               process_count: int | None = None,
               on_shard_done: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Labels every example of `pool_source` with the teacher; resumable. Returns the manifest.

  Args:
    variables: the teacher's {'params', 'batch_stats'} (host or device arrays).
    task: its Task (model, num_classes, input_mean/std); the optimiser is unused.
    pool_source: random access to {'image': uint8 (H, W, C), ...} (labels unused).
    out_dir: where shard parts and the manifest go (see module docstring).
    mesh: a ('data',) mesh; the batch is split over all its devices.
    batch_size: examples per step (over all processes); rounded up so that each
      process's share divides by its devices.
    shard_size: examples per shard, the unit of writing and resuming; a multiple
      of batch_size avoids a padded batch per shard.
    store: 'soft' (all K log-probabilities) or 'topk' (the `top_k` largest).
    temperature: the teacher's softmax temperature T of the stored distribution.
    views: optional test-time-augmentation views (`augment.tta` string or preset).
    process_index, process_count: this process's slice (default: jax's).
    on_shard_done: called with the shard number once its part is on disk.
  Returns:
    The manifest this process wrote: {'spec', 'process_index', 'complete', 'shards':
    [{'shard', 'start', 'stop', 'file', 'count'}]}.
  """
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  if not len(pool_source):
    raise ValueError("the pool is empty")
  label_fn = jit_label_fn(task, mesh, store=store, top_k=top_k, temperature=temperature,
                          views=views)
  ranges = shard_ranges(len(pool_source), shard_size)
  spec = {"format": FORMAT_VERSION, "pool_size": len(pool_source),
          "pool_fingerprint": pool_fingerprint(pool_source),
          "teacher_fingerprint": teacher_fingerprint(variables),
          "num_classes": task.num_classes, "shard_size": shard_size, "num_shards": len(ranges),
          "store": store, "top_k": top_k if store == "topk" else None,
          "temperature": float(temperature), "views": views, "process_count": process_count}
  spec_json = json.dumps(spec, sort_keys=True)
  os.makedirs(out_dir, exist_ok=True)
  done = _check_out_dir(out_dir, spec, process_index, process_count)
  done = _done_on_every_process(done, process_count)
  todo = [shard for shard in range(len(ranges)) if not done[shard]]

  local_batch = _local_batch_size(batch_size, mesh, process_count)
  device_variables = sharding.replicate(variables, mesh)
  start_time = time.perf_counter()
  batches = _prefetch(_shard_batches(pool_source, ranges, todo, local_batch, process_index,
                                     process_count, mesh), depth=4)
  writer = futures.ThreadPoolExecutor(1, thread_name_prefix="pseudo_label_writer")
  pending: tuple[int, futures.Future] | None = None

  def finish_pending() -> None:
    if pending is not None:
      pending[1].result()
      if on_shard_done is not None:
        on_shard_done(pending[0])

  try:
    for shard, items in itertools.groupby(batches, key=lambda item: item[0]):
      outputs, masks = [], []
      for _, images, mask in items:
        out = label_fn(device_variables, images)
        for array in out.values():
          array.copy_to_host_async()
        outputs.append(out)
        masks.append(mask)
      finish_pending()      # at most one shard waits to be written: memory stays bounded
      indices = process_indices(*ranges[shard], process_index, process_count)
      path = shard_path(out_dir, shard, process_index, process_count)
      pending = (shard, writer.submit(_write_part, path, indices, outputs, masks, spec_json))
    finish_pending()
  finally:
    batches.close()
    writer.shutdown(wait=True)
  seconds = time.perf_counter() - start_time
  logging.info("pseudo_label: %d shards labelled, %d skipped, %.1f s",
               len(todo), len(ranges) - len(todo), seconds)

  manifest = {"spec": spec, "process_index": process_index, "complete": True, "shards": [
      {"shard": shard, "start": start, "stop": stop,
       "file": os.path.basename(shard_path(out_dir, shard, process_index, process_count)),
       "count": len(process_indices(start, stop, process_index, process_count))}
      for shard, (start, stop) in enumerate(ranges)]}
  write_json_atomic(manifest_path(out_dir, process_index, process_count), manifest)
  _wait_for_every_process(f"pseudo_label {out_dir}", process_count)
  return manifest


# --------------------------------------------------------------------------
# Reading.


def _read_manifests(out_dir: str) -> list[dict[str, Any]]:
  """The manifests of every process of one complete pass; raises if any is missing."""
  paths = sorted(glob.glob(os.path.join(out_dir, "manifest.*.json")))
  if not paths:
    raise FileNotFoundError(f"no manifest in {out_dir}: the labelling pass has not finished "
                            "(rerun label_pool with the same arguments to resume)")
  manifests = []
  for path in paths:
    with open(path) as f:
      manifests.append(json.load(f))
  spec = manifests[0]["spec"]
  if any(m["spec"] != spec for m in manifests):
    raise ValueError(f"{out_dir} mixes manifests of different passes")
  found = sorted(m["process_index"] for m in manifests)
  if found != list(range(spec["process_count"])):
    raise FileNotFoundError(f"{out_dir}: manifests of processes {found} of "
                            f"{spec['process_count']}; the pass has not finished on every process")
  return manifests


def _dense_log_probs(part: Mapping[str, np.ndarray], num_classes: int) -> np.ndarray:
  """float32 (m, K) log-probabilities of a part; -inf outside the stored top k."""
  if "log_probs" in part:
    return part["log_probs"].astype(np.float32)
  dense = np.full((len(part["indices"]), num_classes), -np.inf, np.float32)
  np.put_along_axis(dense, part["topk_classes"], part["topk_log_probs"].astype(np.float32), axis=1)
  return dense


def softmax(logits: np.ndarray) -> np.ndarray:
  """float32 softmax over the last axis (-inf entries get 0)."""
  shifted = logits - np.max(logits, axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return (exp / np.sum(exp, axis=-1, keepdims=True)).astype(np.float32)


def retemper(log_probs: np.ndarray, from_temperature: float, to_temperature: float) -> np.ndarray:
  """Probabilities (N, K) at `to_temperature` from log-probabilities (N, K) at `from_temperature`.

  softmax(log p_T * T / T') == softmax(logits / T'); also renormalises rounding.
  """
  return softmax(log_probs * np.float32(from_temperature / to_temperature))


def load_pseudo_labels(out_dir: str, temperature: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Merges all parts of a finished pass.

  Args:
    temperature: the temperature of the returned labels; None: the pass's.
  Returns:
    indices int64 (N,) (= arange(pool_size)), probs float32 (N, K) summing to 1,
    confidence float32 (N,): the teacher's max probability; at the pass
    temperature the exact stored value, at another the max of `probs`.
  """
  if temperature is not None and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  manifests = _read_manifests(out_dir)
  spec = manifests[0]["spec"]
  parts = []
  for manifest in manifests:
    for entry in manifest["shards"]:
      with np.load(os.path.join(out_dir, entry["file"])) as npz:
        parts.append({k: npz[k] for k in npz.files if k != "spec"})
  indices = np.concatenate([p["indices"] for p in parts])
  order = np.argsort(indices, kind="stable")
  indices = indices[order]
  if not np.array_equal(indices, np.arange(spec["pool_size"])):
    raise ValueError(f"{out_dir}: the parts do not cover the pool of {spec['pool_size']} "
                     f"examples exactly once ({len(indices)} labels)")
  log_probs = np.concatenate([_dense_log_probs(p, spec["num_classes"]) for p in parts])[order]
  pass_temperature = spec["temperature"]
  probs = retemper(log_probs, pass_temperature, temperature or pass_temperature)
  if temperature is None or temperature == pass_temperature:
    confidence = np.concatenate([p["confidence"] for p in parts])[order]
  else:
    confidence = probs.max(axis=-1)
  return indices, probs, confidence.astype(np.float32)


# --------------------------------------------------------------------------
# Selection.


def rank_by_confidence(confidence: np.ndarray, seed: int = 0) -> np.ndarray:
  """Positions (N,) sorted by decreasing confidence; ties in random order (seeded)."""
  tie_breaker = np.random.default_rng(seed).random(len(confidence))
  return np.lexsort((tie_breaker, -confidence))


def balance_per_class(classes: np.ndarray, confidence: np.ndarray, per_class: int,
                      num_classes: int, seed: int = 0) -> np.ndarray:
  """Positions (C * per_class,) giving exactly `per_class` examples of each class.

  A class with at least `per_class` examples keeps its most confident ones; a
  smaller class repeats its examples in order of confidence until it has
  `per_class` (Noisy Student's duplication). A class without examples stays
  empty (logged), so the result is shorter then.
  """
  ranked = rank_by_confidence(confidence, seed)
  chosen = []
  for label in range(num_classes):
    members = ranked[classes[ranked] == label]
    if not len(members):
      logging.warning("pseudo_label: no example of class %d to balance", label)
      continue
    chosen.append(members[np.arange(per_class) % len(members)])
  return np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)


def select(indices: np.ndarray, probs: np.ndarray, confidence: np.ndarray | None = None, *,
           threshold: float = 0.0, per_class: int | None = None, hard: bool = False,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Picks the pseudo-labelled examples to train on.

  Args:
    indices: int (N,) pool indices; probs: float (N, K) teacher probabilities;
    confidence: float (N,) (default probs.max(-1)).
    threshold: keep examples with confidence >= threshold (Noisy Student: 0.3).
    per_class: then balance to exactly this many per predicted class (see
      `balance_per_class`); None keeps all that pass the threshold.
    hard: labels are one-hot argmax instead of the soft probabilities.
    seed: breaks ties in confidence when balancing.
  Returns:
    selected pool indices int64 (M,) (with repeats when balancing duplicates),
    labels float32 (M, K).
  """
  probs = np.asarray(probs, np.float32)
  confidence = probs.max(axis=-1) if confidence is None else np.asarray(confidence)
  classes = probs.argmax(axis=-1)
  keep = np.flatnonzero(confidence >= threshold)
  if per_class is not None:
    keep = keep[balance_per_class(classes[keep], confidence[keep], per_class,
                                  probs.shape[-1], seed)]
  labels = np.eye(probs.shape[-1], dtype=np.float32)[classes[keep]] if hard else probs[keep]
  return np.asarray(indices, np.int64)[keep], labels


@dataclasses.dataclass(frozen=True)
class PseudoLabelledSource:
  """The selected pool examples with their pseudo-labels, as a random-access source.

  source[i] -> {'image': uint8 (H, W, C), 'label': int32 argmax, 'soft_label':
  float32 (K,)} for pool example indices[i] with label row labels[i].
  """
  pool_source: Source
  indices: np.ndarray     # int (M,) pool indices, repeats allowed
  labels: np.ndarray      # float32 (M, K), rows sum to 1

  def __post_init__(self):
    if len(self.indices) != len(self.labels) or np.ndim(self.labels) != 2:
      raise ValueError(f"indices {np.shape(self.indices)} and labels {np.shape(self.labels)} "
                       "must be (M,) and (M, K)")
    pool_size = len(self.pool_source)
    if len(self.indices) and not 0 <= np.min(self.indices) <= np.max(self.indices) < pool_size:
      raise ValueError(f"indices outside the pool of {len(self.pool_source)} examples")

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    soft_label = np.asarray(self.labels[index], np.float32)
    return {"image": self.pool_source[int(self.indices[index])]["image"],
            "label": np.int32(np.argmax(soft_label)), "soft_label": soft_label}
