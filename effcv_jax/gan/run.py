"""The class-conditional GAN's resumable trainer in a workdir, on the trainers' step loop
(loop.py): config.json, metrics.jsonl, tensorboard/, checkpoints/ (the GanState and the data
iterator's position, so a resumed run continues bit-exactly), samples.png and results.json.

The data are the run's labelled split (data/run_data.py: the same class-balanced labelled
examples as the classifier runs for the same dataset, num_holdout, num_labelled and
split_seed); the unlabelled pool is not used. Each evaluation scores up to
config.gan.num_eval_images images of the evaluation split with the discriminator (mean logit
'd_real') against as many generated images of the same labels ('d_fake'), and
writes samples.png: config.gan.grid_per_class samples per class, one row per class, from a
noise fixed for the run.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import data as data_lib
from effcv_jax import loop, preflight, sharding, watchdog
from effcv_jax import workdir as workdir_lib
from effcv_jax import workdir_lock
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.gan import losses, quality
from effcv_jax.gan import models as gan_models
from effcv_jax.gan import step as step_lib

GAN_RULES = (
    preflight.Rule("gan.noise_dim", preflight.integers(1), "the generator's noise width"),
    preflight.Rule("gan.width", preflight.integers(1), "the networks' base channel count"),
    preflight.Rule("gan.groups", preflight.integers(1),
                   "the generator's group-norm groups (must divide gan.width)"),
    preflight.Rule("gan.loss", preflight.choices(losses.LOSSES), "the GAN loss"),
    preflight.Rule("gan.gp_weight", preflight.numbers(0.0), "WGAN-GP's penalty weight"),
    preflight.Rule("gan.generator_lr", preflight.numbers(0.0, low_open=True),
                   "the generator's Adam learning rate"),
    preflight.Rule("gan.discriminator_lr", preflight.numbers(0.0, low_open=True),
                   "the discriminator's Adam learning rate"),
    preflight.Rule("gan.beta1", preflight.numbers(0.0, 1.0, high_open=True), "Adam's beta1"),
    preflight.Rule("gan.beta2", preflight.numbers(0.0, 1.0, high_open=True), "Adam's beta2"),
    preflight.Rule("gan.num_eval_images", preflight.integers(1),
                   "the evaluation images the discriminator scores"),
    preflight.Rule("gan.grid_per_class", preflight.integers(1),
                   "the samples per class in samples.png"),
)
SAMPLES_PNG = "samples.png"
EVAL_NOISE = 2**31 - 1   # folded into the run's key for the evaluation's generated images


def check_gan_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a GAN config with a key no run can use (ConfigError naming the dotted key):
  the trainer keys it shares with a classifier config (preflight.TRAINING_RULES) and
  GAN_RULES. Pure: reads no data."""
  preflight.check_rules(config, preflight.TRAINING_RULES)
  preflight.check_rules(config, GAN_RULES)
  if not config.dataset:
    raise ConfigError("config.dataset is empty: name the training data, e.g. "
                      "'npz:fashion_mnist.npz' (see effcv_jax/data/sources.py)")
  if config.gan.width % config.gan.groups:
    raise ConfigError(f"config.gan.groups = {config.gan.groups} does not divide config.gan.width "
                      f"= {config.gan.width}: the generator's group norm needs it to; set "
                      "--config.gan.groups to a divisor of the width")


def check_image_shape(image_shape: tuple[int, ...]) -> None:
  """Refuses images whose height or width is not a multiple of models.SIDE_MULTIPLE (the
  networks resample by 2 that often): ConfigError naming config.image_size."""
  height, width = image_shape[:2]
  multiple = gan_models.SIDE_MULTIPLE
  if height % multiple or width % multiple:
    raise ConfigError(f"the GAN needs images whose sides are multiples of {multiple}, but "
                      f"these are {height}x{width}: set config.image_size to a multiple of "
                      f"{multiple} (e.g. --config.image_size={multiple * (height // multiple)})")


def check_gan_step(task: step_lib.GanTask, state: step_lib.GanState,
                   image_shape: tuple[int, ...], batch_size: int,
                   mesh: jax.sharding.Mesh) -> None:
  """Traces the GAN step on an abstract batch (nothing computed); a failure becomes a
  ConfigError naming the keys most likely at fault."""
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), np.uint8,
                                         sharding=batch_sharding),
           "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=batch_sharding)}
  preflight.trace("the GAN step", "config.gan, config.image_size, config.batch_size",
                  step_lib.jit_gan_step(task, mesh), state, batch)


def grid_labels(config: ml_collections.ConfigDict) -> np.ndarray:
  """The labels of samples.png: grid_per_class of each class, class by class."""
  return quality.balanced_labels(config.num_classes, config.gan.grid_per_class)


def grid_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The noise key of samples.png, the same at every evaluation of a run."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)


def train_gan(config: ml_collections.ConfigDict, workdir: str,
              data_dir: str | None = None) -> dict[str, Any]:
  """Trains the GAN of `config` in `workdir`, resuming from its latest checkpoint; returns
  the final evaluation with the run's facts (results.json, with 'image_shape'). Bad input
  raises before anything in `workdir` is written; the session holds the workdir's lock and
  runs under the watchdog, as train.train_and_evaluate does."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  workdir_lib.check_config(config, workdir)
  check_gan_config(config)
  with workdir_lock.hold(workdir):
    workdir_lib.check_config(config, workdir)
    with watchdog.Watchdog("train", **workdir_lib.watchdog_limits(config), dump_dir=workdir,
                           describe_state=lambda: workdir_lib.describe_checkpoints(workdir)):
      return _session(config, workdir, data_dir, mesh)


def source_arrays(source: data_lib.pipeline.Source, limit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, H, W, C) as stored, int32 labels (N,)) of the first `limit` records of
  `source` (all when None)."""
  count = len(source) if limit is None else min(limit, len(source))
  records = [source[i] for i in range(count)]
  return (np.stack([r["image"] for r in records]),
          np.array([r["label"] for r in records], np.int32))


