"""AugMix (Hendrycks et al. 2020): a convex mixture of augmentation chains and the original.

Per image: `width` chains, each of `depth` ops (depth -1: 1 to 3, drawn per chain and image)
drawn uniformly from AUGMIX_OPS, which leaves out the colour, contrast, brightness and
sharpness ops that overlap the test corruptions (CIFAR-10-C / ImageNet-C); chain weights
w ~ Dirichlet(alpha, ..., alpha) and a skip weight m ~ Beta(alpha, alpha), per image:

  augmix(x) = (1 - m) * x + m * sum_i w_i * chain_i(x).

Each op application draws its level uniformly from [0.1, severity) on the reference's 0..10
scale (its `sample_level`) and turns it into a parameter as the reference's operators do
(level / 10 of: 4 bits off for posterize (truncated), 30 degrees (truncated), 256 grey levels
off the solarize threshold (truncated), shear 0.3, a third of the image side for translations
(truncated)); rotations, shears and translations take a random sign and fill with black,
bilinear, as Pillow's `rotate` / `transform` there. The chains run through the policies' layer
machinery (policies.run_policy): a chain step is a layer, the steps past an image's depth are
the Identity op. The mixture is left in float (in [0, 255]).

The Jensen-Shannon consistency loss (losses.jensen_shannon_divergence) needs the clean image
and two AugMix views of it: `jsd_views` runs a pipeline whose last stage is `augmix` that way.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from effcv_jax.augment import colour, geometry, policies
from effcv_jax.augment.base import BatchOp, Fill
from effcv_jax.augment.policies import Layer, PolicyOp

# AugMix's operators (the reference's `augmentations` list); Identity pads short chains.
AUGMIX_OPS = ("AutoContrast", "Equalize", "Posterize", "Rotate", "Solarize", "ShearX", "ShearY",
              "TranslateX", "TranslateY")
MAX_RANDOM_DEPTH = 3          # depth -1 draws 1..3 ops per chain
MIN_LEVEL = 0.1               # levels are uniform in [MIN_LEVEL, severity), of MAX_LEVEL
MAX_LEVEL = 10.0


def augmix_op_space() -> list[PolicyOp]:
  """Identity, then AUGMIX_OPS as PolicyOps whose fraction is level / MAX_LEVEL."""

  def translate(axis):
    # A third of the side along the axis at level 10, truncated to whole pixels.
    strength = lambda f, hw: jnp.floor(f * hw[1 - axis] / 3.0)  # noqa: E731
    matrix = ((lambda t, hw: geometry.translation_matrix(t, 0.0)) if axis == 0 else
              (lambda t, hw: geometry.translation_matrix(0.0, t)))
    return PolicyOp(("TranslateX", "TranslateY")[axis], strength, True, matrix_fn=matrix)

  return [
      PolicyOp("Identity", colour_fn=lambda x, s: x),
      PolicyOp("AutoContrast", colour_fn=lambda x, s: colour.autocontrast(x)),
      PolicyOp("Equalize", colour_fn=lambda x, s: colour.equalize(x)),
      PolicyOp("Posterize", lambda f, hw: 4.0 - jnp.floor(4.0 * f), colour_fn=colour.posterize),
      PolicyOp("Rotate", lambda f, hw: jnp.floor(30.0 * f), True,
               matrix_fn=geometry.rotation_matrix_degrees),
      PolicyOp("Solarize", lambda f, hw: 256.0 - jnp.floor(256.0 * f),
               colour_fn=colour.solarize),
      PolicyOp("ShearX", lambda f, hw: 0.3 * f, True,
               matrix_fn=lambda s, hw: geometry.shear_x_matrix(s)),
      PolicyOp("ShearY", lambda f, hw: 0.3 * f, True,
               matrix_fn=lambda s, hw: geometry.shear_y_matrix(s)),
      translate(0),
      translate(1),
  ]


def chain_layers(key: jax.Array, num_images: int, depth: int,
                 severity: float) -> list[Layer]:
  """The layers of `num_images` chains: max(depth, 1..3) layers of (op index (N,) into
  augmix_op_space, 0 past the chain's depth; fraction (N,) = level / 10; sign (N,))."""
  depth_key, key = jax.random.split(key)
  num_layers = depth if depth > 0 else MAX_RANDOM_DEPTH
  depths = (jnp.full((num_images,), depth) if depth > 0 else
            jax.random.randint(depth_key, (num_images,), 1, MAX_RANDOM_DEPTH + 1))
  layers = []
  for step, layer_key in enumerate(jax.random.split(key, num_layers)):
    op_key, level_key, sign_key = jax.random.split(layer_key, 3)
    op_index = jax.random.randint(op_key, (num_images,), 1, len(AUGMIX_OPS) + 1)
    level = jax.random.uniform(level_key, (num_images,), jnp.float32, MIN_LEVEL, severity)
    sign = jnp.where(jax.random.bernoulli(sign_key, 0.5, (num_images,)), 1.0, -1.0)
    layers.append(Layer(jnp.where(step < depths, op_index, 0), level / MAX_LEVEL, sign))
  return layers


def augment_and_mix(key: jax.Array, images: jax.Array, *, severity: float = 3.0,
                    width: int = 3, depth: int = -1, alpha: float = 1.0,
                    strategy: str = "auto", fill: Fill = 0.0,
                    interpolation: str = "bilinear") -> jax.Array:
  """AugMix of every image: float (B, H, W, C) in [0, 255] -> float (B, H, W, C) in [0, 255].

  The width chains of all images run as one batch of width * B images through
  policies.run_policy (strategy 'map', 'batched' or 'auto', as the policies)."""
  batch = images.shape[0]
  chain_key, weight_key, skip_key = jax.random.split(key, 3)
  tiled = jnp.concatenate([images] * width, axis=0)            # chain c, image b at c * B + b
  layers = chain_layers(chain_key, width * batch, depth, severity)
  space = augmix_op_space()
  first_layer = [0.0] + [1.0 / len(AUGMIX_OPS)] * len(AUGMIX_OPS)
  chains = policies.run_policy(tiled, layers, space, strategy, fill, interpolation, first_layer)
  chains = chains.reshape((width,) + images.shape)
  weights, skip = mixing_weights(weight_key, skip_key, batch, width, alpha)
  mixture = jnp.einsum("bk,kbhwc->bhwc", weights, chains)
  skip = skip[:, None, None, None]
  return (1.0 - skip) * images + skip * mixture


def mixing_weights(weight_key: jax.Array, skip_key: jax.Array, batch: int, width: int,
                   alpha: float) -> tuple[jax.Array, jax.Array]:
  """Per image: chain weights (B, width) ~ Dirichlet(alpha, ..., alpha) and the skip weight
  (B,) ~ Beta(alpha, alpha). At alpha 1 (the paper's) drawn as normalised exponentials and a
  uniform, the same distributions without the gamma samplers' rejection loops, which take
  seconds to compile."""
  if alpha == 1.0:
    exponentials = jax.random.exponential(weight_key, (batch, width), jnp.float32)
    return (exponentials / jnp.sum(exponentials, axis=1, keepdims=True),
            jax.random.uniform(skip_key, (batch,), jnp.float32))
  weights = jax.random.dirichlet(weight_key, jnp.full((width,), alpha, jnp.float32), (batch,))
  return weights, jax.random.beta(skip_key, alpha, alpha, (batch,))


def augmix(severity: float = 3.0, width: int = 3, depth: int = -1, alpha: float = 1.0,
           strategy: str = "auto", fill: Fill = 0.0,
           interpolation: str = "bilinear") -> BatchOp:
  """The spec op `augmix(severity=3, width=3, depth=-1, alpha=1.0)`: augment_and_mix with the
  paper's defaults (severity in [1, 10] on the 0..10 level scale, width chains >= 1, depth
  >= 1 or -1 for 1..3 per chain, alpha > 0 of the Dirichlet and Beta draws); labels
  unchanged."""
  policies.check_common(strategy, interpolation)
  if not 1.0 <= severity <= MAX_LEVEL:
    raise ValueError(f"augmix: severity must be in [1, {MAX_LEVEL:g}], got {severity!r}")
  if not (isinstance(width, int) and width >= 1):
    raise ValueError(f"augmix: width must be an integer >= 1, got {width!r}")
  if not (isinstance(depth, int) and (depth >= 1 or depth == -1)):
    raise ValueError(f"augmix: depth must be an integer >= 1, or -1 (1 to 3 per chain), "
                     f"got {depth!r}")
  if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
    raise ValueError(f"augmix: alpha must be a number > 0, got {alpha!r}")

  def apply(key, images, labels):
    return augment_and_mix(key, images, severity=float(severity), width=width, depth=depth,
                           alpha=float(alpha), strategy=strategy, fill=fill,
                           interpolation=interpolation), labels

  return BatchOp("augmix", apply)


def ends_with_augmix(pipeline) -> bool:
  """Whether a spec.Pipeline's last stage is the augmix op (what jsd_views needs)."""
  return bool(pipeline.stages) and pipeline.stages[-1].name == "augmix"


def jsd_views(pipeline, key: jax.Array, images: jax.Array, labels: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The clean image and two AugMix views for the Jensen-Shannon consistency loss.

  pipeline: a spec.Pipeline whose last stage is `augmix` (ValueError otherwise); the stages
  before it make the clean image (e.g. flip and crop), then its augmix stage runs twice on
  that clean image with two keys. images float (B, H, W, C), labels (B, K).
  Returns (clean, view_1, view_2, labels), the images (B, H, W, C) each.
  """
  if not ends_with_augmix(pipeline):
    raise ValueError(f"the Jensen-Shannon views need an augmentation spec ending with augmix, "
                     f"got {pipeline.spec!r}")
  base_key, first_key, second_key = jax.random.split(key, 3)
  base = dataclasses.replace(pipeline, stages=pipeline.stages[:-1])
  clean, labels = base(base_key, images, labels)
  mix = pipeline.stages[-1].apply
  return clean, mix(first_key, clean, labels)[0], mix(second_key, clean, labels)[0], labels


# name -> factory, for the spec language (see spec.py).
OPS = {"augmix": augmix}
