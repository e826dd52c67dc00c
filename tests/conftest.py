"""Test setup: 8 fake CPU devices (for sharding tests), unoptimised XLA compilation and
the local data directory.

Set before JAX is imported. EFFCV_DATA_DIR defaults to ../shared/data beside the
repository, where CI puts the project's offline datasets and weights.
"""

import os
import pathlib

# XLA's CPU backend spends seconds optimising even tiny programs (measured here: 5 s for
# one jax.random.normal, 45 s to initialise a ResNet-8, vs 1 s and 5 s at level 0); the
# tests' programs are small, so compiling them unoptimised makes the suite several
# times faster. Subprocesses the tests start inherit these flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The entry points the tests start as subprocesses restart themselves with tcmalloc
# preloaded (experiments/tcmalloc.py); preloading it here spares them that second start.
# pylint: disable-next=wrong-import-position
from experiments.tcmalloc import find_tcmalloc, preload_list
if find_tcmalloc():
  os.environ["LD_PRELOAD"] = preload_list(os.environ.get("LD_PRELOAD", ""))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if "EFFCV_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
  os.environ["EFFCV_DATA_DIR"] = str(_SHARED_DATA)

import pytest  # pylint: disable=wrong-import-position


def data_file(name: str) -> pathlib.Path:
  """Path of a file in the local data directory; skips the test if it is absent."""
  root = os.environ.get("EFFCV_DATA_DIR")
  path = pathlib.Path(root or ".") / name
  if not root or not path.exists():
    pytest.skip(f"{name} not found: set EFFCV_DATA_DIR to the directory holding it")
  return path
