// pybind11 module masked_ops._kernels: the framework-free kernels without
// TensorFlow, for tests and for GPU machines that have no TensorFlow. The
// Python-facing API is documented in kModuleDoc below.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "../kernels/loss_list.h"
#include "../kernels/masked_loss.h"
#include "../kernels/masked_loss_cpu.h"

#if defined(MASKED_OPS_WITH_CUDA)
#include <cuda_runtime_api.h>

#include "../kernels/masked_loss_cuda.h"
#endif

namespace py = pybind11;

namespace masked_ops {
namespace binding {
namespace {

constexpr const char* kModuleDoc = R"doc(Masked-loss kernels without TensorFlow.

Every loss of the loss table (`losses` lists their names; `loss_name=` picks one,
`params=` gives its scalar parameters, e.g. loss_name="huber", params=[delta]).
Semantics are those of the TF ops MaskedOps>...: with w the mask weight of an
element (bool masks weigh 0/1), keep = (w != 0) and (y_true != padding_value)
and value the loss's element function,
  sum = sum(keep ? w * value(y_true, y_pred) : 0), weight_sum = sum(keep ? w : 0),
  count = sum(keep), loss = sum / weight_sum (0 when weight_sum == 0) or sum.
The mask has the inputs' shape or a leading prefix of it (a 0-d mask covers
everything); None means no mask. padding_value None means no padding. Results
accumulate in float32 for 16-bit and float32 inputs, float64 for float64, and
are bitwise deterministic.

Host (NumPy arrays: float16, ml_dtypes.bfloat16, float32, float64; masks bool,
y_pred's dtype or float32 for 16-bit y_pred; C-contiguous, element-aligned),
computed on several threads without the GIL:
  forward(y_true, y_pred, mask=None, padding_value=None, reduction="mean", *,
          loss_name="squared_error", params=())
      -> (loss, sum, weight_sum, count): NumPy scalars of the accumulator dtype, int
  backward(grad_loss, grad_sum, grad_weight_sum, y_true, y_pred, mask, padding_value,
           loss, weight_sum, reduction="mean", want_y_true=False, want_y_pred=True,
           want_mask=False, *, loss_name="squared_error", params=())
      -> (grad_y_true, grad_y_pred, grad_mask), None where not wanted
  set_num_threads(n), get_num_threads()

CUDA (any object with __cuda_array_interface__, C-contiguous, aligned to its
element size, on the current device; asynchronous, nothing is synchronized):
the caller owns every buffer.
  forward_workspace_bytes(n), backward_workspace_bytes(n, mask_n, want_mask)
      (they depend on their arguments only, not on the device)
  forward_cuda(y_true, y_pred, mask, padding_value, reduction, out, count, workspace)
      out: accumulator-dtype array of 3 elements <- (loss, sum, weight_sum);
      count: int64 array of 1 element; workspace: at least
      forward_workspace_bytes(y_pred.size) bytes (None when that is 0).
  backward_cuda(upstream, forward_out, y_true, y_pred, mask, padding_value, reduction,
                grad_y_true=None, grad_y_pred=None, grad_mask=None, workspace=None)
      upstream: accumulator-dtype array (grad_loss, grad_sum, grad_weight_sum);
      forward_out: forward_cuda's `out`; each gradient array that is passed is
      written (input or mask shape and dtype); workspace: at least
      backward_workspace_bytes(n, mask.size, grad_mask is not None) bytes.
  Both take the keyword arguments loss_name= and params= (as forward), dtype= (the
  element type of y_true, y_pred, masks of that size and gradients: needed for
  bfloat16, which the protocol has no typestr for, so 2-byte buffers are
  reinterpreted; a '<f4' mask stays float32) and stream= (a cudaStream_t as an
  int, or a torch.cuda.Stream / cupy.cuda.Stream). Without stream=, the stream
  the arrays name is used (all that name one must agree); when none names one
  (PyTorch tensors never do) stream= is required: the launch cannot be ordered
  with the producer's stream otherwise.
  Results are bitwise identical on every GPU model, SM count and MIG slice for
  the same inputs at the same offsets from a 16-byte boundary.
  cuda_runtime_version (the CUDA runtime the kernels were built with, 0 without
  CUDA) and cuda_driver_version() (the installed driver's, 0 without one): the
  driver must support the runtime's major version, else the calls raise with
  the fix.
with_cuda tells whether the CUDA functions were compiled in.)doc";

enum class DType { kHalf, kBFloat16, kFloat, kDouble, kBool };

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kHalf:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat:
      return "float32";
    case DType::kDouble:
      return "float64";
    case DType::kBool:
      return "bool";
  }
  return "?";
}

std::optional<DType> parse_dtype_name(const std::string& name) {
  for (DType d : {DType::kHalf, DType::kBFloat16, DType::kFloat, DType::kDouble, DType::kBool}) {
    if (name == dtype_name(d)) return d;
  }
  return std::nullopt;
}

size_t itemsize(DType d) {
  switch (d) {
    case DType::kHalf:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat:
      return 4;
    case DType::kDouble:
      return 8;
    case DType::kBool:
      return 1;
  }
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

int64_t num_elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Reduction parse_reduction(const std::string& name) {
  if (name == "mean") return Reduction::kMean;
  if (name == "sum") return Reduction::kSum;
  throw py::value_error("reduction must be 'mean' or 'sum', got '" + name + "'");
}

// The shape checks every entry point shares; messages name the shapes.
void check_shapes(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                  const std::vector<int64_t>* mask) {
  if (y_true != y_pred) {
    throw py::value_error("y_true and y_pred must have the same shape, got " + shape_str(y_true) +
                          " and " + shape_str(y_pred));
  }
  if (mask == nullptr) return;
  const bool prefix =
      mask->size() <= y_pred.size() && std::equal(mask->begin(), mask->end(), y_pred.begin());
  if (!prefix) {
    throw py::value_error("mask shape " + shape_str(*mask) +
                          " must equal the inputs' shape or a leading prefix of it; inputs have "
                          "shape " +
                          shape_str(y_pred));
  }
}

void check_same_dtype(const char* name, DType got, DType want) {
  if (got != want) {
    throw py::type_error(std::string(name) + " has dtype " + dtype_name(got) + " but y_pred has " +
                         dtype_name(want) + "; they must match");
  }
}

bool is_16bit(DType t) { return t == DType::kHalf || t == DType::kBFloat16; }

// Masks are bool, y_pred's dtype, or float32 weights for 16-bit y_pred (the
// accumulator dtype): weights are never read below float32.
void check_mask_dtype(DType mask, DType t) {
  if (mask != DType::kBool && mask != t && !(is_16bit(t) && mask == DType::kFloat)) {
    throw py::type_error(std::string("mask must be bool, y_pred's dtype (") + dtype_name(t) + ")" +
                         (is_16bit(t) ? " or float32" : "") + ", got " + dtype_name(mask));
  }
}

// None means no padding: NaN compares equal to nothing. An explicit NaN is
// refused as in the TF API, since it would silently mask nothing.
double parse_padding(const py::object& padding_value) {
  if (padding_value.is_none()) return std::nan("");
  double v = 0.0;
  try {
    v = padding_value.cast<double>();
  } catch (const py::cast_error&) {
    throw py::type_error("padding_value must be a real number or None, got " +
                         std::string(py::str(py::type::handle_of(padding_value).attr("__name__"))));
  }
  if (std::isnan(v)) {
    throw py::value_error(
        "padding_value=NaN would mask nothing (NaN equals nothing); pass a mask of "
        "~isnan(y_true) instead");
  }
  return v;
}

// padding_value rounded to T as the TF op rounds it (through the accumulator
// type); a finite value that overflows T is refused, as there.
template <typename T>
double padding_in(double v, DType t) {
  if (std::isnan(v)) return v;
  const double rounded = double(to_acc(from_acc<T>(acc_t<T>(v))));
  if (std::isfinite(v) && !std::isfinite(rounded)) {
    std::ostringstream s;
    s << "padding_value=" << v << " overflows " << dtype_name(t)
      << ", the dtype of y_true: it would become inf and mask infinite targets";
    throw py::value_error(s.str());
  }
  return rounded;
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>, Tag<M>) for the kernel types of (t, mask): masks are bool,
// T, or T's accumulator type (float32 weights with 16-bit inputs).
template <class F>
void dispatch(DType t, DType mask, F&& f) {
  auto with_mask = [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (mask == DType::kBool) return f(tag, Tag<bool>{});
    if (mask == t) return f(tag, tag);
    if constexpr (!std::is_same<acc_t<T>, T>::value) {
      if (mask == DType::kFloat) return f(tag, Tag<acc_t<T>>{});
    }
    throw py::type_error(
        std::string("mask must be bool, y_pred's dtype or its accumulator dtype (") +
        dtype_name(t) + "), got " + dtype_name(mask));
  };
  switch (t) {
    case DType::kHalf:
      return with_mask(Tag<half_t>{});
    case DType::kBFloat16:
      return with_mask(Tag<bfloat16_t>{});
    case DType::kFloat:
      return with_mask(Tag<float>{});
    case DType::kDouble:
      return with_mask(Tag<double>{});
    case DType::kBool:
      break;
  }
  throw py::type_error("y_pred must be float16, bfloat16, float32 or float64, got bool");
}

template <class Loss>
Loss make_loss(const std::vector<double>& params) {
  if (params.size() != size_t(Loss::kNumParams)) {
    throw py::value_error("params must have " + std::to_string(Loss::kNumParams) +
                          " values for this loss, got " + std::to_string(params.size()));
  }
  LossParams p;
  p.size = Loss::kNumParams;
  std::copy(params.begin(), params.end(), p.value);
  if (const char* problem = Loss::invalid_params(p)) throw py::value_error(problem);
  return Loss(p);
}

// Calls f(functor) for the loss named `name` in the loss table.
template <class F>
void dispatch_loss(const std::string& name, const std::vector<double>& params, F&& f) {
#define MASKED_OPS_BINDING_LOSS(FUNCTOR, OP, NAME) \
  if (name == NAME) return f(make_loss<FUNCTOR>(params));
  MASKED_OPS_LOSS_LIST(MASKED_OPS_BINDING_LOSS)
#undef MASKED_OPS_BINDING_LOSS
  throw py::value_error("unknown loss '" + name + "'; see masked_ops._kernels.losses");
}

std::vector<std::string> loss_names() {
  std::vector<std::string> names;
#define MASKED_OPS_BINDING_LOSS_NAME(FUNCTOR, OP, NAME) names.emplace_back(NAME);
  MASKED_OPS_LOSS_LIST(MASKED_OPS_BINDING_LOSS_NAME)
#undef MASKED_OPS_BINDING_LOSS_NAME
  return names;
}

void check_status(Status s, const char* what) {
  if (s != Status::kOk) {
    throw std::runtime_error(std::string("masked_ops ") + what + " failed: " + status_message(s));
  }
}

bool is_cuda_array(const py::handle& obj) {
  return !obj.is_none() && py::hasattr(obj, "__cuda_array_interface__");
}

// ---------------------------------------------------------------------------
// Host arrays (NumPy).

struct HostArray {
  py::array array;
  DType dtype;
  std::vector<int64_t> shape;
  std::string name;
  const void* data() const { return array.data(); }
  // Checked after the shapes, whose mismatch is the more useful message.
  void check_contiguous() const {
    if (!(array.flags() & py::array::c_style)) {
      throw py::value_error(name + " must be C-contiguous; pass numpy.ascontiguousarray(" + name +
                            ")");
    }
    // Loads through a misaligned pointer are undefined behaviour.
    const auto address = reinterpret_cast<uintptr_t>(data());
    if (address % itemsize(dtype) != 0) {
      throw py::value_error(name + "'s buffer is not aligned to its " +
                            std::to_string(itemsize(dtype)) +
                            "-byte elements (e.g. numpy.frombuffer at an odd offset); pass "
                            "numpy.array(" +
                            name + ") for an aligned copy");
    }
  }
};

HostArray host_array(const py::object& obj, const char* name) {
  if (is_cuda_array(obj)) {
    throw py::type_error(std::string(name) +
                         " is a CUDA array but forward/backward run on the host: pass NumPy "
                         "arrays, or call forward_cuda/backward_cuda with device arrays only");
  }
  py::array a = py::array::ensure(obj);
  if (!a) throw py::type_error(std::string(name) + " must be a NumPy array (or array-like)");
  const py::dtype dt = a.dtype();
  const std::string dname = py::str(dt.attr("name"));
  std::optional<DType> d;
  if (dt.kind() == 'f' || dt.kind() == 'b' || dname == "bfloat16") d = parse_dtype_name(dname);
  if (!d || size_t(dt.itemsize()) != itemsize(*d)) {
    throw py::type_error(std::string(name) + " must be " +
                         (std::string(name) == "mask" ? "bool or y_pred's dtype"
                                                      : "float16, bfloat16, float32 or float64") +
                         ", got " + dname);
  }
  if (!dt.attr("isnative").cast<bool>()) {
    throw py::type_error(std::string(name) + " must be in native byte order");
  }
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  return HostArray{a, *d, shape, name};
}

// Splits tasks into contiguous ranges over std::threads; the kernels' fixed
// chunking makes the results independent of the split.
int g_num_threads = std::max(1u, std::thread::hardware_concurrency());

cpu::ParallelFor thread_parallel_for() {
  const int max_threads = g_num_threads;
  return [max_threads](int64_t tasks, int64_t elements_per_task, const cpu::TaskFn& fn) {
    if (tasks <= 0) return;
    // Starting a thread costs tens of microseconds: give each a fair amount of work.
    constexpr int64_t kMinElementsPerThread = int64_t(1) << 17;
    const int64_t by_work = std::max<int64_t>(
        1, tasks * std::max<int64_t>(elements_per_task, 1) / kMinElementsPerThread);
    const int64_t threads = std::min<int64_t>({int64_t(max_threads), tasks, by_work});
    if (threads <= 1) {
      fn(0, tasks);
      return;
    }
    auto range = [&](int64_t i, auto&& run) {
      run(tasks * i / threads, tasks * (i + 1) / threads);
    };
    std::vector<std::thread> pool;
    pool.reserve(size_t(threads - 1));
    int64_t started = 1;
    for (; started < threads; ++started) {
      // A thread that cannot be created (no memory or address space for its
      // stack, a process thread limit) leaves its range to this thread:
      // results do not depend on the split.
      try {
        range(started, [&](int64_t first, int64_t last) { pool.emplace_back(fn, first, last); });
      } catch (const std::system_error&) {
        break;
      }
    }
    range(0, fn);
    for (int64_t i = started; i < threads; ++i) range(i, fn);
    for (auto& t : pool) t.join();
  };
}

struct HostInputs {
  HostArray y_true, y_pred;
  std::optional<HostArray> mask;
  double padding_value;
  Reduction reduction;
};

HostInputs host_inputs(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                       const py::object& padding_value, const std::string& reduction) {
  // Device mismatches are reported before any conversion.
  const py::object* objs[] = {&y_true, &y_pred, &mask};
  const char* names[] = {"y_true", "y_pred", "mask"};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      if (is_cuda_array(*objs[i]) && !objs[j]->is_none() && !is_cuda_array(*objs[j])) {
        throw py::type_error(std::string("device mismatch: ") + names[i] + " is a CUDA array but " +
                             names[j] + " is a host array");
      }
    }
  }
  HostInputs in{host_array(y_true, "y_true"), host_array(y_pred, "y_pred"), std::nullopt,
                parse_padding(padding_value), parse_reduction(reduction)};
  if (in.y_pred.dtype == DType::kBool) {
    throw py::type_error("y_pred must be float16, bfloat16, float32 or float64, got bool");
  }
  check_same_dtype("y_true", in.y_true.dtype, in.y_pred.dtype);
  if (!mask.is_none()) {
    in.mask = host_array(mask, "mask");
    check_mask_dtype(in.mask->dtype, in.y_pred.dtype);
  }
  check_shapes(in.y_true.shape, in.y_pred.shape, in.mask ? &in.mask->shape : nullptr);
  in.y_true.check_contiguous();
  in.y_pred.check_contiguous();
  if (in.mask) in.mask->check_contiguous();
  return in;
}

