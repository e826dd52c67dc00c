"""A training run's directory on disk: its config.json, results.json and checkpoints.

    WORKDIR/config.json        the config the run was started with (written atomically)
    WORKDIR/results.json       the final metrics, written when a session reaches num_steps
    WORKDIR/checkpoints/<step> orbax checkpoints (effcv_jax/checkpoint.py)
    WORKDIR/.lock              while a process trains there (effcv_jax/workdir_lock.py)

A workdir holds one run: on resume every key of the config must equal the saved
config.json, except the keys of RESUMABLE_KEYS (e.g. num_steps, to train longer),
which change when or how fast things happen but not what is computed (check_config).
A finished run reused as a teacher must match its teacher config and is only read
(check_reused_teacher, check_finished_run).
"""

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from configs.common import base_config
from effcv_jax import files, sharding
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.errors import (ConfigError, FileFormatError, MissingFileError,
                              ResumeRefusedError)
from effcv_jax.task import Task, TrainState, init_task_and_state

# Keys that may differ between the sessions of one run: they change when or how often
# things happen, how fast, or for how long, never what a step computes, what the run
# trains on or what it is evaluated on. Every other key must equal the saved config.json.
# A key ending in ".*" stands for every key of that group.
RESUMABLE_KEYS = (
    # Train longer (or stop earlier). The learning-rate schedule then spans the new
    # num_steps from the resumed step on: the one change here that alters later updates,
    # and the documented way to extend a run.
    "num_steps",
    # When metrics are logged, the model evaluated and checkpoints written, and how many
    # are kept: a resumed run is bit-identical to an uninterrupted one whatever they are.
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    # Evaluation batches are padded and masked, so every example counts once whatever the
    # batch size: the same metrics up to float summation order.
    "eval_batch_size",
    # When the watchdog ends a stalled run, not what the run computes.
    "watchdog.*",
    # How convolutions run: the same parameters and, up to float rounding, the same outputs.
    "conv_backend",
    # Whether blocks are recomputed in the backward pass: the same parameters and, up to
    # float rounding, the same updates (a run may resume with it to fit in memory).
    "remat",
    # Pretrained weights are read when a run starts (step 0), never on resume.
    "init_from.*",
    # Where the training records are mapped: the same batches with any worker count.
    "data_workers",
)
# Every other key of configs/common.py changes the data (dataset, splits, seeds, image
# size, preprocessing), the model, the augmentation, the loss or the optimiser, so it
# must match; so must any key a config adds (e.g. a model_kwargs entry).

UNSET = object()     # a key one of the two configs does not have


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def read_json(path: str) -> Any:
  """The JSON value in `path`; FileFormatError naming the file if it is not valid JSON."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    raise FileFormatError(
        f"{path} is not valid JSON ({e}; {len(text)} bytes): the file is truncated or "
        "was edited. Restore it from a copy (config.json: the config the run was started "
        "with, as JSON), or move the workdir aside and use a new --workdir.") from e


def read_saved_config(workdir: str) -> dict[str, Any] | None:
  """workdir/config.json as a dict; None if the workdir holds no config.json."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return None
  saved = read_json(path)
  if not isinstance(saved, dict):
    raise FileFormatError(f"{path} holds a JSON {type(saved).__name__}, not a config "
                          "(an object of keys): restore it, or use a new --workdir.")
  return saved


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'optimizer.lr': 0.1, ...}: the leaves of nested mappings by dotted key (an empty
  group has no leaves)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def is_resumable_key(key: str) -> bool:
  """Whether `key` (dotted) may change between sessions of one run (RESUMABLE_KEYS)."""
  return any(key == allowed or (allowed.endswith(".*") and key.startswith(allowed[:-1]))
             for allowed in RESUMABLE_KEYS)


def differing_keys(saved: Mapping[str, Any], config: ml_collections.ConfigDict
                   ) -> list[tuple[str, Any, Any]]:
  """(dotted key, saved value, current value) of every key outside RESUMABLE_KEYS whose
  values differ, sorted by key.

  `saved` is a config as JSON (config.json); values are compared as JSON (tuples as
  lists). A key only one side has (an older config.json lacks the keys a newer version
  of the project added, such as conv_backend or watchdog) is compared with its default
  in configs/common.py base_config; a key without a default there (e.g. a model_kwargs
  entry) differs from a config that does not set it, since it may change the model.
  A value a side lacks is UNSET.
  """
  flat_saved = flatten(saved)
  flat_current = flatten(json.loads(config.to_json()))
  defaults = flatten(json.loads(base_config().to_json()))
  changed = []
  for key in sorted(set(flat_saved) | set(flat_current)):
    if is_resumable_key(key):
      continue
    there = flat_saved.get(key, defaults.get(key, UNSET))
    now = flat_current.get(key, defaults.get(key, UNSET))
    if there != now:
      changed.append((key, there, now))
  return changed


