"""FGSM and PGD: L-infinity attacks on the [0, 255] images a task takes.

The attack perturbs the float image before the task's resizing and normalisation
(`task.model_inputs`), so epsilon is in pixel units: epsilon 8 is the usual 8/255 of
images scaled to [0, 1]. The gradient is that of the cross-entropy of the true label
through `task.predict_logits`, in inference mode (batch norm uses its running
statistics); the adversarial image is clipped to [0, 255] and to the epsilon ball.

  FGSM: x + epsilon * sign(grad) (one step, no random start).
  PGD:  from x + uniform(-epsilon, epsilon), `steps` steps of alpha * sign(grad), each
        projected back onto the ball and [0, 255] (Madry et al. 2018).

`jit_attack_eval_step` evaluates a batch under attack, jitted with the variables
replicated and the batch sharded over the mesh like `train.jit_eval_step`; its random
start comes from a key the caller derives from (seed, batch index), so a run repeats.
"""

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from effcv_jax import sharding
from effcv_jax import task as task_lib

DEFAULT_PGD_STEPS = 10
PGD_STEP_FACTOR = 2.5   # alpha = 2.5 * epsilon / steps (Madry et al.)


def cross_entropy_sum(task: task_lib.Task, variables: Any, images: jax.Array,
                      labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum over the real (mask 1) examples of -log softmax(logits)[label]; images
  (B, H, W, C) float in [0, 255], labels (B,) int, mask (B,) float."""
  logits = task_lib.predict_logits(task, variables, images).astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return -jnp.sum(mask * picked)


def linf_attack(task: task_lib.Task, variables: Any, images: jax.Array, labels: jax.Array,
                key: jax.Array, epsilon: jax.Array, alpha: jax.Array, steps: int,
                random_start: bool, mask: jax.Array | None = None) -> jax.Array:
  """Adversarial images (B, H, W, C) float in [0, 255] within `epsilon` (pixel units,
  L-infinity) of `images`: `steps` signed-gradient steps of size `alpha` on the
  cross-entropy of `labels` (B,), from a uniform random start in the ball when
  `random_start`. FGSM is steps=1, alpha=epsilon, random_start=False. Padding
  examples (mask 0) get no gradient and stay where they start."""
  images = images.astype(jnp.float32)
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  low = jnp.maximum(images - epsilon, 0.0)
  high = jnp.minimum(images + epsilon, 255.0)
  grad_fn = jax.grad(lambda x: cross_entropy_sum(task, variables, x, labels, mask))
  start = images
  if random_start:
    noise = jax.random.uniform(key, images.shape, jnp.float32, -1.0, 1.0) * epsilon
    start = jnp.clip(images + noise, low, high)

  def step(_, x):
    return jnp.clip(x + alpha * jnp.sign(grad_fn(x)), low, high)

  return jax.lax.fori_loop(0, steps, step, start)


def fgsm(task: task_lib.Task, variables: Any, images: jax.Array, labels: jax.Array,
         epsilon: float) -> jax.Array:
  """FGSM images (B, H, W, C) in [0, 255]: one step of epsilon * sign(gradient). For a
  few batches (and tests); `jit_attack_eval_step` is the jitted, sharded form."""
  return linf_attack(task, variables, images, labels, jax.random.PRNGKey(0),
                     jnp.float32(epsilon), jnp.float32(epsilon), 1, False)


def pgd(task: task_lib.Task, variables: Any, images: jax.Array, labels: jax.Array,
        key: jax.Array, epsilon: float, steps: int = DEFAULT_PGD_STEPS,
        alpha: float | None = None) -> jax.Array:
  """PGD images (B, H, W, C) in [0, 255] with a random start from `key`; alpha defaults to
  2.5 * epsilon / steps. For a few batches (and tests); `jit_attack_eval_step` is the
  jitted, sharded form."""
  alpha = PGD_STEP_FACTOR * epsilon / steps if alpha is None else alpha
  return linf_attack(task, variables, images, labels, key, jnp.float32(epsilon),
                     jnp.float32(alpha), steps, True)


def attack_eval_step(task: task_lib.Task, variables: Mapping[str, Any],
                     batch: Mapping[str, jax.Array], key: jax.Array, epsilon: jax.Array,
                     alpha: jax.Array, steps: int, random_start: bool) -> dict[str, jax.Array]:
  """Sums over the real examples of a padded batch {'image', 'label', 'mask'} attacked
  by `linf_attack`: 'correct' (top-1 on the adversarial images), 'count', and the
  largest |perturbation| and the extremes of the adversarial pixels (for checking)."""
  images = batch["image"].astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  adversarial = linf_attack(task, variables, images, batch["label"], key, epsilon, alpha,
                            steps, random_start, mask)
  logits = task_lib.predict_logits(task, variables, adversarial)
  return {"correct": jnp.sum(mask * (jnp.argmax(logits, -1) == batch["label"])),
          "count": jnp.sum(mask),
          "max_perturbation": jnp.max(jnp.abs(adversarial - images)),
          "min_pixel": jnp.min(adversarial), "max_pixel": jnp.max(adversarial)}


def jit_attack_eval_step(task: task_lib.Task, mesh: jax.sharding.Mesh, steps: int,
                         random_start: bool):
  """attack_eval_step jitted: fn(variables, batch, key, epsilon, alpha) with the variables,
  key and scalars replicated and the batch sharded over the mesh; one compilation serves
  every epsilon."""
  replicated = sharding.replicated(mesh)
  return jax.jit(functools.partial(attack_eval_step, task, steps=steps,
                                   random_start=random_start),
                 in_shardings=(replicated, sharding.batch_sharding(mesh), replicated,
                               replicated, replicated),
                 out_shardings=replicated)


def batch_key(seed: int, batch_index: int) -> jax.Array:
  """The random-start key of batch `batch_index` of an attack seeded with `seed`."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), batch_index)
