"""A small class-conditional DCGAN-style generator and a spectrally normalised discriminator
with projection conditioning (Miyato & Koyama 2018, "cGANs with Projection Discriminator").

Images are float NHWC in [-1, 1] inside the GAN (`to_unit` / `to_pixels` convert from and to
the project's [0, 255] images). Both networks upsample or downsample twice, so image height
and width must be multiples of 4 (8, 16, 28, 32, ...).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from effcv_jax.models import conv

NUM_RESAMPLES = 2   # the generator upsamples and the discriminator downsamples this often
SIDE_MULTIPLE = 2 ** NUM_RESAMPLES


def to_unit(pixels: jax.Array) -> jax.Array:
  """Images in [0, 255] (any shape, any dtype) -> float32 in [-1, 1]."""
  return pixels.astype(jnp.float32) / 127.5 - 1.0


def to_pixels(images: jax.Array) -> jax.Array:
  """Float images in [-1, 1] -> float32 in [0, 255] (clipped)."""
  return jnp.clip((images + 1.0) * 127.5, 0.0, 255.0)


class Generator(nn.Module):
  """Noise (B, noise_dim) and labels int (B,) -> images float (B, H, W, channels) in [-1, 1].

  The label's learned embedding (noise_dim wide) is concatenated to the noise; a dense
  layer makes a (H/4, W/4, 4 * width) map, two stride-2 transposed convolutions (2 * width,
  width channels) upsample it, a 3x3 convolution and tanh give the image. Group
  normalisation (no running statistics, so sampling needs no mutable state) and ReLU
  follow the dense layer and each upsampling. Convolutions run on `conv_backend`
  (models/conv.py)."""
  image_shape: tuple[int, int, int]
  num_classes: int
  width: int = 32
  groups: int = 8
  conv_backend: str = "auto"

  @nn.compact
  def __call__(self, noise: jax.Array, labels: jax.Array) -> jax.Array:
    height, width, channels = self.image_shape
    start = (height // SIDE_MULTIPLE, width // SIDE_MULTIPLE)
    embedded = nn.Embed(self.num_classes, noise.shape[-1], name="label_embedding")(labels)
    x = nn.Dense(start[0] * start[1] * 4 * self.width, name="project")(
        jnp.concatenate([noise, embedded], axis=-1))
    x = x.reshape((noise.shape[0], start[0], start[1], 4 * self.width))
    x = nn.relu(nn.GroupNorm(num_groups=self.groups, name="norm_0")(x))
    for i, features in enumerate((2 * self.width, self.width)):
      x = conv.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME",
                             backend=self.conv_backend, name=f"up_{i}")(x)
      x = nn.relu(nn.GroupNorm(num_groups=self.groups, name=f"norm_{i + 1}")(x))
    return jnp.tanh(conv.Conv(channels, (3, 3), padding="SAME", backend=self.conv_backend,
                              name="to_image")(x))


class Discriminator(nn.Module):
  """Images float (B, H, W, C) in [-1, 1] and labels int (B,) -> logits float (B,).

  Every convolution and the dense output are spectrally normalised (nn.SpectralNorm: one
  power iteration per call with update_stats=True, its vector u and estimate sigma in the
  'batch_stats' collection). Two blocks of a 3x3 and a stride-2 4x4 convolution (width,
  2 * width channels), a 3x3 convolution of 4 * width, leaky ReLU 0.1 after each, then the
  features h are summed over space; logit = dense(h) + <embedding(label), h> (projection).
  The class embedding is not spectrally normalised. Convolutions run on `conv_backend`
  (models/conv.py; every order of their derivatives, for the gradient penalty, too)."""
  num_classes: int
  width: int = 32
  conv_backend: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array,
               update_stats: bool = False) -> jax.Array:
    x = images
    layers = [(self.width, 3, 1), (self.width, 4, 2), (2 * self.width, 3, 1),
              (2 * self.width, 4, 2), (4 * self.width, 3, 1)]
    for i, (features, kernel, stride) in enumerate(layers):
      layer = conv.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                        backend=self.conv_backend, name=f"conv_{i}")
      x = nn.leaky_relu(
          nn.SpectralNorm(layer, name=f"sn_conv_{i}")(x, update_stats=update_stats), 0.1)
    features = jnp.sum(x, axis=(1, 2))
    unconditional = nn.SpectralNorm(nn.Dense(1, name="out"), name="sn_out")(
        features, update_stats=update_stats)[:, 0]
    embedded = nn.Embed(self.num_classes, features.shape[-1], name="projection")(labels)
    return unconditional + jnp.sum(embedded * features, axis=-1)
