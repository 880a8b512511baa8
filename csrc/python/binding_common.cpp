#include "binding_common.h"

#include <pybind11/numpy.h>

#include <stdexcept>

namespace masked_ops {
namespace binding {

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
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
  }
  return "?";
}

std::optional<DType> parse_dtype_name(const std::string& name) {
  for (DType d : {DType::kHalf, DType::kBFloat16, DType::kFloat, DType::kDouble, DType::kBool,
                  DType::kInt32, DType::kInt64}) {
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
    case DType::kInt32:
      return 4;
    case DType::kInt64:
      return 8;
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

void check_shapes(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                  const std::vector<int64_t>* mask, const std::string& mask_name) {
  if (y_true != y_pred) {
    throw py::value_error("y_true and y_pred must have the same shape, got " + shape_str(y_true) +
                          " and " + shape_str(y_pred));
  }
  if (mask == nullptr) return;
  const bool prefix =
      mask->size() <= y_pred.size() && std::equal(mask->begin(), mask->end(), y_pred.begin());
  if (!prefix) {
    throw py::value_error(mask_name + " shape " + shape_str(*mask) +
                          " must equal the inputs' shape or a leading prefix of it; inputs have "
                          "shape " +
                          shape_str(y_pred));
  }
}

std::optional<std::vector<py::object>> mask_list(const py::object& mask) {
  if (!py::isinstance<py::list>(mask) && !py::isinstance<py::tuple>(mask)) return std::nullopt;
  std::vector<py::object> items;
  bool any_array = false;
  for (const py::handle item : mask) {
    items.push_back(py::reinterpret_borrow<py::object>(item));
    // As masked_ops._inputs.is_mask_list: NumPy scalars are numbers, not arrays.
    any_array = any_array || py::isinstance<py::array>(item) || is_cuda_array(item);
  }
  if (!any_array) return std::nullopt;
  if (items.size() > size_t(1 + ExtraMasks::kMax)) {
    throw py::value_error("mask combines at most " + std::to_string(1 + ExtraMasks::kMax) +
                          " masks, got a list of " + std::to_string(items.size()));
  }
  for (size_t k = 0; k < items.size(); ++k) {
    if (items[k].is_none()) {
      throw py::value_error("mask[" + std::to_string(k) +
                            "] is None; leave it out of the list instead");
    }
  }
  return items;
}

std::optional<LabelKind> check_y_true_dtype(DType got, DType t) {
  switch (got) {
    case DType::kBool:
      return LabelKind::kBool;
    case DType::kInt32:
      return LabelKind::kInt32;
    case DType::kInt64:
      return LabelKind::kInt64;
    default:
      check_same_dtype("y_true", got, t);
      return std::nullopt;
  }
}

MaskKind mask_kind(DType mask, DType t) {
  if (mask == DType::kBool) return MaskKind::kBool;
  return mask == t ? MaskKind::kInput : MaskKind::kAccumulator;
}

void check_same_dtype(const char* name, DType got, DType want) {
  if (got != want) {
    throw py::type_error(std::string(name) + " has dtype " + dtype_name(got) + " but y_pred has " +
                         dtype_name(want) + "; they must match");
  }
}

namespace {

bool is_16bit(DType t) { return t == DType::kHalf || t == DType::kBFloat16; }

}  // namespace

void check_mask_dtype(DType mask, DType t) {
  if (mask != DType::kBool && mask != t && !(is_16bit(t) && mask == DType::kFloat)) {
    throw py::type_error(std::string("mask must be bool, y_pred's dtype (") + dtype_name(t) + ")" +
                         (is_16bit(t) ? " or float32" : "") + ", got " + dtype_name(mask));
  }
}

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

std::vector<std::string> loss_names() {
  std::vector<std::string> names;
#define MASKED_OPS_BINDING_LOSS_NAME(FUNCTOR, OP, NAME) names.emplace_back(NAME);
  MASKED_OPS_LOSS_LIST(MASKED_OPS_BINDING_LOSS_NAME)
#undef MASKED_OPS_BINDING_LOSS_NAME
  return names;
}

std::vector<std::string> row_loss_names() {
  std::vector<std::string> names;
#define MASKED_OPS_BINDING_ROW_LOSS_NAME(FUNCTOR, OP, NAME) names.emplace_back(NAME);
  MASKED_OPS_ROW_LOSS_LIST(MASKED_OPS_BINDING_ROW_LOSS_NAME)
#undef MASKED_OPS_BINDING_ROW_LOSS_NAME
  return names;
}

void HostArray::check_contiguous() const {
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

void check_status(Status s, const char* what) {
  if (s != Status::kOk) {
    throw std::runtime_error(std::string("masked_ops ") + what + " failed: " + status_message(s));
  }
}

bool is_cuda_array(const py::handle& obj) {
  return !obj.is_none() && py::hasattr(obj, "__cuda_array_interface__");
}

}  // namespace binding
}  // namespace masked_ops
