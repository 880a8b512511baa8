#include "masked_loss_op.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace masked_ops {
namespace tf_adapter {

using tf::shape_inference::InferenceContext;
using tf::shape_inference::ShapeHandle;

namespace {

// y_true and y_pred share a shape; the mask's shape is a leading prefix of it.
absl::Status MergeInputShapes(InferenceContext* c, int y_true, int y_pred, int mask, int padding,
                              ShapeHandle* inputs) {
  ShapeHandle params;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(padding + 1), 1, &params));
  if (!c->Merge(c->input(y_true), c->input(y_pred), inputs).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "y_true and y_pred must have the same shape, got y_true ", c->DebugString(c->input(y_true)),
        " and y_pred ", c->DebugString(c->input(y_pred))));
  }
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(padding), 0, &unused));
  std::vector<ShapeHandle> masks = {c->input(mask)};
  std::vector<ShapeHandle> extras;
  TF_RETURN_IF_ERROR(c->input("extra_masks", &extras));
  masks.insert(masks.end(), extras.begin(), extras.end());
  for (size_t k = 0; k < masks.size(); ++k) {
    const ShapeHandle m = masks[k];
    if (!c->RankKnown(m) || !c->RankKnown(*inputs)) continue;
    const std::string name =
        k == 0 ? std::string("mask") : absl::StrCat("mask[", k, "] (extra_masks[", k - 1, "])");
    const auto error = [&] {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " shape ", c->DebugString(m), " must equal the inputs' shape ",
                       c->DebugString(*inputs), " or be a leading prefix of it"));
    };
    if (c->Rank(m) > c->Rank(*inputs)) return error();
    ShapeHandle prefix;
    TF_RETURN_IF_ERROR(c->Subshape(*inputs, 0, c->Rank(m), &prefix));
    if (!c->Merge(prefix, m, &unused).ok()) return error();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ForwardShape(InferenceContext* c) {
  ShapeHandle inputs;
  TF_RETURN_IF_ERROR(MergeInputShapes(c, 0, 1, 2, 3, &inputs));
  for (int i = 0; i < 4; ++i) c->set_output(i, c->Scalar());
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c) {
  ShapeHandle inputs;
  TF_RETURN_IF_ERROR(MergeInputShapes(c, 3, 4, 5, 6, &inputs));
  bool want_true = false, want_pred = false, want_mask = false;
  TF_RETURN_IF_ERROR(c->GetAttr("want_y_true", &want_true));
  TF_RETURN_IF_ERROR(c->GetAttr("want_y_pred", &want_pred));
  TF_RETURN_IF_ERROR(c->GetAttr("want_mask", &want_mask));
  const ShapeHandle empty = c->Vector(0);
  c->set_output(0, want_true ? inputs : empty);
  c->set_output(1, want_pred ? inputs : empty);
  c->set_output(2, want_mask ? c->input(5) : empty);
  return absl::OkStatus();
}

absl::Status WithGradShape(InferenceContext* c) {
  ShapeHandle inputs;
  TF_RETURN_IF_ERROR(MergeInputShapes(c, 0, 1, 2, 3, &inputs));
  for (int i = 0; i < 4; ++i) c->set_output(i, c->Scalar());
  bool want_true = false, want_pred = false;
  TF_RETURN_IF_ERROR(c->GetAttr("want_y_true", &want_true));
  TF_RETURN_IF_ERROR(c->GetAttr("want_y_pred", &want_pred));
  c->set_output(4, want_true ? inputs : c->Vector(0));
  c->set_output(5, want_pred ? inputs : c->Vector(0));
  return absl::OkStatus();
}

