"""An exclusive lock on a workdir, held by the one process that writes it.

    with workdir_lock.hold(workdir):
      ...   # train: checkpoints, metrics.jsonl, results.json

The lock is an fcntl.flock on WORKDIR/.lock, a file that records its holder (pid,
host, command) as JSON. A second process asking for it fails at once with
errors.WorkdirLockedError naming the workdir and the holder. The kernel releases a
flock when its process ends, however it ends, so a lock left by a killed process
(SIGKILL, the OOM killer, a watchdog exit) is taken over by the next run, which logs
the dead holder. Release deletes the file, and the workdir too when acquiring created
it and nothing else was written there, so a refused or finished session leaves no
trace. A lock is re-entrant within one process (a nested run in the same directory).
Multi-process runs lock on process 0 only: the other processes write nothing that
the lock guards.
"""

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from typing import Any, Iterator

import jax
from absl import logging

from effcv_jax.errors import WorkdirLockedError

LOCK_NAME = ".lock"
# How long a refused process waits for a holder that has the lock but has not yet
# written its record (the few microseconds between flock and write).
_RECORD_WAIT_SECONDS = 1.0

# Locks this process holds: real path of the workdir -> [lock, nesting depth].
_held: dict[str, list[Any]] = {}


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_NAME)


def this_process() -> dict[str, Any]:
  """The record a holder writes into the lock file: pid, host and command line."""
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "command": " ".join(shlex.quote(arg) for arg in [sys.executable, *sys.argv])}


def describe_holder(record: dict[str, Any] | None) -> str:
  """'pid N on host H (command: C)', or what is known of a holder without a record."""
  if not record:
    return "a process that has not recorded itself yet"
  return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
          f"(command: {record.get('command', '?')})")


def read_holder(path: str) -> dict[str, Any] | None:
  """The holder record in lock file `path`; None if it is absent, empty or unreadable."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


class WorkdirLock:
  """The lock on one workdir; acquire() / release(), or use `hold`."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = lock_path(workdir)
    self._fd: int | None = None
    self._created_dirs: list[str] = []

  def acquire(self) -> None:
    """Takes the lock (creating the workdir if needed) or raises WorkdirLockedError."""
    self._created_dirs = _make_dirs(self.workdir)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        self._refuse()
      # A holder deletes the file before it unlocks: a lock on a deleted (or replaced)
      # file is no lock on this workdir; open the current file again.
      try:
        same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same_file = False
      if same_file:
        break
      os.close(fd)
    self._fd = fd
    stale = read_holder(self.path)
    if stale:
      logging.warning("%s: found a stale lock of %s, which ended without releasing it; "
                      "taken over", self.workdir, describe_holder(stale))
    record = json.dumps(this_process()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    os.fsync(fd)

  def _refuse(self) -> None:
    """Raises WorkdirLockedError naming the live holder of the lock."""
    deadline = time.monotonic() + _RECORD_WAIT_SECONDS
    holder = read_holder(self.path)
    while holder is None and time.monotonic() < deadline:
      time.sleep(0.05)
      holder = read_holder(self.path)
    self._remove_created_dirs()
    raise WorkdirLockedError(
        f"{self.workdir} is in use by {describe_holder(holder)}: two processes must not "
        f"write one workdir. Wait for that process to finish (or stop it), or use another "
        f"--workdir. The lock is {self.path}; a process that dies releases it.")

  def release(self) -> None:
    """Deletes the lock file, then unlocks; removes the directories acquire() created
    if they are empty."""
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None
    self._remove_created_dirs()

  def _remove_created_dirs(self) -> None:
    """Removes the directories acquire() created, deepest first, while they are empty."""
    for directory in reversed(self._created_dirs):
      try:
        os.rmdir(directory)
      except OSError:
        break
    self._created_dirs = []


def _make_dirs(path: str) -> list[str]:
  """Creates `path` and its missing parents; returns those it created, outermost first."""
  missing = []
  probe = os.path.abspath(path)
  while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
    missing.append(probe)
    probe = os.path.dirname(probe)
  os.makedirs(path, exist_ok=True)
  return list(reversed(missing))


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the lock of `workdir` for the block (process 0 of a multi-process run only;
  re-entrant within a process). Raises WorkdirLockedError if another process holds it."""
  if jax.process_index() != 0:
    yield
    return
  key = os.path.realpath(workdir)
  if key in _held:
    _held[key][1] += 1
    try:
      yield
    finally:
      _held[key][1] -= 1
    return
  lock = WorkdirLock(workdir)
  lock.acquire()
  _held[key] = [lock, 1]
  try:
    yield
  finally:
    del _held[key]
    lock.release()
