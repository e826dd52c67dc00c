"""Compiling the project's native extensions (models/onednn_conv.cc, data/jpeg_crop.c) on
first use into the cache directory, so that a half-written library is never loaded; the CPU's
instruction-set flags they depend on."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable


def cache_dir() -> pathlib.Path:
  """Where compiled libraries are kept: $EFFCV_CACHE_DIR or ~/.cache/effcv_jax."""
  return pathlib.Path(os.environ.get("EFFCV_CACHE_DIR",
                                     pathlib.Path.home() / ".cache" / "effcv_jax"))


def cpu_flags() -> set[str]:
  """The instruction-set flags of this CPU (/proc/cpuinfo's `flags`; empty where there is
  none)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def find_compiler(env_var: str, names: tuple[str, ...], language: str) -> str:
  """$env_var, else the first of `names` on PATH. Raises RuntimeError saying what to install
  when there is none."""
  found = os.environ.get(env_var) or next(
      (path for path in map(shutil.which, names) if path), None)
  if found is None:
    raise RuntimeError(f"no {language} compiler found (install {names[0]} or set ${env_var})")
  return found


def compile_library(command: list[str], output: pathlib.Path, source: pathlib.Path,
                    hint: str = "") -> None:
  """Runs the compiler `command` (everything but its '-o FILE') into a temporary file beside
  `output`, then renames it to `output`: a concurrent or interrupted build never leaves a
  half-written library. Raises RuntimeError with the command, `hint` (what the build needs)
  and the compiler's messages when it fails."""
  output.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
    partial = pathlib.Path(tmp) / output.name
    full = command + ["-o", str(partial)]
    result = subprocess.run(full, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"compiling {source.name} failed{hint}:\n{' '.join(full)}\n"
                         f"{result.stderr[-4000:]}")
    os.replace(partial, output)


def load_library(library: pathlib.Path, build: Callable[[pathlib.Path], None]
                 ) -> ctypes.CDLL | str:
  """The shared library at `library`, built first by `build(library)` when it is not there;
  the reason as a string when it cannot be built or loaded."""
  try:
    if not library.exists():
      build(library)
    return ctypes.CDLL(str(library))
  except (OSError, RuntimeError) as error:
    return str(error)
