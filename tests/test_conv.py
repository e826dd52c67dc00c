"""The fast-path convolutions equal lax's: outputs, both gradients, every stride/padding
the models use, with XLA's kernel-gradient products and with oneDNN's kernels; the
fallback for what they do not handle; the choice between them (a model's conv_backend)."""

from importlib import metadata

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import onednn_verbose
from effcv_jax import models
from effcv_jax.models import conv, onednn_conv, xla_conv
from tests.conftest import is_required, missing

_NHWC = ("NHWC", "HWIO", "NHWC")


def _require_onednn():
  """Skips where the oneDNN wheel is not installed (it is only for x86-64 Linux); where it
  is, the extension must build and load."""
  try:
    metadata.version("onednn-cpu-gomp")
  except metadata.PackageNotFoundError:
    missing("onednn", "onednn-cpu-gomp not installed (requirements.txt installs it on x86-64 Linux)")
  assert onednn_conv.available(), onednn_conv.unavailable_reason()


def _onednn_here() -> bool:
  """Whether oneDNN convolutions run here, for tests that check more where they do; where
  $EFFCV_REQUIRE names onednn they must."""
  if onednn_conv.available():
    return True
  if is_required("onednn"):
    pytest.fail(f"oneDNN convolutions unavailable: {onednn_conv.unavailable_reason()}",
                pytrace=False)
  return False


@pytest.fixture(params=["xla", "onednn"])
def conv_backend(request):
  """Each fast-path backend in turn."""
  if request.param == "onednn":
    _require_onednn()
  return request.param


def _vjps(conv_fn, x, w, **kwargs):
  """Output, dL/dx and dL/dw of conv_fn at (x, w) for a fixed random output gradient."""
  y, vjp = jax.vjp(lambda x_, w_: conv_fn(x_, w_, **kwargs), x, w)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape, y.dtype)
  return (y,) + vjp(dy)


@pytest.mark.parametrize("x_shape, kernel, strides, padding", [
    ((3, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    ((3, 9, 8, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1))),   # ResNet downsampling
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID"),            # WRN projection shortcut
    ((2, 8, 8, 16), (1, 1, 16, 32), (1, 1), "VALID"),         # EfficientNet expansion
    ((2, 16, 16, 3), (3, 3, 3, 16), (1, 1), "SAME"),          # ResNet stem
    ((2, 12, 12, 1), (3, 3, 1, 8), (1, 1), "SAME"),           # grey-scale stem (small CNN)
    ((2, 11, 11, 4), (5, 5, 4, 6), (2, 1), "SAME"),
    ((2, 7, 7, 2), (3, 3, 2, 3), (1, 1), ((0, 2), (1, 0))),   # asymmetric padding
])
def test_outputs_and_gradients_equal_lax(x_shape, kernel, strides, padding, conv_backend):
  _check_against_lax(x_shape, kernel, conv_backend, window_strides=strides, padding=padding)


def _check_against_lax(x_shape, kernel, conv_backend, **kwargs):
  """The convolution of random x and w with `kwargs` on `conv_backend` runs oneDNN's custom
  calls exactly when the backend is onednn, and its output and both gradients equal lax's."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), kernel)
  kwargs = dict(kwargs, dimension_numbers=_NHWC)
  expected = _vjps(lax.conv_general_dilated, x, w, **kwargs)
  lowered = jax.jit(lambda x_, w_: _vjps(conv.conv_general_dilated, x_, w_,
                                         backend_name=conv_backend, **kwargs)).lower(x, w)
  assert ("effcv_onednn_conv" in lowered.as_text()) == (conv_backend == "onednn")
  got = lowered.compile()(x, w)
  for name, want, have in zip(("output", "dx", "dw"), expected, got):
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("x_shape, kernel, strides, padding, groups", [
    ((2, 9, 9, 6), (3, 3, 1, 6), (1, 1), "SAME", 6),            # depthwise (MobileNet)
    ((2, 9, 8, 4), (5, 5, 1, 4), (2, 2), "SAME", 4),            # depthwise 5x5, strided
    ((2, 8, 8, 4), (3, 3, 1, 8), (2, 1), ((1, 1), (0, 2)), 4),  # channel multiplier 2
    ((2, 7, 7, 6), (3, 3, 2, 9), (1, 1), "VALID", 3),           # grouped
    ((2, 6, 6, 4), (1, 1, 2, 6), (2, 2), "VALID", 2),           # grouped 1x1, strided
])
def test_grouped_and_depthwise_equal_lax(x_shape, kernel, strides, padding, groups,
                                         conv_backend):
  """Grouped convolutions run oneDNN's kernels on the oneDNN backend (lax's on the XLA one)
  and equal lax's outputs and both gradients."""
  _check_against_lax(x_shape, kernel, conv_backend, window_strides=strides, padding=padding,
                     feature_group_count=groups)


