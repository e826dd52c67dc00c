"""AugMix (augment/augmix.py), its Jensen-Shannon consistency loss (losses.py) and the
supervised step's JSD and adversarial-training options (train.py).

The divergence is checked against a NumPy reference and a hand-worked value, the ops'
parameters against the reference operators' formulas worked by hand and the colour and
translation ops against Pillow; the steps on a tiny model (digits, 8 x 8).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from configs import digits_tiny
from effcv_jax import augment, config_utils, losses, sharding, train
from effcv_jax import task as task_lib
from effcv_jax.augment import augmix, policies
from effcv_jax.robustness import adversarial

BATCH, SIZE = 8, 16


@pytest.fixture(scope="module")
def images():
  """(8, 16, 16, 3) float images of whole numbers in [0, 255] and one-hot labels (8, 10)."""
  rng = np.random.default_rng(0)
  pixels = jnp.asarray(rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)), jnp.float32)
  return pixels, jax.nn.one_hot(jnp.arange(BATCH) % 10, 10)


# --------------------------------------------------------------------------
# The Jensen-Shannon divergence.

def _numpy_jsd(logits: list[np.ndarray]) -> np.ndarray:
  """(1/n) sum_i KL(p_i || clip(mean p, 1e-7, 1)), per example, in float64."""
  probs = [np.exp(x - x.max(1, keepdims=True)) for x in np.asarray(logits, np.float64)]
  probs = [p / p.sum(1, keepdims=True) for p in probs]
  mixture = np.clip(sum(probs) / len(probs), 1e-7, 1.0)
  return np.mean([np.sum(p * (np.log(p) - np.log(mixture)), 1) for p in probs], 0)


def test_jensen_shannon_divergence_equals_numpy_reference():
  rng = np.random.default_rng(1)
  logits = [rng.normal(0, 3, (6, 5)).astype(np.float32) for _ in range(3)]
  got = np.asarray(losses.jensen_shannon_divergence([jnp.asarray(x) for x in logits]))
  assert got.shape == (6,)
  np.testing.assert_allclose(got, _numpy_jsd(logits), rtol=1e-5, atol=1e-7)
  # Equal distributions: 0 (a constant shift of the logits is the same distribution).
  same = losses.jensen_shannon_divergence([jnp.asarray(logits[0]), jnp.asarray(logits[0] + 4)])
  np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)
  # Two disjoint point masses: ln 2, the largest value for two distributions.
  apart = losses.jensen_shannon_divergence([jnp.array([[60.0, -60.0]]),
                                            jnp.array([[-60.0, 60.0]])])
  np.testing.assert_allclose(np.asarray(apart), [np.log(2.0)], rtol=1e-6)
  # Symmetric in its arguments.
  swapped = losses.jensen_shannon_divergence([jnp.asarray(x) for x in logits[::-1]])
  np.testing.assert_allclose(np.asarray(swapped), got, rtol=1e-6)


# --------------------------------------------------------------------------
# The AugMix ops and chains.

def test_op_parameters_follow_the_reference_formulas():
  """Level 2.9 of 10 on a 32 px image: posterize 4 - int(2.9 * 4 / 10) = 3 bits, solarize
  at 256 - int(2.9 * 25.6) = 182, rotate int(2.9 * 3) = 8 degrees, shear 0.087, translate
  int(2.9 * (32 / 3) / 10) = 3 pixels."""
  space = {op.name: op for op in augmix.augmix_op_space()}
  assert list(space) == ["Identity", *augmix.AUGMIX_OPS]
  for name in ("Color", "Contrast", "Brightness", "Sharpness"):      # the test corruptions'
    assert name not in space
  fraction = jnp.float32(0.29)
  expected = {"Posterize": 3.0, "Solarize": 182.0, "Rotate": 8.0, "ShearX": 0.087,
              "ShearY": 0.087, "TranslateX": 3.0, "TranslateY": 3.0}
  for name, value in expected.items():
    np.testing.assert_allclose(float(space[name].strength(fraction, (32, 32))), value,
                               rtol=1e-6, err_msg=name)
  assert {n for n, op in space.items() if op.signed} == {"Rotate", "ShearX", "ShearY",
                                                          "TranslateX", "TranslateY"}


def test_chain_ops_match_pillow(images):
  pixels, _ = images
  space = augmix.augmix_op_space()
  index = {op.name: i for i, op in enumerate(space)}
  fraction = jnp.full((BATCH,), 0.29, jnp.float32)       # 16 px: translate int(0.29*16/3) = 1
  uint8 = np.asarray(pixels, np.uint8)
  references = {
      "AutoContrast": lambda im, sign: ImageOps.autocontrast(im),
      "Equalize": lambda im, sign: ImageOps.equalize(im),
      "Posterize": lambda im, sign: ImageOps.posterize(im, 3),
      "Solarize": lambda im, sign: ImageOps.solarize(im, 182),
      "TranslateX": lambda im, sign: im.transform(im.size, Image.AFFINE,
                                                  (1, 0, -sign, 0, 1, 0), Image.BILINEAR),
      "TranslateY": lambda im, sign: im.transform(im.size, Image.AFFINE,
                                                  (1, 0, 0, 0, 1, -sign), Image.BILINEAR),
  }
  sign = jnp.where(jnp.arange(BATCH) % 2 == 0, 1.0, -1.0)
  run = {strategy: jax.jit(lambda op_index, strategy=strategy: policies.run_policy(
      pixels, [policies.Layer(op_index, fraction, sign)], space, strategy, 0.0, "bilinear"))
         for strategy in ("map", "batched")}             # one compilation per strategy
  for name, reference in references.items():
    for strategy in ("map", "batched"):
      out = np.asarray(run[strategy](jnp.full((BATCH,), index[name])))
      want = np.stack([np.asarray(reference(Image.fromarray(u), float(s)))
                       for u, s in zip(uint8, sign)])
      # Pillow's autocontrast truncates the stretch in its lookup table; ours keeps it.
      tolerance = 1.0 if name == "AutoContrast" else 1e-3
      np.testing.assert_allclose(out, want, atol=tolerance, err_msg=f"{name} {strategy}")


def test_chain_depths_ops_and_levels_are_drawn_per_chain():
  count = 3000
  layers = augmix.chain_layers(jax.random.key(0), count, -1, 3.0)
  assert len(layers) == 3
  ops = np.stack([np.asarray(layer.op_index) for layer in layers], 1)        # (N, 3)
  depth = (ops > 0).sum(1)
  # Depth 1..3 uniformly; the ops fill a chain's first `depth` steps, Identity after.
  np.testing.assert_allclose(np.bincount(depth, minlength=4)[1:] / count, [1 / 3] * 3,
                             atol=0.04)
  assert ((ops > 0) == (np.arange(3) < depth[:, None])).all()
  used = ops[ops > 0]
  assert used.min() == 1 and used.max() == len(augmix.AUGMIX_OPS)
  assert np.bincount(used)[1:].min() > 0.6 * len(used) / len(augmix.AUGMIX_OPS)
  fractions = np.concatenate([np.asarray(layer.fraction) for layer in layers])
  assert fractions.min() >= 0.01 and fractions.max() < 0.3             # level in [0.1, 3)
  fixed = augmix.chain_layers(jax.random.key(0), 50, 2, 3.0)
  assert len(fixed) == 2 and all((np.asarray(layer.op_index) > 0).all() for layer in fixed)


def test_augmix_view_is_deterministic_per_key_and_keeps_shape_and_range(images):
  pixels, labels = images
  pipeline = jax.jit(augment.build("augmix"))
  out, out_labels = pipeline(jax.random.key(3), pixels, labels)
  again, _ = pipeline(jax.random.key(3), pixels, labels)
  other, _ = pipeline(jax.random.key(4), pixels, labels)
  assert out.shape == pixels.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  assert not np.allclose(np.asarray(out), np.asarray(other))
  assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
  np.testing.assert_array_equal(np.asarray(out_labels), np.asarray(labels))
  changed = np.abs(np.asarray(out - pixels)).reshape(BATCH, -1).max(1)
  assert (changed > 1.0).all()                                  # every image is augmented
  # Both policy strategies run the same chains (a one-stage pipeline splits its key once).
  stage_key = jax.random.split(jax.random.key(3), 1)[0]
  for strategy in ("map", "batched"):
    view = augmix.augment_and_mix(stage_key, pixels, strategy=strategy)
    np.testing.assert_allclose(np.asarray(view), np.asarray(out), atol=1e-3)


def test_mixing_weights_have_the_dirichlet_and_beta_moments():
  """At alpha 1: each chain weight of Dirichlet(1, 1, 1) has mean 1/3 and variance
  (1 * 2) / (3^2 * 4) = 1/18; Beta(1, 1) is uniform (mean 1/2, variance 1/12)."""
  weights, skip = augmix.mixing_weights(jax.random.key(0), jax.random.key(1), 20000, 3, 1.0)
  weights, skip = np.asarray(weights), np.asarray(skip)
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
  assert weights.min() >= 0 and 0 <= skip.min() and skip.max() <= 1
  np.testing.assert_allclose(weights.mean(0), [1 / 3] * 3, atol=0.01)
  np.testing.assert_allclose(weights.var(0), [1 / 18] * 3, atol=0.003)
  np.testing.assert_allclose([skip.mean(), skip.var()], [0.5, 1 / 12], atol=0.01)


def test_augmix_arguments_are_checked():
  for spec, message in (("augmix(severity=0)", "severity"), ("augmix(width=0)", "width"),
                        ("augmix(depth=0)", "depth"), ("augmix(alpha=0.0)", "alpha"),
                        ("augmix(strategy='loop')", "strategy")):
    with pytest.raises(ValueError, match=message):
      augment.build(spec)


def test_jsd_views_share_the_clean_image(images):
  pixels, labels = images
  pipeline = augment.build("flip_lr|augmix(width=2, depth=1)")
  clean, first, second, out_labels = jax.jit(
      lambda k, x, y: augmix.jsd_views(pipeline, k, x, y))(jax.random.key(5), pixels, labels)
  flipped = pixels[:, :, ::-1]
  for image, plain, mirrored in zip(np.asarray(clean), np.asarray(pixels), np.asarray(flipped)):
    assert np.array_equal(image, plain) or np.array_equal(image, mirrored)
  assert not np.allclose(np.asarray(first), np.asarray(second))
  for view in (first, second):
    assert view.shape == pixels.shape and float(view.min()) >= 0 and float(view.max()) <= 255
  np.testing.assert_array_equal(np.asarray(out_labels), np.asarray(labels))
  with pytest.raises(ValueError, match="ending with augmix"):
    augmix.jsd_views(augment.build("augmix|flip_lr"), jax.random.key(0), pixels, labels)


# --------------------------------------------------------------------------
# The train step: JSD and adversarial training on a tiny digits model.

def _config(**overrides):
  return config_utils.with_overrides(digits_tiny.get_config(), {
      "num_steps": 3, "log_every": 1, "eval_every": 3, "checkpoint_every": 3, **overrides})


def _task_and_state(**overrides):
  task, state = task_lib.init_task_and_state(_config(**overrides), (8, 8, 1),
                                             sharding.make_mesh())
  return task, state


@pytest.fixture(scope="module")
def digits_batch():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.clip(digits.images[:32] * 16, 0, 255).astype(np.uint8)[..., None]
  return {"image": jnp.asarray(images), "label": jnp.asarray(digits.target[:32], jnp.int32)}


def test_jsd_step_adds_the_weighted_divergence_to_the_clean_cross_entropy(digits_batch):
  task, state = _task_and_state(**{"augment": "augmix", "augmix.jsd": True})
  assert task.augmix_jsd and task.augmix_jsd_weight == 12.0
  _, metrics = jax.jit(train.train_step, static_argnums=0)(task, state, digits_batch)
  loss, ce, jsd = (float(metrics[k]) for k in ("loss", "ce_loss", "jsd_loss"))
  assert np.isfinite(loss) and jsd > 0 and loss > ce
  np.testing.assert_allclose(loss, ce + 12.0 * jsd, rtol=1e-5)
  # The same numbers by hand: the model once on [clean; view 1; view 2] in training mode.
  labels = jax.nn.one_hot(digits_batch["label"], 10)

  def by_hand(state, images):
    aug_key, dropout_key = train.step_keys(state)
    views = augmix.jsd_views(task.augment, aug_key, images, labels)[:3]
    logits, _ = train.forward_train(task, state, state.params,
                                    task_lib.model_inputs(task, jnp.concatenate(views)),
                                    dropout_key)
    return jnp.split(logits, 3)

  parts = jax.jit(by_hand)(state, digits_batch["image"].astype(jnp.float32))
  np.testing.assert_allclose(ce, float(jnp.mean(losses.softmax_cross_entropy(parts[0], labels))),
                             rtol=1e-5)
  np.testing.assert_allclose(jsd, float(np.mean(_numpy_jsd([np.asarray(p) for p in parts]))),
                             rtol=1e-4)


@pytest.fixture(scope="module")
def clean_step(digits_batch):
  """The state of an un-augmented digits run at initialisation and its clean step's loss."""
  task, state = _task_and_state(augment="")
  _, metrics = jax.jit(train.train_step, static_argnums=0)(task, state, digits_batch)
  return state, float(metrics["loss"])


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_adversarial_step_loss_exceeds_the_clean_loss_at_the_same_params(digits_batch,
                                                                         clean_step, method):
  clean_state, clean_loss = clean_step
  task, state = _task_and_state(**{"augment": "", "adversarial.method": method,
                                   "adversarial.epsilon": 16.0, "adversarial.steps": 3})
  jax.tree.map(np.testing.assert_array_equal, state.params, clean_state.params)
  assert task.adversarial_steps == (3 if method == "pgd" else 1)
  assert train.attack_step_size(task) == pytest.approx(
      2.5 * 16 / 3 if method == "pgd" else 16.0)
  _, attacked = jax.jit(train.train_step, static_argnums=0)(task, state, digits_batch)
  assert float(attacked["loss"]) > clean_loss
  # The step's images are those of the attack module, within epsilon of the batch.
  labels = jax.nn.one_hot(digits_batch["label"], 10)
  images = digits_batch["image"].astype(jnp.float32)

  def both(state):
    aug_key, _ = train.step_keys(state)
    made, _ = train.training_images(task, state, aug_key, images, labels)
    want = adversarial.linf_attack(task, task_lib.raw_variables(state), images,
                                   digits_batch["label"], jax.random.fold_in(aug_key, 1),
                                   jnp.float32(16.0), jnp.float32(train.attack_step_size(task)),
                                   task.adversarial_steps, True)
    return made, want

  made, want = jax.jit(both)(state)
  np.testing.assert_allclose(np.asarray(made), np.asarray(want), atol=1e-4)
  assert float(jnp.max(jnp.abs(made - images))) <= 16.0 + 1e-3
  assert float(jnp.max(jnp.abs(made - images))) > 8.0          # the attack moved the pixels


