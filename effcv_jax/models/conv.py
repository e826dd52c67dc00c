"""A 2-D convolution whose kernel gradient is fast on CPU.

XLA's CPU backend computes the kernel gradient of a convolution as one convolution
with an image-sized "kernel", which runs 5-8x slower than the forward pass (measured
on a 2-core AMD EPYC: 500 ms vs 65 ms for 3x3, 32->32 channels, 128 images of 28x28;
see benchmarks/train_step.py). Here that gradient is instead a sum of kh * kw matrix
products, one per kernel tap:

  dW[i, j] = sum over (b, h, w) of  x_pad[b, h*s + i, w*s + j, :]^T  dy[b, h, w, :],

which runs at close to the speed of the forward pass. The forward pass and the input
gradient stay XLA's own. Results equal lax.conv_general_dilated's to float rounding.

`conv_general_dilated` is a drop-in for lax.conv_general_dilated (flax's
nn.Conv(conv_general_dilated=...)): it takes the fast path for ungrouped, undilated
NHWC/HWIO convolutions and hands anything else to lax unchanged. On a single CPU device
the fast path runs oneDNN's kernels for all three passes where they are available
(models/onednn_conv.py: 1.57x the images/s of the ResNet-20 train step here, README);
$EFFCV_CONV chooses: 'auto' (default: oneDNN when `backend()` finds it usable), 'onednn'
(required: an error if it is not available) or 'xla' (the kernel gradient above).
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from effcv_jax.models import onednn_conv

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
          padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """x (B, H, W, Cin), w (kh, kw, Cin, Cout) -> (B, Ho, Wo, Cout); padding is
  ((top, bottom), (left, right)) of non-negative ints, strides (sh, sw)."""
  return _conv(x, w, strides, padding)


def _conv2d_fwd(x, w, strides, padding):
  return _conv(x, w, strides, padding), (x, w)


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """dL/dw (kh, kw, Cin, Cout) from the input x and the output gradient dy."""
  (pt, pb), (pl, pr) = padding
  x_pad = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  _, out_h, out_w, c_out = dy.shape
  sh, sw = strides
  dy_rows = dy.reshape(-1, c_out)
  taps = []
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      window = lax.slice(x_pad, (0, i, j, 0),
                         (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1,
                          x.shape[3]), (1, sh, sw, 1))
      taps.append(lax.dot_general(window.reshape(-1, x.shape[3]), dy_rows,
                                  (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kernel_hw + taps[0].shape)


def _conv2d_bwd(strides, padding, residuals, dy):
  x, w = residuals
  input_transpose = jax.linear_transpose(lambda x_: _conv(x_, w, strides, padding), x)
  (dx,) = input_transpose(dy)
  dw = kernel_grad(x, dy, w.shape[:2], strides, padding)
  return dx, dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def backend(dtypes=(jnp.float32,), device_count: int | None = None) -> tuple[str, str]:
  """('onednn' or 'xla', why) for the fast path's convolution of operands of `dtypes`, as
  $EFFCV_CONV asks and the machine allows (device_count defaults to jax.device_count())."""
  not_f32 = sorted({jnp.dtype(d).name for d in dtypes} - {"float32"})
  choice = os.environ.get("EFFCV_CONV", "auto")
  if choice not in ("auto", "onednn", "xla"):
    raise ValueError(f"EFFCV_CONV={choice!r}: use auto, onednn or xla")
  if choice == "xla":
    return "xla", "EFFCV_CONV=xla"
  if choice == "onednn":
    reason = (f"they take float32 operands, not {', '.join(not_f32)}" if not_f32
              else onednn_conv.unavailable_reason())
    if reason is not None:
      raise RuntimeError(f"EFFCV_CONV=onednn but oneDNN convolutions are unavailable: {reason}")
    return "onednn", "EFFCV_CONV=onednn"
  if jax.default_backend() != "cpu":
    return "xla", f"platform {jax.default_backend()}"
  device_count = jax.device_count() if device_count is None else device_count
  if device_count != 1:
    return "xla", f"{device_count} devices (the oneDNN custom calls have no sharding rule)"
  if not_f32:
    return "xla", f"operands of {', '.join(not_f32)}"
  reason = onednn_conv.unavailable_reason()
  if reason is not None:
    return "xla", reason
  return "onednn", "single CPU device, oneDNN available"


@functools.cache
def _log_backend(name: str, why: str) -> None:
  logging.info("convolutions: %s (%s)", name, why)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """lax.conv_general_dilated with the fast kernel gradient where it applies."""
  undilated = all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
  layout = dimension_numbers
  if isinstance(layout, lax.ConvDimensionNumbers):
    layout = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    nhwc = dimension_numbers == layout
  else:
    nhwc = tuple(layout or ()) == _NHWC
  if (lhs.ndim == 4 and nhwc and undilated and feature_group_count == 1
      and batch_group_count == 1 and precision is None and preferred_element_type is None):
    pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
            if isinstance(padding, str) else tuple(tuple(p) for p in padding))
    if all(p >= 0 for pair in pads for p in pair):
      name, why = backend((lhs.dtype, rhs.dtype))
      _log_backend(name, why)
      fast_conv = onednn_conv.conv2d if name == "onednn" else conv2d
      return fast_conv(lhs, rhs, tuple(window_strides), tuple(pads))
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


# nn.Conv with the fast kernel gradient; parameters and outputs are nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
