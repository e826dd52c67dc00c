"""The models' 2-D convolution, with an explicit choice of how it runs.

`conv_general_dilated(..., backend_name=...)` is a drop-in for lax.conv_general_dilated
(flax's nn.Conv(conv_general_dilated=...)) and `Conv(..., backend=...)` an nn.Conv with
the same parameters and outputs; `conv_transpose` and `ConvTranspose` do the same for
lax.conv_transpose and nn.ConvTranspose (on 'onednn' as the input gradient of a strided
convolution, on the other backends as lax's). For undilated NHWC/HWIO convolutions with non-negative
padding the backend decides how all three passes run:

  'onednn'  oneDNN's CPU kernels for the forward pass, input and kernel gradients, as XLA
            FFI custom calls (models/onednn_conv.py), grouped and depthwise convolutions
            (feature_group_count > 1) included; an error where they are unavailable.
  'xla'     XLA's convolutions, with the kernel gradient as kh * kw matrix products
            (models/xla_conv.py), fast on CPU and exact on every platform; grouped ones
            run lax.conv_general_dilated.
  'lax'     lax.conv_general_dilated unchanged (XLA's own gradients): the reference.
  'auto'    'onednn' on a single CPU device with float32 operands where oneDNN is
            available, and with bfloat16 ones where the CPU also has AVX-512 BF16 or AMX
            (elsewhere oneDNN emulates bf16, slowly, or, without AVX-512, has no bf16
            convolution), else 'xla'.
Anything else (dilated, batch-grouped, other layouts) runs lax.conv_general_dilated
whatever the backend. The models take the backend as their `conv_backend` field, which the
run's config sets (`config.conv_backend`); nothing here reads the environment.

The oneDNN custom calls have no sharding rule: under a jit over several devices XLA
would gather their operands and run each whole convolution on every device, so 'auto'
takes them only on a single CPU device.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from effcv_jax.models import onednn_conv, xla_conv

BACKENDS = ("auto", "onednn", "xla", "lax")
_NHWC = ("NHWC", "HWIO", "NHWC")


def backend(requested: str = "auto", dtypes=(jnp.float32,),
            device_count: int | None = None) -> tuple[str, str]:
  """(backend that runs, why) for a convolution of operands of `dtypes` when `requested`
  is asked for: 'onednn', 'xla' or 'lax' (device_count defaults to jax.device_count()).
  oneDNN takes operands all float32 or all bfloat16, the latter where the CPU has AVX-512
  (onednn_conv.bf16_support); 'auto' gives it bfloat16 ones only where the CPU has bf16
  instructions ('native'). Raises ValueError for an unknown name, RuntimeError for 'onednn'
  where it cannot run."""
  if requested not in BACKENDS:
    raise ValueError(f"conv_backend={requested!r}: use one of {', '.join(BACKENDS)}")
  names = sorted({jnp.dtype(d).name for d in dtypes})
  if requested in ("xla", "lax"):
    return requested, f"conv_backend={requested}"
  unsupported = (f"they take operands all float32 or all bfloat16, not {', '.join(names)}"
                 if len(names) != 1 or names[0] not in ("float32", "bfloat16") else None)
  bfloat16 = names == ["bfloat16"]
  bf16_support = onednn_conv.bf16_support() if bfloat16 else None
  if requested == "onednn":
    reason = unsupported or onednn_conv.unavailable_reason()
    if bf16_support == "none":
      reason = "oneDNN has no bfloat16 convolution for this CPU (it needs AVX-512)"
    if reason is not None:
      raise RuntimeError(f"conv_backend=onednn but oneDNN convolutions are unavailable: "
                         f"{reason}")
    if bf16_support == "emulated":
      return "onednn", "conv_backend=onednn; bfloat16 emulated (no AVX-512 BF16 or AMX)"
    return "onednn", "conv_backend=onednn"
  if jax.default_backend() != "cpu":
    return "xla", f"platform {jax.default_backend()}"
  device_count = jax.device_count() if device_count is None else device_count
  if device_count != 1:
    return "xla", f"{device_count} devices (the oneDNN custom calls have no sharding rule)"
  if unsupported:
    return "xla", f"operands of {', '.join(names)}"
  if bfloat16 and bf16_support != "native":
    return "xla", "bfloat16 operands and no AVX-512 BF16 or AMX for oneDNN's bf16 kernels"
  reason = onednn_conv.unavailable_reason()
  if reason is not None:
    return "xla", reason
  return "onednn", ("single CPU device, oneDNN available" if not bfloat16 else
                    "single CPU device, oneDNN available with bf16 kernels")


@functools.cache
def _log_backend(name: str, why: str) -> None:
  logging.info("convolutions: %s (%s)", name, why)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         *, backend_name: str = "auto"):
  """lax.conv_general_dilated, run by `backend_name` where it applies (module doc)."""
  undilated = all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
  layout = dimension_numbers
  if isinstance(layout, lax.ConvDimensionNumbers):
    layout = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    nhwc = dimension_numbers == layout
  else:
    nhwc = tuple(layout or ()) == _NHWC
  if (lhs.ndim == 4 and nhwc and undilated and batch_group_count == 1 and precision is None
      and preferred_element_type is None):
    pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
            if isinstance(padding, str) else tuple(tuple(p) for p in padding))
    if all(p >= 0 for pair in pads for p in pair):
      name, why = backend(backend_name, (lhs.dtype, rhs.dtype))
      _log_backend(name, why)
      if name == "onednn":
        return onednn_conv.conv2d(lhs, rhs, tuple(window_strides), tuple(pads),
                                  feature_group_count)
      if name == "xla" and feature_group_count == 1:
        return xla_conv.conv2d(lhs, rhs, tuple(window_strides), tuple(pads))
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


@functools.cache
def _conv_fn(backend_name: str):
  """One function object per backend, so that modules built alike compare equal."""
  if backend_name not in BACKENDS:
    raise ValueError(f"conv_backend={backend_name!r}: use one of {', '.join(BACKENDS)}")
  return functools.partial(conv_general_dilated, backend_name=backend_name)


def Conv(*args, backend: str = "auto", **kwargs) -> nn.Conv:  # pylint: disable=invalid-name
  """nn.Conv(*args, **kwargs) whose convolution runs on `backend` (module doc); its
  parameters, names and outputs are nn.Conv's."""
  return nn.Conv(*args, conv_general_dilated=_conv_fn(backend), **kwargs)


