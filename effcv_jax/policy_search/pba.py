"""Population Based Augmentation (Ho, Liang, Stoica, Abbeel, Chen, ICML 2019): a search for a
schedule of augmentation policies (augment/pba_policy.py) by population based training.

A population of `pba.population` copies of a small model (config.model) trains together in one
jitted program: the members' train states are stacked on a leading population axis, sharded
over the devices (the population must divide by the device count). Each member has its own
initialisation, batch order, augmentation keys (train.step_keys of its own state) and policy:
integer arrays `probability` (P, E) in steps of 0.1 and `level` (P, E) in 0..9 for the E
entries of the searched ops (`pba.ops`, default pba_policy.SEARCH_OPS) each taken twice. One
step draws each member's policy layers
(pba_policy.draw_layers), applies them to the flattened (P * B) batch (policies.run_policy),
then config.augment (the base augmentation, e.g. flip and crop) per member, then the
supervised train step (train.train_step) vmapped over the members.

Every `pba.ready_every` steps (the paper: 3 epochs) every member is evaluated on a held-out
split, then
  exploit: truncation selection: the bottom `exploit_fraction` of the members (by held-out
    accuracy) copy the weights, batch statistics and optimiser state and the policy of a
    member of the top `exploit_fraction` drawn uniformly (their own PRNG keys stay);
  explore: each copied policy's probabilities and levels are perturbed, each value with
    probability `resample_probability` resampled uniformly on its grid, else moved by
    0..max_perturbation grid steps up or down, clipped.
Both are pure functions of (key, arrays) (`exploit`, `explore`), their random draws
injectable (`truncation_sources`, `perturb`).

Output: the policy schedule of the final best member, with the policies it inherited through
its exploits (the paper's schedule), as a `pba(schedule=...)` spec string; also the schedule
of each round's best member, the per-round accuracies, and the search cost (process CPU time
and wall time) next to the papers' GPU-hours. The search checkpoints after every round
(checkpoint.py) and resumes from the latest: batch orders and keys are functions of
(seed, member, step), so a resumed search equals an uninterrupted one.

Data: the labelled split of config.dataset (config.num_holdout, num_labelled and split_seed, as
train.py makes it) and a class-balanced held-out split of `pba.num_eval` training images from
outside it and outside the validation hold-out, for the members' evaluation (`search_split`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from effcv_jax import sharding, train, workdir_lock
from effcv_jax.policy_search import papers_cost
from effcv_jax import workdir as workdir_lib
from effcv_jax.augment import pba_policy, policies
from effcv_jax.augment import spec as augment_spec
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.data import pipeline, sources, splits
from effcv_jax.errors import ConfigError
from effcv_jax.task import Task, TrainState, build_task, model_input_shape, raw_variables

PROBABILITY_STEPS = 10  # probabilities on the grid 0, 0.1, ..., 1
INITS = ("zeros", "uniform")
_SEARCH_KEY_TAG = 0x0BA5  # folds the search's exploit/explore keys away from the members'


@flax.struct.dataclass
class Population:
  """The searched population (a pytree; every leaf has the population axis first).

  members: the members' TrainStates stacked, leaves (P, ...).
  probability: int32 (P, E): each entry's probability in steps of 1 / PROBABILITY_STEPS.
  level: int32 (P, E): each entry's level, 0..pba_policy.MAX_LEVEL.
  """
  members: TrainState
  probability: jax.Array
  level: jax.Array


@dataclasses.dataclass(frozen=True)
class Settings:
  """The search's static settings (what the jitted functions close over)."""
  population: int
  ready_every: int
  exploit_fraction: float
  resample_probability: float
  max_perturbation: int
  strategy: str
  fill: float
  ops: tuple[str, ...] = pba_policy.SEARCH_OPS

  @property
  def entries(self) -> tuple[str, ...]:
    """The searched policy's entries' ops: every op twice (pba_policy.SEARCH_ENTRIES)."""
    return self.ops + self.ops

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Settings":
    group = config.pba
    return cls(int(group.population), int(group.ready_every), float(group.exploit_fraction),
               float(group.resample_probability), int(group.max_perturbation),
               str(group.strategy), float(group.fill), tuple(group.ops))


