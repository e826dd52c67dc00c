"""One process of tests/test_multihost.py: a tiny training run and pseudo-labelling pass.

  python tests/multihost_driver.py --workdir=DIR --out=FILE.npz

Joins a multi-process run when the EFFCV_* environment (or the --num_processes,
--process_id, --coordinator_address flags) says so, like the experiment entry
points, else runs alone. Trains configs/digits_tiny.py for a few steps in
DIR/train, restores the final checkpoint, labels the 300 hold-out digits with it
into DIR/pseudo, and writes FILE: the restored variables, the results and the
pseudo-labels as this process sees them.
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import jax
import numpy as np
from absl import flags

from configs import digits_tiny
from effcv_jax import pseudo_label, sharding, train
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import run_data as run_data_lib
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Shared directory of the run.")
_OUT = flags.DEFINE_string("out", None, "This process's output file (.npz).")
flags.mark_flags_as_required(["workdir", "out"])

NUM_STEPS = 10
POOL_BATCH = 64
POOL_SHARD = 128       # 300 examples -> shards of 128, 128, 44


def tiny_config():
  """configs/digits_tiny.py cut to NUM_STEPS steps, logged every step, a checkpoint every 5."""
  config = digits_tiny.get_config()
  config.num_steps = NUM_STEPS
  config.log_every = 1
  config.checkpoint_every = 5
  config.eval_every = NUM_STEPS
  return config


def main(argv):
  del argv
  workdir = os.path.join(_WORKDIR.value, "train")
  results = train.train_and_evaluate(tiny_config(), workdir)

  mesh = sharding.make_mesh()
  run_data = run_data_lib.load_run_data(tiny_config())
  _, task, state, step = workdir_lib.restore_latest(workdir, run_data.image_shape, mesh)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  out_dir = os.path.join(_WORKDIR.value, "pseudo")
  pseudo_label.label_pool(variables, task, run_data.eval, out_dir, mesh=mesh,
                          batch_size=POOL_BATCH, shard_size=POOL_SHARD)
  indices, probs, confidence = pseudo_label.load_pseudo_labels(out_dir)

  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(variables))
  np.savez(_OUT.value, indices=indices, probs=probs, confidence=confidence,
           restored_step=step, process_index=jax.process_index(),
           process_count=jax.process_count(), device_count=jax.device_count(),
           local_device_count=jax.local_device_count(), results=json.dumps(results),
           **{f"var{jax.tree_util.keystr(path)}": leaf for path, leaf in leaves})


if __name__ == "__main__":
  cli.run(main)
