"""The JAX parts of benchmarks/train_step.py, each run in its own subprocess.

* `measure_jax` (part=one): one workload's train step, built and compiled by the project's
  code (`task.init_task_and_state`, `train.jit_train_step`), with the phases up to the first
  step and then the step speed;
* `measure_profile` (part=profile): the XLA ops of a few steps from a jax.profiler trace;
* `measure_conv_layer` (part=conv_layer): one convolution layer, forward and kernel gradient,
  through lax, the models' XLA path and oneDNN.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import json
import os
import pathlib
import re
import shutil
import tempfile
import time

from benchmarks.train_step_harness import Phases, Settings, time_rounds
from benchmarks.train_step_workloads import make_config, random_batch


def build_step(settings: Settings, phases) -> tuple:
  """(compiled train step, state, batch, image shape) of settings.model with settings.conv,
  built by the project's code; `phases(name)` is a context manager timing init, lower, compile."""
  import jax

  from effcv_jax import sharding, task as task_lib, train

  config, shape = make_config(settings.model, settings.batch_size, settings.conv, settings.dtype)
  mesh = sharding.make_mesh()
  batch = sharding.to_global(random_batch(shape, settings.batch_size), mesh)
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


def measure_jax(settings: Settings) -> dict:
  """part=one: one workload in this (fresh) process: phases up to the first step, then the
  step speed."""
  if settings.pin_one_core:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  import jax

  if settings.cache_dir:
    jax.config.update("jax_compilation_cache_dir", settings.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  else:
    jax.config.update("jax_enable_compilation_cache", False)
  phases = Phases()
  compiled, state, batch, shape = build_step(settings, phases)
  with phases("first_step"):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  holder = {"state": state, "metrics": metrics}

  def call():
    holder["state"], holder["metrics"] = compiled(holder["state"], batch)

  speed = time_rounds(call, settings.steps, settings.rounds, settings.warmup,
                      lambda: jax.block_until_ready(holder["metrics"]), settings.batch_size)
  loss = round(float(holder["metrics"]["loss"]), 4) if "loss" in holder["metrics"] else None
  return {"model": settings.model, "conv": settings.conv, "input_shape": list(shape),
          "batch_size": settings.batch_size,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "pinned_to_one_core": settings.pin_one_core,
          "persistent_cache": bool(settings.cache_dir),
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


def measure_profile(settings: Settings) -> dict:
  """part=profile: where the step's time goes: the XLA ops of --steps steps of settings.model, from a
  jax.profiler trace, summed by kind (the HLO name without its number) and the top ops."""
  import jax

  jax.config.update("jax_enable_compilation_cache", False)
  compiled, state, batch, _ = build_step(settings, lambda name: contextlib.nullcontext())
  holder = {"state": state}

  def call():
    holder["state"], holder["metrics"] = compiled(holder["state"], batch)

  for _ in range(settings.warmup + 1):
    call()
  jax.block_until_ready(holder["metrics"])
  trace_dir = tempfile.mkdtemp(prefix="train_step_profile_")
  try:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(settings.steps):
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
    by_op[event["name"]] += self_us / 1e3 / settings.steps      # ms per step
    by_kind[re.sub(r"(\.\d+)+$", "", event["name"])] += self_us / 1e3 / settings.steps
  total = sum(by_kind.values())
  return {"model": settings.model, "conv": settings.conv, "batch_size": settings.batch_size,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "wall_ms_per_step_while_tracing": round(1e3 * wall / settings.steps, 1),
          "op_ms_per_step": round(total, 1),
          "by_kind_ms_per_step": {k: round(v, 1) for k, v in by_kind.most_common() if v >= 0.05},
          "by_kind_share": {k: round(v / total, 3) for k, v in by_kind.most_common(12)},
          "top_ops_ms_per_step": {k: round(v, 2) for k, v in by_op.most_common(20)}}


def measure_conv_layer(settings: Settings) -> dict:
  """part=conv_layer: models/conv.py's example layer: forward and kernel gradient, lax vs the
  fast one (and oneDNN's, where available)."""
  import jax
  import jax.numpy as jnp

  from effcv_jax.models import conv, onednn_conv

  # kernel_grad_fast: the XLA path of models/conv.py (conv_backend 'xla').
  fast_conv = functools.partial(conv.conv_general_dilated, backend_name="xla")
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
      "kernel_grad_fast": (jax.jit(kernel_grad(fast_conv)), (w, x, dy)),
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
    speed = time_rounds(lambda: out.update(y=compiled(*args)), 1, max(settings.rounds, 3),
                        1, lambda: jax.block_until_ready(out["y"]), settings.batch_size)
    results[name] = {"compile_s": round(compile_seconds, 3),
                     "ms": round(1e3 * speed["seconds_per_step"], 2),
                     "cpu_over_wall": speed["cpu_over_wall"]}
  results["lax_over_fast"] = round(results["kernel_grad_lax"]["ms"]
                                   / results["kernel_grad_fast"]["ms"], 2)
  results["lax_kernel_grad_over_forward"] = round(results["kernel_grad_lax"]["ms"]
                                                  / results["forward"]["ms"], 2)
  return results
