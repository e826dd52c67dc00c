"""Atomic file writes and safe reads of the project's array files.

Writes: each writer writes `<path>.tmp` in the same directory, fsyncs it and renames it
over `path` with os.replace (atomic on POSIX filesystems). A killed writer leaves at most
a stale `.tmp` beside the previous complete file; a writer that runs out of space removes
its `.tmp` and raises errors.DiskFullError naming the device.

Reads: `read_npz` opens a NumPy .npz archive without ever unpickling, and reports a file
that is not one (text, a single .npy, a pickle), is truncated or is corrupt as
errors.FileFormatError naming the file, what is wrong and what to do.
"""

import errno
import json
import os
import zipfile
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from effcv_jax import errors

_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_MAGIC = b"\x80"


def replace_atomically(path: str, write: Callable[[Any], None], mode: str) -> None:
  """Calls write(f) on `<path>.tmp` opened with `mode`, fsyncs, then renames it to `path`.

  Raises errors.DiskFullError (the `.tmp` removed, `path` unchanged) if the device is full.
  """
  tmp = path + ".tmp"
  try:
    with open(tmp, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    if os.path.exists(tmp):
      os.remove(tmp)
    raise errors.DiskFullError(
        f"{errors.disk_full_message(path)} ({path} is unchanged): free space and rerun the "
        "same command") from e
  os.replace(tmp, path)


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  replace_atomically(path, lambda f: np.savez(f, **arrays), "wb")


def write_json_atomic(path: str, obj: Any) -> None:
  replace_atomically(path, lambda f: json.dump(obj, f, indent=2), "w")


def write_text_atomic(path: str, text: str) -> None:
  replace_atomically(path, lambda f: f.write(text), "w")


def describe_start(head: bytes) -> str:
  """What the first bytes of a file that should be binary look like, as a phrase."""
  if not head:
    return "it is empty (0 bytes)"
  try:
    text = head.decode("utf8")
  except UnicodeDecodeError:
    return f"it starts with the bytes {head[:8].hex(' ')}"
  if all(c.isprintable() or c.isspace() for c in text):
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"it starts with text ({first_line[:40]!r})"
  return f"it starts with the bytes {head[:8].hex(' ')}"


def _npz_problem(head: bytes) -> str | None:
  """Why the file whose first bytes are `head` is not an npz archive (None if it may be)."""
  if head.startswith(_ZIP_MAGIC):
    return None
  if head.startswith(_NPY_MAGIC):
    return ("not an npz archive: it is a single .npy array (np.save); save named arrays "
            "with np.savez")
  if head.startswith(_PICKLE_MAGIC):
    return "not an npz archive: it is a Python pickle, which is never loaded"
  return f"not an npz archive: {describe_start(head)}"


def read_npz(path: str, remedy: str, keys: Sequence[str] | None = None
             ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Reads a NumPy .npz archive without unpickling anything.

  Args:
    path: the file (made absolute in messages).
    remedy: what the user should do about a bad file (how to re-create it), ending the
      message of a FileFormatError.
    keys: the arrays to read (those the file lacks are left out); None: all of them.
  Returns:
    ({name: array} of the arrays read, the names of every array in the file).
  Raises:
    errors.FileFormatError: the file is not an npz archive, is truncated or corrupt, or
      holds Python objects.
  """
  full = os.path.abspath(path)
  with open(full, "rb") as f:
    head = f.read(64)
  problem = _npz_problem(head)
  if problem is None:
    try:
      with np.load(full, allow_pickle=False) as npz:
        names = list(npz.files)
        wanted = names if keys is None else [k for k in keys if k in names]
        return {name: npz[name] for name in wanted}, names
    except zipfile.BadZipFile as e:
      size = os.path.getsize(full)
      problem = (f"truncated (no zip directory at the end of its {size} bytes)"
                 if "not a zip file" in str(e) else f"corrupt ({e})")
    except ValueError as e:
      problem = ("it holds Python objects (pickled arrays), which are never loaded"
                 if "pickle" in str(e) else f"corrupt ({e})")
    except (zlib.error, EOFError, OSError) as e:
      problem = f"truncated or corrupt ({type(e).__name__}: {e})"
  raise errors.FileFormatError(f"{full}: {problem}. {remedy}")