def config_fingerprint(config: ml_collections.ConfigDict, ignore: Sequence[str] = ()) -> str:
  """sha256 (hex) of what makes a run of `config` the run it is: its keys outside
  RESUMABLE_KEYS whose values differ from configs/common.py base_config's defaults (so a
  key added to the project later, at its default, leaves older fingerprints valid). Two
  configs that differing_keys finds equal have the same fingerprint. `ignore`: top-level
  keys left out (ones that name or group runs without changing them)."""
  if any(key in config for key in ignore):
    config = config.copy_and_resolve_references()
    with config.unlocked():
      for key in ignore:
        if key in config:
          del config[key]
  flat_current = flatten(json.loads(config.to_json()))
  defaults = flatten(json.loads(base_config().to_json()))
  identity = {key: value for key, value in sorted(flat_current.items())
              if not is_resumable_key(key) and defaults.get(key, UNSET) != value}
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _show(value: Any) -> str:
  """A config value as the messages show it."""
  return "not set" if value is UNSET else repr(value)


def _describe_differences(changed: Sequence[tuple[str, Any, Any]], prefix: str = "",
                          now: str = "now") -> str:
  """'key: A there, B now; ...' for differing_keys' triples."""
  return "; ".join(f"{prefix}{key}: {_show(there)} there, {_show(value)} {now}"
                   for key, there, value in changed)


