"""The train step with flax's nn.BatchNorm against the project's BatchNorm, in one process.

  python -m benchmarks.batch_norm      # writes benchmarks/results/batch_norm.json

`effcv_jax.models.layers.BatchNorm` keeps flax's variables and results but differentiates the
training-mode normalisation in closed form (`layers.batch_norm_train`). Whether that speeds
up the step is measured here: for each workload of benchmarks/train_step_workloads.py
(--models, --dtypes; --conv, batch --batch_size) both steps are built by the project's code
in this process, flax's with the models' `batch_norm` factory swapped for one returning
nn.BatchNorm, and timed in alternating rounds of --steps steps (--rounds each, after
--warmup steps): drift of the machine's speed, start-up and cache effects fall on both alike,
which separate processes' timings on a shared machine do not resolve (their spread reaches
15 %). Reported per workload: each side's median images/s, the median of the per-round speed
ratios, and both sides' loss after the same steps from the same state (equal within float
rounding: the same model). Runs with tcmalloc preloaded where it is installed, as the
experiments do.
"""

import contextlib
import dataclasses
import statistics
import time

import flax.linen as nn
from absl import app, flags

from benchmarks.machine import command_line, machine_info, print_and_write
from benchmarks.train_step_harness import Settings
from benchmarks.train_step_jax import build_step
from effcv_jax.models import cnn, resnet_cifar
from experiments.tcmalloc import reexec_with_tcmalloc

flags.DEFINE_list("models", ["resnet20", "cnn_small"], "Workloads (resnet20, cnn_small).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes (config.dtype).")
flags.DEFINE_enum("conv", "onednn", ["onednn", "fast", "lax"], "Convolutions (train_step.py).")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 5, "Steps per timed round.")
flags.DEFINE_integer("rounds", 20, "Timed rounds per side (alternating).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per side after compiling.")
flags.DEFINE_string("output", "benchmarks/results/batch_norm.json", "Results file.")
FLAGS = flags.FLAGS

# The modules whose models build their batch norms through `batch_norm` (layers.batch_norm).
_MODEL_MODULES = (cnn, resnet_cifar)


def flax_batch_norm(train: bool, name: str | None = None, epsilon: float = 1e-5,
                    momentum: float = 0.9, dtype=None) -> nn.BatchNorm:
  """layers.batch_norm's signature, returning flax's own module (the 'flax' side)."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      dtype=dtype, name=name)


@contextlib.contextmanager
def flax_batch_norms():
  """Within the block, the models build flax's nn.BatchNorm."""
  saved = [module.batch_norm for module in _MODEL_MODULES]
  for module in _MODEL_MODULES:
    module.batch_norm = flax_batch_norm
  try:
    yield
  finally:
    for module, factory in zip(_MODEL_MODULES, saved):
      module.batch_norm = factory


def _settings(model: str, dtype: str) -> Settings:
  values = {field.name: None for field in dataclasses.fields(Settings)}
  values.update(model=model, conv=FLAGS.conv, batch_size=FLAGS.batch_size, dtype=dtype)
  return Settings(**values)


def measure(model: str, dtype: str) -> dict:
  """Both sides of one workload, timed in alternating rounds."""
  import jax

  sides = {}
  for side in ("flax", "ours"):
    with flax_batch_norms() if side == "flax" else contextlib.nullcontext():
      compiled, state, batch, _ = build_step(_settings(model, dtype),
                                             lambda name: contextlib.nullcontext())
    sides[side] = {"step": compiled, "state": state, "batch": batch}

  def run(side: str, steps: int) -> float:
    entry = sides[side]
    start = time.perf_counter()
    for _ in range(steps):
      entry["state"], entry["metrics"] = entry["step"](entry["state"], entry["batch"])
    jax.block_until_ready(entry["state"])
    return (time.perf_counter() - start) / steps

  for side in sides:
    run(side, FLAGS.warmup)
  seconds = {side: [] for side in sides}
  for _ in range(FLAGS.rounds):
    for side in sides:
      seconds[side].append(run(side, FLAGS.steps))
  median = {side: statistics.median(s) for side, s in seconds.items()}
  return {
      "images_per_s": {side: round(FLAGS.batch_size / m, 1) for side, m in median.items()},
      "images_per_s_by_round": {side: [round(FLAGS.batch_size / t, 1) for t in s]
                                for side, s in seconds.items()},
      "ours_over_flax": round(median["flax"] / median["ours"], 3),
      "ours_over_flax_median_of_rounds": round(statistics.median(
          f / o for f, o in zip(seconds["flax"], seconds["ours"])), 3),
      "loss": {side: round(float(entry["metrics"]["loss"]), 5)
               for side, entry in sides.items()},
  }


def main(argv):
  del argv
  reexec_with_tcmalloc()     # as the experiments and train_step.py's subprocesses run
  result = {"command": command_line("benchmarks.batch_norm"), "machine": machine_info(),
            "settings": {"conv": FLAGS.conv, "batch_size": FLAGS.batch_size,
                         "steps": FLAGS.steps, "rounds": FLAGS.rounds,
                         "warmup": FLAGS.warmup},
            "workloads": {}}
  for model in FLAGS.models:
    for dtype in FLAGS.dtypes:
      result["workloads"][f"{model}/{dtype}"] = measure(model, dtype)
      print(f"{model}/{dtype}: {result['workloads'][f'{model}/{dtype}']['images_per_s']}",
            flush=True)
  print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
