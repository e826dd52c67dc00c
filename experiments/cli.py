"""Start-up and command-line parsing shared by the entry points.

    cli.run(main, shared_flags=("config", "workdir", "data_dir"), required=("config",))
    ...
    def main(argv):
      config, workdir, data_dir = cli.config(), cli.workdir(), cli.data_dir()

`run` (instead of app.run) is the one start-up path of every entry point, in order:
  1. restarts the process with tcmalloc preloaded where it is installed
     (experiments/tcmalloc.py);
  2. defines the shared flags the entry point names: --config (a config file with
     --config.KEY=VALUE overrides), --workdir, --data_dir, --zoo;
  3. parses the flags with `parse_flags`: config overrides fail with one clear line;
  4. joins the multi-process run the flags or environment describe (jax.distributed);
  5. hides the INFO chatter of orbax and grain from the log;
  6. applies $EFFCV_CONV (auto, onednn, xla, lax), if set, as an override of the
     loaded config's conv_backend, and logs it;
then calls `main`. A known error that ends `main` (effcv_jax/errors.py: a bad config,
data or file, a refused resume, a held lock, a full disk) is reported as one line on
stderr, `ERROR: ...`, with exit status 2; its traceback only with --verbose. A run
stopped by SIGTERM (a preemption notice; effcv_jax/preemption.py) after checkpointing its
last step ends with `STOPPED: ...` and exit status 75: rerun the command to resume. Any
other exception keeps its traceback.

absl reports a malformed flag value (`--config.batch_size=abc`) as a flags error;
ml_collections raises a KeyError or AttributeError, with a traceback, for an
override that names no key of the config (`--config.batch_sise=32`). Both end here
as `FATAL Flags parsing error: ...` naming the flag, before `main` runs, so a
workdir is never touched by a mistyped command.

The multi-process flags (--distributed, --coordinator_address, --num_processes,
--process_id, --local_device_ids; see effcv_jax/distributed.py) are defined here
for every entry point; `run` joins the run before `main`. Inconsistent settings are
reported the same way, before `main` runs.
"""

import os
import shlex
import sys
import traceback
from typing import Callable, Mapping, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from effcv_jax import distributed, errors, metrics, preemption
from effcv_jax.models.conv import BACKENDS as CONV_BACKENDS
from experiments.tcmalloc import reexec_with_tcmalloc

CONV_ENV = "EFFCV_CONV"   # overrides config.conv_backend (of every model of the config)
SHARED_FLAGS = ("config", "workdir", "data_dir", "zoo")
_SHARED_HELP = {
    "config": "Config file (configs/*.py[:arg]); override keys with --config.KEY=VALUE.",
    "workdir": "Directory of the run (checkpoints, metrics, results; for a suite, the "
               "parent of its runs' directories). Rerunning with it resumes.",
    "data_dir": "Directory of local dataset and weight files; default $EFFCV_DATA_DIR.",
    "zoo": "A zoo entry (zoo/NAME, effcv_jax/zoo.py) to use instead of a workdir.",
}

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print the traceback of a known error (a bad config, data or file, a "
    "refused resume, a held lock, a full disk) instead of only its one-line message.")
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

  `run` calls it before `main`, before any JAX computation; True under multi-process.
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


def portable_argument(argument: str, cwd: str | None = None) -> str:
  """`argument` (a path or --flag=path) with an absolute path under the working directory
  `cwd` (default: this process's) or under the `shared` folder beside it rewritten relative
  to it (`runs/x`, `../shared/data`), so that a recorded command runs from any checkout;
  anything else as is."""
  cwd = os.path.abspath(cwd or os.getcwd())
  prefix, sep, value = argument.partition("=") if argument.startswith("--") else ("", "", argument)
  if not os.path.isabs(value):
    return argument
  for root in (cwd, os.path.join(os.path.dirname(cwd), "shared")):
    if os.path.commonpath([root, os.path.abspath(value)]) == root and root != os.sep:
      return prefix + sep + os.path.relpath(value, cwd)
  return argument


def reproducing_command(module: str) -> str:
  """`python -m module` with this process's arguments, quoted, for reports: without
  --only, which picks what trains now, not what the report holds; paths under or beside the
  working directory made relative to it (portable_argument)."""
  return " ".join([f"python -m {module}"] + [
      shlex.quote(portable_argument(a)) for a in sys.argv[1:] if not a.startswith("--only")])


