"""Test setup: 8 fake CPU devices (for sharding tests), unoptimised XLA compilation, a
persistent compilation cache for the session, the local data directory, and the one way a
test skips for something missing.

Set before JAX is imported. EFFCV_DATA_DIR defaults to ../shared/data beside the
repository, where CI puts the project's offline datasets and weights.

Skipping: a test that needs something this machine may lack (a data file, the oneDNN wheel,
tcmalloc, an optional package) calls `missing(kind, reason)` (or `data_file`,
`import_or_skip`), never `pytest.skip` directly. It skips with the reason "needs KIND: ...",
unless $EFFCV_REQUIRE (a comma-separated list of kinds, or `all`) names the kind: then the
test fails. .ci/run requires the data and the requirements' packages, so CI fails instead of
silently skipping what it is meant to test. Where $EFFCV_REQUIRE is set, any other skip (a
raw pytest.skip) fails too, so a skip that bypasses `missing` cannot hide in CI.
Kinds used: data, onednn, tflite, weights (the packages of requirements-weights.txt), torch,
tcmalloc, libjpeg (gcc and libjpeg-turbo's headers, for data/jpeg_crop.c), cpu_isa (a CPU instruction set the machine lacks) and mount (mounting a tmpfs,
which a container may not allow); the last two are never required, CI runs on whatever
machine it gets.
"""

import atexit
import importlib
import os
import pathlib
import shutil
import tempfile
from types import ModuleType
from typing import NoReturn

# XLA's CPU backend spends seconds optimising even tiny programs (measured here: 5 s for
# one jax.random.normal, 45 s to initialise a ResNet-8, vs 1 s and 5 s at level 0); the
# tests' programs are small, so compiling them unoptimised makes the suite several
# times faster. Subprocesses the tests start inherit these flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, which the subprocesses the tests start
# inherit: the kill-and-resume tests compile the same programs in every process they start.
# A fresh directory, removed at exit, so no session reads another's programs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _COMPILATION_CACHE = tempfile.mkdtemp(prefix="effcv-tests-jax-cache-")
  atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
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


REQUIRE_ENV = "EFFCV_REQUIRE"
_SKIP_PREFIX = "needs "
# Kinds that `all` does not require: what no CI machine can be asked to have.
NEVER_IMPLIED = frozenset({"cpu_isa", "mount"})


def required_kinds() -> set[str]:
  """The kinds of dependency $EFFCV_REQUIRE turns from a skip into a failure."""
  return {kind.strip() for kind in os.environ.get(REQUIRE_ENV, "").split(",") if kind.strip()}


def is_required(kind: str) -> bool:
  """Whether $EFFCV_REQUIRE requires `kind` (by name, or through `all`)."""
  required = required_kinds()
  return kind in required or ("all" in required and kind not in NEVER_IMPLIED)


def missing(kind: str, reason: str) -> NoReturn:
  """Skips the calling test (or fixture): `kind` (one of the module docstring's kinds) is
  not available here. Fails instead where $EFFCV_REQUIRE names the kind (or `all`, which
  implies every kind but those in NEVER_IMPLIED)."""
  __tracebackhide__ = True  # pylint: disable=unused-variable  (reports name the test's line)
  message = f"{_SKIP_PREFIX}{kind}: {reason}"
  if is_required(kind):
    pytest.fail(f"{message} ({REQUIRE_ENV}={os.environ[REQUIRE_ENV]} requires it)",
                pytrace=False)
  pytest.skip(message)


def data_file(name: str) -> pathlib.Path:
  """Path of a file in the local data directory; `missing("data")` if it is absent."""
  __tracebackhide__ = True  # pylint: disable=unused-variable
  root = os.environ.get("EFFCV_DATA_DIR")
  path = pathlib.Path(root or ".") / name
  if not root or not path.exists():
    missing("data", f"{name} not found: set EFFCV_DATA_DIR to the directory holding it")
  return path


def import_or_skip(module: str, kind: str | None = None, reason: str = "") -> ModuleType:
  """The imported module, or `missing(kind)` (kind defaults to the module's name)."""
  __tracebackhide__ = True  # pylint: disable=unused-variable
  try:
    return importlib.import_module(module)
  except ImportError as error:
    missing(kind or module, reason or f"{module} is not importable ({error})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  """Where $EFFCV_REQUIRE is set, a skip that did not come through `missing` fails."""
  outcome = yield
  report = outcome.get_result()
  if not (report.skipped and os.environ.get(REQUIRE_ENV)) or hasattr(report, "wasxfail"):
    return
  reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  if not reason.removeprefix("Skipped: ").startswith(_SKIP_PREFIX):
    report.outcome = "failed"
    report.longrepr = (f"skipped outside tests/conftest.py:missing() while {REQUIRE_ENV} is "
                       f"set: {reason}")
