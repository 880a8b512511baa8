// __cuda_array_interface__ arrays on the CUDA kernels: forward_cuda,
// backward_cuda and their workspace queries. Without CUDA (no
// MASKED_OPS_WITH_CUDA) every argument is still validated, then the call raises.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernels/masked_loss.h"
#include "binding_common.h"
#include "cuda_array_interface.h"
#include "entry_points.h"

#if defined(MASKED_OPS_WITH_CUDA)
#include <cuda_runtime_api.h>

#include "../kernels/masked_loss_cuda.h"
#endif

namespace masked_ops {
namespace binding {
namespace {

struct DeviceInputs {
  DeviceArray y_true, y_pred;
  std::optional<DeviceArray> mask;
  std::vector<DeviceArray> extras;  // the other masks of a list
  std::vector<DType> extra_dtypes;
  std::optional<LabelKind> labels;  // y_true of a label dtype
  DType dtype;
  DType mask_dtype;
  double padding_value;
  Reduction reduction;
  std::optional<DType> as;  // the dtype= argument
};

bool is_float(DType d) {
  return d == DType::kHalf || d == DType::kBFloat16 || d == DType::kFloat || d == DType::kDouble;
}

// The dtype= argument: None, a name, or a NumPy / ml_dtypes / PyTorch dtype
// object naming a float dtype.
std::optional<DType> parse_dtype_argument(const py::object& dtype) {
  if (dtype.is_none()) return std::nullopt;
  std::string name = py::str(py::hasattr(dtype, "name") ? dtype.attr("name") : dtype);
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  const std::optional<DType> as = parse_dtype_name(name);
  if (!as || !is_float(*as)) {
    throw py::type_error("dtype must be 'float16', 'bfloat16', 'float32' or 'float64', got '" +
                         name + "'");
  }
  return as;
}

DeviceInputs device_inputs(const py::object& y_true, const py::object& y_pred,
                           const py::object& mask, const py::object& padding_value,
                           const std::string& reduction, const py::object& dtype) {
  const std::optional<DType> as = parse_dtype_argument(dtype);
  DeviceInputs in{device_array(y_true, "y_true"),
                  device_array(y_pred, "y_pred"),
                  std::nullopt,
                  {},
                  {},
                  std::nullopt,
                  DType::kBool,
                  DType::kBool,
                  parse_padding(padding_value),
                  parse_reduction(reduction),
                  as};
  in.dtype = device_dtype(in.y_pred, as);
  if (in.dtype == DType::kBool) {
    throw py::type_error("y_pred must be float16, bfloat16, float32 or float64, got bool");
  }
  // bool/int32/int64 y_true are labels, whatever dtype= says (it names y_pred's).
  const std::string& ts = in.y_true.typestr;
  if (ts == "|b1" || ts == "<i4" || ts == "<i8") {
    in.labels = ts == "|b1"   ? LabelKind::kBool
                : ts == "<i4" ? LabelKind::kInt32
                              : LabelKind::kInt64;
  } else {
    check_same_dtype("y_true", device_dtype(in.y_true, as), in.dtype);
  }
  const auto masks = mask_list(mask);
  if (masks) {
    for (size_t k = 0; k < masks->size(); ++k) {
      const std::string name = "mask[" + std::to_string(k) + "]";
      DeviceArray m = device_array((*masks)[k], name.c_str());
      const DType m_dtype = device_dtype(m, as, true);
      check_mask_dtype(m_dtype, in.dtype);
      check_shapes(in.y_true.shape, in.y_pred.shape, &m.shape, name);
      m.check_layout();
      if (k == 0) {
        in.mask = m;
        in.mask_dtype = m_dtype;
      } else {
        in.extras.push_back(m);
        in.extra_dtypes.push_back(m_dtype);
      }
    }
  } else if (!mask.is_none()) {
    in.mask = device_array(mask, "mask");
    in.mask_dtype = device_dtype(*in.mask, as, true);
    check_mask_dtype(in.mask_dtype, in.dtype);
  }
  check_shapes(in.y_true.shape, in.y_pred.shape, in.mask ? &in.mask->shape : nullptr,
               masks ? "mask[0]" : "mask");
  in.y_true.check_layout();
  in.y_pred.check_layout();
  if (in.mask) in.mask->check_layout();
  return in;
}

// Kernel arguments from validated device arrays. No mask: a null mask with one
// entry weighs every element 1.
template <typename T, typename M>
MaskedInputs<T, M> kernel_inputs(const DeviceInputs& d) {
  MaskedInputs<T, M> in;
  if (d.labels) {
    in.labels = {reinterpret_cast<const void*>(d.y_true.ptr), *d.labels};
  } else {
    in.y_true = reinterpret_cast<const T*>(d.y_true.ptr);
  }
  in.y_pred = reinterpret_cast<const T*>(d.y_pred.ptr);
  in.mask = d.mask ? reinterpret_cast<const M*>(d.mask->ptr) : nullptr;
  in.mask_n = d.mask ? d.mask->size() : 1;
  in.n = d.y_pred.size();
  in.padding_value = padding_in<T>(d.padding_value, d.dtype);
  in.extra.size = int(d.extras.size());
  for (size_t k = 0; k < d.extras.size(); ++k) {
    in.extra.mask[k].data = reinterpret_cast<const void*>(d.extras[k].ptr);
    in.extra.mask[k].mask_n = d.extras[k].size();
    in.extra.mask[k].kind = mask_kind(d.extra_dtypes[k], d.dtype);
  }
  return in;
}

// grad_y_true / grad_y_pred outputs (either may be absent): y_pred's dtype and
// shape, and none for labels.
void check_input_gradients(const DeviceInputs& d, const std::optional<DeviceArray>& grad_true,
                           const std::optional<DeviceArray>& grad_pred) {
  if (grad_true && d.labels) {
    throw py::value_error("grad_y_true was given but y_true holds labels, which have no gradient");
  }
  for (const auto* g : {&grad_true, &grad_pred}) {
    if (!*g) continue;
    check_same_dtype((*g)->name.c_str(), device_dtype(**g, d.as), d.dtype);
    if ((*g)->shape != d.y_pred.shape) {
      throw py::value_error((*g)->name + " must have the inputs' shape " +
                            shape_str(d.y_pred.shape) + ", got " + shape_str((*g)->shape));
    }
    (*g)->check_layout();
  }
}

const char* acc_typestr(DType t) { return t == DType::kDouble ? "<f8" : "<f4"; }

#if defined(MASKED_OPS_WITH_CUDA)

// Arrays that name no stream (PyTorch's never do) give no order to launch in:
// the legacy default stream would race with work on other streams.
cudaStream_t require_stream(const std::optional<intptr_t>& stream, const char* what) {
  if (!stream) {
    throw py::value_error(
        std::string(what) +
        ": no stream to launch on: none of the arrays names one in its "
        "__cuda_array_interface__; pass stream= (e.g. "
        "stream=torch.cuda.current_stream(), or stream=1 for the legacy default stream)");
  }
  return reinterpret_cast<cudaStream_t>(*stream);
}

// The kernels' static CUDA runtime needs a driver that supports its major
// version; say so (and how to rebuild) before any CUDA call fails vaguely.
void check_driver() {
  static const std::string problem =
      cuda::driver_problem(cuda::driver_version(), cuda::runtime_version());
  if (!problem.empty()) throw std::runtime_error(problem);
}

void check_cuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(what + ": " + cudaGetErrorString(e));
  }
}

// Every array must be device (or managed) memory on the current device.
void check_on_current_device(const std::vector<const DeviceArray*>& arrays) {
  int current = 0;
  check_cuda(cudaGetDevice(&current), "cudaGetDevice");
  for (const DeviceArray* a : arrays) {
    if (!a || a->ptr == 0) continue;
    cudaPointerAttributes attr{};
    const cudaError_t e = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(a->ptr));
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw py::value_error(a->name + " does not point to CUDA memory (" + cudaGetErrorString(e) +
                            ")");
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
      throw py::value_error(a->name + " does not point to device memory");
    }
    if (attr.type == cudaMemoryTypeDevice && attr.device != current) {
      throw py::value_error(a->name + " is on CUDA device " + std::to_string(attr.device) +
                            " but the current device is " + std::to_string(current) +
                            "; make that device current first");
    }
  }
}