def transpose_pads(kernel_hw: tuple[int, int], strides: tuple[int, int],
                   padding: str | Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
  """The padding of the stride-dilated input that lax.conv_transpose applies for `padding`:
  'SAME' and 'VALID' name the corresponding forward convolution's, explicit (before, after)
  pairs are used as they are (lax's default, use_consistent_padding=False)."""
  if not isinstance(padding, str):
    return tuple((int(before), int(after)) for before, after in padding)
  pads = []
  for k, s in zip(kernel_hw, strides):
    if padding == "SAME":
      total = k + s - 2
      before = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "VALID":
      total = k + s - 2 + max(k - s, 0)
      before = k - 1
    else:
      raise ValueError(f"padding {padding!r}: use 'SAME', 'VALID' or (before, after) pairs")
    pads.append((before, total - before))
  return tuple(pads)


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                   padding: str | Sequence[tuple[int, int]], *,
                   backend_name: str = "auto") -> jax.Array:
  """lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=NHWC/HWIO/NHWC) for x
  (B, H, W, Cin) and kernel (kh, kw, Cin, Cout), run by `backend_name`: on 'onednn' as
  onednn_conv.conv2d_transpose where the padding allows it (at most kh - 1 a side of the
  dilated input), otherwise, and on 'xla' and 'lax', as lax.conv_transpose."""
  strides = tuple(int(s) for s in strides)
  pads = transpose_pads(kernel.shape[:2], strides, padding)
  name, why = backend(backend_name, (x.dtype, kernel.dtype))
  if (name == "onednn" and x.ndim == 4
      and onednn_conv.transpose_padding(kernel.shape[:2], pads) is not None):
    _log_backend(name, why)
    return onednn_conv.conv2d_transpose(x, kernel, strides, pads)
  return lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=_NHWC)


class ConvTranspose(nn.Module):
  """nn.ConvTranspose for NHWC images (transpose_kernel=False, no kernel dilation) whose
  convolution runs on `backend` (`conv_transpose`): the same parameters ('kernel' (kh, kw,
  Cin, Cout), 'bias' (Cout,)), initialisers and outputs. x (B, H, W, Cin) -> (B, Ho, Wo,
  features), Ho = H * stride with 'SAME' padding."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  backend: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[-1], self.features))
    y = conv_transpose(x, kernel, self.strides, self.padding, backend_name=self.backend)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y