# ---------------------------------------------------------------------------------------------
# Exploit and explore: pure functions, their random draws injectable.
# ---------------------------------------------------------------------------------------------


def num_selected(population: int, fraction: float) -> int:
  """How many members the top and the bottom group each hold: floor(P * fraction), >= 1."""
  return max(1, int(population * fraction))


def truncation_sources(accuracies: jax.Array, choices: jax.Array, fraction: float) -> jax.Array:
  """Truncation selection: which member each member takes its weights and policy from.

  accuracies: (P,) held-out accuracies; ties rank the lower member index higher.
  choices: int (P,) in [0, q), q = num_selected(P, fraction): a bottom member m copies the
  choices[m]-th best member; the others keep their own (source m).
  Returns: int32 (P,) source member of each member.
  """
  size = accuracies.shape[0]
  count = num_selected(size, fraction)
  order = jnp.argsort(-accuracies, stable=True)  # best first
  top, bottom = order[:count], order[size - count:]
  is_bottom = jnp.zeros((size,), bool).at[bottom].set(True)
  return jnp.where(is_bottom, top[choices], jnp.arange(size)).astype(jnp.int32)


def exploit(key: jax.Array, accuracies: jax.Array, fraction: float) -> jax.Array:
  """truncation_sources with each bottom member's top member drawn uniformly. (P,) int32."""
  size = accuracies.shape[0]
  choices = jax.random.randint(key, (size,), 0, num_selected(size, fraction))
  return truncation_sources(accuracies, choices, fraction)


def perturb(values: jax.Array, max_value: int, resample: jax.Array, resampled: jax.Array,
            amount: jax.Array, sign: jax.Array) -> jax.Array:
  """PBA's explore of integer grid values (any shape): where `resample`, the value becomes
  `resampled`; elsewhere it moves by sign * amount, clipped to [0, max_value]."""
  moved = jnp.clip(values + sign * amount, 0, max_value)
  return jnp.where(resample, resampled, moved).astype(values.dtype)


def explore(key: jax.Array, values: jax.Array, max_value: int, resample_probability: float,
            max_perturbation: int) -> jax.Array:
  """perturb with its draws: resample each value with probability resample_probability
  (uniformly on 0..max_value), else move it by 0..max_perturbation (uniform) steps, up or down
  with probability 1/2."""
  resample_key, value_key, amount_key, sign_key = jax.random.split(key, 4)
  shape = values.shape
  return perturb(values, max_value,
                 jax.random.bernoulli(resample_key, resample_probability, shape),
                 jax.random.randint(value_key, shape, 0, max_value + 1),
                 jax.random.randint(amount_key, shape, 0, max_perturbation + 1),
                 jnp.where(jax.random.bernoulli(sign_key, 0.5, shape), 1, -1))


def exploit_and_explore(settings: Settings, key: jax.Array, population: Population,
                        accuracies: jax.Array) -> tuple[Population, jax.Array]:
  """One ready round: exploit (the bottom members copy a top member's weights, batch
  statistics, optimiser state and policy; each keeps its own PRNG key and step), then
  explore (the copied policies perturbed). Returns (new population, source (P,) int32)."""
  exploit_key, probability_key, level_key = jax.random.split(key, 3)
  source = exploit(exploit_key, accuracies, settings.exploit_fraction)
  copied = jax.tree.map(lambda leaf: leaf[source], population)
  members = copied.members.replace(rng=population.members.rng, step=population.members.step)
  changed = (source != jnp.arange(source.shape[0]))[:, None]
  probability = jnp.where(changed, explore(probability_key, copied.probability,
                                           PROBABILITY_STEPS, settings.resample_probability,
                                           settings.max_perturbation), copied.probability)
  level = jnp.where(changed, explore(level_key, copied.level, pba_policy.MAX_LEVEL,
                                     settings.resample_probability,
                                     settings.max_perturbation), copied.level)
  return Population(members, probability, level), source


# ---------------------------------------------------------------------------------------------
# The population's train and eval steps.
# ---------------------------------------------------------------------------------------------


def search_space(settings: Settings) -> tuple[list[policies.PolicyOp], np.ndarray]:
  """(op space with Identity first, int32 (E,) op index of each of settings.entries)."""
  space = pba_policy.op_list(settings.ops)
  index_of = {op.name: index for index, op in enumerate(space)}
  return space, np.asarray([index_of[name] for name in settings.entries], np.int32)