template <typename T, typename M>
MaskedInputs<T, M> kernel_inputs(const HostInputs& h) {
  // No mask is a 0-d True: a rank-0 prefix that covers every element.
  static const bool kAll = true;
  MaskedInputs<T, M> in;
  in.y_true = static_cast<const T*>(h.y_true.data());
  in.y_pred = static_cast<const T*>(h.y_pred.data());
  in.n = num_elements(h.y_pred.shape);
  if (h.mask) {
    in.mask = static_cast<const M*>(h.mask->data());
    in.mask_n = num_elements(h.mask->shape);
  } else {
    in.mask = reinterpret_cast<const M*>(&kAll);
    in.mask_n = 1;
  }
  in.padding_value = padding_in<T>(h.padding_value, h.y_pred.dtype);
  return in;
}

template <typename Acc>
py::object acc_scalar(Acc v) {
  return py::module_::import("numpy").attr(std::is_same<Acc, double>::value ? "float64"
                                                                            : "float32")(v);
}

py::tuple forward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                  const py::object& padding_value, const std::string& reduction,
                  const std::string& loss_name, const std::vector<double>& params) {
  const HostInputs h = host_inputs(y_true, y_pred, mask, padding_value, reduction);
  py::tuple result;
  dispatch_loss(loss_name, params, [&](auto loss_fn) {
    dispatch(h.y_pred.dtype, h.mask ? h.mask->dtype : DType::kBool, [&](auto t, auto m) {
      using T = typename decltype(t)::type;
      using M = typename decltype(m)::type;
      using Acc = acc_t<T>;
      const auto in = kernel_inputs<T, M>(h);
      std::vector<cpu::Partial> workspace(size_t(cpu::num_chunks(in.n)));
      Acc loss = 0, sum = 0, weight_sum = 0;
      int64_t count = 0;
      Status s;
      {
        py::gil_scoped_release release;
        s = cpu::forward(loss_fn, in, h.reduction, workspace.data(),
                         workspace.size() * sizeof(cpu::Partial), &loss, &sum, &weight_sum, &count,
                         thread_parallel_for());
      }
      check_status(s, "forward");
      result = py::make_tuple(acc_scalar(loss), acc_scalar(sum), acc_scalar(weight_sum),
                              py::int_(count));
    });
  });
  return result;
}

