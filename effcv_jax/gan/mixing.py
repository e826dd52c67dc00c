"""Generated images in the supervised train step (config.gan_augment): the first
round(ratio * B) images of every training batch and their labels are replaced by images of a
finished GAN run's frozen generator, of uniformly drawn classes, generated inside the jitted
step from the step's key (train.train_step), before the step's augmentation.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from effcv_jax import workdir as workdir_lib
from effcv_jax.errors import ConfigError
from effcv_jax.gan import run as gan_run
from effcv_jax.gan import step as step_lib

# generate(key) -> (images float (n, H, W, C) in [0, 255], labels int32 (n,))
GenerateFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def ratio(config: ml_collections.ConfigDict) -> float:
  """config.gan_augment.ratio (0 when the config predates the group)."""
  return float(config.get("gan_augment", {}).get("ratio", 0.0))


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` mixes generated images into its training batches."""
  return ratio(config) > 0


def generated_count(mixed_ratio: float, batch_size: int) -> int:
  """The images of a batch of batch_size that are replaced: round(ratio * batch_size)."""
  return int(round(mixed_ratio * batch_size))


def check_gan_augment(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """With gan_augment on, the results of its finished GAN run, after checking that
  config.gan_augment.workdir names one (run.check_finished_gan) of config.num_classes
  classes; None when off. Raises ConfigError naming the key at fault. Reads, never writes."""
  if not enabled(config):
    return None
  workdir = config.gan_augment.workdir
  if not workdir:
    raise ConfigError(f"config.gan_augment.ratio = {ratio(config)} needs "
                      "config.gan_augment.workdir: the workdir of a finished "
                      "`python -m experiments.gan` run (or set the ratio to 0)")
  results = gan_run.check_finished_gan(workdir, "gan_augment.workdir")
  classes = workdir_lib.load_config(workdir).num_classes
  if classes != config.num_classes:
    raise ConfigError(f"config.gan_augment.workdir = {workdir!r} holds a GAN of {classes} "
                      f"classes but config.num_classes = {config.num_classes}: train the GAN "
                      "on this run's data")
  return results


def load_generate_fn(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                     mesh: jax.sharding.Mesh) -> GenerateFn:
  """generate(key) -> (images, labels) of generated_count(ratio, config.batch_size) images of
  the GAN run config.gan_augment.workdir (its generator's params bound, frozen), labels drawn
  uniformly. Raises ConfigError (naming config.gan_augment.workdir) when the GAN's images are
  not of image_shape (H, W, C), the classifier's."""
  results = check_gan_augment(config)
  if tuple(results["image_shape"]) != tuple(image_shape):
    raise ConfigError(f"config.gan_augment.workdir = {config.gan_augment.workdir!r} generates "
                      f"images of shape {tuple(results['image_shape'])} but this run trains on "
                      f"{tuple(image_shape)}: train the GAN on this run's data (same dataset "
                      "and image_size)")
  _, task, params, _ = gan_run.load_generator(config.gan_augment.workdir, mesh,
                                              "gan_augment.workdir")
  count = generated_count(ratio(config), config.batch_size)

  def generate(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    label_key, noise_key = jax.random.split(key)
    labels = jax.random.randint(label_key, (count,), 0, task.num_classes)
    return step_lib.sample_pixels(task, params, noise_key, labels), labels
  return generate


def mix_generated(generate: GenerateFn, key: jax.Array, images: jax.Array, labels: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """Float images (B, H, W, C) in [0, 255] and targets (B, K) with the first n rows replaced
  by generate(key)'s n images and their one-hot labels."""
  generated, generated_labels = generate(key)
  count = generated.shape[0]
  one_hot = jax.nn.one_hot(generated_labels, labels.shape[-1], dtype=labels.dtype)
  return (jnp.concatenate([generated.astype(images.dtype), images[count:]]),
          jnp.concatenate([one_hot, labels[count:]]))
