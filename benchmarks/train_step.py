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
2. Convolutions (--convs), the project's `models.conv.Conv` as $EFFCV_CONV picks it:
   'onednn' (EFFCV_CONV=onednn: oneDNN's kernels for the forward pass and both gradients,
   models/onednn_conv.py; what the models use on one CPU device where oneDNN is installed),
   'fast' (EFFCV_CONV=xla: XLA's convolutions with the kernel gradient as kh*kw matrix
   products); 'lax' sets `conv.Conv.keywords["conv_general_dilated"] =
   lax.conv_general_dilated` before the model is built: XLA's own convolutions, whose CPU kernel
   gradient runs 5-8x slower than the forward; at the first of --threadings only, unless
   --lax_every_threading. The single layer of models/conv.py's docstring
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
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.machine import machine_info
from experiments.tcmalloc import find_tcmalloc, preload_list

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

NUM_CLASSES = 10
ROOT = pathlib.Path(__file__).resolve().parent.parent
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
OPT0_FLAGS = "--xla_backend_optimization_level=0"
RESULT_PREFIX = "RESULT "
NOTES = [
    "Compilation is excluded from images_per_s: the step is compiled with lower().compile() "
    "and timed over --rounds x --steps calls of the compiled executable after --warmup calls, "
    "waiting for the result at the end of each round.",
    "phases.*.backend_compile_s is what JAX's monitoring reports as XLA compilation (or, on a "
    "persistent-cache hit, loading the executable); wall_s includes tracing and lowering. "
    "init is the whole create_train_state (its run takes milliseconds, the rest is compiling).",
    "time_to_first_step_s = init + lower + compile + first step; process_wall_s adds Python "
    "and JAX start-up (imports) of the subprocess.",
    "cpu_over_wall is the process CPU time over wall time during the timed steps: about the "
    "number of cores used; on a machine busy with other work it stays below the core count.",
    "PyTorch runs eager (no torch.compile), float32, the same batch every step.",
]


# ---------------------------------------------------------------------------------------------
# Workloads.
# ---------------------------------------------------------------------------------------------


def make_config(model: str):
  """The project's base config for `model`, as the train loop would build it."""
  from configs.common import base_config

  config = base_config()
  config.dataset = "synthetic:benchmark"     # never read
  config.augment = ""
  config.batch_size = FLAGS.batch_size
  config.num_classes = NUM_CLASSES
  config.model = model
  if model == "cnn_small":
    config.model_kwargs.widths = (32, 64)
    config.model_kwargs.hidden = 256
    return config, (28, 28, 1)
  config.input_mean = (0.4914, 0.4822, 0.4465)
  config.input_std = (0.2470, 0.2435, 0.2616)
  return config, (32, 32, 3)


def random_batch(shape: tuple[int, ...], batch_size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size,) + shape, dtype=np.uint8),
          "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)}


def time_rounds(call, steps: int, rounds: int, warmup: int, wait) -> dict:
  """Median seconds per step of `call()` over `rounds` rounds of `steps` calls."""
  for _ in range(warmup):
    call()
  wait()
  per_step, cpu, wall = [], 0.0, 0.0
  for _ in range(rounds):
    start_cpu, start = time.process_time(), time.perf_counter()
    for _ in range(steps):
      call()
    wait()
    seconds = time.perf_counter() - start
    cpu, wall = cpu + time.process_time() - start_cpu, wall + seconds
    per_step.append(seconds / steps)
  seconds = float(np.median(per_step))
  return {"seconds_per_step": round(seconds, 5),
          "seconds_per_step_by_round": [round(s, 5) for s in per_step],
          "images_per_s": round(FLAGS.batch_size / seconds, 1),
          "cpu_over_wall": round(cpu / wall, 2)}


# ---------------------------------------------------------------------------------------------
# JAX (part=one, in a subprocess).
# ---------------------------------------------------------------------------------------------

EVENTS = {  # jax.monitoring event -> our name
    "/jax/core/compile/backend_compile_duration": "backend_compile_s",
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "to_mlir_s",
    "/jax/compilation_cache/compile_time_saved_sec": "cache_compile_time_saved_s",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_retrieval_s",
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_misses",
}


