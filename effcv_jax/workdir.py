"""A training run's directory on disk: its config.json, results.json and checkpoints.

    WORKDIR/config.json        the config the run was started with (written atomically)
    WORKDIR/results.json       the final metrics, written when a session reaches num_steps
    WORKDIR/checkpoints/<step> orbax checkpoints (effcv_jax/checkpoint.py)

A workdir holds one run: a config whose identity keys (model, model_kwargs,
num_classes, dataset) differ from the saved ones is refused. Other keys may change
between sessions (e.g. num_steps to train longer); keys a newer version of the
project adds (conv_backend, watchdog) are read with their defaults from an older
config.json.
"""

import json
import os
from typing import Any

import jax
import ml_collections

from effcv_jax import files
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.task import Task, TrainState, init_task_and_state

IDENTITY_KEYS = ("model", "model_kwargs", "num_classes", "dataset")


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a config whose identity keys (IDENTITY_KEYS) differ from those of the run
  already in `workdir` (its config.json); writes nothing."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = json.loads(config.to_json())
  changed = [k for k in IDENTITY_KEYS if saved.get(k) != current.get(k)]
  if changed:
    details = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in changed)
    raise ValueError(f"{workdir} holds a run with a different {', '.join(changed)} ({details}), "
                     "whose checkpoints this config cannot resume. Use a new --workdir, or "
                     f"the config the run was started with ({path}).")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json atomically (process 0)."""
  if jax.process_index() == 0:
    files.write_text_atomic(config_path(workdir), config.to_json(indent=2))


def save_or_check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json; on resume refuses a config that changes the model."""
  check_config(config, workdir)
  write_config(config, workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  path = config_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def finished_results(workdir: str, num_steps: int) -> dict[str, Any] | None:
  """results.json of a training run in `workdir` that reached num_steps, else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get("step") == num_steps else None


def complete_checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in workdir/checkpoints, ascending, read from the
  directory listing only (orbax renames a checkpoint to its step when it is complete;
  unfinished saves keep a temporary name). Takes no lock of a running program."""
  directory = os.path.join(workdir, "checkpoints")
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(n) for n in names
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def describe_checkpoints(workdir: str) -> str:
  """One phrase naming the last complete checkpoint of `workdir` (for the watchdog)."""
  steps = complete_checkpoint_steps(workdir)
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not steps:
    return f"no checkpoint saved yet in {directory}"
  return f"last intact checkpoint: step {steps[-1]} in {directory}"


def watchdog_limits(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Keyword arguments of watchdog.Watchdog from config.watchdog: stall_factor,
  min_stall_seconds, startup_seconds (the defaults where an older config lacks them)."""
  limits = dict(stall_factor=20.0, min_stall_seconds=300.0, startup_seconds=1800.0)
  limits.update({k: float(v) for k, v in dict(config.get("watchdog") or {}).items()})
  return limits


def restore_latest(workdir: str, image_shape: tuple[int, ...], mesh: jax.sharding.Mesh,
                   config: ml_collections.ConfigDict | None = None
                   ) -> tuple[ml_collections.ConfigDict, Task, TrainState, int]:
  """(config, task, state, step) of the latest checkpoint of the training run in `workdir`.

  image_shape: (H, W, C) of the images the model is applied to (before task.input_size).
  config: the run's config, e.g. with another conv_backend; default its config.json.
  """
  config = load_config(workdir) if config is None else config
  task, template = init_task_and_state(config, image_shape, mesh, abstract=True)
  checkpointer = Checkpointer(workdir)
  step = checkpointer.latest_step()
  if step is None:
    checkpointer.close()
    raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
  try:
    state = checkpointer.restore(step, template)
  finally:
    checkpointer.close()
  return config, task, state, step
