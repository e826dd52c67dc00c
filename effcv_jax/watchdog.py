"""Stall detection for long loops: a run that stops making progress ends, loudly.

A training loop, a pseudo-labelling pass or an evaluation calls `beat()` after each step
(batch) it completes (`beat_when_ready(outputs)`: after the device has computed them, not
when they were dispatched). A `Watchdog` thread measures the time since the last beat; when it
exceeds `max(min_stall_seconds, stall_factor * median step time)` (or `startup_seconds`
before the first beat, which covers compilation), the watchdog

  1. writes one line to stderr naming what stalled, for how long, the last intact state (a
     `describe_state()` the loop supplies, e.g. the latest complete checkpoint) and the
     command that resumes the run (this process's own command line);
  2. dumps every thread's stack: Python frames (`faulthandler`) and native frames (gdb
     attached to this process where gdb is installed and may attach; otherwise the thread
     list with each thread's state and kernel wait channel from /proc), to stderr and to
     `<dump_dir>/watchdog-<pid>.txt` when a dump_dir is given;
  3. ends the process with exit status `EXIT_CODE`, without running any more of it (no
     checkpoint is written after the stall, so the last complete one stays intact).

The last state is read only from the file system (no locks of the stalled program are
taken), and the dump does not need the stalled threads' cooperation. Under multi-host,
a collective that never completes stalls every process's loop: each process's watchdog
reports it the same way (the line names the process index).

Watchdogs nest: `beat()` beats every watchdog that is running in this process, so an
evaluation inside a training loop counts as the training loop's progress too.

A paused process is not a stalled one: the watching thread waits at most a second at a
time; when a wait overruns by more than `pause_seconds` while the process used less than
half a core on average, the whole process was stopped (Ctrl-Z / SIGSTOP, a debugger, a frozen
container) and that time is not counted towards the limit; the watchdog says so on stderr.
A hang leaves the watching thread running on time (or, holding the GIL while computing, uses
the CPU), so it is still caught.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, TextIO

import jax

EXIT_CODE = 75   # EX_TEMPFAIL: the run can be retried (resumed) as it is
_HISTORY = 101   # step intervals kept for the median

_active: list["Watchdog"] = []
_active_lock = threading.Lock()


def beat() -> None:
  """Records progress (one completed step) with every running watchdog."""
  with _active_lock:
    dogs = list(_active)
  for dog in dogs:
    dog.beat()


def beat_when_ready(step_outputs: Any) -> None:
  """Blocks until `step_outputs` (a pytree of jax arrays) are computed, then beats.

  JAX dispatches asynchronously: a loop that beats right after dispatching runs ahead of the
  device by many steps, and its first wait for a result (a metrics flush) can then outlast
  the limit although every step is progressing. Loops pass the outputs of the step BEFORE
  the one just dispatched, so one step stays in flight and each beat marks a finished step.
  """
  jax.block_until_ready(step_outputs)
  beat()


def resume_command() -> str:
  """This process's command line, quoted: rerunning it resumes a run from its workdir."""
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
  if argv and os.path.basename(argv[0]).startswith("python"):
    argv[0] = "python"
  return " ".join(shlex.quote(a) for a in argv)


