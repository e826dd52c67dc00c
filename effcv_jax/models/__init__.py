"""Model registry: `build(name, num_classes, **kwargs)` -> flax.linen.Module.

Names: `cnn_small`, `resnet{8,14,20,32,44,56,110}` (CIFAR, option-A shortcuts),
`wrn{depth}_{k}` (e.g. `wrn28_2`), `mobilenet_v1_{0.25,0.5,0.75,1.0}` (Keras layout,
TF "SAME" padding; see effcv_jax/pretrained for ImageNet weights), `efficientnet_b{0..7}`
(Keras layout; kwargs such as `dropout_rate`, `drop_path_rate`, `stem_stride=1` for
32x32 images override the variant's defaults). Every model is called as
`model.apply(variables, images, train=bool)` on normalised NHWC float images and
returns logits; dropout and stochastic depth draw from the 'dropout' RNG stream.
"""

import re
from typing import Any, Callable

import flax.linen as nn

from effcv_jax.models.cnn import SmallCNN
from effcv_jax.models import efficientnet
from effcv_jax.models.resnet_cifar import CifarResNet
from effcv_jax.models.wide_resnet import WideResNet

_FIXED: dict[str, Callable[..., nn.Module]] = {
    "cnn_small": SmallCNN,
}
_PATTERNS: list[tuple[str, Callable[..., nn.Module]]] = [
    (r"resnet(\d+)", lambda m, **kw: CifarResNet(depth=int(m[1]), **kw)),
    (r"wrn(\d+)_(\d+)", lambda m, **kw: WideResNet(depth=int(m[1]), widen=int(m[2]), **kw)),
    (r"efficientnet_(b[0-7])", lambda m, **kw: efficientnet.build_variant(m[1], **kw)),
]


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds a model constructor `constructor(num_classes=..., **kwargs)`."""
  _FIXED[name] = constructor


def names() -> list[str]:
  """The registered names and name patterns."""
  return sorted(_FIXED) + [p for p, _ in _PATTERNS]


def _to_tuples(value: Any) -> Any:
  """Lists (nested too, as JSON gives them back) -> tuples; other values unchanged."""
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuples(v) for v in value)
  return value


def build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model `name` with `num_classes` outputs; kwargs go to the module.

  Lists in kwargs, nested ones too (as a config read back from JSON has them), become
  tuples, so the module stays hashable.
  """
  kwargs = {k: _to_tuples(v) for k, v in kwargs.items()}
  if name in _FIXED:
    return _FIXED[name](num_classes=num_classes, **kwargs)
  for pattern, make in _PATTERNS:
    match = re.fullmatch(pattern, name)
    if match:
      return make(match, num_classes=num_classes, **kwargs)
  raise ValueError(f"Unknown model {name!r}; known: {', '.join(names())}")
from effcv_jax.models import mobilenet_v1  # noqa: E402,F401  last: it calls register()
