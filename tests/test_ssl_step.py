"""The jitted semi-supervised step (effcv_jax/ssl/step.py) on scikit-learn's 8x8 digits with
a tiny CNN: the algorithms run (FixMatch sharded over the 8 fake devices); the views are drawn
per seed; FixMatch with 50 labels learns from the unlabelled images."""

import jax
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import augment as augment_lib
from effcv_jax import sharding
from effcv_jax.data import sources, splits
from effcv_jax.ssl import algorithms
from effcv_jax.ssl import step as ssl_step
from effcv_jax.task import create_train_state, init_task_and_state, predict_logits

WEAK = "random_crop(padding=1, pad_mode='constant')"
STRONG = WEAK + "|randaugment(num_ops=2, magnitude=10, magnitude_min=1, p=0.5)|cutout(size=4)"
# A strong view that compiles in a fraction of RandAugment's time, for the tests of the
# algorithms' plumbing.
STRONG_CHEAP = WEAK + "|cutout(size=4)"


@pytest.fixture(scope="module")
def digits():
  """(images uint8 (1797, 8, 8, 1), labels (1797,), split: 300 held out, 50 labelled)."""
  images, labels = sources.load_arrays("pkg:digits", "train")
  return images, labels.astype(np.int32), splits.make_split(labels, 300, 50, seed=0)


def _config(algorithm, seed=0, mu=2, num_steps=10, strong=STRONG):
  config = digits_tiny.get_config()
  config.seed, config.num_steps = seed, num_steps
  config.ssl.algorithm = algorithm
  config.ssl.update(algorithms.PAPER_DEFAULTS[algorithm])
  config.ssl.update(dict(mu=mu, weak_augment=WEAK, strong_augment=strong))
  return config


def _setup(config, digits, mesh):
  """(task, step function, train state, algorithm state) for `config` on `mesh`."""
  images, _, split = digits
  task, state = init_task_and_state(config, images.shape[1:], mesh)
  ssl_task = ssl_step.build_ssl_task(config, len(split.unlabelled))
  ssl_state = sharding.replicate(algorithms.init_state(ssl_task.settings, state.params), mesh)
  return task, ssl_step.jit_ssl_step(task, ssl_task, mesh), state, ssl_state


def _batches(digits, batch_size, mu, rng):
  """A labelled batch and an unlabelled batch of mu * batch_size (with their labels)."""
  images, labels, split = digits
  labelled = rng.choice(split.labelled, batch_size)
  index = rng.choice(len(split.unlabelled), mu * batch_size, replace=False)
  unlabelled = split.unlabelled[index]
  return ({"image": images[labelled], "label": labels[labelled]},
          {"image": images[unlabelled], "index": index.astype(np.int32),
           "label": labels[unlabelled]})


def _train(config, digits, mesh, num_steps, batch_size, data_seed=0, setup=None):
  """Runs num_steps steps from _setup's (task, step, state, algorithm state) (default: a new
  one); returns (task, state, algorithm state, per-step metrics)."""
  task, step_fn, state, ssl_state = setup or _setup(config, digits, mesh)
  rng = np.random.default_rng(data_seed)
  history = []
  for _ in range(num_steps):
    labelled, unlabelled = _batches(digits, batch_size, config.ssl.mu, rng)
    state, ssl_state, metrics = step_fn(state, ssl_state, sharding.to_global(labelled, mesh),
                                        sharding.to_global(unlabelled, mesh))
    history.append(metrics)
  return task, state, ssl_state, jax.device_get(history)


# Each set of views the step computes, and FreeMatch's and SoftMatch's states; UDA's step is
# FixMatch's, and FlexMatch's (with its per-example memory) runs in tests/test_ssl_run.py.
@pytest.mark.parametrize("algorithm", ["supervised", "pseudo_label", "mean_teacher", "fixmatch",
                                       "freematch", "softmatch"])
def test_algorithms_step(algorithm, digits):
  """Each algorithm on one device with a cheap strong view; FixMatch with RandAugment over
  the 8 fake devices (batches sharded, states replicated). The loss is its parts' sum; the
  Mean Teacher's teacher is the EMA of the student's parameters after each update."""
  if algorithm == "fixmatch":
    mesh, config = sharding.make_mesh(), _config(algorithm)
  else:
    mesh, config = sharding.make_mesh(jax.devices()[:1]), _config(algorithm, strong=STRONG_CHEAP)
  config.ssl.ema_m = 0.9
  _, step_fn, state, ssl_state = _setup(config, digits, mesh)
  rng = np.random.default_rng(0)
  params = [jax.device_get(state.params)]
  for _ in range(2):
    labelled, unlabelled = _batches(digits, 8, config.ssl.mu, rng)
    state, ssl_state, metrics = step_fn(state, ssl_state, sharding.to_global(labelled, mesh),
                                        sharding.to_global(unlabelled, mesh))
    metrics = jax.device_get(metrics)
    params.append(jax.device_get(state.params))
    assert metrics["nonfinite"] == 0 and np.isfinite(metrics["loss"])
    np.testing.assert_allclose(metrics["loss"], metrics["sup_loss"] + metrics["unsup_weight"]
                               * metrics["unsup_loss"]
                               + 0.01 * metrics.get("fairness_loss", 0.0), rtol=1e-5)
  assert int(state.step) == 2 and int(ssl_state["step"]) == 2
  if algorithm == "softmatch":  # two EMA updates of the confidences' mean from 1/10
    assert 0.1 * 0.999 ** 2 < float(ssl_state["softmatch"]["mean"]) < 1.0
    assert int(ssl_state["softmatch"]["uniform_align"]["count"]) == 2
  assert ("unlabelled_accuracy" in metrics) == (algorithm != "supervised")
  if algorithm == "mean_teacher":
    expected = jax.tree.map(lambda p0, p1, p2: 0.9 * (0.9 * p0 + 0.1 * p1) + 0.1 * p2, *params)
    jax.tree.map(lambda t, e: np.testing.assert_allclose(t, e, rtol=1e-6, atol=1e-7),
                 jax.device_get(ssl_state["teacher"]), expected)


