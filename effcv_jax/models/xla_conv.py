"""A 2-D convolution whose kernel gradient is a sum of matrix products (XLA only).

XLA's CPU backend computes the kernel gradient of a convolution as one convolution with
an image-sized "kernel", which is several times slower than the forward pass
(`python -m benchmarks.train_step` measures it). Here that gradient is instead a sum of
kh * kw matrix products, one per kernel tap:

  dW[i, j] = sum over (b, h, w) of  x_pad[b, h*s + i, w*s + j, :]^T  dy[b, h, w, :],

which runs at close to the speed of the forward pass. The forward pass and the input
gradient stay XLA's own. Results equal lax.conv_general_dilated's to float rounding.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

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
