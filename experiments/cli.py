"""Start-up and command-line parsing shared by the entry points.

    cli.run(main)      # instead of app.run(main)

`run` first restarts the process with tcmalloc preloaded where it is installed
(experiments/tcmalloc.py), then parses the flags with `parse_flags`: config overrides
fail with one clear line.

absl reports a malformed flag value (`--config.batch_size=abc`) as a flags error;
ml_collections raises a KeyError or AttributeError, with a traceback, for an
override that names no key of the config (`--config.batch_sise=32`). Both end here
as `FATAL Flags parsing error: ...` naming the flag, before `main` runs, so a
workdir is never touched by a mistyped command.

The multi-process flags (--distributed, --coordinator_address, --num_processes,
--process_id, --local_device_ids; see effcv_jax/distributed.py) are defined here
for every entry point; `main` calls `initialize_distributed()` first. Inconsistent
settings are reported the same way, before `main` runs.
"""

import shlex
import sys

from absl import app, flags

from effcv_jax import distributed
from experiments.tcmalloc import reexec_with_tcmalloc

_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "explicit", distributed.MODES,
    "Multi-process runs (one process per host). explicit: join one when --num_processes "
    f"(or ${distributed.NUM_PROCESSES_ENV}) is above 1; auto: detect the settings on a TPU "
    "pod slice, under SLURM or Open MPI; off: always a single process.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (a free port, the same on every "
    f"process); default ${distributed.COORDINATOR_ENV}.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, f"Number of processes; default ${distributed.NUM_PROCESSES_ENV}.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, f"This process's id, 0..num_processes-1; default "
    f"${distributed.PROCESS_ID_ENV}.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None, "Accelerators this process drives (e.g. 0,1); default all.")


def _message(error: BaseException) -> str:
  """The innermost message: ml_collections wraps a KeyError in an AttributeError."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def _local_device_ids() -> list[int] | None:
  """--local_device_ids as integers."""
  ids = _LOCAL_DEVICE_IDS.value
  try:
    return None if ids is None else [int(i) for i in ids]
  except ValueError:
    raise ValueError(f"--local_device_ids={','.join(ids)} is not a list of integers") from None


def _distributed_settings() -> distributed.Settings | None:
  """The multi-process settings of the flags and environment (raises ValueError if inconsistent)."""
  return distributed.resolve(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                             _PROCESS_ID.value, _local_device_ids())


def initialize_distributed() -> bool:
  """Joins the multi-process run the flags (or EFFCV_* environment) describe, if any.

  Call first in `main`, before any JAX computation; True under multi-process.
  """
  return distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                _local_device_ids(), mode=_DISTRIBUTED.value)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, plus a readable exit for config overrides naming unknown keys and for
  inconsistent multi-process settings."""
  try:
    argv = app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    message = _message(e)     # "'batch_sise'\nDid you mean ..."
    key = message.splitlines()[0].strip("'\"") if message else ""
    culprits = [a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]
                and key in a.split("=")[0].split(".")]
    if not culprits:      # not an override's key: a bug elsewhere, keep its traceback
      raise
    flag = culprits[0]
    hint = " ".join(line.strip() for line in message.splitlines()[1:])
    sys.stderr.write(f"FATAL Flags parsing error: {flag}: the config has no key {key!r}. "
                     f"{hint + ' ' if hint else ''}Overrides must name keys of the config file "
                     "(check the spelling); nothing was run.\n")
    sys.exit(1)
  try:
    _distributed_settings()
  except ValueError as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}; nothing was run.\n")
    sys.exit(1)
  return argv


def reproducing_command(module: str) -> str:
  """`python -m module` with this process's arguments, quoted, for reports: without
  --only, which picks what trains now, not what the report holds."""
  return " ".join([f"python -m {module}"] + [
      shlex.quote(a) for a in sys.argv[1:] if not a.startswith("--only")])


def run(main) -> None:
  """app.run(main) with `parse_flags`, in a process that uses tcmalloc where available."""
  reexec_with_tcmalloc()
  app.run(main, flags_parser=parse_flags)