class Phases:
  """Wall and CPU seconds of named phases, with the JAX compile events inside each."""

  def __init__(self):
    from jax import monitoring

    self.totals = collections.defaultdict(float)
    self.results = {}
    monitoring.register_event_duration_secs_listener(self._on_duration)
    monitoring.register_event_listener(self._on_event)

  def _on_duration(self, event, duration, **kwargs):
    if event in EVENTS:
      self.totals[EVENTS[event]] += duration

  def _on_event(self, event, **kwargs):
    if event in EVENTS:
      self.totals[EVENTS[event]] += 1

  @contextlib.contextmanager
  def __call__(self, name: str):
    before = dict(self.totals)
    start_cpu, start = time.process_time(), time.perf_counter()
    yield
    result = {"wall_s": round(time.perf_counter() - start, 3),
              "cpu_s": round(time.process_time() - start_cpu, 3)}
    for key, value in sorted(self.totals.items()):
      delta = value - before.get(key, 0.0)
      if delta:
        result[key] = int(delta) if key.startswith("cache_") and key[-2:] != "_s" else round(
            delta, 3)
    self.results[name] = result


def build_step(phases) -> tuple:
  """(compiled train step, state, batch, image shape) of FLAGS.model with FLAGS.conv, built
  by the project's code; `phases(name)` is a context manager timing init, lower, compile."""
  import jax

  from effcv_jax import sharding, train
  from effcv_jax import task as task_lib
  from effcv_jax.models import conv

  if FLAGS.conv == "lax":
    conv.Conv.keywords["conv_general_dilated"] = jax.lax.conv_general_dilated
  os.environ["EFFCV_CONV"] = {"onednn": "onednn", "fast": "xla"}.get(FLAGS.conv, "auto")
  config, shape = make_config(FLAGS.model)
  mesh = sharding.make_mesh()
  batch = sharding.to_global(random_batch(shape, FLAGS.batch_size), mesh)
  jax.block_until_ready(batch)
  with phases("init"):
    task, state = task_lib.init_task_and_state(config, shape, mesh)
    jax.block_until_ready(state)
  step = train.jit_train_step(task, mesh)
  with phases("lower"):
    lowered = step.lower(state, batch)
  with phases("compile"):
    compiled = lowered.compile()
  return compiled, state, batch, shape


def measure_jax() -> dict:
  """One workload in this (fresh) process: phases up to the first step, then step speed."""
  if FLAGS.pin_one_core:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  import jax

  if FLAGS.cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  else:
    jax.config.update("jax_enable_compilation_cache", False)
  phases = Phases()
  compiled, state, batch, shape = build_step(phases)
  with phases("first_step"):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  holder = {"state": state, "metrics": metrics}

  def call():
    holder["state"], holder["metrics"] = compiled(holder["state"], batch)

  speed = time_rounds(call, FLAGS.steps, FLAGS.rounds, FLAGS.warmup,
                      lambda: jax.block_until_ready(holder["metrics"]))
  loss = round(float(holder["metrics"]["loss"]), 4) if "loss" in holder["metrics"] else None
  return {"model": FLAGS.model, "conv": FLAGS.conv, "input_shape": list(shape),
          "batch_size": FLAGS.batch_size,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "pinned_to_one_core": FLAGS.pin_one_core,
          "persistent_cache": bool(FLAGS.cache_dir),
          "num_params": int(sum(x.size for x in jax.tree.leaves(holder["state"].params))),
          "devices": [str(d) for d in jax.devices()],
          "phases": phases.results,
          "time_to_first_step_s": round(sum(p["wall_s"] for p in phases.results.values()), 3),
          "last_loss": loss,
          **speed}


# An XLA op in the profiler's trace: its HLO instruction name, e.g. 'conv_general_dilated.3',
# 'dot_general.12', 'ynn_fusion', 'fusion.40', 'copy.2' (runtime events have '::', '$', capitals).
_HLO_NAME = re.compile(r"^[a-z][a-z0-9_\-]*(\.\d+)*$")


