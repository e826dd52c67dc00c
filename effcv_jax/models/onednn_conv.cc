// 2-D convolution (forward, input gradient, kernel gradient), with feature groups (depthwise
// included), as XLA FFI handlers that run oneDNN's CPU kernels; loaded and registered by
// effcv_jax/models/onednn_conv.py.
//
// Layouts are JAX's: images NHWC, kernels HWIO (kh, kw, Cin / groups, Cout); the three
// operands of a call are all float32 or all bfloat16 (oneDNN's bf16 kernels need AVX-512
// BF16 or AMX; elsewhere it runs reference kernels, correct but slow).
// Activations are handed to oneDNN in place (NHWC); the kernel, small, is reordered to the
// layout oneDNN's implementation prefers on every call. Primitives are built once per shape
// and kept.
//
// Thread safety. XLA's CPU runtime runs independent custom calls of one program at the same
// time on different threads of its pool (a layer's input and kernel gradients, say), and the
// caller's threads run whole programs concurrently. So one cached primitive is executed by
// many threads, often at once, and rarely by the thread that created it. oneDNN allows that
// only with a user-managed scratchpad: in its default "library" mode, with the
// DNNL_ENABLE_CONCURRENT_EXEC=OFF that the oneDNN wheels are built with (no
// DNNL_ENABLE_CONCURRENT_EXEC in their dnnl_config.h), the scratchpad is one thread_local
// buffer per thread, sized when a primitive is *created* on that thread; a primitive executed
// on another thread takes that thread's buffer, which may be smaller than the primitive needs
// (or absent). The kernel gradient keeps its per-thread partial sums and the barrier state of
// its reduction in the scratchpad, so such an execution writes past the buffer's end: heap
// corruption, a segfault, or a barrier counter overwritten so that its spin-wait never ends
// (the training hang). Here every primitive (and reorder) is created with
// scratchpad_mode::user and each execution gets a scratchpad of the executing thread
// (`ThreadScratchpad`), large enough for that primitive: executions on different threads never
// share one, and one thread runs one execution at a time.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

enum class Pass { kForward, kInputGrad, kKernelGrad };

// The shapes, strides, padding, feature groups and element type of one convolution (in_c
// and out_c are the totals over all groups).
struct Geometry {
  int64_t batch, in_h, in_w, in_c, k_h, k_w, out_c, out_h, out_w;
  int64_t stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, groups;
  memory::data_type type;

  auto Key(Pass pass) const {
    return std::make_tuple(static_cast<int>(pass), batch, in_h, in_w, in_c, k_h, k_w, out_c,
                           out_h, out_w, stride_h, stride_w, pad_top, pad_bottom, pad_left,
                           pad_right, groups, static_cast<int>(type));
  }
  memory::desc Images(Tag tag) const {
    return memory::desc({batch, in_c, in_h, in_w}, type, tag);
  }
  memory::desc Outputs(Tag tag) const {
    return memory::desc({batch, out_c, out_h, out_w}, type, tag);
  }
  // The kernel in `tag`: oneDNN's logical (O, I, H, W), or (G, O/G, I/G, H, W) with groups.
  memory::desc Kernel(Tag tag) const {
    if (groups == 1) return memory::desc({out_c, in_c, k_h, k_w}, type, tag);
    return memory::desc({groups, out_c / groups, in_c / groups, k_h, k_w}, type, tag);
  }
  // JAX's kernel: HWIO, with groups (kh, kw, I/G, O) where output feature g * O/G + o is
  // group g's o-th, which oneDNN calls hwigo.
  memory::desc JaxKernel() const { return Kernel(groups == 1 ? Tag::hwio : Tag::hwigo); }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Primitive attributes of every primitive here: the caller passes the scratchpad.
const dnnl::primitive_attr& UserScratchpad() {
  static const dnnl::primitive_attr attr = [] {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return attr;
}

// Scratch memory owned by the calling thread, grown to the largest request seen on it and
// reused by every later execution on that thread (no allocation per call). One thread runs
// one oneDNN execution at a time, so a buffer is never used by two executions at once.
class ThreadScratchpad {
 public:
  static void* Get(size_t bytes) {
    thread_local ThreadScratchpad scratch;
    if (bytes > scratch.size_) {
      std::free(scratch.data_);
      const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
      scratch.data_ = std::aligned_alloc(kAlign, rounded);
      if (scratch.data_ == nullptr) throw std::bad_alloc();
      scratch.size_ = rounded;
    }
    return scratch.data_;
  }
  ~ThreadScratchpad() { std::free(data_); }

 private:
  static constexpr size_t kAlign = 4096;
  void* data_ = nullptr;
  size_t size_ = 0;
};

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.Images(Tag::nhwc), g.Kernel(Tag::any), g.Outputs(Tag::nhwc), {g.stride_h, g.stride_w},
      {g.pad_top, g.pad_left}, {g.pad_bottom, g.pad_right}, UserScratchpad());
}