def population_step(task: Task, base_augment: augment_spec.Pipeline, settings: Settings,
                    population: Population, batch: dict[str, jax.Array]
                    ) -> tuple[Population, dict[str, jax.Array]]:
  """One update of every member. batch: {'image': uint8 (P, B, H, W, C), 'label': int (P, B)},
  member m's batch at [m]. task.augment must be the identity (the policy and base_augment
  are applied here). Returns (population at step + 1, metrics with leaves (P,))."""
  space, entry_ops = search_space(settings)
  members = population.members
  size, batch_size = batch["label"].shape
  entries = entry_ops.shape[0]
  aug_keys = jax.vmap(lambda state: train.step_keys(state)[0])(members)
  policy_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1))(aug_keys)
  base_keys = jax.vmap(lambda key: jax.random.fold_in(key, 2))(aug_keys)

  def member_layers(key, probability, level):
    tables = (jnp.broadcast_to(jnp.asarray(entry_ops), (batch_size, entries)),
              jnp.broadcast_to(probability / PROBABILITY_STEPS, (batch_size, entries)),
              jnp.broadcast_to(level / pba_policy.MAX_LEVEL, (batch_size, entries)))
    layers = pba_policy.draw_layers(key, *tables)
    return [(layer.op_index, layer.fraction, layer.sign) for layer in layers]

  layers = jax.vmap(member_layers)(policy_keys, population.probability.astype(jnp.float32),
                                   population.level.astype(jnp.float32))
  flat_layers = [policies.Layer(*(array.reshape(size * batch_size) for array in layer))
                 for layer in layers]
  images = batch["image"].astype(jnp.float32)
  image_shape = images.shape[2:]
  images = policies.run_policy(images.reshape((size * batch_size,) + image_shape), flat_layers,
                               space, settings.strategy, settings.fill, "bilinear")
  images = images.reshape((size, batch_size) + image_shape)
  labels = jax.nn.one_hot(batch["label"], task.num_classes)
  images, labels = jax.vmap(base_augment)(base_keys, images, labels)
  new_members, metrics = jax.vmap(functools.partial(train.train_step, task))(
      members, {"image": images, "soft_label": labels})
  return population.replace(members=new_members), metrics


def population_eval(task: Task, population: Population,
                    batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """train.eval_step of every member on one padded batch (the same for all): sums (P,)."""
  return jax.vmap(lambda member: train.eval_step(task, raw_variables(member), batch))(
      population.members)


def population_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The population axis (leading) split over the mesh's devices."""
  return NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))