py::tuple backward(double grad_loss, double grad_sum, double grad_weight_sum,
                   const py::object& y_true, const py::object& y_pred, const py::object& mask,
                   const py::object& padding_value, double loss, double weight_sum,
                   const std::string& reduction, bool want_y_true, bool want_y_pred, bool want_mask,
                   const std::string& loss_name, const std::vector<double>& params) {
  const HostInputs h = host_inputs(y_true, y_pred, mask, padding_value, reduction);
  if (want_mask && !h.mask) throw py::value_error("want_mask=True needs a mask, got None");
  if (want_mask && h.mask->dtype == DType::kBool) {
    throw py::value_error(
        "want_mask=True needs a floating-point mask; a boolean mask has no gradient");
  }
  py::object grads[3] = {py::none(), py::none(), py::none()};
  dispatch_loss(loss_name, params, [&](auto loss_fn) {
    dispatch(h.y_pred.dtype, h.mask ? h.mask->dtype : DType::kBool, [&](auto t, auto m) {
      using T = typename decltype(t)::type;
      using M = typename decltype(m)::type;
      using Acc = acc_t<T>;
      const auto in = kernel_inputs<T, M>(h);
      auto alloc = [](const HostArray& like, bool wanted, py::object& slot) -> void* {
        if (!wanted) return nullptr;
        py::array a(like.array.dtype(),
                    std::vector<py::ssize_t>(like.shape.begin(), like.shape.end()));
        slot = a;
        return a.mutable_data();
      };
      T* grad_true = static_cast<T*>(alloc(h.y_true, want_y_true, grads[0]));
      T* grad_pred = static_cast<T*>(alloc(h.y_pred, want_y_pred, grads[1]));
      M* grad_mask = want_mask ? static_cast<M*>(alloc(*h.mask, true, grads[2])) : nullptr;
      const Acc scalars[5] = {Acc(grad_loss), Acc(grad_sum), Acc(grad_weight_sum), Acc(loss),
                              Acc(weight_sum)};
      BackwardScalars<Acc> bs;
      bs.grad_loss = &scalars[0];
      bs.grad_sum = &scalars[1];
      bs.grad_weight_sum = &scalars[2];
      bs.loss = &scalars[3];
      bs.weight_sum = &scalars[4];
      Status s;
      {
        py::gil_scoped_release release;
        s = cpu::backward(loss_fn, in, h.reduction, bs, grad_true, grad_pred, grad_mask,
                          thread_parallel_for());
      }
      check_status(s, "backward");
    });
  });
  return py::make_tuple(grads[0], grads[1], grads[2]);
}

