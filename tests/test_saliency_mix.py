"""FMix, SaliencyMix and PuzzleMix: masks, boxes, label weights, sharding, the train step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs import digits_tiny
from effcv_jax import augment, preflight, sharding, train
from effcv_jax import task as task_lib
from effcv_jax.augment import erase_mix
from effcv_jax.augment import saliency_mix as sm
from effcv_jax.errors import ConfigError

BATCH, SIZE = 16, 16


@pytest.fixture(scope="module")
def constant_batch():
  """Image i is constant with value i + 1, so a pixel tells which image it came from."""
  images = jnp.broadcast_to(
      jnp.arange(1.0, BATCH + 1.0)[:, None, None, None], (BATCH, SIZE, SIZE, 3))
  return images, jax.nn.one_hot(jnp.arange(BATCH), BATCH)


def _source_fractions(mixed_images):
  """For each image, the fraction of its pixels that came from each source image."""
  source = np.rint(np.asarray(mixed_images[..., 0])).astype(int) - 1
  return np.stack([np.bincount(s.reshape(-1), minlength=BATCH) for s in source]) / source[0].size


def _blob(centre, hw=(SIZE, SIZE), width=1.5):
  """A Gaussian bump (H, W) of standard deviation `width` pixels, 1 at `centre` (row, col)."""
  rows, cols = np.indices(hw)
  return np.exp(-((rows - centre[0])**2 + (cols - centre[1])**2) / (2 * width**2))


def _hand_made_saliency(images, labels):
  """Image i is salient around a point that depends on i (one Gaussian blob)."""
  index = jnp.rint(images[:, 0, 0, 0]).astype(jnp.int32) - 1
  rows, cols = jnp.indices((images.shape[1], images.shape[2]))
  centre_y = (index * 5) % images.shape[1]
  centre_x = (index * 3 + 2) % images.shape[2]
  return jnp.exp(-((rows - centre_y[:, None, None])**2 + (cols - centre_x[:, None, None])**2)
                 / 8.0)


# --------------------------------------------------------------------------------------------
# FMix.
# --------------------------------------------------------------------------------------------


def test_fmix_masks_have_the_requested_area_and_are_low_frequency():
  keep = jnp.tile(jnp.asarray([0.1, 0.3, 0.5, 0.77]), 64)
  own, area = jax.jit(sm.fmix_masks, static_argnums=2)(jax.random.key(0), keep, (32, 32))
  own, area, keep = np.asarray(own), np.asarray(area), np.asarray(keep)
  np.testing.assert_array_equal(area, own.mean(axis=(1, 2)))
  # Stochastic rounding of keep * 1024 pixels: each area within one pixel, unbiased on average.
  assert np.all(np.abs(area - keep) < 1 / 1024 + 1e-7)
  for value in (0.1, 0.3, 0.5, 0.77):
    assert abs(area[keep == np.float32(value)].mean() - value) < 0.5 / 1024
  # Low-frequency masks: neighbouring pixels agree far more often than in a random mask.
  agree = np.mean(own[:, 1:] == own[:, :-1]), np.mean(own[:, :, 1:] == own[:, :, :-1])
  assert min(agree) > 0.85
  # A lower decay power keeps more high frequencies: less agreement.
  rough, _ = sm.fmix_masks(jax.random.key(0), jnp.asarray(keep), (32, 32), decay_power=1.0)
  assert np.mean(np.asarray(rough)[:, 1:] == np.asarray(rough)[:, :-1]) < agree[0] - 0.05


def test_fmix_labels_are_the_mask_area_and_deterministic(constant_batch):
  images, labels = constant_batch
  op = jax.jit(augment.build("fmix(alpha=1.0, decay_power=3.0)"))
  out, mixed = op(jax.random.key(1), images, labels)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(mixed, _source_fractions(out), atol=1e-6)
  assert np.any(np.asarray(mixed).max(-1) < 1.0)
  again, _ = op(jax.random.key(1), images, labels)
  other, _ = op(jax.random.key(2), images, labels)
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, other)


def test_fmix_mean_area_is_the_mean_of_lambda():
  """Over many images the kept area averages E[lambda] = 1/2 for Beta(alpha, alpha)."""
  images = jnp.broadcast_to(jnp.arange(1.0, 257.0)[:, None, None, None], (256, 8, 8, 1))
  labels = jax.nn.one_hot(jnp.arange(256), 256)
  _, mixed = jax.jit(augment.build("fmix(alpha=0.5)"))(jax.random.key(3), images, labels)
  own_weight = np.asarray(mixed)[np.arange(256), np.arange(256)]
  assert abs(own_weight.mean() - 0.5) < 0.06  # std of the mean: 0.35 / 16 = 0.022


# --------------------------------------------------------------------------------------------
# SaliencyMix.
# --------------------------------------------------------------------------------------------


def test_saliency_box_contains_the_argmax_of_a_hand_made_map():
  rng = np.random.default_rng(0)
  peaks = [(0, 0), (15, 15), (0, 15), (7, 3)] + [tuple(rng.integers(0, SIZE, 2)) for _ in range(12)]
  maps = np.stack([_blob(peak) + 0.1 * rng.random((SIZE, SIZE)) * (_blob(peak) < 0.5)
                   for peak in peaks])
  keep = jnp.asarray(rng.uniform(0.05, 0.7, len(peaks)), jnp.float32)
  (top, left, bottom, right), kept = sm.saliency_boxes(jnp.asarray(maps), keep)
  top, left, bottom, right = map(np.asarray, (top, left, bottom, right))
  for i, (y, x) in enumerate(peaks):
    assert np.unravel_index(np.argmax(maps[i]), maps[i].shape) == (y, x)
    assert top[i] <= y < bottom[i] and left[i] <= x < right[i]
  area = (bottom - top) * (right - left) / SIZE**2
  np.testing.assert_allclose(kept, 1.0 - area, atol=1e-6)


def _spectral_residual_reference(grey):
  """NumPy/SciPy spectral residual of 64 x 64 grey images (no resizing needed)."""
  spectrum = np.fft.fft2(grey)
  log_amplitude = np.log1p(np.abs(spectrum))
  mean = ndimage.uniform_filter(log_amplitude, size=(1, 3, 3), mode="mirror")
  back = np.fft.ifft2(np.exp(log_amplitude - mean) * np.exp(1j * np.angle(spectrum)))
  saliency = ndimage.gaussian_filter(np.abs(back)**2, sigma=(0, 8, 8), truncate=2 / 8,
                                     mode="mirror")  # 5 taps
  return saliency / saliency.max(axis=(1, 2), keepdims=True)


def test_spectral_residual_matches_numpy_and_finds_an_odd_patch():
  rng = np.random.default_rng(1)
  grey = np.tile(np.where(np.arange(64) % 8 < 4, 80.0, 160.0), (3, 64, 1))  # vertical stripes
  grey += rng.normal(0, 2, grey.shape)
  grey[:, 40:46, 12:18] = 250.0                                               # an odd patch
  saliency = np.asarray(sm.spectral_residual_saliency(jnp.asarray(grey[..., None], jnp.float32)))
  np.testing.assert_allclose(saliency, _spectral_residual_reference(grey), atol=2e-4)
  for image in saliency:
    y, x = np.unravel_index(np.argmax(image), image.shape)
    assert 37 <= y <= 48 and 9 <= x <= 20
  # Colour images: ITU-R 601 luma; other sizes are resized to 64 x 64 and back.
  colour = jnp.asarray(rng.integers(0, 256, (2, 32, 32, 3)), jnp.float32)
  luma = np.asarray(colour) @ np.asarray([0.299, 0.587, 0.114])
  np.testing.assert_allclose(sm.spectral_residual_saliency(colour),
                             sm.spectral_residual_saliency(jnp.asarray(luma[..., None])),
                             atol=1e-4)
  assert sm.spectral_residual_saliency(colour).shape == (2, 32, 32)


def test_saliencymix_pastes_the_box_around_the_partners_most_salient_pixel(constant_batch):
  images, labels = constant_batch
  # Each image: its constant j + 1 plus a faint 3 x 3 patch (pixels still tell the source).
  patches = np.zeros((BATCH, SIZE, SIZE, 3), np.float32)
  for j in range(BATCH):
    top, left = (3 * j) % (SIZE - 2), (5 * j + 1) % (SIZE - 2)
    patches[j, top:top + 3, left:left + 3] = 0.45
  images = images + jnp.asarray(patches)
  out, mixed = jax.jit(augment.build("saliencymix(alpha=1.0)"))(jax.random.key(4), images, labels)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(mixed, _source_fractions(out), atol=1e-6)
  saliency = np.asarray(jax.jit(sm.spectral_residual_saliency)(images))
  source = np.rint(np.asarray(out[..., 0]) - 0.2).astype(int) - 1
  checked = 0
  for i in range(BATCH):
    if mixed[i, i] < 1.0:  # something was pasted: the box holds the partner's peak
      partner = int(np.argmax(np.where(np.arange(BATCH) == i, -1.0, np.asarray(mixed)[i])))
      peak = np.unravel_index(np.argmax(saliency[partner]), (SIZE, SIZE))
      assert source[i][peak] == partner, (i, partner, peak)
      checked += 1
  assert checked >= BATCH // 2


# --------------------------------------------------------------------------------------------
# PuzzleMix.
# --------------------------------------------------------------------------------------------


def _kept_saliency(own_pixels, own_saliency, partner_saliency):
  """Saliency kept by a mask (True = own), each map normalised to sum 1: in [0, 2]."""
  own_saliency = own_saliency / own_saliency.sum(axis=(1, 2), keepdims=True)
  partner_saliency = partner_saliency / partner_saliency.sum(axis=(1, 2), keepdims=True)
  return (np.where(own_pixels, own_saliency, partner_saliency)).sum(axis=(1, 2))


def test_puzzlemix_mask_keeps_more_saliency_than_a_cutmix_box_of_the_same_area():
  rng = np.random.default_rng(2)
  count, size, grid = 8, 32, 4
  own_saliency = np.stack([_blob(rng.integers(4, 28, 2), (size, size), 3.0) for _ in range(count)])
  partner_saliency = np.stack([_blob(rng.integers(4, 28, 2), (size, size), 3.0)
                               for _ in range(count)])
  images = jnp.asarray(rng.integers(0, 256, (count, size, size, 3)), jnp.float32)
  keep = jnp.full((count,), 0.5)
  unary, vertical, horizontal = sm.puzzle_costs(
      sm.block_saliency(jnp.asarray(own_saliency), grid),
      sm.block_saliency(jnp.asarray(partner_saliency), grid), keep, images, images[::-1], grid)
  own_blocks = np.asarray(sm.puzzle_masks(unary, vertical, horizontal))
  own_pixels = own_blocks.repeat(size // grid, 1).repeat(size // grid, 2)
  area = own_pixels.mean(axis=(1, 2))
  assert np.all((area > 0) & (area < 1))  # both images shown
  puzzle = _kept_saliency(own_pixels, own_saliency, partner_saliency)
  random_box = []
  for seed in range(32):
    boxes, _ = erase_mix.cutmix_boxes(jax.random.key(seed), jnp.asarray(area, jnp.float32),
                                      (size, size))
    pasted = np.asarray(erase_mix.box_mask(*boxes, (size, size)))[..., 0]
    random_box.append(_kept_saliency(~pasted, own_saliency, partner_saliency))
  assert np.all(puzzle > np.mean(random_box, axis=0) + 0.1), (puzzle, np.mean(random_box, 0))


def test_puzzle_masks_reach_a_local_minimum_of_the_energy():
  rng = np.random.default_rng(3)
  grid, count = 4, 6
  unary = jnp.asarray(rng.random((count, grid, grid, 2)) * 0.1, jnp.float32)
  vertical = jnp.asarray(rng.random((count, grid - 1, grid, 2, 2)) * 0.05, jnp.float32)
  horizontal = jnp.asarray(rng.random((count, grid, grid - 1, 2, 2)) * 0.05, jnp.float32)
  own = sm.puzzle_masks(unary, vertical, horizontal, iterations=16)
  energy = np.asarray(sm.puzzle_energy(own, unary, vertical, horizontal))
  start = np.asarray(unary[..., 1] < unary[..., 0])
  assert np.all(energy <= np.asarray(sm.puzzle_energy(jnp.asarray(start), unary, vertical,
                                                      horizontal)) + 1e-7)
  for row in range(grid):
    for col in range(grid):
      flipped = np.asarray(own).copy()
      flipped[:, row, col] ^= True
      assert np.all(np.asarray(sm.puzzle_energy(jnp.asarray(flipped), unary, vertical,
                                                horizontal)) >= energy - 1e-7)
  # The energy by hand for one labelling: unary + one pairwise term per edge.
  labels = np.asarray(own).astype(int)
  by_hand = unary[0][np.arange(grid)[:, None], np.arange(grid), labels[0]].sum()
  by_hand += sum(vertical[0, r, c, labels[0, r, c], labels[0, r + 1, c]]
                 for r in range(grid - 1) for c in range(grid))
  by_hand += sum(horizontal[0, r, c, labels[0, r, c], labels[0, r, c + 1]]
                 for r in range(grid) for c in range(grid - 1))
  np.testing.assert_allclose(energy[0], by_hand, rtol=1e-5)


def test_boundary_costs_by_hand():
  own = np.zeros((1, 4, 4, 1), np.float32)
  own[0, 2:, :, 0] = 255.0       # own: bottom half white
  partner = np.full((1, 4, 4, 1), 51.0, np.float32)
  vertical, horizontal = sm.boundary_costs(jnp.asarray(own), jnp.asarray(partner), grid=2,
                                           neighbour_size=1)
  # Boundary between block rows: own's row 1 is 0, row 2 is 1 (/255); partner's are 0.2.
  np.testing.assert_allclose(vertical[0, 0, :, 1, 1], [1.0, 1.0], atol=1e-6)  # own over own
  np.testing.assert_allclose(vertical[0, 0, :, 1, 0], [0.2, 0.2], atol=1e-6)  # own over partner
  np.testing.assert_allclose(vertical[0, 0, :, 0, 1], [0.8, 0.8], atol=1e-6)
  np.testing.assert_allclose(vertical[0, 0, :, 0, 0], [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(horizontal[0, :, 0, 1, 1], [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(horizontal[0, :, 0, 1, 0], [0.2, 0.8], atol=1e-6)


def test_transport_moves_a_salient_block_into_the_region():
  grid = 4
  region = np.zeros((1, grid, grid), bool)
  region[0, :, :2] = True                       # the image is shown in the left half
  saliency = np.zeros((1, grid, grid), np.float32)
  saliency[0, 0, 3] = 1.0                       # its salient block is at the right edge
  source_of = np.asarray(sm.transport_plan(jnp.asarray(region), jnp.asarray(saliency), 0.8))[0]
  np.testing.assert_array_equal(np.sort(source_of), np.arange(grid * grid))  # a permutation
  destination = int(np.nonzero(source_of == 3)[0][0])
  assert destination == 1                       # the nearest block of the region, (0, 1)
  assert np.sum(source_of != np.arange(grid * grid)) <= 3  # the rest stays close to home
  # Far too expensive to move: everything stays.
  source_of = np.asarray(sm.transport_plan(jnp.asarray(region), jnp.asarray(saliency), 10.0))[0]
  np.testing.assert_array_equal(source_of, np.arange(grid * grid))
  images = jnp.arange(16.0).reshape(1, 4, 4, 1)
  moved = sm.move_blocks(images, jnp.asarray([[1, 0, 3, 2]]), 2)
  np.testing.assert_array_equal(moved[0, :, :, 0], [[2, 3, 0, 1], [6, 7, 4, 5],
                                                    [10, 11, 8, 9], [14, 15, 12, 13]])


def test_puzzlemix_labels_are_the_mask_area(constant_batch):
  images, labels = constant_batch
  op = augment.build("puzzlemix(alpha=1.0, grid=4)")
  assert op.needs_saliency and op.mixing_stages == ("puzzlemix",)
  run = jax.jit(lambda key: op(key, images, labels, saliency_fn=_hand_made_saliency))
  out, mixed = run(jax.random.key(5))
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(mixed, _source_fractions(out), atol=1e-6)
  own_weight = np.asarray(mixed)[np.arange(BATCH), np.arange(BATCH)]
  assert np.any((own_weight > 0) & (own_weight < 1))
  np.testing.assert_allclose(own_weight * 16, np.rint(own_weight * 16), atol=1e-5)  # blocks
  np.testing.assert_array_equal(out, run(jax.random.key(5))[0])
  with pytest.raises(ValueError, match="'puzzlemix' needs the current model's saliency"):
    op(jax.random.key(5), images, labels)
  with pytest.raises(ValueError, match="16 x 16 pixels do not split into 3 x 3 blocks"):
    augment.build("puzzlemix(grid=3)")(jax.random.key(0), images, labels,
                                       saliency_fn=_hand_made_saliency)


@pytest.mark.parametrize("spec, message", [
    ("fmix(decay_power=0)", "decay_power must be > 0"),
    ("saliencymix(alpha=-1)", "alpha must be > 0"),
    ("puzzlemix(grid=0)", "grid must be an integer >= 1"),
    ("puzzlemix(beta=-0.5)", "beta must be a number >= 0"),
    ("puzzlemix(transport_eps=0)", "transport_eps must be a number > 0"),
])
def test_bad_arguments_are_refused_when_the_spec_is_built(spec, message):
  with pytest.raises(ValueError, match=message):
    augment.build(spec)


# --------------------------------------------------------------------------------------------
# Sharding, the train step, preflight.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["fmix(alpha=1.0)", "saliencymix(alpha=1.0)",
                                  "puzzlemix(grid=4)"])
def test_one_and_eight_devices_agree(spec):
  assert jax.device_count() == 8
  rng = np.random.default_rng(4)
  images = jnp.asarray(rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)), jnp.float32)
  images = images.at[:, 0, 0, 0].set(jnp.arange(1.0, BATCH + 1.0))  # for _hand_made_saliency
  labels = jax.nn.one_hot(jnp.arange(BATCH) % 10, 10)
  pipeline = augment.build(spec)

  def run(mesh):
    step = jax.jit(lambda key, x, y: pipeline(key, x, y, saliency_fn=_hand_made_saliency),
                   in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh),
                                 sharding.batch_sharding(mesh)))
    return jax.device_get(step(jax.random.key(6), images, labels))

  one = run(sharding.make_mesh(jax.devices()[:1]))
  eight = run(sharding.make_mesh())
  np.testing.assert_allclose(one[0], eight[0], atol=1e-4)
  np.testing.assert_allclose(one[1], eight[1], atol=1e-6)


def _tiny_config(augment_spec, batch_size=32):
  config = digits_tiny.get_config()
  config.augment = augment_spec
  config.batch_size = batch_size
  return config


@pytest.fixture(scope="module")
def tiny_task_and_state():
  """The tiny CNN's task and initial state on one device (no augmentation), built once."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  return task_lib.init_task_and_state(_tiny_config(""), (8, 8, 1), mesh)


