"""Head surgery: keep a pretrained backbone, re-initialise the classifier for new classes.

Head patterns are regexes that fully match parameter paths inside a collection,
the convention of `effcv_jax.optim` ('linear/kernel', 'layer1_0/conv1/kernel'),
so the returned new paths can go straight into learning-rate rules.
"""

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax import models
from effcv_jax.models.alexnet import AlexNet
from effcv_jax.models.cnn import SmallCNN
from effcv_jax.models.efficientnet import EfficientNet
from effcv_jax.models.mobilenet_v1 import MobileNetV1
from effcv_jax.models.mobilenet_v2 import MobileNetV2
from effcv_jax.models.resnet_cifar import CifarResNet
from effcv_jax.models.vgg import VGG
from effcv_jax.models.wide_resnet import WideResNet
from effcv_jax.pretrained.common import Variables, WeightImportError, flatten, unflatten

# The classifier of each model family, as parameter-path regexes.
HEAD_PATTERNS: dict[type, tuple[str, ...]] = {
    CifarResNet: (r"linear/.*",),
    WideResNet: (r"head/.*",),
    SmallCNN: (r"head/.*",),
    MobileNetV1: (r"head/.*",),
    MobileNetV2: (r"head/.*",),
    EfficientNet: (r"head/.*",),
    AlexNet: (r"head/.*",),
    VGG: (r"head/.*",),
}


def default_head_patterns(model: nn.Module) -> tuple[str, ...]:
  """The classifier patterns of `model`'s family; raises for an unknown family."""
  for cls, patterns in HEAD_PATTERNS.items():
    if isinstance(model, cls):
      return patterns
  raise ValueError(f"no default head patterns for {type(model).__name__}: pass head_patterns")


def _is_head(path: str, patterns: Sequence[str]) -> bool:
  """Whether the in-collection part of 'collection/a/b' fully matches a pattern."""
  in_collection = path.split("/", 1)[1]
  return any(re.fullmatch(pattern, in_collection) for pattern in patterns)


def replace_head(variables: Variables, model: str | nn.Module, new_num_classes: int,
                 rng: jax.Array, head_patterns: Sequence[str] | None = None,
                 input_shape: tuple[int, ...] = (1, 32, 32, 3),
                 **model_kwargs: Any) -> tuple[Variables, list[str]]:
  """Variables for `model` with `new_num_classes` outputs: backbone kept, head new.

  variables: {'params': ..., 'batch_stats': ...} of the pretrained model.
  model: a registry name (built with `new_num_classes` and `model_kwargs`) or a
    module with a `num_classes` field (cloned with the new count).
  rng: key for initialising the new head.
  head_patterns: regexes fully matching in-collection paths of the head
    ('linear/.*'); None takes the model family's default (`HEAD_PATTERNS`).
  input_shape: NHWC shape of the dummy input for `init`; the parameter shapes of
    these convolutional models do not depend on the spatial size.

  Every variable outside the head is the very same array as in `variables`
  (bit-identical); head variables come from a fresh `init`. Returns
  (new variables, the 'params' paths that are new, sorted). Raises
  WeightImportError if a backbone variable is missing, extra or differently
  shaped, or if the patterns match nothing.
  """
  if isinstance(model, str):
    model = models.build(model, new_num_classes, **model_kwargs)
  else:
    model = model.clone(num_classes=new_num_classes, **model_kwargs)
  patterns = tuple(head_patterns) if head_patterns is not None else default_head_patterns(model)
  init = lambda key: model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
  abstract = flatten(jax.eval_shape(init, rng))
  # 'params' first, then the other collections, each sorted (as jit returns dicts).
  order = sorted(abstract, key=lambda path: not path.startswith("params/"))
  shapes = {path: abstract[path].shape for path in order}
  old = flatten(variables)
  head = [path for path in shapes if _is_head(path, patterns)]
  _check_backbone(old, shapes, head, patterns, type(model).__name__)

  # Computed only once the backbone fits, and only the head: XLA then drops the rest
  # of `init` (the forward pass, the backbone's initialisers) and compiles a smaller
  # program; the values equal those of a full `init`.
  fresh = jax.jit(lambda key: {path: flatten(init(key))[path] for path in head})(rng)
  merged = {path: fresh[path] if path in head else old[path] for path in shapes}
  new_paths = [path.split("/", 1)[1] for path in head if path.startswith("params/")]
  return unflatten(merged), new_paths


def _check_backbone(old: dict, shapes: dict, head: list[str], patterns: Sequence[str],
                    model_name: str) -> None:
  """Raises WeightImportError unless `old` ({path: array}) has every non-head path of
  `shapes` ({path: shape}) with that shape, nothing else outside the head, and the
  head patterns match at least one parameter."""
  if not any(path.startswith("params/") for path in head):
    raise WeightImportError(f"head patterns {tuple(patterns)} match no parameter of {model_name}")
  for path, shape in shapes.items():
    if path in head:
      continue
    if path not in old:
      raise WeightImportError(f"backbone variable {path!r} is missing from the variables")
    if tuple(np.shape(old[path])) != tuple(shape):
      raise WeightImportError(f"backbone variable {path!r} has shape {np.shape(old[path])}, "
                              f"the model expects {tuple(shape)}")
  extra = [p for p in old if p not in shapes and not _is_head(p, patterns)]
  if extra:
    raise WeightImportError(f"unexpected variable {extra[0]!r}: not in {model_name}")