// ---------------------------------------------------------------------------
// CUDA arrays (__cuda_array_interface__). Parsing and validation need no CUDA,
// so they are compiled (and tested) everywhere; only the launch needs it.

struct DeviceArray {
  std::string name;
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  std::string typestr;
  std::optional<intptr_t> stream;
  // Layout errors, raised after the shape and dtype checks.
  std::string not_contiguous;
  std::string misaligned;
  int64_t size() const { return num_elements(shape); }
  void check_layout() const {
    if (!not_contiguous.empty()) throw py::value_error(not_contiguous);
    if (!misaligned.empty()) throw py::value_error(misaligned);
  }
};

size_t typestr_itemsize(const std::string& typestr) {
  if (typestr.size() < 3) return 0;
  try {
    return size_t(std::stoul(typestr.substr(2)));
  } catch (const std::exception&) {
    return 0;
  }
}

DeviceArray device_array(const py::object& obj, const char* name) {
  if (!is_cuda_array(obj)) {
    throw py::type_error(std::string(name) +
                         " must be a CUDA array (an object with __cuda_array_interface__, e.g. "
                         "a CuPy array or a PyTorch CUDA tensor); got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))) +
                         ". Host arrays go to forward/backward");
  }
  const py::object cai_obj = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(cai_obj)) {
    throw py::type_error(std::string(name) + ".__cuda_array_interface__ is not a dict");
  }
  const py::dict cai = cai_obj;
  auto field = [&](const char* key) -> py::object {
    if (!cai.contains(key)) {
      throw py::value_error(std::string(name) + ".__cuda_array_interface__ has no '" + key +
                            "' entry");
    }
    return cai[key];
  };
  const int version = field("version").cast<int>();
  if (version < 0 || version > 3) {
    throw py::value_error(std::string(name) + ".__cuda_array_interface__ has version " +
                          std::to_string(version) + "; versions 0 to 3 are supported");
  }
  DeviceArray a;
  a.name = name;
  for (const auto& d : field("shape").cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
  a.typestr = field("typestr").cast<std::string>();
  const auto data = field("data").cast<py::tuple>();
  if (data.size() != 2) {
    throw py::value_error(std::string(name) +
                          ".__cuda_array_interface__['data'] must be a "
                          "(pointer, read_only) pair");
  }
  a.ptr = data[0].cast<uintptr_t>();
  if (a.ptr == 0 && a.size() != 0) {
    throw py::value_error(std::string(name) + " has a null data pointer but " +
                          std::to_string(a.size()) + " elements");
  }
  // A misaligned load faults on the device and takes the CUDA context (and
  // every later call in the process) down with it.
  const size_t item = typestr_itemsize(a.typestr);
  if (item > 1 && a.ptr % item != 0) {
    a.misaligned = std::string(name) + "'s device buffer is not aligned to its " +
                   std::to_string(item) + "-byte element size (address % " + std::to_string(item) +
                   " = " + std::to_string(a.ptr % item) + "); pass an aligned copy";
  }
  if (cai.contains("mask") && !cai["mask"].is_none()) {
    throw py::value_error(std::string(name) +
                          " is a masked array (its __cuda_array_interface__ has a 'mask'); pass "
                          "the mask as the mask argument instead");
  }
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const auto strides = cai["strides"].cast<py::tuple>();
    if (strides.size() != a.shape.size()) {
      throw py::value_error(std::string(name) + " has " + std::to_string(strides.size()) +
                            " strides for " + std::to_string(a.shape.size()) + " dimensions");
    }
    // C-contiguous: each stride is the byte size of the trailing dimensions;
    // extents of 1 (and empty arrays) make any stride fine.
    int64_t expected = int64_t(item);
    bool contiguous = true;
    for (size_t i = a.shape.size(); i-- > 0;) {
      const int64_t s = strides[i].cast<int64_t>();
      if (a.shape[i] != 1 && s != expected) contiguous = false;
      expected *= a.shape[i];
    }
    if (!contiguous && a.size() != 0) {
      std::vector<int64_t> st;
      for (const auto& s : strides) st.push_back(s.cast<int64_t>());
      a.not_contiguous = std::string(name) + " must be C-contiguous, got strides " + shape_str(st) +
                         " (bytes) for shape " + shape_str(a.shape) + "; pass a contiguous copy";
    }
  }
  if (version >= 3 && cai.contains("stream") && !cai["stream"].is_none()) {
    const intptr_t stream = cai["stream"].cast<intptr_t>();
    if (stream == 0) {
      throw py::value_error(std::string(name) +
                            ".__cuda_array_interface__['stream'] is 0, which the protocol "
                            "disallows (1 is the legacy default stream)");
    }
    a.stream = stream;
  }
  return a;
}