// A built convolution primitive and the reorder between JAX's kernel layout and the kernel
// layout the primitive uses (none when they are the same), with the scratchpad each needs.
struct Plan {
  dnnl::primitive conv;
  memory::desc conv_scratchpad;
  memory::desc kernel_desc;
  bool kernel_is_jax_layout;
  dnnl::reorder kernel_reorder;
  memory::desc reorder_scratchpad;
};

dnnl::reorder::primitive_desc ReorderDesc(const memory::desc& from, const memory::desc& to) {
  return dnnl::reorder::primitive_desc(Engine(), from, Engine(), to, UserScratchpad());
}

Plan MakePlan(Pass pass, const Geometry& g) {
  Plan plan;
  const memory::desc jax_kernel = g.JaxKernel();
  if (pass == Pass::kForward) {
    auto pd = ForwardDesc(g);
    plan.conv = dnnl::convolution_forward(pd);
    plan.conv_scratchpad = pd.scratchpad_desc();
    plan.kernel_desc = pd.weights_desc();
  } else if (pass == Pass::kInputGrad) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Images(Tag::nhwc), g.Kernel(Tag::any),
        g.Outputs(Tag::nhwc), {g.stride_h, g.stride_w}, {g.pad_top, g.pad_left},
        {g.pad_bottom, g.pad_right}, ForwardDesc(g), UserScratchpad());
    plan.conv = dnnl::convolution_backward_data(pd);
    plan.conv_scratchpad = pd.scratchpad_desc();
    plan.kernel_desc = pd.weights_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Images(Tag::nhwc), g.Kernel(Tag::any),
        g.Outputs(Tag::nhwc), {g.stride_h, g.stride_w}, {g.pad_top, g.pad_left},
        {g.pad_bottom, g.pad_right}, ForwardDesc(g), UserScratchpad());
    plan.conv = dnnl::convolution_backward_weights(pd);
    plan.conv_scratchpad = pd.scratchpad_desc();
    plan.kernel_desc = pd.diff_weights_desc();
  }
  plan.kernel_is_jax_layout = plan.kernel_desc == jax_kernel;
  if (!plan.kernel_is_jax_layout) {
    auto pd = pass == Pass::kKernelGrad ? ReorderDesc(plan.kernel_desc, jax_kernel)
                                        : ReorderDesc(jax_kernel, plan.kernel_desc);
    plan.kernel_reorder = dnnl::reorder(pd);
    plan.reorder_scratchpad = pd.scratchpad_desc();
  }
  return plan;
}

const Plan& GetPlan(Pass pass, const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.Key(pass)), std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g.Key(pass)];
  if (!plan) plan = std::make_unique<Plan>(MakePlan(pass, g));
  return *plan;
}

