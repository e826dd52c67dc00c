"""What machine and software a benchmark result was measured on (kept in every results file)."""

import os
import pathlib
import platform

import numpy as np


def machine_info() -> dict:
  """Platform, CPU model and count, Python, JAX (version, backend, devices) and NumPy."""
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
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(device) for device in jax.devices()],
      "numpy": np.__version__,
  }
