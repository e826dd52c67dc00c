"""Multi-process (multi-host) start-up: joins this process to a run of several JAX processes.

One process per host (a GPU machine with all its GPUs, a TPU VM worker): every
process runs the same command and calls `initialize` first thing in `main`,
before any JAX computation; jax.devices() then lists the devices of all processes
and the ('data',) mesh of sharding.make_mesh spans them. Settings come from the
arguments (the entry points' flags), else from the environment:

  EFFCV_COORDINATOR_ADDRESS  HOST:PORT of process 0 (a free port; the same on all)
  EFFCV_NUM_PROCESSES        number of processes
  EFFCV_PROCESS_ID           this process's id, 0 .. num_processes - 1

mode 'explicit' (default) initialises when the number of processes is above 1 and
does nothing for a single process; 'auto' lets JAX detect the settings on a Cloud
TPU pod slice, under SLURM or Open MPI (given values override detection); 'off'
never initialises. JAX also reads JAX_COORDINATOR_BIND_ADDRESS (where process 0
listens; default all interfaces) and JAX_LOCAL_DEVICE_IDS.
"""

import dataclasses
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

COORDINATOR_ENV = "EFFCV_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "EFFCV_NUM_PROCESSES"
PROCESS_ID_ENV = "EFFCV_PROCESS_ID"
MODES = ("explicit", "auto", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What jax.distributed.initialize gets; None values are detected by JAX (mode 'auto')."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  local_device_ids: tuple[int, ...] | None = None
  auto: bool = False


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  """The integer value of environment variable `name`; None when unset or empty."""
  value = environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def _check_address(address: str) -> None:
  """Raises unless `address` looks like HOST:PORT with a port in 1..65535."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"coordinator address {address!r} is not HOST:PORT (e.g. 10.0.0.1:8476: "
                     "process 0's host and a free port, the same on every process)")


def resolve(mode: str = "explicit", coordinator_address: str | None = None,
            num_processes: int | None = None, process_id: int | None = None,
            local_device_ids: Sequence[int] | None = None,
            environ: Mapping[str, str] | None = None) -> Settings | None:
  """The settings to initialise with, or None for a single process (nothing to do).

  Arguments left None are read from the EFFCV_* variables of `environ` (default
  os.environ). Raises ValueError for inconsistent settings: an unknown mode, a
  process id outside 0..num_processes-1, a missing or malformed coordinator
  address or process id when num_processes > 1, or settings without a count.
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r} is not one of {', '.join(MODES)}")
  if mode == "off":
    return None
  environ = os.environ if environ is None else environ
  if coordinator_address is None:
    coordinator_address = environ.get(COORDINATOR_ENV, "").strip() or None
  if num_processes is None:
    num_processes = _env_int(environ, NUM_PROCESSES_ENV)
  if process_id is None:
    process_id = _env_int(environ, PROCESS_ID_ENV)
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"the number of processes must be at least 1, got {num_processes}")
  if process_id is not None and process_id < 0:
    raise ValueError(f"the process id must be at least 0, got {process_id}")
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise ValueError(f"process id {process_id} is not below the number of processes "
                     f"{num_processes}: ids run 0..{num_processes - 1}, one per process")
  if coordinator_address is not None:
    _check_address(coordinator_address)
  ids = tuple(local_device_ids) if local_device_ids is not None else None
  if mode == "auto":
    return Settings(coordinator_address, num_processes, process_id, ids, auto=True)
  if num_processes is None:
    given = [name for name, value in (("a coordinator address", coordinator_address),
                                      ("a process id", process_id)) if value is not None]
    if given:
      raise ValueError(f"{' and '.join(given)} given but no number of processes: set "
                       f"--num_processes (or {NUM_PROCESSES_ENV}) too, or --distributed=auto "
                       "on a TPU pod slice or under SLURM")
    return None
  if num_processes == 1:
    return None
  if coordinator_address is None:
    raise ValueError(f"{num_processes} processes need a coordinator: set "
                     f"--coordinator_address=HOST:PORT (or {COORDINATOR_ENV}), process 0's "
                     "host and a free port, the same on every process")
  if process_id is None:
    raise ValueError(f"{num_processes} processes need this process's id: set --process_id "
                     f"(or {PROCESS_ID_ENV}) to 0..{num_processes - 1}, different on each")
  return Settings(coordinator_address, num_processes, process_id, ids)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               *, mode: str = "explicit", environ: Mapping[str, str] | None = None,
               initialization_timeout: int = 300) -> bool:
  """Joins a multi-process run (jax.distributed.initialize) when the settings ask for one.

  Call before any JAX computation (jax.devices() included). Settings as in `resolve`;
  local_device_ids restricts the accelerators this process drives (default all of
  the host's). On CPU, cross-process collectives use gloo over TCP, connected
  here (see `_open_cpu_collectives`). Returns True when this process is part of a
  multi-process run (also if it joined earlier), False for a single process.
  """
  settings = resolve(mode, coordinator_address, num_processes, process_id, local_device_ids,
                     environ)
  if settings is None:
    return False
  if jax.distributed.is_initialized():
    return True
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes, process_id=settings.process_id,
        local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
        cluster_detection_method=None if settings.auto else "deactivate",
        initialization_timeout=initialization_timeout)
  except ValueError as e:
    if not settings.auto:
      raise
    raise ValueError(f"--distributed=auto found no complete cluster environment (Cloud TPU, "
                     f"SLURM, Open MPI): {e} Set --coordinator_address, --num_processes and "
                     "--process_id instead.") from e
  if jax.default_backend() == "cpu":
    _open_cpu_collectives()
  logging.info("process %d of %d; %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _open_cpu_collectives() -> None:
  """Runs one tiny collective over all devices and one across processes (per local
  device), while the processes are still in step after joining.

  XLA connects the gloo context of a device group at the group's first collective
  and fails when a peer is more than 30 s late (gloo's default, fixed in jaxlib);
  on a busy CPU, the first train step's compile time can differ by more than that
  between processes. Once connected, a group's context is reused by every later
  program, whose collectives wait for late peers much longer.
  """
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.asarray(jax.devices()), ("devices",))
  ones = jax.make_array_from_process_local_data(
      NamedSharding(mesh, P("devices")), np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(ones)
  if int(total) != jax.device_count():
    raise RuntimeError(f"a sum over the {jax.device_count()} devices gave {int(total)}")
  multihost_utils.sync_global_devices("effcv_jax.distributed: cpu collectives")
