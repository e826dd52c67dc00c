"""2-D convolutions that run oneDNN's CPU kernels inside jitted JAX code.

`conv2d` is a custom-VJP convolution whose forward pass, input gradient and kernel
gradient are XLA FFI custom calls into oneDNN (onednn_conv.cc, beside this file), for
float32 (and, on AVX-512 CPUs, bfloat16: `bf16_support`) NHWC/HWIO convolutions on CPU,
grouped and depthwise ones included; its gradients (`conv2d_input_grad`,
`conv2d_kernel_grad`) are custom-VJP functions of the same calls, so every order of
derivative runs on oneDNN (a gradient penalty differentiates a gradient), and
`conv2d_transpose` (a transposed convolution, a generator's upsampling) is an input
gradient. PyTorch's CPU convolutions are oneDNN's too, and XLA:CPU's own are slower for the
models here, its depthwise ones and their gradients by an order of magnitude (`python -m
benchmarks.train_step` compares them, benchmarks/README.md). 1x1 kernels take their kernel
gradient as one XLA matrix product instead (ungrouped ones; grouped 1x1 kernels stay with
oneDNN).

The custom calls may run concurrently: XLA runs independent custom calls of one program
on different threads of its pool, and callers run programs from several threads. Each
execution gets its own scratchpad (user-managed, per executing thread), which oneDNN
requires for a primitive executed on other threads than the one that created it, or on
several at once; onednn_conv.cc explains the failure this prevents.

The extension is compiled on first use with the system's C++ compiler against the oneDNN
of the `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` wheels (requirements.txt) and
JAX's FFI headers, into $EFFCV_CACHE_DIR (default ~/.cache/effcv_jax), keyed by a hash
of the source, JAX's version and the oneDNN headers, so the compile happens once per
machine and oneDNN. `available()` says whether it can be used here and, if not, why.

$EFFCV_ONEDNN_ROOT names another oneDNN prefix (include/, lib/), such as the newer
`onednn` + `onednn-devel` wheels installed with `pip install --prefix=DIR`
(benchmarks/onednn_builds.py compares builds). Those are built for Intel's SYCL runtime:
their CPU engine is a SYCL device of the Intel OpenCL CPU runtime (`intel-opencl-rt`,
installed with them), which this module points the OpenCL loader at
(OCL_ICD_FILENAMES=<prefix>/lib/libintelocl.so unless already set).
`onednn_build_info()` says which version and runtimes a prefix holds.

The custom calls have no sharding rule: under a jit over several devices XLA gathers
their operands and runs each whole convolution on every device, so the models take this
path only on a single CPU device (`models.conv` decides).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax import native_build
from effcv_jax.models import xla_conv

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"forward": "EffcvOnednnConvForward", "input_grad": "EffcvOnednnConvInputGrad",
            "kernel_grad": "EffcvOnednnConvKernelGrad"}


def _onednn_prefix() -> pathlib.Path:
  """The install prefix holding include/dnnl.hpp and lib/libdnnl.so: $EFFCV_ONEDNN_ROOT,
  or the environment's prefix where the oneDNN wheels put them."""
  return pathlib.Path(os.environ.get("EFFCV_ONEDNN_ROOT", sys.prefix))


_HEADERS = ("dnnl_version.h", "dnnl_config.h")
_RUNTIMES = {"0u": "none", "1u": "sequential", "2u": "OpenMP", "4u": "TBB",
             "8u": "threadpool", "256u": "OpenCL", "512u": "SYCL", "1024u": "Level Zero"}


def _header(prefix: pathlib.Path, name: str) -> str:
  """The text of oneDNN header `name` under `prefix` ('' when absent)."""
  path = prefix / "include" / "oneapi" / "dnnl" / name
  return path.read_text() if path.exists() else ""


def onednn_build_info(prefix: pathlib.Path | str | None = None) -> dict:
  """What the oneDNN under `prefix` (default: the one the convolutions use) is, from its
  headers: {'prefix', 'version' ('3.2.0'), 'cpu_runtime' ('OpenMP', 'SYCL', ...),
  'cpu_threading' ('OpenMP', 'TBB', ...)}; values are None where the headers lack them."""
  prefix = pathlib.Path(prefix) if prefix is not None else _onednn_prefix()
  text = "\n".join(_header(prefix, name) for name in _HEADERS)
  defines = dict(re.findall(r"^#define (DNNL_\w+) +(\S+)", text, flags=re.MULTILINE))
  values = {name: value for name, value in defines.items() if name.startswith("DNNL_RUNTIME_")}

  def runtime(name: str) -> str | None:
    value = values.get(defines.get(name, ""), None)
    return _RUNTIMES.get(value, value)

  parts = [defines.get(f"DNNL_VERSION_{part}") for part in ("MAJOR", "MINOR", "PATCH")]
  return {"prefix": str(prefix),
          "version": ".".join(parts) if all(parts) else None,
          "cpu_runtime": runtime("DNNL_CPU_RUNTIME"),
          "cpu_threading": runtime("DNNL_CPU_THREADING_RUNTIME") or runtime("DNNL_CPU_RUNTIME")}


