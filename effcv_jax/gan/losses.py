"""The GAN's losses: pure functions of the discriminator's logits (and, for the gradient
penalty, of its gradients). Each returns a float scalar."""

import jax
import jax.numpy as jnp

LOSSES = ("hinge", "wgan_gp")


def discriminator_hinge_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))) (Lim & Ye 2017; Miyato et al. 2018);
  logits (B,)."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def generator_hinge_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean(D(fake)): the generator's side of the hinge loss; logits (B,)."""
  return -jnp.mean(fake_logits)


def discriminator_wasserstein_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """mean(D(fake)) - mean(D(real)): the critic's Wasserstein loss (without the penalty)."""
  return jnp.mean(fake_logits) - jnp.mean(real_logits)


def generator_wasserstein_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean(D(fake)), as the hinge generator loss."""
  return -jnp.mean(fake_logits)


def gradient_penalty(gradients: jax.Array) -> jax.Array:
  """WGAN-GP's penalty (Gulrajani et al. 2017): mean over the batch of (||g_i||_2 - 1)^2,
  g_i the gradient (B, ...) of the critic's logit with respect to the i-th interpolated
  image, flattened."""
  flat = gradients.reshape((gradients.shape[0], -1))
  norms = jnp.sqrt(jnp.sum(jnp.square(flat), axis=-1) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))
