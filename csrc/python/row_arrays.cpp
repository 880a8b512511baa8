// Host (NumPy) arrays on the CPU row-loss kernels (categorical
// cross-entropy): forward, backward and the one-pass forward_backward,
// computed on several threads without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/loss_list.h"
#include "../kernels/row_loss.h"
#include "../kernels/row_loss_cpu.h"
#include "binding_common.h"
#include "entry_points.h"
#include "thread_pool.h"

namespace masked_ops {
namespace binding {
namespace {

// The keyword options of every row entry point, checked once.
struct RowOptions {
  std::string table_name;  // the loss's NAME in MASKED_OPS_ROW_LOSS_LIST
  bool sparse;
  bool from_logits;
  std::optional<int64_t> ignore_class;
  double label_smoothing;
  Reduction reduction;
};

RowOptions row_options(const std::string& loss, bool from_logits, const py::object& ignore_class,
                       double label_smoothing, const std::string& reduction) {
  RowOptions o;
  if (loss != "sparse_categorical_crossentropy" && loss != "categorical_crossentropy") {
    throw py::value_error(
        "loss must be 'sparse_categorical_crossentropy' or 'categorical_crossentropy' (with "
        "from_logits=True or False), got '" +
        loss + "'");
  }
  o.sparse = loss == "sparse_categorical_crossentropy";
  o.from_logits = from_logits;
  o.table_name = loss + (from_logits ? "_from_logits" : "");
  o.reduction = parse_reduction(reduction);
  if (!ignore_class.is_none()) {
    if (!o.sparse) {
      throw py::value_error(
          "ignore_class applies to sparse_categorical_crossentropy (integer labels); Keras's "
          "categorical_crossentropy has none");
    }
    if (py::isinstance<py::bool_>(ignore_class) ||
        !py::isinstance(ignore_class, py::module_::import("numbers").attr("Integral"))) {
      throw py::type_error(
          "ignore_class must be an integer or None, got " +
          std::string(py::str(py::type::handle_of(ignore_class).attr("__name__"))));
    }
    o.ignore_class = ignore_class.cast<int64_t>();
  }
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) {
    throw py::value_error("label_smoothing must be in [0, 1], got " +
                          std::string(py::str(py::float_(label_smoothing))));
  }
  if (o.sparse && label_smoothing != 0.0) {
    throw py::value_error(
        "label_smoothing applies to categorical_crossentropy (dense targets); Keras's "
        "sparse_categorical_crossentropy has none");
  }
  o.label_smoothing = label_smoothing;
  return o;
}

std::string dtype_of(const py::array& a) { return py::str(a.dtype().attr("name")); }

// obj as a NumPy array of one of the float dtypes (y_pred, dense y_true).
HostArray float_array(const py::object& obj, const char* name) {
  if (is_cuda_array(obj)) {
    throw py::type_error(std::string(name) +
                         " is a CUDA array; the row-loss entry points take NumPy arrays");
  }
  py::array a = py::array::ensure(obj);
  if (!a) throw py::type_error(std::string(name) + " must be a NumPy array (or array-like)");
  const std::string dname = dtype_of(a);
  const auto d = parse_dtype_name(dname);
  const bool is_float = d && (*d == DType::kHalf || *d == DType::kBFloat16 || *d == DType::kFloat ||
                              *d == DType::kDouble);
  if (!is_float || size_t(a.dtype().itemsize()) != itemsize(*d)) {
    throw py::type_error(std::string(name) +
                         " must be float16, bfloat16, float32 or float64, got " + dname);
  }
  if (!a.dtype().attr("isnative").cast<bool>()) {
    throw py::type_error(std::string(name) + " must be in native byte order");
  }
  return HostArray{a, *d, std::vector<int64_t>(a.shape(), a.shape() + a.ndim()), name};
}

struct RowInputs {
  HostArray y_true, y_pred;
  std::optional<HostArray> mask;
  std::vector<int64_t> row_shape;  // y_pred's shape without the class axis
  int64_t rows = 0;
  int64_t classes = 0;
  DType mask_dtype() const { return mask ? mask->dtype : DType::kBool; }
};

RowInputs row_inputs(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                     const RowOptions& o) {
  RowInputs in{HostArray{}, float_array(y_pred, "y_pred"), std::nullopt, {}, 0, 0};
  const auto& pshape = in.y_pred.shape;
  if (pshape.empty()) {
    throw py::value_error("y_pred must have a class axis (rank >= 1), got shape ()");
  }
  in.classes = pshape.back();
  if (in.classes < 1) {
    throw py::value_error("y_pred's last axis holds the classes and must not be empty, got shape " +
                          shape_str(pshape));
  }
  in.row_shape.assign(pshape.begin(), pshape.end() - 1);
  in.rows = num_elements(in.row_shape);

  if (o.sparse) {
    if (is_cuda_array(y_true)) throw py::type_error("y_true is a CUDA array; pass a NumPy array");
    py::array a = py::array::ensure(y_true);
    if (!a) throw py::type_error("y_true must be a NumPy array (or array-like) of labels");
    const std::string dname = dtype_of(a);
    if ((dname != "int32" && dname != "int64") || !a.dtype().attr("isnative").cast<bool>()) {
      throw py::type_error(
          "y_true of sparse_categorical_crossentropy must hold int32 or int64 class labels "
          "(native byte order), got " +
          dname);
    }
    std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    // Keras squeezes a trailing axis of 1: labels (B, T, 1) for y_pred (B, T, V).
    std::vector<int64_t> squeezed = in.row_shape;
    squeezed.push_back(1);
    if (shape != in.row_shape && shape != squeezed) {
      throw py::value_error("y_true (labels) must have y_pred's shape without its class axis, " +
                            shape_str(in.row_shape) + ", got " + shape_str(shape) + " for y_pred " +
                            shape_str(pshape));
    }
    in.y_true = HostArray{a, *parse_dtype_name(dname), shape, "y_true"};
  } else {
    in.y_true = float_array(y_true, "y_true");
    check_same_dtype("y_true", in.y_true.dtype, in.y_pred.dtype);
    if (in.y_true.shape != pshape) {
      throw py::value_error("y_true (dense targets) and y_pred must have the same shape, got " +
                            shape_str(in.y_true.shape) + " and " + shape_str(pshape));
    }
  }

  if (!mask.is_none()) {
    if (is_cuda_array(mask)) throw py::type_error("mask is a CUDA array; pass a NumPy array");
    py::array a = py::array::ensure(mask);
    if (!a) throw py::type_error("mask must be a NumPy array (or array-like)");
    const char kind = a.dtype().kind();
    if (kind == 'i' || kind == 'u') {
      // Integer masks keep non-zero rows, as a boolean mask (a copy of rows entries).
      a = py::module_::import("numpy").attr("not_equal")(a, 0);
    }
    const std::string dname = dtype_of(a);
    const auto d = parse_dtype_name(dname);
    if (!d || (*d != DType::kBool && kind != 'f' && dname != "bfloat16")) {
      throw py::type_error("mask must be bool, integer or a float weight per row, got " + dname);
    }
    if (!a.dtype().attr("isnative").cast<bool>()) {
      throw py::type_error("mask must be in native byte order");
    }
    check_mask_dtype(*d, in.y_pred.dtype);
    HostArray m{a, *d, std::vector<int64_t>(a.shape(), a.shape() + a.ndim()), "mask"};
    const bool prefix = m.shape.size() <= in.row_shape.size() &&
                        std::equal(m.shape.begin(), m.shape.end(), in.row_shape.begin());
    if (!prefix) {
      throw py::value_error("mask shape " + shape_str(m.shape) +
                            " must equal the rows' shape (y_pred's without its class axis) " +
                            shape_str(in.row_shape) + " or a leading prefix of it");
    }
    in.mask = m;
  }
  in.y_true.check_contiguous();
  in.y_pred.check_contiguous();
  if (in.mask) in.mask->check_contiguous();
  return in;
}

template <class T, class M>
RowLossParams<T, M> kernel_params(const RowInputs& in, const RowOptions& o) {
  RowLossParams<T, M> p;
  p.y_pred = static_cast<const T*>(in.y_pred.data());
  if (o.sparse) {
    p.labels = in.y_true.data();
    p.label_kind = in.y_true.dtype == DType::kInt32 ? LabelKind::kInt32 : LabelKind::kInt64;
  } else {
    p.y_true = static_cast<const T*>(in.y_true.data());
  }
  if (in.mask) {
    p.mask = static_cast<const M*>(in.mask->data());
    p.mask_n = num_elements(in.mask->shape);
  }
  p.rows = in.rows;
  p.classes = in.classes;
  p.reduction = o.reduction;
  p.has_ignore_class = o.ignore_class.has_value();
  p.ignore_class = o.ignore_class.value_or(0);
  p.label_smoothing = o.label_smoothing;
  p.from_logits = o.from_logits;
  return p;
}

// Calls f(Tag<Loss>, Tag<T>, Tag<M>) for the row loss of the table and the
// kernel types of (y_pred, mask).
template <class F>
void with_row_kernel(const RowOptions& o, DType t, DType mask, F&& f) {
#define MASKED_OPS_BINDING_ROW_LOSS(FUNCTOR, OP, NAME)                                           \
  if (o.table_name == NAME) {                                                                    \
    return detail::with_types(t, mask,                                                           \
                              [&](auto t_tag, auto m_tag) { f(Tag<FUNCTOR>{}, t_tag, m_tag); }); \
  }
  MASKED_OPS_ROW_LOSS_LIST(MASKED_OPS_BINDING_ROW_LOSS)
#undef MASKED_OPS_BINDING_ROW_LOSS
  throw py::value_error("unknown row loss '" + o.table_name + "'");
}

// Errors of the kernels; an out-of-range label names its row (found again
// with the kernels' own keep rule, only on this error path).
template <class Loss, class T, class M>
void check_row_status(Status s, const char* what, const RowLossParams<T, M>& p,
                      const RowInputs& in) {
  if (s != Status::kLabelOutOfRange) return check_status(s, what);
  for (int64_t r = 0; r < p.rows; ++r) {
    const auto row = cpu::rows::detail::row_keep<Loss::kSparse>(p, r);
    if (row.bad) {
      std::vector<int64_t> index(in.row_shape.size());
      for (int64_t i = int64_t(index.size()) - 1, rest = r; i >= 0; --i) {
        index[size_t(i)] = rest % in.row_shape[size_t(i)];
        rest /= in.row_shape[size_t(i)];
      }
      throw py::value_error("y_true holds label " + std::to_string(row.label) + " at index " +
                            shape_str(index) + ", outside [0, " + std::to_string(p.classes) +
                            ") (y_pred's class axis); only rows the mask drops or whose label is "
                            "ignore_class may hold other values");
    }
  }
  check_status(s, what);
}

template <class Acc>
py::object acc_scalar(Acc v) {
  return py::module_::import("numpy").attr(std::is_same<Acc, double>::value ? "float64"
                                                                            : "float32")(v);
}

template <class Loss, class Acc>
py::array new_row_stats(const RowInputs& in) {
  std::vector<py::ssize_t> shape(in.row_shape.begin(), in.row_shape.end());
  if (Loss::kRowStats > 1) shape.push_back(Loss::kRowStats);
  return py::array_t<Acc>(shape);
}

template <class Loss, class Acc>
const Acc* checked_row_stats(const py::object& obj, const RowInputs& in) {
  py::array a = py::array::ensure(obj);
  std::vector<int64_t> want(in.row_shape.begin(), in.row_shape.end());
  if (Loss::kRowStats > 1) want.push_back(Loss::kRowStats);
  const char* acc_name = std::is_same<Acc, double>::value ? "float64" : "float32";
  if (!a || dtype_of(a) != acc_name) {
    throw py::type_error(std::string("row_stats must be the forward's row_stats array (") +
                         acc_name + "), got " + (a ? dtype_of(a) : std::string("a non-array")));
  }
  const std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != want) {
    throw py::value_error("row_stats must have shape " + shape_str(want) +
                          " (the forward's, for y_pred " + shape_str(in.y_pred.shape) + "), got " +
                          shape_str(got));
  }
  HostArray{a, parse_dtype_name(acc_name).value(), got, "row_stats"}.check_contiguous();
  // `a` may be a converted copy: keep it alive in the caller's object.
  return static_cast<const Acc*>(a.data());
}

}  // namespace

