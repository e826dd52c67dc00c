"""2-D convolutions that run oneDNN's CPU kernels inside jitted JAX code.

`conv2d` is a custom-VJP convolution whose forward pass, input gradient and kernel
gradient are XLA FFI custom calls into oneDNN (onednn_conv.cc, beside this file), for
float32 NHWC/HWIO convolutions on CPU; PyTorch's CPU convolutions are oneDNN's too, and
XLA:CPU's own are slower for the models here (`python -m benchmarks.train_step` compares
them, benchmarks/README.md). 1x1 kernels take their kernel gradient as one XLA matrix
product instead.

The custom calls may run concurrently: XLA runs independent custom calls of one program
on different threads of its pool, and callers run programs from several threads. Each
execution gets its own scratchpad (user-managed, per executing thread), which oneDNN
requires for a primitive executed on other threads than the one that created it, or on
several at once; onednn_conv.cc explains the failure this prevents.

The extension is compiled on first use with the system's C++ compiler against the oneDNN
of the `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` wheels (requirements.txt) and
JAX's FFI headers, into $EFFCV_CACHE_DIR (default ~/.cache/effcv_jax), keyed by a hash
of the source and the library versions, so the compile happens once per machine.
`available()` says whether it can be used here and, if not, why.

The custom calls have no sharding rule: under a jit over several devices XLA gathers
their operands and runs each whole convolution on every device, so the models take this
path only on a single CPU device (`models.conv` decides).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax.models import xla_conv

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"forward": "EffcvOnednnConvForward", "input_grad": "EffcvOnednnConvInputGrad",
            "kernel_grad": "EffcvOnednnConvKernelGrad"}


def _onednn_prefix() -> pathlib.Path:
  """The install prefix holding include/dnnl.hpp and lib/libdnnl.so: $EFFCV_ONEDNN_ROOT,
  or the environment's prefix where the oneDNN wheels put them."""
  return pathlib.Path(os.environ.get("EFFCV_ONEDNN_ROOT", sys.prefix))


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("EFFCV_CACHE_DIR",
                                     pathlib.Path.home() / ".cache" / "effcv_jax"))


def _library_key(prefix: pathlib.Path) -> str:
  versions = [jax.__version__]
  for dist in ("onednn-cpu-gomp", "onednn-devel-cpu-gomp"):
    try:
      versions.append(metadata.version(dist))
    except metadata.PackageNotFoundError:
      versions.append("-")
  digest = hashlib.sha256(_SOURCE.read_bytes())
  digest.update(" ".join(versions + [str(prefix)]).encode())
  return digest.hexdigest()[:16]


def _build(prefix: pathlib.Path, output: pathlib.Path) -> None:
  """Compiles onednn_conv.cc into `output` (written to a temporary file, then renamed, so
  a concurrent or interrupted build never leaves a half-written library)."""
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found (install g++ or set $CXX)")
  output.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
    partial = pathlib.Path(tmp) / output.name
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", str(_SOURCE),
               f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,-rpath,{prefix / 'lib'}",
               "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"compiling {_SOURCE.name} failed:\n{' '.join(command)}\n"
                         f"{result.stderr[-4000:]}")
    os.replace(partial, output)


@functools.cache
def _load() -> str | None:
  """Builds (once per machine) and registers the custom calls; None when they are
  registered, else the reason they are not available."""
  prefix = _onednn_prefix()
  if not (prefix / "include" / "dnnl.hpp").exists() or not list(prefix.glob("lib/libdnnl.so*")):
    return (f"oneDNN not found under {prefix} (pip install onednn-cpu-gomp "
            f"onednn-devel-cpu-gomp, or set EFFCV_ONEDNN_ROOT to a prefix with "
            f"include/dnnl.hpp and lib/libdnnl.so)")
  library = _cache_dir() / f"onednn_conv-{_library_key(prefix)}.so"
  try:
    if not library.exists():
      _build(prefix, library)
    handle = ctypes.CDLL(str(library))
  except (OSError, RuntimeError) as error:
    return str(error)
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"effcv_onednn_conv_{target}",
                                jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu")
  return None


def available() -> bool:
  """Whether the oneDNN convolutions can run here (building them on first call)."""
  return _load() is None


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True)."""
  return _load()


def _call(target: str, out_shape: tuple[int, ...], strides: tuple[int, int],
          padding: tuple[tuple[int, int], ...], *operands: jax.Array) -> jax.Array:
  reason = _load()
  if reason is not None:
    raise RuntimeError(f"oneDNN convolutions unavailable: {reason}")
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  return jax.ffi.ffi_call(f"effcv_onednn_conv_{target}",
                          jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(
      *operands, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
      pad_top=np.int64(pad_top), pad_bottom=np.int64(pad_bottom),
      pad_left=np.int64(pad_left), pad_right=np.int64(pad_right))


def _output_hw(x_shape, w_shape, strides, padding) -> tuple[int, int]:
  return tuple((x_shape[1 + d] + sum(padding[d]) - w_shape[d]) // strides[d] + 1
               for d in range(2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """x (B, H, W, Cin) float32, w (kh, kw, Cin, Cout) float32 -> (B, Ho, Wo, Cout);
  padding ((top, bottom), (left, right)) non-negative, strides (sh, sw): equals
  lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC/HWIO/NHWC)."""
  out_h, out_w = _output_hw(x.shape, w.shape, strides, padding)
  return _call("forward", (x.shape[0], out_h, out_w, w.shape[3]), strides, padding, x, w)


def _conv2d_fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, dy):
  x, w = residuals
  dx = _call("input_grad", x.shape, strides, padding, dy, w)
  if w.shape[:2] == (1, 1):
    # oneDNN 3.2's 1x1 kernel gradient (jit_1x1:avx2) is wrong for some strided shapes
    # (4->6 channels at stride 2 in tests/test_conv.py); for 1x1 kernels the XLA path's
    # per-tap gradient is a single matrix product.
    dw = xla_conv.kernel_grad(x, dy, (1, 1), strides, padding)
  else:
    dw = _call("kernel_grad", w.shape, strides, padding, x, dy)
  return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