@pytest.mark.parametrize("x_shape, kernel, strides, padding", [
    ((2, 7, 7, 8), (4, 4, 8, 5), (2, 2), "SAME"),          # the GAN generator's upsampling
    ((2, 5, 6, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((2, 5, 5, 4), (5, 5, 4, 2), (3, 3), "SAME"),          # stride above kernel - 1
    ((2, 4, 6, 3), (3, 3, 3, 4), (2, 1), "VALID"),
    ((2, 4, 4, 2), (4, 3, 2, 3), (2, 2), ((2, 1), (0, 2))),
])
def test_transposed_convolutions_equal_lax(x_shape, kernel, strides, padding):
  """conv.conv_transpose on oneDNN (an input-gradient call) equals lax.conv_transpose:
  output and both gradients, every padding form lax takes."""
  _require_onednn()
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), kernel)
  expected = _vjps(lax.conv_transpose, x, w, strides=strides, padding=padding,
                   dimension_numbers=_NHWC)
  lowered = jax.jit(lambda x_, w_: _vjps(conv.conv_transpose, x_, w_, strides=strides,
                                         padding=padding, backend_name="onednn")).lower(x, w)
  assert "effcv_onednn_conv" in lowered.as_text()
  for name, want, have in zip(("output", "dx", "dw"), expected, lowered.compile()(x, w)):
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4, err_msg=name)


def test_transposed_convolution_module_is_flaxs_with_the_same_parameters():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 6))
  plain = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding="SAME")
  variables = plain.init(jax.random.PRNGKey(1), x)
  onednn = _onednn_here()
  for backend in ("onednn", "xla", "lax") if onednn else ("xla", "lax"):
    fast = conv.ConvTranspose(4, (4, 4), strides=(2, 2), padding="SAME", backend=backend)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
        jnp.shape, variables)
    np.testing.assert_allclose(jax.jit(fast.apply)(variables, x), plain.apply(variables, x),
                               rtol=1e-5, atol=1e-5, err_msg=backend)
  if not onednn:
    return
  # A padding wider than the kernel less one has no strided-convolution form: lax runs it.
  wide = conv.ConvTranspose(3, (2, 2), padding=((2, 2), (2, 2)), backend="onednn")
  variables = wide.init(jax.random.PRNGKey(2), x)
  assert "effcv_onednn_conv" not in jax.jit(wide.apply).lower(variables, x).as_text()
  np.testing.assert_allclose(
      wide.apply(variables, x),
      nn.ConvTranspose(3, (2, 2), padding=((2, 2), (2, 2))).apply(variables, x), rtol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_second_order_gradients_equal_lax(groups):
  """A gradient penalty's derivative: d/dw of |d(sum conv(x, w)^2)/dx|^2, and of the
  kernel gradient's own norm, equal lax's (every derivative stays on oneDNN's calls)."""
  _require_onednn()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4 // groups, 6))

  def penalties(conv_fn):
    def out(x_, w_):
      return jnp.sum(jnp.tanh(conv_fn(x_, w_, (2, 2), ((1, 1), (1, 1)), groups)) ** 2)
    input_penalty = lambda w_: jnp.sum(jax.grad(out, argnums=0)(x, w_) ** 2)
    kernel_penalty = lambda x_: jnp.sum(jax.grad(out, argnums=1)(x_, w) ** 2)
    return jax.jit(lambda: (jax.grad(input_penalty)(w), jax.grad(kernel_penalty)(x)))()

  def lax_conv(x_, w_, strides, padding, groups_):
    return lax.conv_general_dilated(x_, w_, strides, padding, dimension_numbers=_NHWC,
                                    feature_group_count=groups_)

  for have, want in zip(penalties(onednn_conv.conv2d), penalties(lax_conv)):
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_bfloat16_convolutions_equal_lax_within_bfloat16_rounding(groups):
  """bfloat16 operands go to oneDNN as bfloat16 (native with AVX-512 BF16 or AMX, emulated
  with AVX-512 alone; oneDNN 3.2 has none for AVX2 CPUs, where this skips): output and both
  gradients in bfloat16, equal to lax's bfloat16 convolution within bfloat16's rounding."""
  _require_onednn()
  if onednn_conv.bf16_support() == "none":
    missing("cpu_isa", "oneDNN has no bfloat16 convolution for this CPU (no AVX-512)")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 4)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4 // groups, 6)).astype(jnp.bfloat16)
  kwargs = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=_NHWC,
                feature_group_count=groups)
  want = _vjps(lax.conv_general_dilated, x, w, **kwargs)
  lowered = jax.jit(lambda x_, w_: _vjps(conv.conv_general_dilated, x_, w_,
                                         backend_name="onednn", **kwargs)).lower(x, w)
  assert "effcv_onednn_conv" in lowered.as_text()
  for name, expected, got in zip(("output", "dx", "dw"), want, lowered.compile()(x, w)):
    assert got.dtype == jnp.bfloat16, name
    scale = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
    np.testing.assert_allclose(got.astype(jnp.float32), expected.astype(jnp.float32),
                               atol=0.02 * scale, err_msg=name)


