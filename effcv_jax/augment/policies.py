"""Augmentation policies: RandAugment, TrivialAugmentWide and AutoAugment, with two strategies.

A policy applies *layers*: in each layer every image gets one op (index into an op space), a
magnitude fraction in [0, 1] and a random sign. How a layer is executed is a choice:

* `strategy='batched'`: every cheap op of the space is computed on the whole batch and each
  image selects its own result (`jnp.where`); the images whose op is geometric are gathered into a
  sub-batch, with one matrix per image, and warped once; Equalize likewise (`apply_to_chosen`).
  Cost: the sum of the cheap ops over the whole batch, but no per-image control flow: the choice
  for accelerators.
* `strategy='map'`: a loop over images with `lax.switch` over ops, so only the chosen op runs.
  Cost: one loop iteration per image; on CPU the faster of the two, at small and large images.
* `strategy='auto'` (default): 'map' on CPU, 'batched' on GPU/TPU.
(`vmap` of `lax.switch` would run every branch anyway, at many times the cost: not offered.)

Magnitudes. An op's strength is `fraction * range` (ranges below), fraction = magnitude /
max_magnitude. This RandAugment is torchvision-style (its ops, ranges and random signs), with
max_magnitude 10 by default as in the TF reference's magnitude scale (torchvision's
RandAugment(magnitude=m) is max_magnitude=30); the official Noisy Student / EfficientNet policy
with its own op set and parameters is randaugment_tf.py's. AutoAugment's magnitudes 0..9 use
fraction m / 9 (torchvision's bins); TrivialAugmentWide draws one of 31 bins uniformly. Signed
ops (shear, translate, rotate, the enhancements) get a random sign per image. Solarize and
posterize are oriented so that a larger magnitude is stronger. Geometric ops fill with grey
(128) by default, as the TF reference does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from effcv_jax.augment import colour, geometry
from effcv_jax.augment.autoaugment_tables import AUTOAUGMENT_POLICIES
from effcv_jax.augment.base import BatchOp, Fill, check_probability

STRATEGIES = ("auto", "batched", "map")
# Ops that the batched strategy runs only on the images that chose them (besides geometric ops).
EXPENSIVE_OPS = ("Equalize",)


@dataclasses.dataclass(frozen=True)
class PolicyOp:
  """One op of a policy's op space.

  Attributes:
    name: the policy name ('Rotate', 'Color', ...).
    strength: (fraction (...,), (H, W)) -> the op's parameter before the sign, same shape.
    signed: whether the parameter gets a random sign per image.
    colour_fn: (images (..., H, W, C), param (...,)) -> images, for colour ops.
    matrix_fn: (param (...,), (H, W)) -> matrices (..., 3, 3), for geometric ops.
  """

  name: str
  strength: Callable = lambda fraction, hw: fraction
  signed: bool = False
  colour_fn: Callable | None = None
  matrix_fn: Callable | None = None

  @property
  def is_geometric(self) -> bool:
    return self.matrix_fn is not None


def _enhance(fn, span):
  """Pillow enhancement ops: factor = 1 + sign * span * fraction."""
  return dict(strength=lambda f, hw: span * f, signed=True, colour_fn=lambda x, s: fn(x, 1.0 + s))


def op_space(wide: bool = False) -> dict[str, PolicyOp]:
  """All policy ops with their ranges: the RandAugment/AutoAugment ranges, or TrivialAugment's
  wide ranges (`wide=True`)."""
  shear, rotate = (0.99, 135.0) if wide else (0.3, 30.0)
  enhance = 0.99 if wide else 0.9
  posterize_bits = 6.0 if wide else 4.0  # bits removed at full magnitude: 8 -> 2 (wide) or 4

  def translate(axis):
    # Fraction of the image side (150/331 of it at full magnitude), or 32 pixels when wide.
    strength = (lambda f, hw: 32.0 * f) if wide else (lambda f, hw:
                                                      (150.0 / 331.0) * f * hw[1 - axis])
    matrix = ((lambda t, hw: geometry.translation_matrix(t, 0.0)) if axis == 0 else
              (lambda t, hw: geometry.translation_matrix(0.0, t)))
    return PolicyOp(("TranslateX", "TranslateY")[axis], strength, True, matrix_fn=matrix)

  ops = [
      PolicyOp("Identity", colour_fn=lambda x, s: x),
      PolicyOp("ShearX",
               lambda f, hw: shear * f,
               True,
               matrix_fn=lambda s, hw: geometry.shear_x_matrix(s)),
      PolicyOp("ShearY",
               lambda f, hw: shear * f,
               True,
               matrix_fn=lambda s, hw: geometry.shear_y_matrix(s)),
      translate(0),
      translate(1),
      PolicyOp("Rotate", lambda f, hw: rotate * f, True,
               matrix_fn=geometry.rotation_matrix_degrees),
      PolicyOp("Brightness", **_enhance(colour.adjust_brightness, enhance)),
      PolicyOp("Color", **_enhance(colour.adjust_saturation, enhance)),
      PolicyOp("Contrast", **_enhance(colour.adjust_contrast, enhance)),
      PolicyOp("Sharpness", **_enhance(colour.adjust_sharpness, enhance)),
      PolicyOp("Posterize",
               lambda f, hw: 8.0 - jnp.round(posterize_bits * f),
               colour_fn=colour.posterize),
      PolicyOp("Solarize", lambda f, hw: 256.0 * (1.0 - f), colour_fn=colour.solarize),
      PolicyOp("SolarizeAdd", lambda f, hw: 110.0 * f, colour_fn=colour.solarize_add),
      PolicyOp("AutoContrast", colour_fn=lambda x, s: colour.autocontrast(x)),
      PolicyOp("Equalize", colour_fn=lambda x, s: colour.equalize(x)),
      PolicyOp("Invert", colour_fn=lambda x, s: colour.invert(x)),
  ]
  return {op.name: op for op in ops}


# The 14 ops of RandAugment (Cubuk et al. 2020) and TrivialAugment (Mueller & Hutter 2021).
RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                   "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                   "AutoContrast", "Equalize")

# ---------------------------------------------------------------------------------------------
# Executing layers.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
  """What one layer does to each image: op index into the space, fraction and sign, all (B,)."""

  op_index: jax.Array  # int32 (B,); 0 is Identity
  fraction: jax.Array  # float32 (B,) in [0, 1]
  sign: jax.Array  # float32 (B,) in {-1, 1}


def _param(op: PolicyOp, fraction, sign, hw):
  strength = op.strength(fraction, hw)
  return strength * sign if op.signed else strength


def _capacity(batch_size: int, probability: float) -> int:
  """Sub-batch size that holds the images choosing an op group (mean + 3 std) in one pass."""
  mean = batch_size * probability
  return int(min(batch_size, max(1, math.ceil(mean + 3.0 * math.sqrt(mean * (1.0 - probability))))))


def apply_to_chosen(fn, images: jax.Array, chosen: jax.Array, capacity: int) -> jax.Array:
  """Applies `fn` only to the chosen images, `capacity` of them at a time.

  The chosen images are gathered into sub-batches of `capacity` (a while loop runs as many as
  needed; one when capacity covers them), transformed, and scattered back.

  Args:
    fn: (sub_images (K, H, W, C), rows (K,) int32 batch indices, B for padding) -> sub_images.
    images: (B, H, W, C). chosen: bool (B,). capacity: K.
  Returns: (B, H, W, C).
  """
  batch = images.shape[0]
  count = jnp.sum(chosen.astype(jnp.int32))
  order = jnp.argsort(jnp.logical_not(chosen), stable=True)  # chosen images first
  order = jnp.concatenate([order, jnp.full((capacity,), batch, order.dtype)])

  def one_pass(state):
    start, out = state
    rows = jax.lax.dynamic_slice(order, (start,), (capacity,))
    rows = jnp.where(start + jnp.arange(capacity) < count, rows, batch)  # batch: padding
    sub_images = out.at[rows].get(mode="fill", fill_value=0.0)
    return start + capacity, out.at[rows].set(fn(sub_images, rows), mode="drop")

  return jax.lax.while_loop(lambda state: state[0] < count, one_pass, (jnp.int32(0), images))[1]


def apply_layer_batched(images: jax.Array,
                        layer: Layer,
                        ops: Sequence[PolicyOp],
                        fill: Fill,
                        interpolation: str,
                        op_probabilities: Sequence[float] | None = None) -> jax.Array:
  """One layer for the whole batch. images (B, H, W, C) -> (B, H, W, C).

  Cheap colour ops are computed on the whole batch and each image selects its own result.
  Expensive ops run on sub-batches of the images that chose them (`apply_to_chosen`): the
  geometric ops (one matrix per image, one warp) and Equalize (a histogram per image).
  op_probabilities: how often each op is chosen, to size those sub-batches (default uniform).
  """
  batch, height, width, _ = images.shape
  hw = (height, width)
  probabilities = op_probabilities or [1.0 / len(ops)] * len(ops)
  params = [_param(op, layer.fraction, layer.sign, hw) for op in ops]  # each (B,)

  geometric = [index for index, op in enumerate(ops) if op.is_geometric]
  if geometric:
    matrices = geometry.identity_matrices(batch)
    for index in geometric:
      chosen = (layer.op_index == index)[:, None, None]
      matrices = jnp.where(chosen, ops[index].matrix_fn(params[index], hw), matrices)

    def warp(sub_images, rows):
      sub_matrices = matrices.at[rows].get(mode="fill", fill_value=1.0)
      return geometry.warp_affine(sub_images, sub_matrices, hw, interpolation, "constant", fill)

    chosen = jnp.isin(layer.op_index, jnp.asarray(geometric))
    images = apply_to_chosen(warp, images, chosen,
                             _capacity(batch, sum(probabilities[i] for i in geometric)))

  out = images
  for index, op in enumerate(ops):
    if op.is_geometric or op.name == "Identity":
      continue
    chosen = layer.op_index == index
    if op.name in EXPENSIVE_OPS:

      def colour_on_rows(sub_images, rows, op=op, param=params[index]):
        return op.colour_fn(sub_images, param.at[rows].get(mode="fill", fill_value=0.0))

      out = apply_to_chosen(colour_on_rows, out, chosen, _capacity(batch, probabilities[index]))
    else:
      out = jnp.where(chosen[:, None, None, None], op.colour_fn(images, params[index]), out)
  return out


def _single_image_branch(op: PolicyOp, fill: Fill, interpolation: str):
  """(image (H, W, C), fraction (), sign ()) -> image, for lax.switch."""

  def branch(image, fraction, sign):
    hw = image.shape[:2]
    param = _param(op, fraction, sign, hw)
    if op.is_geometric:
      matrix = op.matrix_fn(param, hw)[None]
      return geometry.warp_affine(image[None], matrix, hw, interpolation, "constant", fill)[0]
    return op.colour_fn(image, param)

  return branch


def _stack_layers(layers: Sequence[Layer]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Layers -> op_index, fraction, sign, each (B, L)."""
  return (jnp.stack([layer.op_index for layer in layers],
                    axis=1), jnp.stack([layer.fraction for layer in layers],
                                       axis=1), jnp.stack([layer.sign for layer in layers], axis=1))


