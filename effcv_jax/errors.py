"""Errors a user can fix from the message alone, and how entry points report them.

Every error the project raises for a mistake in the command, the config, the data or
a file on disk derives from UserError; its message names the key or file, what is
wrong with it and what to do. experiments/cli.run ends an entry point on one of
them (or on a full disk) with one line on stderr and exit status EXIT_USER_ERROR,
the traceback only with --verbose; any other exception keeps its traceback.

    UserError
      ConfigError          a config key has a bad value or combination of values
      ResumeRefusedError   a workdir holds a run that this command must not continue
      WorkdirLockedError   another live process holds the workdir
      FileFormatError      a file is unreadable, truncated or of another format
      MissingFileError     a file or directory the command names does not exist
      DiskFullError        a write failed for lack of space on a named device
    (and, defined beside the code that raises them: data.DataError,
    checkpoint.CheckpointMismatchError, pretrained.WeightImportError,
    task.NonFiniteLossError, config_utils.ConfigKeyError)
"""

import errno
import os
from typing import Iterator

EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error whose message says what to change; reported as one line by entry points."""


class ConfigError(UserError, ValueError):
  """A config key has a value the run cannot use; the message names the key (dotted)."""


class ResumeRefusedError(UserError, ValueError):
  """A workdir holds a run (or a finished teacher) that this config must not continue or
  modify; the message names the differing keys with both values."""


class WorkdirLockedError(UserError, RuntimeError):
  """Another live process holds the workdir's lock."""


class FileFormatError(UserError, ValueError):
  """A file is not what it should be (truncated, corrupt, another format); the message
  names the file and what to do."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the command or config names does not exist; the message names
  it and the setting that points there."""


class DiskFullError(UserError, OSError):
  """A write failed because its device is full; the message names the device."""


def chain(error: BaseException) -> Iterator[BaseException]:
  """error, its __cause__ (or __context__), theirs, ... (each once)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_full_message(path: str | None) -> str:
  """'no space left on device DEVICE (mounted at M)' for the filesystem holding `path`."""
  if not path:
    return "no space left on device"
  probe = os.path.abspath(path)
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  mount = probe
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  device = _device_of(mount)
  return (f"no space left on device {device} (mounted at {mount}) while writing {path}"
          if device else f"no space left on the device mounted at {mount} while writing {path}")


def _device_of(mount: str) -> str:
  """The device name /proc/mounts gives for mount point `mount` ('' if unknown)."""
  try:
    with open("/proc/mounts") as f:
      rows = [line.split() for line in f]
  except OSError:
    return ""
  devices = [row[0] for row in rows if len(row) > 1 and row[1] == mount]
  return devices[-1] if devices else ""


def one_line_message(error: BaseException) -> str | None:
  """The one-line report of a known error (a UserError, or a full disk anywhere in the
  exception's chain); None for any other error, which keeps its traceback."""
  for link in chain(error):
    if isinstance(link, UserError):
      return " ".join(str(link).split())
  for link in chain(error):
    if isinstance(link, OSError) and link.errno == errno.ENOSPC:
      return disk_full_message(link.filename) + ": free space and rerun the same command"
  return None
