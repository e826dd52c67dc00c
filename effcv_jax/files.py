"""Atomic file writes: a file that exists is complete, even if the process was killed.

Each writer writes `<path>.tmp` in the same directory, fsyncs it and renames it over
`path` with os.replace (atomic on POSIX filesystems). A killed writer leaves at most a
stale `.tmp` beside the previous complete file.
"""

import json
import os
from typing import Any, Callable, Mapping

import numpy as np


def replace_atomically(path: str, write: Callable[[Any], None], mode: str) -> None:
  """Calls write(f) on `<path>.tmp` opened with `mode`, fsyncs, then renames it to `path`."""
  tmp = path + ".tmp"
  with open(tmp, mode) as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  replace_atomically(path, lambda f: np.savez(f, **arrays), "wb")


def write_json_atomic(path: str, obj: Any) -> None:
  replace_atomically(path, lambda f: json.dump(obj, f, indent=2), "w")


def write_text_atomic(path: str, text: str) -> None:
  replace_atomically(path, lambda f: f.write(text), "w")