def _session(config, workdir, data_dir, mesh):
  """train_gan after its checks, inside its watchdog."""
  run_data = run_data_lib.load_run_data(config, data_dir)
  image_shape = tuple(run_data.image_shape)
  check_image_shape(image_shape)
  task = step_lib.build_gan_task(config, image_shape)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints, remove_unfinished=True)
  start_step = checkpointer.latest_step() or 0
  try:
    state = step_lib.init_gan_state(task, image_shape, config.seed, mesh,
                                    abstract=bool(start_step))
    check_gan_step(task, state, image_shape, config.batch_size, mesh)
    batches = data_lib.train_iterator(run_data.train, config.batch_size, config.seed)
    if start_step:
      state = checkpointer.restore(start_step, state, batches)
      logging.info("Resumed from %s at step %d", checkpointer.directory, start_step)
  except BaseException:
    checkpointer.close()
    raise
  step_fn = step_lib.jit_gan_step(task, mesh)
  eval_images, eval_labels = source_arrays(run_data.eval, config.gan.num_eval_images)
  labels_of_grid = grid_labels(config)

  @jax.jit
  def scores_and_grid(state, images, labels):
    real, _ = step_lib.discriminate(task, state.discriminator, state.spectral,
                                    gan_models.to_unit(images), labels, False)
    noise_key = jax.random.fold_in(state.rng, EVAL_NOISE)
    fake_images = step_lib.generate(task, state.generator, noise_key, labels)
    fake, _ = step_lib.discriminate(task, state.discriminator, state.spectral, fake_images,
                                    labels, False)
    grid = step_lib.sample_pixels(task, state.generator, grid_key(config),
                                  jnp.asarray(labels_of_grid))
    return {"d_real": jnp.mean(real), "d_fake": jnp.mean(fake)}, grid

  def take_step() -> dict[str, jax.Array]:
    nonlocal state
    state, metrics = step_fn(state, sharding.to_global(next(batches), mesh))
    return metrics

  def evaluate() -> dict[str, float]:
    """The discriminator's mean scores on real and generated images; writes the grid."""
    scores, grid = jax.device_get(scores_and_grid(state, eval_images, eval_labels))
    if jax.process_index() == 0:
      pixels = np.round(grid).astype(np.uint8)
      quality.write_png(os.path.join(workdir, SAMPLES_PNG),
                        quality.sample_grid(pixels, config.num_classes))
    return {k: float(v) for k, v in scores.items()}

  return loop.run_session(
      config, workdir, checkpointer, start_step, take_step=take_step,
      current_state=lambda: state, data_iterator=batches, evaluate=evaluate,
      images_per_step=config.batch_size,
      nonfinite_advice="Lower config.gan.generator_lr and config.gan.discriminator_lr.",
      image_shape=list(image_shape), loss=config.gan.loss)


def check_finished_gan(workdir: str, setting: str) -> dict[str, Any]:
  """results.json of the finished GAN run in `workdir`, which the run whose config key
  `setting` names reads: config.json with a 'gan' group, results.json at its num_steps with
  'image_shape'. Raises ConfigError naming `setting` and the workdir otherwise."""
  saved = workdir_lib.read_saved_config(workdir) if os.path.isdir(workdir) else None
  if saved is None or "gan" not in saved:
    raise ConfigError(f"config.{setting} = {workdir!r} is not a GAN run's workdir (no "
                      "config.json with a 'gan' group): set it to the workdir of a finished "
                      "`python -m experiments.gan` run")
  results_path = os.path.join(workdir, "results.json")
  results = workdir_lib.read_json(results_path) if os.path.exists(results_path) else None
  if (not isinstance(results, dict) or results.get("step") != saved.get("num_steps")
      or "image_shape" not in results):
    raise ConfigError(f"config.{setting} = {workdir!r} holds a GAN run that has not finished "
                      f"(no results.json at its num_steps = {saved.get('num_steps')}): finish "
                      "it with its own command first")
  return results


def load_generator(workdir: str, mesh: jax.sharding.Mesh, setting: str = "gan_workdir"
                   ) -> tuple[ml_collections.ConfigDict, step_lib.GanTask, Any, tuple[int, ...]]:
  """(config, task, generator params, image_shape) of the finished GAN run in `workdir`
  (its latest checkpoint, replicated over `mesh`); `setting` names the config key or flag
  that gave `workdir`, for check_finished_gan's errors."""
  results = check_finished_gan(workdir, setting)
  config = workdir_lib.load_config(workdir)
  image_shape = tuple(results["image_shape"])
  task = step_lib.build_gan_task(config, image_shape)
  template = step_lib.init_gan_state(task, image_shape, config.seed, mesh, abstract=True)
  checkpointer = Checkpointer(workdir)
  try:
    state = checkpointer.restore(checkpointer.latest_step(), template)
  finally:
    checkpointer.close()
  return config, task, state.generator, image_shape