def apply_layers_mapped(images: jax.Array, layers: Sequence[Layer], ops: Sequence[PolicyOp],
                        fill: Fill, interpolation: str) -> jax.Array:
  """A loop over images; each layer a `lax.switch`, so only the chosen op runs.

  The loop carries the batch and writes each result over its image, in place; `lax.map` filled
  a new (B, H, W, C) buffer with zeros first and wrote the results there, which was slower.
  """
  branches = [_single_image_branch(op, fill, interpolation) for op in ops]
  op_index, fraction, sign = _stack_layers(layers)  # (B, L) each

  def one_image(index, images):

    def one_layer(step, image):  # a loop, so that the switch is compiled once
      return jax.lax.switch(op_index[index, step], branches, image, fraction[index, step],
                            sign[index, step])

    return images.at[index].set(jax.lax.fori_loop(0, len(layers), one_layer, images[index]))

  return jax.lax.fori_loop(0, images.shape[0], one_image, images)


def run_policy(images: jax.Array,
               layers: Sequence[Layer],
               ops: Sequence[PolicyOp],
               strategy: str,
               fill: Fill,
               interpolation: str,
               op_probabilities: Sequence[float] | None = None) -> jax.Array:
  """Applies the layers in order with the chosen strategy. images (B, H, W, C).

  op_probabilities: how often each op is chosen in a layer (sizes the batched sub-batches)."""
  if resolve_strategy(strategy) == "map":
    return apply_layers_mapped(images, layers, ops, fill, interpolation)
  if len(layers) == 1:
    return apply_layer_batched(images, layers[0], ops, fill, interpolation, op_probabilities)

  def one_layer(images, layer_arrays):  # a scan, so that the layer is compiled once
    layer = Layer(*layer_arrays)
    return apply_layer_batched(images, layer, ops, fill, interpolation, op_probabilities), None

  per_layer = tuple(jnp.moveaxis(array, 1, 0) for array in _stack_layers(layers))  # (L, B) each
  return jax.lax.scan(one_layer, images, per_layer)[0]