def _flags_to_restore(changed: Sequence[tuple[str, Any, Any]], prefix: str = "") -> str:
  """' (--config.K=V ...)' restoring the saved scalar values, '' if none is a scalar."""
  scalars = [f"--config.{prefix}{key}={there}" for key, there, _ in changed
             if isinstance(there, (str, int, float, bool))]
  return f" ({' '.join(scalars)})" if scalars else ""


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume the run in `workdir` with a config that differs from its
  config.json in a key outside RESUMABLE_KEYS; writes nothing.

  Raises ResumeRefusedError naming every differing key with both values, and
  FileFormatError if config.json is not valid JSON. A key an older config.json lacks
  is compared with its default in configs/common.py, or differs if it has none (see
  differing_keys). A workdir without config.json (fresh, or a run that saved no
  checkpoint yet) accepts any config.
  """
  saved = read_saved_config(workdir)
  if saved is None:
    return
  changed = differing_keys(saved, config)
  if changed:
    path = config_path(workdir)
    names = ", ".join(key for key, _, _ in changed)
    raise ResumeRefusedError(
        f"{workdir} holds a run with a different {names} ({_describe_differences(changed)}), "
        "whose checkpoints this config cannot resume: these keys change what the run trains "
        "on, is evaluated on, or how. Use a new --workdir, or the config the run was "
        f"started with ({path}){_flags_to_restore(changed)}. Only "
        f"{', '.join(RESUMABLE_KEYS)} may change on resume.")


def check_finished_run(workdir: str, setting: str,
                       num_steps: int | None = None) -> dict[str, Any]:
  """results.json of the finished run in `workdir`, which another run (named by its
  config key `setting`, e.g. 'teacher_workdir') reads and never writes.

  Finished: workdir/results.json exists, its step is `num_steps` (default the run's own
  config.json num_steps) and no checkpoint is newer (the run is not being continued).
  Raises ConfigError if `workdir` is not a training workdir, ResumeRefusedError if its
  run has not finished at that step, FileFormatError for unreadable JSON files.
  """
  fix = f"or clear {setting} to train a new teacher inside the workdir"
  if not os.path.isdir(workdir):
    raise ConfigError(f"{setting}={workdir!r} does not exist: set it to the workdir of a "
                      f"finished training run (holding config.json and results.json), {fix}")
  saved = read_saved_config(workdir)
  if saved is None:
    raise ConfigError(f"{setting}={workdir!r} holds no config.json, so no training run: set it "
                      f"to the workdir of a finished training run, {fix}")
  results_path = os.path.join(workdir, "results.json")
  if not os.path.exists(results_path):
    raise ResumeRefusedError(
        f"{setting}={workdir!r} holds a run that has not finished (no results.json): a "
        f"reused teacher is never trained further. Finish it with its own command first, "
        f"{fix}")
  results = read_json(results_path)
  step = results.get("step") if isinstance(results, dict) else None
  checkpoints = complete_checkpoint_steps(workdir)
  if num_steps is not None and step != num_steps:
    raise ResumeRefusedError(
        f"{setting}={workdir!r} holds a run that finished at step {step}, not at the "
        f"{num_steps} steps this config asks for: a reused teacher is never trained further. "
        f"Set teacher.num_steps={step} (--config.teacher.num_steps={step}) to use it as it "
        f"is, {fix}")
  if num_steps is None and step != saved.get("num_steps"):
    raise ResumeRefusedError(
        f"{setting}={workdir!r} holds a run at step {step} of its num_steps="
        f"{saved.get('num_steps')} ({config_path(workdir)}): it has not finished, and a "
        f"reused teacher is never trained further. Finish it with its own command first, "
        f"{fix}")
  if not checkpoints or checkpoints[-1] != step:
    latest = f"step {checkpoints[-1]}" if checkpoints else "none"
    raise ResumeRefusedError(
        f"{setting}={workdir!r}: its results.json is of step {step} but its latest checkpoint "
        f"is {latest} in {os.path.join(workdir, 'checkpoints')} (the run is being continued, "
        f"or its checkpoints were removed): finish or restore that run first, {fix}")
  return results


def check_reused_teacher(teacher: ml_collections.ConfigDict, workdir: str,
                         setting: str = "teacher_workdir") -> dict[str, Any]:
  """results.json of the finished run in `workdir` to be reused, unchanged, as the teacher
  `teacher` (a config's `teacher` group; `setting` the config key naming the workdir).

  The run must have finished at teacher.num_steps (check_finished_run) and its
  config.json must equal `teacher` on every key outside RESUMABLE_KEYS (as for a
  resume, see differing_keys). Raises ConfigError, ResumeRefusedError or
  FileFormatError saying what differs and what to do; reads, never writes.
  """
  results = check_finished_run(workdir, setting, teacher.num_steps)
  changed = differing_keys(read_saved_config(workdir), teacher)
  if changed:
    names = ", ".join(f"teacher.{key}" for key, _, _ in changed)
    raise ResumeRefusedError(
        f"{setting}={workdir!r} holds a teacher with a different {names} "
        f"({_describe_differences(changed, 'teacher.', 'in this config')}): a reused "
        f"teacher must be the one this config describes. Set the teacher keys to those of "
        f"{config_path(workdir)}{_flags_to_restore(changed, 'teacher.')}, or clear {setting} "
        "to train a new teacher inside the workdir")
  return results


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json atomically (process 0)."""
  if jax.process_index() == 0:
    files.write_text_atomic(config_path(workdir), config.to_json(indent=2))


def save_or_check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json; on resume refuses a config that differs (check_config)."""
  check_config(config, workdir)
  write_config(config, workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  saved = read_saved_config(workdir)
  if saved is None:
    raise MissingFileError(f"{config_path(workdir)} not found: is {workdir!r} a training "
                           "workdir?")
  return ml_collections.ConfigDict(saved)


def finished_results(workdir: str, num_steps: int) -> dict[str, Any] | None:
  """results.json of a training run in `workdir` that reached num_steps, else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  results = read_json(path)
  return results if isinstance(results, dict) and results.get("step") == num_steps else None


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
  """(config, task, state, step) of the latest checkpoint of the training run in `workdir`
  (supervised, or semi-supervised: then the train state without the algorithm's state).

  image_shape: (H, W, C) of the images the model is applied to (before task.input_size).
  config: the run's config, e.g. with another conv_backend; default its config.json.
  """
  config = load_config(workdir) if config is None else config
  task, template = init_task_and_state(config, image_shape, mesh, abstract=True)
  checkpointer = Checkpointer(workdir)
  step = checkpointer.latest_step()
  if step is None:
    checkpointer.close()
    raise MissingFileError(f"no checkpoint in {checkpointer.directory}: the run saved none "
                           "yet; train it first")
  try:
    # A semi-supervised run (ssl/run.py) saves {'train': TrainState, 'ssl': algorithm state}.
    algorithm_state = checkpointer.saved_part(step, "ssl", sharding.replicated(mesh))
    if algorithm_state is None:
      state = checkpointer.restore(step, template)
    else:
      state = checkpointer.restore(step, {"train": template, "ssl": algorithm_state})["train"]
  finally:
    checkpointer.close()
  return config, task, state, step