py::tuple row_forward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                      const std::string& loss, bool from_logits, const py::object& ignore_class,
                      double label_smoothing, const std::string& reduction) {
  const RowOptions o = row_options(loss, from_logits, ignore_class, label_smoothing, reduction);
  const RowInputs in = row_inputs(y_true, y_pred, mask, o);
  py::tuple result;
  with_row_kernel(o, in.y_pred.dtype, in.mask_dtype(), [&](auto l, auto t, auto m) {
    using Loss = typename decltype(l)::type;
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    const auto p = kernel_params<T, M>(in, o);
    py::array stats = new_row_stats<Loss, Acc>(in);
    std::vector<cpu::rows::TaskPartial> workspace(size_t(cpu::rows::num_tasks(p.rows, p.classes)));
    Acc value = 0, sum = 0, weight_sum = 0;
    int64_t count = 0;
    Status s;
    {
      py::gil_scoped_release release;
      s = cpu::rows::forward<Loss>(p, workspace.data(), workspace.size() * sizeof(workspace[0]),
                                   &value, &sum, &weight_sum, &count,
                                   static_cast<Acc*>(stats.mutable_data()), thread_parallel_for());
    }
    check_row_status<Loss>(s, "row_forward", p, in);
    result = py::make_tuple(acc_scalar(value), acc_scalar(sum), acc_scalar(weight_sum),
                            py::int_(count), stats);
  });
  return result;
}