def test_onednn_is_deterministic_and_vmaps():
  """Same inputs, same bits (resumed runs replay exactly); under vmap each slice equals
  its own call."""
  _require_onednn()
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 8, 8, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 16))
  grads = jax.jit(jax.grad(lambda x_, w_: jnp.sum(
      onednn_conv.conv2d(x_, w_, (1, 1), ((1, 1), (1, 1))) ** 2), argnums=(0, 1)))
  first, second = grads(x[0], w), grads(x[0], w)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  batched = jax.vmap(lambda x_: onednn_conv.conv2d(x_, w, (2, 2), ((0, 1), (0, 1))))(x)
  for i in range(3):
    np.testing.assert_array_equal(batched[i], onednn_conv.conv2d(x[i], w, (2, 2),
                                                                 ((0, 1), (0, 1))))


def test_backend_choice():
  assert conv.backend("xla", device_count=1)[0] == "xla"
  assert conv.backend("lax", device_count=1)[0] == "lax"
  assert conv.backend("auto", device_count=8) == (
      "xla", "8 devices (the oneDNN custom calls have no sharding rule)")
  assert conv.backend("auto", (jnp.bfloat16, jnp.float32), device_count=1) == (
      "xla", "operands of bfloat16, float32")
  if _onednn_here():
    assert conv.backend("auto", device_count=1) == (
        "onednn", "single CPU device, oneDNN available")
    with pytest.raises(RuntimeError, match="take operands all float32 or all bfloat16, not "
                                           "float16"):
      conv.backend("onednn", (jnp.float16,), device_count=1)
    support = onednn_conv.bf16_support()
    bf16 = conv.backend("auto", (jnp.bfloat16,), device_count=1)
    assert bf16[0] == ("onednn" if support == "native" else "xla"), bf16
    if support == "none":
      with pytest.raises(RuntimeError, match="no bfloat16 convolution for this CPU"):
        conv.backend("onednn", (jnp.bfloat16,), device_count=1)
    else:
      assert conv.backend("onednn", (jnp.bfloat16,), device_count=1)[0] == "onednn"
  with pytest.raises(ValueError, match="use one of auto, onednn, xla, lax"):
    conv.backend("fastest")
  with pytest.raises(ValueError, match="conv_backend='fastest'"):
    models.build("resnet8", 10, conv_backend="fastest")


def test_model_conv_backend_picks_the_programs_convolutions():
  """A model's conv_backend decides what its compiled program contains; the parameters
  do not depend on it."""
  x = jnp.zeros((2, 8, 8, 3))
  texts, shapes = {}, {}
  backends = ["xla", "lax"] + (["onednn"] if _onednn_here() else [])
  for name in backends:
    model = models.build("resnet8", 10, conv_backend=name)
    variables = model.init(jax.random.PRNGKey(0), x)
    shapes[name] = jax.tree.map(jnp.shape, variables)
    loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x) ** 2)
    texts[name] = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
  assert all(s == shapes["xla"] for s in shapes.values())
  assert "custom_vjp" not in str(jax.make_jaxpr(
      lambda: models.build("resnet8", 10, conv_backend="lax").init(jax.random.PRNGKey(0), x))())
  for name, text in texts.items():
    assert ("effcv_onednn_conv" in text) == (name == "onednn"), name
  # XLA's kernel gradient is a backward-filter convolution only on the 'lax' backend.
  assert texts["lax"].count("convolution") > texts["xla"].count("convolution")


def test_missing_onednn_is_reported_with_the_way_to_install_it(monkeypatch, tmp_path):
  onednn_conv._load.cache_clear()
  monkeypatch.setenv("EFFCV_ONEDNN_ROOT", str(tmp_path))
  try:
    assert not onednn_conv.available()
    assert "pip install onednn-cpu-gomp" in onednn_conv.unavailable_reason()
    assert conv.backend("auto", device_count=1)[0] == "xla"
    with pytest.raises(RuntimeError, match="EFFCV_ONEDNN_ROOT"):
      conv.backend("onednn")
  finally:
    onednn_conv._load.cache_clear()