def _library_key(prefix: pathlib.Path) -> str:
  digest = hashlib.sha256(_SOURCE.read_bytes())
  digest.update(" ".join([jax.__version__, str(prefix)]).encode())
  for name in _HEADERS:
    digest.update(_header(prefix, name).encode())
  return digest.hexdigest()[:16]


def _build(prefix: pathlib.Path, output: pathlib.Path) -> None:
  """Compiles onednn_conv.cc into `output` (native_build.compile_library)."""
  compiler = native_build.find_compiler("CXX", ("g++", "c++"), "C++")
  native_build.compile_library(
      [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
       f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", str(_SOURCE),
       # DT_RPATH (not RUNPATH) also finds libdnnl's own dependencies (TBB,
       # SYCL, ...) in the prefix, where the `onednn` wheels put them.
       f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,-rpath,{prefix / 'lib'}",
       f"-Wl,-rpath-link,{prefix / 'lib'}", "-Wl,--disable-new-dtags"], output, _SOURCE)


@functools.cache
def _load() -> str | None:
  """Builds (once per machine) and registers the custom calls; None when they are
  registered, else the reason they are not available."""
  prefix = _onednn_prefix()
  if not (prefix / "include" / "dnnl.hpp").exists() or not list(prefix.glob("lib/libdnnl.so*")):
    return (f"oneDNN not found under {prefix} (pip install onednn-cpu-gomp "
            f"onednn-devel-cpu-gomp, or set EFFCV_ONEDNN_ROOT to a prefix with "
            f"include/dnnl.hpp and lib/libdnnl.so)")
  if onednn_build_info(prefix)["cpu_runtime"] == "SYCL":
    opencl_cpu = prefix / "lib" / "libintelocl.so"
    if "OCL_ICD_FILENAMES" not in os.environ and not opencl_cpu.exists():
      return (f"the oneDNN under {prefix} runs CPU kernels through SYCL, which needs the Intel "
              f"OpenCL CPU runtime: pip install --prefix={prefix} intel-opencl-rt, or set "
              f"OCL_ICD_FILENAMES to its libintelocl.so")
    os.environ.setdefault("OCL_ICD_FILENAMES", str(opencl_cpu))
  handle = native_build.load_library(
      native_build.cache_dir() / f"onednn_conv-{_library_key(prefix)}.so",
      functools.partial(_build, prefix))
  if isinstance(handle, str):
    return handle
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"effcv_onednn_conv_{target}",
                                jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu")
  return None


_AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def bf16_support() -> str:
  """How oneDNN runs bfloat16 convolutions on this CPU: 'native' (AVX-512 BF16 or AMX
  instructions), 'emulated' (AVX-512 without them: oneDNN emulates the bf16 arithmetic,
  slower than float32) or 'none' (oneDNN 3.2 has no bf16 convolution for AVX2 CPUs)."""
  flags = native_build.cpu_flags()
  if {"avx512_bf16", "amx_bf16"} & flags:
    return "native"
  return "emulated" if _AVX512_CORE <= flags else "none"


