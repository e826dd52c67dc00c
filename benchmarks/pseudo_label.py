"""Speed and memory of the sharded pseudo-labelling pass (`effcv_jax.pseudo_label.label_pool`).

  python -m benchmarks.pseudo_label --repeats=7   # writes benchmarks/results/pseudo_label.json

1. Throughput: images/s of the whole pass (reading the pool, sharded forward,
   writing shards) against the bare jitted labelling function run on the same
   batches already on the device (the upper bound). Target: pass >= 90 % of bare.
   Bare and whole runs alternate (`--repeats` rounds; medians reported), and the
   process CPU time per 1,000 images of each is reported: on a CPU backend the
   host's reading competes with the "device" for the same cores, so the extra
   CPU time of the pass is its cost there. The host-side reading rate alone
   (`eval_batches`, no device) is reported too.
2. Memory: RSS of a pass over a 10k and a 200k-example pool, each in a fresh
   subprocess (`--part=rss --pool_size=N`). The pool is `SyntheticPool`: images
   generated from their index, so the pool itself never sits in memory. Reported:
   the RSS just before the pass (after compilation), the maximum sampled every
   20 ms during it, and the RSS after each shard is written (first vs last
   quarter of the shards): none of them may grow with the pool size.

The teacher is `cnn_small` (widths 32, 64; hidden 128), randomly initialised, on
28x28x1 uint8 images, 10 classes, soft float16 labels. The mesh spans all devices
of the machine it runs on (`jax.devices()`).
"""

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import psutil
from absl import app, flags

from effcv_jax import models, pseudo_label, sharding
from effcv_jax import task as task_lib
from effcv_jax.data import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "all", ["all", "throughput", "rss"], "What to measure.")
flags.DEFINE_integer("pool_size", 20_000, "Pool size for --part=throughput / rss.")
flags.DEFINE_list("rss_pool_sizes", ["10000", "200000"], "Pool sizes of the RSS part (part=all).")
flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
flags.DEFINE_integer("shard_size", 8192, "Examples per shard.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (the median is reported).")
flags.DEFINE_string("output", "benchmarks/results/pseudo_label.json", "Results file (part=all).")

NOTES = ("On a CPU backend the 'device' and the host share the same cores: the pass's "
         "host work (reading with grain, writing) costs compute time there, so compare "
         "cpu_ms_per_1k_images as well as wall-clock rates, which other jobs on a shared "
         "machine make noisy (see load_average_*). RSS fluctuates by tens of MiB from "
         "transient XLA buffers (a conv activation of a 1024-batch is ~100 MiB) and the "
         "allocator; a bound shows as no trend in rss_after_shard_mib, not as equal maxima.")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class SyntheticPool:
  """`size` uint8 28x28x1 images generated from their index (a window of a fixed 64 KiB texture)."""

  def __init__(self, size: int, seed: int = 0):
    self.size = size
    self._texture = np.random.default_rng(seed).integers(0, 256, 65536, dtype=np.uint8)
    self._pixels = int(np.prod(IMAGE_SHAPE))

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict:
    start = (int(index) * 7919) % (len(self._texture) - self._pixels)
    image = self._texture[start:start + self._pixels].reshape(IMAGE_SHAPE)
    return {"image": image, "label": np.int32(index % NUM_CLASSES)}


def make_teacher() -> tuple[task_lib.Task, dict]:
  """A randomly initialised cnn_small Task and its variables."""
  model = models.build("cnn_small", NUM_CLASSES)
  task = task_lib.Task(model=model, tx=optax.identity(), num_classes=NUM_CLASSES,
                    input_mean=(0.5,), input_std=(0.5,))
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                         jnp.zeros((1,) + IMAGE_SHAPE), train=False))()
  return task, variables


class Timer:
  """Wall-clock and process CPU seconds (all threads) of a `with` block."""

  def __enter__(self) -> "Timer":
    self._wall, self._cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc) -> None:
    self.wall = time.perf_counter() - self._wall
    self.cpu = time.process_time() - self._cpu


def run_pass(task, variables, pool, mesh, on_shard_done=None) -> Timer:
  """Times one whole label_pool pass into a fresh directory."""
  out_dir = tempfile.mkdtemp(prefix="pseudo_label_bench_")
  try:
    with Timer() as timer:
      pseudo_label.label_pool(variables, task, pool, out_dir, mesh=mesh,
                              batch_size=FLAGS.batch_size, shard_size=FLAGS.shard_size,
                              on_shard_done=on_shard_done)
    return timer
  finally:
    shutil.rmtree(out_dir)


def bare_forward(task, variables, pool, mesh) -> Timer:
  """Times the jitted labelling function over all the pass's batches, already on device."""
  label_fn = pseudo_label.jit_label_fn(task, mesh)
  device_variables = sharding.replicate(variables, mesh)
  batches = [sharding.to_global({"image": b["image"]}, mesh)["image"]
             for b in pipeline.eval_batches(pool, FLAGS.batch_size, 0, 1)]
  jax.block_until_ready(label_fn(device_variables, batches[0]))
  with Timer() as timer:
    jax.block_until_ready([label_fn(device_variables, images) for images in batches])
  return timer


def reading_seconds(pool) -> float:
  """Seconds to read the pool into padded host batches (no device work)."""
  start = time.perf_counter()
  for _ in pipeline.eval_batches(pool, FLAGS.batch_size, 0, 1):
    pass
  return time.perf_counter() - start