def _fake_onednn_prefix(root, version=(3, 13, 2), cpu_runtime="512u", threading="4u"):
  """A prefix with oneDNN's headers (only the defines onednn_build_info reads) and an empty
  libdnnl.so."""
  headers = root / "include" / "oneapi" / "dnnl"
  headers.mkdir(parents=True)
  (root / "include" / "dnnl.hpp").write_text("")
  (root / "lib").mkdir()
  (root / "lib" / "libdnnl.so").write_text("")
  major, minor, patch = version
  (headers / "dnnl_version.h").write_text(
      f"#define DNNL_VERSION_MAJOR {major}\n#define DNNL_VERSION_MINOR {minor}\n"
      f"#define DNNL_VERSION_PATCH {patch}\n")
  (headers / "dnnl_config.h").write_text(
      "#define DNNL_RUNTIME_OMP 2u\n#define DNNL_RUNTIME_TBB 4u\n"
      "#define DNNL_RUNTIME_SYCL 512u\n"
      f"#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_{ {'2u': 'OMP', '4u': 'TBB'}[threading]}\n"
      f"#define DNNL_CPU_RUNTIME DNNL_RUNTIME_{ {'2u': 'OMP', '512u': 'SYCL'}[cpu_runtime]}\n")
  return root


def test_onednn_build_info_reads_version_and_runtimes_and_keys_the_library(tmp_path):
  sycl = _fake_onednn_prefix(tmp_path / "sycl")
  openmp = _fake_onednn_prefix(tmp_path / "openmp", (3, 2, 0), "2u", "2u")
  assert onednn_conv.onednn_build_info(sycl) == {
      "prefix": str(sycl), "version": "3.13.2", "cpu_runtime": "SYCL", "cpu_threading": "TBB"}
  assert onednn_conv.onednn_build_info(openmp)["cpu_runtime"] == "OpenMP"
  assert onednn_conv.onednn_build_info(tmp_path / "none")["version"] is None
  # The compiled extension is keyed by the headers: another oneDNN at the same prefix
  # gets its own build.
  key = onednn_conv._library_key(openmp)
  (openmp / "include" / "oneapi" / "dnnl" / "dnnl_version.h").write_text(
      "#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 3\n#define DNNL_VERSION_PATCH 0\n")
  assert onednn_conv._library_key(openmp) != key


def test_sycl_onednn_without_the_opencl_cpu_runtime_says_what_to_install(monkeypatch, tmp_path):
  onednn_conv._load.cache_clear()
  monkeypatch.setenv("EFFCV_ONEDNN_ROOT", str(_fake_onednn_prefix(tmp_path)))
  monkeypatch.delenv("OCL_ICD_FILENAMES", raising=False)
  try:
    assert "intel-opencl-rt" in onednn_conv.unavailable_reason()
    assert conv.backend("auto", device_count=1)[0] == "xla"
  finally:
    onednn_conv._load.cache_clear()


