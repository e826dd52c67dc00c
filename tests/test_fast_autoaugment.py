"""Fast AutoAugment: explicit autoaugment policies, stratified folds, the jitted candidate
scoring, search-space checks and a tiny resumable search on the packaged 8x8 digits."""

import importlib
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import augment_methods, digits_tiny
from effcv_jax import augment, sharding, train
from effcv_jax import task as task_lib
from effcv_jax.augment import autoaugment_tables, policies
from effcv_jax.errors import ConfigError
from effcv_jax.policy_search import fast_autoaugment as faa


def _images(n=6, size=8, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, channels)).astype(np.float32)


def test_explicit_policy_equals_the_named_table():
  table = autoaugment_tables.AUTOAUGMENT_POLICIES["cifar10"]
  explicit = [[(name, p, float(level)) for name, p, level in sub] for sub in table]
  named = augment.build("autoaugment(policy='cifar10')")
  listed = augment.build(f"autoaugment(policy={explicit!r})")
  images, key = _images(16, channels=3), jax.random.PRNGKey(3)
  np.testing.assert_array_equal(named(key, images, None)[0], listed(key, images, None)[0])


def test_explicit_policy_applies_its_ops():
  # One sub-policy, Invert with probability 1: every image inverted; probability 0: unchanged.
  images, key = _images(), jax.random.PRNGKey(0)
  inverted = augment.build("autoaugment(policy=[[('Invert', 1.0, 0)]])")(key, images, None)[0]
  np.testing.assert_allclose(inverted, 255.0 - images)
  kept = augment.build("autoaugment(policy=[[('Invert', 0.0, 0), ('Rotate', 0.0, 9)]])")
  np.testing.assert_allclose(kept(key, images, None)[0], images)


@pytest.mark.parametrize("policy, message", [
    ("[[('Rotat', 0.5, 1.0)]]", r"policy\[0\]\[0\].*unknown op 'Rotat'"),
    ("[[('Rotate', 0.5, 1.0)], [('Color', 1.2, 3)]]", r"policy\[1\]\[0\].*probability 1.2"),
    ("[[('Rotate', 0.5, 9.5)]]", r"policy\[0\]\[0\].*level 9.5 is not in \[0, 9\]"),
    ("[[('Rotate', 0.5)]]", r"policy\[0\]\[0\].*\(op name, probability, level\)"),
    ("[]", "non-empty list of sub-policies"),
])
def test_explicit_policy_rejects_bad_entries(policy, message):
  with pytest.raises(ValueError, match=message):
    augment.build(f"autoaugment(policy={policy})")


def test_folds_are_disjoint_cover_and_are_stratified():
  labels = np.repeat(np.arange(4), [10, 7, 5, 13])
  folds = faa.stratified_folds(labels, 5, seed=1)
  joined = np.concatenate(folds)
  assert len(joined) == len(labels) and set(joined.tolist()) == set(range(len(labels)))
  sizes = [len(fold) for fold in folds]
  assert max(sizes) - min(sizes) <= 1
  for label, count in enumerate([10, 7, 5, 13]):
    per_fold = [int(np.sum(labels[fold] == label)) for fold in folds]
    assert sum(per_fold) == count and max(per_fold) - min(per_fold) <= 1
  again = faa.stratified_folds(labels, 5, seed=1)
  assert all(np.array_equal(a, b) for a, b in zip(folds, again))


def _search_config(**search):
  fold = digits_tiny.get_config()
  fold.augment = ""
  fold.num_labelled = 100
  fold.num_steps = 8
  fold.eval_every = 8
  fold.checkpoint_every = 8
  fold.log_every = 4
  settings = faa.default_search()
  settings.update(dict(num_folds=2, num_rounds=1, num_trials=5, num_selected=2,
                       num_sub_policies=2, num_ops=2, num_startup_trials=2,
                       ops=("Rotate", "Invert", "Color", "ShearX")))
  settings.update(search)
  return ml_collections.ConfigDict(dict(fold=fold, search=settings))


@pytest.mark.parametrize("search, message", [
    (dict(ops=("Rotate", "Blur")), "search.ops names unknown op 'Blur'"),
    (dict(num_folds=1), "search.num_folds=1 must be >= 2"),
    (dict(num_selected=6), r"search.num_selected=6 \(N\) must be <= search.num_trials=5"),
    (dict(num_folds=11), "search.num_folds=11 exceeds the 10 examples"),   # 10 per class
])
def test_bad_search_space_fails_before_training(tmp_path, search, message):
  workdir = str(tmp_path / "search")
  with pytest.raises(ConfigError, match=message):
    faa.run(_search_config(**search), workdir)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("name, task", [("fast_autoaugment_fashion_mnist_1000", "fashion_mnist"),
                                        ("fast_autoaugment_cifar10_4000", "cifar10")])