def throughput() -> dict:
  task, variables = make_teacher()
  mesh = sharding.make_mesh()
  pool = SyntheticPool(FLAGS.pool_size)
  run_pass(task, variables, SyntheticPool(FLAGS.batch_size), mesh)      # compiles
  bare, whole, reading = [], [], []
  for _ in range(FLAGS.repeats):    # interleaved, so drifting machine load hits both alike
    bare.append(bare_forward(task, variables, pool, mesh))
    whole.append(run_pass(task, variables, pool, mesh))
    reading.append(reading_seconds(pool))
  rate = lambda seconds: len(pool) / float(np.median(seconds))
  cpu_ms_per_1k = lambda timers: round(
      1e6 * float(np.median([t.cpu for t in timers])) / len(pool), 1)
  bare_rate, whole_rate = rate([t.wall for t in bare]), rate([t.wall for t in whole])
  return {"pool_size": len(pool), "batch_size": FLAGS.batch_size, "shard_size": FLAGS.shard_size,
          "repeats": FLAGS.repeats,
          "bare_forward_images_per_s": round(bare_rate),
          "whole_pass_images_per_s": round(whole_rate),
          "whole_over_bare": round(whole_rate / bare_rate, 3),
          "whole_over_bare_per_repeat": [round(b.wall / w.wall, 3) for b, w in zip(bare, whole)],
          "cpu_ms_per_1k_images": {"bare": cpu_ms_per_1k(bare), "whole": cpu_ms_per_1k(whole)},
          "host_reading_only_images_per_s": round(rate(reading)),
          "wall_seconds": {"bare": [round(t.wall, 3) for t in bare],
                           "whole": [round(t.wall, 3) for t in whole],
                           "reading": [round(t, 3) for t in reading]}}


class RssSampler:
  """Samples this process's RSS every `interval` seconds in a thread; keeps the maximum."""

  def __init__(self, interval: float = 0.02):
    self.interval, self.max_bytes = interval, 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self) -> None:
    process = psutil.Process()
    while not self._stop.is_set():
      self.max_bytes = max(self.max_bytes, process.memory_info().rss)
      self._stop.wait(self.interval)

  def __enter__(self) -> "RssSampler":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()


def rss_slope(after_shard_mib: list[float]) -> float | None:
  """Least-squares slope of the per-shard RSS, in MiB per 100,000 labelled examples."""
  if len(after_shard_mib) < 3:
    return None
  examples = np.arange(1, len(after_shard_mib) + 1) * FLAGS.shard_size
  return round(float(np.polyfit(examples / 1e5, after_shard_mib, 1)[0]), 1)


def rss() -> dict:
  """RSS of one pass over a SyntheticPool of --pool_size (run in a fresh process).

  ru_maxrss (the process's lifetime peak) is dominated by JAX start-up and
  compilation, which happen before the pass; the sampled maximum during the pass
  minus the RSS just before it is what the pass itself adds.
  """
  task, variables = make_teacher()
  mesh = sharding.make_mesh()
  run_pass(task, variables, SyntheticPool(FLAGS.batch_size), mesh)      # compiles
  process = psutil.Process()
  before_mib = process.memory_info().rss / 2**20
  after_shard_mib = []      # RSS each time a shard's part is on disk
  with RssSampler() as sampler:
    seconds = run_pass(task, variables, SyntheticPool(FLAGS.pool_size), mesh,
                       lambda shard: after_shard_mib.append(process.memory_info().rss / 2**20)).wall
  during_mib = sampler.max_bytes / 2**20
  quarter = max(1, len(after_shard_mib) // 4)
  return {"pool_size": FLAGS.pool_size, "shards": len(after_shard_mib),
          "seconds": round(seconds, 1),
          "images_per_s": round(FLAGS.pool_size / seconds),
          "rss_before_pass_mib": round(before_mib, 1),
          "max_rss_during_pass_mib": round(during_mib, 1),
          "pass_adds_mib": round(during_mib - before_mib, 1),
          "rss_after_shard_mib": {
              "min": round(min(after_shard_mib), 1), "max": round(max(after_shard_mib), 1),
              "mean_first_quarter": round(float(np.mean(after_shard_mib[:quarter])), 1),
              "mean_last_quarter": round(float(np.mean(after_shard_mib[-quarter:])), 1),
              "fitted_slope_mib_per_100k_examples": rss_slope(after_shard_mib)},
          "process_peak_rss_mib": round(
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def rss_in_subprocess(pool_size: int) -> dict:
  command = [sys.executable, "-m", "benchmarks.pseudo_label", "--part=rss",
             f"--pool_size={pool_size}", f"--batch_size={FLAGS.batch_size}",
             f"--shard_size={FLAGS.shard_size}"]
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def machine() -> dict:
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}


def main(argv):
  del argv
  if FLAGS.part == "rss":
    print(json.dumps(rss()))
    return
  results = {"command": " ".join(["python -m benchmarks.pseudo_label"] + sys.argv[1:]),
             "machine": machine(), "load_average_at_start": os.getloadavg(),
             "model": "cnn_small (32, 64; hidden 128), 28x28x1, 10 classes",
             "store": "soft (float16 log-probabilities)",
             "notes": NOTES,
             "throughput": throughput()}
  print(json.dumps(results["throughput"]), flush=True)
  if FLAGS.part == "all":
    results["rss"] = [rss_in_subprocess(int(n)) for n in FLAGS.rss_pool_sizes]
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results["rss"]), flush=True)
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
