"""Population Based Augmentation: the pba op (augment/pba_policy.py) and the search
(policy_search/pba.py): exploit/explore against hand-worked examples, the op's count and
per-entry probabilities against the paper's rule, the searched spec in a train step, the
device check, resume and 1 vs 8 devices."""

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import augment_methods
from effcv_jax import train
from effcv_jax.augment import pba_policy, spec
from effcv_jax.data import splits
from effcv_jax.errors import ConfigError, ResumeRefusedError
from effcv_jax.policy_search import pba
from effcv_jax.task import TrainState
from tests import pba_tiny
from tests.conftest import REPO_ROOT


# ------------------------------------------------------------------------------------------
# Exploit and explore.
# ------------------------------------------------------------------------------------------


def test_truncation_selection_hand_worked():
  # Ranked best first: 1 (0.9), 5 (0.8), 3, 7, 0, 4, 6 (0.2), 2 (0.1); with P = 8 the top
  # and bottom 25 % are 2 members each. Bottom member 2 draws choice 1 (the 2nd best: 5),
  # bottom member 6 draws choice 0 (the best: 1); the choices of the others are ignored.
  accuracies = jnp.asarray([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6])
  choices = jnp.asarray([1, 1, 1, 1, 1, 1, 0, 1])
  sources = pba.truncation_sources(accuracies, choices, 0.25)
  np.testing.assert_array_equal(sources, [0, 1, 5, 3, 4, 5, 1, 7])
  # Ties rank the lower index higher: members 0 and 1 tie for best, 2 and 3 for worst.
  sources = pba.truncation_sources(jnp.asarray([0.5, 0.5, 0.1, 0.1]), jnp.asarray([0] * 4),
                                   0.25)
  np.testing.assert_array_equal(sources, [0, 1, 2, 0])


def test_perturb_hand_worked():
  values = jnp.asarray([0, 5, 10, 3, 9])
  resample = jnp.asarray([False, True, False, False, False])
  resampled = jnp.asarray([4, 7, 4, 4, 4])
  amount = jnp.asarray([2, 3, 3, 0, 1])
  sign = jnp.asarray([-1, 1, 1, 1, -1])
  # 0 - 2 -> clipped 0; resampled 7; 10 + 3 -> clipped 10; 3 + 0; 9 - 1.
  np.testing.assert_array_equal(pba.perturb(values, 10, resample, resampled, amount, sign),
                                [0, 7, 10, 3, 8])


def test_explore_stays_on_grid_and_resamples_at_its_rate():
  values = jnp.full((20000,), 5, jnp.int32)
  moved = np.asarray(pba.explore(jax.random.PRNGKey(0), values, 9, 0.2, 3))
  assert moved.min() >= 0 and moved.max() <= 9
  # A value moves by at most 3 unless resampled; resampled values land anywhere, so the
  # share of values 0, 1 (reachable only by resampling from 5) is 0.2 * 2 / 10.
  assert abs(np.mean(moved <= 1) - 0.04) < 0.006


def _toy_population(size=4, entries=3):
  members = TrainState(step=jnp.full((size,), 7, jnp.int32),
                       params={"w": jnp.arange(size, dtype=jnp.float32)[:, None] * jnp.ones(2)},
                       batch_stats={}, opt_state={"m": jnp.arange(size, dtype=jnp.float32)},
                       rng=jnp.arange(size * 2, dtype=jnp.uint32).reshape(size, 2))
  return pba.Population(members, jnp.tile(jnp.arange(size)[:, None], (1, entries)),
                        jnp.tile(jnp.arange(size)[:, None], (1, entries)))


def test_exploit_and_explore_copies_weights_and_keeps_keys():
  settings = pba.Settings(4, 2, 0.25, 0.2, 3, "map", 128.0, ("Rotate", "Invert"))
  population = _toy_population()
  new, source = pba.exploit_and_explore(settings, jax.random.PRNGKey(3), population,
                                        jnp.asarray([0.1, 0.9, 0.5, 0.3]))
  # 4 members: the worst (0) copies the best (1); the others keep their own.
  np.testing.assert_array_equal(source, [1, 1, 2, 3])
  np.testing.assert_array_equal(new.members.params["w"][:, 0], [1, 1, 2, 3])
  np.testing.assert_array_equal(new.members.opt_state["m"], [1, 1, 2, 3])
  np.testing.assert_array_equal(new.members.rng, population.members.rng)
  np.testing.assert_array_equal(new.probability[1:], population.probability[1:])
  # The copy's policy is member 1's (all 1) explored: within 3 steps or resampled.
  assert np.all((new.probability[0] >= 0) & (new.probability[0] <= pba.PROBABILITY_STEPS))


# ------------------------------------------------------------------------------------------
# The pba op.
# ------------------------------------------------------------------------------------------


def _applied_ops(layers):
  return np.stack([np.asarray(layer.op_index) for layer in layers], axis=1)