def test_search_configs_search_the_runs_labelled_split_with_their_network(name, task):
  """Each search config's fold models are the runs' network on their labelled split
  (configs/augment_methods.py's task bases) without augmentation, and its search is valid."""
  config = importlib.import_module(f"configs.{name}").get_config()
  faa.check_search(config.search)
  base = augment_methods.get_config(task).base
  for key in ("dataset", "train_split", "num_labelled", "split_seed", "model", "input_mean"):
    assert config.fold[key] == base[key], key
  assert config.fold.get("num_holdout", 0) == base.get("num_holdout", 0)
  assert config.fold.augment == ""


def test_scorer_equals_the_model_on_spec_augmented_images():
  config = _search_config().fold
  mesh = sharding.make_mesh(jax.devices()[:1])
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
  variables = task_lib.eval_variables(state)
  sub_policies = [[("Rotate", 0.7, 6.5), ("Invert", 0.4, 0.0)], [("Color", 0.9, 3.25)]]
  space = faa.search_space(_search_config().search.ops)
  tables = policies.sub_policy_tables(policies.check_sub_policies(sub_policies), space)
  scorer = faa.make_scorer(task, space)
  pipeline = augment.build(faa.policy_spec(sub_policies))

  @jax.jit
  def reference(images, labels, key):   # per image: correct, cross-entropy
    augmented = pipeline.stages[0].apply(key, images.astype(jnp.float32), None)[0]
    log_probs = jax.nn.log_softmax(task_lib.predict_logits(task, variables, augmented))
    return (jnp.argmax(log_probs, -1) == labels,
            -jnp.take_along_axis(log_probs, labels[:, None], 1)[:, 0])

  images = _images(6).astype(np.uint8)
  labels = np.arange(6, dtype=np.int32)
  padded = np.concatenate([images, images[:2]])
  padded_labels = np.concatenate([labels, labels[:2]])
  mask = np.arange(8) < 6
  key = jax.random.PRNGKey(7)
  sums = scorer(variables, padded, padded_labels, mask, tables, key)
  correct, loss = (np.asarray(part) for part in reference(padded, padded_labels, key))
  assert float(sums["correct"]) == np.sum(correct[:6]) and float(sums["count"]) == 6
  np.testing.assert_allclose(float(sums["loss"]), np.sum(loss[:6]), rtol=1e-5)
  # score_policy: 2 draws (12 images) in batches of 8, the last padded; batch b keyed
  # fold_in(key, b).
  scored = faa.score_policy(scorer, variables, images, labels, tables, key, 8, num_draws=2)
  stacked = np.concatenate([images, images, images[:4]])
  stacked_labels = np.concatenate([labels, labels, labels[:4]])
  parts = [reference(stacked[start:start + 8], stacked_labels[start:start + 8],
                     jax.random.fold_in(key, batch)) for batch, start in enumerate((0, 8))]
  correct = np.concatenate([np.asarray(parts[0][0]), np.asarray(parts[1][0])[:4]])
  loss = np.concatenate([np.asarray(parts[0][1]), np.asarray(parts[1][1])[:4]])
  assert scored["accuracy"] == pytest.approx(np.mean(correct))
  assert scored["loss"] == pytest.approx(np.mean(loss), rel=1e-5)


def test_tiny_search_gives_a_spec_that_trains_and_resumes_to_the_same_policy(tmp_path):
  config = _search_config()
  interrupted = str(tmp_path / "interrupted")
  assert faa.run(config, interrupted, stop_after_trials=3) is None   # stopped mid-round
  report = faa.run(config, interrupted)
  assert report["num_sub_policies"] == 2 * 1 * 2 * 2   # folds * rounds * N * sub-policies
  again = faa.run(config, interrupted)                  # finished: read back
  assert again["policy"] == report["policy"]
  # An uninterrupted search with the same fold models proposes the same candidates.
  straight = str(tmp_path / "straight")
  for fold in range(2):
    shutil.copytree(os.path.join(interrupted, f"fold_{fold}"),
                    os.path.join(straight, f"fold_{fold}"))
  assert faa.run(config, straight)["policy"] == report["policy"]
  for fold in report["folds"]:
    assert fold["num_train"] == fold["num_held_out"] == 50
    losses = [trial["loss"] for trial in fold["rounds"][0]["selected"]]
    assert losses == sorted(losses)
  assert report["search_cost"]["cpu_hours"] > 0 and report["search_cost"]["sessions"] == 2
  assert report["paper_gpu_hours_cifar10"]["Fast AutoAugment"] == 3.5

  # The policy string parses and runs in a train step.
  train_config = digits_tiny.get_config()
  train_config.augment = report["policy"]
  mesh = sharding.make_mesh(jax.devices()[:1])
  task, state = task_lib.init_task_and_state(train_config, (8, 8, 1), mesh)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8),
           "label": rng.integers(0, 10, 32).astype(np.int32)}
  state, metrics = train.jit_train_step(task, mesh)(state, sharding.to_global(batch, mesh))
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
