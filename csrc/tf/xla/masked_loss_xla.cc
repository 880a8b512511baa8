#include "masked_loss_xla.h"

#include <optional>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "xla/hlo/builder/lib/arithmetic.h"

namespace masked_ops {
namespace xla_lowering {

std::vector<std::string>& LoweredOps() {
  static auto* names = new std::vector<std::string>();
  return *names;
}

absl::Status ReadAttrs(tf::OpKernelConstruction* ctx, bool* is_sum, bool* has_padding_value) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("has_padding_value", has_padding_value));
  std::string reduction;
  TF_RETURN_IF_ERROR(ctx->GetAttr("reduction", &reduction));
  if (reduction != "mean" && reduction != "sum") {
    return absl::InvalidArgumentError(
        absl::StrCat("reduction must be 'mean' or 'sum', got '", reduction, "'"));
  }
  *is_sum = reduction == "sum";
  return absl::OkStatus();
}

absl::Status Prepare(tf::XlaOpKernelContext* ctx, int first_input, bool has_padding_value,
                     Prepared* out) {
  const int y_true = first_input, y_pred = first_input + 1, mask = first_input + 2,
            padding = first_input + 3;
  TF_ASSIGN_OR_RETURN(const xla::Shape true_shape, ctx->InputXlaShape(y_true));
  TF_ASSIGN_OR_RETURN(const xla::Shape pred_shape, ctx->InputXlaShape(y_pred));
  TF_ASSIGN_OR_RETURN(const xla::Shape mask_shape, ctx->InputXlaShape(mask));
  TF_ASSIGN_OR_RETURN(const xla::Shape padding_shape, ctx->InputXlaShape(padding));
  if (!xla::ShapeUtil::SameDimensions(true_shape, pred_shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat("y_true and y_pred must have the same shape, got y_true ",
                     xla::ShapeUtil::HumanString(true_shape), " and y_pred ",
                     xla::ShapeUtil::HumanString(pred_shape)));
  }
  const auto dims = pred_shape.dimensions();
  bool prefix = mask_shape.dimensions().size() <= dims.size();
  for (size_t i = 0; prefix && i < mask_shape.dimensions().size(); ++i) {
    prefix = mask_shape.dimensions(i) == dims[i];
  }
  if (!prefix) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask shape ", xla::ShapeUtil::HumanString(mask_shape), " must equal the inputs' shape ",
        xla::ShapeUtil::HumanString(pred_shape), " or be a leading prefix of it"));
  }
  if (padding_shape.dimensions().size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("padding_value must be a scalar, got shape ",
                                                   xla::ShapeUtil::HumanString(padding_shape)));
  }
  const tf::DataType t_dtype = ctx->input_type(y_pred);
  out->acc = t_dtype == tf::DT_DOUBLE ? xla::F64 : xla::F32;
  out->dims.assign(dims.begin(), dims.end());
  out->mask_rank = mask_shape.dimensions().size();

  std::vector<int64_t> mask_dims(out->mask_rank);
  for (int64_t i = 0; i < out->mask_rank; ++i) mask_dims[i] = i;
  const xla::XlaOp m = xla::BroadcastInDim(ctx->Input(mask), out->dims, mask_dims);
  // Labels of another dtype become y_pred's dtype first, as the kernels read them.
  const xla::PrimitiveType t_type = ctx->input_xla_type(y_pred);
  const xla::XlaOp t_in = ctx->input_xla_type(y_true) == t_type
                              ? ctx->Input(y_true)
                              : xla::ConvertElementType(ctx->Input(y_true), t_type);
  std::optional<xla::XlaOp> not_padding;
  out->bad_padding = xla::ConstantR0<bool>(ctx->builder(), false);
  if (has_padding_value) {
    // Rounded to y_true's dtype through the accumulator type, as the kernels do.
    const xla::XlaOp padding64 = ctx->Input(padding);
    const xla::XlaOp padding_acc = xla::ConvertElementType(padding64, out->acc);
    const xla::XlaOp padding_t = xla::ConvertElementType(padding_acc, t_type);
    not_padding = xla::Ne(t_in, padding_t, {});
    const xla::XlaOp rounded = xla::ConvertElementType(padding_t, xla::F64);
    out->bad_padding =
        xla::Or(xla::Ne(padding64, padding64),
                xla::And(xla::IsFinite(padding64), xla::Not(xla::IsFinite(rounded))));
  }
  xla::XlaOp mask_kept;
  out->w = xla::ConvertElementType(m, out->acc);
  // Extra masks multiply the weight, in list order, as the kernels do.
  std::vector<xla::XlaOp> extras;
  std::vector<tf::TensorShape> extra_shapes;
  TF_RETURN_IF_ERROR(ctx->InputList("extra_masks", &extras, &extra_shapes));
  if (extras.size() > static_cast<size_t>(ExtraMasks::kMax)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "at most ", 1 + ExtraMasks::kMax, " masks can be combined, got ", 1 + extras.size()));
  }
  for (size_t k = 0; k < extras.size(); ++k) {
    const tf::TensorShape& shape = extra_shapes[k];
    bool ok = shape.dims() <= static_cast<int>(dims.size());
    for (int i = 0; ok && i < shape.dims(); ++i) ok = shape.dim_size(i) == dims[i];
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("mask[", k + 1, "] (extra_masks[", k, "]) shape ", shape.DebugString(),
                       " must equal the inputs' shape ", xla::ShapeUtil::HumanString(pred_shape),
                       " or be a leading prefix of it"));
    }
    std::vector<int64_t> extra_dims(shape.dims());
    for (int i = 0; i < shape.dims(); ++i) extra_dims[i] = i;
    // The product, or 0 once any weight is 0 (0 * NaN would keep a NaN weight).
    const xla::XlaOp wk =
        xla::ConvertElementType(xla::BroadcastInDim(extras[k], out->dims, extra_dims), out->acc);
    const xla::XlaOp zero = xla::ScalarLike(out->w, 0);
    out->w = xla::Select(xla::And(xla::Ne(out->w, zero), xla::Ne(wk, zero)), out->w * wk,
                         xla::ZerosLike(out->w));
  }
  if (ctx->input_type(mask) == tf::DT_BOOL && extras.empty()) {
    mask_kept = m;
  } else {
    mask_kept = xla::Ne(out->w, xla::ScalarLike(out->w, 0));
  }
  out->num_extra_masks = static_cast<int>(extras.size());
  out->keep = not_padding ? xla::And(mask_kept, *not_padding) : mask_kept;
  const xla::XlaOp t = xla::ConvertElementType(t_in, out->acc);
  const xla::XlaOp p = xla::ConvertElementType(ctx->Input(y_pred), out->acc);
  out->zeros = xla::ZerosLike(t);
  out->t = xla::Select(out->keep, t, out->zeros);
  out->p = xla::Select(out->keep, p, out->zeros);
  return absl::OkStatus();
}