def test_count_distribution():
  # Every entry applies with probability 1: an image gets exactly its drawn count of ops.
  # 100,000 images: the standard error of each share is <= 0.0016; tolerance 0.008 (5 SE).
  batch = 100_000
  ones = jnp.ones((batch, 4))
  layers = pba_policy.draw_layers(jax.random.PRNGKey(0), jnp.broadcast_to(
      jnp.arange(1, 5), (batch, 4)), ones, ones)
  counts = np.sum(_applied_ops(layers) > 0, axis=1)
  shares = np.bincount(counts, minlength=3) / batch
  np.testing.assert_allclose(shares, pba_policy.COUNT_PROBABILITIES, atol=0.008)


def test_entry_probabilities_hand_worked():
  # Entries A (p 0.3) and B (p 0.8), visited in a random order until the count is used up.
  # A applies with count 2: 0.3; count 1: A first 0.3, B first then B fails 0.2 * 0.3, so
  # (0.3 + 0.06) / 2 = 0.18. P(A) = 0.5 * 0.3 + 0.3 * 0.18 = 0.204; likewise
  # P(B) = 0.5 * 0.8 + 0.3 * (0.8 + 0.7 * 0.8) / 2 = 0.604. 100,000 images: tolerance 0.008.
  batch = 100_000
  layers = pba_policy.draw_layers(
      jax.random.PRNGKey(1), jnp.broadcast_to(jnp.asarray([1, 2]), (batch, 2)),
      jnp.broadcast_to(jnp.asarray([0.3, 0.8]), (batch, 2)), jnp.zeros((batch, 2)))
  applied = _applied_ops(layers)
  assert abs(np.mean(np.any(applied == 1, axis=1)) - 0.204) < 0.008
  assert abs(np.mean(np.any(applied == 2, axis=1)) - 0.604) < 0.008
  # No entry applies twice and a second op only follows a first.
  assert not np.any((applied[:, 0] == applied[:, 1]) & (applied[:, 0] > 0))
  assert not np.any((applied[:, 0] == 0) & (applied[:, 1] > 0))


def test_schedule_follows_the_step():
  pipeline = spec.build("pba(schedule=[(0, [('Invert', 1.0, 0)]), (5, [('Invert', 0.0, 0)])])")
  assert pipeline.needs_step
  images = jnp.full((2000, 4, 4, 1), 10.0)
  early, _ = pipeline(jax.random.PRNGKey(0), images, None, step=jnp.int32(4))
  late, _ = pipeline(jax.random.PRNGKey(0), images, None, step=jnp.int32(5))
  # Invert applies to every image whose count is not 0 (probability 0.8) until step 5.
  inverted = np.mean(np.asarray(early[:, 0, 0, 0]) == 245.0)
  assert abs(inverted - 0.8) < 0.03
  np.testing.assert_array_equal(late, images)
  with pytest.raises(ValueError, match="needs the train step's step"):
    pipeline(jax.random.PRNGKey(0), images, None)
  assert not spec.build("pba(policy=[('Rotate', 0.5, 3)])").needs_step


@pytest.mark.parametrize("text, message", [
    ("pba(schedule=[(1, [])])", "starting at 0"),
    ("pba(schedule=[(0, []), (0, [])])", "increasing"),
    ("pba(policy=[('Rotate', 1.5, 3)])", "probability must be in"),
    ("pba(policy=[('Spin', 0.5, 3)])", "unknown op 'Spin'"),
    ("pba()", "exactly one of"),
])
def test_bad_specs(text, message):
  with pytest.raises(ValueError, match=message):
    spec.build(text)


def test_searched_spec_parses_and_runs_in_a_train_step():
  text = pba_policy.schedule_spec([(0, [("Rotate", 0.0, 3), ("Invert", 1.0, 2)]),
                                   (1, [("Rotate", 0.5, 9), ("Equalize", 0.3, 0)])])
  assert text == ("pba(schedule=[(0, [('Invert', 1.0, 2)]), "
                  "(1, [('Rotate', 0.5, 9), ('Equalize', 0.3, 0)])])")
  config = pba_tiny.get_config()
  config.augment = text + "|flip_lr"
  task, _, shape = pba.build_search_task(config, (8, 8, 1))
  task = dataclasses.replace(task, augment=spec.build(config.augment))
  state = jax.tree.map(lambda leaf: leaf[0], pba.init_population(
      task, shape, 0, 1, "zeros", jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)),
      2).members)
  images = jnp.full((16, 8, 8, 1), 10, jnp.uint8)
  batch = {"image": images, "label": jnp.zeros((16,), jnp.int32)}
  step = jax.jit(lambda state, batch: train.train_step(task, state, batch))
  new_state, metrics = step(state, batch)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  # The train step hands the pipeline its step: at step 0 every image with a count > 0 is
  # inverted (a flat image stays flat under the flip).
  def both(state, images):
    aug_key, _ = train.step_keys(state)
    labels = jnp.zeros((16, 10))
    return (train.training_images(task, state, aug_key, images, labels)[0],
            task.augment(aug_key, images, labels, step=jnp.int32(0))[0])
  trained, expected = jax.jit(both)(state, images.astype(jnp.float32))
  np.testing.assert_array_equal(trained, expected)
  assert set(np.unique(np.asarray(trained))) <= {10.0, 245.0}