def _self_times(events: list[dict]) -> list[tuple[dict, float]]:
  """(event, its duration minus that of the events nested in it on its thread)."""
  result = []
  by_thread = collections.defaultdict(list)
  for event in events:
    by_thread[(event.get("pid"), event.get("tid"))].append(event)
  for thread_events in by_thread.values():
    thread_events.sort(key=lambda e: (e["ts"], -e.get("dur", 0.0)))
    stack = []    # [event, self time] of the events that contain the current one
    for event in thread_events:
      while stack and event["ts"] >= stack[-1][0]["ts"] + stack[-1][0].get("dur", 0.0):
        result.append(tuple(stack.pop()))
      if stack:
        stack[-1][1] -= event.get("dur", 0.0)
      stack.append([event, event.get("dur", 0.0)])
    result.extend(tuple(item) for item in stack)
  return result


def measure_profile() -> dict:
  """Where the step's time goes: the XLA ops of --steps steps of FLAGS.model, from a
  jax.profiler trace, summed by kind (the HLO name without its number) and the top ops."""
  import jax

  jax.config.update("jax_enable_compilation_cache", False)
  compiled, state, batch, _ = build_step(lambda name: contextlib.nullcontext())
  holder = {"state": state}

  def call():
    holder["state"], holder["metrics"] = compiled(holder["state"], batch)

  for _ in range(FLAGS.warmup + 1):
    call()
  jax.block_until_ready(holder["metrics"])
  trace_dir = tempfile.mkdtemp(prefix="train_step_profile_")
  try:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(FLAGS.steps):
        call()
      jax.block_until_ready(holder["metrics"])
    wall = time.perf_counter() - start
    (trace_file,) = pathlib.Path(trace_dir).rglob("*.trace.json.gz")
    with gzip.open(trace_file) as f:
      trace = json.load(f)
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops = [e for e in events if e.get("ph") == "X" and _HLO_NAME.match(e.get("name", ""))]
  by_op, by_kind = collections.Counter(), collections.Counter()
  for event, self_us in _self_times(ops):
    by_op[event["name"]] += self_us / 1e3 / FLAGS.steps      # ms per step
    by_kind[re.sub(r"(\.\d+)+$", "", event["name"])] += self_us / 1e3 / FLAGS.steps
  total = sum(by_kind.values())
  return {"model": FLAGS.model, "conv": FLAGS.conv, "batch_size": FLAGS.batch_size,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "wall_ms_per_step_while_tracing": round(1e3 * wall / FLAGS.steps, 1),
          "op_ms_per_step": round(total, 1),
          "by_kind_ms_per_step": {k: round(v, 1) for k, v in by_kind.most_common() if v >= 0.05},
          "by_kind_share": {k: round(v / total, 3) for k, v in by_kind.most_common(12)},
          "top_ops_ms_per_step": {k: round(v, 2) for k, v in by_op.most_common(20)}}


