"""The harness of benchmarks/train_step.py: settings, timing, subprocesses and the results file.

Every measurement runs in a fresh subprocess of `python -m benchmarks.train_step --part=...`
(XLA reads its flags when the backend starts), which prints one `RESULT {json}` line; the
parent (`run_all`) collects them, derives the speedups and targets and writes the JSON file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.machine import command_line, machine_info
from benchmarks.train_step_workloads import models_conv
from experiments.tcmalloc import find_tcmalloc, preload_list


@dataclasses.dataclass(frozen=True)
class Settings:
  """The options of one run, as train_step.py's flags give them (see their help there)."""

  part: str
  output: str
  models: tuple[str, ...]
  convs: tuple[str, ...]
  threadings: tuple[str, ...]
  lax_every_threading: bool
  batch_size: int
  dtype: str
  steps: int
  rounds: int
  warmup: int
  conv_layer: bool
  profile_models: tuple[str, ...]
  torch: bool
  torch_variants: tuple[str, ...]
  compile_parts: tuple[str, ...]
  compile_model: str
  child_timeout: int
  malloc: str
  compare_malloc: bool
  model: str
  conv: str
  cache_dir: str
  pin_one_core: bool


ROOT = pathlib.Path(__file__).resolve().parent.parent
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
OPT0_FLAGS = "--xla_backend_optimization_level=0"
RESULT_PREFIX = "RESULT "
# Environment variables that cap the instruction sets oneDNN and PyTorch use (XLA's cap is
# its --xla_cpu_max_isa flag).
ISA_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
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
    "PyTorch runs eager (no torch.compile), the same batch every step; with --dtype=bfloat16 "
    "its forward pass and loss run under torch.autocast('cpu', torch.bfloat16), the JAX step "
    "with config.dtype = 'bfloat16' (both keep float32 parameters and optimiser state).",
]


def time_rounds(call, steps: int, rounds: int, warmup: int, wait, batch_size: int) -> dict:
  """Median seconds per step of `call()` over `rounds` rounds of `steps` calls, after `warmup`
  calls; `wait()` blocks until the calls' work is done; images/s counts `batch_size` per call.
  Also the process's minor page faults and system CPU seconds per timed step (memory the
  allocator handed back to the system and faults in again)."""
  for _ in range(warmup):
    call()
  wait()
  per_step, cpu, wall = [], 0.0, 0.0
  usage = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(rounds):
    start_cpu, start = time.process_time(), time.perf_counter()
    for _ in range(steps):
      call()
    wait()
    seconds = time.perf_counter() - start
    cpu, wall = cpu + time.process_time() - start_cpu, wall + seconds
    per_step.append(seconds / steps)
  after = resource.getrusage(resource.RUSAGE_SELF)
  seconds = float(np.median(per_step))
  return {"seconds_per_step": round(seconds, 5),
          "seconds_per_step_by_round": [round(s, 5) for s in per_step],
          "images_per_s": round(batch_size / seconds, 1),
          "cpu_over_wall": round(cpu / wall, 2),
          "minor_page_faults_per_step": round((after.ru_minflt - usage.ru_minflt)
                                              / (rounds * steps), 1),
          "system_cpu_s_per_step": round((after.ru_stime - usage.ru_stime) / (rounds * steps),
                                         4),
          "tcmalloc_release_rate": os.environ.get("TCMALLOC_RELEASE_RATE")}



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


# ---------------------------------------------------------------------------------------------
# The parent: every measurement in a fresh subprocess.
# ---------------------------------------------------------------------------------------------


def child_env(settings: Settings, extra_xla_flags: str = "", overrides: tuple[str, ...] = (),
              extra_env: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
  """(environment, allocator) of a child process: this one's environment with `extra_env`,
  `extra_xla_flags` added to XLA_FLAGS and the allocator (settings.malloc, or a --malloc= of
  `overrides`) preloaded; allocator is the one the child gets ('system' when tcmalloc is
  asked for and not installed)."""
  env = dict(os.environ, **(extra_env or {}))
  env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), extra_xla_flags) if f)
  allocator = next((a[len("--malloc="):] for a in reversed(overrides)
                    if a.startswith("--malloc=")), settings.malloc)
  if allocator == "tcmalloc" and not find_tcmalloc():
    allocator = "system"
  env["LD_PRELOAD"] = preload_list(env.get("LD_PRELOAD", ""), allocator == "tcmalloc")
  if not env["LD_PRELOAD"]:
    del env["LD_PRELOAD"]
  if not env["XLA_FLAGS"]:
    del env["XLA_FLAGS"]
  return env, allocator


