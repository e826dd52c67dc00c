"""The GAN's static settings (`GanTask`), its state (`GanState`) and one jitted step: a
discriminator update, then a generator update against the updated discriminator, each with
its own Adam. The step's randomness is fold_in(state.rng, state.step), so a resumed run
draws the same numbers as an uninterrupted one.
"""

import dataclasses
import functools
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from effcv_jax import sharding
from effcv_jax.gan import losses
from effcv_jax.gan import models as gan_models


@dataclasses.dataclass(frozen=True)
class GanTask:
  """What the GAN step closes over: both networks, their optimisers, the noise width, the
  loss ('hinge' or 'wgan_gp') and the gradient penalty's weight."""
  generator: gan_models.Generator
  discriminator: gan_models.Discriminator
  generator_tx: optax.GradientTransformation
  discriminator_tx: optax.GradientTransformation
  num_classes: int
  noise_dim: int
  loss: str = "hinge"
  gp_weight: float = 10.0


@flax.struct.dataclass
class GanState:
  """Everything the GAN step changes (a pytree, replicated over the mesh)."""
  step: jax.Array              # int32 scalar: steps taken
  generator: Any               # the generator's params
  discriminator: Any           # the discriminator's params
  spectral: Any                # the discriminator's power-iteration state ('batch_stats')
  generator_opt: Any
  discriminator_opt: Any
  rng: jax.Array               # base key; step keys are fold_in(rng, step)


def build_gan_task(config: ml_collections.ConfigDict,
                   image_shape: tuple[int, ...]) -> GanTask:
  """The GanTask of a GAN config (config.gan) for images of image_shape (H, W, C); the
  networks' convolutions run on config.conv_backend ('auto' for saved configs without it)."""
  gan = config.gan
  def adam(lr):
    return optax.adam(lr, b1=gan.beta1, b2=gan.beta2)
  return GanTask(
      generator=gan_models.Generator(tuple(image_shape), config.num_classes, gan.width,
                                     gan.groups, config.get("conv_backend", "auto")),
      discriminator=gan_models.Discriminator(config.num_classes, gan.width,
                                             config.get("conv_backend", "auto")),
      generator_tx=adam(gan.generator_lr), discriminator_tx=adam(gan.discriminator_lr),
      num_classes=config.num_classes, noise_dim=gan.noise_dim, loss=gan.loss,
      gp_weight=float(gan.gp_weight))


def init_gan_state(task: GanTask, image_shape: tuple[int, ...], seed: int,
                   mesh: jax.sharding.Mesh | None = None, abstract: bool = False) -> GanState:
  """Both networks and optimisers initialised from `seed`; with `abstract`, shapes, dtypes
  and shardings only (a template to restore a checkpoint into)."""
  def init() -> GanState:
    g_key, d_key, state_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    labels = jnp.zeros((1,), jnp.int32)
    g_params = task.generator.init(g_key, jnp.zeros((1, task.noise_dim)), labels)["params"]
    d_vars = task.discriminator.init(d_key, jnp.zeros((1,) + tuple(image_shape)), labels)
    return GanState(step=jnp.zeros((), jnp.int32), generator=g_params,
                    discriminator=d_vars["params"], spectral=d_vars["batch_stats"],
                    generator_opt=task.generator_tx.init(g_params),
                    discriminator_opt=task.discriminator_tx.init(d_vars["params"]),
                    rng=state_key)
  out_shardings = sharding.replicated(mesh) if mesh is not None else None
  init = jax.jit(init, out_shardings=out_shardings)
  return jax.eval_shape(init) if abstract else init()


def generate(task: GanTask, generator_params: Any, key: jax.Array,
             labels: jax.Array) -> jax.Array:
  """Images float (B, H, W, C) in [-1, 1] of the labels int (B,), noise N(0, 1) from key."""
  noise = jax.random.normal(key, (labels.shape[0], task.noise_dim))
  return task.generator.apply({"params": generator_params}, noise, labels)


def sample_pixels(task: GanTask, generator_params: Any, key: jax.Array,
                  labels: jax.Array) -> jax.Array:
  """`generate`'s images as the project's float pixels (B, H, W, C) in [0, 255]."""
  return gan_models.to_pixels(generate(task, generator_params, key, labels))


def discriminate(task: GanTask, params: Any, spectral: Any, images: jax.Array,
                 labels: jax.Array, update_stats: bool) -> tuple[jax.Array, Any]:
  """(logits (B,), power-iteration state after the call) of images in [-1, 1]; with
  update_stats one power iteration moves the state."""
  logits, new_vars = task.discriminator.apply(
      {"params": params, "batch_stats": spectral}, images, labels, update_stats=update_stats,
      mutable=["batch_stats"])
  return logits, new_vars["batch_stats"]


