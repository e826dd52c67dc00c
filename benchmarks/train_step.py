"""Speed of the train step (`effcv_jax.train`) against PyTorch, compile time and the compilation cache.

  python -m benchmarks.train_step   # writes benchmarks/results/train_step.json

Workloads (random uint8 images, 10 classes, batch --batch_size=128, augment '', SGD with Nesterov
momentum 0.9 and weight decay 5e-4 on kernels, the project's `configs.common.base_config()`):
  resnet20    CIFAR ResNet-20 (option-A shortcuts), 32x32x3
  cnn_small   the small CNN (conv 32-32-64-64, dense 256), 28x28x1
built and stepped through the project's own code: `task.init_task_and_state(config, shape, mesh)`
and `train.jit_train_step(task, mesh)`, the state and the (fixed) batch on the device.

1. Step throughput: images/s of the compiled step, median over --rounds rounds of --steps steps
   after --warmup steps (compilation excluded and reported separately, see 5).
2. Convolutions (--convs), the models' `conv_backend` field (models/conv.py), set through the
   config's model_kwargs (train_step_workloads.py): 'onednn' (oneDNN's kernels for the forward
   pass and both gradients, models/onednn_conv.py; what 'auto' picks on one CPU device where
   oneDNN is installed), 'fast' (backend 'xla': XLA's convolutions with the kernel gradient as
   kh*kw matrix products), 'lax' (backend 'lax': XLA's own convolutions, whose CPU kernel
   gradient runs 5-8x slower than the forward; at the first of --threadings only, unless
   --lax_every_threading). The single layer of models/conv.py's docstring
   (3x3, 32->32 channels, 128 images of 28x28) is timed too (--conv_layer): forward and kernel
   gradient through lax, models/conv.py's XLA path and oneDNN.
3. Threading (--threadings): 'all' is XLA's default (multi-threaded Eigen over all cores); 'one'
   runs with XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1";
   'one_core' pins the process to one core (sched_setaffinity before JAX
   starts), which limits every thread pool whatever the flags do. XLA reads its flags when the
   backend starts, so every measurement of 1-3 runs in a fresh subprocess of this script
   (`--part=one`, printing one JSON line); cpu_over_wall (process CPU time / wall time over the
   timed steps) shows how many cores a setting really used.
4. PyTorch (when `import torch` works, else skipped with a note; `pip install torch`, see
   benchmarks/requirements.txt): the same ResNet-20 and step (uint8 NHWC -> float, normalise,
   cross-entropy, backward, SGD with the same momentum and decay) in eager mode, in a subprocess,
   torch.set_num_threads(os.cpu_count()) or 1 thread, contiguous (NCHW) or channels_last
   (--torch_variants).
   Reported: images/s and JAX / PyTorch (target of issue #7: >= 0.8), JAX with the models'
   default convolution here (`models_conv`: 'onednn' where it builds and loads, else 'fast').
5. Compile time (--compile_parts, on --compile_model, default conv, all threads): every run reports
   its phases: `init` (create_train_state: trace, compile and run of the jitted init), `lower`
   and `compile` of the step (`jit_train_step(...).lower(state, batch).compile()`) and the first
   step, each with the backend compile seconds JAX reports (jax.monitoring). 'cache': two fresh
   subprocesses sharing a new persistent compilation cache (jax_compilation_cache_dir,
   jax_persistent_cache_min_compile_time_secs=0, jax_persistent_cache_min_entry_size_bytes=-1),
   cold (empty) then warm (one timed round each, a check that the cached program runs as
   fast), and the speedup of init + first step. 'opt0': a cold start with
   XLA_FLAGS=--xla_backend_optimization_level=0 (compiles faster; its unoptimised step may run
   slower, so its step speed is reported too). Runs other than 'cache' disable the cache.

6. Profile (--profile_models, default conv, XLA's single-thread flags): the XLA ops of --steps
   steps from a jax.profiler trace, self time summed by kind of op (HLO name without its number:
   on this CPU 'ffi_call' = oneDNN's convolutions, all three passes; with conv 'fast',
   'ynn_fusion' = XNNPACK convolutions, forward and input gradient, and 'dot_general' = the
   kernel gradient's matrix products; '*_fusion' = element-wise work such as batch norm and
   ReLU and their gradients) and the 20 most expensive ops. Kinds are shares of the summed op time;
   ops of one step may overlap in time, so the sum can exceed the wall time.

Allocator (--malloc): every subprocess, PyTorch's included, runs with tcmalloc preloaded
when it is installed, as the experiments do (experiments/tcmalloc.py); --compare_malloc
adds ResNet-20 with the other one (glibc's malloc page-faults XLA's freed buffers back in).

Numbers depend on what else runs on the machine: load_average_* are recorded; measure on an
otherwise idle machine. Quick check: --steps=2 --rounds=1 --warmup=1 --models=cnn_small.

Code: this file holds the flags and the entry point; train_step_harness.py the settings,
timing, subprocesses and the results file; train_step_workloads.py the configs and batches;
train_step_jax.py the JAX parts (step, profile, conv layer); train_step_torch.py PyTorch's.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from absl import app, flags

from benchmarks.train_step_harness import RESULT_PREFIX, Settings, run_all

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "all", ["all", "one", "torch", "conv_layer", "profile"],
                  "'all' measures everything (each run in a subprocess); the others are the "
                  "subprocesses' parts.")
flags.DEFINE_string("output", "benchmarks/results/train_step.json", "Results file (part=all).")
flags.DEFINE_list("models", ["resnet20", "cnn_small"], "Workloads of parts 1-3.")
flags.DEFINE_list("convs", ["onednn", "fast", "lax"],
                  "Convolutions of parts 1-3: onednn, fast and/or lax.")
flags.DEFINE_list("threadings", ["all", "one", "one_core"],
                  "Threading of parts 1-3: all, one, one_core.")
flags.DEFINE_bool("lax_every_threading", False,
                  "Run the lax convolution at every threading (default: only the first).")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "What the step computes in: the JAX config's dtype; PyTorch runs its forward "
                  "pass and loss under torch.autocast('cpu', torch.bfloat16) for bfloat16.")
flags.DEFINE_integer("steps", 5, "Steps per timed round.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (the median step time is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after the first (compiling) one.")
flags.DEFINE_bool("conv_layer", True, "Time the single convolution layer of models/conv.py.")
flags.DEFINE_list("profile_models", ["resnet20"],
                  "Profile one single-threaded step of these workloads (part 6; '' for none).")
flags.DEFINE_bool("torch", True, "Compare with PyTorch when it is installed.")
flags.DEFINE_list("torch_variants", ["all_threads", "all_threads_channels_last", "one_thread"],
                  "PyTorch settings: all_threads or one_thread, each optionally with "
                  "_channels_last.")
flags.DEFINE_list("compile_parts", ["cache", "opt0"], "Compile-time runs (part 5): cache, opt0.")
flags.DEFINE_string("compile_model", "resnet20", "Workload of the compile-time runs.")
flags.DEFINE_integer("child_timeout", 3600, "Seconds before a subprocess is given up on.")
flags.DEFINE_enum("malloc", "tcmalloc", ["tcmalloc", "system"],
                  "Allocator of every measurement (tcmalloc via LD_PRELOAD when installed, as "
                  "the experiments use it; system = glibc malloc).")
flags.DEFINE_bool("compare_malloc", True,
                  "Also run ResNet-20 (default conv, each threading) with the other allocator.")
# Set by the parent for a subprocess (part=one); not for users.
flags.DEFINE_string("model", "resnet20", "part=one: the workload.")
flags.DEFINE_enum("conv", "fast", ["onednn", "fast", "lax"], "part=one: the convolution.")
flags.DEFINE_string("cache_dir", "", "part=one: persistent compilation cache directory ('' off).")
flags.DEFINE_bool("pin_one_core", False, "part=one: pin the process to one core first.")


def settings_from_flags() -> Settings:
  """The flags' values as Settings (lists as tuples)."""
  values = {}
  for field in dataclasses.fields(Settings):
    value = getattr(FLAGS, field.name)
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return Settings(**values)


def main(argv):
  del argv
  settings = settings_from_flags()
  if settings.part == "all":
    run_all(settings, " ".join(["python -m benchmarks.train_step"] + sys.argv[1:]))
    return
  if settings.part == "torch":
    from benchmarks.train_step_torch import measure_torch as measure
  else:
    from benchmarks import train_step_jax
    measure = {"one": train_step_jax.measure_jax, "conv_layer": train_step_jax.measure_conv_layer,
               "profile": train_step_jax.measure_profile}[settings.part]
  print(RESULT_PREFIX + json.dumps(measure(settings)), flush=True)


if __name__ == "__main__":
  app.run(main)