# ---------------------------------------------------------------------------------------------
# Config, data and initialisation.
# ---------------------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Raises ConfigError naming the key, value and valid range of a setting the search cannot
  use, before anything is loaded or trained."""
  group = config.pba
  population = group.population

  def bad(key, value, valid):
    raise ConfigError(f"config.{key}={value!r}: {valid}")

  if population < 2:
    bad("pba.population", population, "the population needs at least 2 members")
  if population % device_count:
    fitting = -(-population // device_count) * device_count
    bad("pba.population", population,
        f"the population is sharded over the {device_count} devices and must be a multiple "
        f"of {device_count} (e.g. --config.pba.population={fitting})")
  if group.ready_every < 1 or config.num_steps < group.ready_every or (
      config.num_steps % group.ready_every):
    bad("pba.ready_every", group.ready_every,
        f"must be >= 1 and divide num_steps={config.num_steps}")
  if not 0 < group.exploit_fraction <= 0.5:
    bad("pba.exploit_fraction", group.exploit_fraction, "must be in (0, 0.5]")
  if not 0 <= group.resample_probability <= 1:
    bad("pba.resample_probability", group.resample_probability, "must be in [0, 1]")
  if group.max_perturbation < 0:
    bad("pba.max_perturbation", group.max_perturbation, "must be >= 0")
  if group.init not in INITS:
    bad("pba.init", group.init, f"must be one of {INITS}")
  if group.strategy not in policies.STRATEGIES:
    bad("pba.strategy", group.strategy, f"must be one of {policies.STRATEGIES}")
  space = policies.op_space()
  if (not group.ops or len(set(group.ops)) != len(group.ops)
      or any(name not in space or name == "Identity" for name in group.ops)):
    bad("pba.ops", group.ops, "distinct op names of policies.op_space() other than Identity: "
        + ", ".join(name for name in space if name != "Identity"))
  if group.num_eval < 1:
    bad("pba.num_eval", group.num_eval, "the held-out split needs at least 1 image per class")
  if config.batch_size < 1:
    bad("batch_size", config.batch_size, "each member's batch needs at least 1 image")
  if config.get("conv_backend", "auto") not in ("xla", "lax"):
    bad("conv_backend", config.get("conv_backend", "auto"),
        "the search vmaps the model over the population: use 'xla' or 'lax' (the oneDNN "
        "custom calls have no batching or sharding rule)")
  for key, value, off in (("ema_decay", config.get("ema_decay", 0.0), 0.0),
                          ("adversarial.method", config.adversarial.method, ""),
                          ("augmix.jsd", config.augmix.jsd, False),
                          ("gan_augment.ratio", config.gan_augment.ratio, 0.0)):
    if value != off:
      bad(key, value, f"the PBA search trains plain supervised members: set it to {off!r}")
  base = augment_spec.build(config.augment)
  if base.needs_step or base.needs_saliency:
    bad("augment", config.augment, "the base augmentation may not need the step or the "
        "model's saliency")


def search_split(labels: np.ndarray, num_labelled: int, num_eval: int, seed: int,
                 num_holdout: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(labelled indices, held-out indices) of a training split's labels (N,): the labelled
  split a supervised run of (num_holdout, num_labelled, split_seed=seed) trains on
  (splits.make_split), and num_eval class-balanced images from its unlabelled rest for the
  members' evaluation, never from the run's validation hold-out (num_holdout images), which
  stays unseen by the search."""
  split = splits.make_split(labels, num_holdout, num_labelled, seed)
  rest = split.unlabelled if len(split.unlabelled) else np.zeros((0,), np.int64)
  try:
    chosen = splits.balanced_take(labels[rest], num_eval, np.random.default_rng([seed, 1]))
  except ValueError as error:
    raise ConfigError(f"config.pba.num_eval={num_eval}: {error} (the images outside the "
                      f"{len(split.labelled)} labelled ones and the {num_holdout} held out "
                      "for validation)") from None
  return split.labelled, rest[chosen]


def load_search_data(config: ml_collections.ConfigDict, data_dir: str | None = None
                     ) -> tuple[sources.ArraySource, sources.ArraySource]:
  """(labelled training images, held-out images) of config.dataset's training split (the
  labelled split of the run whose policy is searched: config.num_holdout, num_labelled and
  split_seed)."""
  images, labels = sources.load_arrays(config.dataset, config.train_split, data_dir)
  labelled, held_out = search_split(labels, config.num_labelled, config.pba.num_eval,
                                    config.split_seed, config.get("num_holdout", 0))
  return (sources.ArraySource(images[labelled], labels[labelled]),
          sources.ArraySource(images[held_out], labels[held_out]))


def member_batches(source: sources.ArraySource, seed: int, population: int, batch_size: int,
                   step: int) -> dict[str, np.ndarray]:
  """The batches of step `step`: member m's is the next batch of its own shuffled pass over
  the source (epoch e's order: a permutation drawn from (seed, m, e); the last incomplete
  batch of a pass is dropped). Returns {'image': (P, B, H, W, C), 'label': (P, B)}."""
  per_epoch = len(source) // batch_size
  epoch, index = divmod(step, per_epoch)
  rows = np.stack([
      np.random.default_rng([seed, member, epoch]).permutation(len(source))
      [index * batch_size:(index + 1) * batch_size] for member in range(population)])
  return {"image": source.images[rows], "label": source.labels[rows].astype(np.int32)}


def build_search_task(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
                      ) -> tuple[Task, augment_spec.Pipeline, tuple[int, ...]]:
  """(task with its optimiser and an identity augmentation, config.augment's pipeline, the
  model's input shape (H, W, C))."""
  task, make_tx = build_task(config)
  shape = model_input_shape(image_shape, task.input_size, task.input_channels)
  variables = jax.eval_shape(lambda: task.model.init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(shape)), train=False))
  task = dataclasses.replace(task, tx=make_tx(variables["params"]),
                             augment=augment_spec.build(""))
  return task, augment_spec.build(config.augment), shape