def resolve_strategy(strategy: str) -> str:
  """'auto' is 'map' on CPU (the faster one there, at small and large images) and 'batched' on
  accelerators, where a per-image loop runs serially."""
  if strategy == "auto":
    return "map" if jax.default_backend() == "cpu" else "batched"
  return strategy


def _random_signs(key: jax.Array, batch_size: int) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key, 0.5, (batch_size,)), 1.0, -1.0)


def check_common(strategy: str, interpolation: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  if interpolation not in geometry.INTERPOLATIONS:
    raise ValueError(
        f"interpolation must be one of {geometry.INTERPOLATIONS}, got {interpolation!r}")


def _select_ops(names: Sequence[str], wide: bool = False) -> list[PolicyOp]:
  space = op_space(wide)
  unknown = [name for name in names if name not in space]
  if unknown:
    raise ValueError(f"unknown policy op {unknown[0]!r}; valid: {', '.join(space)}")
  names = ["Identity"] + [name for name in names if name != "Identity"]
  return [space[name] for name in names]


# ---------------------------------------------------------------------------------------------
# Policies of the spec language.
# ---------------------------------------------------------------------------------------------


def randaugment(num_ops: int = 2,
                magnitude: float = 9.0,
                max_magnitude: float = 10.0,
                magnitude_std: float = 0.0,
                p: float = 1.0,
                ops: Sequence[str] | None = None,
                fill: Fill = 128.0,
                interpolation: str = "bilinear",
                strategy: str = "auto",
                magnitude_min: float | None = None) -> BatchOp:
  """RandAugment (Cubuk et al. 2020): `num_ops` layers, each applying one op drawn uniformly
  (per image) from `ops` (default RANDAUGMENT_OPS) with probability p, at fraction
  magnitude / max_magnitude. magnitude_std > 0 draws the magnitude per image and layer from
  N(magnitude, magnitude_std), clipped to [0, max_magnitude] (timm's 'mstd'). magnitude_min
  draws it uniformly from [magnitude_min, magnitude] instead (FixMatch's RandAugment variant:
  num_ops=2, magnitude=10, magnitude_min=1, p=0.5)."""
  check_common(strategy, interpolation)
  p = check_probability(p)
  if num_ops < 0 or not 0 <= magnitude <= max_magnitude or magnitude_std < 0:
    raise ValueError(
        f"randaugment: need num_ops >= 0, 0 <= magnitude <= max_magnitude, "
        f"magnitude_std >= 0; got {num_ops}, {magnitude}, {max_magnitude}, {magnitude_std}")
  if magnitude_min is not None and not (0 <= magnitude_min <= magnitude and not magnitude_std):
    raise ValueError(f"randaugment: magnitude_min needs 0 <= magnitude_min <= magnitude and no "
                     f"magnitude_std; got {magnitude_min}, {magnitude}, {magnitude_std}")
  space = _select_ops(ops or RANDAUGMENT_OPS)
  # Identity is space[0]; it is drawn only if it was asked for (it is in the default set).
  first = 0 if (ops is None or "Identity" in ops) else 1
  drawn = len(space) - first
  op_probabilities = [p / drawn if index >= first else 0.0 for index in range(len(space))]
  op_probabilities[0] += 1.0 - p

  def apply(key, images, labels):
    batch = images.shape[0]
    layers = []
    for layer_key in jax.random.split(key, num_ops):
      op_key, noise_key, sign_key, p_key = jax.random.split(layer_key, 4)
      op_index = jax.random.randint(op_key, (batch,), first, len(space))
      if p < 1.0:
        op_index = jnp.where(jax.random.bernoulli(p_key, p, (batch,)), op_index, 0)
      if magnitude_min is not None:
        level = jax.random.uniform(noise_key, (batch,), jnp.float32, magnitude_min, magnitude)
      else:
        level = magnitude + magnitude_std * jax.random.normal(noise_key, (batch,))
      fraction = jnp.clip(level, 0.0, max_magnitude) / max_magnitude
      layers.append(Layer(op_index, fraction, _random_signs(sign_key, batch)))
    return run_policy(images, layers, space, strategy, fill, interpolation,
                      op_probabilities), labels

  return BatchOp("randaugment", apply)


def trivial_augment_wide(num_magnitude_bins: int = 31,
                         fill: Fill = 128.0,
                         interpolation: str = "bilinear",
                         strategy: str = "auto") -> BatchOp:
  """TrivialAugmentWide (Mueller & Hutter 2021): one op drawn uniformly per image, at a magnitude
  bin drawn uniformly from num_magnitude_bins, over the wide ranges."""
  check_common(strategy, interpolation)
  if num_magnitude_bins < 2:
    raise ValueError(f"num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
  space = _select_ops(RANDAUGMENT_OPS, wide=True)

  def apply(key, images, labels):
    batch = images.shape[0]
    op_key, bin_key, sign_key = jax.random.split(key, 3)
    op_index = jax.random.randint(op_key, (batch,), 0, len(space))
    fraction = jax.random.randint(bin_key,
                                  (batch,), 0, num_magnitude_bins) / (num_magnitude_bins - 1.0)
    layer = Layer(op_index, fraction.astype(jnp.float32), _random_signs(sign_key, batch))
    return run_policy(images, [layer], space, strategy, fill, interpolation), labels

  return BatchOp("trivial_augment_wide", apply)


AUTOAUGMENT_MAX_LEVEL = 9.0  # AutoAugment's magnitudes 0..9: fraction level / 9
# Sub-policies of (op name, probability, level) entries.
SubPolicies = tuple[tuple[tuple[str, float, float], ...], ...]


def check_sub_policies(policy: Sequence[Sequence[Sequence]]) -> SubPolicies:
  """An explicit AutoAugment policy, checked: a non-empty list of sub-policies, each a non-empty
  list of (op name of op_space(), probability in [0, 1], level in [0, 9], a float).

  Returns the policy as tuples of (name, float probability, float level). Raises ValueError
  naming the first bad entry ([sub-policy][op] indices) and the valid range.
  """
  valid = op_space()
  if isinstance(policy, (str, bytes)) or not isinstance(policy, (list, tuple)) or not policy:
    raise ValueError(f"autoaugment: policy must be a table name or a non-empty list of "
                     f"sub-policies, got {policy!r}")
  checked = []
  for sub_index, sub_policy in enumerate(policy):
    if isinstance(sub_policy, (str, bytes)) or not isinstance(sub_policy,
                                                              (list, tuple)) or not sub_policy:
      raise ValueError(f"autoaugment: policy[{sub_index}] must be a non-empty list of "
                       f"(op, probability, level) entries, got {sub_policy!r}")
    ops = []
    for op_index, entry in enumerate(sub_policy):
      where = f"autoaugment: policy[{sub_index}][{op_index}] = {entry!r}"
      if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        raise ValueError(f"{where}: an entry is (op name, probability, level)")
      name, probability, level = entry
      if not isinstance(name, str) or name not in valid:
        raise ValueError(f"{where}: unknown op {name!r}; valid: {', '.join(valid)}")
      if (isinstance(probability, bool) or not isinstance(probability, (int, float))
          or not 0.0 <= probability <= 1.0):
        raise ValueError(f"{where}: probability {probability!r} is not in [0, 1]")
      if (isinstance(level, bool) or not isinstance(level, (int, float))
          or not 0.0 <= level <= AUTOAUGMENT_MAX_LEVEL):
        raise ValueError(f"{where}: level {level!r} is not in [0, 9]")
      ops.append((name, float(probability), float(level)))
    checked.append(tuple(ops))
  return tuple(checked)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("op_index", "probability", "fraction"), meta_fields=())
@dataclasses.dataclass(frozen=True)
class SubPolicyTables:
  """A policy of sub-policies as arrays over an op space, each (S, L) for S sub-policies of at
  most L ops (shorter ones padded with Identity, probability 0).

  Attributes:
    op_index: int32 indices into the op space. probability: float32 in [0, 1].
    fraction: float32 magnitude fractions in [0, 1] (level / 9).
  """

  op_index: jax.Array
  probability: jax.Array
  fraction: jax.Array


def sub_policy_tables(policy: Sequence[Sequence[tuple[str, float, float]]],
                      space: Sequence[PolicyOp]) -> SubPolicyTables:
  """The arrays of checked sub-policies (check_sub_policies) over `space` (Identity first)."""
  index_of = {op.name: index for index, op in enumerate(space)}
  length = max(len(sub_policy) for sub_policy in policy)
  padded = [list(sub_policy) + [("Identity", 0.0, 0.0)] * (length - len(sub_policy))
            for sub_policy in policy]
  return SubPolicyTables(
      jnp.asarray([[index_of[name] for name, _, _ in sub] for sub in padded], jnp.int32),
      jnp.asarray([[probability for _, probability, _ in sub] for sub in padded], jnp.float32),
      jnp.asarray([[level / AUTOAUGMENT_MAX_LEVEL for _, _, level in sub] for sub in padded],
                  jnp.float32))


def apply_sub_policies(key: jax.Array,
                       images: jax.Array,
                       tables: SubPolicyTables,
                       space: Sequence[PolicyOp],
                       strategy: str = "auto",
                       fill: Fill = 128.0,
                       interpolation: str = "bilinear",
                       op_probabilities: Sequence[float] | None = None) -> jax.Array:
  """AutoAugment's semantics over arrays: per image one sub-policy drawn uniformly from the S of
  `tables`; its L ops applied in order, each with its probability, at its fraction, with a
  random sign per image and op. images (B, H, W, C) float -> (B, H, W, C).

  The tables may be traced (a search scores many policies with one compiled program); S and L
  are static. op_probabilities only sizes the batched strategy's sub-batches.
  """
  batch = images.shape[0]
  num_sub_policies, length = tables.op_index.shape
  choice_key, apply_key, sign_key = jax.random.split(key, 3)
  chosen = jax.random.randint(choice_key, (batch,), 0, num_sub_policies)
  applied = jax.random.uniform(apply_key, (batch, length)) < tables.probability[chosen]
  signs = jax.random.split(sign_key, length)
  layers = [
      Layer(jnp.where(applied[:, step], tables.op_index[chosen, step], 0),
            tables.fraction[chosen, step], _random_signs(signs[step], batch))
      for step in range(length)
  ]
  return run_policy(images, layers, space, strategy, fill, interpolation, op_probabilities)


def autoaugment(policy: str | Sequence = "imagenet",
                fill: Fill = 128.0,
                interpolation: str = "bilinear",
                strategy: str = "auto") -> BatchOp:
  """AutoAugment (Cubuk et al. 2019) with the paper's 'imagenet', 'cifar10' or 'svhn' policy,
  or an explicit list of sub-policies, e.g. `[[('Rotate', 0.5, 7.2), ('Color', 0.3, 4.0)],
  [('Invert', 0.1, 0)]]` (each entry (op name, probability in [0, 1], level in [0, 9], float
  levels allowed: Fast AutoAugment's magnitudes are continuous): per image one sub-policy drawn
  uniformly; each of its ops applied in order with its probability, at fraction level / 9."""
  check_common(strategy, interpolation)
  if isinstance(policy, str):
    if policy not in AUTOAUGMENT_POLICIES:
      raise ValueError(
          f"unknown AutoAugment policy {policy!r}; valid: {', '.join(AUTOAUGMENT_POLICIES)}")
    table = check_sub_policies(AUTOAUGMENT_POLICIES[policy])
  else:
    table = check_sub_policies(policy)
  names = sorted({name for sub_policy in table for name, _, _ in sub_policy})
  space = _select_ops(names)
  tables = sub_policy_tables(table, space)
  length = tables.op_index.shape[1]
  index_of = {op.name: index for index, op in enumerate(space)}
  op_probabilities = [0.0] * len(space)  # per layer, averaged over the layers
  for sub_policy in table:
    for name, probability, _ in sub_policy:
      op_probabilities[index_of[name]] += probability / (length * len(table))
  op_probabilities[0] = 1.0 - sum(op_probabilities[1:])

  def apply(key, images, labels):
    return apply_sub_policies(key, images, tables, space, strategy, fill, interpolation,
                              op_probabilities), labels

  return BatchOp("autoaugment", apply)


# name -> factory, for the spec language (see spec.py).
OPS = {
    "randaugment": randaugment,
    "trivial_augment_wide": trivial_augment_wide,
    "autoaugment": autoaugment,
}
