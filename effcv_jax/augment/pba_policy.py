"""Population Based Augmentation's policy (Ho et al. 2019) as an op of the spec language.

A PBA policy is a list of entries (op name, probability, level). PBA applies it to each image
as its paper's Algorithm 1 describes: draw how many ops the image gets, 0, 1 or 2 with
probabilities COUNT_PROBABILITIES = (0.2, 0.3, 0.5); go through the entries in a random order
(drawn per image) and apply each with its probability, until that many have been applied.

The ops are those of policies.op_space() at AutoAugment's ranges, a level l in 0..9 being the
fraction l / 9 of the op's range (as policies.autoaugment), with a random sign per image for
the signed ops. PBA's search space (SEARCH_OPS, each op twice: SEARCH_ENTRIES) is
AutoAugment's op list without SamplePairing and without Cutout: Cutout draws a random
position per image, which policies.PolicyOp (a function of the image and one parameter)
cannot express, so searched policies leave it out (a spec can still add `cutout(...)` after
the pba op).

Spec forms:

  pba(policy=[('Rotate', 0.3, 4), ('Equalize', 0.6, 0), ...])
  pba(schedule=[(0, [('Rotate', 0.1, 2)]), (500, [('Rotate', 0.3, 4), ('Invert', 0.2, 0)])])

A schedule is a list of (start_step, entries) pairs, the first starting at 0, the starts
increasing; the policy active at step t is that of the last start <= t (the step is the
number of updates applied, which the train step passes: base.BatchOp.needs_step). An entry
with probability 0 never applies and never uses up an image's count, so leaving it out
changes nothing. Execution: policies.run_policy with two layers (the two ops an image can
get), per-image op index, fraction and sign; 'map' or 'batched' as policies.py describes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax.augment import policies
from effcv_jax.augment.base import BatchOp, Fill

# How many ops an image gets: 0, 1 or 2 with these probabilities.
COUNT_PROBABILITIES = (0.2, 0.3, 0.5)
MAX_OPS = len(COUNT_PROBABILITIES) - 1
MAX_LEVEL = 9
# PBA's op list (AutoAugment's without SamplePairing; without Cutout, see the module docstring).
SEARCH_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast",
              "Invert", "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness",
              "Sharpness")
# The searched policy: every op twice, so that one can be applied at two strengths.
SEARCH_ENTRIES = SEARCH_OPS + SEARCH_OPS


def op_list(names: Sequence[str]) -> list[policies.PolicyOp]:
  """The PolicyOps of a policy's op space: Identity first (index 0, 'no op'), then `names`
  in order without repeats. Raises ValueError naming an unknown op and the valid ones."""
  space = policies.op_space()
  unknown = [name for name in names if name not in space]
  if unknown:
    raise ValueError(f"pba: unknown op {unknown[0]!r}; valid: {', '.join(space)}")
  ordered = ["Identity"] + [name for name in dict.fromkeys(names) if name != "Identity"]
  return [space[name] for name in ordered]


def draw_layers(key: jax.Array, op_index: jax.Array, probability: jax.Array,
                fraction: jax.Array) -> list[policies.Layer]:
  """What PBA's application of a policy does to each image, as two policy layers.

  Args:
    key: a PRNG key.
    op_index: int32 (B, E): each image's entries' ops (indices into the op space, 0 Identity).
    probability: float32 (B, E): each entry's probability of being applied.
    fraction: float32 (B, E): each entry's strength, a fraction of its op's range.
  Returns: MAX_OPS Layers of (B,) arrays: layer k holds the k-th entry applied to the image
  in its random order, or Identity when fewer than k + 1 were applied (count drawn from
  COUNT_PROBABILITIES, as the module docstring describes).
  """
  batch, entries = probability.shape
  count_key, order_key, apply_key, sign_key = jax.random.split(key, 4)
  count = jax.random.choice(count_key, len(COUNT_PROBABILITIES), (batch,),
                            p=jnp.asarray(COUNT_PROBABILITIES))
  order = jnp.argsort(jax.random.uniform(order_key, (batch, entries)), axis=1)
  ordered = [jnp.take_along_axis(table, order, axis=1) for table in (op_index, probability,
                                                                     fraction)]
  applied = jax.random.uniform(apply_key, (batch, entries)) < ordered[1]
  rank = jnp.cumsum(applied.astype(jnp.int32), axis=1)  # how many applied up to here
  signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (MAX_OPS, batch)), 1.0, -1.0)
  layers = []
  for k in range(MAX_OPS):
    hit = applied & (rank == k + 1)  # the (k+1)-th applied entry, if any
    position = jnp.argmax(hit, axis=1)[:, None]
    used = jnp.any(hit, axis=1) & (count > k)
    layers.append(policies.Layer(
        jnp.where(used, jnp.take_along_axis(ordered[0], position, axis=1)[:, 0], 0),
        jnp.take_along_axis(ordered[2], position, axis=1)[:, 0], signs[k]))
  return layers


def _check_entries(entries: Any, where: str) -> list[tuple[str, float, float]]:
  """A policy's entries as (name, probability, level), checked; raises ValueError."""
  try:
    checked = [(str(name), float(prob), float(level)) for name, prob, level in entries]
  except (TypeError, ValueError):
    raise ValueError(f"pba: {where} must be a list of (op name, probability, level) "
                     f"entries, got {entries!r}") from None
  for name, prob, level in checked:
    if not 0.0 <= prob <= 1.0 or not 0.0 <= level <= MAX_LEVEL:
      raise ValueError(f"pba: {where} entry {(name, prob, level)!r}: the probability must be "
                       f"in [0, 1] and the level in [0, {MAX_LEVEL}]")
  return checked


