"""Data parallelism with jit + NamedSharding over a 1-D mesh of all devices.

The successor of pmap: parameters are replicated, batches are split along the
leading axis over the 'data' mesh axis, and XLA inserts the gradient all-reduce.
Batch-norm statistics are computed over the global batch, so a sharded step
equals the single-device step up to float reduction order.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from effcv_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D ('data',) mesh over `devices` (default: all devices of all processes)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ConfigError naming batch_size if the batch cannot be split evenly over the mesh
  (a batch size below 1 is left to preflight.check_config, which names the allowed range)."""
  devices = mesh.devices.size
  if global_batch_size > 0 and global_batch_size % devices:
    fitting = -(-global_batch_size // devices) * devices
    raise ConfigError(f"batch size {global_batch_size} does not divide by the {devices} "
                      f"devices; use a multiple of {devices} (e.g. {fitting}) for batch_size "
                      f"(--config.batch_size={fitting})")


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share of a batch into global arrays sharded on 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def replicate(tree, mesh: Mesh):
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
  """`batch_size` rounded up to a multiple of the device count (for padded evaluation)."""
  devices = mesh.devices.size
  return -(-batch_size // devices) * devices
