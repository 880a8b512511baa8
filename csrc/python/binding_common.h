// What the host (host_arrays.cpp) and CUDA (cuda_arrays.cpp) entry points of
// masked_ops._kernels share: dtypes, shape and argument checks, padding, and
// the one dispatch from (loss name, dtypes) to a kernel instantiation.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/loss_list.h"
#include "../kernels/masked_loss.h"

namespace masked_ops {
namespace binding {

namespace py = pybind11;

// kInt32/kInt64 only for y_true labels.
enum class DType { kHalf, kBFloat16, kFloat, kDouble, kBool, kInt32, kInt64 };

const char* dtype_name(DType d);
std::optional<DType> parse_dtype_name(const std::string& name);
size_t itemsize(DType d);

std::string shape_str(const std::vector<int64_t>& shape);
int64_t num_elements(const std::vector<int64_t>& shape);

Reduction parse_reduction(const std::string& name);

// The shape checks every entry point shares; messages name the shapes (and
// the mask, "mask" or "mask[k]" in a list).
void check_shapes(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                  const std::vector<int64_t>* mask, const std::string& mask_name = "mask");

// Several masks: a list or tuple holding at least one array (host or CUDA),
// as masked_ops._inputs.is_mask_list decides; a nested list of numbers is
// one mask. Returns the items (at most 1 + ExtraMasks::kMax, none None), or
// nothing for a single mask.
std::optional<std::vector<py::object>> mask_list(const py::object& mask);

// How the kernels read an extra mask of dtype `mask` with inputs of dtype t
// (after check_mask_dtype).
MaskKind mask_kind(DType mask, DType t);
void check_same_dtype(const char* name, DType got, DType want);
// y_true of dtype `got` with y_pred of dtype t: y_pred's dtype (nothing
// returned) or bool/int32/int64 labels (their kind); otherwise a TypeError.
std::optional<LabelKind> check_y_true_dtype(DType got, DType t);
// Masks are bool, y_pred's dtype, or float32 weights for 16-bit y_pred (the
// accumulator dtype): weights are never read below float32.
void check_mask_dtype(DType mask, DType t);

// None means no padding: NaN compares equal to nothing. An explicit NaN is
// refused as in the TF API, since it would silently mask nothing.
double parse_padding(const py::object& padding_value);

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

std::vector<std::string> loss_names();
std::vector<std::string> row_loss_names();

// A NumPy array of a host entry point with its parsed dtype, shape and the
// argument name its errors use.
struct HostArray {
  py::array array;
  DType dtype;
  std::vector<int64_t> shape;
  std::string name;
  const void* data() const { return array.data(); }
  // Checked after the shapes, whose mismatch is the more useful message.
  void check_contiguous() const;
};

void check_status(Status s, const char* what);

// Whether obj exposes __cuda_array_interface__: the host and CUDA entry
// points both refuse the other's arrays with a message that says so.
bool is_cuda_array(const py::handle& obj);

template <typename T>
struct Tag {
  using type = T;
};

namespace detail {

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
void with_loss(const std::string& name, const std::vector<double>& params, F&& f) {
#define MASKED_OPS_BINDING_LOSS(FUNCTOR, OP, NAME) \
  if (name == NAME) return f(make_loss<FUNCTOR>(params));
  MASKED_OPS_LOSS_LIST(MASKED_OPS_BINDING_LOSS)
#undef MASKED_OPS_BINDING_LOSS
  throw py::value_error("unknown loss '" + name + "'; see masked_ops._kernels.losses");
}

// Calls f(Tag<T>, Tag<M>) for the kernel types of (t, mask): masks are bool,
// T, or T's accumulator type (float32 weights with 16-bit inputs).
template <class F>
void with_types(DType t, DType mask, F&& f) {
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
    case DType::kInt32:
    case DType::kInt64:
      break;
  }
  throw py::type_error(std::string("y_pred must be float16, bfloat16, float32 or float64, got ") +
                       dtype_name(t));
}

}  // namespace detail

// Calls f(loss_fn, Tag<T>, Tag<M>) with the functor of the loss named
// `loss_name` and the kernel types of (t, mask): the one place every entry
// point picks its kernel instantiation. The loss is resolved first, so an
// unknown name or bad params is reported before a dtype problem.
template <class F>
void with_kernel(const std::string& loss_name, const std::vector<double>& params, DType t,
                 DType mask, F&& f) {
  detail::with_loss(loss_name, params, [&](auto loss_fn) {
    detail::with_types(t, mask, [&](auto t_tag, auto m_tag) { f(loss_fn, t_tag, m_tag); });
  });
}

}  // namespace binding
}  // namespace masked_ops