// Element type of a device array from its typestr. With `as` (the dtype=
// argument), 2-, 4- or 8-byte buffers are reinterpreted as that type: the
// protocol has no typestr for bfloat16. Masks (is_mask) of another size keep
// their float typestr: float32 weights for 16-bit inputs.
DType device_dtype(const DeviceArray& a, std::optional<DType> as, bool is_mask = false) {
  const std::string& ts = a.typestr;
  const bool well_formed = ts.size() >= 3 && (ts[0] == '<' || ts[0] == '|' || ts[0] == '=');
  if (!well_formed) {
    throw py::type_error(a.name + " has typestr '" + ts +
                         "'; only little-endian float16/float32/float64/bool buffers are "
                         "supported");
  }
  const char kind = ts[1];
  const std::string size = ts.substr(2);
  if (kind == 'b' && size == "1") return DType::kBool;
  if (as && *as != DType::kBool && std::to_string(itemsize(*as)) == size &&
      (kind == 'f' || kind == 'i' || kind == 'u' || kind == 'V')) {
    return *as;
  }
  if ((!as || is_mask) && kind == 'f') {
    if (size == "2") return DType::kHalf;
    if (size == "4") return DType::kFloat;
    if (size == "8") return DType::kDouble;
  }
  throw py::type_error(a.name + " has typestr '" + ts + "', which is not " +
                       (as ? std::string(dtype_name(*as)) + " (dtype=)"
                           : std::string("float16 ('<f2'), float32 ('<f4'), float64 ('<f8') "
                                         "or bool ('|b1')")) +
                       (as ? "" : "; for bfloat16 pass dtype='bfloat16'"));
}

