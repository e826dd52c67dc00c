"""Classification losses on logits, stable via log-softmax, with example masks.

Labels are soft: (B, K) probabilities (one-hot, smoothed, mixed or pseudo-labels).
Masks (B,) are 1.0 for real examples and 0.0 for padding.
"""

from typing import Sequence

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, smoothing: float) -> jax.Array:
  """Label smoothing: (1 - s) * labels + s / K. labels (B, K)."""
  if smoothing == 0.0:
    return labels
  return labels * (1.0 - smoothing) + smoothing / labels.shape[-1]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy -sum(labels * log_softmax(logits)). (B, K) -> (B,)."""
  return -jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean of (B,) values over the examples where mask is nonzero (0 if none)."""
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_with_temperature(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """softmax(logits / T) in float32. (B, K) -> (B, K); T > 1 softens, T < 1 sharpens."""
  return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def kl_divergence(target_probs: jax.Array, logits: jax.Array) -> jax.Array:
  """Per-example KL(target || softmax(logits)) = sum p (log p - log q). (B, K), (B, K) -> (B,).

  Terms with p == 0 contribute 0 (the limit of p log p), so one-hot targets are fine.
  """
  target_probs = target_probs.astype(jnp.float32)
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_p = jnp.log(jnp.where(target_probs > 0, target_probs, 1.0))
  return jnp.sum(target_probs * (log_p - log_q), axis=-1)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float = 1.0) -> jax.Array:
  """Hinton et al. (2015): T^2 * KL(softmax(teacher / T) || softmax(student / T)), per example.

  The T^2 factor keeps the gradient magnitude roughly independent of T (the
  softened gradients scale as 1 / T^2). The teacher gets no gradient.
  (B, K), (B, K) -> (B,).
  """
  teacher_probs = softmax_with_temperature(jax.lax.stop_gradient(teacher_logits), temperature)
  return distillation_loss_from_probs(student_logits, teacher_probs, temperature)


def distillation_loss_from_probs(student_logits: jax.Array, teacher_probs: jax.Array,
                                 temperature: float = 1.0) -> jax.Array:
  """`distillation_loss` with the teacher given as probabilities already at temperature T
  (an ensemble's vote, or precomputed). (B, K), (B, K) -> (B,)."""
  teacher_probs = jax.lax.stop_gradient(teacher_probs)
  return temperature ** 2 * kl_divergence(teacher_probs, student_logits / temperature)


def distillation_objective(student_logits: jax.Array, teacher_probs: jax.Array,
                           labels: jax.Array, labelled: jax.Array, *, alpha: float,
                           temperature: float, mask: jax.Array | None = None
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """alpha * CE(labels) + (1 - alpha) * distillation, averaged over the batch.

  teacher_probs (B, K) at `temperature` (softmax_with_temperature or ensemble_probs);
  labels (B, K) soft or one-hot; labelled (B,) 1.0 where the example has a label,
  0.0 for unlabelled examples, which get only the distillation term (weight 1, so
  an all-unlabelled batch is pure distillation). mask (B,) drops padding.
  Returns (loss, {'student_loss', 'distill_loss'}), the parts as masked means.
  """
  labelled = labelled.astype(jnp.float32)
  student = softmax_cross_entropy(student_logits, labels)
  distill = distillation_loss_from_probs(student_logits, teacher_probs, temperature)
  per_example = labelled * (alpha * student + (1.0 - alpha) * distill) + (1.0 - labelled) * distill
  mask = jnp.ones_like(labelled) if mask is None else mask.astype(jnp.float32)
  parts = {"student_loss": masked_mean(student, mask * labelled),
           "distill_loss": masked_mean(distill, mask)}
  return masked_mean(per_example, mask), parts


def ensemble_probs(logits: jax.Array, mode: str = "soft", temperature: float = 1.0) -> jax.Array:
  """Combines the predictions of several teachers: logits (M, B, K) -> probabilities (B, K).

  'soft': mean of the M softmax(logits / T) (soft voting). 'hard': majority vote,
  the fraction of the M teachers whose top class is each class (its argmax is the
  majority class; a tie keeps the tied classes' equal shares).
  """
  if mode == "soft":
    return jnp.mean(softmax_with_temperature(logits, temperature), axis=0)
  if mode == "hard":
    votes = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1])
    return jnp.mean(votes, axis=0)
  raise ValueError(f"ensemble mode must be 'soft' or 'hard', not {mode!r}")


def jensen_shannon_divergence(logits: Sequence[jax.Array],
                              min_mixture: float = 1e-7) -> jax.Array:
  """Per-example Jensen-Shannon divergence of the softmax distributions p_1..p_n of n logits
  (B, K) each: (1/n) sum_i KL(p_i || M) with M = (1/n) sum_i p_i clipped to
  [min_mixture, 1] (AugMix's consistency loss, Hendrycks et al. 2020, with n = 3: the clean
  image and two AugMix views). Gradients reach every p_i, M included. -> (B,)."""
  log_probs = [jax.nn.log_softmax(x.astype(jnp.float32), axis=-1) for x in logits]
  probs = [jnp.exp(log_p) for log_p in log_probs]
  log_mixture = jnp.log(jnp.clip(sum(probs) / len(probs), min_mixture, 1.0))
  terms = [jnp.sum(p * (log_p - log_mixture), axis=-1) for p, log_p in zip(probs, log_probs)]
  return sum(terms) / len(terms)