def _interpolates(key: jax.Array, real: jax.Array, fake: jax.Array) -> jax.Array:
  """Points on the lines between real and fake images, one uniform position per image."""
  position = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
  return position * real + (1.0 - position) * fake


def discriminator_loss(task: GanTask, params: Any, spectral: Any, real: jax.Array,
                       real_labels: jax.Array, fake: jax.Array, fake_labels: jax.Array,
                       gp_key: jax.Array) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
  """The discriminator's loss on real and fake images (B, H, W, C) in [-1, 1], its new
  power-iteration state (one iteration, on the real and fake images together) and metrics
  ('d_real', 'd_fake': mean logits; 'gradient_penalty' with 'wgan_gp')."""
  images = jnp.concatenate([real, fake])
  logits, spectral = discriminate(task, params, spectral, images,
                                  jnp.concatenate([real_labels, fake_labels]), True)
  real_logits, fake_logits = jnp.split(logits, 2)
  metrics = {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
  if task.loss == "hinge":
    return losses.discriminator_hinge_loss(real_logits, fake_logits), (spectral, metrics)
  mixed = _interpolates(gp_key, real, fake)
  def critic_sum(x):
    return jnp.sum(discriminate(task, params, spectral, x, real_labels, False)[0])
  penalty = losses.gradient_penalty(jax.grad(critic_sum)(mixed))
  metrics["gradient_penalty"] = penalty
  loss = losses.discriminator_wasserstein_loss(real_logits, fake_logits)
  return loss + task.gp_weight * penalty, (spectral, metrics)


def gan_step(task: GanTask, state: GanState, batch: Mapping[str, jax.Array]
             ) -> tuple[GanState, dict[str, jax.Array]]:
  """One GAN step on batch {'image': uint8 (B, H, W, C), 'label': int (B,)}: the
  discriminator learns real (with their labels) against B generated images of uniformly
  drawn labels, then the generator learns against the updated discriminator (its power
  iteration not moved) on fresh noise and labels. A step whose losses or gradient norms
  are not finite leaves the state unchanged but for the step count and reports
  metrics['nonfinite'] = 1. Metrics: d_loss, g_loss, d_real, d_fake, grad norms."""
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 5)
  real = gan_models.to_unit(batch["image"])
  real_labels = batch["label"].astype(jnp.int32)
  size = real.shape[0]
  fake_labels = jax.random.randint(keys[0], (size,), 0, task.num_classes)
  fake = jax.lax.stop_gradient(generate(task, state.generator, keys[1], fake_labels))

  (d_loss, (spectral, metrics)), d_grads = jax.value_and_grad(
      lambda p: discriminator_loss(task, p, state.spectral, real, real_labels, fake,
                                   fake_labels, keys[2]), has_aux=True)(state.discriminator)
  d_updates, d_opt = task.discriminator_tx.update(d_grads, state.discriminator_opt,
                                                  state.discriminator)
  discriminator = optax.apply_updates(state.discriminator, d_updates)

  g_labels = jax.random.randint(keys[3], (size,), 0, task.num_classes)
  def generator_loss(params):
    fake_logits, _ = discriminate(task, discriminator, spectral,
                                  generate(task, params, keys[4], g_labels), g_labels, False)
    if task.loss == "hinge":
      return losses.generator_hinge_loss(fake_logits)
    return losses.generator_wasserstein_loss(fake_logits)
  g_loss, g_grads = jax.value_and_grad(generator_loss)(state.generator)
  g_updates, g_opt = task.generator_tx.update(g_grads, state.generator_opt, state.generator)

  d_norm, g_norm = optax.tree.norm(d_grads), optax.tree.norm(g_grads)
  finite = (jnp.isfinite(d_loss) & jnp.isfinite(g_loss) & jnp.isfinite(d_norm)
            & jnp.isfinite(g_norm))
  updated = state.replace(generator=optax.apply_updates(state.generator, g_updates),
                          discriminator=discriminator, spectral=spectral,
                          generator_opt=g_opt, discriminator_opt=d_opt)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  metrics.update(d_loss=d_loss, g_loss=g_loss, d_grad_norm=d_norm, g_grad_norm=g_norm,
                 nonfinite=1.0 - finite.astype(jnp.float32))
  return new_state.replace(step=state.step + 1), metrics


def jit_gan_step(task: GanTask, mesh: jax.sharding.Mesh):
  """gan_step jitted with replicated state, sharded batch; the old state is donated."""
  return jax.jit(functools.partial(gan_step, task),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                 donate_argnums=0)