size_t device_bytes(const DeviceArray& a) {
  const size_t item = a.typestr.size() >= 3 ? size_t(std::stoul(a.typestr.substr(2))) : 0;
  return size_t(a.size()) * item;
}

void check_workspace(const std::optional<DeviceArray>& ws, size_t need, const char* query) {
  if (ws) ws->check_layout();
  if (ws && ws->ptr % 8 != 0) throw py::value_error("workspace must be 8-byte aligned");
  const size_t have = ws ? device_bytes(*ws) : 0;
  if (have < need) {
    throw py::value_error("workspace has " + std::to_string(have) + " bytes but " + query +
                          " needs " + std::to_string(need));
  }
}

void check_cuda_status(Status s, const char* what) {
  if (s == Status::kLaunchFailed) {
    throw std::runtime_error(std::string("masked_ops ") + what + " failed: " + status_message(s) +
                             ": " + cuda::last_error_message());
  }
  check_status(s, what);
}

#else

[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "masked_ops._kernels was built without CUDA (with_cuda is False); rebuild it with the CUDA "
      "kernels, e.g. benchmarks/gpu_check.sh");
}

#endif

}  // namespace

#if defined(MASKED_OPS_WITH_CUDA)

int64_t forward_workspace_bytes(int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0");
  return int64_t(cuda::forward_workspace_bytes(n));
}

