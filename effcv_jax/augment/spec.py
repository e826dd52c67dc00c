"""The spec language: parse `"flip_lr|random_crop(padding=4)|cutmix(alpha=1.0)"` into a Pipeline.

Grammar (big_vision style): ops separated by `|`; each op is `name` or `name(key=value, ...)` with
Python-literal values (numbers, strings, tuples, lists, None, booleans). `""` and `"none"` are the
identity. An unknown op or argument raises ValueError naming it and listing the valid ones.

Execution: ops run left to right, each with its own key split from the call's key. Consecutive
geometric ops are folded into one affine matrix per image and applied by one warp (`geometry.py`);
the fold breaks where two ops ask for different interpolation, border mode or fill.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax.augment import (augmix, colour, erase_mix, geometry, pba_policy, policies,
                               randaugment_tf, saliency_mix)
from effcv_jax.augment.base import BatchOp, GeometricOp, SaliencyFn

Op = BatchOp | GeometricOp


def registry() -> dict[str, Callable[..., Op]]:
  """Every op of the spec language: name -> factory taking the op's keyword arguments."""
  merged: dict[str, Callable[..., Op]] = {}
  for module in (colour, geometry, erase_mix, saliency_mix, policies, randaugment_tf, augmix,
                 pba_policy):
    for name, factory in module.OPS.items():
      if name in merged:
        raise RuntimeError(f"augment op {name!r} is defined twice")
      merged[name] = factory
  return merged


# ---------------------------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------------------------


def split_top_level(text: str, separator: str = "|") -> list[str]:
  """Splits on `separator` outside brackets and quotes."""
  parts, depth, quote, start = [], 0, None, 0
  for index, char in enumerate(text):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == separator and depth == 0:
      parts.append(text[start:index])
      start = index + 1
  parts.append(text[start:])
  return [part.strip() for part in parts]


def parse_op(text: str) -> tuple[str, dict[str, Any]]:
  """`"name(key=value, ...)"` or `"name"` -> (name, {key: value})."""
  try:
    tree = ast.parse(text, mode="eval").body
  except SyntaxError as error:
    raise ValueError(f"cannot parse augmentation op {text!r}: {error.msg}") from None
  if isinstance(tree, ast.Name):
    return tree.id, {}
  if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
    raise ValueError(f"augmentation op {text!r} is not of the form name or name(key=value, ...)")
  if tree.args or any(keyword.arg is None for keyword in tree.keywords):
    raise ValueError(f"augmentation op {text!r}: give arguments by keyword, e.g. name(key=value)")
  kwargs = {}
  for keyword in tree.keywords:
    try:
      kwargs[keyword.arg] = ast.literal_eval(keyword.value)
    except ValueError:
      raise ValueError(f"augmentation op {text!r}: argument {keyword.arg!r} is not a "
                       f"Python literal") from None
  return tree.func.id, kwargs


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
  """`"a|b(x=1)"` -> [("a", {}), ("b", {"x": 1})]; `""` and `"none"` -> []."""
  spec = spec.strip()
  if spec in ("", "none"):
    return []
  items = split_top_level(spec, "|")
  if any(not item for item in items):
    raise ValueError(f"augmentation spec {spec!r} has an empty op")
  return [parse_op(item) for item in items]


def make_op(name: str,
            kwargs: dict[str, Any],
            ops: dict[str, Callable[..., Op]] | None = None) -> Op:
  """Looks up `name` and calls its factory with `kwargs`, with readable errors."""
  ops = registry() if ops is None else ops
  if name not in ops:
    raise ValueError(f"unknown augmentation op {name!r}; valid ops: {', '.join(sorted(ops))}")
  parameters = inspect.signature(ops[name]).parameters
  unknown = sorted(set(kwargs) - set(parameters))
  if unknown:
    raise ValueError(f"augmentation op {name!r} has no argument {unknown[0]!r}; valid arguments: "
                     f"{', '.join(parameters) or '(none)'}")
  missing = [
      arg for arg, parameter in parameters.items()
      if parameter.default is inspect.Parameter.empty and arg not in kwargs
  ]
  if missing:
    raise ValueError(f"augmentation op {name!r} needs argument {missing[0]!r}; arguments: "
                     f"{', '.join(parameters)}")
  return ops[name](**kwargs)


# ---------------------------------------------------------------------------------------------
# Folding geometric ops and building the pipeline.
# ---------------------------------------------------------------------------------------------


def _agree(current, new):
  """Merges two preferences where None means 'no preference'; raises LookupError on conflict."""
  if current is None or new is None or current == new:
    return new if current is None else current
  raise LookupError


def _same_fill(a, b) -> bool:
  return bool(np.all(np.asarray(a, np.float32) == np.asarray(b, np.float32)))


def fold_geometric(ops: list[GeometricOp]) -> list[list[GeometricOp]]:
  """Splits a run of geometric ops into groups that can share one warp (same interpolation,
  border mode and fill, where the ops state them)."""
  groups: list[list[GeometricOp]] = []
  interpolation = mode = fill = None
  for op in ops:
    try:
      if not groups:
        raise LookupError
      new_interpolation = _agree(interpolation, op.interpolation)
      new_mode = _agree(mode, op.mode)
      if op.mode == "constant" and fill is not None and not _same_fill(fill, op.fill):
        raise LookupError
      groups[-1].append(op)
      interpolation, mode = new_interpolation, new_mode
    except LookupError:
      groups.append([op])
      interpolation, mode, fill = op.interpolation, op.mode, None
    if op.mode == "constant":
      fill = op.fill
  return groups