def _check_schedule(policy: Any, schedule: Any) -> list[tuple[int, list]]:
  """(start_step, entries) pairs of the op's arguments, checked; raises ValueError."""
  if (policy is None) == (schedule is None):
    raise ValueError("pba: give exactly one of policy=[(name, probability, level), ...] and "
                     "schedule=[(start_step, [(name, probability, level), ...]), ...]")
  if policy is not None:
    return [(0, _check_entries(policy, "policy"))]
  try:
    pairs = [(start, entries) for start, entries in schedule]
  except (TypeError, ValueError):
    raise ValueError(f"pba: schedule must be a list of (start_step, entries) pairs, got "
                     f"{schedule!r}") from None
  starts = [start for start, _ in pairs]
  if (not pairs or not all(isinstance(start, int) for start in starts) or starts[0] != 0
      or any(b <= a for a, b in zip(starts, starts[1:]))):
    raise ValueError(f"pba: the schedule's start steps must be integers starting at 0 and "
                     f"increasing, got {starts}")
  return [(start, _check_entries(entries, f"schedule[{index}]"))
          for index, (start, entries) in enumerate(pairs)]


def pba(policy: Sequence[Sequence[Any]] | None = None,
        schedule: Sequence[Sequence[Any]] | None = None,
        fill: Fill = 128.0,
        interpolation: str = "bilinear",
        strategy: str = "auto") -> BatchOp:
  """Population Based Augmentation's policy (one `policy`) or policy schedule (`schedule`),
  applied as the module docstring describes. With a schedule of more than one policy the op
  needs the train step's step (BatchOp.needs_step)."""
  policies.check_common(strategy, interpolation)
  checked = _check_schedule(policy, schedule)
  space = op_list([name for _, entries in checked for name, _, _ in entries])
  index_of = {op.name: index for index, op in enumerate(space)}
  width = max(1, max(len(entries) for _, entries in checked))
  # (S, E) tables of the schedule's policies, padded with never-applied Identity entries.
  ops = np.zeros((len(checked), width), np.int32)
  probs = np.zeros((len(checked), width), np.float32)
  fractions = np.zeros((len(checked), width), np.float32)
  for row, (_, entries) in enumerate(checked):
    for column, (name, prob, level) in enumerate(entries):
      ops[row, column], probs[row, column] = index_of[name], prob
      fractions[row, column] = level / MAX_LEVEL
  starts = np.asarray([start for start, _ in checked], np.int32)

  def apply(key, images, labels, step=None):
    row = 0 if step is None else jnp.searchsorted(starts, step, side="right") - 1
    batch = images.shape[0]
    tables = [jnp.broadcast_to(jnp.asarray(table)[row], (batch, width))
              for table in (ops, probs, fractions)]
    layers = draw_layers(key, *tables)
    return policies.run_policy(images, layers, space, strategy, fill, interpolation), labels

  return BatchOp("pba", apply, needs_step=len(checked) > 1)


def format_entries(entries: Sequence[tuple[str, float, int]]) -> str:
  """`[('Rotate', 0.3, 4), ...]` of the entries whose probability is above 0 (the others never
  apply), probabilities rounded to 0.1 steps, levels to integers."""
  kept = [(name, round(float(prob), 1), int(round(level))) for name, prob, level in entries
          if round(float(prob), 1) > 0]
  return "[" + ", ".join(f"({name!r}, {prob}, {level})" for name, prob, level in kept) + "]"


def schedule_spec(schedule: Sequence[tuple[int, Sequence[tuple[str, float, int]]]]) -> str:
  """The spec string `pba(schedule=[(start, [entries]), ...])` of (start_step, entries)
  pairs (format_entries); `pba(policy=[...])` for a schedule of one policy."""
  if len(schedule) == 1:
    return f"pba(policy={format_entries(schedule[0][1])})"
  pairs = ", ".join(f"({int(start)}, {format_entries(entries)})" for start, entries in schedule)
  return f"pba(schedule=[{pairs}])"


# name -> factory, for the spec language (see spec.py).
OPS = {"pba": pba}