@pytest.mark.parametrize("overrides, logged", [
    ({"augment": "random_crop(padding=1)|augmix(width=1, depth=1)", "augmix.jsd": True},
     "jsd_loss"),
    ({"adversarial.method": "pgd", "adversarial.steps": 2}, "loss"),
], ids=["jsd", "pgd"])
def test_a_few_steps_train_with_each_option(tmp_path, overrides, logged):
  results = train.train_and_evaluate(_config(**overrides), str(tmp_path / "run"))
  assert results["step"] == 3 and np.isfinite(results["loss"])
  lines = [json.loads(line) for line in
           pathlib.Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  trained = [line for line in lines if line["split"] == "train"]
  assert len(trained) == 3 and all(np.isfinite(line[logged]) for line in trained)


def test_steps_that_ignore_the_options_refuse_them():
  from effcv_jax import preflight  # pylint: disable=import-outside-toplevel
  plain = _config()
  preflight.refuse_supervised_only_keys(plain, "", "the semi-supervised step")   # off: fine
  jsd = _config(**{"augment": "augmix", "augmix.jsd": True})
  with pytest.raises(preflight.ConfigError, match=r"^config\.augmix\.jsd = True is read by the "
                     r"supervised train step only; the semi-supervised step would ignore it: "
                     r"set --config\.augmix\.jsd=False$"):
    preflight.refuse_supervised_only_keys(jsd, "", "the semi-supervised step")