def available() -> bool:
  """Whether the oneDNN convolutions can run here (building them on first call)."""
  return _load() is None


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True)."""
  return _load()


def _call(target: str, out_shape: tuple[int, ...], strides: tuple[int, int],
          padding: tuple[tuple[int, int], ...], groups: int, *operands: jax.Array
          ) -> jax.Array:
  reason = _load()
  if reason is not None:
    raise RuntimeError(f"oneDNN convolutions unavailable: {reason}")
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  return jax.ffi.ffi_call(f"effcv_onednn_conv_{target}",
                          jax.ShapeDtypeStruct(out_shape, operands[0].dtype),
                          vmap_method="sequential")(
      *operands, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
      pad_top=np.int64(pad_top), pad_bottom=np.int64(pad_bottom),
      pad_left=np.int64(pad_left), pad_right=np.int64(pad_right), groups=np.int64(groups))


def _output_hw(x_shape, w_shape, strides, padding) -> tuple[int, int]:
  return tuple((x_shape[1 + d] + sum(padding[d]) - w_shape[d]) // strides[d] + 1
               for d in range(2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...], groups: int = 1) -> jax.Array:
  """x (B, H, W, Cin), w (kh, kw, Cin / groups, Cout), both float32 or both bfloat16 (where
  `bf16_support()` is not 'none') -> (B, Ho, Wo, Cout) alike;
  padding ((top, bottom), (left, right)) non-negative, strides (sh, sw), groups dividing Cin
  and Cout (groups = Cin: depthwise): equals lax.conv_general_dilated(x, w, strides,
  padding, dimension_numbers=NHWC/HWIO/NHWC, feature_group_count=groups)."""
  out_h, out_w = _output_hw(x.shape, w.shape, strides, padding)
  return _call("forward", (x.shape[0], out_h, out_w, w.shape[3]), strides, padding, groups,
               x, w)


def _conv2d_fwd(x, w, strides, padding, groups):
  return conv2d(x, w, strides, padding, groups), (x, w)


def _conv2d_bwd(strides, padding, groups, residuals, dy):
  x, w = residuals
  return (conv2d_input_grad(dy, w, x.shape[1:3], strides, padding, groups),
          conv2d_kernel_grad(x, dy, w.shape[:2], strides, padding, groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d_input_grad(dy: jax.Array, w: jax.Array, x_hw: tuple[int, int],
                      strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
                      groups: int = 1) -> jax.Array:
  """The gradient of conv2d(x, w, strides, padding, groups) with respect to x, for x of
  spatial size x_hw, at output gradient dy (B, Ho, Wo, Cout): (B, H, W, Cin). As a function
  of dy it is the transposed convolution (`conv2d_transpose`); differentiable in dy and w
  to any order (its own gradients are conv2d and conv2d_kernel_grad)."""
  return _call("input_grad", (dy.shape[0],) + tuple(x_hw) + (w.shape[2] * groups,), strides,
               padding, groups, dy, w)


def _input_grad_fwd(dy, w, x_hw, strides, padding, groups):
  return conv2d_input_grad(dy, w, x_hw, strides, padding, groups), (dy, w)


def _input_grad_bwd(x_hw, strides, padding, groups, residuals, dx_bar):
  dy, w = residuals
  return (conv2d(dx_bar, w, strides, padding, groups),
          conv2d_kernel_grad(dx_bar, dy, w.shape[:2], strides, padding, groups))


conv2d_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d_kernel_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                       strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
                       groups: int = 1) -> jax.Array:
  """The gradient of conv2d(x, w, strides, padding, groups) with respect to its kernel w of
  spatial size kernel_hw, at output gradient dy: (kh, kw, Cin / groups, Cout).
  Differentiable in x and dy to any order."""
  w_shape = tuple(kernel_hw) + (x.shape[3] // groups, dy.shape[3])
  if w_shape[:2] == (1, 1) and groups == 1:
    # oneDNN 3.2's 1x1 kernel gradient (jit_1x1:avx2) is wrong for some strided shapes
    # (4->6 channels at stride 2 in tests/test_conv.py); for 1x1 kernels the XLA path's
    # per-tap gradient is a single matrix product.
    return xla_conv.kernel_grad(x, dy, (1, 1), strides, padding)
  return _call("kernel_grad", w_shape, strides, padding, groups, x, dy)


def _kernel_grad_fwd(x, dy, kernel_hw, strides, padding, groups):
  return conv2d_kernel_grad(x, dy, kernel_hw, strides, padding, groups), (x, dy)


def _kernel_grad_bwd(kernel_hw, strides, padding, groups, residuals, dw_bar):
  x, dy = residuals
  return (conv2d_input_grad(dy, dw_bar, x.shape[1:3], strides, padding, groups),
          conv2d(x, dw_bar, strides, padding, groups))


conv2d_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def transpose_padding(kernel_hw: tuple[int, int], padding: tuple[tuple[int, int], ...]
                      ) -> tuple[tuple[int, int], ...] | None:
  """The padding of the strided convolution whose input gradient is the transposed
  convolution that pads its stride-dilated input by `padding` (lax.conv_transpose's explicit
  padding): k - 1 - p on each side; None where that is negative (no such convolution)."""
  pads = tuple((k - 1 - before, k - 1 - after)
               for k, (before, after) in zip(kernel_hw, padding))
  return pads if all(p >= 0 for pair in pads for p in pair) else None


def conv2d_transpose(x: jax.Array, k: jax.Array, strides: tuple[int, int],
                     padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """x (B, H, W, Cin), k (kh, kw, Cin, Cout) -> (B, Ho, Wo, Cout), Ho = (H - 1) sh + 2 +
  pad_top + pad_bottom - kh (Wo alike): equals lax.conv_transpose(x, k, strides, padding,
  dimension_numbers=NHWC/HWIO/NHWC) for explicit `padding` of the stride-dilated input, where
  `transpose_padding(k's size, padding)` is not None. It is conv2d_input_grad of the
  convolution with that padding and kernel k flipped in space, its input and output channels
  swapped."""
  pads = transpose_padding(k.shape[:2], padding)
  if pads is None:
    raise ValueError(f"conv2d_transpose: padding {padding} exceeds the kernel's {k.shape[:2]} "
                     "less one; use lax.conv_transpose")
  out_hw = tuple((x.shape[1 + d] - 1) * strides[d] + k.shape[d] - sum(pads[d])
                 for d in range(2))
  w = jnp.swapaxes(k[::-1, ::-1], 2, 3)
  return conv2d_input_grad(x, w, out_hw, strides, pads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