int64_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask) {
  if (n < 0 || mask_n < 0) throw py::value_error("n and mask_n must be >= 0");
  return int64_t(cuda::backward_workspace_bytes(n, mask_n, want_mask));
}

int64_t forward_backward_workspace_bytes(int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0");
  return int64_t(cuda::forward_backward_workspace_bytes(n));
}

#else

int64_t forward_workspace_bytes(int64_t) { no_cuda(); }
int64_t backward_workspace_bytes(int64_t, int64_t, bool) { no_cuda(); }
int64_t forward_backward_workspace_bytes(int64_t) { no_cuda(); }

#endif

void forward_cuda(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                  const py::object& padding_value, const std::string& reduction,
                  const py::object& out_obj, const py::object& count_obj,
                  const py::object& workspace_obj, const std::string& loss_name,
                  const std::vector<double>& params, const py::object& dtype,
                  const py::object& stream_obj) {
  const DeviceInputs d = device_inputs(y_true, y_pred, mask, padding_value, reduction, dtype);
  const DeviceArray out = device_array(out_obj, "out");
  const DeviceArray count = device_array(count_obj, "count");
  check_output(out, acc_typestr(d.dtype), 3, "loss, sum, weight_sum in the accumulator dtype");
  check_output(count, "<i8", 1, "count");
  const auto workspace = optional_array(workspace_obj, "workspace");
  std::vector<const DeviceArray*> all = {&d.y_true, &d.y_pred, d.mask ? &*d.mask : nullptr,
                                         &out,      &count,    workspace ? &*workspace : nullptr};
  for (const DeviceArray& m : d.extras) all.push_back(&m);
  const std::optional<intptr_t> named = choose_stream(stream_obj, all);
#if defined(MASKED_OPS_WITH_CUDA)
  const cudaStream_t stream = require_stream(named, "forward_cuda");
  const int64_t n = d.y_pred.size();
  check_workspace(workspace, cuda::forward_workspace_bytes(n), "forward_workspace_bytes(n)");
  Status s;
  with_kernel(loss_name, params, d.dtype, d.mask_dtype, [&](auto loss_fn, auto t, auto m) {
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    const auto in = kernel_inputs<T, M>(d);
    Acc* o = reinterpret_cast<Acc*>(out.ptr);
    check_driver();
    check_on_current_device(all);
    py::gil_scoped_release release;
    s = cuda::forward(loss_fn, in, d.reduction,
                      reinterpret_cast<void*>(workspace ? workspace->ptr : 0),
                      workspace ? device_bytes(*workspace) : 0, o, o + 1, o + 2,
                      reinterpret_cast<int64_t*>(count.ptr), stream);
  });
  check_cuda_status(s, "forward_cuda");
#else
  (void)named;
  (void)loss_name;
  (void)params;
  no_cuda();
#endif
}

