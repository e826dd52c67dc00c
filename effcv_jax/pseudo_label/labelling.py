"""The sharded, resumable labelling pass: the teacher labels every pool example once
(see effcv_jax/pseudo_label/__init__.py for the pass, the layout and multi-host).
"""

import dataclasses
import functools
import itertools
import json
import os
import time
from concurrent import futures
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from effcv_jax import sharding, watchdog
from effcv_jax import task as task_lib
from effcv_jax.augment import tta
from effcv_jax.data import pipeline
from effcv_jax.data.prefetch import prefetch
from effcv_jax.data.sources import Source
from effcv_jax.files import write_json_atomic, write_npz_atomic
from effcv_jax.pseudo_label.store import (FLOAT16_MIN, FORMAT_VERSION, STORE_KINDS,
                                          check_out_dir, describe_shards, manifest_path,
                                          pool_fingerprint, process_indices, shard_path,
                                          shard_ranges, teacher_fingerprint)


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


def make_label_fn(task: task_lib.Task, *, store: str = "soft", top_k: int = 5,
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
      logits = task_lib.predict_logits(task, variables, float_images)
      return logits.astype(jnp.float32) / temperature

    float_images = images.astype(jnp.float32)
    if views is None:
      log_probs = jax.nn.log_softmax(tempered_logits(float_images), axis=-1)
    else:
      log_probs = jnp.log(tta.predict_probs(tempered_logits, float_images, views))
    log_probs = jnp.maximum(log_probs, FLOAT16_MIN)
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
def jit_label_fn(task: task_lib.Task, mesh: jax.sharding.Mesh, *, store: str = "soft",
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


def label_pool(variables: Mapping[str, Any], task: task_lib.Task, pool_source: Source,
               out_dir: str, *, mesh: jax.sharding.Mesh, batch_size: int, shard_size: int,
               store: str = "soft", top_k: int = 5, temperature: float = 1.0,
               views: str | None = None, process_index: int | None = None,
               process_count: int | None = None,
               on_shard_done: Callable[[int], None] | None = None,
               watchdog_limits: Mapping[str, float] | None = None) -> dict[str, Any]:
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
    watchdog_limits: keyword arguments of watchdog.Watchdog (stall_factor,
      min_stall_seconds, startup_seconds); the pass ends with exit status 75 when
      its batches stop completing (defaults: the Watchdog's).
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
  done = check_out_dir(out_dir, spec, process_index, process_count)
  done = _done_on_every_process(done, process_count)
  todo = [shard for shard in range(len(ranges)) if not done[shard]]

  local_batch = _local_batch_size(batch_size, mesh, process_count)
  device_variables = sharding.replicate(variables, mesh)
  start_time = time.perf_counter()
  batches = prefetch(_shard_batches(pool_source, ranges, todo, local_batch, process_index,
                                    process_count, mesh), depth=4, name="pseudo_label_prefetch")
  writer = futures.ThreadPoolExecutor(1, thread_name_prefix="pseudo_label_writer")
  pending: tuple[int, futures.Future] | None = None

  def finish_pending() -> None:
    if pending is not None:
      pending[1].result()
      if on_shard_done is not None:
        on_shard_done(pending[0])

  with watchdog.Watchdog("pseudo-label", **dict(watchdog_limits or {}), dump_dir=out_dir,
                         describe_state=lambda: describe_shards(out_dir)):
    try:
      for shard, items in itertools.groupby(batches, key=lambda item: item[0]):
        outputs, masks = [], []
        for _, images, mask in items:
          out = label_fn(device_variables, images)
          for array in out.values():
            array.copy_to_host_async()
          if outputs:
            watchdog.beat_when_ready(outputs[-1])   # the previous batch is labelled
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