// Runs one pass. `images` is x (forward, kernel gradient) or dx (input gradient), `kernel`
// w or dw, `outputs` y or dy: pointers into XLA's buffers.
ffi::Error Run(Pass pass, const Geometry& g, void* images, void* kernel, void* outputs) {
  try {
    const Plan& plan = GetPlan(pass, g);
    // One stream per thread, made once: with a SYCL-runtime oneDNN a stream is a SYCL queue,
    // whose creation would otherwise be paid on every call.
    thread_local dnnl::stream stream(Engine());
    memory images_mem(g.Images(Tag::nhwc), Engine(), images);
    memory outputs_mem(g.Outputs(Tag::nhwc), Engine(), outputs);
    memory jax_kernel_mem(g.JaxKernel(), Engine(), kernel);
    memory kernel_mem =
        plan.kernel_is_jax_layout ? jax_kernel_mem : memory(plan.kernel_desc, Engine());
    // The reorder and the convolution run one after the other: one buffer serves both.
    void* scratch = ThreadScratchpad::Get(
        std::max(plan.conv_scratchpad.get_size(), plan.reorder_scratchpad.get_size()));
    memory conv_scratch(plan.conv_scratchpad, Engine(), scratch);
    auto reorder_kernel = [&](memory& from, memory& to) {
      plan.kernel_reorder.execute(
          stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                   {DNNL_ARG_SCRATCHPAD, memory(plan.reorder_scratchpad, Engine(), scratch)}});
    };
    if (pass == Pass::kForward) {
      if (!plan.kernel_is_jax_layout) reorder_kernel(jax_kernel_mem, kernel_mem);
      plan.conv.execute(stream, {{DNNL_ARG_SRC, images_mem},
                                 {DNNL_ARG_WEIGHTS, kernel_mem},
                                 {DNNL_ARG_DST, outputs_mem},
                                 {DNNL_ARG_SCRATCHPAD, conv_scratch}});
    } else if (pass == Pass::kInputGrad) {
      if (!plan.kernel_is_jax_layout) reorder_kernel(jax_kernel_mem, kernel_mem);
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, images_mem},
                                 {DNNL_ARG_WEIGHTS, kernel_mem},
                                 {DNNL_ARG_DIFF_DST, outputs_mem},
                                 {DNNL_ARG_SCRATCHPAD, conv_scratch}});
    } else {
      plan.conv.execute(stream, {{DNNL_ARG_SRC, images_mem},
                                 {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                                 {DNNL_ARG_DIFF_DST, outputs_mem},
                                 {DNNL_ARG_SCRATCHPAD, conv_scratch}});
      if (!plan.kernel_is_jax_layout) reorder_kernel(kernel_mem, jax_kernel_mem);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("oneDNN convolution: out of memory for its scratchpad");
  }
  return ffi::Error::Success();
}

// The oneDNN element type of x, w and y (all the same: float32 or bfloat16), or an error.
ffi::ErrorOr<memory::data_type> ElementType(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w,
                                             const ffi::AnyBuffer& y) {
  const ffi::DataType type = x.element_type();
  if (w.element_type() != type || y.element_type() != type ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(
        "oneDNN convolution: operands must all be float32 or all bfloat16"));
  }
  return type == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
}

// One pass on XLA's buffers: `images` (x, or dx for the input gradient), `kernel` (w, or dw
// for the kernel gradient), `outputs` (y, or dy).
ffi::Error RunPass(Pass pass, ffi::AnyBuffer images, ffi::AnyBuffer kernel,
                   ffi::AnyBuffer outputs, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                   int64_t pad_bottom, int64_t pad_left, int64_t pad_right, int64_t groups) {
  const auto type = ElementType(images, kernel, outputs);
  if (type.has_error()) return type.error();
  const auto i = images.dimensions(), k = kernel.dimensions(), o = outputs.dimensions();
  const Geometry g{i[0],     i[1],     i[2],    i[3],       k[0],     k[1],
                   k[3],     o[1],     o[2],    stride_h,   stride_w, pad_top,
                   pad_bottom, pad_left, pad_right, groups,  type.value()};
  return Run(pass, g, images.untyped_data(), kernel.untyped_data(), outputs.untyped_data());
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                   int64_t pad_left, int64_t pad_right, int64_t groups) {
  return RunPass(Pass::kForward, x, w, *y, stride_h, stride_w, pad_top, pad_bottom, pad_left,
                 pad_right, groups);
}

ffi::Error InputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                     int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                     int64_t pad_left, int64_t pad_right, int64_t groups) {
  return RunPass(Pass::kInputGrad, *dx, w, dy, stride_h, stride_w, pad_top, pad_bottom,
                 pad_left, pad_right, groups);
}

ffi::Error KernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                      int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                      int64_t pad_left, int64_t pad_right, int64_t groups) {
  return RunPass(Pass::kKernelGrad, x, *dw, dy, stride_h, stride_w, pad_top, pad_bottom,
                 pad_left, pad_right, groups);
}

template <typename Binding>
auto WithConvAttrs(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right")
      .template Attr<int64_t>("groups");
}

}  // namespace

#define EFFCV_CONV_BINDING                                                              \
  WithConvAttrs(                                                                         \
      ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>())
XLA_FFI_DEFINE_HANDLER_SYMBOL(EffcvOnednnConvForward, Forward, EFFCV_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(EffcvOnednnConvInputGrad, InputGrad, EFFCV_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(EffcvOnednnConvKernelGrad, KernelGrad, EFFCV_CONV_BINDING);
