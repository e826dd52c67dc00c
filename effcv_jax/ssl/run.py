"""Semi-supervised training in a workdir: the resumable loop around the SSL step (step.py).

The data are the run's class-balanced split (data/run_data.py, the same labelled examples as
Noisy Student's for the same dataset, num_holdout, num_labelled and split_seed): labelled
batches of config.batch_size and unlabelled batches of config.ssl.mu * batch_size, drawn by two
grain iterators (seeds config.seed and config.seed + 1) advanced together and checkpointed as
one (`PairedBatches`). A checkpoint holds {'train': TrainState, 'ssl': algorithm state} and
both iterators' positions, so a resumed run continues bit-exactly. The workdir's files, checks
and watchdog are the supervised trainer's (train.py): config.json, metrics.jsonl,
tensorboard/, checkpoints/, results.json. With config.ema_decay > 0 the state keeps weight
averages (updated after each step, checkpointed) and evaluation uses them, as train.py's does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import data as data_lib
from effcv_jax import loop, preflight, sharding, watchdog
from effcv_jax import train as train_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax import workdir_lock
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.ssl import algorithms
from effcv_jax.ssl import step as step_lib
from effcv_jax.task import init_task_and_state


@dataclasses.dataclass(frozen=True)
class WithIndex:
  """`source`'s records with 'index': int32, each record's position in `source` (FlexMatch's
  per-example memory is indexed by it)."""
  source: data_lib.pipeline.Source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {**self.source[index], "index": np.int32(index)}


class PairedBatches:
  """Two batch iterators advanced together: next() -> (labelled batch, unlabelled batch).
  Checkpointed as one by grain's checkpoint handler (get_state() -> bytes, set_state(bytes),
  start_prefetch())."""

  def __init__(self, labelled, unlabelled):
    self.labelled, self.unlabelled = labelled, unlabelled

  def __iter__(self):
    return self

  def __next__(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return next(self.labelled), next(self.unlabelled)

  def get_state(self) -> bytes:
    return json.dumps({"labelled": self.labelled.get_state(),
                       "unlabelled": self.unlabelled.get_state()}).encode()

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state)
    self.labelled.set_state(saved["labelled"])
    self.unlabelled.set_state(saved["unlabelled"])

  def start_prefetch(self) -> None:
    for iterator in (self.labelled, self.unlabelled):
      if hasattr(iterator, "start_prefetch"):
        iterator.start_prefetch()


def initial_ssl_state(settings: algorithms.Settings, params: Any, mesh: jax.sharding.Mesh,
                      abstract: bool = False) -> dict[str, Any]:
  """algorithms.init_state, replicated over `mesh`; with `abstract`, its shapes and shardings
  only (a template to restore a checkpoint into)."""
  init = jax.jit(lambda p: algorithms.init_state(settings, p),
                 out_shardings=sharding.replicated(mesh))
  return jax.eval_shape(init, params) if abstract else init(params)


def _abstract_batch(image_shape, batch_size, mesh, with_index: bool):
  """Shape-dtype structs of a (labelled or unlabelled) batch, sharded over `mesh`."""
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), np.uint8,
                                         sharding=batch_sharding),
           "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=batch_sharding)}
  if with_index:
    batch["index"] = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=batch_sharding)
  return batch


def check_ssl_step(config: ml_collections.ConfigDict, step_fn, state, ssl_state,
                   image_shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> None:
  """Traces the SSL step on abstract batches (nothing computed); a failure becomes a
  ConfigError naming the keys most likely at fault."""
  batch_size = config.batch_size
  preflight.trace("the semi-supervised step",
                  "config.ssl.weak_augment, config.ssl.strong_augment, config.ssl.mu, "
                  "config.model_kwargs, config.input_size", step_fn, state, ssl_state,
                  _abstract_batch(image_shape, batch_size, mesh, False),
                  _abstract_batch(image_shape, config.ssl.mu * batch_size, mesh, True))


def train_ssl(config: ml_collections.ConfigDict, workdir: str,
              data_dir: str | None = None) -> dict[str, Any]:
  """Trains `config` (config.ssl's algorithm) in `workdir`, resuming from its latest checkpoint;
  returns the final evaluation with the run's facts (results.json). Bad input raises before
  anything in `workdir` is written, as train.train_and_evaluate does."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  workdir_lib.check_config(config, workdir)
  preflight.check_config(config)
  preflight.refuse_supervised_only_keys(config, "", "the semi-supervised step")
  sharding.check_batch_size(config.ssl.mu * config.batch_size, mesh)
  with workdir_lock.hold(workdir):
    workdir_lib.check_config(config, workdir)
    with watchdog.Watchdog("train", **workdir_lib.watchdog_limits(config), dump_dir=workdir,
                           describe_state=lambda: workdir_lib.describe_checkpoints(workdir)):
      return _session(config, workdir, data_dir, mesh)


def _session(config, workdir, data_dir, mesh):
  """train_ssl after its checks, inside its watchdog."""
  run_data = run_data_lib.load_run_data(config, data_dir)
  if not len(run_data.unlabelled) and config.ssl.algorithm != "supervised":
    raise ConfigError(f"config.num_labelled = {config.num_labelled} leaves no unlabelled "
                      f"examples for config.ssl.algorithm = {config.ssl.algorithm!r}: label "
                      "fewer examples, or train 'supervised'")
  preflight.check_run(config, run_data, mesh, make_step=train_lib.jit_train_step,
                      make_eval_step=train_lib.jit_eval_step)
  checkpointer = Checkpointer(workdir, config.get("keep_checkpoints", 3), remove_unfinished=True)
  start_step = checkpointer.latest_step() or 0
  try:
    task, state = init_task_and_state(config, run_data.image_shape, mesh,
                                      abstract=bool(start_step))
    ssl_task = step_lib.build_ssl_task(config, max(len(run_data.unlabelled), 1))
    ssl_state = initial_ssl_state(ssl_task.settings, state.params, mesh, bool(start_step))
    step_fn = step_lib.jit_ssl_step(task, ssl_task, mesh)
    check_ssl_step(config, step_fn, state, ssl_state, run_data.image_shape, mesh)
    unlabelled = run_data.unlabelled if len(run_data.unlabelled) else run_data.train
    batches = PairedBatches(
        data_lib.train_iterator(run_data.train, config.batch_size, config.seed),
        data_lib.train_iterator(WithIndex(unlabelled), config.ssl.mu * config.batch_size,
                                config.seed + 1))
    if start_step:
      restored = checkpointer.restore(start_step, {"train": state, "ssl": ssl_state}, batches)
      state, ssl_state = restored["train"], restored["ssl"]
      logging.info("Resumed from %s at step %d", checkpointer.directory, start_step)
  except BaseException:
    checkpointer.close()
    raise
  eval_fn = train_lib.jit_eval_step(task, mesh)
  eval_batch_size = sharding.padded_batch_size(config.eval_batch_size, mesh)

  def take_step() -> dict[str, jax.Array]:
    nonlocal state, ssl_state
    labelled, unlabelled_batch = next(batches)
    state, ssl_state, metrics = step_fn(state, ssl_state, sharding.to_global(labelled, mesh),
                                        sharding.to_global(unlabelled_batch, mesh))
    return metrics

  return loop.run_session(
      config, workdir, checkpointer, start_step, take_step=take_step,
      current_state=lambda: {"train": state, "ssl": ssl_state}, data_iterator=batches,
      evaluate=lambda: train_lib.evaluate_state(eval_fn, state, run_data.eval,
                                                eval_batch_size, mesh),
      images_per_step=config.batch_size * (1 + config.ssl.mu),
      nonfinite_advice="Lower the learning rate or config.ssl.lambda_u.",
      algorithm=config.ssl.algorithm)
