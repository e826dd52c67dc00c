"""Runs an experiment entry point and signals its own process (SIGKILL) at a chosen point.

  python -m tests.fault_driver --kill=POINT:N[:SIGNAL] experiments.train --config=... --workdir=...

The tests use it to die where a real crash, preemption or OOM kill could strike, then
rerun the plain command and compare with an uninterrupted run. N counts from 1 within
this process. SIGNAL (default SIGKILL) is the signal the process sends itself there;
after a catchable one (SIGTERM: a preemption notice) it goes on. Points:
  train_step:N         just before the N-th train step of this process runs;
  checkpoint_commit:N  when every file of the N-th checkpoint is in orbax's temporary
                       directory, before the rename that makes it a checkpoint;
  shard_write:N        with the N-th pseudo-label shard written to its .tmp file,
                       before the rename that makes it a shard.
SIGKILL cannot be caught: no `finally`, no atexit, no flush runs, as in a real kill.
"""

import os
import pathlib
import runpy
import signal
import subprocess
import sys

import numpy as np
from orbax.checkpoint._src.path import atomicity

from effcv_jax import files, pseudo_label, train


def install(point: str, n: int, signum: int = signal.SIGKILL) -> None:
  """Patches the library so that the process sends itself `signum` at the n-th occurrence
  of `point` (and dies there, for SIGKILL)."""
  calls = [0]

  def fault() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signum)

  def nth() -> bool:
    calls[0] += 1
    return calls[0] == n

  if point == "train_step":
    make_step = train.jit_train_step

    def make_step_that_dies(*args, **kwargs):
      step = make_step(*args, **kwargs)
      return lambda *a, **k: (fault() if nth() else None, step(*a, **k))[1]
    train.jit_train_step = make_step_that_dies
  elif point == "checkpoint_commit":
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_or_die(self):
      # Items (state/, data/) are finalised inside the step's directory first.
      if self.get_final().name.isdigit() and nth():
        fault()
      return await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
  elif point == "shard_write":
    write = pseudo_label.labelling.write_npz_atomic

    def write_then_die(f, arrays):
      np.savez(f, **arrays)
      f.flush()
      fault()

    def write_or_die(path, arrays):
      if nth():
        files.replace_atomically(path, lambda f: write_then_die(f, arrays), "wb")
      write(path, arrays)
    pseudo_label.labelling.write_npz_atomic = write_or_die
  else:
    raise ValueError(f"unknown kill point {point!r}")


def run_until_killed(kill: str, module: str, *args: str,
                     returncode: int = -signal.SIGKILL) -> str:
  """Runs `module args` under this driver in a subprocess (with the environment of the
  tests: their XLA flags and device count); checks that it ended at `kill` with
  `returncode` (default: killed by SIGKILL) and returns its log."""
  command = [sys.executable, "-m", "tests.fault_driver", f"--kill={kill}", module, *args]
  process = subprocess.run(command, cwd=pathlib.Path(__file__).resolve().parents[1],
                           capture_output=True, text=True, check=False)
  assert process.returncode == returncode, (
      f"{' '.join(command)} exited with {process.returncode}, not {returncode}: "
      f"{process.stderr[-3000:]}")
  return process.stderr


def main() -> None:
  kill, module, *args = sys.argv[1:]
  if not kill.startswith("--kill="):
    raise SystemExit(__doc__)
  point, n, *signal_name = kill[len("--kill="):].split(":")
  install(point, int(n), getattr(signal, signal_name[0]) if signal_name else signal.SIGKILL)
  sys.argv = [module, *args]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
