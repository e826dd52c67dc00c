"""What every importer shares: the error, the result, layout transforms, checks.

An importer reads a file into a flat `{source_name: np.ndarray}` dict, maps each
source name to a `Target` (a variable path in the Flax model plus a layout
transform) through an explicit name map, and checks the result against the
shapes of the model's own `init`. Paths are '/'-joined strings that start with
the collection: 'params/layer1_0/conv1/kernel', 'batch_stats/bn1/mean'.
"""

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from effcv_jax.errors import UserError

Variables = dict[str, Any]   # {'params': {...}, 'batch_stats': {...}} as `model.init` returns


class WeightImportError(UserError, ValueError):
  """A weight file does not fit the model: names the first missing, unexpected or
  mis-shaped tensor (and how many more there are)."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The input normalisation a set of weights expects: (x / 255 - mean) / std.

  x are uint8 RGB pixels; `mean` and `std` are per channel on the [0, 1] scale,
  the convention of the configs' `input_mean` / `input_std`. `image_size` is the
  resolution the weights were trained at.
  """
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, C) -> float32 normalised images of the same shape."""
    x = np.asarray(images, np.float32) / 255.0
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def config_overrides(self) -> dict[str, tuple[float, ...]]:
    """The config keys that reproduce this normalisation."""
    return {"input_mean": self.mean, "input_std": self.std}


IMAGENET_TORCH = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # mean, std on x/255
MINUS_ONE_TO_ONE = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)              # x / 127.5 - 1


@dataclasses.dataclass(frozen=True)
class Imported:
  """Imported weights with what is needed to use them.

  `variables` fits `models.build(model_name, num_classes, **model_kwargs)`
  exactly; images go through `preprocessing` first.
  """
  variables: Variables
  model_name: str
  num_classes: int
  model_kwargs: Mapping[str, Any]
  preprocessing: Preprocessing

  def build_model(self) -> nn.Module:
    """The registry model these variables belong to."""
    from effcv_jax import models  # pylint: disable=import-outside-toplevel
    return models.build(self.model_name, self.num_classes, **self.model_kwargs)


# ----------------------------------------------------------------------------
# Layout transforms: source layout -> Flax layout, each a pure array function.

def identity(x: np.ndarray) -> np.ndarray:
  """Same layout (vectors; Keras HWIO kernels)."""
  return x


def oihw_to_hwio(x: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (out, in, kh, kw) -> Flax kernel (kh, kw, in, out)."""
  return np.transpose(x, (2, 3, 1, 0))


def out_in_to_in_out(x: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.transpose(x, (1, 0))


@dataclasses.dataclass(frozen=True)
class Target:
  """Where one source tensor goes: a '/'-joined variable path and a layout transform."""
  path: str
  transform: Callable[[np.ndarray], np.ndarray] = identity


NameMap = Mapping[str, Target]   # source name -> Target, in the model's order


# ----------------------------------------------------------------------------
# Shapes and checks.

def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Nested variables -> {'collection/module/.../name': leaf}."""
  return traverse_util.flatten_dict(variables, sep="/")


def unflatten(flat: Mapping[str, Any]) -> Variables:
  """Inverse of `flatten`, with plain (mutable) dicts."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def model_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """{path: shape} of `model.init` on an input of `input_shape` (NHWC), without computing it."""
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False))
  return {path: tuple(leaf.shape) for path, leaf in flatten(variables).items()}


def _first_of(kind: str, names: list[str], where: str) -> str:
  more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
  return f"{kind} {names[0]!r}{more} {where}"


def check_variables(variables: Mapping[str, Any],
                    expected: Mapping[str, tuple[int, ...]]) -> None:
  """Raises WeightImportError unless `variables` has exactly the paths and shapes of
  `expected` ({path: shape}, e.g. from `model_shapes`). Names the first difference
  in the order of `expected` (missing, then unexpected, then mis-shaped)."""
  flat = flatten(variables)
  missing = [p for p in expected if p not in flat]
  if missing:
    raise WeightImportError(_first_of("missing variable", missing, "that the model has"))
  unexpected = [p for p in flat if p not in expected]
  if unexpected:
    raise WeightImportError(_first_of("unexpected variable", unexpected,
                                      "that the model does not have"))
  for path, shape in expected.items():
    if tuple(np.shape(flat[path])) != tuple(shape):
      raise WeightImportError(f"variable {path!r} has shape {tuple(np.shape(flat[path]))}, "
                              f"the model expects {tuple(shape)}")


def check_matches_model(variables: Mapping[str, Any], model: nn.Module,
                        input_shape: tuple[int, ...]) -> None:
  """`check_variables` against the structure and shapes of `model.init`."""
  check_variables(variables, model_shapes(model, input_shape))


def convert_tensors(source: Mapping[str, np.ndarray], name_map: NameMap,
                    expected: Mapping[str, tuple[int, ...]],
                    ignore: Iterable[str] = ()) -> Variables:
  """Maps source tensors onto model variables through `name_map` and checks them.

  source: {source name: array} as read from a file. Names that fully match a
  regex in `ignore` are dropped (whether present or not). Raises
  WeightImportError naming the first unexpected source tensor (in file order),
  the first missing one (in name-map order) or the first whose transformed shape
  differs from `expected` ({path: shape}); then checks that the result covers
  `expected` exactly. Returns float32 variables as `model.init` nests them.
  """
  ignore_res = [re.compile(p) for p in ignore]
  kept = [n for n in source if not any(r.fullmatch(n) for r in ignore_res)]
  unexpected = [n for n in kept if n not in name_map]
  if unexpected:
    raise WeightImportError(_first_of("unexpected tensor", unexpected,
                                      "in the weight file: no variable of the model maps to it"))
  missing = [n for n in name_map if n not in source]
  if missing:
    raise WeightImportError(_first_of("missing tensor", missing,
                                      "is not in the weight file"))
  flat = {}
  for name in kept:
    target = name_map[name]
    value = np.asarray(target.transform(np.asarray(source[name])), np.float32)
    if target.path in flat:
      raise WeightImportError(f"tensor {name!r} maps to {target.path!r}, already filled")
    want = expected.get(target.path)
    if want is None:
      raise WeightImportError(f"tensor {name!r} maps to {target.path!r}, which the model "
                              "does not have")
    if value.shape != tuple(want):
      raise WeightImportError(
          f"tensor {name!r} has shape {tuple(np.shape(source[name]))} -> {value.shape} as "
          f"{target.path!r}, the model expects {tuple(want)}")
    flat[target.path] = jnp.asarray(value)
  variables = unflatten(flat)
  check_variables(variables, expected)
  return variables