absl::Status ValidateInputs(const tf::Tensor& y_true, const tf::Tensor& y_pred,
                            const tf::Tensor& mask, const tf::Tensor& padding_value) {
  if (y_true.shape() != y_pred.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat("y_true and y_pred must have the same shape, got y_true ",
                     y_true.shape().DebugString(), " and y_pred ", y_pred.shape().DebugString()));
  }
  const tf::TensorShape& shape = y_pred.shape();
  bool prefix = mask.dims() <= shape.dims();
  for (int i = 0; prefix && i < mask.dims(); ++i) prefix = mask.dim_size(i) == shape.dim_size(i);
  if (!prefix) {
    return absl::InvalidArgumentError(
        absl::StrCat("mask shape ", mask.shape().DebugString(), " must equal the inputs' shape ",
                     shape.DebugString(), " or be a leading prefix of it"));
  }
  if (!tf::TensorShapeUtils::IsScalar(padding_value.shape())) {
    return absl::InvalidArgumentError(absl::StrCat("padding_value must be a scalar, got shape ",
                                                   padding_value.shape().DebugString()));
  }
  const std::pair<const char*, const tf::Tensor*> buffers[] = {
      {"y_true", &y_true}, {"y_pred", &y_pred}, {"mask", &mask}};
  for (const auto& [name, t] : buffers) {
    const size_t size = tf::DataTypeSize(t->dtype());
    const auto address = reinterpret_cast<uintptr_t>(t->tensor_data().data());
    if (size > 1 && address % size != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "'s buffer is not aligned to its ", size, "-byte elements (address % ",
                       size, " = ", address % size,
                       "), as tensors imported from foreign memory (DLPack) can be; "
                       "make an aligned copy first"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateExtraMasks(const tf::OpInputList& extras, const tf::Tensor& y_pred,
                                tf::DataType accumulator) {
  if (extras.size() > ExtraMasks::kMax) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", 1 + ExtraMasks::kMax, " masks can be combined, got ", 1 + extras.size()));
  }
  const tf::TensorShape& shape = y_pred.shape();
  for (int k = 0; k < extras.size(); ++k) {
    const tf::Tensor& m = extras[k];
    const tf::DataType d = m.dtype();
    if (d != tf::DT_BOOL && d != y_pred.dtype() && d != accumulator) {
      return absl::InvalidArgumentError(
          absl::StrCat("mask[", k + 1, "] (extra_masks[", k, "]) must be bool, ",
                       tf::DataTypeString(y_pred.dtype()), " or ", tf::DataTypeString(accumulator),
                       ", got ", tf::DataTypeString(d)));
    }
    bool prefix = m.dims() <= shape.dims();
    for (int i = 0; prefix && i < m.dims(); ++i) prefix = m.dim_size(i) == shape.dim_size(i);
    if (!prefix) {
      return absl::InvalidArgumentError(absl::StrCat(
          "mask[", k + 1, "] (extra_masks[", k, "]) shape ", m.shape().DebugString(),
          " must equal the inputs' shape ", shape.DebugString(), " or be a leading prefix of it"));
    }
    const size_t size = tf::DataTypeSize(d);
    const auto address = reinterpret_cast<uintptr_t>(m.tensor_data().data());
    if (size > 1 && address % size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "mask[", k + 1, "] (extra_masks[", k, "])'s buffer is not aligned to its ", size,
          "-byte elements, as tensors imported from foreign memory (DLPack) can be; make an "
          "aligned copy first"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPaddingValue(double value, double rounded, tf::DataType dtype, double* out) {
  if (std::isnan(value)) {
    return absl::InvalidArgumentError(
        "padding_value is NaN, which would mask nothing (NaN equals nothing); mask NaN "
        "targets with mask=~tf.math.is_nan(y_true) instead");
  }
  if (std::isfinite(value) && !std::isfinite(rounded)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "padding_value ", value, " overflows ", tf::DataTypeString(dtype),
        ", the dtype of y_true: it would become ", rounded, " and mask infinite targets"));
  }
  *out = rounded;
  return absl::OkStatus();
}

absl::Status ParseReduction(const std::string& name, Reduction* reduction) {
  if (name == "mean") {
    *reduction = Reduction::kMean;
  } else if (name == "sum") {
    *reduction = Reduction::kSum;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("reduction must be 'mean' or 'sum', got '", name, "'"));
  }
  return absl::OkStatus();
}

absl::Status CheckAccumulatorDtype(tf::DataType tout, tf::DataType t, tf::DataType expected) {
  if (tout != expected) {
    return absl::InvalidArgumentError(absl::StrCat("Tout must be ", tf::DataTypeString(expected),
                                                   " for inputs of dtype ", tf::DataTypeString(t),
                                                   ", got ", tf::DataTypeString(tout)));
  }
  return absl::OkStatus();
}

absl::Status ToStatus(masked_ops::Status s, const char* what) {
  if (s == masked_ops::Status::kOk) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("masked loss ", what, ": ", status_message(s)));
}

}  // namespace tf_adapter
}  // namespace masked_ops