// Output/scratch array checks: dtype by typestr, element count.
void check_output(const DeviceArray& a, const char* typestr, int64_t size, const char* what) {
  if (a.typestr.substr(1) != std::string(typestr).substr(1)) {
    throw py::type_error(a.name + " must have typestr '" + typestr + "' (" + what + "), got '" +
                         a.typestr + "'");
  }
  if (a.size() != size) {
    throw py::value_error(a.name + " must have " + std::to_string(size) + " elements (" + what +
                          "), got shape " + shape_str(a.shape));
  }
  a.check_layout();
}

struct DeviceInputs {
  DeviceArray y_true, y_pred;
  std::optional<DeviceArray> mask;
  DType dtype;
  DType mask_dtype;
  double padding_value;
  Reduction reduction;
  std::optional<DType> as;  // the dtype= argument
};

DeviceInputs device_inputs(const py::object& y_true, const py::object& y_pred,
                           const py::object& mask, const py::object& padding_value,
                           const std::string& reduction, const py::object& dtype) {
  std::optional<DType> as;
  if (!dtype.is_none()) {
    // A name, or a NumPy / ml_dtypes / PyTorch dtype object.
    std::string name = py::str(py::hasattr(dtype, "name") ? dtype.attr("name") : dtype);
    if (name.rfind("torch.", 0) == 0) name = name.substr(6);
    as = parse_dtype_name(name);
    if (!as || *as == DType::kBool) {
      throw py::type_error("dtype must be 'float16', 'bfloat16', 'float32' or 'float64', got '" +
                           name + "'");
    }
  }
  DeviceInputs in{device_array(y_true, "y_true"),
                  device_array(y_pred, "y_pred"),
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
  check_same_dtype("y_true", device_dtype(in.y_true, as), in.dtype);
  if (!mask.is_none()) {
    in.mask = device_array(mask, "mask");
    in.mask_dtype = device_dtype(*in.mask, as, true);
    check_mask_dtype(in.mask_dtype, in.dtype);
  }
  check_shapes(in.y_true.shape, in.y_pred.shape, in.mask ? &in.mask->shape : nullptr);
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
  in.y_true = reinterpret_cast<const T*>(d.y_true.ptr);
  in.y_pred = reinterpret_cast<const T*>(d.y_pred.ptr);
  in.mask = d.mask ? reinterpret_cast<const M*>(d.mask->ptr) : nullptr;
  in.mask_n = d.mask ? d.mask->size() : 1;
  in.n = d.y_pred.size();
  in.padding_value = padding_in<T>(d.padding_value, d.dtype);
  return in;
}

// stream=: a cudaStream_t as an int, or a stream object (PyTorch's
// torch.cuda.Stream has .cuda_stream, CuPy's cupy.cuda.Stream .ptr).
intptr_t parse_stream(const py::object& stream) {
  py::object handle = stream;
  if (py::hasattr(stream, "cuda_stream")) {
    handle = stream.attr("cuda_stream");
  } else if (py::hasattr(stream, "ptr")) {
    handle = stream.attr("ptr");
  }
  if (!py::isinstance<py::int_>(handle) || py::isinstance<py::bool_>(handle)) {
    throw py::type_error(
        "stream must be a cudaStream_t handle as an int, a torch.cuda.Stream or a "
        "cupy.cuda.Stream; got " +
        std::string(py::str(py::type::handle_of(stream).attr("__name__"))));
  }
  return handle.cast<intptr_t>();
}

// One stream for the whole call: stream= if given, else the one the arrays
// name (all that name one must agree); none when neither says.
std::optional<intptr_t> choose_stream(const py::object& stream,
                                      const std::vector<const DeviceArray*>& arrays) {
  if (!stream.is_none()) return parse_stream(stream);
  std::optional<intptr_t> chosen;
  const DeviceArray* by = nullptr;
  for (const DeviceArray* a : arrays) {
    if (!a || !a->stream) continue;
    if (chosen && *chosen != *a->stream) {
      throw py::value_error(by->name + " names stream " + std::to_string(*chosen) + " but " +
                            a->name + " names stream " + std::to_string(*a->stream) +
                            "; pass stream= to choose one");
    }
    chosen = a->stream;
    by = a;
  }
  return chosen;
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

int64_t forward_workspace_bytes(int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0");
  return int64_t(cuda::forward_workspace_bytes(n));
}

int64_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask) {
  if (n < 0 || mask_n < 0) throw py::value_error("n and mask_n must be >= 0");
  return int64_t(cuda::backward_workspace_bytes(n, mask_n, want_mask));
}

#else

[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "masked_ops._kernels was built without CUDA (with_cuda is False); rebuild it with the CUDA "
      "kernels, e.g. benchmarks/gpu_check.sh");
}

