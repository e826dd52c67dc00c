"""Preloading tcmalloc: XLA on CPU runs faster with it than with glibc's malloc.

glibc's malloc returns XLA's large buffers to the OS when they are freed, and the next
step page-faults them in again; tcmalloc keeps them. Imports nothing heavy, so that
benchmarks running in other environments can use it too.
"""

import os
import sys

TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")
TCMALLOC_ENV = "EFFCV_TCMALLOC"


def find_tcmalloc() -> str | None:
  """The tcmalloc library to preload (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)."""
  return next((path for path in TCMALLOC_PATHS if os.path.exists(path)), None)


def preload_list(ld_preload: str, use_tcmalloc: bool = True) -> str:
  """The LD_PRELOAD value `ld_preload` with tcmalloc added (when installed) or removed."""
  kept = [path for path in ld_preload.split() if "tcmalloc" not in path]
  library = find_tcmalloc() if use_tcmalloc else None
  return " ".join(kept + [library] if library else kept)


def reexec_with_tcmalloc() -> None:
  """Restarts this process (same PID, same command) with tcmalloc in LD_PRELOAD, when it is
  installed and not loaded yet, unless $EFFCV_TCMALLOC=0; says on stderr how to install it
  where it is not (Linux).

  glibc's malloc returns XLA's large freed buffers to the system and faults them in again
  every step; tcmalloc keeps them (the difference: `python -m benchmarks.train_step`,
  benchmarks/results/train_step.json). Must run before JAX starts its backend.
  """
  preloaded = os.environ.get("LD_PRELOAD", "")
  if os.environ.get(TCMALLOC_ENV, "1") == "0" or "tcmalloc" in preloaded:
    return
  library = find_tcmalloc()
  if not sys.platform.startswith("linux"):
    return
  if library is None:
    print("effcv_jax: tcmalloc is not installed; XLA on CPU runs slower with glibc's malloc "
          "(docs/running.md#tcmalloc): apt-get install libtcmalloc-minimal4, or "
          "EFFCV_TCMALLOC=0 to silence this", file=sys.stderr, flush=True)
    return
  sys.stdout.flush()
  sys.stderr.flush()
  env = dict(os.environ, LD_PRELOAD=preload_list(preloaded))
  os.execve(sys.executable, sys.orig_argv, env)

