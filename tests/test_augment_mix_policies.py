"""Erasing, Mixup/CutMix soft labels, the policies (both strategies) and test-time augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effcv_jax import augment
from effcv_jax.augment import autoaugment_tables, policies, tta

BATCH, SIZE, CLASSES = 16, 16, 10


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)), jnp.float32)
  labels = jax.nn.one_hot(jnp.arange(BATCH) % CLASSES, CLASSES)
  return images, labels


@pytest.fixture(scope="module")
def constant_batch():
  """Image i is constant with value i + 1, so a pixel tells which image it came from."""
  images = jnp.broadcast_to(
      jnp.arange(1.0, BATCH + 1.0)[:, None, None, None], (BATCH, SIZE, SIZE, 3))
  labels = jax.nn.one_hot(jnp.arange(BATCH), BATCH)
  return images, labels


def test_random_erasing_erases_boxes_with_probability_p(batch):
  images, labels = batch
  out, out_labels = jax.jit(augment.build("random_erasing(p=0.5, fill=-1.0)"))(jax.random.key(0),
                                                                               images + 1.0, labels)
  erased = np.asarray(out[..., 0] == -1.0)
  per_image = erased.reshape(BATCH, -1).sum(1)
  assert 0 < (per_image > 0).sum() < BATCH
  for mask in erased[per_image > 0]:
    rows, cols = np.nonzero(mask)
    assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
  np.testing.assert_array_equal(out_labels, labels)


def test_cutout_noise_fill_stays_in_range(batch):
  images, labels = batch
  out, _ = jax.jit(augment.build("cutout(size=8, fill='noise')"))(jax.random.key(0), images, labels)
  assert float(out.min()) >= 0 and float(out.max()) <= 255 and not np.array_equal(out, images)


def _source_counts(mixed_images, batch_size):
  """For each image, the fraction of its pixels that came from each source image (cutmix)."""
  source = np.rint(np.asarray(mixed_images[..., 0])).astype(int) - 1  # (B, H, W)
  return np.stack([np.bincount(s.reshape(-1), minlength=batch_size) for s in source
                  ]) / source[0].size


def test_cutmix_labels_equal_the_exact_pasted_area(constant_batch):
  images, labels = constant_batch
  out, mixed = jax.jit(augment.build("cutmix(alpha=1.0)"))(jax.random.key(1), images, labels)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(mixed, _source_counts(out, BATCH), atol=1e-6)
  assert np.any(np.asarray(mixed).max(-1) < 1.0)  # something was pasted


def test_mixup_mixes_pixels_and_labels_with_the_same_weight(constant_batch):
  images, labels = constant_batch
  out, mixed = jax.jit(augment.build("mixup(alpha=0.4)"))(jax.random.key(2), images, labels)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  # Pixel value = sum_j weight_j * (j + 1) for the label weights.
  expected = np.asarray(mixed) @ np.arange(1.0, BATCH + 1.0)
  np.testing.assert_allclose(out[:, 0, 0, 0], expected, rtol=1e-5)
  assert len({round(float(w), 4) for w in np.asarray(mixed).max(-1)
             }) > BATCH // 2  # per-image lambda


def test_mixup_or_cutmix_switches_per_image(constant_batch):
  images, labels = constant_batch
  out, mixed = jax.jit(augment.build("mixup_or_cutmix(switch_prob=0.5)"))(jax.random.key(3), images,
                                                                          labels)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  integer_pixels = np.all(np.asarray(out) == np.rint(np.asarray(out)), axis=(1, 2, 3))
  counts = _source_counts(out, BATCH)
  cutmixed = integer_pixels & np.all(np.isclose(counts, mixed, atol=1e-6), axis=1)
  assert 0 < cutmixed.sum() < BATCH


def test_mixing_with_probability_zero_is_identity(constant_batch):
  images, labels = constant_batch
  out, mixed = jax.jit(augment.build("mixup_or_cutmix(p=0.0)"))(jax.random.key(3), images, labels)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(mixed, labels)


POLICY_SPECS = [
    "randaugment(num_ops=2, magnitude=9, magnitude_std=0.5)", "trivial_augment_wide",
    "autoaugment(policy='imagenet')"
]


@pytest.fixture(scope="module")
def policy_outputs(batch):
  """(spec, strategy) -> (output for key 7, output for key 7 again, output for key 8)."""
  images, labels = batch
  outputs = {}
  for spec in POLICY_SPECS:
    for strategy in ("batched", "map"):
      fn = jax.jit(
          augment.build(spec[:-1] + f", strategy='{strategy}')" if "(" in
                        spec else f"{spec}(strategy='{strategy}')"))
      outputs[spec, strategy] = (fn(jax.random.key(7), images,
                                    labels)[0], fn(jax.random.key(7), images,
                                                   labels)[0], fn(jax.random.key(8), images,
                                                                  labels)[0])
  return outputs


@pytest.mark.parametrize("spec", POLICY_SPECS)
def test_policies_are_deterministic_in_range_and_strategy_independent(batch, policy_outputs, spec):
  images, _ = batch
  batched, batched_again, batched_other = policy_outputs[spec, "batched"]
  mapped, _, _ = policy_outputs[spec, "map"]
  np.testing.assert_array_equal(batched, batched_again)
  assert not np.array_equal(batched, batched_other)
  assert batched.shape == images.shape and float(batched.min()) >= 0 and float(batched.max()) <= 255
  # Both strategies draw the same per-image ops and magnitudes: the same images, up to float rounding.
  close = np.abs(np.asarray(batched) - np.asarray(mapped)) <= 1.0
  assert close.mean() > 0.999


def test_randaugment_gives_images_different_ops(batch):
  images, labels = batch
  same = jnp.broadcast_to(images[:1], images.shape)
  out, _ = jax.jit(augment.build("randaugment(num_ops=1, magnitude=9)"))(jax.random.key(0), same,
                                                                         labels)
  assert len({np.asarray(image).tobytes() for image in out}) > BATCH // 2


def test_randaugment_magnitude_zero_with_colour_free_ops_is_identity(batch):
  images, labels = batch
  spec = "randaugment(num_ops=3, magnitude=0, ops=('Identity', 'ShearX', 'Rotate', 'TranslateY', 'Brightness'))"
  out, _ = jax.jit(augment.build(spec))(jax.random.key(0), images, labels)
  np.testing.assert_allclose(out, images, atol=1e-3)


def test_policy_ops_follow_their_single_op_definitions(batch):
  images, _ = batch
  space = policies.op_space()
  layer_ops = [space["Identity"], space["Solarize"], space["Rotate"]]

  @jax.jit
  def run_layer(op_index):
    layer = policies.Layer(op_index, jnp.full((BATCH,), 0.5), jnp.ones((BATCH,)))
    return policies.apply_layer_batched(images, layer, layer_ops, 128.0, "bilinear")

  rotated = jax.jit(augment.build("rotate(degrees=(15, 15), fill=128)"))(jax.random.key(0), images,
                                                                         None)[0]
  for index, expected in [(1, augment.colour.solarize(images, 128.0)), (2, rotated)]:
    np.testing.assert_allclose(run_layer(jnp.full((BATCH,), index)), expected, atol=1e-3)
  mixed = jnp.arange(BATCH) % 3  # each image its own op
  out = run_layer(mixed)
  for index in range(3):
    expected = [images, augment.colour.solarize(images, 128.0), rotated][index]
    np.testing.assert_allclose(out[mixed == index], expected[mixed == index], atol=1e-3)


def test_policy_on_grayscale_images(batch):
  images, labels = batch
  gray = images[..., :1]
  for spec in ("randaugment(strategy='batched')",):
    out, _ = jax.jit(augment.build(spec))(jax.random.key(0), gray, labels)
    assert out.shape == gray.shape and float(out.min()) >= 0 and float(out.max()) <= 255


def test_every_autoaugment_policy_builds():
  assert policies.AUTOAUGMENT_POLICIES is autoaugment_tables.AUTOAUGMENT_POLICIES
  assert set(autoaugment_tables.AUTOAUGMENT_POLICIES) == {"imagenet", "cifar10", "svhn"}
  for policy, table in autoaugment_tables.AUTOAUGMENT_POLICIES.items():
    assert len(table) == 25
    for sub_policy in table:
      assert len(sub_policy) == 2
      for name, probability, magnitude in sub_policy:
        assert name in policies.op_space(), name
        assert 0.0 <= probability <= 1.0 and magnitude in range(10), (policy, sub_policy)
    augment.build(f"autoaugment(policy='{policy}')")


def test_unknown_policy_and_strategy_raise():
  with pytest.raises(ValueError, match="unknown AutoAugment policy 'cifar100'"):
    augment.build("autoaugment(policy='cifar100')")
  with pytest.raises(ValueError, match="strategy must be one of"):
    augment.build("randaugment(strategy='vmap')")
  with pytest.raises(ValueError, match="unknown policy op 'Blur'"):
    augment.build("randaugment(ops=('Blur',))")


def test_full_pipeline_runs_under_jit(batch):
  images, labels = batch
  fn = jax.jit(
      augment.build("flip_lr|random_crop(padding=4)|randaugment(num_ops=2, magnitude=9)|"
                    "cutout(size=4)|mixup_or_cutmix"))
  out, mixed = fn(jax.random.key(0), images, labels)
  assert out.shape == images.shape and mixed.shape == labels.shape
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Test-time augmentation.
# --------------------------------------------------------------------------------------------


def _mean_colour_logits(images):
  """A toy classifier whose logits depend on position: left-half minus right-half means."""
  half = images.shape[2] // 2
  left, right = images[:, :, :half].mean((1, 2)), images[:, :, half:].mean((1, 2))
  return (left - right) / 10.0  # (B, 3)


def test_tta_identity_equals_plain_softmax(batch):
  images, _ = batch
  probs = tta.predict_probs(_mean_colour_logits, images, "identity")
  np.testing.assert_allclose(probs, jax.nn.softmax(_mean_colour_logits(images)), rtol=1e-6)


def test_tta_flip_averages_the_two_views(batch):
  images, _ = batch
  probs = tta.predict_probs(_mean_colour_logits, images, "flip")
  expected = (jax.nn.softmax(_mean_colour_logits(images)) +
              jax.nn.softmax(_mean_colour_logits(images[:, :, ::-1]))) / 2
  np.testing.assert_allclose(probs, expected, rtol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_tta_presets_and_custom_views(batch):
  images, _ = batch
  for views in list(tta.PRESETS) + [
      "identity|flip_lr+shift(dx=2, dy=-1)|zoom(fraction=0.75)|crop(top=0, left=0, "
      "height=12, width=12, size=16)"
  ]:
    probs = jax.jit(lambda x, views=views: tta.predict_probs(_mean_colour_logits, x, views))(images)
    assert probs.shape == (BATCH, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert len(tta.parse_views("ten_shift")) == 10
  shifted = tta.build_views("shift(dx=2, dy=0, pad_mode='constant')")[0](images)
  np.testing.assert_array_equal(shifted[:, :, 2:], images[:, :, :-2])
  with pytest.raises(ValueError, match="unknown augmentation op 'mixup'"):
    tta.predict_probs(_mean_colour_logits, images, "identity|mixup")