def _steps(task_and_state, spec, mesh, count=3):
  """(final state, losses) of `count` train steps with augmentation `spec` on random batches,
  from a copy of the fixture's initial state placed on `mesh`."""
  rng = np.random.default_rng(0)
  task, state = task_and_state
  task = dataclasses.replace(task, augment=augment.build(spec))
  state = jax.device_put(jax.tree.map(jnp.copy, state), sharding.replicated(mesh))
  step = train.jit_train_step(task, mesh)
  losses = []
  for _ in range(count):
    batch = {"image": rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8),
             "label": rng.integers(0, 10, 32).astype(np.int32)}
    state, metrics = step(state, sharding.to_global(batch, mesh))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), losses


@pytest.mark.parametrize("spec", ["fmix(alpha=1.0)", "saliencymix(alpha=1.0)"])
def test_train_step_runs_with_each_method(tiny_task_and_state, spec):
  _, losses = _steps(tiny_task_and_state, spec, sharding.make_mesh(jax.devices()[:1]))
  assert np.all(np.isfinite(losses)) and losses[-1] > 0


def test_puzzlemix_train_step_runs_and_is_the_same_on_one_and_eight_devices(tiny_task_and_state):
  spec = "random_crop(padding=1)|puzzlemix(grid=4)"
  single, single_losses = _steps(tiny_task_and_state, spec, sharding.make_mesh(jax.devices()[:1]),
                                 count=2)
  assert np.all(np.isfinite(single_losses)) and single_losses[-1] > 0
  sharded, sharded_losses = _steps(tiny_task_and_state, spec, sharding.make_mesh(), count=2)
  np.testing.assert_allclose(single_losses, sharded_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_input_gradient_saliency_is_the_gradient_norm(tiny_task_and_state):
  task, state = tiny_task_and_state
  rng = np.random.default_rng(5)
  images = jnp.asarray(rng.integers(0, 256, (4, 8, 8, 1)), jnp.float32)
  labels = jax.nn.one_hot(jnp.arange(4), 10)
  key = jax.random.key(0)
  saliency = jax.jit(train.input_gradient_saliency(task, state, key))(images, labels)

  def loss(image, index):  # the summed loss as a function of one image (batch norm couples them)
    batch = images.at[index].set(image)
    logits, _ = train.forward_train(task, state, state.params, task_lib.model_inputs(task, batch),
                                    key)
    return -jnp.sum(labels * jax.nn.log_softmax(logits))

  index = 2
  gradient = jax.jit(jax.grad(loss), static_argnums=1)(images[index], index)
  np.testing.assert_allclose(saliency[index], jnp.abs(gradient[..., 0]), rtol=1e-4, atol=1e-9)
  assert float(saliency.max()) > 0


def test_mixing_with_one_image_per_device_names_the_keys():
  config = _tiny_config("random_crop(padding=1)|fmix(alpha=1.0)", batch_size=8)
  with pytest.raises(ConfigError, match=r"^config\.augment = .* mixes images with each other "
                                        r"\(fmix\), which needs at least 2 training images per "
                                        r"device, but config\.batch_size = 8 over 8 device\(s\) "
                                        r"gives 1: set --config\.batch_size=16"):
    preflight.check_mixing_batch(config, sharding.make_mesh())
  for spec in ("mixup(alpha=0.2)", "cutmix", "saliencymix", "puzzlemix"):
    with pytest.raises(ConfigError, match="config.batch_size"):
      preflight.check_mixing_batch(_tiny_config(spec, batch_size=8), sharding.make_mesh())
  preflight.check_mixing_batch(_tiny_config("fmix", batch_size=16), sharding.make_mesh())
  preflight.check_mixing_batch(_tiny_config("random_crop(padding=1)", batch_size=8),
                               sharding.make_mesh())
  preflight.check_mixing_batch(config, sharding.make_mesh(jax.devices()[:2]))  # 4 per device


def test_train_and_evaluate_refuses_one_image_per_device_before_writing(tmp_path):
  config = _tiny_config("puzzlemix(grid=4)", batch_size=8)
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=r"config\.augment = 'puzzlemix\(grid=4\)' mixes"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
