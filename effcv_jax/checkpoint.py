"""orbax checkpoints of the train state and the grain data-iterator state.

Layout: WORKDIR/checkpoints/<step>/{state, data}. orbax writes each checkpoint
to a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoint as the latest one. Saves are asynchronous
(training continues while arrays are written); the data-iterator state is
captured synchronously at the save call.
"""

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from effcv_jax.errors import UserError


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint does not fit the train state the current config builds."""


def _mismatch_summary(error: Exception, max_lines: int = 6) -> str:
  """The first lines of orbax's message, without its advice to restore partially."""
  text = str(error).split(" Truncating/padding is disabled")[0]
  lines = [line.strip() for line in text.splitlines()
           if line.strip() and "partial_restore" not in line]
  return " ".join(lines[:max_lines]).rstrip(".")


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

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: Any,
              data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Restores the state into the structure, shapes and shardings of `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with .sharding) or arrays;
    `data_iterator`, if given, is moved to the saved position in place. Raises
    CheckpointMismatchError if the saved arrays have other shapes or structure.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
    except ValueError as e:
      raise CheckpointMismatchError(
          f"checkpoint {step} in {self.directory} does not fit the train state of this "
          f"config (another model, class count, optimizer or lr_rules?): "
          f"{_mismatch_summary(e)}. Resume with the config the run was started with, "
          "or use a new --workdir.") from e

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