def _native_stacks(timeout: float = 60.0) -> str:
  """Native stacks of all threads of this process: gdb's `thread apply all bt` when gdb
  can attach, else each thread's name, state and kernel wait channel from /proc."""
  gdb = shutil.which("gdb")
  if gdb is not None and sys.platform.startswith("linux"):
    command = [gdb, "-p", str(os.getpid()), "-batch", "-nx",
               "-iex", "set debuginfod enabled off", "-ex", "set pagination off",
               "-ex", "thread apply all bt 30"]
    killer = shutil.which("timeout")
    if killer is not None:
      # While gdb is attached every thread of this process is stopped, this one too, so
      # subprocess.run's own timeout cannot fire: a separate `timeout` kills a gdb that
      # hangs, and the shell then continues this process (left stopped by the attach).
      command = ["sh", "-c", '"$@"; kill -CONT "$PPID"', "sh",
                 killer, "-s", "KILL", str(int(timeout))] + command
    try:
      # gdb writes to a file, not a pipe: this process cannot drain a pipe while gdb holds
      # it stopped, so gdb would block on a full pipe (64 KiB, a few dozen threads' stacks)
      # until the timeout killed it.
      with tempfile.TemporaryFile("w+") as output:
        subprocess.run(command, stdout=output, stderr=subprocess.DEVNULL, timeout=timeout + 30)
        output.seek(0)
        stacks = "\n".join(line.rstrip("\n") for line in output
                           if line.startswith(("Thread ", "#")))
      if stacks:
        return stacks
    except (OSError, subprocess.SubprocessError):
      pass
  lines = []
  task_dir = f"/proc/{os.getpid()}/task"
  for tid in sorted(os.listdir(task_dir), key=int) if os.path.isdir(task_dir) else []:
    def read(name: str) -> str:
      try:
        with open(os.path.join(task_dir, tid, name)) as f:
          return f.read().strip()
      except OSError:
        return "?"
    state = read("stat").rsplit(")", 1)[-1].split()[:1]
    lines.append(f"thread {tid} {read('comm')!r} state {''.join(state) or '?'} "
                 f"wchan {read('wchan') or '-'}")
  return "gdb unavailable; threads:\n" + "\n".join(lines)


