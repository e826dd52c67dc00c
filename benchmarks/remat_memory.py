"""Memory and step time of the train step with and without rematerialisation (config.remat).

  python -m benchmarks.remat_memory   # writes benchmarks/results/remat_memory.json
  python -m benchmarks.remat_memory --time_model=efficientnet_b0:224,efficientnet_b7:600 \
      --output=benchmarks/results/remat_memory_gpu.json   # on a GPU
  # B7's autotuned GPU compile is long; --xla_flags=--xla_gpu_autotune_level=0 compiles without
  # autotuning (other convolution algorithms and workspaces, the same activations kept).

Target (issue #24): remat at least halves EfficientNet-B7's train-step peak at batch 8 (600 px),
at a step-time cost that the table states.

Per model (EfficientNet-B0 at 224 px, B7 at 600 px; 1000 classes, batch 8) and remat off / on,
the project's own train step (train.jit_train_step: augmentation off, the official RMSProp
optimiser of configs/common.tf_efficientnet_optimizer) is lowered and compiled: from shapes
only (init_task_and_state(abstract=True), jax.ShapeDtypeStruct batches) unless it is also
timed. Recorded:

  compiled       XLA's memory analysis of the compiled step (bytes): arguments, outputs,
                 aliased (the donated state), temporaries, and peak = arguments + outputs -
                 aliased + temporaries; and the compile seconds
  residuals      train.backward_residual_bytes: what the training forward pass keeps for the
                 backward pass (activations and the weights it reads), from shapes alone:
                 the part of the peak that remat removes on a backend that keeps it
  barriers       optimisation barriers in the lowered (pre-XLA) program: remat's recomputation
                 reaches XLA fenced off from the forward pass; convolutions and barriers left
                 in the compiled program (recomputed blocks add convolutions where they survive)

--cpu_scheduler=MEMORY_OPTIMIZED compiles with XLA:CPU's memory-optimised scheduler instead of
its default (results/remat_memory_cpu_memory_scheduler.json): it lowers the CPU peak with and
without remat alike, so it says what the CPU backend can do, not what remat does.

and, for the --time_model entries (B0 by default; B7 too on an accelerator), seconds per step
of the same compiled programs, executed on an initialised state and random images (--rounds
rounds of --steps steps per variant, alternating; medians).

The peak target is judged on the compiled peak of the backend the benchmark runs on. XLA's CPU
compiler drops the optimisation barriers, so on a CPU backend remat does not lower the compiled
peak (`notes` in the results file says what the counts show); XLA's GPU compiler keeps the
recomputation next to the backward pass that uses it, and the peak falls there.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import machine
from benchmarks import train_step_workloads as workloads
from configs.common import base_config, tf_efficientnet_optimizer
from effcv_jax import sharding
from effcv_jax import train as train_lib
from effcv_jax.task import init_task_and_state

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["efficientnet_b0:224", "efficientnet_b7:600"],
                  "model:image size pairs whose compiled steps are measured.")
flags.DEFINE_integer("batch_size", 8, "Training batch.")
flags.DEFINE_list("time_model", ["efficientnet_b0:224"],
                  "model:size pairs whose steps are compiled for real arrays, executed and "
                  "timed ('' : none).")
flags.DEFINE_integer("rounds", 3, "Timed rounds (medians reported); remat off and on alternate.")
flags.DEFINE_integer("steps", 2, "Steps per variant and round.")
flags.DEFINE_string("conv_backend", "xla", "The models' conv_backend (models/conv.py).")
flags.DEFINE_string("output", "benchmarks/results/remat_memory.json", "Results file ('' : none).")
flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS before the backend starts (e.g. "
                    "--xla_gpu_autotune_level=0: a GPU compile without autotuning).")
flags.DEFINE_enum("cpu_scheduler", "", ["", "MEMORY_OPTIMIZED", "CONCURRENCY_OPTIMIZED"],
                  "XLA:CPU's instruction scheduler (--xla_cpu_scheduler_type); '': its default.")

TARGET_PEAK_RATIO = 0.5
NOTES = {
    "cpu": "XLA's CPU compiler removes remat's optimisation barriers (compiled_optimization_"
           "barriers 0 while lowered_optimization_barriers has one per block); common-"
           "subexpression elimination then merges part of the recomputation back into the "
           "forward pass, and nothing keeps the rest next to the backward pass that uses it. "
           "The compiled CPU peak therefore does not shrink, while the recomputation that "
           "survives (the extra compiled_convolutions) still costs step time. In a toy check "
           "(10 blocks of 4 matrix products) with CSE disabled the recomputation survived whole "
           "and the CPU temporaries still did not shrink. On a GPU the compiled text shows no "
           "barriers either, but the recomputation stays next to the backward pass and the "
           "peak falls (results/remat_memory_gpu_b7.json).",
    "residuals": "residual_bytes counts the arrays JAX's VJP keeps before XLA's fusion, which "
                 "recomputes cheap elementwise results in the backward pass on any backend, so "
                 "it can exceed the compiled temporaries; its ratio is what remat removes at the "
                 "program level, not a measured peak.",
}
NUM_CLASSES = 1000


def make_config(model: str, batch_size: int, remat: bool, conv_backend: str):
  """The project's base config for an ImageNet `model` trained with the official optimiser."""
  config = base_config()
  config.dataset = "synthetic:benchmark"     # never read
  config.model, config.num_classes, config.batch_size = model, NUM_CLASSES, batch_size
  config.conv_backend, config.remat = conv_backend, remat
  config.input_mean = (0.485, 0.456, 0.406)
  config.input_std = (0.229, 0.224, 0.225)
  config.optimizer = tf_efficientnet_optimizer(0.016, 1e-5, steps_per_epoch=1000)
  return config


