"""The train step with different oneDNN builds, against PyTorch eager on the same machine.

  python -m benchmarks.onednn_builds --builds=wheel=VENV,newest=PREFIX --turns=3 --rounds=5
      # results/train_step_onednn_builds.json

The project's oneDNN convolutions (effcv_jax/models/onednn_conv.py) compile against the oneDNN
under $EFFCV_ONEDNN_ROOT: by default the `onednn-cpu-gomp` wheels of requirements.txt
(oneDNN 3.2, OpenMP). The package index also has Intel's newer `onednn` and `onednn-devel`
wheels (3.13 in `onednn==2026.1.0`), built for the SYCL runtime with TBB threading; they
install with their runtime dependencies into a prefix of their own:

  pip install --prefix=/path/onednn-2026.1 onednn==2026.1.0 onednn-devel==2026.1.0 tbb

Whether a newer build speeds up the step is measured here, not assumed. --builds names the
prefixes (NAME=PREFIX, the first is the baseline of the ratios). Each turn times
benchmarks/train_step.py's single workload (`--part=one`: --model with the oneDNN
convolutions, all threads, in a fresh subprocess) once per build, with EFFCV_ONEDNN_ROOT set
to its prefix, in the same order every turn, then PyTorch eager (--torch_variant) once.
Reported: each build's version and runtimes (from its headers); with --verbose_steps (one
more run of 5 steps per build and for PyTorch, under ONEDNN_VERBOSE=1) the instruction set,
the data type of each pass, the kernels each ran for each pass (forward, input gradient,
kernel gradient, reorders) and their execution time per step without each call's first
execution (which JIT-compiles its kernel), so that the step's time splits into oneDNN's
share and the rest, against PyTorch's (which runs oneDNN's convolutions too); every timed
run's images/s and the medians with their ratios to the baseline and to PyTorch. The timing
flags (--steps, --rounds, --warmup, --batch_size, --dtype, --malloc, --model) are
train_step.py's.

Run from an interpreter that has the project's packages and torch (see xla_cpu_flags.py);
without torch the PyTorch runs are recorded as skipped.
"""

import os
import re
import subprocess
import sys

from absl import app, flags

from benchmarks import train_step  # defines the timing flags shared with train_step.py
from benchmarks.machine import print_and_write
from benchmarks.onednn_verbose import (data_types_of_verbose_log, isa_of_verbose_log,
                                       kernels_of_verbose_log, warm_ms_per_step)
from benchmarks.train_step_harness import ROOT, child_env, define_turn_flags, turns_report
from effcv_jax.models.onednn_conv import onednn_build_info

flags.DEFINE_list("builds", [f"default={onednn_build_info()['prefix']}"],
                  "NAME=PREFIX of each oneDNN build to time, in order; the first is the "
                  "baseline of the ratios (default: the one the convolutions use here).")
define_turn_flags("build")
flags.DEFINE_bool("verbose_steps", True,
                  "Record the kernels each build and PyTorch run, per pass (one extra run each).")
FLAGS = flags.FLAGS


def parse_builds(entries: list[str]) -> dict[str, str]:
  """{'NAME': 'PREFIX'} from NAME=PREFIX entries; exits with a message on a malformed or
  repeated name, or a prefix without include/dnnl.hpp."""
  builds = {}
  for entry in entries:
    name, sep, prefix = entry.partition("=")
    if not sep or not name or not prefix or name in builds:
      sys.exit(f"--builds: {entry!r} is not a new NAME=PREFIX")
    if not os.path.exists(os.path.join(prefix, "include", "dnnl.hpp")):
      sys.exit(f"--builds: {prefix} has no include/dnnl.hpp (a oneDNN install prefix)")
    builds[name] = os.path.abspath(prefix)
  if not builds:
    sys.exit("--builds: name at least one NAME=PREFIX")
  return builds


# train_step.py with --steps=3 --rounds=1 --warmup=1 executes 5 steps: JAX's first (compiling)
# step, one warm-up and three timed steps; PyTorch's two warm-up steps and three timed steps.
VERBOSE_STEPS = 5


def verbose_steps(settings, part_args: list[str], env: dict[str, str]) -> dict:
  """Runs train_step.py with `part_args` for VERBOSE_STEPS steps under ONEDNN_VERBOSE=1 (and
  `env`, with the timed runs' allocator and dtype): the instruction set oneDNN dispatched to
  ('isa'), each pass's source data type ('data_types'), the kernels of kernels_of_verbose_log
  over all of the steps, and each pass's execution time per step without the calls' first
  executions ('warm_ms_per_step', onednn_verbose.warm_ms_per_step), or the error."""
  command = [sys.executable, "-m", "benchmarks.train_step", *part_args,
             f"--batch_size={settings.batch_size}", f"--dtype={settings.dtype}", "--steps=3",
             "--rounds=1", "--warmup=1"]
  child, _ = child_env(settings, extra_env={**env, "ONEDNN_VERBOSE": "1"})  # as the timed runs
  done = subprocess.run(command, cwd=ROOT, env=child, capture_output=True, text=True,
                        timeout=settings.child_timeout)
  if done.returncode:
    return {"error": f"exit code {done.returncode}", "stderr_tail": done.stderr[-2000:]}
  lines = [line for line in done.stdout.splitlines() if line.startswith("onednn_verbose")]
  return {"steps": VERBOSE_STEPS, "isa": isa_of_verbose_log(lines),
          "data_types": data_types_of_verbose_log(lines),
          "kernels": kernels_of_verbose_log(lines),
          "warm_ms_per_step": warm_ms_per_step(lines, VERBOSE_STEPS)}


def torch_onednn_version() -> str | None:
  """The oneDNN version PyTorch here was built with (None without torch)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  found = re.search(r"MKL-DNN v([0-9.]+)", torch.__config__.show())
  return f"torch {torch.__version__}: oneDNN {found.group(1) if found else 'unknown'}"


def main(argv):
  del argv
  builds = parse_builds(FLAGS.builds)
  settings = train_step.settings_from_flags()
  info = {name: onednn_build_info(prefix) for name, prefix in builds.items()}
  torch_kernels = None
  if FLAGS.verbose_steps:
    for name, prefix in builds.items():
      info[name]["verbose"] = verbose_steps(
          settings, ["--part=one", f"--model={settings.model}", "--conv=onednn"],
          {"EFFCV_ONEDNN_ROOT": prefix})
      print(f"{name}: {info[name]}", flush=True)
    if FLAGS.torch_variant:
      torch_kernels = verbose_steps(
          settings, ["--part=torch", f"--model={settings.model}",
                     f"--torch_variants={FLAGS.torch_variant}"], {})
  result = turns_report(
      "benchmarks.onednn_builds", settings, "onednn",
      {name: {"EFFCV_ONEDNN_ROOT": prefix} for name, prefix in builds.items()}, FLAGS.turns,
      FLAGS.torch_variant, {"builds": info, "torch_onednn": torch_onednn_version(),
                            "torch_verbose": torch_kernels})
  print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  FLAGS.set_default("output", "benchmarks/results/train_step_onednn_builds.json")
  app.run(main)
