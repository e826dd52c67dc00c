"""Exponential moving average (EMA) of a model's weights, as the official EfficientNet and
Noisy Student TensorFlow code keeps it (its flag moving_average_decay, 0.9999 on ImageNet).

That code averages every trainable variable and the batch-norm moving mean and variance
(its utils.get_ema_vars / get_all_variable) with tf.train.ExponentialMovingAverage(decay,
num_updates=global_step), applied after the optimiser step, which has already counted
that step. Each update is therefore

  decay_t = min(decay, (1 + t) / (10 + t)),    t = the number of updates so far (1, 2, ...)
  ema     = ema - (1 - decay_t) * (ema - value)

with the averages starting from the initial values. The warm-up term lets the average
follow the weights early on, when a decay of 0.9999 would keep it near the random
initialisation for tens of thousands of steps. Evaluation, export and its pseudo-labelling
teacher then use the averages (its `variables_to_restore`); so does this project when a
run sets config.ema_decay (see task.eval_variables).
"""

from typing import Any

import jax
import jax.numpy as jnp


def decay_at(decay: float, num_updates: jax.Array) -> jax.Array:
  """The decay of the update that brings the count of updates to `num_updates` (>= 1):
  min(decay, (1 + num_updates) / (10 + num_updates)), a float32 scalar."""
  count = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + count) / (10.0 + count))


def update(averages: Any, values: Any, decay: jax.Array) -> Any:
  """One EMA update of every leaf: averages - (1 - decay) * (averages - values).

  `averages` and `values` are pytrees of one structure (e.g. {'params', 'batch_stats'});
  each result leaf keeps its average's dtype.
  """
  def step(average, value):
    return (average - (1.0 - decay) * (average - value)).astype(average.dtype)
  return jax.tree.map(step, averages, values)
