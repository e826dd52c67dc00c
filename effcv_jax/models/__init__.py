"""Model registry: `build(name, num_classes, conv_backend='auto', **kwargs)` -> flax.linen.Module.

Names: `cnn_small`, `resnet{8,14,20,32,44,56,110}` (CIFAR, option-A shortcuts),
`wrn{depth}_{k}` (e.g. `wrn28_2`) and FixMatch's variant `wrn{depth}_{k}_fixmatch`,
`mobilenet_v1_{0.25,0.5,0.75,1.0}` (Keras layout, TF "SAME" padding; see effcv_jax/pretrained
for ImageNet weights),
`mobilenet_v2_{0.35,0.5,0.75,1.0,1.3,1.4}` (TF "SAME" padding), `efficientnet_b{0..7}`
and `efficientnet_lite{0..4}` (Keras layout; kwargs such as `dropout_rate`, `drop_path_rate`,
`small_image=True` (the official 32 px model) or `stem_stride=1` override the variant's
defaults), `alexnet` (torchvision's single-tower layout; `batch_norm=True` adds batch norm) and
`vgg{11,16}`, `vgg{11,16}_bn` (configurations A and D); these three take 224 px inputs, or 32 px
ones with `small_image=True` (models/alexnet.py, models/vgg.py), and `min_input_size(model)` says
the smallest side a model takes. Every model is called as `model.apply(variables, images,
train=bool)` on normalised NHWC float images and returns logits; dropout and stochastic depth
draw from the 'dropout' RNG stream. Every model has a `conv_backend` field: how its convolutions
run (models/conv.py: 'auto', 'onednn', 'xla' or 'lax'); it changes neither the parameters nor,
beyond float rounding, the outputs. Every model also has a `dtype` field, the dtype its
convolutions, matrix products and batch-norm outputs compute in (flax's `dtype`; None infers
float32 from the inputs and parameters); its parameters and batch statistics stay float32
(flax's `param_dtype`) and batch norm normalises in float32 whatever it is.
`build(..., dtype='bfloat16')` sets it (the models' outputs are then bfloat16 logits); the
oneDNN convolutions take float32 only, so conv_backend 'auto' runs bfloat16 ones on XLA.
The residual models (CIFAR ResNets, WRNs, EfficientNets) have a `remat` field:
`build(..., remat=True)` recomputes each residual block's activations in the backward pass
instead of keeping them (models/layers.py `rematerialised`), with the same parameter names.
"""

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from effcv_jax.models.alexnet import AlexNet
from effcv_jax.models.cnn import SmallCNN
from effcv_jax.models import efficientnet
from effcv_jax.models.conv import BACKENDS as CONV_BACKENDS
from effcv_jax.models.mobilenet_v1 import MobileNetV1
from effcv_jax.models.mobilenet_v2 import MobileNetV2
from effcv_jax.models.resnet_cifar import CifarResNet
from effcv_jax.models.vgg import VGG
from effcv_jax.models.wide_resnet import WideResNet

_FIXED: dict[str, Callable[..., nn.Module]] = {
    "cnn_small": SmallCNN,
    "alexnet": AlexNet,
}
_PATTERNS: list[tuple[str, Callable[..., nn.Module]]] = [
    (r"resnet(\d+)", lambda m, **kw: CifarResNet(depth=int(m[1]), **kw)),
    (r"wrn(\d+)_(\d+)", lambda m, **kw: WideResNet(depth=int(m[1]), widen=int(m[2]), **kw)),
    (r"wrn(\d+)_(\d+)_fixmatch",
     lambda m, **kw: WideResNet(depth=int(m[1]), widen=int(m[2]), fixmatch=True, **kw)),
    (r"efficientnet_(b[0-7]|lite[0-4])",
     lambda m, **kw: efficientnet.build_variant(m[1], **kw)),
    (r"mobilenet_v1_(0\.25|0\.5|0\.75|1\.0)",
     lambda m, **kw: MobileNetV1(alpha=float(m[1]), **kw)),
    (r"mobilenet_v2_(0\.35|0\.5|0\.75|1\.0|1\.3|1\.4)",
     lambda m, **kw: MobileNetV2(alpha=float(m[1]), **kw)),
    (r"vgg(11|16)(_bn)?", lambda m, **kw: VGG(depth=int(m[1]), batch_norm=bool(m[2]), **kw)),
]


# config.dtype -> the models' `dtype` field (None: flax infers float32 from the inputs).
DTYPES: dict[str, Any] = {"float32": None, "bfloat16": jnp.bfloat16}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds a model constructor `constructor(num_classes=..., **kwargs)`."""
  _FIXED[name] = constructor


def names() -> list[str]:
  """The registered names and name patterns."""
  return sorted(_FIXED) + [p for p, _ in _PATTERNS]


def min_input_size(model: nn.Module) -> int:
  """The smallest side (px) of the square images `model` takes: its `min_input_size` where it
  declares one (the models whose classifier reads a fixed-size map: AlexNet, VGG), else 1."""
  return getattr(model, "min_input_size", 1)


def _to_tuples(value: Any) -> Any:
  """Lists (nested too, as JSON gives them back) -> tuples; other values unchanged."""
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuples(v) for v in value)
  return value


def build(name: str, num_classes: int, conv_backend: str = "auto", dtype: str = "float32",
          remat: bool = False, **kwargs: Any) -> nn.Module:
  """Builds the model `name` with `num_classes` outputs whose convolutions run on
  `conv_backend` (models/conv.py), computing in `dtype` (a DTYPES key; module doc), its
  residual blocks rematerialised with `remat` (module doc); kwargs go to the module.

  Lists in kwargs, nested ones too (as a config read back from JSON has them), become
  tuples, so the module stays hashable. Raises ValueError for an unknown name, backend
  or dtype, for dtype 'bfloat16' on a model without a `dtype` field, and for remat on a
  model without a `remat` field.
  """
  if conv_backend not in CONV_BACKENDS:
    raise ValueError(f"conv_backend={conv_backend!r}: use one of {', '.join(CONV_BACKENDS)}")
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
  kwargs = {k: _to_tuples(v) for k, v in kwargs.items()}
  kwargs["conv_backend"] = conv_backend
  model = _construct(name, num_classes, kwargs)
  fields = {field.name for field in dataclasses.fields(model)}
  if remat:
    if "remat" not in fields:
      raise ValueError(f"model {name!r} ({type(model).__name__}) has no remat field, so its "
                       "blocks cannot be rematerialised (the residual models resnet*, wrn*, "
                       "efficientnet_* have it)")
    model = model.clone(remat=True)
  if DTYPES[dtype] is None:
    return model
  if "dtype" not in fields:
    raise ValueError(f"model {name!r} ({type(model).__name__}) has no dtype field, so it "
                     f"cannot compute in {dtype}: use dtype='float32' with it")
  return model.clone(dtype=DTYPES[dtype])


def _construct(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
  """The registered model `name` built with num_classes and kwargs."""
  if name in _FIXED:
    return _FIXED[name](num_classes=num_classes, **kwargs)
  for pattern, make in _PATTERNS:
    match = re.fullmatch(pattern, name)
    if match:
      return make(match, num_classes=num_classes, **kwargs)
  raise ValueError(f"Unknown model {name!r}; known: {', '.join(names())}")