def abstract_batch(size: int, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
          "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}


def random_batch(size: int, batch_size: int, mesh) -> dict[str, jax.Array]:
  """train_step_workloads.random_batch of `size` px RGB images, placed on the mesh."""
  return sharding.to_global(
      workloads.random_batch((size, size, 3), batch_size, num_classes=NUM_CLASSES), mesh)


def compile_step(model: str, size: int, batch_size: int, remat: bool, conv_backend: str,
                 executable: bool) -> tuple[dict, dict | None]:
  """Compiles the train step of `model` at `size` px and returns (its memory record, a runner).

  The record holds XLA's memory analysis of the compiled step, its backward residuals and the
  lowered barriers. With `executable`, the step is compiled for a real (initialised) state
  and a random batch, and the runner {"compiled", "state", "batch"} executes that same
  compiled program; otherwise it is compiled from shapes alone and the runner is None."""
  config = make_config(model, batch_size, remat, conv_backend)
  mesh = sharding.make_mesh()
  task, state = init_task_and_state(config, (size, size, 3), mesh, abstract=not executable)
  batch = random_batch(size, batch_size, mesh) if executable else abstract_batch(size,
                                                                                 batch_size)
  residuals = train_lib.backward_residual_bytes(task, state, (batch_size, size, size, 3))
  start = time.perf_counter()
  lowered = train_lib.jit_train_step(task, mesh).lower(state, batch)
  barriers = lowered.as_text().count("optimization_barrier")
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  compiled_text = compiled.as_text()
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
  record = {"argument_bytes": stats.argument_size_in_bytes,
            "output_bytes": stats.output_size_in_bytes,
            "alias_bytes": stats.alias_size_in_bytes,
            "temp_bytes": stats.temp_size_in_bytes,
            "peak_bytes": peak, "peak_gib": round(peak / 2**30, 3),
            "residual_bytes": residuals, "residual_gib": round(residuals / 2**30, 3),
            "lowered_optimization_barriers": barriers,
            "compiled_convolutions": compiled_text.count(" convolution(")
                                     + compiled_text.count("custom_call_target=\"__cudnn$conv"),
            "compiled_optimization_barriers": compiled_text.count(" opt-barrier("),
            "compile_seconds": round(seconds, 1)}
  runner = {"compiled": compiled, "state": state, "batch": batch} if executable else None
  return record, runner


def step_seconds(runners: dict[bool, dict], rounds: int, steps: int) -> dict:
  """Median seconds per executed step of the compiled steps with remat off and on (keys False,
  True), alternating rounds of `steps` steps after one untimed step each."""
  losses = {}
  for remat, runner in runners.items():
    runner["state"], metrics = runner["compiled"](runner["state"], runner["batch"])
    losses[remat] = float(metrics["loss"])
  per_round = {False: [], True: []}
  for _ in range(rounds):
    for remat, runner in runners.items():
      start = time.perf_counter()
      for _ in range(steps):
        runner["state"], metrics = runner["compiled"](runner["state"], runner["batch"])
      jax.block_until_ready(metrics)
      per_round[remat].append((time.perf_counter() - start) / steps)
  plain, remat = (statistics.median(per_round[k]) for k in (False, True))
  return {"seconds_per_step_plain": round(plain, 4), "seconds_per_step_remat": round(remat, 4),
          "remat_over_plain": round(remat / plain, 3),
          "rounds_plain": [round(s, 4) for s in per_round[False]],
          "rounds_remat": [round(s, 4) for s in per_round[True]],
          "first_step_loss_plain": losses[False],
          "first_step_loss_remat": losses[True]}


def main(argv):
  del argv
  # XLA_FLAGS is read when the backend starts, on the first use of a device.
  extra = [FLAGS.xla_flags] + ([f"--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_"
                                f"{FLAGS.cpu_scheduler}"] if FLAGS.cpu_scheduler else [])
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + extra).strip()
  load_start = os.getloadavg()
  result = {"command": machine.command_line("benchmarks.remat_memory"),
            "machine": machine.machine_info(), "load_average_start": list(load_start),
            "settings": {"batch_size": FLAGS.batch_size, "conv_backend": FLAGS.conv_backend,
                         "num_classes": NUM_CLASSES, "optimizer": "tf_efficientnet_optimizer",
                         "xla_flags": os.environ.get("XLA_FLAGS", "")}}
  targets = {}
  timed = set(FLAGS.time_model)
  for entry in FLAGS.models + [e for e in FLAGS.time_model if e not in FLAGS.models]:
    model, size = entry.split(":")
    key = f"{model}_{size}px"
    rows, runners = {}, {}
    for label, remat in (("plain", False), ("remat", True)):
      rows[label], runners[remat] = compile_step(model, int(size), FLAGS.batch_size, remat,
                                                 FLAGS.conv_backend, executable=entry in timed)
    rows["remat_over_plain"] = {
        measure: round(rows["remat"][measure] / rows["plain"][measure], 3)
        for measure in ("peak_bytes", "temp_bytes", "residual_bytes")}
    result[key] = rows
    print(key, rows, flush=True)
    if model == "efficientnet_b7":
      ratios = rows["remat_over_plain"]
      targets[f"b7_{jax.default_backend()}_compiled_peak_remat_over_plain <= "
              f"{TARGET_PEAK_RATIO}"] = {"value": ratios["peak_bytes"],
                                         "met": ratios["peak_bytes"] <= TARGET_PEAK_RATIO}
      targets[f"b7_backward_residuals_remat_over_plain <= {TARGET_PEAK_RATIO}"] = {
          "value": ratios["residual_bytes"], "met": ratios["residual_bytes"] <= TARGET_PEAK_RATIO}
    if entry in timed:
      timing = step_seconds(runners, FLAGS.rounds, FLAGS.steps)
      result[f"step_time_{model}_{size}px"] = timing
      print(key, timing, flush=True)
      # A cost the table states, with no threshold: "met" is None.
      targets[f"{model}_{size}px_step_time_remat_over_plain (stated)"] = {
          "value": timing["remat_over_plain"], "met": None}
    del runners
  result["targets"] = targets
  result["notes"] = {topic: note for topic, note in NOTES.items()
                     if topic in ("residuals", jax.default_backend())}
  result["load_average_end"] = list(os.getloadavg())
  machine.print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