void backward_cuda(const py::object& upstream_obj, const py::object& forward_out_obj,
                   const py::object& y_true, const py::object& y_pred, const py::object& mask,
                   const py::object& padding_value, const std::string& reduction,
                   const py::object& grad_true_obj, const py::object& grad_pred_obj,
                   const py::object& grad_mask_obj, const py::object& workspace_obj,
                   const std::string& loss_name, const std::vector<double>& params,
                   const py::object& dtype, const py::object& stream_obj) {
  const DeviceInputs d = device_inputs(y_true, y_pred, mask, padding_value, reduction, dtype);
  const DeviceArray upstream = device_array(upstream_obj, "upstream");
  const DeviceArray forward_out = device_array(forward_out_obj, "forward_out");
  check_output(upstream, acc_typestr(d.dtype), 3,
               "grad_loss, grad_sum, grad_weight_sum in the accumulator dtype");
  check_output(forward_out, acc_typestr(d.dtype), 3, "forward_cuda's out");
  const auto grad_true = optional_array(grad_true_obj, "grad_y_true");
  const auto grad_pred = optional_array(grad_pred_obj, "grad_y_pred");
  const auto grad_mask = optional_array(grad_mask_obj, "grad_mask");
  check_input_gradients(d, grad_true, grad_pred);
  if (grad_mask) {
    if (!d.mask) throw py::value_error("grad_mask was given but mask is None");
    if (!d.extras.empty()) {
      throw py::value_error(
          "grad_mask with several masks: the kernels compute no mask gradient for a list of "
          "masks (differentiate the combined weight instead)");
    }
    if (d.mask_dtype == DType::kBool) {
      throw py::value_error(
          "grad_mask needs a floating-point mask; a boolean mask has no gradient");
    }
    const DType grad_mask_dtype = device_dtype(*grad_mask, d.as, true);
    if (grad_mask_dtype != d.mask_dtype) {
      throw py::type_error(std::string("grad_mask has dtype ") + dtype_name(grad_mask_dtype) +
                           " but mask has " + dtype_name(d.mask_dtype) + "; they must match");
    }
    if (grad_mask->shape != d.mask->shape) {
      throw py::value_error("grad_mask must have the mask's shape " + shape_str(d.mask->shape) +
                            ", got " + shape_str(grad_mask->shape));
    }
    grad_mask->check_layout();
  }
  const auto workspace = optional_array(workspace_obj, "workspace");
  std::vector<const DeviceArray*> all = {&d.y_true,
                                         &d.y_pred,
                                         d.mask ? &*d.mask : nullptr,
                                         &upstream,
                                         &forward_out,
                                         grad_true ? &*grad_true : nullptr,
                                         grad_pred ? &*grad_pred : nullptr,
                                         grad_mask ? &*grad_mask : nullptr,
                                         workspace ? &*workspace : nullptr};
  for (const DeviceArray& m : d.extras) all.push_back(&m);
  const std::optional<intptr_t> named = choose_stream(stream_obj, all);
#if defined(MASKED_OPS_WITH_CUDA)
  const cudaStream_t stream = require_stream(named, "backward_cuda");
  const int64_t n = d.y_pred.size();
  const int64_t mask_n = d.mask ? d.mask->size() : 1;
  check_workspace(workspace, cuda::backward_workspace_bytes(n, mask_n, grad_mask.has_value()),
                  "backward_workspace_bytes(n, mask_n, want_mask)");
  Status s;
  with_kernel(loss_name, params, d.dtype, d.mask_dtype, [&](auto loss_fn, auto t, auto m) {
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    const auto in = kernel_inputs<T, M>(d);
    const Acc* up = reinterpret_cast<const Acc*>(upstream.ptr);
    const Acc* fw = reinterpret_cast<const Acc*>(forward_out.ptr);
    BackwardScalars<Acc> bs;
    bs.grad_loss = up;
    bs.grad_sum = up + 1;
    bs.grad_weight_sum = up + 2;
    bs.loss = fw;
    bs.weight_sum = fw + 2;
    auto ptr = [](const std::optional<DeviceArray>& a) { return a ? a->ptr : uintptr_t(0); };
    check_driver();
    check_on_current_device(all);
    py::gil_scoped_release release;
    s = cuda::backward(loss_fn, in, d.reduction, bs, reinterpret_cast<T*>(ptr(grad_true)),
                       reinterpret_cast<T*>(ptr(grad_pred)), reinterpret_cast<M*>(ptr(grad_mask)),
                       reinterpret_cast<void*>(ptr(workspace)),
                       workspace ? device_bytes(*workspace) : 0, stream);
  });
  check_cuda_status(s, "backward_cuda");
#else
  (void)named;
  (void)loss_name;
  (void)params;
  no_cuda();
#endif
}