// Float32 totals: XLA's CPU reduction is a running sum whose float32 error
// grows with n (3e-4 relative at 2^24 was seen). Rows of kBlock elements are
// summed in float32 and the row totals in float64, which bounds the error like
// the CPU kernel's blocks and keeps the pass in float32; sizes that are not a
// multiple of kBlock are summed in float64 directly.
xla::XlaOp SumAll(tf::XlaOpKernelContext* ctx, xla::XlaOp x, xla::PrimitiveType type) {
  constexpr int64_t kBlock = 256;
  auto sum = [&](xla::XlaOp v, xla::PrimitiveType t, absl::Span<const int64_t> dims) {
    return xla::Reduce(v, xla::Zero(ctx->builder(), t),
                       xla::CreateScalarAddComputation(t, ctx->builder()), dims);
  };
  if (type != xla::F32) {
    return xla::ReduceAll(x, xla::Zero(ctx->builder(), type),
                          xla::CreateScalarAddComputation(type, ctx->builder()));
  }
  const absl::StatusOr<xla::Shape> shape = ctx->builder()->GetShape(x);
  const int64_t n = shape.ok() ? xla::ShapeUtil::ElementsIn(*shape) : -1;
  if (n >= kBlock && n % kBlock == 0) {
    const xla::XlaOp rows = sum(xla::Reshape(x, {n / kBlock, kBlock}), xla::F32, {1});
    return xla::ConvertElementType(sum(xla::ConvertElementType(rows, xla::F64), xla::F64, {0}),
                                   xla::F32);
  }
  const xla::XlaOp total =
      xla::ReduceAll(xla::ConvertElementType(x, xla::F64), xla::Zero(ctx->builder(), xla::F64),
                     xla::CreateScalarAddComputation(xla::F64, ctx->builder()));
  return xla::ConvertElementType(total, xla::F32);
}

xla::XlaOp SumToMask(tf::XlaOpKernelContext* ctx, xla::XlaOp x, const Prepared& in,
                     xla::PrimitiveType type) {
  std::vector<int64_t> inner;
  for (int64_t i = in.mask_rank; i < static_cast<int64_t>(in.dims.size()); ++i) inner.push_back(i);
  if (inner.empty()) return x;
  return xla::Reduce(x, xla::Zero(ctx->builder(), type),
                     xla::CreateScalarAddComputation(type, ctx->builder()), inner);
}

namespace {

// Lists the ops with lowerings in this library; Python asks it whether to emit
// an op under XLA or the equivalent pure-TF formula. TensorFlow turns lowerings
// into kernels for the XLA devices once per process: running this op makes
// that happen now, so Python can then check that ours were included (they are
// not when XLA compiled something before this library was loaded).
class LoweredOpsOp : public tf::OpKernel {
 public:
  explicit LoweredOpsOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {}

  void Compute(tf::OpKernelContext* ctx) override {
    tf::XlaOpRegistry::RegisterCompilationKernels();
    const auto& names = LoweredOps();
    tf::Tensor* out = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(0, tf::TensorShape({static_cast<int64_t>(names.size())}), &out));
    auto flat = out->flat<tf::tstring>();
    for (size_t i = 0; i < names.size(); ++i) flat(i) = names[i];
  }
};

}  // namespace

REGISTER_OP("MaskedOps>XlaLoweredOps")
    .Output("names: string")
    .SetShapeFn([](tf::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    });
REGISTER_KERNEL_BUILDER(Name("MaskedOps>XlaLoweredOps").Device(tf::DEVICE_CPU), LoweredOpsOp);

}  // namespace xla_lowering
}  // namespace masked_ops