def measure_conv_layer() -> dict:
  """models/conv.py's example layer: forward and kernel gradient, lax vs the fast one (and
  oneDNN's, where available)."""
  import jax
  import jax.numpy as jnp

  from effcv_jax.models import conv, onednn_conv

  os.environ["EFFCV_CONV"] = "xla"      # kernel_grad_fast: the XLA path of models/conv.py
  jax.config.update("jax_enable_compilation_cache", False)
  x = jax.random.normal(jax.random.PRNGKey(0), (128, 28, 28, 32))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32)) * 0.1
  dy = jax.random.normal(jax.random.PRNGKey(2), (128, 28, 28, 32))
  layout = ("NHWC", "HWIO", "NHWC")

  def forward(fn):
    return lambda x_, w_: fn(x_, w_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=layout)

  def kernel_grad(fn):
    return jax.grad(lambda w_, x_, dy_: jnp.vdot(forward(fn)(x_, w_), dy_))

  functions = {
      "forward": (jax.jit(forward(jax.lax.conv_general_dilated)), (x, w)),
      "kernel_grad_lax": (jax.jit(kernel_grad(jax.lax.conv_general_dilated)), (w, x, dy)),
      "kernel_grad_fast": (jax.jit(kernel_grad(conv.conv_general_dilated)), (w, x, dy)),
  }
  if onednn_conv.available():
    onednn = lambda x_, w_, strides, padding, **_: onednn_conv.conv2d(x_, w_, strides, padding)
    functions["forward_onednn"] = (jax.jit(forward(onednn)), (x, w))
    functions["kernel_grad_onednn"] = (jax.jit(kernel_grad(onednn)), (w, x, dy))
  results = {"shape": "x (128, 28, 28, 32), w (3, 3, 32, 32), stride 1, pad 1"}
  for name, (fn, args) in functions.items():
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    out = {}
    speed = time_rounds(lambda: out.update(y=compiled(*args)), 1, max(FLAGS.rounds, 3),
                        1, lambda: jax.block_until_ready(out["y"]))
    results[name] = {"compile_s": round(compile_seconds, 3),
                     "ms": round(1e3 * speed["seconds_per_step"], 2),
                     "cpu_over_wall": speed["cpu_over_wall"]}
  results["lax_over_fast"] = round(results["kernel_grad_lax"]["ms"]
                                   / results["kernel_grad_fast"]["ms"], 2)
  results["lax_kernel_grad_over_forward"] = round(results["kernel_grad_lax"]["ms"]
                                                  / results["forward"]["ms"], 2)
  return results


# ---------------------------------------------------------------------------------------------
# PyTorch (part=torch, in a subprocess).
# ---------------------------------------------------------------------------------------------