def init_population(task: Task, image_shape: tuple[int, ...], seed: int, population: int,
                    init: str, mesh: jax.sharding.Mesh, entries: int) -> Population:
  """P freshly initialised members (member m's init and PRNG key from split(PRNGKey(seed))[m])
  and their initial policies: all zero ('zeros'), or drawn uniformly on the grids ('uniform',
  from fold_in(PRNGKey(seed), _SEARCH_KEY_TAG + 1)) for `entries` entries, sharded on the
  population axis."""

  def init_member(key):
    init_key, state_key = jax.random.split(key)
    variables = task.model.init(init_key, jnp.zeros((1,) + tuple(image_shape)), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=task.tx.init(params), rng=state_key)

  def init_all():
    members = jax.vmap(init_member)(jax.random.split(jax.random.PRNGKey(seed), population))
    shape = (population, entries)
    if init == "zeros":
      return Population(members, jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.int32))
    policy_key = jax.random.fold_in(jax.random.PRNGKey(seed), _SEARCH_KEY_TAG + 1)
    probability_key, level_key = jax.random.split(policy_key)
    return Population(members,
                      jax.random.randint(probability_key, shape, 0, PROBABILITY_STEPS + 1),
                      jax.random.randint(level_key, shape, 0, pba_policy.MAX_LEVEL + 1))

  return jax.jit(init_all, out_shardings=population_sharding(mesh))()


# ---------------------------------------------------------------------------------------------
# The search.
# ---------------------------------------------------------------------------------------------


def _fresh_record(settings: Settings, rounds: int, population: Population) -> dict[str, Any]:
  """The search's history, saved with each checkpoint (host arrays):
  round_probability / round_level (R, P, E): the policy each member trained with in round r;
  lineage_probability / lineage_level (P, R, E): each member's policies including those it
  inherited through exploits; accuracies (R, P); sources (R, P): the exploit after round r
  (-1 where none); cost (2,): process CPU seconds and wall seconds spent so far (each
  session's from its start, loading and compiling included, to its last checkpoint)."""
  size, entries = settings.population, len(settings.entries)
  lineage_probability = np.zeros((size, rounds, entries), np.int32)
  lineage_level = np.zeros((size, rounds, entries), np.int32)
  lineage_probability[:, 0] = np.asarray(population.probability)
  lineage_level[:, 0] = np.asarray(population.level)
  return {"round_probability": np.zeros((rounds, size, entries), np.int32),
          "round_level": np.zeros((rounds, size, entries), np.int32),
          "lineage_probability": lineage_probability, "lineage_level": lineage_level,
          "accuracies": np.zeros((rounds, size), np.float32),
          "sources": np.full((rounds, size), -1, np.int32),
          "cost": np.zeros((2,), np.float64)}


def evaluate_population(eval_fn, population: Population, batches: list[dict[str, jax.Array]]
                        ) -> np.ndarray:
  """Each member's accuracy (P,) over the padded batches."""
  correct = count = 0.0
  for batch in batches:
    sums = eval_fn(population, batch)
    correct, count = correct + np.asarray(sums["correct"]), count + np.asarray(sums["count"])
  return (correct / np.maximum(count, 1.0)).astype(np.float32)


def entries_of(names: tuple[str, ...], probability: np.ndarray, level: np.ndarray
               ) -> list[tuple[str, float, int]]:
  """A policy's (name, probability, level) entries from its ops and grid arrays (E,)."""
  return [(name, int(p) / PROBABILITY_STEPS, int(l))
          for name, p, l in zip(names, probability, level)]


def merged_schedule(names: tuple[str, ...], starts: list[int], probability: np.ndarray,
                    level: np.ndarray) -> list[tuple[int, list[tuple[str, float, int]]]]:
  """(start_step, entries) pairs of per-round policies (R, E), consecutive equal policies
  merged into the first's start."""
  schedule = []
  for start, prob_row, level_row in zip(starts, probability, level):
    entries = entries_of(names, prob_row, level_row)
    kept = pba_policy.format_entries(entries)
    if not schedule or pba_policy.format_entries(schedule[-1][1]) != kept:
      schedule.append((start, entries))
  return schedule