void forward_backward_cuda(const py::object& y_true, const py::object& y_pred,
                           const py::object& mask, const std::string& reduction,
                           const py::object& out_obj, const py::object& count_obj,
                           const py::object& grad_true_obj, const py::object& grad_pred_obj,
                           const py::object& workspace_obj, const std::string& loss_name,
                           const std::vector<double>& params, const py::object& dtype,
                           const py::object& stream_obj) {
  const DeviceInputs d = device_inputs(y_true, y_pred, mask, py::none(), reduction, dtype);
  if (d.mask_dtype != DType::kBool || !d.extras.empty()) {
    throw py::value_error(
        "forward_backward_cuda takes one boolean mask (or none); use forward_cuda and "
        "backward_cuda otherwise");
  }
  const DeviceArray out = device_array(out_obj, "out");
  const DeviceArray count = device_array(count_obj, "count");
  check_output(out, acc_typestr(d.dtype), 3, "loss, sum, weight_sum in the accumulator dtype");
  check_output(count, "<i8", 1, "count");
  const auto grad_true = optional_array(grad_true_obj, "grad_y_true");
  const auto grad_pred = optional_array(grad_pred_obj, "grad_y_pred");
  check_input_gradients(d, grad_true, grad_pred);
  const auto workspace = optional_array(workspace_obj, "workspace");
  const std::vector<const DeviceArray*> all = {&d.y_true,
                                               &d.y_pred,
                                               d.mask ? &*d.mask : nullptr,
                                               &out,
                                               &count,
                                               grad_true ? &*grad_true : nullptr,
                                               grad_pred ? &*grad_pred : nullptr,
                                               workspace ? &*workspace : nullptr};
  const std::optional<intptr_t> named = choose_stream(stream_obj, all);
#if defined(MASKED_OPS_WITH_CUDA)
  const cudaStream_t stream = require_stream(named, "forward_backward_cuda");
  check_workspace(workspace, cuda::forward_backward_workspace_bytes(d.y_pred.size()),
                  "forward_backward_workspace_bytes(n)");
  Status s = Status::kUnsupported;
  with_kernel(loss_name, params, d.dtype, d.mask_dtype, [&](auto loss_fn, auto t, auto m) {
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    // The one-pass launcher exists for boolean masks only (checked above).
    if constexpr (std::is_same<M, bool>::value) {
      const auto in = kernel_inputs<T, M>(d);
      Acc* o = reinterpret_cast<Acc*>(out.ptr);
      auto ptr = [](const std::optional<DeviceArray>& a) { return a ? a->ptr : uintptr_t(0); };
      check_driver();
      check_on_current_device(all);
      py::gil_scoped_release release;
      s = cuda::forward_backward(loss_fn, in, d.reduction, reinterpret_cast<void*>(ptr(workspace)),
                                 workspace ? device_bytes(*workspace) : 0, o, o + 1, o + 2,
                                 reinterpret_cast<int64_t*>(count.ptr),
                                 reinterpret_cast<T*>(ptr(grad_true)),
                                 reinterpret_cast<T*>(ptr(grad_pred)), stream);
    }
  });
  check_cuda_status(s, "forward_backward_cuda");
#else
  (void)named;
  (void)loss_name;
  (void)params;
  no_cuda();
#endif
}

void scale_gradient_cuda(const py::object& scale_obj, const py::object& gradient_obj,
                         const py::object& out_obj, const py::object& dtype,
                         const py::object& stream_obj) {
  const std::optional<DType> as = parse_dtype_argument(dtype);
  const DeviceArray scale = device_array(scale_obj, "scale");
  const DeviceArray gradient = device_array(gradient_obj, "gradient");
  const DeviceArray out = device_array(out_obj, "out");
  const DType t = device_dtype(gradient, as);
  if (!is_float(t)) {
    throw py::type_error("gradient must be float16, bfloat16, float32 or float64");
  }
  check_output(scale, acc_typestr(t), 1, "the upstream gradient in the accumulator dtype");
  check_same_dtype("out", device_dtype(out, as), t);
  if (out.shape != gradient.shape) {
    throw py::value_error("out must have the gradient's shape " + shape_str(gradient.shape) +
                          ", got " + shape_str(out.shape));
  }
  gradient.check_layout();
  out.check_layout();
  const std::vector<const DeviceArray*> all = {&scale, &gradient, &out};
  const std::optional<intptr_t> named = choose_stream(stream_obj, all);
#if defined(MASKED_OPS_WITH_CUDA)
  const cudaStream_t stream = require_stream(named, "scale_gradient_cuda");
  check_driver();
  check_on_current_device(all);
  Status s = Status::kOk;
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    py::gil_scoped_release release;
    s = cuda::scale_gradient(reinterpret_cast<const acc_t<T>*>(scale.ptr),
                             reinterpret_cast<const T*>(gradient.ptr),
                             reinterpret_cast<T*>(out.ptr), gradient.size(), stream);
  };
  switch (t) {
    case DType::kHalf:
      run(Tag<half_t>{});
      break;
    case DType::kBFloat16:
      run(Tag<bfloat16_t>{});
      break;
    case DType::kFloat:
      run(Tag<float>{});
      break;
    default:
      run(Tag<double>{});
      break;
  }
  check_cuda_status(s, "scale_gradient_cuda");
#else
  (void)named;
  no_cuda();
#endif
}

}  // namespace binding
}  // namespace masked_ops
