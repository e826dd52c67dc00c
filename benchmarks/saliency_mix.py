"""Step time of PuzzleMix against CutMix and the plain train step.

  python -m benchmarks.saliency_mix   # writes benchmarks/results/saliency_mix.json
  python -m benchmarks.saliency_mix --model=resnet20 \
      --out=benchmarks/results/saliency_mix_resnet20.json

Workload: --model (the small CNN `cnn_small`, conv 32-32-64-64, dense 256, by default; or
`resnet20`, the network of the CIFAR-10 augment_methods report) on CIFAR-size random uint8
images (32x32x3, 10 classes), batch --batch_size=128, the project's base config (SGD), built
and stepped by the train loop's own code (`task.init_task_and_state`, `train.jit_train_step`)
with `config.augment` set per variant: plain (''), cutmix ('cutmix(alpha=1.0)') and puzzlemix
('puzzlemix(alpha=1.0, grid=4)'; its step adds a forward and backward pass for the input
gradient, the block labelling and the transport); --variants adds 'fmix' and 'saliencymix'.
The state and the fixed batch stay on the device.

Timing: per variant the compile time (lower + compile of the step), then --rounds rounds, each
timing --steps steps of every variant in turn (variants alternate, so a change in machine load
hits all of them) after --warmup steps; reported: the median seconds per step over rounds, and
puzzlemix's ratio to cutmix and to plain (median of the per-round ratios), and the target
PuzzleMix <= TARGET_OVER_PLAIN x the plain step (the paper's reference implementation roughly
doubles its step). Numbers depend on what else runs on the machine: the load average at start
and end is recorded.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
from absl import app, flags

from benchmarks import machine

FLAGS = flags.FLAGS
# --model choices: the name a results file records for each.
MODELS = {"cnn_small": "cnn_small (32, 64; hidden 256)", "resnet20": "resnet20"}
TARGET_OVER_PLAIN = 2.0
flags.DEFINE_enum("model", "cnn_small", list(MODELS), "Network trained by every variant.")
flags.DEFINE_integer("batch_size", 128, "Global training batch.")
flags.DEFINE_integer("steps", 5, "Steps per timed round and variant.")
flags.DEFINE_integer("rounds", 3, "Timed rounds.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per variant after compiling.")
flags.DEFINE_list("variants", ["plain", "cutmix", "puzzlemix"],
                  "Variants to time (plain, cutmix, puzzlemix, fmix, saliencymix).")
flags.DEFINE_string("out", "benchmarks/results/saliency_mix.json", "Results file ('' prints).")

SPECS = {"plain": "", "cutmix": "cutmix(alpha=1.0)", "puzzlemix": "puzzlemix(alpha=1.0, grid=4)",
         "fmix": "fmix(alpha=1.0)", "saliencymix": "saliencymix(alpha=1.0)"}
IMAGE_SHAPE = (32, 32, 3)


def make_config(model: str, spec: str, batch_size: int):
  """The base config with `model` on CIFAR-size images and `spec` as its augmentation."""
  from benchmarks.train_step_workloads import make_config as workload_config

  config, _ = workload_config(model, batch_size)
  config.input_mean = (0.4914, 0.4822, 0.4465)
  config.input_std = (0.2470, 0.2435, 0.2616)
  config.augment = spec
  return config


def prepare(model: str, spec: str, batch_size: int, mesh):
  """(step, state, batch, compile seconds) of one variant, the step compiled."""
  from benchmarks.train_step_workloads import random_batch
  from effcv_jax import sharding, train
  from effcv_jax import task as task_lib

  config = make_config(model, spec, batch_size)
  task, state = task_lib.init_task_and_state(config, IMAGE_SHAPE, mesh)
  batch = sharding.to_global(random_batch(IMAGE_SHAPE, batch_size), mesh)
  start = time.perf_counter()
  step = train.jit_train_step(task, mesh).lower(state, batch).compile()
  return step, state, batch, time.perf_counter() - start


def main(argv):
  del argv
  from effcv_jax import sharding

  unknown = sorted(set(FLAGS.variants) - set(SPECS))
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {sorted(SPECS)}")
  load_start = os.getloadavg()
  mesh = sharding.make_mesh()
  prepared, compile_seconds = {}, {}
  for name in FLAGS.variants:
    step, state, batch, seconds = prepare(FLAGS.model, SPECS[name], FLAGS.batch_size, mesh)
    for _ in range(FLAGS.warmup):
      state, metrics = step(state, batch)
    jax.block_until_ready(state)
    prepared[name] = [step, state, batch]
    compile_seconds[name] = round(seconds, 2)

  per_round = {name: [] for name in FLAGS.variants}
  for _ in range(FLAGS.rounds):
    for name in FLAGS.variants:
      step, state, batch = prepared[name]
      start = time.perf_counter()
      for _ in range(FLAGS.steps):
        state, metrics = step(state, batch)
      jax.block_until_ready((state, metrics))
      per_round[name].append((time.perf_counter() - start) / FLAGS.steps)
      prepared[name][1] = state

  result = {
      "command": machine.command_line("benchmarks.saliency_mix"),
      "machine": machine.machine_info(),
      "load_average_start": list(load_start),
      "settings": {"model": MODELS[FLAGS.model], "image_shape": list(IMAGE_SHAPE),
                   "batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
                   "rounds": FLAGS.rounds, "warmup": FLAGS.warmup,
                   "specs": {name: SPECS[name] for name in FLAGS.variants}},
      "compile_seconds": compile_seconds,
      "seconds_per_step_median": {name: round(statistics.median(times), 5)
                                  for name, times in per_round.items()},
      "seconds_per_step_rounds": {name: [round(t, 5) for t in times]
                                  for name, times in per_round.items()},
  }
  if "puzzlemix" in per_round:
    for other in ("cutmix", "plain"):
      if other in per_round:
        ratios = [p / o for p, o in zip(per_round["puzzlemix"], per_round[other])]
        result[f"puzzlemix_over_{other}"] = round(statistics.median(ratios), 3)
    if "plain" in per_round:
      over_plain = result["puzzlemix_over_plain"]
      result["targets"] = {f"{FLAGS.model}_puzzlemix_over_plain <= {TARGET_OVER_PLAIN}": {
          "value": over_plain, "met": over_plain <= TARGET_OVER_PLAIN}}
  result["load_average_end"] = list(os.getloadavg())
  machine.print_and_write(result, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