def summarise(settings: Settings, record: dict[str, Any], rounds_done: int) -> dict[str, Any]:
  """The search's report: per-round accuracies and best members, the final best member's
  schedule (its lineage: the paper's output) and each round's best member's policy, both as
  pba spec strings, and the cost so far next to the papers' GPU-hours."""
  starts = [r * settings.ready_every for r in range(rounds_done)]
  accuracies = record["accuracies"][:rounds_done]
  best_rows = [int(np.argmax(row)) for row in accuracies]
  round_policies = [(record["round_probability"][r, m], record["round_level"][r, m])
                    for r, m in enumerate(best_rows)]
  rounds = [{"round": r, "start_step": starts[r], "end_step": starts[r] + settings.ready_every,
             "accuracies": [round(float(a), 4) for a in accuracies[r]],
             "best_member": best, "best_accuracy": round(float(accuracies[r, best]), 4),
             "best_policy": pba_policy.format_entries(entries_of(settings.entries,
                                                                 *round_policies[r])),
             "exploit_sources": [int(s) for s in record["sources"][r]]}
            for r, best in enumerate(best_rows)]
  final = best_rows[-1] if rounds_done else 0
  lineage = merged_schedule(settings.entries, starts,
                            record["lineage_probability"][final, :rounds_done],
                            record["lineage_level"][final, :rounds_done])
  per_round = merged_schedule(settings.entries, starts,
                              [probability for probability, _ in round_policies],
                              [level for _, level in round_policies])
  cpu_seconds, wall_seconds = (float(v) for v in record["cost"])
  return {
      "rounds": rounds,
      "final_best_member": final,
      "final_best_accuracy": round(float(accuracies[-1, final]), 4) if rounds_done else None,
      "schedule_spec": pba_policy.schedule_spec(lineage) if rounds_done else "",
      "per_round_best_spec": pba_policy.schedule_spec(per_round) if rounds_done else "",
      "search_cost": {"cpu_hours": round(cpu_seconds / 3600.0, 4),
                      "wall_hours": round(wall_seconds / 3600.0, 4),
                      "cpu_count": os.cpu_count(), "devices": jax.device_count(),
                      "platform": jax.default_backend()},
      **papers_cost(),
  }


# Jitted search functions of the sessions of this process, by (config, image shape, mesh): a
# resumed session in the same process (as in the tests) reuses the compiled programs.
_FUNCTIONS: dict[tuple[str, tuple[int, ...], Any], tuple[Any, ...]] = {}


def search_functions(config: ml_collections.ConfigDict, settings: Settings,
                     image_shape: tuple[int, ...], mesh: jax.sharding.Mesh
                     ) -> tuple[Task, tuple[int, ...], Any, Any, Any]:
  """(task, model input shape, step_fn(population, batch), eval_fn(population, batch),
  explore_fn(key, population, accuracies)), jitted with the population axis sharded over the
  mesh (population_step, population_eval, exploit_and_explore)."""
  key = (config.to_json_best_effort(sort_keys=True), tuple(image_shape), mesh)
  if key not in _FUNCTIONS:
    task, base_augment, input_shape = build_search_task(config, image_shape)
    pop_sharding, replicated = population_sharding(mesh), sharding.replicated(mesh)
    step_fn = jax.jit(functools.partial(population_step, task, base_augment, settings),
                      in_shardings=(pop_sharding, pop_sharding),
                      out_shardings=(pop_sharding, pop_sharding), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(population_eval, task),
                      in_shardings=(pop_sharding, replicated), out_shardings=pop_sharding)
    explore_fn = jax.jit(functools.partial(exploit_and_explore, settings),
                         in_shardings=(replicated, pop_sharding, replicated),
                         out_shardings=(pop_sharding, replicated))
    _FUNCTIONS.clear()  # one search's programs at a time
    _FUNCTIONS[key] = (task, input_shape, step_fn, eval_fn, explore_fn)
  return _FUNCTIONS[key]


