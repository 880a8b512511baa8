#include "row_loss_op.h"

#include <cstdint>
#include <string>
#include <utility>

#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace masked_ops {
namespace tf_adapter {

using tf::shape_inference::InferenceContext;
using tf::shape_inference::ShapeHandle;

namespace {

// The rows' shape (y_pred without its class axis), checked against y_true
// (labels: the rows' shape; targets: y_pred's) and the mask (a leading prefix
// of the rows' shape). Inputs: y_true, y_pred, mask, label_smoothing from `first`.
absl::Status RowInputShapes(InferenceContext* c, int first, ShapeHandle* pred) {
  const ShapeHandle y_true = c->input(first);
  const ShapeHandle y_pred = c->input(first + 1);
  const ShapeHandle mask = c->input(first + 2);
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + 3), 0, &unused));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(y_pred, 1, pred));
  if (!c->RankKnown(*pred)) return absl::OkStatus();
  ShapeHandle rows;
  TF_RETURN_IF_ERROR(c->Subshape(*pred, 0, -1, &rows));
  tf::DataType label_type;
  TF_RETURN_IF_ERROR(c->GetAttr("L", &label_type));
  const bool sparse = label_type == tf::DT_INT32 || label_type == tf::DT_INT64;
  const ShapeHandle expected = sparse ? rows : *pred;
  if (!c->Merge(y_true, expected, &unused).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("y_true shape ", c->DebugString(y_true), " must be ",
                     sparse ? "y_pred's shape without its class axis, " : "y_pred's shape, ",
                     c->DebugString(expected), " (y_pred ", c->DebugString(*pred), ")"));
  }
  if (c->RankKnown(mask)) {
    ShapeHandle prefix;
    const bool fits = c->Rank(mask) <= c->Rank(rows) &&
                      c->Subshape(rows, 0, c->Rank(mask), &prefix).ok() &&
                      c->Merge(prefix, mask, &unused).ok();
    if (!fits) {
      return absl::InvalidArgumentError(
          absl::StrCat("mask shape ", c->DebugString(mask),
                       " must be a leading prefix of y_pred's shape ", "without its class axis, ",
                       c->DebugString(rows), " (y_pred ", c->DebugString(*pred), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status StatsShape(InferenceContext* c, ShapeHandle pred, int row_stats, ShapeHandle* out) {
  if (!c->RankKnown(pred)) {
    *out = c->UnknownShape();
    return absl::OkStatus();
  }
  return c->ReplaceDim(pred, -1, c->MakeDim(row_stats), out);
}

std::string Shape(const tf::Tensor& t) { return t.shape().DebugString(); }

}  // namespace

absl::Status RowForwardShape(InferenceContext* c, int row_stats) {
  ShapeHandle pred, stats;
  TF_RETURN_IF_ERROR(RowInputShapes(c, 0, &pred));
  TF_RETURN_IF_ERROR(StatsShape(c, pred, row_stats, &stats));
  for (int i = 0; i < 4; ++i) c->set_output(i, c->Scalar());
  c->set_output(4, stats);
  return absl::OkStatus();
}

absl::Status RowWithGradShape(InferenceContext* c, int row_stats) {
  TF_RETURN_IF_ERROR(RowForwardShape(c, row_stats));
  c->set_output(5, c->input(1));
  return absl::OkStatus();
}

absl::Status RowGradShape(InferenceContext* c) {
  ShapeHandle pred;
  TF_RETURN_IF_ERROR(RowInputShapes(c, 2, &pred));
  c->set_output(0, pred);
  return absl::OkStatus();
}

absl::Status ValidateRowInputs(const tf::Tensor& y_true, const tf::Tensor& y_pred,
                               const tf::Tensor& mask, const tf::Tensor& label_smoothing,
                               bool sparse) {
  if (y_pred.dims() < 1 || y_pred.dim_size(y_pred.dims() - 1) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("y_pred must have a class axis (its last) of at least one class, got shape ",
                     Shape(y_pred)));
  }
  tf::TensorShape rows = y_pred.shape();
  rows.RemoveLastDims(1);
  if (sparse) {
    if (y_true.dtype() != tf::DT_INT32 && y_true.dtype() != tf::DT_INT64) {
      return absl::InvalidArgumentError(absl::StrCat(
          "y_true must be int32 or int64 class indices, got ", tf::DataTypeString(y_true.dtype())));
    }
    if (y_true.shape() != rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("y_true shape ", Shape(y_true), " must be y_pred's shape without its ",
                       "class axis, ", rows.DebugString(), " (y_pred ", Shape(y_pred), ")"));
    }
  } else {
    if (y_true.dtype() != y_pred.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat("y_true must have y_pred's dtype ",
                                                     tf::DataTypeString(y_pred.dtype()), ", got ",
                                                     tf::DataTypeString(y_true.dtype())));
    }
    if (y_true.shape() != y_pred.shape()) {
      return absl::InvalidArgumentError(absl::StrCat("y_true shape ", Shape(y_true),
                                                     " must equal y_pred's shape ", Shape(y_pred)));
    }
  }
  bool prefix = mask.dims() <= rows.dims();
  for (int i = 0; prefix && i < mask.dims(); ++i) prefix = mask.dim_size(i) == rows.dim_size(i);
  if (!prefix) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask shape ", Shape(mask), " must be a leading prefix of y_pred's shape without its ",
        "class axis, ", rows.DebugString(), " (y_pred ", Shape(y_pred), ")"));
  }
  if (!tf::TensorShapeUtils::IsScalar(label_smoothing.shape())) {
    return absl::InvalidArgumentError(
        absl::StrCat("label_smoothing must be a scalar, got shape ", Shape(label_smoothing)));
  }
  const double s = label_smoothing.scalar<double>()();
  if (!(s >= 0.0 && s <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("label_smoothing must be in [0, 1], got ", s));
  }
  if (sparse && s != 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("label_smoothing applies to dense targets only; the sparse (integer label) ",
                     "cross-entropy takes 0, got ", s));
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

absl::Status LabelOutOfRange(const tf::Tensor& y_true, int64_t row, int64_t classes) {
  if (row < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("y_true holds a label outside [0, ", classes,
                     ") (y_pred's class axis) at a position the mask keeps"));
  }
  tf::TensorShape rows = y_true.shape();
  std::string index;
  int64_t rest = row;
  for (int d = rows.dims() - 1; d >= 0; --d) {
    index = absl::StrCat(rest % rows.dim_size(d), d + 1 < rows.dims() ? ", " : "", index);
    rest /= rows.dim_size(d);
  }
  const int64_t label = y_true.dtype() == tf::DT_INT32 ? int64_t(y_true.flat<int32_t>()(row))
                                                       : int64_t(y_true.flat<int64_t>()(row));
  return absl::InvalidArgumentError(
      absl::StrCat("y_true[", index, "] = ", label, " is not a class index in [0, ", classes,
                   ") (y_pred's class axis), at a position the mask keeps; mask padded positions "
                   "out or pass their label as ignore_class"));
}

absl::Status RowAttrs::Read(tf::OpKernelConstruction* ctx) {
  std::string name;
  TF_RETURN_IF_ERROR(ctx->GetAttr("reduction", &name));
  TF_RETURN_IF_ERROR(ParseReduction(name, &reduction));
  TF_RETURN_IF_ERROR(ctx->GetAttr("has_ignore_class", &has_ignore_class));
  TF_RETURN_IF_ERROR(ctx->GetAttr("ignore_class", &ignore_class));
  return absl::OkStatus();
}

}  // namespace tf_adapter
}  // namespace masked_ops
