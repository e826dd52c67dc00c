"""Classification losses on logits, stable via log-softmax, with example masks.

Labels are soft: (B, K) probabilities (one-hot, smoothed, mixed or pseudo-labels).
Masks (B,) are 1.0 for real examples and 0.0 for padding.
"""

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