py::array row_backward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                       const py::object& row_stats, double loss_value, double weight_sum,
                       double grad_loss, double grad_sum, const std::string& loss, bool from_logits,
                       const py::object& ignore_class, double label_smoothing,
                       const std::string& reduction) {
  const RowOptions o = row_options(loss, from_logits, ignore_class, label_smoothing, reduction);
  const RowInputs in = row_inputs(y_true, y_pred, mask, o);
  py::array grad;
  with_row_kernel(o, in.y_pred.dtype, in.mask_dtype(), [&](auto l, auto t, auto m) {
    using Loss = typename decltype(l)::type;
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    const auto p = kernel_params<T, M>(in, o);
    py::array stats_array = py::array::ensure(row_stats);
    const Acc* stats = checked_row_stats<Loss, Acc>(stats_array, in);
    grad = py::array(in.y_pred.array.dtype(),
                     std::vector<py::ssize_t>(in.y_pred.shape.begin(), in.y_pred.shape.end()));
    const Acc scalars[4] = {Acc(grad_loss), Acc(grad_sum), Acc(loss_value), Acc(weight_sum)};
    BackwardScalars<Acc> bs;
    bs.grad_loss = &scalars[0];
    bs.grad_sum = &scalars[1];
    bs.loss = &scalars[2];
    bs.weight_sum = &scalars[3];
    std::vector<cpu::rows::TaskPartial> workspace(size_t(cpu::rows::num_tasks(p.rows, p.classes)));
    Status s;
    {
      py::gil_scoped_release release;
      s = cpu::rows::backward<Loss>(p, bs, stats, static_cast<T*>(grad.mutable_data()),
                                    workspace.data(), workspace.size() * sizeof(workspace[0]),
                                    thread_parallel_for());
    }
    check_row_status<Loss>(s, "row_backward", p, in);
  });
  return grad;
}