def child_command(settings: Settings, args: list[str],
                  overrides: tuple[str, ...] = ()) -> list[str]:
  """The command line of a train_step.py child: `args`, the shared timing settings, then
  `overrides`, which win."""
  return [sys.executable, "-m", "benchmarks.train_step", *args,
          f"--batch_size={settings.batch_size}", f"--dtype={settings.dtype}",
          f"--steps={settings.steps}",
          f"--rounds={settings.rounds}", f"--warmup={settings.warmup}", *overrides]


def child_result(stdout: str, returncode: int, stderr: str, args: list[str]) -> dict:
  """A finished child's result line as a dict, or its error (exit code, stderr's tail)."""
  lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if returncode or not lines:
    return {"error": f"exit code {returncode}", "args": args, "stderr_tail": stderr[-3000:]}
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_child(settings: Settings, args: list[str], extra_xla_flags: str = "",
              overrides: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> dict:
  """Runs this script with `args` in a fresh process (the shared settings, then `overrides`,
  which win; `extra_env` added to the environment); its result line, or the error."""
  env, allocator = child_env(settings, extra_xla_flags, overrides, extra_env)
  command = child_command(settings, args, overrides)
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=settings.child_timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {settings.child_timeout} s", "args": args}
  wall = round(time.perf_counter() - start, 2)
  result = child_result(done.stdout, done.returncode, done.stderr, args)
  if "error" in result:
    return result
  result["process_wall_s"] = wall
  result["allocator"] = allocator
  return result


def jax_child(settings: Settings, model: str, conv: str, threading: str = "all",
              cache_dir: str = "", extra_xla_flags: str = "",
              overrides: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> dict:
  """One workload (part=one) in a fresh subprocess with the given threading."""
  args = ["--part=one", f"--model={model}", f"--conv={conv}", f"--cache_dir={cache_dir}",
          f"--pin_one_core={threading == 'one_core'}"]
  if threading == "one":
    extra_xla_flags = " ".join(f for f in (SINGLE_THREAD_FLAGS, extra_xla_flags) if f)
  elif threading not in ("all", "one_core"):
    raise ValueError(f"unknown threading {threading!r}; use all, one or one_core")
  result = run_child(settings, args, extra_xla_flags, overrides, extra_env)
  result["threading"] = threading
  return result


def define_turn_flags(variants: str) -> None:
  """Defines --turns and --torch_variant, the flags of a script of alternating turns
  (`turns_report`) over its `variants` (e.g. 'option set')."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_integer("turns", 2, f"Turns; each times every {variants} and PyTorch once.")
  flags.DEFINE_string("torch_variant", "all_threads_channels_last",
                      "PyTorch variant of train_step.py ('' skips PyTorch).")


# What time_rounds says of the allocator's work, kept in every run's entry.
_MEMORY_KEYS = ("minor_page_faults_per_step", "system_cpu_s_per_step", "tcmalloc_release_rate")


def alternating_turns(settings: Settings, conv: str, variants: dict[str, dict[str, str]],
                      turns: int, torch_variant: str) -> tuple[dict[str, list], list]:
  """Times settings.model under each of `variants` ({name: extra environment, whose
  XLA_FLAGS entry is added to XLA's flags}) once per turn, in the same order every turn,
  then PyTorch's `torch_variant` once ('' skips it), so that drift of the machine's speed
  falls on all alike. Returns ({name: one entry per turn}, PyTorch's entries): a run's
  images/s, CPU use, step time, last loss, compile time and page faults, or its error."""
  runs: dict[str, list[dict]] = {name: [] for name in variants}
  torch_runs: list[dict] = []
  for turn in range(turns):
    for name, env in variants.items():
      env = dict(env)
      result = jax_child(settings, settings.model, conv,
                         extra_xla_flags=env.pop("XLA_FLAGS", ""), extra_env=env)
      runs[name].append(result if not ok(result) else {
          "images_per_s": result["images_per_s"], "cpu_over_wall": result["cpu_over_wall"],
          "seconds_per_step": result["seconds_per_step"], "last_loss": result["last_loss"],
          "compile_s": result["phases"]["compile"]["wall_s"], "allocator": result["allocator"],
          **{key: result[key] for key in _MEMORY_KEYS if key in result}})
      print(f"turn {turn} {name}: {runs[name][-1]}", flush=True)
    if torch_variant:
      result = run_child(settings, ["--part=torch", f"--model={settings.model}",
                                    f"--torch_variants={torch_variant}"])
      torch_runs.append(dict(result["variants"][torch_variant], allocator=result["allocator"])
                        if ok(result) else result)
      print(f"turn {turn} torch: {torch_runs[-1]}", flush=True)
  return runs, torch_runs


def turns_report(module: str, settings: Settings, conv: str, variants: dict[str, dict[str, str]],
                 turns: int, torch_variant: str, described: dict) -> dict:
  """Runs alternating_turns and returns the results file of `module` (benchmarks.NAME): its
  command, the machine, load averages, the workload, `described` (what the variants are),
  every run, PyTorch's runs and turn_ratios (the first variant is the baseline)."""
  load_average_start = os.getloadavg()
  runs, torch_runs = alternating_turns(settings, conv, variants, turns, torch_variant)
  return {
      "command": command_line(module),
      "machine": machine_info(),
      # Instruction-set limits every run inherited (an AVX-512 machine standing in for an
      # AVX2 one: XLA_FLAGS=--xla_cpu_max_isa=AVX2, ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY).
      "isa_limits": isa_limits(os.environ),
      "load_average_start": load_average_start,
      "load_average_end": os.getloadavg(),
      "workload": (f"{settings.model}, conv {conv}, {settings.dtype}, all threads, batch "
                   f"{settings.batch_size}, "
                   f"{settings.rounds} rounds of {settings.steps} steps after {settings.warmup} "
                   f"(benchmarks/train_step.py --part=one)"),
      **described,
      "runs": runs,
      "torch": {"variant": torch_variant, "runs": torch_runs} if torch_variant else None,
      **turn_ratios(runs, torch_runs, next(iter(variants)),
                    settings.model if settings.dtype == "float32"
                    else f"{settings.model}_{settings.dtype}"),
  }


def isa_limits(environ) -> dict[str, str]:
  """The instruction-set caps in `environ`: ISA_LIMIT_VARIABLES that are set, and XLA_FLAGS
  reduced to its --xla_cpu_max_isa flag (its other flags cap nothing)."""
  limits = {name: environ[name] for name in ISA_LIMIT_VARIABLES if environ.get(name)}
  xla_cap = [flag for flag in environ.get("XLA_FLAGS", "").split()
             if flag.startswith("--xla_cpu_max_isa")]
  return {"XLA_FLAGS": " ".join(xla_cap), **limits} if xla_cap else limits


def median_images_per_s(runs: list[dict]) -> float | None:
  """Median images/s of the runs that measured something (None if none did)."""
  speeds = [r["images_per_s"] for r in runs if ok(r)]
  return round(statistics.median(speeds), 1) if speeds else None


def turn_ratios(runs: dict[str, list], torch_runs: list, baseline: str, model: str) -> dict:
  """Medians of alternating_turns' runs, their ratios to the `baseline` variant's and to
  PyTorch's median, and the target JAX / PyTorch >= 1.0 for the fastest variant (named after
  `model`, the workload's name):
  {'median_images_per_s', 'torch_median_images_per_s', 'over_baseline', 'over_torch'[,
  'targets']}."""
  medians = {name: median_images_per_s(side) for name, side in runs.items()}
  torch_median = median_images_per_s(torch_runs)
  base = medians[baseline]
  result = {
      "median_images_per_s": medians,
      "torch_median_images_per_s": torch_median,
      "over_baseline": {name: round(m / base, 3) if m and base else None
                        for name, m in medians.items()},
      "over_torch": {name: round(m / torch_median, 3) if m and torch_median else None
                     for name, m in medians.items()},
  }
  measured = {name: r for name, r in result["over_torch"].items() if r}
  if measured:
    best = max(measured, key=measured.get)
    result["targets"] = {f"{model}_jax_over_torch >= 1.0 (best set: {best})": {
        "value": measured[best], "met": measured[best] >= 1.0,
        "definition": "median images/s of the fastest option set / PyTorch's median"}}
  return result


def summary(label: str, result: dict) -> str:
  """One line for the log: a part=one result's speed and phases."""
  if "error" in result:
    return f"{label}: FAILED ({result['error']})"
  phases = result["phases"]
  return (f"{label}: {result['images_per_s']:.0f} images/s ({1e3 * result['seconds_per_step']:.1f}"
          f" ms/step, cpu/wall {result['cpu_over_wall']}); init {phases['init']['wall_s']:.1f} s,"
          f" step compile {phases['compile']['wall_s']:.1f} s, first step after "
          f"{result['time_to_first_step_s']:.1f} s ({result['process_wall_s']:.1f} s with start-up)")


def ok(result: dict | None) -> bool:
  """Whether a child's result is a measurement (not an error, not skipped)."""
  return bool(result) and "error" not in result and "skipped" not in result


def compile_part(settings: Settings, conv: str) -> dict:
  """Part 5: compile time with and without the persistent cache, and at optimisation level 0."""
  results = {"model": settings.compile_model, "conv": conv, "threading": "all"}
  if "cache" in settings.compile_parts:
    cache_dir = tempfile.mkdtemp(prefix="train_step_jax_cache_")
    try:
      for name in ("cold", "warm"):
        # One timed round: the step speed is only a check that the cached program is the same.
        results[f"cache_{name}"] = jax_child(settings, settings.compile_model, conv, cache_dir=cache_dir,
                                             overrides=("--rounds=1",))
        print(summary(f"{settings.compile_model} persistent cache {name}", results[f"cache_{name}"]),
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
      print(f"{settings.compile_model} persistent cache: warm start {speedup['time_to_first_step']}x "
            f"faster to the first step (init {speedup['init']}x, step compile "
            f"{speedup['step_compile']}x; whole process {speedup['process']}x); "
            f"{results['cache_entries']} entries, {results['cache_bytes'] / 2**20:.1f} MiB",
            flush=True)
  if "opt0" in settings.compile_parts:
    results["opt0_cold"] = jax_child(settings, settings.compile_model, conv, extra_xla_flags=OPT0_FLAGS)
    print(summary(f"{settings.compile_model} {OPT0_FLAGS}", results["opt0_cold"]), flush=True)
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


def run_all(settings: Settings, command: str) -> dict:
  """part=all: every measurement in a fresh subprocess; writes settings.output, returns it.

  command: the command line as run, recorded in the results."""
  results = {"command": command,
             "machine": machine_info(),
             "load_average_start": os.getloadavg(),
             "settings": {"batch_size": settings.batch_size, "steps": settings.steps,
                          "rounds": settings.rounds, "warmup": settings.warmup,
                          "xla_flags_inherited": os.environ.get("XLA_FLAGS", ""),
                          "single_thread_xla_flags": SINGLE_THREAD_FLAGS,
                          "optimizer": "sgd lr 0.1 cosine, nesterov momentum 0.9, "
                                       "weight decay 5e-4 on kernels"},
             "notes": list(NOTES),
             "models_conv": models_conv(),
             "step": []}
  default_conv = results["models_conv"]
  print(json.dumps(results["machine"]), flush=True)
  for model in settings.models:
    for conv in settings.convs:
      threadings = settings.threadings
      if conv == "lax" and not settings.lax_every_threading:
        threadings = threadings[:1]
      for threading in threadings:
        result = jax_child(settings, model, conv, threading)
        results["step"].append(result)
        print(summary(f"{model} conv={conv} threads={threading}", result), flush=True)
  if settings.compare_malloc and "resnet20" in settings.models and default_conv in settings.convs:
    other = "system" if settings.malloc == "tcmalloc" else "tcmalloc"
    for threading in settings.threadings:
      result = jax_child(settings, "resnet20", default_conv, threading,
                         overrides=(f"--malloc={other}",))
      results.setdefault("other_allocator", []).append(result)
      print(summary(f"resnet20 conv={default_conv} threads={threading} allocator={other}",
                    result),
            flush=True)
  for model in settings.models:
    for threading in settings.threadings:
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
  if settings.conv_layer:
    results["conv_layer"] = run_child(settings, ["--part=conv_layer"])
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
  for model in settings.profile_models:
    profile = run_child(settings, ["--part=profile", f"--model={model}", f"--conv={default_conv}"],
                        SINGLE_THREAD_FLAGS)
    results.setdefault("profile", {})[model] = profile
    if ok(profile):
      shares = ", ".join(f"{kind} {100 * share:.0f} %"
                         for kind, share in list(profile["by_kind_share"].items())[:6])
      print(f"{model} profile (one thread): {shares}", flush=True)
    else:
      print(f"{model} profile: FAILED ({profile['error']})", flush=True)
  if settings.torch:
    if importlib.util.find_spec("torch") is None:
      note = ("PyTorch not installed in this environment (pip install torch; see "
              "benchmarks/requirements.txt): comparison skipped")
      results["torch"] = {"skipped": note}
      print(note, flush=True)
    else:
      results["torch"] = run_child(settings, ["--part=torch", "--torch_variants="
                                    + ",".join(settings.torch_variants)])
      if ok(results["torch"]):
        for variant, value in results["torch"]["variants"].items():
          print(f"torch {results['torch']['torch']} resnet20 {variant}: "
                f"{value['images_per_s']:.0f} images/s ({1e3 * value['seconds_per_step']:.1f} "
                f"ms/step, {value['threads']} threads, cpu/wall {value['cpu_over_wall']})",
                flush=True)
      else:
        print(f"torch: {results['torch'].get('skipped') or results['torch'].get('error')}",
              flush=True)
  if settings.compile_parts:
    results["compile"] = compile_part(settings, default_conv)
  results["load_average_end"] = os.getloadavg()
  results["targets"] = check_targets(results, default_conv)
  for name, target in results["targets"].items():
    print(f"target {name}: {target['value']} ({'met' if target['met'] else 'NOT met'})",
          flush=True)
  out = pathlib.Path(settings.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {out}")
  return results