def run_search(config: ml_collections.ConfigDict, workdir: str,
               data_dir: str | None = None, max_rounds: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) the search of `config` in workdir (checkpoints after every round) and
  returns its report (summarise), with 'rounds_done' and 'num_rounds'. max_rounds stops this
  session after that many rounds in all (None: all of them), as a preempted run would."""
  mesh = sharding.make_mesh()
  check_config(config, mesh.devices.size)
  # A resumed search must be the one the workdir holds (ResumeRefusedError names what differs).
  workdir_lib.check_config(config, workdir)
  with workdir_lock.hold(workdir):
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_config(config, workdir)
    return _run_search(config, workdir, mesh, data_dir, max_rounds)


def _run_search(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                data_dir: str | None, max_rounds: int | None) -> dict[str, Any]:
  """run_search after its checks, under the workdir's lock."""
  session_cpu, session_wall = time.process_time(), time.time()
  settings = Settings.from_config(config)
  train_source, held_out = load_search_data(config, data_dir)
  if len(train_source) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size}: larger than the "
                      f"{len(train_source)} labelled images")
  rounds = config.num_steps // settings.ready_every
  task, image_shape, step_fn, eval_fn, explore_fn = search_functions(
      config, settings, train_source.images.shape[1:], mesh)
  replicated = sharding.replicated(mesh)
  pop_sharding = population_sharding(mesh)
  eval_batches = [jax.device_put(batch, replicated) for batch in
                  pipeline.eval_batches(held_out, config.eval_batch_size, 0, 1)]
  search_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _SEARCH_KEY_TAG)

  population = init_population(task, image_shape, config.seed, settings.population,
                               config.pba.init, mesh, len(settings.entries))
  record = _fresh_record(settings, rounds, population)
  checkpointer = Checkpointer(workdir, config.get("keep_checkpoints", 2), async_save=False,
                              remove_unfinished=True)
  try:
    start_step = checkpointer.latest_step() or 0
    if start_step:
      restored = checkpointer.restore(start_step, {"population": population, **record})
      population = restored.pop("population")
      record = {key: np.array(value) for key, value in restored.items()}
      logging.info("PBA: resumed from %s at step %d", checkpointer.directory, start_step)
    spent_before = record["cost"].copy()
    first_round = start_step // settings.ready_every
    last_round = rounds if max_rounds is None else min(rounds, max_rounds)
    for r in range(first_round, last_round):
      record["round_probability"][r] = np.asarray(population.probability)
      record["round_level"][r] = np.asarray(population.level)
      for step in range(r * settings.ready_every, (r + 1) * settings.ready_every):
        batch = member_batches(train_source, config.seed, settings.population,
                               config.batch_size, step)
        population, metrics = step_fn(population, jax.device_put(batch, pop_sharding))
      accuracies = evaluate_population(eval_fn, population, eval_batches)
      record["accuracies"][r] = accuracies
      if r + 1 < rounds:
        population, source = explore_fn(jax.random.fold_in(search_key, r), population,
                                        jnp.asarray(accuracies))
        source = np.asarray(source)
        record["sources"][r] = source
        for key in ("lineage_probability", "lineage_level"):
          record[key][:, :r + 1] = record[key][source, :r + 1]
        record["lineage_probability"][:, r + 1] = np.asarray(population.probability)
        record["lineage_level"][:, r + 1] = np.asarray(population.level)
      record["cost"] = spent_before + np.asarray(
          [time.process_time() - session_cpu, time.time() - session_wall])
      logging.info("PBA round %d/%d (step %d): held-out accuracy best %.4f mean %.4f, "
                   "loss %.3f", r + 1, rounds, (r + 1) * settings.ready_every,
                   accuracies.max(), accuracies.mean(), float(np.mean(metrics["loss"])))
      checkpointer.save((r + 1) * settings.ready_every, {"population": population, **record})
    checkpointer.wait()
    rounds_done = max(first_round, last_round)
  finally:
    checkpointer.close()
  return {**summarise(settings, record, rounds_done), "rounds_done": rounds_done,
          "num_rounds": rounds, "population": settings.population,
          "ready_every": settings.ready_every, "num_steps": config.num_steps,
          "batch_size_per_member": config.batch_size,
          "num_labelled": len(train_source), "num_held_out": len(held_out)}