def define_shared_flags(names: Sequence[str], required: Sequence[str] = (),
                        defaults: Mapping[str, str] | None = None) -> None:
  """Defines the shared flags `names` (of SHARED_FLAGS) once, with `defaults`."""
  defaults = dict(defaults or {})
  for name in names:
    if name not in SHARED_FLAGS:
      raise ValueError(f"unknown shared flag {name!r}; shared: {', '.join(SHARED_FLAGS)}")
    if name in flags.FLAGS:
      continue
    if name == "config":
      config_flags.DEFINE_config_file("config", defaults.get("config"), _SHARED_HELP["config"])
    else:
      flags.DEFINE_string(name, defaults.get(name), _SHARED_HELP[name])
  if required:
    flags.mark_flags_as_required(list(required))


def config() -> ml_collections.ConfigDict:
  """The --config value (with --config.KEY overrides and $EFFCV_CONV applied)."""
  return flags.FLAGS.config


def workdir() -> str:
  """The --workdir value."""
  return flags.FLAGS.workdir


def data_dir() -> str | None:
  """The --data_dir value (None: $EFFCV_DATA_DIR)."""
  return flags.FLAGS.data_dir


def zoo() -> str | None:
  """The --zoo value (a zoo entry's name)."""
  return flags.FLAGS.zoo


def override_conv_backend(config: ml_collections.ConfigDict,
                          environ: Mapping[str, str] = os.environ) -> ml_collections.ConfigDict:
  """Sets conv_backend of `config` and of every sub-config that names a model (a Noisy
  Student teacher and student, a sweep's base) to $EFFCV_CONV when it is set; logs it.
  Returns `config` (changed in place)."""
  backend = environ.get(CONV_ENV, "")
  if not backend:
    return config
  if backend not in CONV_BACKENDS:
    raise ValueError(f"${CONV_ENV}={backend!r}: use one of {', '.join(CONV_BACKENDS)}")

  def visit(node: ml_collections.ConfigDict, path: str) -> None:
    if "model" in node:
      with node.unlocked():
        node.conv_backend = backend
      logging.info("$%s: %sconv_backend = %r", CONV_ENV, path, backend)
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        visit(value, f"{path}{key}.")
  visit(config, "config.")
  return config


_MULTI_HOST_FLAGS = tuple(holder.name for holder in (
    _DISTRIBUTED, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _LOCAL_DEVICE_IDS))


def report_known_errors(main: Callable[[list[str]], None], argv: list[str]) -> None:
  """main(argv); a known error (errors.one_line_message) ends the process with one line
  on stderr and exit status errors.EXIT_USER_ERROR (the traceback first with --verbose);
  a stop on SIGTERM (preemption.Preempted) with one line, `STOPPED: ...`, and exit status
  preemption.EXIT_CODE."""
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    preempted = [link for link in errors.chain(e) if isinstance(link, preemption.Preempted)]
    if preempted:
      sys.stderr.write(f"STOPPED: {preempted[0]}\n")
      sys.stderr.flush()
      sys.exit(preemption.EXIT_CODE)
    message = errors.one_line_message(e)
    if message is None:
      raise
    if _VERBOSE.value:
      traceback.print_exc()
    hint = "" if _VERBOSE.value else " (--verbose for the traceback)"
    sys.stderr.write(f"ERROR: {message}{hint}\n")
    sys.stderr.flush()
    sys.exit(errors.EXIT_USER_ERROR)


def _list_in_help(module_name: str, names: Sequence[str]) -> None:
  """Makes `names` key flags of the entry point, so that its --help lists them."""
  if module_name == "__main__":
    module_name = sys.argv[0]    # the name absl gives the main module's flags
  for name in names:
    flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS[name])


def run(main: Callable[[list[str]], None], shared_flags: Sequence[str] = (),
        required: Sequence[str] = (), defaults: Mapping[str, str] | None = None) -> None:
  """The start-up of every entry point (see the module docstring), then main(argv).

  shared_flags: which of SHARED_FLAGS the entry point takes; required: the flags (shared
  or its own) that must be given; defaults: default values of shared flags.
  """
  reexec_with_tcmalloc()
  define_shared_flags(shared_flags, required, defaults)
  _list_in_help(sys._getframe(1).f_globals.get("__name__", "__main__"),  # pylint: disable=protected-access
                list(shared_flags) + list(_MULTI_HOST_FLAGS) + [_VERBOSE.name])

  def start_then_main(argv: list[str]) -> None:
    initialize_distributed()
    metrics.quiet_library_logs()
    if "config" in shared_flags and flags.FLAGS.config is not None:
      override_conv_backend(flags.FLAGS.config)
    report_known_errors(main, argv)

  app.run(start_then_main, flags_parser=parse_flags)