def warp_stage(ops: list[GeometricOp]) -> BatchOp:
  """One BatchOp that samples every op's matrices, composes them and warps once."""
  interpolation = next((op.interpolation for op in ops if op.interpolation), "nearest")
  mode = next((op.mode for op in ops if op.mode), "edge")
  fill = next((op.fill for op in ops if op.mode == "constant"), 0.0)

  def apply(key, images, labels):
    batch, height, width, _ = images.shape
    hw, total = (height, width), None
    for op, op_key in zip(ops, jax.random.split(key, len(ops))):
      matrices, hw = op.sample(op_key, batch, hw)
      total = matrices if total is None else geometry.compose(total, matrices)
    return geometry.warp_affine(images, total, hw, interpolation, mode, fill), labels

  return BatchOp("+".join(op.name for op in ops), apply)


def stages_from_ops(ops: list[Op]) -> list[BatchOp]:
  """Turns a list of ops into the BatchOps that run them (runs of geometric ops -> warps)."""
  stages: list[BatchOp] = []
  run: list[GeometricOp] = []
  for op in ops + [None]:
    if isinstance(op, GeometricOp):
      run.append(op)
      continue
    stages.extend(warp_stage(group) for group in fold_geometric(run))
    run = []
    if op is not None:
      stages.append(op)
  return stages


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """A built augmentation: `pipeline(key, images, labels) -> (images, labels)`, pure, jit-able.

  Attributes:
    stages: the BatchOps it runs, in order, each with its own key split from the call's key
      (a run of geometric ops is one stage, named by its ops joined by '+').
    spec: the spec string it was built from ('' when built from ops directly).

  Frozen and made of frozen parts, so it is hashable and can sit in other frozen dataclasses
  (e.g. the train step's static `Task`).
  """

  stages: tuple[BatchOp, ...] = ()
  spec: str = ""

  @property
  def stage_names(self) -> tuple[str, ...]:
    """Each stage's name, in order."""
    return tuple(stage.name for stage in self.stages)

  @property
  def needs_saliency(self) -> bool:
    """Whether a stage needs the train step's `saliency_fn` (see `__call__`)."""
    return any(stage.needs_saliency for stage in self.stages)

  @property
  def needs_step(self) -> bool:
    """Whether a stage follows a schedule and needs the train step's `step` (see `__call__`)."""
    return any(stage.needs_step for stage in self.stages)

  @property
  def mixing_stages(self) -> tuple[str, ...]:
    """The names of the stages that mix images of the batch with each other."""
    return tuple(stage.name for stage in self.stages if stage.mixes)

  def __call__(self, key: jax.Array, images: jax.Array, labels: jax.Array,
               saliency_fn: SaliencyFn | None = None,
               step: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """key: a PRNG key; images (B, H, W, C), non-float ones converted to float32; labels (B, K)
    or None; saliency_fn: the per-pixel saliency of the current model (base.SaliencyFn),
    required when `needs_saliency`; step: int32 scalar, the updates applied so far, required
    when `needs_step`. Returns the augmented (images, labels), images float."""
    if not jnp.issubdtype(images.dtype, jnp.floating):
      images = images.astype(jnp.float32)
    if not self.stages:
      return images, labels
    for stage, stage_key in zip(self.stages, jax.random.split(key, len(self.stages))):
      args, kwargs = (stage_key, images, labels), {}
      if stage.needs_saliency:
        if saliency_fn is None:
          raise ValueError(f"augmentation op {stage.name!r} needs the current model's saliency, "
                           "which only the supervised train step (effcv_jax/train.py) provides")
        args += (saliency_fn,)
      if stage.needs_step:
        if step is None:
          raise ValueError(f"augmentation op {stage.name!r} follows a schedule and needs the "
                           "train step's step number, which only the supervised train step "
                           "(effcv_jax/train.py) and the PBA search provide")
        kwargs["step"] = step
      images, labels = stage.apply(*args, **kwargs)
    return images, labels


def chain(stages: Sequence[BatchOp], spec: str = "") -> Pipeline:
  """A Pipeline that runs `stages` in order; `spec` records where they came from."""
  return Pipeline(tuple(stages), spec)


def build(spec: str) -> Pipeline:
  """Builds the `Pipeline(key, images (B,H,W,C) float [0,255], labels (B,K)) -> (images, labels)`.

  spec: e.g. `"flip_lr|random_crop(padding=4)|randaugment(num_ops=2, magnitude=9)"`. The ops and
  their arguments are the factories of `registry()` (in colour.py, geometry.py, erase_mix.py,
  saliency_mix.py, policies.py, randaugment_tf.py, augmix.py and pba_policy.py). The pipeline keeps the spec
  and its stages (`stage_names`: folded geometric ops joined by '+').
  """
  ops = registry()
  parsed = parse_spec(spec)
  return chain(stages_from_ops([make_op(name, kwargs, ops) for name, kwargs in parsed]), spec)