int64_t forward_workspace_bytes(int64_t) { no_cuda(); }
int64_t backward_workspace_bytes(int64_t, int64_t, bool) { no_cuda(); }

#endif

std::optional<DeviceArray> optional_array(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return device_array(obj, name);
}

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
  const std::vector<const DeviceArray*> all = {
      &d.y_true, &d.y_pred, d.mask ? &*d.mask : nullptr,
      &out,      &count,    workspace ? &*workspace : nullptr};
  const std::optional<intptr_t> named = choose_stream(stream_obj, all);
#if defined(MASKED_OPS_WITH_CUDA)
  const cudaStream_t stream = require_stream(named, "forward_cuda");
  const int64_t n = d.y_pred.size();
  check_workspace(workspace, cuda::forward_workspace_bytes(n), "forward_workspace_bytes(n)");
  Status s;
  dispatch_loss(loss_name, params, [&](auto loss_fn) {
    dispatch(d.dtype, d.mask_dtype, [&](auto t, auto m) {
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
  for (const auto* g : {&grad_true, &grad_pred}) {
    if (!*g) continue;
    check_same_dtype((*g)->name.c_str(), device_dtype(**g, d.as), d.dtype);
    if ((*g)->shape != d.y_pred.shape) {
      throw py::value_error((*g)->name + " must have the inputs' shape " +
                            shape_str(d.y_pred.shape) + ", got " + shape_str((*g)->shape));
    }
    (*g)->check_layout();
  }
  if (grad_mask) {
    if (!d.mask) throw py::value_error("grad_mask was given but mask is None");
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
  const std::vector<const DeviceArray*> all = {&d.y_true,
                                               &d.y_pred,
                                               d.mask ? &*d.mask : nullptr,
                                               &upstream,
                                               &forward_out,
                                               grad_true ? &*grad_true : nullptr,
                                               grad_pred ? &*grad_pred : nullptr,
                                               grad_mask ? &*grad_mask : nullptr,
                                               workspace ? &*workspace : nullptr};
  const std::optional<intptr_t> named = choose_stream(stream_obj, all);
#if defined(MASKED_OPS_WITH_CUDA)
  const cudaStream_t stream = require_stream(named, "backward_cuda");
  const int64_t n = d.y_pred.size();
  const int64_t mask_n = d.mask ? d.mask->size() : 1;
  check_workspace(workspace, cuda::backward_workspace_bytes(n, mask_n, grad_mask.has_value()),
                  "backward_workspace_bytes(n, mask_n, want_mask)");
  Status s;
  dispatch_loss(loss_name, params, [&](auto loss_fn) {
    dispatch(d.dtype, d.mask_dtype, [&](auto t, auto m) {
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
  });
  check_cuda_status(s, "backward_cuda");
#else
  (void)named;
  (void)loss_name;
  (void)params;
  no_cuda();
#endif
}

}  // namespace
}  // namespace binding
}  // namespace masked_ops

PYBIND11_MODULE(_kernels, m) {
  namespace b = masked_ops::binding;
  using py::arg;
  m.doc() = b::kModuleDoc;
#if defined(MASKED_OPS_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("losses") = b::loss_names();
  m.def("forward", &b::forward, arg("y_true"), arg("y_pred"), arg("mask") = py::none(),
        arg("padding_value") = py::none(), arg("reduction") = "mean", py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        "(loss, sum, weight_sum, count) of a masked loss on host arrays.");
  m.def("backward", &b::backward, arg("grad_loss"), arg("grad_sum"), arg("grad_weight_sum"),
        arg("y_true"), arg("y_pred"), arg("mask"), arg("padding_value"), arg("loss"),
        arg("weight_sum"), arg("reduction") = "mean", arg("want_y_true") = false,
        arg("want_y_pred") = true, arg("want_mask") = false, py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        "(grad_y_true, grad_y_pred, grad_mask) on host arrays; None where not wanted.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("set_num_threads needs n >= 1, got " + std::to_string(n));
        b::g_num_threads = n;
      },
      arg("n"), "Most threads a host call uses (results do not depend on it).");
  m.def("get_num_threads", [] { return b::g_num_threads; });
  m.def("forward_workspace_bytes", &b::forward_workspace_bytes, arg("n"),
        "Workspace bytes forward_cuda needs for n elements (on any device).");
  m.def("backward_workspace_bytes", &b::backward_workspace_bytes, arg("n"), arg("mask_n"),
        arg("want_mask"), "Workspace bytes backward_cuda needs.");
  m.def("forward_cuda", &b::forward_cuda, arg("y_true"), arg("y_pred"), arg("mask"),
        arg("padding_value"), arg("reduction"), arg("out"), arg("count"),
        arg("workspace") = py::none(), py::kw_only(), arg("loss_name") = "squared_error",
        arg("params") = std::vector<double>(), arg("dtype") = py::none(),
        arg("stream") = py::none(), "Asynchronous forward on device arrays; see the module doc.");
  m.def("backward_cuda", &b::backward_cuda, arg("upstream"), arg("forward_out"), arg("y_true"),
        arg("y_pred"), arg("mask"), arg("padding_value"), arg("reduction"),
        arg("grad_y_true") = py::none(), arg("grad_y_pred") = py::none(),
        arg("grad_mask") = py::none(), arg("workspace") = py::none(), py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        arg("dtype") = py::none(), arg("stream") = py::none(),
        "Asynchronous backward on device arrays; see the module doc.");
#if defined(MASKED_OPS_WITH_CUDA)
  m.attr("cuda_runtime_version") = masked_ops::cuda::runtime_version();
  m.def("cuda_driver_version", &masked_ops::cuda::driver_version,
        "cuDriverGetVersion of the installed driver (0 without one).");
#else
  m.attr("cuda_runtime_version") = 0;
  m.def("cuda_driver_version", [] { return 0; }, "0: built without CUDA.");
#endif
}