class Watchdog:
  """Ends the process when `beat()` has not been called for too long (see module doc).

    with Watchdog("train", describe_state=lambda: ..., dump_dir=workdir):
      for step in ...:
        ...
        watchdog.beat()
  """

  def __init__(self, what: str, *, stall_factor: float = 20.0,
               min_stall_seconds: float = 300.0, startup_seconds: float = 1800.0,
               pause_seconds: float = 30.0,
               describe_state: Callable[[], str] | None = None, dump_dir: str | None = None,
               stream: TextIO | None = None,
               on_stall: Callable[[str], None] | None = None):
    """what: the loop's name in the message ('train', 'pseudo-label', 'evaluate').
    stall_factor, min_stall_seconds: the limit on the time since the last beat.
    startup_seconds: the limit before the first beat (data loading, compilation).
    pause_seconds: an overrun of the watcher's own wait longer than this, while the process
      used under half a core, is a pause of the process, not counted (module doc).
    describe_state: returns the last intact state for the message (read from files).
    on_stall: replaces the exit (for tests of the detection itself); gets the message."""
    if min(stall_factor, min_stall_seconds, startup_seconds, pause_seconds) <= 0:
      raise ValueError("watchdog limits must be positive: stall_factor "
                       f"{stall_factor}, min_stall_seconds {min_stall_seconds}, "
                       f"startup_seconds {startup_seconds}, pause_seconds {pause_seconds}")
    self.what = what
    self.stall_factor = stall_factor
    self.min_stall_seconds = min_stall_seconds
    self.startup_seconds = startup_seconds
    self.pause_seconds = pause_seconds
    self.paused_seconds = 0.0     # time the process was seen stopped, not counted
    self.describe_state = describe_state
    self.dump_dir = dump_dir
    self.stream = stream
    self.on_stall = on_stall
    self._intervals: collections.deque[float] = collections.deque(maxlen=_HISTORY)
    self._last = time.monotonic()
    self._beats = 0
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # The loop's side.
  def beat(self) -> None:
    now = time.monotonic()
    with self._lock:
      if self._beats:
        self._intervals.append(now - self._last)
      self._last = now
      self._beats += 1

  def limit_seconds(self) -> float:
    """The current limit on the time since the last beat."""
    with self._lock:
      if not self._beats:
        return self.startup_seconds
      median = statistics.median(self._intervals) if self._intervals else 0.0
    return max(self.min_stall_seconds, self.stall_factor * median)

  def __enter__(self) -> "Watchdog":
    self._last = time.monotonic()
    self._thread = threading.Thread(target=self._watch, name=f"watchdog-{self.what}",
                                    daemon=True)
    self._thread.start()
    with _active_lock:
      _active.append(self)
    return self

  def __exit__(self, *exc) -> None:
    with _active_lock:
      if self in _active:
        _active.remove(self)
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  # The watching thread's side.
  def _watch(self) -> None:
    # Each round first takes out of the idle time any pause of the process since the
    # previous round (`expected`: how long that round meant to wait), then checks the limit.
    checked, cpu_checked, expected = time.monotonic(), time.process_time(), 0.0
    while not self._stop.is_set():
      now, cpu = time.monotonic(), time.process_time()
      self._discount_pause(checked, now - checked - expected, cpu - cpu_checked)
      checked, cpu_checked = now, cpu
      limit = self.limit_seconds()
      with self._lock:
        idle = time.monotonic() - self._last
        beats = self._beats
        median = statistics.median(self._intervals) if self._intervals else None
      if idle > limit:
        if time.monotonic() - checked > self.pause_seconds:
          expected = 0.0      # stopped since this round's pause check: check again first
          continue
        self._report(idle, limit, beats, median)
        return
      # The limit drops from startup_seconds to the floor at the first beat: poll often
      # enough for either.
      expected = min(1.0, max(0.05, min(limit - idle, self.min_stall_seconds) / 2))
      self._stop.wait(expected)

  def _discount_pause(self, started: float, overrun: float, cpu_seconds: float) -> None:
    """Takes a pause of the whole process out of the idle time: the watcher's round that
    began at `started` overran its wait by `overrun` seconds while the process used
    `cpu_seconds` of CPU time (a stopped process uses none after the first second at most; a
    busy or hung one keeps the watcher on time or uses the CPU)."""
    if overrun <= self.pause_seconds or cpu_seconds >= 0.5 * (overrun + 1.0):
      return
    with self._lock:
      if self._last < started + overrun:   # the last beat came before the pause ended
        self._last = min(self._last + overrun, time.monotonic())
    self.paused_seconds += overrun
    print(f"watchdog {self.what}: the process was paused for {overrun:.0f} s "
          "(not counted as a stall)", file=self.stream or sys.stderr, flush=True)

  def _report(self, idle: float, limit: float, beats: int, median: float | None) -> None:
    process = ""
    if "jax" in sys.modules:
      import jax  # already imported by the loop being watched; asks nothing of its runtime
      if jax.process_count() > 1:
        process = f"process {jax.process_index()} of {jax.process_count()}: "
    if median is not None:
      pace = f"median step {median:.3g} s over the last {len(self._intervals)}"
    else:
      pace = "no step interval measured yet" if beats else "before its first completed step"
    try:
      state = self.describe_state() if self.describe_state else "no state recorded"
    except Exception as error:  # the message must get out whatever the state looks like
      state = f"state unknown ({type(error).__name__}: {error})"
    message = (f"WATCHDOG {process}{self.what}: no step completed for {idle:.0f} s after "
               f"{beats} steps (limit {limit:.0f} s; {pace}); stopping. {state}. "
               f"Resume with: {resume_command()}")
    if self.on_stall is not None:
      self.on_stall(message)
      return
    self._dump_and_exit(message)

  def _dump_and_exit(self, message: str) -> None:
    stream = self.stream or sys.stderr
    stream.write(message + "\n")
    stream.flush()
    with tempfile.TemporaryFile("w+") as python_stacks:
      faulthandler.dump_traceback(file=python_stacks, all_threads=True)
      python_stacks.seek(0)
      dump = (f"== Python stacks (all threads) ==\n{python_stacks.read()}\n"
              f"== Native stacks ==\n{_native_stacks()}\n")
    stream.write(dump)
    stream.flush()
    if self.dump_dir is not None:
      path = os.path.join(self.dump_dir, f"watchdog-{os.getpid()}.txt")
      try:
        os.makedirs(self.dump_dir, exist_ok=True)
        with open(path, "w") as f:
          f.write(f"{message}\n\n{dump}")
        stream.write(f"WATCHDOG stacks written to {path}\n")
      except OSError as error:
        stream.write(f"WATCHDOG could not write {path}: {error}\n")
      stream.flush()
    os._exit(EXIT_CODE)