def torch_resnet20(num_classes: int = NUM_CLASSES):
  """CIFAR ResNet-20 with option-A shortcuts, as effcv_jax.models.resnet_cifar."""
  import torch.nn.functional as F
  from torch import nn

  class Block(nn.Module):

    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
      shortcut = x
      if self.stride != 1 or self.extra:   # option A: subsample, zero-pad the channels
        shortcut = F.pad(x[:, :, ::self.stride, ::self.stride],
                         (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + shortcut)

  layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
  for stage, width in enumerate((16, 32, 64)):
    for i in range(3):
      layers.append(Block(cin, width, 2 if stage > 0 and i == 0 else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
  return nn.Sequential(*layers)


def measure_torch() -> dict:
  try:
    import torch
    import torch.nn.functional as F
  except Exception as error:  # pylint: disable=broad-except
    return {"skipped": f"import torch failed: {type(error).__name__}: {error}"}
  config, shape = make_config("resnet20")
  batch = random_batch(shape, FLAGS.batch_size)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)   # uint8, channels_last strides
  labels = torch.from_numpy(batch["label"]).long()
  mean = torch.tensor(config.input_mean).view(1, 3, 1, 1)
  std = torch.tensor(config.input_std).view(1, 3, 1, 1)
  opt = config.optimizer
  results = {"torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
             "model": "ResNet-20 (option A), eager", "variants": {}}
  for variant in FLAGS.torch_variants:
    if variant not in ("all_threads", "one_thread", "all_threads_channels_last",
                       "one_thread_channels_last"):
      raise ValueError(f"unknown torch variant {variant!r}")
    threads = os.cpu_count() if variant.startswith("all_threads") else 1
    channels_last = variant.endswith("channels_last")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_resnet20().train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    decay = [p for p in model.parameters() if p.ndim > 1]     # as optim.weight_decay_mask
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": opt.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    last = {}

    def call():
      x = images.float().contiguous(memory_format=memory_format)
      x = (x / 255.0 - mean) / std
      loss = F.cross_entropy(model(x), labels)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      last["loss"] = loss

    speed = time_rounds(call, FLAGS.steps, FLAGS.rounds, FLAGS.warmup + 1,
                        lambda: last["loss"].item())
    results["variants"][variant] = {"threads": torch.get_num_threads(),
                                    "channels_last": channels_last,
                                    "last_loss": round(last["loss"].item(), 4), **speed}
  return results


# ---------------------------------------------------------------------------------------------
# The parent: every measurement in a fresh subprocess.
# ---------------------------------------------------------------------------------------------


def run_child(args: list[str], extra_xla_flags: str = "", overrides: tuple[str, ...] = ()
              ) -> dict:
  """Runs this script with `args` in a fresh process (the shared settings, then `overrides`,
  which win); its result line, or the error."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), extra_xla_flags) if f)
  allocator = next((a[len("--malloc="):] for a in reversed(overrides)
                    if a.startswith("--malloc=")), FLAGS.malloc)
  env["LD_PRELOAD"] = preload_list(env.get("LD_PRELOAD", ""), allocator == "tcmalloc")
  if not env["LD_PRELOAD"]:
    del env["LD_PRELOAD"]
  if not env["XLA_FLAGS"]:
    del env["XLA_FLAGS"]
  command = [sys.executable, "-m", "benchmarks.train_step", *args,
             f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
             f"--rounds={FLAGS.rounds}", f"--warmup={FLAGS.warmup}", *overrides]
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=FLAGS.child_timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {FLAGS.child_timeout} s", "args": args}
  wall = round(time.perf_counter() - start, 2)
  lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if done.returncode or not lines:
    return {"error": f"exit code {done.returncode}", "args": args,
            "stderr_tail": done.stderr[-3000:]}
  result = json.loads(lines[-1][len(RESULT_PREFIX):])
  result["process_wall_s"] = wall
  result["allocator"] = allocator if allocator == "system" or find_tcmalloc() else "system"
  return result


def jax_child(model: str, conv: str, threading: str = "all", cache_dir: str = "",
              extra_xla_flags: str = "", overrides: tuple[str, ...] = ()) -> dict:
  args = ["--part=one", f"--model={model}", f"--conv={conv}", f"--cache_dir={cache_dir}",
          f"--pin_one_core={threading == 'one_core'}"]
  if threading == "one":
    extra_xla_flags = " ".join(f for f in (SINGLE_THREAD_FLAGS, extra_xla_flags) if f)
  elif threading not in ("all", "one_core"):
    raise ValueError(f"unknown threading {threading!r}; use all, one or one_core")
  result = run_child(args, extra_xla_flags, overrides)
  result["threading"] = threading
  return result


def summary(label: str, result: dict) -> str:
  if "error" in result:
    return f"{label}: FAILED ({result['error']})"
  phases = result["phases"]
  return (f"{label}: {result['images_per_s']:.0f} images/s ({1e3 * result['seconds_per_step']:.1f}"
          f" ms/step, cpu/wall {result['cpu_over_wall']}); init {phases['init']['wall_s']:.1f} s,"
          f" step compile {phases['compile']['wall_s']:.1f} s, first step after "
          f"{result['time_to_first_step_s']:.1f} s ({result['process_wall_s']:.1f} s with start-up)")


def ok(result: dict | None) -> bool:
  return bool(result) and "error" not in result and "skipped" not in result


def models_conv() -> str:
  """The convolution the models use here by default ($EFFCV_CONV=auto, one CPU device):
  'onednn' where its extension builds and loads, else 'fast'."""
  from effcv_jax.models import onednn_conv

  return "onednn" if onednn_conv.available() else "fast"


def compile_part(conv: str) -> dict:
  results = {"model": FLAGS.compile_model, "conv": conv, "threading": "all"}
  if "cache" in FLAGS.compile_parts:
    cache_dir = tempfile.mkdtemp(prefix="train_step_jax_cache_")
    try:
      for name in ("cold", "warm"):
        # One timed round: the step speed is only a check that the cached program is the same.
        results[f"cache_{name}"] = jax_child(FLAGS.compile_model, conv, cache_dir=cache_dir,
                                             overrides=("--rounds=1",))
        print(summary(f"{FLAGS.compile_model} persistent cache {name}", results[f"cache_{name}"]),
              flush=True)
      files = [p for p in pathlib.Path(cache_dir).rglob("*") if p.is_file()]
      results["cache_entries"] = len(files)
      results["cache_bytes"] = sum(p.stat().st_size for p in files)
    finally:
      shutil.rmtree(cache_dir, ignore_errors=True)
    cold, warm = results["cache_cold"], results["cache_warm"]
    if ok(cold) and ok(warm):
      speedup = {"time_to_first_step": round(cold["time_to_first_step_s"]
                                             / warm["time_to_first_step_s"], 2),
                 "init": round(cold["phases"]["init"]["wall_s"]
                               / warm["phases"]["init"]["wall_s"], 2),
                 "step_compile": round(cold["phases"]["compile"]["wall_s"]
                                       / warm["phases"]["compile"]["wall_s"], 2),
                 "process": round(cold["process_wall_s"] / warm["process_wall_s"], 2)}
      results["warm_speedup"] = speedup
      print(f"{FLAGS.compile_model} persistent cache: warm start {speedup['time_to_first_step']}x "
            f"faster to the first step (init {speedup['init']}x, step compile "
            f"{speedup['step_compile']}x; whole process {speedup['process']}x); "
            f"{results['cache_entries']} entries, {results['cache_bytes'] / 2**20:.1f} MiB",
            flush=True)
  if "opt0" in FLAGS.compile_parts:
    results["opt0_cold"] = jax_child(FLAGS.compile_model, conv, extra_xla_flags=OPT0_FLAGS)
    print(summary(f"{FLAGS.compile_model} {OPT0_FLAGS}", results["opt0_cold"]), flush=True)
  return results


def check_targets(results: dict, conv: str) -> dict:
  """The issue's targets, for the models' default convolution `conv`."""
  targets = {}
  jax_r20 = next((r for r in results["step"] if ok(r) and r["model"] == "resnet20"
                  and r["conv"] == conv and r["threading"] == "all"), None)
  torch_variants = {k: v for k, v in results.get("torch", {}).get("variants", {}).items()
                    if k.startswith("all_threads")}
  if jax_r20 and torch_variants:
    best = max(torch_variants.values(), key=lambda v: v["images_per_s"])
    ratio = round(jax_r20["images_per_s"] / best["images_per_s"], 3)
    targets["resnet20_jax_over_best_torch >= 0.8"] = {"value": ratio, "met": ratio >= 0.8}
  # On one core each: JAX pinned to a core ('one_core'; XLA's single-thread flags still
  # run independent ops concurrently, cpu_over_wall ~1.7 here), PyTorch on one thread.
  jax_one = next((r for r in results["step"] if ok(r) and r["model"] == "resnet20"
                  and r["conv"] == conv and r["threading"] == "one_core"), None)
  torch_one = results.get("torch", {}).get("variants", {}).get("one_thread")
  if jax_one and torch_one:
    ratio = round(jax_one["images_per_s"] / torch_one["images_per_s"], 3)
    targets["resnet20_jax_over_torch_one_core >= 0.8"] = {"value": ratio, "met": ratio >= 0.8}
  return targets


def main(argv):
  del argv
  if FLAGS.part != "all":
    measure = {"one": measure_jax, "torch": measure_torch, "conv_layer": measure_conv_layer,
               "profile": measure_profile}
    print(RESULT_PREFIX + json.dumps(measure[FLAGS.part]()), flush=True)
    return
  results = {"command": " ".join(["python -m benchmarks.train_step"] + sys.argv[1:]),
             "machine": machine_info(),
             "load_average_start": os.getloadavg(),
             "settings": {"batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
                          "rounds": FLAGS.rounds, "warmup": FLAGS.warmup,
                          "xla_flags_inherited": os.environ.get("XLA_FLAGS", ""),
                          "single_thread_xla_flags": SINGLE_THREAD_FLAGS,
                          "optimizer": "sgd lr 0.1 cosine, nesterov momentum 0.9, "
                                       "weight decay 5e-4 on kernels"},
             "notes": list(NOTES),
             "models_conv": models_conv(),
             "step": []}
  default_conv = results["models_conv"]
  print(json.dumps(results["machine"]), flush=True)
  for model in FLAGS.models:
    for conv in FLAGS.convs:
      threadings = FLAGS.threadings
      if conv == "lax" and not FLAGS.lax_every_threading:
        threadings = threadings[:1]
      for threading in threadings:
        result = jax_child(model, conv, threading)
        results["step"].append(result)
        print(summary(f"{model} conv={conv} threads={threading}", result), flush=True)
  if FLAGS.compare_malloc and "resnet20" in FLAGS.models and default_conv in FLAGS.convs:
    other = "system" if FLAGS.malloc == "tcmalloc" else "tcmalloc"
    for threading in FLAGS.threadings:
      result = jax_child("resnet20", default_conv, threading,
                         overrides=(f"--malloc={other}",))
      results.setdefault("other_allocator", []).append(result)
      print(summary(f"resnet20 conv={default_conv} threads={threading} allocator={other}",
                    result),
            flush=True)
  for model in FLAGS.models:
    for threading in FLAGS.threadings:
      pair = {r["conv"]: r for r in results["step"]
              if ok(r) and r["model"] == model and r["threading"] == threading}
      if "fast" in pair and "lax" in pair:
        gain = round(pair["fast"]["images_per_s"] / pair["lax"]["images_per_s"], 2)
        results.setdefault("fast_conv_speedup", {})[f"{model}/{threading}"] = gain
        print(f"{model} threads={threading}: fast kernel gradient {gain}x the images/s of lax",
              flush=True)
      if "onednn" in pair and "fast" in pair:
        gain = round(pair["onednn"]["images_per_s"] / pair["fast"]["images_per_s"], 2)
        results.setdefault("onednn_speedup", {})[f"{model}/{threading}"] = gain
        print(f"{model} threads={threading}: oneDNN convolutions {gain}x the images/s of fast",
              flush=True)
  if FLAGS.conv_layer:
    results["conv_layer"] = run_child(["--part=conv_layer"])
    layer = results["conv_layer"]
    if ok(layer):
      print(f"conv layer {layer['shape']}: forward {layer['forward']['ms']} ms, kernel gradient "
            f"lax {layer['kernel_grad_lax']['ms']} ms, fast {layer['kernel_grad_fast']['ms']} ms "
            f"({layer['lax_over_fast']}x)"
            + (f"; oneDNN forward {layer['forward_onednn']['ms']} ms, kernel gradient "
               f"{layer['kernel_grad_onednn']['ms']} ms" if "forward_onednn" in layer else ""),
            flush=True)
    else:
      print(f"conv layer: FAILED ({layer['error']})", flush=True)
  for model in FLAGS.profile_models:
    profile = run_child(["--part=profile", f"--model={model}", f"--conv={default_conv}"],
                        SINGLE_THREAD_FLAGS)
    results.setdefault("profile", {})[model] = profile
    if ok(profile):
      shares = ", ".join(f"{kind} {100 * share:.0f} %"
                         for kind, share in list(profile["by_kind_share"].items())[:6])
      print(f"{model} profile (one thread): {shares}", flush=True)
    else:
      print(f"{model} profile: FAILED ({profile['error']})", flush=True)
  if FLAGS.torch:
    if importlib.util.find_spec("torch") is None:
      note = ("PyTorch not installed in this environment (pip install torch; see "
              "benchmarks/requirements.txt): comparison skipped")
      results["torch"] = {"skipped": note}
      print(note, flush=True)
    else:
      results["torch"] = run_child(["--part=torch", "--torch_variants="
                                    + ",".join(FLAGS.torch_variants)])
      if ok(results["torch"]):
        for variant, value in results["torch"]["variants"].items():
          print(f"torch {results['torch']['torch']} resnet20 {variant}: "
                f"{value['images_per_s']:.0f} images/s ({1e3 * value['seconds_per_step']:.1f} "
                f"ms/step, {value['threads']} threads, cpu/wall {value['cpu_over_wall']})",
                flush=True)
      else:
        print(f"torch: {results['torch'].get('skipped') or results['torch'].get('error')}",
              flush=True)
  if FLAGS.compile_parts:
    results["compile"] = compile_part(default_conv)
  results["load_average_end"] = os.getloadavg()
  results["targets"] = check_targets(results, default_conv)
  for name, target in results["targets"].items():
    print(f"target {name}: {target['value']} ({'met' if target['met'] else 'NOT met'})",
          flush=True)
  out = pathlib.Path(FLAGS.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
