"""What machine and software a benchmark result was measured on (kept in every results file),
and the command that reproduces it."""

import json
import os
import pathlib
import platform
import shlex
import sys

import numpy as np

from effcv_jax import native_build


def cpu_flags() -> set[str]:
  """The `flags` of /proc/cpuinfo (empty where there is none)."""
  return native_build.cpu_flags()


def vector_isa_flags() -> list[str]:
  """The CPU's AVX and AMX flags (what decides oneDNN's and XLA's kernels), sorted."""
  return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))


def machine_info() -> dict:
  """Platform, CPU model, count and vector instruction sets, Python, JAX (version, backend,
  devices and their kind: the accelerator's model on a GPU or TPU) and NumPy."""
  import jax

  cpu_model = platform.processor()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {
      "platform": platform.platform(),
      "python": platform.python_version(),
      "cpu": cpu_model,
      "cpu_count": os.cpu_count(),
      "cpu_isa_flags": vector_isa_flags(),
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(device) for device in jax.devices()],
      "jax_device_kind": jax.devices()[0].device_kind,
      "numpy": np.__version__,
  }


def command_line(module: str) -> str:
  """`python -m module` with this process's arguments, shell-quoted: the result's command."""
  return " ".join([f"python -m {module}"] + [shlex.quote(a) for a in sys.argv[1:]])


def print_and_write(result: dict, output: str) -> None:
  """Prints a result as JSON and, when `output` is not empty, writes it there."""
  text = json.dumps(result, indent=1)
  print(text)
  if output:
    pathlib.Path(output).write_text(text + "\n")
