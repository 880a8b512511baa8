// Host (NumPy) arrays on the CPU kernels: forward and backward, computed on
// several threads without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/masked_loss.h"
#include "../kernels/masked_loss_cpu.h"
#include "binding_common.h"
#include "entry_points.h"
#include "thread_pool.h"

namespace masked_ops {
namespace binding {
namespace {

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
  const bool labels = std::string(name) == "y_true" && dt.kind() == 'i';
  if (dt.kind() == 'f' || dt.kind() == 'b' || dname == "bfloat16" || labels) {
    d = parse_dtype_name(dname);
  }
  if (!d || size_t(dt.itemsize()) != itemsize(*d)) {
    throw py::type_error(std::string(name) + " must be " +
                         (std::string(name).rfind("mask", 0) == 0 ? "bool or y_pred's dtype"
                          : std::string(name) == "y_true"
                              ? "y_pred's dtype, or bool, int32 or int64 labels"
                              : "float16, bfloat16, float32 or float64") +
                         ", got " + dname);
  }
  if (!dt.attr("isnative").cast<bool>()) {
    throw py::type_error(std::string(name) + " must be in native byte order");
  }
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  return HostArray{a, *d, shape, name};
}

struct HostInputs {
  HostArray y_true, y_pred;
  std::optional<HostArray> mask;
  std::vector<HostArray> extras;    // the other masks of a list
  std::optional<LabelKind> labels;  // y_true of a label dtype
  double padding_value;
  Reduction reduction;
  // No mask runs the bool-mask kernels (kernel_inputs passes a 0-d True).
  DType mask_dtype() const { return mask ? mask->dtype : DType::kBool; }
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
  HostInputs in{
      host_array(y_true, "y_true"), host_array(y_pred, "y_pred"), std::nullopt, {}, std::nullopt,
      parse_padding(padding_value), parse_reduction(reduction)};
  if (in.y_pred.dtype == DType::kBool) {
    throw py::type_error("y_pred must be float16, bfloat16, float32 or float64, got bool");
  }
  in.labels = check_y_true_dtype(in.y_true.dtype, in.y_pred.dtype);
  const auto masks = mask_list(mask);
  if (masks) {
    for (size_t k = 0; k < masks->size(); ++k) {
      const std::string name = "mask[" + std::to_string(k) + "]";
      HostArray m = host_array((*masks)[k], name.c_str());
      check_mask_dtype(m.dtype, in.y_pred.dtype);
      check_shapes(in.y_true.shape, in.y_pred.shape, &m.shape, name);
      if (k == 0) {
        in.mask = m;
      } else {
        in.extras.push_back(m);
      }
    }
  } else if (!mask.is_none()) {
    in.mask = host_array(mask, "mask");
    check_mask_dtype(in.mask->dtype, in.y_pred.dtype);
  }
  check_shapes(in.y_true.shape, in.y_pred.shape, in.mask ? &in.mask->shape : nullptr,
               masks ? "mask[0]" : "mask");
  in.y_true.check_contiguous();
  in.y_pred.check_contiguous();
  if (in.mask) in.mask->check_contiguous();
  for (const HostArray& m : in.extras) m.check_contiguous();
  return in;
}

template <typename T, typename M>
MaskedInputs<T, M> kernel_inputs(const HostInputs& h) {
  // No mask is a 0-d True: a rank-0 prefix that covers every element.
  static const bool kAll = true;
  MaskedInputs<T, M> in;
  if (h.labels) {
    in.labels = {h.y_true.data(), *h.labels};
  } else {
    in.y_true = static_cast<const T*>(h.y_true.data());
  }
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
  in.extra.size = int(h.extras.size());
  for (size_t k = 0; k < h.extras.size(); ++k) {
    in.extra.mask[k].data = h.extras[k].data();
    in.extra.mask[k].mask_n = num_elements(h.extras[k].shape);
    in.extra.mask[k].kind = mask_kind(h.extras[k].dtype, h.y_pred.dtype);
  }
  return in;
}

template <typename Acc>
py::object acc_scalar(Acc v) {
  return py::module_::import("numpy").attr(std::is_same<Acc, double>::value ? "float64"
                                                                            : "float32")(v);
}

}  // namespace

py::tuple forward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                  const py::object& padding_value, const std::string& reduction,
                  const std::string& loss_name, const std::vector<double>& params) {
  const HostInputs h = host_inputs(y_true, y_pred, mask, padding_value, reduction);
  py::tuple result;
  with_kernel(loss_name, params, h.y_pred.dtype, h.mask_dtype(), [&](auto loss_fn, auto t, auto m) {
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
    result =
        py::make_tuple(acc_scalar(loss), acc_scalar(sum), acc_scalar(weight_sum), py::int_(count));
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
  if (want_y_true && h.labels) {
    throw py::value_error(std::string("want_y_true=True needs floating-point y_true; ") +
                          dtype_name(h.y_true.dtype) + " labels have no gradient");
  }
  if (want_mask && !h.extras.empty()) {
    throw py::value_error(
        "want_mask=True with several masks: the kernels compute no mask gradient for a list of "
        "masks (differentiate the combined weight instead)");
  }
  if (want_mask && h.mask->dtype == DType::kBool) {
    throw py::value_error(
        "want_mask=True needs a floating-point mask; a boolean mask has no gradient");
  }
  py::object grads[3] = {py::none(), py::none(), py::none()};
  with_kernel(loss_name, params, h.y_pred.dtype, h.mask_dtype(), [&](auto loss_fn, auto t, auto m) {
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
  return py::make_tuple(grads[0], grads[1], grads[2]);
}

py::tuple forward_backward(const py::object& y_true, const py::object& y_pred,
                           const py::object& mask, const std::string& reduction, bool want_y_true,
                           bool want_y_pred, const std::string& loss_name,
                           const std::vector<double>& params) {
  const HostInputs h = host_inputs(y_true, y_pred, mask, py::none(), reduction);
  if (h.mask_dtype() != DType::kBool || !h.extras.empty()) {
    throw py::value_error(
        "forward_backward takes one boolean mask (or none); use forward and backward otherwise");
  }
  if (want_y_true && h.labels) {
    throw py::value_error(std::string("want_y_true=True needs floating-point y_true; ") +
                          dtype_name(h.y_true.dtype) + " labels have no gradient");
  }
  py::object grads[2] = {py::none(), py::none()};
  py::tuple result;
  with_kernel(loss_name, params, h.y_pred.dtype, h.mask_dtype(), [&](auto loss_fn, auto t, auto m) {
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    const auto in = kernel_inputs<T, M>(h);
    auto alloc = [&](bool wanted, py::object& slot) -> T* {
      if (!wanted) return nullptr;
      py::array a(h.y_pred.array.dtype(),
                  std::vector<py::ssize_t>(h.y_pred.shape.begin(), h.y_pred.shape.end()));
      slot = a;
      return static_cast<T*>(a.mutable_data());
    };
    T* grad_true = alloc(want_y_true, grads[0]);
    T* grad_pred = alloc(want_y_pred, grads[1]);
    std::vector<char> workspace(cpu::forward_backward_workspace_bytes(in.n, in.mask_n));
    Acc loss = 0, sum = 0, weight_sum = 0;
    int64_t count = 0;
    Status s;
    {
      py::gil_scoped_release release;
      s = cpu::forward_backward(loss_fn, in, h.reduction, workspace.data(), workspace.size(), &loss,
                                &sum, &weight_sum, &count, grad_true, grad_pred,
                                thread_parallel_for());
    }
    check_status(s, "forward_backward");
    result = py::make_tuple(acc_scalar(loss), acc_scalar(sum), acc_scalar(weight_sum),
                            py::int_(count), grads[0], grads[1]);
  });
  return result;
}

}  // namespace binding
}  // namespace masked_ops
