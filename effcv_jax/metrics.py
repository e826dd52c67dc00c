"""Metric writers (JSON lines + TensorBoard) and a progress line with rate and ETA."""

import errno
import json
import logging
import os
import time
from typing import Any, Mapping

import numpy as np

from effcv_jax import errors, files


def _plain(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    return value.item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  return value


def read_records(workdir: str) -> list[dict[str, Any]]:
  """The records of workdir/metrics.jsonl ({"step", "split", **metrics}, as MetricWriter
  wrote them), in file order; [] without a log. A torn last line (a killed process) and
  blank lines are skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n") and line.strip()]


def eval_curve(workdir: str, metric: str = "accuracy") -> list[list[float]]:
  """[[step, value], ...] of `metric` in workdir/metrics.jsonl's evaluation records (split
  'eval'), in step order: a run's validation or test curve. [] without a log."""
  return sorted([record["step"], record[metric]] for record in read_records(workdir)
                if record.get("split") == "eval" and metric in record)


class MetricWriter:
  """Appends `{"step": s, "split": ..., **metrics}` to workdir/metrics.jsonl and TensorBoard.

  On resume, `truncate_after(step)` drops records newer than the restored
  checkpoint so the log reads as one uninterrupted run. Only process 0 writes.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    # A last line without its newline was torn by a killed process: dropped.
    kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
    if len(kept) < len(lines):     # untouched when there is nothing to drop
      files.write_text_atomic(self.path, "".join(kept))

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
      raise errors.DiskFullError(f"{errors.disk_full_message(self.path)}: free space and rerun "
                                 "the same command (it resumes from the last checkpoint)") from e
    for name, value in record.items():
      if name not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{split}/{name}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
  """Measures the throughput between calls and formats the progress line: step of total,
  metrics, images per second, estimated time left."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def update(self, step: int, metrics: Mapping[str, float]) -> tuple[str, float]:
    """Returns the progress line and the images per second since the last update."""
    now = time.perf_counter()
    rate = (step - self._last_step) * self.batch_size / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) * self.batch_size / max(rate, 1e-9)
    values = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    return (f"step {step}/{self.total_steps} | {values} | {rate:.0f} img/s | "
            f"eta {format_duration(eta)}"), rate


class _DropLibraryInfo(logging.Filter):
  """Drops INFO records from orbax/grain internals (checkpoint bookkeeping noise) and
  JAX's note that it found no TPU or GPU backend."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = (any(f"{os.sep}{name}{os.sep}" in record.pathname for name in ("orbax", "grain"))
             or record.name == "jax._src.xla_bridge")
    return record.levelno > logging.INFO or not noisy


def quiet_library_logs() -> None:
  """Keeps the progress lines readable: orbax/grain/JAX-backend INFO messages are not shown."""
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_DropLibraryInfo())
