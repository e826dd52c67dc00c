"""The class-conditional GAN (effcv_jax/gan): losses equal NumPy references, spectral norm
keeps the discriminator's layers near unit spectral norm, steps and samples are deterministic
under a key, a resumed GAN run equals the uninterrupted one, generated images replace exactly
round(ratio * B) images of a classifier batch, bad settings fail before anything is written,
and the Fréchet distance equals a SciPy reference."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from configs import digits_tiny, gan_digits_tiny, gan_fashion_mnist_1000
from effcv_jax import preflight, sharding
from effcv_jax import task as task_lib
from effcv_jax import train as train_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.errors import ConfigError
from effcv_jax.gan import evaluate, losses, mixing, quality
from effcv_jax.gan import models as gan_models
from effcv_jax.gan import run as gan_run
from effcv_jax.gan import step as step_lib
from experiments import docs

IMAGE_SHAPE = (8, 8, 1)


def _gan_config(num_steps=4, **gan):
  config = gan_digits_tiny.get_config()
  config.num_steps = num_steps
  config.gan.update(gan)
  return config


def _saved_state(workdir):
  config = _gan_config()
  task = step_lib.build_gan_task(config, IMAGE_SHAPE)
  template = step_lib.init_gan_state(task, IMAGE_SHAPE, config.seed, sharding.make_mesh(),
                                     abstract=True)
  checkpointer = Checkpointer(str(workdir))
  try:
    return checkpointer.restore(checkpointer.latest_step(), template)
  finally:
    checkpointer.close()


def _metric_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f)]


@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory):
  """A 4-step GAN run uninterrupted ('straight') and the same run stopped at step 2 and
  resumed ('resumed'), with their results."""
  root = tmp_path_factory.mktemp("gan")
  straight = gan_run.train_gan(_gan_config(4), str(root / "straight"))
  first = gan_run.train_gan(_gan_config(2), str(root / "resumed"))
  resumed = gan_run.train_gan(_gan_config(4), str(root / "resumed"))
  return root, straight, first, resumed


@pytest.fixture(scope="module")
def tiny_task():
  config = _gan_config()
  task = step_lib.build_gan_task(config, IMAGE_SHAPE)
  return task, step_lib.init_gan_state(task, IMAGE_SHAPE, seed=0)


def _batch(seed=0, size=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (size,) + IMAGE_SHAPE, dtype=np.uint8),
          "label": rng.integers(0, 10, size).astype(np.int32)}


def test_losses_equal_numpy_references():
  real = np.array([2.0, 0.5, -1.0, 1.0], np.float32)
  fake = np.array([-2.0, -0.5, 0.25, 3.0], np.float32)
  # hinge: mean(relu(1 - real)) = (0 + 0.5 + 2 + 0) / 4; mean(relu(1 + fake)) =
  # (0 + 0.5 + 1.25 + 4) / 4
  assert float(losses.discriminator_hinge_loss(real, fake)) == pytest.approx(
      2.5 / 4 + 5.75 / 4)
  assert float(losses.generator_hinge_loss(fake)) == pytest.approx(-0.1875)
  assert float(losses.discriminator_wasserstein_loss(real, fake)) == pytest.approx(
      fake.mean() - real.mean())
  assert float(losses.generator_wasserstein_loss(fake)) == pytest.approx(-fake.mean())
  gradients = np.random.default_rng(0).normal(size=(3, 2, 2, 1)).astype(np.float32)
  norms = np.linalg.norm(gradients.reshape(3, -1), axis=1)
  assert float(losses.gradient_penalty(gradients)) == pytest.approx(
      np.mean((norms - 1.0) ** 2), rel=1e-5)


def test_spectral_norm_keeps_the_top_singular_value_near_one():
  discriminator = gan_models.Discriminator(num_classes=10, width=4)
  images = jnp.zeros((2,) + IMAGE_SHAPE)
  labels = jnp.zeros((2,), jnp.int32)
  variables = discriminator.init(jax.random.PRNGKey(0), images, labels)
  stats = variables["batch_stats"]
  apply = jax.jit(lambda stats: discriminator.apply(
      {"params": variables["params"], "batch_stats": stats}, images, labels,
      update_stats=True, mutable=["batch_stats"])[1]["batch_stats"])
  for _ in range(50):
    stats = apply(stats)
  for i in range(5):
    kernel = np.asarray(variables["params"][f"conv_{i}"]["kernel"])
    sigma = float(stats[f"sn_conv_{i}"][f"conv_{i}/kernel/sigma"])
    top = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    assert top / sigma == pytest.approx(1.0, abs=1e-3)   # the kernel the layer applies


def test_gan_step_and_samples_are_deterministic_under_a_key(tiny_task):
  task, state = tiny_task
  step = jax.jit(lambda s, b: step_lib.gan_step(task, s, b))
  batch = _batch()
  (state_a, metrics_a), (state_b, metrics_b) = step(state, batch), step(state, batch)
  assert jax.tree.all(jax.tree.map(np.array_equal, state_a, state_b))
  assert {k: float(v) for k, v in metrics_a.items()} == {
      k: float(v) for k, v in metrics_b.items()}
  assert int(state_a.step) == 1 and float(metrics_a["nonfinite"]) == 0.0
  other, _ = step(state.replace(rng=jax.random.PRNGKey(9)), batch)
  assert not np.array_equal(other.generator["project"]["kernel"],
                            state_a.generator["project"]["kernel"])
  labels = jnp.arange(10)
  first = step_lib.sample_pixels(task, state.generator, jax.random.PRNGKey(1), labels)
  again = step_lib.sample_pixels(task, state.generator, jax.random.PRNGKey(1), labels)
  other_key = step_lib.sample_pixels(task, state.generator, jax.random.PRNGKey(2), labels)
  assert first.shape == (10,) + IMAGE_SHAPE and np.array_equal(first, again)
  assert not np.array_equal(first, other_key)
  assert 0.0 <= float(first.min()) and float(first.max()) <= 255.0


def test_wgan_gp_step_reports_the_penalty(tiny_task):
  _, state = tiny_task
  task = step_lib.build_gan_task(_gan_config(loss="wgan_gp"), IMAGE_SHAPE)
  _, metrics = jax.jit(lambda s, b: step_lib.gan_step(task, s, b))(state, _batch())
  assert float(metrics["gradient_penalty"]) > 0.0
  assert float(metrics["d_loss"]) == pytest.approx(
      float(metrics["d_fake"] - metrics["d_real"] + 10.0 * metrics["gradient_penalty"]),
      rel=1e-5)


def test_resumed_gan_run_equals_the_uninterrupted_one(gan_runs):
  root, straight, first, resumed = gan_runs
  assert first["step"] == 2 and resumed["step"] == straight["step"] == 4
  assert resumed["image_shape"] == list(IMAGE_SHAPE)
  assert [resumed[k] for k in ("d_real", "d_fake")] == [straight[k] for k in ("d_real", "d_fake")]
  saved = [_saved_state(root / name) for name in ("straight", "resumed")]
  assert jax.tree.all(jax.tree.map(np.array_equal, *saved))
  lines = [[l for l in _metric_lines(root / name) if l["split"] == "train"]
           for name in ("straight", "resumed")]
  assert lines[0] == [{**l, "images_per_s": lines[0][i]["images_per_s"]}
                      for i, l in enumerate(lines[1])]
  grid = np.asarray(Image.open(root / "straight" / gan_run.SAMPLES_PNG))
  assert grid.shape == (10 * 8, 3 * 8)   # one row per class, grid_per_class samples


def test_mixing_replaces_round_ratio_times_b_images_and_labels():
  images = jnp.arange(6 * 2 * 2 * 1, dtype=jnp.float32).reshape(6, 2, 2, 1)
  labels = jax.nn.one_hot(jnp.array([0, 1, 2, 0, 1, 2]), 3)
  def generate(key):
    return jnp.full((2, 2, 2, 1), 255.0), jnp.array([2, 1])
  mixed_images, mixed_labels = mixing.mix_generated(generate, jax.random.PRNGKey(0), images,
                                                    labels)
  assert np.array_equal(mixed_images[:2], np.full((2, 2, 2, 1), 255.0))
  assert np.array_equal(mixed_images[2:], images[2:])
  assert np.array_equal(mixed_labels, np.array(
      [[0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32))
  assert [mixing.generated_count(r, 16) for r in (0.0, 0.3, 0.5, 0.99)] == [0, 5, 8, 16]


def _classifier_config(gan_workdir, ratio):
  config = digits_tiny.get_config()
  config.batch_size, config.num_steps = 16, 2
  config.gan_augment.update(dict(workdir=str(gan_workdir), ratio=ratio))
  return config


def test_the_supervised_step_trains_on_generated_images_deterministically(gan_runs):
  gan_workdir = gan_runs[0] / "straight"
  config = _classifier_config(gan_workdir, 0.3)
  mesh = sharding.make_mesh()
  generate = mixing.load_generate_fn(config, IMAGE_SHAPE, mesh)
  key = jax.random.PRNGKey(3)
  images, labels = generate(key)
  assert images.shape == (5,) + IMAGE_SHAPE and labels.shape == (5,)   # round(0.3 * 16)
  assert all(np.array_equal(a, b) for a, b in zip(generate(key), (images, labels)))
  task, state = task_lib.init_task_and_state(config, IMAGE_SHAPE, mesh)
  batch = _batch(size=16)
  plain = jax.jit(lambda s, b: train_lib.train_step(task, s, b))
  step = train_lib.with_generated(generate)(task, mesh)   # donates the state it is given
  metrics = [jax.device_get(f(jax.tree.map(jnp.copy, state), batch)[1])
             for f in (plain, step, step)]
  assert metrics[1]["loss"] == metrics[2]["loss"] != metrics[0]["loss"]


def test_bad_gan_settings_fail_before_anything_is_written(gan_runs, tmp_path):
  gan_workdir = gan_runs[0] / "straight"
  workdir = tmp_path / "run"
  cases = [(_classifier_config(gan_workdir, 1.0), "config.gan_augment.ratio = 1.0"),
           (_classifier_config(gan_workdir, -0.1), "config.gan_augment.ratio = -0.1"),
           (_classifier_config("", 0.5), "config.gan_augment.workdir"),
           (_classifier_config(tmp_path, 0.5), "not a GAN run's workdir")]
  unfinished = tmp_path / "unfinished"
  shutil.copytree(gan_workdir, unfinished)
  os.remove(unfinished / "results.json")
  cases.append((_classifier_config(unfinished, 0.5), "has not finished"))
  for config, message in cases:
    with pytest.raises(ConfigError, match=message):
      train_lib.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()
  with pytest.raises(ConfigError, match="config.gan_augment.ratio"):
    preflight.refuse_supervised_only_keys(_classifier_config(gan_workdir, 0.5), "",
                                          "the semi-supervised step")
  for config, message in [(_gan_config(loss="bce"), "config.gan.loss"),
                          (_gan_config(groups=3), "config.gan.groups = 3"),
                          (_gan_config(generator_lr=0.0), "config.gan.generator_lr")]:
    with pytest.raises(ConfigError, match=message):
      gan_run.train_gan(config, str(workdir))
    assert not workdir.exists()
  for shipped in (gan_digits_tiny, gan_fashion_mnist_1000):
    gan_run.check_gan_config(shipped.get_config())
  resized = _gan_config()
  resized.image_size = 10
  with pytest.raises(ConfigError, match="config.image_size"):
    gan_run.train_gan(resized, str(workdir))
  assert not workdir.exists()   # the lock's release removes the workdir it created


def test_frechet_distance_equals_a_scipy_reference():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(200, 4))
  b = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)) + 0.5
  (mean_a, cov_a), (mean_b, cov_b) = quality.feature_statistics(a), quality.feature_statistics(b)
  assert np.allclose(cov_a, np.cov(a.T)) and np.allclose(mean_b, b.mean(0))
  root = scipy.linalg.sqrtm(cov_a @ cov_b).real
  reference = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
  assert quality.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(reference,
                                                                                 rel=1e-6)
  assert quality.frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0.0, abs=1e-9)


def test_penultimate_features_are_the_heads_input_and_the_grid_has_a_row_per_class(tmp_path):
  config = digits_tiny.get_config()
  task, state = task_lib.init_task_and_state(config, IMAGE_SHAPE, sharding.make_mesh())
  images = jnp.asarray(_batch(size=4)["image"], jnp.float32)
  variables = task_lib.eval_variables(state)
  features = quality.penultimate_features(task, variables, images)
  head = variables["params"]["head"]
  assert features.shape == (4, config.model_kwargs.hidden)
  assert np.allclose(features @ head["kernel"] + head["bias"],
                     task_lib.predict_logits(task, variables, images), atol=1e-5)
  samples = np.stack([np.full((2, 3, 1), value, np.uint8) for value in range(6)])
  grid = quality.sample_grid(samples, rows=3)   # 3 classes, 2 samples each
  assert grid.shape == (6, 6, 1)
  assert np.array_equal(grid[::2, ::3, 0], np.array([[0, 1], [2, 3], [4, 5]]))
  quality.write_png(str(tmp_path / "grid.png"), grid)
  assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), grid[..., 0])


def test_quality_measures_samples_with_a_trained_classifier(gan_runs, tmp_path):
  gan_workdir = gan_runs[0] / "straight"
  classifier_workdir = tmp_path / "classifier"
  config = digits_tiny.get_config()
  config.num_steps = 2
  train_lib.train_and_evaluate(config, str(classifier_workdir))
  results = evaluate.measure_quality(str(gan_workdir), str(classifier_workdir),
                                     num_samples=40, train_steps=2, batch_size=16)
  with open(gan_workdir / evaluate.QUALITY_JSON) as f:
    assert json.load(f) == results
  assert results["num_samples"] == 40 and results["generated_only_steps"] == 2
  assert results["num_real_eval"] == 300 and results["num_real_train"] == 1497
  assert results["frechet_distance"] > 0 and results["real_train_frechet_distance"] > 0
  assert 0.0 <= results["classifier_accuracy_on_generated"] <= 1.0
  generated_only = gan_workdir / evaluate.GENERATED_ONLY_DIR.format(num_samples=40, seed=0)
  with open(generated_only / "results.json") as f:
    assert json.load(f)["accuracy"] == results["generated_only_accuracy"]
  # --report: the measures with the GAN's and the classifier's settings, the sample grid
  # beside the JSON, and a docs block that shows both.
  prefix = str(tmp_path / "reports" / "gan_quality_tiny")
  report = evaluate.write_quality_report(results, prefix,
                                         "python -m experiments.gan_quality ...")
  with open(prefix + ".json") as f:
    assert json.load(f) == report
  assert report["quality"] == results and report["samples_png"] == "gan_quality_tiny_samples.png"
  assert report["gan"]["num_steps"] == 4 and report["gan"]["loss"] == "hinge"
  assert report["classifier"]["model"] == config.model
  assert report["classifier"]["num_steps"] == 2
  with open(tmp_path / "reports" / report["samples_png"], "rb") as f, \
       open(gan_workdir / gan_run.SAMPLES_PNG, "rb") as g:
    assert f.read() == g.read()
  assert docs.kind_of(report) == "gan_quality"
  block = docs.render_gan_quality("gan_quality_tiny", report)
  assert f"**{results['frechet_distance']:.2f}**" in block
  assert docs.pct(results["generated_only_accuracy"]) in block
  assert "](../reports/gan_quality_tiny_samples.png)" in block
