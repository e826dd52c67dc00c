"""Supervised training from a config file.

  python -m experiments.train --config=configs/fashion_mnist_supervised.py --workdir=runs/fmnist \
      [--config.num_steps=1000] [--data_dir=../shared/data]

Rerunning the same command with the same --workdir resumes from the last checkpoint.
$EFFCV_CONV (auto, onednn, xla, lax) overrides config.conv_backend.

Test hook: with $EFFCV_TEST_BLOCK_AT_STEP=S set, the train step whose input state has
step S (the (S+1)-th update) blocks forever inside the jitted step (a host callback
that never returns), as a hung convolution or collective would; the watchdog
(config.watchdog) then ends the run with exit status 75. For the watchdog's tests only.
"""

import functools
import json
import os
import threading

import jax
import numpy as np

from effcv_jax import sharding, train
from experiments import cli

BLOCK_AT_STEP_ENV = "EFFCV_TEST_BLOCK_AT_STEP"


def blocking_step_maker(block_at_step: int):
  """make_step for train_and_evaluate: the supervised step, plus a host callback that
  blocks forever when the input state's step equals `block_at_step` (test hook)."""
  def block_if_due(step) -> None:
    if int(np.asarray(step)) == block_at_step:
      threading.Event().wait()

  def step_that_may_block(task, state, batch):
    jax.debug.callback(block_if_due, state.step)
    return train.train_step(task, state, batch)

  def make_step(task, mesh):
    return jax.jit(functools.partial(step_that_may_block, task),
                   in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                   donate_argnums=0)
  return make_step


def main(argv):
  del argv
  block_at = os.environ.get(BLOCK_AT_STEP_ENV, "")
  make_step = blocking_step_maker(int(block_at)) if block_at else None
  results = train.train_and_evaluate(cli.config(), cli.workdir(), cli.data_dir(),
                                     make_step=make_step)
  print(json.dumps(results))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"), required=("config", "workdir"))
