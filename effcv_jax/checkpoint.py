"""orbax checkpoints of the train state and the grain data-iterator state.

Layout: WORKDIR/checkpoints/<step>/{state, data}. orbax writes each checkpoint
to a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoint as the latest one. Saves are asynchronous
(training continues while arrays are written); the data-iterator state is
captured synchronously at the save call.

Failures are told apart and reported in one message each:
  - a checkpoint whose saved structure or shapes differ from the config's train
    state: CheckpointMismatchError (resume with the run's own config);
  - a damaged checkpoint (a file missing, truncated or overwritten): FileFormatError
    naming it and the newest older checkpoint that restores intact, with the command
    that moves the damaged ones aside so that a rerun resumes from that one;
  - a save that ran out of space (raised by the next save or `wait` / `close`, since
    saves are asynchronous): errors.DiskFullError naming the device and the last
    intact checkpoint; the unfinished save is a temporary directory, never listed
    as a checkpoint and deleted by the next writer (remove_unfinished).
orbax's own log records and asyncio's leftovers about such a failure are dropped from
the log, since the error reports it.
"""

import errno
import logging
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from effcv_jax import errors
from effcv_jax.errors import UserError

# Marks of a full device in the text of tensorstore's errors (which are ValueErrors).
_DISK_FULL_MARKS = ("No space left on device", "os_error_code='28'")


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint does not fit the train state the current config builds."""


def _mismatch_summary(error: Exception, max_lines: int = 6) -> str:
  """The first lines of orbax's message, without its advice to restore partially."""
  text = str(error).split(" Truncating/padding is disabled")[0]
  lines = [line.strip() for line in text.splitlines()
           if line.strip() and "partial_restore" not in line]
  return " ".join(lines[:max_lines]).rstrip(".")


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` or an error in its chain is a write that found its device full
  (an OSError ENOSPC, or tensorstore's RESOURCE_EXHAUSTED error that wraps one)."""
  return any((isinstance(link, OSError) and link.errno == errno.ENOSPC)
             or any(mark in str(link) for mark in _DISK_FULL_MARKS) for link in errors.chain(error))


def describe_failure(error: BaseException, max_chars: int = 400) -> str:
  """The message of the error that caused `error` (following __cause__ to its end) in one
  line, without tensorstore's spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error) if not isinstance(error, KeyError) else str(error.args[0])
  text = " ".join(text.split("[tensorstore_spec")[0].split()).rstrip(". ")
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


# Set once this module has turned an orbax failure into its own error: what orbax and
# asyncio report about that failure afterwards (e.g. reads still in flight) is noise.
_failure_reported = False


def _is_reported_noise(text: str) -> bool:
  """Whether a log or unraisable message is about a failure this module reports itself."""
  return (any(mark in text for mark in _DISK_FULL_MARKS) or "Event loop is closed" in text
          or "Python is likely shutting down" in text
          or (_failure_reported and "exception was never retrieved" in text))


class _DropReportedFailures(logging.Filter):
  """Drops orbax's and asyncio's records about a failure that this module's errors report
  (a full disk; the leftovers of a failed restore)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname and record.name != "asyncio":
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += " ".join(str(link) for link in errors.chain(record.exc_info[1]))
    return not _is_reported_noise(text)


def _mark_reported(error: Exception) -> Exception:
  """`error`, after noting that a failure is being reported (see _is_reported_noise)."""
  global _failure_reported  # pylint: disable=global-statement
  _failure_reported = True
  return error


def _drop_reported_unraisables(previous_hook):
  """An unraisable hook that drops what tensorstore's callbacks raise once a failed read
  or write has closed orbax's event loop; passes anything else to `previous_hook`."""
  def hook(unraisable):
    if not _is_reported_noise(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}"):
      previous_hook(unraisable)
  hook.drops_reported_failures = True
  return hook


def quiet_reported_failures() -> None:
  """Installs (once) the log filter and unraisable hook for failures the errors report."""
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropReportedFailures) for f in logger.filters):
      logger.addFilter(_DropReportedFailures())
  if not getattr(sys.unraisablehook, "drops_reported_failures", False):
    sys.unraisablehook = _drop_reported_unraisables(sys.unraisablehook)


def _key_name(key: Any) -> str:
  """The name of one step of a pytree key path: a dict key, attribute or index."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'a/b/0/c': shape} of every array leaf of `tree` (saved metadata or a template)."""
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpointer:
  """Saves and restores {'state': pytree, 'data': grain iterator} by step, keeping N."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
               remove_unfinished: bool = False):
    """remove_unfinished: delete the temporary directories of saves that a killed
    process left (only the run that writes this workdir may: a reader would delete
    the save in progress of a live run)."""
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    # create=False: opening a workdir writes nothing; the first save creates the directory.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=False,
        cleanup_tmp_directories=remove_unfinished and os.path.isdir(self.directory))
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    quiet_reported_failures()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def complete_steps(self) -> list[int]:
    """The steps of the complete checkpoints on disk, in increasing order (a save in
    progress or interrupted is a temporary directory and not among them)."""
    try:
      names = os.listdir(self.directory)
    except FileNotFoundError:
      return []
    return sorted(int(name) for name in names
                  if name.isdigit() and os.path.isdir(os.path.join(self.directory, name)))

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None) -> None:
    """Starts saving checkpoint `step` (asynchronously); raises errors.DiskFullError if an
    earlier save ran out of space."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      if is_disk_full(e):
        raise _mark_reported(self._disk_full_error()) from e
      raise

  def _disk_full_error(self) -> errors.DiskFullError:
    """The error of a save that ran out of space, naming the last intact checkpoint."""
    steps = self.complete_steps()
    kept = (f"The last intact checkpoint is step {steps[-1]} in {self.directory} (unchanged; "
            "the unfinished save is removed by the next run)" if steps else
            "No checkpoint had been saved yet")
    return errors.DiskFullError(
        f"saving a checkpoint failed: {errors.disk_full_message(self.directory)}. {kept}. "
        "Free space on that device and rerun the same command"
        + (" to resume from it." if steps else "."))

  def restore(self, step: int, abstract_state: Any,
              data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Restores the state into the structure, shapes and shardings of `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with .sharding) or arrays;
    `data_iterator`, if given, is moved to the saved position in place. Raises
    CheckpointMismatchError if the saved arrays have other shapes or structure, and
    FileFormatError if the checkpoint is damaged (naming an older intact one).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self._restore(step, abstract, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      # Marked before the diagnosis: asyncio may log this failure's leftover reads (and
      # those of the diagnostic reads) while the older checkpoints are tried.
      _mark_reported(e)
      raise self._restore_error(step, abstract, data_iterator, e) from e

  def _restore(self, step: int, abstract: Any,
               data_iterator: grain.DatasetIterator | None) -> Any:
    """orbax's restore of checkpoint `step` into `abstract`, without error translation."""
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def _saved_metadata(self, step: int) -> Any:
    """The tree of the state saved at `step` with array metadata (.shape, .dtype) as
    leaves, from its metadata file (raises if unreadable)."""
    handler = ocp.StandardCheckpointHandler()
    try:
      metadata = handler.metadata(epath.Path(self.directory) / str(step) / "state")
    finally:
      handler.close()
    return getattr(metadata, "tree", metadata)

  def _saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """leaf_shapes of the state saved at `step`, from its metadata (raises if unreadable)."""
    return leaf_shapes(self._saved_metadata(step))

  def saved_part(self, step: int, key: str, sharding: jax.sharding.Sharding) -> Any | None:
    """When the state saved at `step` is a dict with `key` (e.g. a semi-supervised run's
    {'train': ..., 'ssl': ...}), that part's abstract arrays (jax.ShapeDtypeStruct with
    `sharding`): a template to restore it into without knowing how it was made; else None."""
    saved = self._saved_metadata(step)
    if not isinstance(saved, dict) or key not in saved:
      return None
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype,
                                                          sharding=sharding), saved[key])

  def _restore_error(self, step: int, abstract: Any,
                     data_iterator: grain.DatasetIterator | None, error: Exception
                     ) -> Exception:
    """CheckpointMismatchError if the checkpoint's saved shapes differ from `abstract`'s,
    else FileFormatError for a damaged checkpoint (`error` is orbax's)."""
    try:
      saved = self._saved_shapes(step)
    except Exception as e:  # pylint: disable=broad-except
      return self._damaged_error(step, abstract, data_iterator,
                                 f"its metadata cannot be read ({describe_failure(e)})")
    if saved != leaf_shapes(abstract):
      summary = (_mismatch_summary(error) if isinstance(error, ValueError)
                 else describe_failure(error))
      return CheckpointMismatchError(
          f"checkpoint {step} in {self.directory} does not fit the train state of this "
          f"config (another model, class count, optimizer or lr_rules?): "
          f"{summary}. Resume with the config the run was started with, "
          "or use a new --workdir.")
    return self._damaged_error(step, abstract, data_iterator, describe_failure(error))

  def _damaged_error(self, step: int, abstract: Any,
                     data_iterator: grain.DatasetIterator | None, problem: str
                     ) -> errors.FileFormatError:
    """The error for damaged checkpoint `step`: tries the older checkpoints, newest first,
    and names the first that restores intact into `abstract` and how to resume from it."""
    damaged = [step]
    intact = None
    for older in reversed([s for s in self.complete_steps() if s < step]):
      try:
        self._restore(older, abstract, data_iterator)
      except Exception:  # pylint: disable=broad-except
        damaged.append(older)
        continue
      intact = older
      break
    where = os.path.join(self.directory, str(step))
    moves = " && ".join(f"mv {os.path.join(self.directory, str(s))} "
                        f"{os.path.join(self.directory, str(s))}.damaged" for s in damaged)
    if intact is not None:
      advice = (f"Checkpoint {intact} in {self.directory} is intact. To resume from it, move "
                f"the damaged checkpoint{'s' if len(damaged) > 1 else ''} aside ({moves}) "
                "and rerun the same command.")
    else:
      advice = (f"No older checkpoint restores intact either (tried steps "
                f"{', '.join(map(str, damaged[1:])) or 'none: there is none'}). Start the run "
                f"again: move {self.directory} aside (mv {self.directory} "
                f"{self.directory}.damaged) and rerun the same command, or use a new --workdir.")
    return errors.FileFormatError(
        f"checkpoint {step} ({where}) is damaged (a file of it is missing, truncated or "
        f"overwritten) and cannot be restored: {problem}. {advice}")

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete (DiskFullError if one failed
    for lack of space)."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if is_disk_full(e):
        raise _mark_reported(self._disk_full_error()) from e
      raise

  def close(self) -> None:
    """Waits for pending saves (see `wait`), then releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()
