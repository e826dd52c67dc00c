"""Mixing with shaped masks: FMix, SaliencyMix and PuzzleMix.

Same conventions as erase_mix.py: images float32 (B, H, W, C) in [0, 255], labels (B, K); image
i is mixed with image `partner[i]` of a random permutation of the (global) batch. Each op builds a
binary mask per image, True where image i's own pixels stay; labels are mixed with the mask's
exact area as image i's weight and the rest as its partner's, so they still sum to 1.

Ops of the spec language:

* `fmix(alpha, decay_power, p)`: FMix (Harris et al. 2020), masks from low-frequency noise;
* `saliencymix(alpha, p)`: SaliencyMix (Uddin et al. 2021), CutMix with the box centred on the
  partner's most salient pixel under spectral-residual saliency;
* `puzzlemix(alpha, grid, beta, gamma, eta, transport, transport_eps, iterations, p)`: PuzzleMix
  (Kim et al. 2020), a block mask that keeps both images' salient blocks, from the input
  gradient of the current model: it needs the train step's `saliency_fn` (base.SaliencyFn).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax.augment.base import BatchOp, SaliencyFn, bernoulli, check_probability
from effcv_jax.augment.erase_mix import (box_mask, boxes_around, check_alpha, mix_labels, partners,
                                         sample_keep)


def mix_with_mask(images: jax.Array, labels: jax.Array, partner: jax.Array, own: jax.Array,
                  keep: jax.Array, partner_images: jax.Array | None = None):
  """Pixels of image i where own (B, H, W) is True, else of partner_images (default
  images[partner]); labels mixed with weight keep (B,) on image i's own label."""
  partner_images = images[partner] if partner_images is None else partner_images
  mixed = jnp.where(own[..., None], images, partner_images)
  return mixed, mix_labels(labels, labels[partner], keep)


# ---------------------------------------------------------------------------------------------
# FMix.
# ---------------------------------------------------------------------------------------------


def fourier_noise(key: jax.Array, batch_size: int, hw: tuple[int, int],
                  decay_power: float) -> jax.Array:
  """float32 (B, H, W): FMix's low-frequency noise, the inverse real FFT of complex Gaussian
  coefficients scaled by 1 / max(f, 1 / max(H, W)) ** decay_power, f the frequency's length in
  cycles per pixel."""
  height, width = hw
  frequency = np.sqrt(np.fft.fftfreq(height)[:, None]**2 + np.fft.rfftfreq(width)[None, :]**2)
  scale = jnp.asarray(1.0 / np.maximum(frequency, 1.0 / max(height, width))**decay_power,
                      jnp.float32)
  real_key, imag_key = jax.random.split(key)
  shape = (batch_size,) + scale.shape
  coefficients = scale * jax.lax.complex(jax.random.normal(real_key, shape),
                                         jax.random.normal(imag_key, shape))
  return jnp.fft.irfft2(coefficients, s=(height, width)).astype(jnp.float32)


def top_fraction_masks(key: jax.Array, values: jax.Array,
                       keep: jax.Array) -> tuple[jax.Array, jax.Array]:
  """bool (B, H, W): True at the count largest values of each map, count = floor(keep * H * W
  + u), u ~ U[0, 1) per image (so the expected count is exactly keep * H * W); and the area
  count / (H * W) (B,).

  values: float (B, H, W); keep: float (B,) in [0, 1].
  """
  batch, height, width = values.shape
  pixels = height * width
  count = jnp.floor(keep * pixels + jax.random.uniform(key, (batch,)))
  count = jnp.clip(count, 0, pixels).astype(jnp.int32)
  order = jnp.argsort(-values.reshape(batch, pixels), axis=1)
  rank = jnp.argsort(order, axis=1)  # rank of each pixel, 0 = largest value
  own = (rank < count[:, None]).reshape(batch, height, width)
  return own, count.astype(jnp.float32) / pixels


def fmix_masks(key: jax.Array, keep: jax.Array, hw: tuple[int, int],
               decay_power: float = 3.0) -> tuple[jax.Array, jax.Array]:
  """FMix's masks: bool (B, H, W), True on the top keep-fraction of each image's Fourier noise
  (`fourier_noise`, `top_fraction_masks`); and each mask's area (B,), keep in expectation."""
  noise_key, count_key = jax.random.split(key)
  return top_fraction_masks(count_key, fourier_noise(noise_key, keep.shape[0], hw, decay_power),
                            keep)