def test_steps_are_deterministic_per_seed_and_views_independent(digits):
  mesh = sharding.make_mesh(jax.devices()[:1])
  task, step_fn, _, _ = _setup(_config("fixmatch", strong=STRONG_CHEAP), digits, mesh)
  runs = []
  for seed in (0, 0, 1):  # one compiled step, states of each seed
    config = _config("fixmatch", seed=seed, strong=STRONG_CHEAP)
    state = create_train_state(task, digits[0].shape[1:], seed, mesh)
    settings = ssl_step.build_ssl_task(config, len(digits[2].unlabelled)).settings
    setup = (task, step_fn, state, algorithms.init_state(settings, state.params))
    runs.append(_train(config, digits, mesh, 2, batch_size=8, setup=setup))
  same, other = jax.device_get(runs[0][1].params), jax.device_get(runs[1][1].params)
  jax.tree.map(np.testing.assert_array_equal, same, other)
  assert [m["loss"] for m in runs[0][3]] == [m["loss"] for m in runs[1][3]]
  assert runs[2][3][0]["loss"] != runs[0][3][0]["loss"]  # another seed: other init and views
  # The weak and strong keys differ, so even one spec draws two different views.
  keys = ssl_step.view_keys(runs[0][1])
  pipeline = ssl_step.build_ssl_task(_config("fixmatch"), 1).weak
  images = digits[0][:16].astype(np.float32)
  weak, _ = pipeline(keys["weak"], images, None)
  strong, _ = pipeline(keys["strong"], images, None)
  assert not np.array_equal(np.asarray(weak), np.asarray(strong))


def test_fixmatch_learns_from_unlabelled_digits(digits):
  """50 labels (5 per class), 1,447 unlabelled: FixMatch's mask rate grows from 0 as the model
  becomes confident, its unlabelled loss is active, and its pseudo-labels are mostly right."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  images, labels, split = digits
  results = {}
  for algorithm in ("supervised", "fixmatch"):
    config = _config(algorithm, mu=7, num_steps=300)
    task, state, _, history = _train(config, digits, mesh, 300, batch_size=16)
    logits = predict_logits(task, {"params": state.params, "batch_stats": state.batch_stats},
                            images[split.holdout].astype(np.float32))
    accuracy = float(np.mean(np.argmax(logits, -1) == labels[split.holdout]))
    results[algorithm] = (accuracy, history)
  history = results["fixmatch"][1]
  early = np.mean([m["mask_rate"] for m in history[:20]])
  late = np.mean([m["mask_rate"] for m in history[-20:]])
  assert early < 0.05 and late > 0.3, (early, late)
  assert np.mean([m["unsup_loss"] for m in history[-20:]]) > 0.05
  assert np.mean([m["unlabelled_accuracy"] for m in history[-20:]]) > 0.7
  assert results["fixmatch"][0] > results["supervised"][0], {
      k: v[0] for k, v in results.items()}


def test_randaugment_magnitude_min_draws_the_magnitude_per_image():
  """FixMatch's RandAugment: magnitude uniform in [magnitude_min, magnitude] per image. With
  Brightness alone on a flat grey 100, factor 1 +- 0.9 * m / 10: a fixed m = 5 gives 55 or 145,
  m in [0, 10] spreads over [10, 190]."""
  images = np.full((64, 4, 4, 1), 100.0, np.float32)
  key = jax.random.PRNGKey(0)
  fixed = augment_lib.build("randaugment(num_ops=1, magnitude=5, magnitude_min=5, "
                            "ops=('Brightness',), strategy='batched')")
  values = np.unique(np.round(np.asarray(fixed(key, images, None)[0])))
  np.testing.assert_array_equal(values, [55.0, 145.0])
  spread = augment_lib.build("randaugment(num_ops=1, magnitude=10, magnitude_min=0, "
                             "ops=('Brightness',), strategy='batched')")
  values = np.asarray(spread(key, images, None)[0])[:, 0, 0, 0]
  assert values.min() >= 10 - 1e-3 and values.max() <= 190 + 1e-3
  assert len(np.unique(np.round(values))) > 30
  with pytest.raises(ValueError, match="magnitude_min"):
    augment_lib.build("randaugment(magnitude=5, magnitude_min=6)")