# ------------------------------------------------------------------------------------------
# The search.
# ------------------------------------------------------------------------------------------


def test_search_split_is_the_runs_labelled_split_and_never_its_validation():
  labels = np.repeat(np.arange(10), 100)
  labelled, held_out = pba.search_split(labels, 200, 100, seed=3, num_holdout=300)
  run = splits.make_split(labels, 300, 200, 3)
  np.testing.assert_array_equal(labelled, run.labelled)
  assert not set(held_out) & (set(run.holdout) | set(run.labelled))
  assert np.bincount(labels[held_out]).tolist() == [10] * 10
  # Without a hold-out (a run evaluated on a test split) the labelled split is make_split's.
  np.testing.assert_array_equal(pba.search_split(labels, 200, 100, seed=3)[0],
                                splits.make_split(labels, 0, 200, 3).labelled)
  with pytest.raises(ConfigError, match="num_eval=600.*the 200 labelled ones and the 300 held"):
    pba.search_split(labels, 200, 600, seed=3, num_holdout=300)


@pytest.mark.parametrize("name", ["pba_fashion_mnist_1000", "pba_fashion_mnist_1000_full",
                                  "pba_cifar10_4000"])
def test_search_configs_pass_their_checks_and_search_the_runs_labelled_split(name):
  """Each search config is valid on one device and searches on the labelled split of the
  runs its policy is for (configs/augment_methods.py's task bases)."""
  config = importlib.import_module(f"configs.{name}").get_config()
  pba.check_config(config, 1)
  task = "cifar10" if "cifar10" in name else "fashion_mnist"
  base = augment_methods.get_config(task).base
  for key in ("dataset", "train_split", "num_labelled", "split_seed"):
    assert config[key] == base[key], key
  assert config.get("num_holdout", 0) == base.get("num_holdout", 0)
  assert config.augment == base.augment   # the flip + crop the policy goes before


def test_population_must_divide_the_devices(tmp_path):
  config = pba_tiny.get_config()
  config.pba.population = 6
  with pytest.raises(ConfigError, match=r"pba.population=6.*multiple of 8"):
    pba.run_search(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  pba.check_config(config, 2)  # 6 divides by 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The tiny search run at once on this process's 8 devices (its report, with 'workdir')."""
  workdir = str(tmp_path_factory.mktemp("pba") / "run")
  return {**pba.run_search(pba_tiny.get_config(), workdir), "workdir": workdir}


def test_search_report(uninterrupted):
  report = uninterrupted
  assert report["rounds_done"] == report["num_rounds"] == 3
  assert [r["start_step"] for r in report["rounds"]] == [0, 2, 4]
  assert all(len(r["accuracies"]) == 8 for r in report["rounds"])
  assert report["final_best_accuracy"] == max(report["rounds"][-1]["accuracies"])
  for text in (report["schedule_spec"], report["per_round_best_spec"]):
    assert text.startswith("pba(") and spec.build(text).stage_names == ("pba",)
  assert report["search_cost"]["cpu_hours"] > 0
  assert report["paper_gpu_hours_cifar10"] == {"AutoAugment": 5000.0, "PBA": 5.0,
                                               "Fast AutoAugment": 3.5}


def test_a_search_resumes_only_with_its_own_config(uninterrupted, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted["workdir"], workdir)
  changed = pba_tiny.get_config()
  changed.pba.resample_probability = 0.5
  with pytest.raises(ResumeRefusedError, match="pba.resample_probability"):
    pba.run_search(changed, workdir)


def test_resumed_on_one_device_equals_uninterrupted_on_eight(uninterrupted, tmp_path):
  """One subprocess with one device runs the first round, stops (as a preempted run would)
  and resumes; its rounds and schedule equal the uninterrupted 8-device search's."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 "
             "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
  code = ("import json, sys; from effcv_jax.policy_search import pba; from tests import "
          "pba_tiny; import jax; assert jax.device_count() == 1; "
          "first = pba.run_search(pba_tiny.get_config(), sys.argv[1], max_rounds=1); "
          "assert first['rounds_done'] == 1, first['rounds_done']; "
          "print(json.dumps(pba.run_search(pba_tiny.get_config(), sys.argv[1])))")
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  one_device = json.loads(result.stdout.strip().splitlines()[-1])
  assert one_device["search_cost"]["devices"] == 1 and uninterrupted["search_cost"][
      "devices"] == 8
  for key in ("rounds", "schedule_spec", "per_round_best_spec", "final_best_accuracy"):
    assert one_device[key] == uninterrupted[key], key