def fmix(alpha: float = 1.0, decay_power: float = 3.0, p: float = 1.0) -> BatchOp:
  """FMix (Harris et al. 2020): keeps the pixels of a thresholded low-frequency noise mask of
  area lambda ~ Beta(alpha, alpha) (noise spectrum decaying as 1 / f ** decay_power) and takes
  the rest from the partner; labels weighted by the exact mask area; each image mixed with
  probability p."""
  alpha, p = check_alpha(alpha, "alpha"), check_probability(p)
  if float(decay_power) <= 0:
    raise ValueError(f"decay_power must be > 0, got {decay_power!r}")
  decay_power = float(decay_power)

  def apply(key, images, labels):
    batch, height, width, _ = images.shape
    partner_key, keep_key, mask_key = jax.random.split(key, 3)
    partner = partners(partner_key, batch)
    own, area = fmix_masks(mask_key, sample_keep(keep_key, batch, alpha, p), (height, width),
                           decay_power)
    return mix_with_mask(images, labels, partner, own, area)

  return BatchOp("fmix", apply, mixes=True)


# ---------------------------------------------------------------------------------------------
# SaliencyMix.
# ---------------------------------------------------------------------------------------------

# Spectral residual with the settings of OpenCV's StaticSaliencySpectralResidual (which
# SaliencyMix's reference code calls): grey image resized to 64 x 64, log(1 + amplitude), 3 x 3
# mean filter, a 5 x 5 Gaussian with sigma 8, borders reflected (OpenCV's default).
SPECTRAL_SIZE = 64
GAUSSIAN_TAPS, GAUSSIAN_SIGMA = 5, 8.0


def _filter_separable(maps: jax.Array, taps: np.ndarray) -> jax.Array:
  """maps (B, H, W) filtered by the 1-D kernel `taps` along rows and columns, borders
  reflected without repeating the edge (OpenCV's BORDER_REFLECT_101)."""
  radius = len(taps) // 2
  for axis in (1, 2):
    padding = [(0, 0)] * 3
    padding[axis] = (radius, radius)
    padded = jnp.pad(maps, padding, mode="reflect")
    size = maps.shape[axis]
    maps = sum(float(tap) * jax.lax.slice_in_dim(padded, offset, offset + size, axis=axis)
               for offset, tap in enumerate(taps))
  return maps


def spectral_residual_saliency(images: jax.Array) -> jax.Array:
  """Static saliency by the spectral residual (Hou & Zhang 2007): float32 (B, H, W) in [0, 1].

  The grey image (ITU-R 601 luma for 3 channels), resized bilinearly to 64 x 64, is Fourier
  transformed; its log amplitude log(1 + |F|) minus the 3 x 3 mean of the log amplitude (the
  spectral residual), with the original phase, is transformed back; the squared magnitude is
  blurred by a 5 x 5 Gaussian (sigma 8), divided by its maximum and resized back to H x W.
  Squaring before blurring is the paper's order (OpenCV blurs the magnitude, then squares).
  images: float (B, H, W, C), C in {1, 3}.
  """
  batch, height, width, channels = images.shape
  grey = images[..., 0] if channels == 1 else images @ jnp.asarray([0.299, 0.587, 0.114])
  small = jax.image.resize(grey, (batch, SPECTRAL_SIZE, SPECTRAL_SIZE), "linear",
                           antialias=False)
  spectrum = jnp.fft.fft2(small)
  log_amplitude = jnp.log1p(jnp.abs(spectrum))
  residual = log_amplitude - _filter_separable(log_amplitude, np.full(3, 1.0 / 3.0))
  back = jnp.fft.ifft2(jnp.exp(residual) * jnp.exp(1j * jnp.angle(spectrum)))
  offsets = np.arange(GAUSSIAN_TAPS) - GAUSSIAN_TAPS // 2
  gaussian = np.exp(-offsets**2 / (2.0 * GAUSSIAN_SIGMA**2))
  saliency = _filter_separable(jnp.abs(back)**2, gaussian / gaussian.sum())
  saliency = saliency / jnp.maximum(jnp.max(saliency, axis=(1, 2), keepdims=True), 1e-30)
  return jax.image.resize(saliency, (batch, height, width), "linear",
                          antialias=False).astype(jnp.float32)