def test_onednn_verbose_lines_of_old_and_new_versions_sum_per_pass():
  lines = [
      "onednn_verbose,info,oneDNN v3.2.0 (commit x)",
      "onednn_verbose,exec,cpu,convolution,brgconv:avx2,forward_training,src_f32::blocked:acdb"
      "::f0,attr-scratchpad:user ,alg:convolution_direct,mb128_ic16oc16_ih32oh32kh3,16.5",
      "onednn_verbose,exec,cpu,reorder,jit:uni,undef,src_f32::blocked:cdba::f0,,16x16x3x3,2.0",
      "onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv:avx2,forward_training,src:f32"
      "::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,mb128_ic16oc16,3.5",
      "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32,"
      "attr-scratchpad:user,alg:convolution_direct,mb128_ic3oc16,2.25",
      "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,"
      "prop_kind,memory_descriptors,attributes,auxiliary,problem_desc,exec_time",
      "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit:avx2,backward_weights,"
      "src:f32,,alg:convolution_direct,mb128_ic3oc16,0.5",
  ]
  assert onednn_verbose.kernels_of_verbose_log(lines) == {
      "forward": {"brgconv:avx2": {"calls": 2, "ms": 20.0}},
      "kernel_grad": {"jit:avx2": {"calls": 1, "ms": 2.2}},
      "reorder": {"jit:uni": {"calls": 1, "ms": 2.0}}}
  assert onednn_verbose.isa_of_verbose_log(
      ["onednn_verbose,info,cpu,runtime:OpenMP,nthr:2",
       "onednn_verbose,info,cpu,isa:Intel AVX2"]) == "Intel AVX2"
  assert onednn_verbose.isa_of_verbose_log(
      ["onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ "
       "extensions"]) == "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions"
  assert onednn_verbose.isa_of_verbose_log(lines) is None
  # Two steps of a forward layer called twice a step and a matrix product, after an
  # initialisation's forward call: the first executions (their kernels' compilation) left out.
  steps = [
      "onednn_verbose,exec,cpu,convolution,brgconv:avx2,forward_training,src_f32::blocked:acdb"
      f"::f0,,alg:convolution_direct,mb8_ic4oc4,{ms}" for ms in (9.0, 2.0, 2.0, 3.0, 1.0)] + [
      f"onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0,,,10x8,{ms}"
      for ms in (30.0, 0.5)]
  assert onednn_verbose.warm_ms_per_step(steps, 2) == {"forward": 4.0, "gemm_api": 0.5,
                                                       "all": 4.5}
  assert onednn_verbose.data_types_of_verbose_log(lines + [
      "onednn_verbose,exec,cpu,convolution,brgconv:avx512_core_amx,backward_data,diff_src_bf16"
      "::blocked:acdb::f0 wei_bf16:a:blocked:AcdB16a2b::f0,,alg:convolution_direct,mb1,1.0",
  ]) == {"forward": ["f32"], "input_grad": ["bf16"], "kernel_grad": ["f32"]}


def test_kernel_gradient_does_not_use_xla_backward_filter_convolution():
  """The point of xla_conv: the only convolutions of the gradient are the forward pass
  and the input gradient; the kernel gradient is made of matrix products."""
  x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
  loss = lambda w_: jnp.sum(xla_conv.conv2d(x, w_, (1, 1), ((1, 1), (1, 1))) ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(w))
  assert jaxpr.count("conv_general_dilated") == 2   # forward + input gradient
  assert jaxpr.count("dot_general") == 9            # one per kernel tap


def test_grouped_and_dilated_convolutions_fall_back_to_lax():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  depthwise = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 4))
  for kwargs in (dict(feature_group_count=4), dict(rhs_dilation=(2, 2))):
    w = depthwise if "feature_group_count" in kwargs else depthwise.reshape(3, 3, 4, 1)
    args = (x, w, (1, 1), "SAME")
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w_: jnp.sum(
        conv.conv_general_dilated(x, w_, (1, 1), "SAME", dimension_numbers=_NHWC, **kwargs))))(w))
    assert "custom_vjp" not in jaxpr
    np.testing.assert_allclose(
        conv.conv_general_dilated(*args, dimension_numbers=_NHWC, **kwargs),
        lax.conv_general_dilated(*args, dimension_numbers=_NHWC, **kwargs), rtol=1e-6)


def test_flax_conv_module_takes_the_fast_path_with_the_same_parameters():
  fast, plain = conv.Conv(5, (3, 3)), nn.Conv(5, (3, 3))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  variables = plain.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, fast.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
      jnp.shape, variables)
  grad = lambda module: jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2)))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grad(fast), grad(plain))
  assert "custom_vjp" in str(jax.make_jaxpr(lambda v: fast.apply(v, x))(variables))


def test_resnet_gradients_equal_those_with_lax_convolutions(conv_backend):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  variables = models.build("resnet8", 10).init(jax.random.PRNGKey(1), x)

  def grads(backend):
    model = models.build("resnet8", 10, conv_backend=backend)
    loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x) ** 2)
    return jax.jit(jax.grad(loss))(variables["params"])

  fast = grads(conv_backend)
  plain = grads("lax")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), fast, plain)


@pytest.mark.parametrize("name", ["mobilenet_v2_0.35", "mobilenet_v1_0.25"])
def test_depthwise_model_gradients_equal_those_with_lax_convolutions(name):
  """A MobileNet's depthwise convolutions run oneDNN's kernels and its gradients equal
  lax's."""
  _require_onednn()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = models.build(name, 10, conv_backend="lax").init(jax.random.PRNGKey(1), x)

  def grads(backend):
    model = models.build(name, 10, conv_backend=backend)
    loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x) ** 2)
    return jax.jit(jax.grad(loss)).lower(variables["params"])

  fast, plain = grads("onednn"), grads("lax")
  assert "convolution" in plain.as_text() and "convolution" not in fast.as_text()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               fast.compile()(variables["params"]), plain.compile()(variables["params"]))
