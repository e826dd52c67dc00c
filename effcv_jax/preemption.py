"""Stopping a training run on request: checkpoint the step in progress, then exit.

Schedulers announce an eviction with SIGTERM and a grace period before the SIGKILL
(preemptible Cloud TPU and GCE VMs, Kubernetes, Slurm's `scancel` or `--signal=TERM@...`).
While `loop.run_session` trains, it asks `StopRequest.requested(step)` after every step; on
True the loop writes that step's metrics, saves a checkpoint of that step and raises
`Preempted`, which the entry points (experiments/cli.py) report as one line with exit
status EXIT_CODE. Rerunning the same command resumes from that checkpoint, as from any
other, so nothing done before the notice is lost. A kill without notice falls back on the
periodic checkpoints (config.checkpoint_every).

One process: a SIGTERM handler, installed for the loop (from the main thread) and removed
after it, records the notice; outside the loop SIGTERM keeps its previous effect. A second
SIGTERM during the save changes nothing: the save is what the first one asked for.

Several processes (jax.distributed): JAX's preemption sync manager receives the notice on
any process and chooses a step at which every process stops
(`multihost_utils.reached_preemption_sync_point`), so all of them save the same step.
JAX's notifier, not this module, handles SIGTERM in such a run, from jax.distributed's start
on: a notice outside a training loop does not end the process. With that service switched
off (`jax_enable_preemption_service=False`) SIGTERM keeps its default effect.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import jax
from jax.experimental import multihost_utils

from effcv_jax import watchdog

EXIT_CODE = watchdog.EXIT_CODE   # EX_TEMPFAIL: rerunning the command resumes the run


class Preempted(Exception):
  """The run stopped on a SIGTERM after checkpointing `step` in `checkpoint_dir`."""

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(
        f"stopped on SIGTERM after step {step}, saved as checkpoint {step} in "
        f"{checkpoint_dir}; rerun the same command to resume from it")
    self.step = step
    self.checkpoint_dir = checkpoint_dir


class StopRequest:
  """Whether the run has been asked to stop; a context manager that listens for SIGTERM
  while it is entered (one process, main thread; see the module docstring)."""

  def __init__(self):
    self._signalled = False
    self._previous_handler = None
    self._listening = False
    self._multi_process = False
    self._synced = False

  def __enter__(self) -> StopRequest:
    self._multi_process = jax.process_count() > 1
    self._synced = self._multi_process and jax.config.jax_enable_preemption_service
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._listening = True
    return self

  def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
               trace: TracebackType | None) -> None:
    if self._listening:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._listening = False

  def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
    del signum, frame
    self._signalled = True

  def requested(self, step: int) -> bool:
    """True when the run must stop after `step` (every process of the run gets True at
    the same step; each process must ask at every step)."""
    if self._multi_process:
      return self._synced and multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