py::tuple row_forward_backward(const py::object& y_true, const py::object& y_pred,
                               const py::object& mask, const std::string& loss, bool from_logits,
                               const py::object& ignore_class, double label_smoothing,
                               const std::string& reduction, bool in_place, double upstream) {
  const RowOptions o = row_options(loss, from_logits, ignore_class, label_smoothing, reduction);
  if (in_place) {
    // The gradient overwrites y_pred's own buffer: no converted copy.
    if (!py::isinstance<py::array>(y_pred)) {
      throw py::type_error("in_place=True needs y_pred to be a NumPy array, got " +
                           std::string(py::str(py::type::handle_of(y_pred).attr("__name__"))));
    }
    if (!py::reinterpret_borrow<py::array>(y_pred).writeable()) {
      throw py::value_error("in_place=True needs a writeable y_pred (the gradient overwrites it)");
    }
  }
  if (!std::isfinite(upstream)) {
    throw py::value_error("upstream must be finite, got " +
                          std::string(py::str(py::float_(upstream))));
  }
  const RowInputs in = row_inputs(y_true, y_pred, mask, o);
  py::tuple result;
  with_row_kernel(o, in.y_pred.dtype, in.mask_dtype(), [&](auto l, auto t, auto m) {
    using Loss = typename decltype(l)::type;
    using T = typename decltype(t)::type;
    using M = typename decltype(m)::type;
    using Acc = acc_t<T>;
    const auto p = kernel_params<T, M>(in, o);
    py::array stats = new_row_stats<Loss, Acc>(in);
    py::array grad =
        in_place
            ? in.y_pred.array
            : py::array(in.y_pred.array.dtype(),
                        std::vector<py::ssize_t>(in.y_pred.shape.begin(), in.y_pred.shape.end()));
    T* g = static_cast<T*>(grad.mutable_data());
    std::vector<cpu::rows::TaskPartial> workspace(size_t(cpu::rows::num_tasks(p.rows, p.classes)));
    Acc value = 0, sum = 0, weight_sum = 0;
    int64_t count = 0;
    Status s;
    {
      py::gil_scoped_release release;
      s = cpu::rows::forward_backward<Loss>(
          p, workspace.data(), workspace.size() * sizeof(workspace[0]), &value, &sum, &weight_sum,
          &count, static_cast<Acc*>(stats.mutable_data()), g, thread_parallel_for());
      if (s == Status::kOk && upstream != 1.0) {
        s = cpu::scale_gradient(Acc(upstream), g, g, p.rows * p.classes, thread_parallel_for());
      }
    }
    check_row_status<Loss>(s, "row_forward_backward", p, in);
    result = py::make_tuple(acc_scalar(value), acc_scalar(sum), acc_scalar(weight_sum),
                            py::int_(count), stats, grad);
  });
  return result;
}

}  // namespace binding
}  // namespace masked_ops