def saliency_boxes(saliency: jax.Array, keep: jax.Array):
  """SaliencyMix's boxes: CutMix's box of area about 1 - keep (erase_mix.boxes_around) centred on
  each map's most salient pixel (the first one in row-major order on ties).

  saliency: float (B, H, W); keep: float (B,). Returns (top, left, bottom, right) int32 (B,) and
  the exact kept fraction (B,).
  """
  batch, height, width = saliency.shape
  peak = jnp.argmax(saliency.reshape(batch, -1), axis=1).astype(jnp.int32)
  return boxes_around(peak // width, peak % width, keep, (height, width))


def saliencymix(alpha: float = 1.0, p: float = 1.0) -> BatchOp:
  """SaliencyMix (Uddin et al. 2021): CutMix whose box (area about 1 - lambda, lambda ~
  Beta(alpha, alpha) per image) is centred on the partner's most salient pixel under
  spectral-residual saliency (`spectral_residual_saliency`) and pasted from the partner at the
  same place; labels weighted by the exact pasted area; each image mixed with probability p."""
  alpha, p = check_alpha(alpha, "alpha"), check_probability(p)

  def apply(key, images, labels):
    batch, height, width, _ = images.shape
    partner_key, keep_key = jax.random.split(key)
    partner = partners(partner_key, batch)
    partner_images = images[partner]
    boxes, keep = saliency_boxes(spectral_residual_saliency(partner_images),
                                 sample_keep(keep_key, batch, alpha, p))
    own = ~box_mask(*boxes, (height, width))[..., 0]
    return mix_with_mask(images, labels, partner, own, keep, partner_images)

  return BatchOp("saliencymix", apply, mixes=True)


# ---------------------------------------------------------------------------------------------
# PuzzleMix.
# ---------------------------------------------------------------------------------------------


def block_means(maps: jax.Array, grid: int) -> jax.Array:
  """(B, H, W, ...) -> (B, grid, grid, ...): the mean over each of grid x grid equal blocks."""
  batch, height, width = maps.shape[:3]
  blocks = maps.reshape((batch, grid, height // grid, grid, width // grid) + maps.shape[3:])
  return blocks.mean(axis=(2, 4))


def boundary_costs(own_images: jax.Array, partner_images: jax.Array, grid: int,
                   neighbour_size: int = 4) -> tuple[jax.Array, jax.Array]:
  """PuzzleMix's data smoothness: how much the pixels across each block boundary differ, for
  each choice of image on either side.

  The images (B, H, W, C) in [0, 255] are averaged over neighbour_size x neighbour_size cells
  (values / 255); across the boundary below block (r, c), the mean absolute difference between
  the last cell row of block (r, c) showing image a and the first cell row of block (r + 1, c)
  showing image b, averaged over channels and the block's cells. Index 0 = partner, 1 = own.
  Returns (vertical (B, grid - 1, grid, 2, 2) [a, b] for the block above/below,
  horizontal (B, grid, grid - 1, 2, 2) [a, b] for the block left/right).
  """
  both = jnp.stack([partner_images, own_images], axis=1) / 255.0  # (B, 2, H, W, C)
  batch, _, height, width, channels = both.shape
  cells = both.reshape(batch, 2, height // neighbour_size, neighbour_size,
                       width // neighbour_size, neighbour_size, channels).mean(axis=(3, 5))
  per_block = cells.shape[2] // grid  # cells per block side

  def across(cells):  # boundaries between consecutive rows of blocks
    last = cells[:, :, per_block - 1:-1:per_block]   # (B, 2, grid - 1, cells wide, C)
    first = cells[:, :, per_block::per_block]
    difference = jnp.abs(last[:, :, None] - first[:, None, :]).mean(-1)  # (B, 2, 2, grid-1, w)
    difference = difference.reshape(difference.shape[:4] + (grid, per_block)).mean(-1)
    return jnp.moveaxis(difference, (1, 2), (-2, -1))  # (B, grid - 1, grid, 2, 2)

  vertical = across(cells)
  horizontal = jnp.swapaxes(across(jnp.swapaxes(cells, 2, 3)), 1, 2)
  return vertical, horizontal


def _neighbour_energy(own: jax.Array, vertical: jax.Array, horizontal: jax.Array) -> jax.Array:
  """(B, G, G, 2): for each block and each of its labels (0 partner, 1 own), the pairwise costs
  of its edges to its four neighbours at their current labels `own` (B, G, G) bool."""
  onehot = jax.nn.one_hot(own.astype(jnp.int32), 2)
  energy = jnp.zeros(own.shape + (2,), jnp.float32)
  below = jnp.einsum("bgcn,bgctn->bgct", onehot[:, 1:], vertical)   # block above, given below
  above = jnp.einsum("bgcn,bgcnt->bgct", onehot[:, :-1], vertical)  # block below, given above
  energy = energy.at[:, :-1].add(below).at[:, 1:].add(above)
  right = jnp.einsum("bgcn,bgctn->bgct", onehot[:, :, 1:], horizontal)
  left = jnp.einsum("bgcn,bgcnt->bgct", onehot[:, :, :-1], horizontal)
  return energy.at[:, :, :-1].add(right).at[:, :, 1:].add(left)


def puzzle_energy(own: jax.Array, unary: jax.Array, vertical: jax.Array,
                  horizontal: jax.Array) -> jax.Array:
  """float32 (B,): the energy a labelling `own` (B, G, G) bool has under unary (B, G, G, 2) and
  pairwise costs (`puzzle_costs`), each edge counted once."""
  onehot = jax.nn.one_hot(own.astype(jnp.int32), 2)
  unary_part = jnp.sum(unary * onehot, axis=(1, 2, 3))
  vertical_part = jnp.einsum("bgca,bgct,bgcat->b", onehot[:, :-1], onehot[:, 1:], vertical)
  horizontal_part = jnp.einsum("bgca,bgct,bgcat->b", onehot[:, :, :-1], onehot[:, :, 1:],
                               horizontal)
  return unary_part + vertical_part + horizontal_part


def block_saliency(saliency: jax.Array, grid: int) -> jax.Array:
  """float32 (B, G, G): the block means of saliency maps (B, H, W), normalised to sum 1 per
  image (all zero for a map without saliency)."""
  blocks = block_means(saliency.astype(jnp.float32), grid)
  return blocks / jnp.maximum(blocks.sum(axis=(1, 2), keepdims=True), 1e-30)


def puzzle_costs(own_saliency: jax.Array, partner_saliency: jax.Array, keep: jax.Array,
                 own_images: jax.Array, partner_images: jax.Array, grid: int,
                 beta: float = 1.2, gamma: float = 0.5, eta: float = 0.2,
                 neighbour_size: int = 4):
  """PuzzleMix's labelling costs on a grid x grid block grid (labels: 0 partner, 1 own).

  Unary (B, G, G, 2): a block showing one image costs the other image's saliency there (the
  `block_saliency` maps own_saliency and partner_saliency, (B, G, G)) plus the prior
  eta * -log(keep) / G**2 for own (eta * -log(1 - keep) / G**2 for the partner), keep (B,) the
  intended own fraction. Pairwise, per edge: beta / (16 G) * (gamma * `boundary_costs` + 1 if
  the labels differ), the paper's constants with its rescaling of beta. Images (B, H, W, C).
  Returns (unary, vertical (B, G-1, G, 2, 2), horizontal (B, G, G-1, 2, 2)).
  """
  prior = eta * -jnp.log(jnp.stack([1.0 - keep, keep], axis=-1) + 1e-8) / (grid * grid)
  unary = jnp.stack([own_saliency, partner_saliency], axis=-1) + prior[:, None, None, :]
  vertical, horizontal = boundary_costs(own_images, partner_images, grid, neighbour_size)
  edge_beta = beta / grid / 16.0
  differ = jnp.asarray(1.0 - np.eye(2), jnp.float32)
  return (unary, edge_beta * (gamma * vertical + differ),
          edge_beta * (gamma * horizontal + differ))


def puzzle_masks(unary: jax.Array, vertical: jax.Array, horizontal: jax.Array,
                 iterations: int = 4) -> jax.Array:
  """bool (B, G, G): a labelling (True = own image) of low energy (`puzzle_energy`).

  The paper minimises this energy exactly with alpha-beta-swap graph cuts; here it is
  approximated by iterated conditional modes (ICM) on a checkerboard schedule: starting from
  each block's cheaper unary label, each half-sweep sets all blocks of one checkerboard colour
  (never neighbours of each other) to their cheapest label given their neighbours. No
  half-sweep raises the energy, and `iterations` sweeps end in (or on the way to) a local
  minimum, which can be above the graph cut's global one.
  """
  grid = unary.shape[1]
  rows, cols = np.indices((grid, grid))
  colours = [jnp.asarray((rows + cols) % 2 == colour) for colour in (0, 1)]
  own = unary[..., 1] < unary[..., 0]

  def sweep(_, own):
    for colour in colours:
      energy = unary + _neighbour_energy(own, vertical, horizontal)
      own = jnp.where(colour, energy[..., 1] < energy[..., 0], own)
    return own

  return jax.lax.fori_loop(0, iterations, sweep, own)


def transport_cost_matrix(grid: int) -> np.ndarray:
  """(G*G, G*G): squared distance between block positions (row-major), / (G - 1)**2."""
  rows, cols = np.divmod(np.arange(grid * grid), grid)
  squared = (rows[:, None] - rows[None, :])**2 + (cols[:, None] - cols[None, :])**2
  return (squared / max(grid - 1, 1)**2).astype(np.float32)


def greedy_assignment(cost: jax.Array) -> jax.Array:
  """int32 (B, N): for each destination, its source, a permutation of low total cost
  (B, N source, N destination): N times, the cheapest pair whose source and destination are
  both still free is assigned (first in row-major order on ties)."""
  batch, blocks, _ = cost.shape
  positions = jnp.arange(blocks)

  def assign(_, carry):
    cost, source_of = carry
    best = jnp.argmin(cost.reshape(batch, -1), axis=1)
    source, destination = best // blocks, best % blocks
    source_of = jnp.where(positions == destination[:, None], source[:, None], source_of)
    taken = (positions[None, :, None] == source[:, None, None]) | (
        positions[None, None, :] == destination[:, None, None])
    return jnp.where(taken, jnp.inf, cost), source_of

  _, source_of = jax.lax.fori_loop(0, blocks, assign,
                                   (cost, jnp.zeros((batch, blocks), jnp.int32)))
  return source_of


def transport_plan(region: jax.Array, saliency: jax.Array, eps: float) -> jax.Array:
  """PuzzleMix's transport of one image's blocks: int32 (B, G*G), for each block position the
  block moved there.

  region: bool (B, G, G), where the image is shown; saliency (B, G, G) its normalised block
  saliency. Moving block s to d costs eps * transport_cost_matrix[s, d] - saliency[s] *
  region[d], so salient blocks move into the region when the saliency gained beats the
  distance. The paper's transport approximates the optimal assignment by iterated row-wise
  choices with column conflicts resolved (blocks left without a source become empty); here a
  greedy assignment (`greedy_assignment`) gives a full permutation instead.
  """
  batch, grid = region.shape[:2]
  cost = (eps * jnp.asarray(transport_cost_matrix(grid))[None]
          - saliency.reshape(batch, -1, 1) * region.reshape(batch, 1, -1).astype(jnp.float32))
  return greedy_assignment(cost)


def move_blocks(images: jax.Array, source_of: jax.Array, grid: int) -> jax.Array:
  """images (B, H, W, C) with block d (row-major on a grid x grid grid) replaced by block
  source_of[:, d] (B, G*G) int."""
  batch, height, width, channels = images.shape
  block_h, block_w = height // grid, width // grid
  blocks = images.reshape(batch, grid, block_h, grid, block_w, channels).transpose(0, 1, 3, 2, 4, 5)
  blocks = blocks.reshape(batch, grid * grid, block_h, block_w, channels)
  moved = jnp.take_along_axis(blocks, source_of[:, :, None, None, None], axis=1)
  moved = moved.reshape(batch, grid, grid, block_h, block_w, channels).transpose(0, 1, 3, 2, 4, 5)
  return moved.reshape(batch, height, width, channels)


def _upsample_blocks(mask: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """bool (B, G, G) -> (B, H, W): each block's value on its pixels."""
  grid = mask.shape[1]
  return jnp.repeat(jnp.repeat(mask, hw[0] // grid, axis=1), hw[1] // grid, axis=2)


def puzzlemix(alpha: float = 1.0, grid: int = 4, beta: float = 1.2, gamma: float = 0.5,
              eta: float = 0.2, transport: bool = True, transport_eps: float = 0.8,
              iterations: int = 4, neighbour_size: int = 4, p: float = 1.0) -> BatchOp:
  """PuzzleMix (Kim et al. 2020) with the current model's saliency.

  The saliency (the train step's `saliency_fn`: the L2 norm over channels of the loss's input
  gradient) is averaged over a grid x grid block grid. A binary block mask trades the saliency
  each image keeps against a prior towards the own fraction lambda ~ Beta(alpha, alpha) (weight
  eta) and a smoothness cost on block boundaries (beta, with gamma weighting the pixel
  difference across them): `puzzle_costs`, minimised by `puzzle_masks` (checkerboard ICM with
  `iterations` sweeps, where the paper uses graph cuts). With `transport`, each image's salient
  blocks are moved into the region it keeps (`transport_plan`, a greedy assignment where the
  paper iterates row-wise choices; distance weight transport_eps). Labels weighted by the final
  mask's area; each image mixed with probability p. H and W must divide by grid, and the block
  sides by min(neighbour_size, block side), the cells the boundary cost averages over. The
  paper's defaults for CIFAR, except its random grid size (2, 4, 8 or 16 per batch) and its
  three-label masks (here one grid, two labels).
  """
  alpha, p = check_alpha(alpha, "alpha"), check_probability(p)
  for name, value in (("grid", grid), ("iterations", iterations),
                      ("neighbour_size", neighbour_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta)):
    if not math.isfinite(float(value)) or float(value) < 0:
      raise ValueError(f"{name} must be a number >= 0, got {value!r}")
  if not math.isfinite(float(transport_eps)) or float(transport_eps) <= 0:
    raise ValueError(f"transport_eps must be a number > 0 (the cost of moving a block), got "
                     f"{transport_eps!r}")

  def apply(key, images, labels, saliency_fn: SaliencyFn):
    batch, height, width, _ = images.shape
    cell = min(neighbour_size, height // grid, width // grid)
    if height % grid or width % grid or (height // grid) % cell or (width // grid) % cell:
      raise ValueError(f"puzzlemix: images of {height} x {width} pixels do not split into "
                       f"{grid} x {grid} blocks whose sides divide by min(neighbour_size="
                       f"{neighbour_size}, block side); choose grid and neighbour_size that "
                       "divide them")
    partner_key, keep_key, mixed_key = jax.random.split(key, 3)
    partner = partners(partner_key, batch)
    keep = sample_keep(keep_key, batch, alpha, 1.0)
    saliency = block_saliency(jax.lax.stop_gradient(saliency_fn(images, labels)), grid)
    partner_images = images[partner]
    unary, vertical, horizontal = puzzle_costs(saliency, saliency[partner], keep, images,
                                               partner_images, grid, beta, gamma, eta, cell)
    own = puzzle_masks(unary, vertical, horizontal, iterations)
    own = own | ~bernoulli(mixed_key, batch, p)[:, None, None]
    if transport:
      images = move_blocks(images, transport_plan(own, saliency, transport_eps), grid)
      partner_images = move_blocks(
          partner_images, transport_plan(~own, saliency[partner], transport_eps), grid)
    area = own.astype(jnp.float32).mean(axis=(1, 2))
    return mix_with_mask(images, labels, partner, _upsample_blocks(own, (height, width)), area,
                         partner_images)

  return BatchOp("puzzlemix", apply, mixes=True, needs_saliency=True)


OPS = {"fmix": fmix, "saliencymix": saliencymix, "puzzlemix": puzzlemix}
