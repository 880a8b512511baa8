// TensorFlow adapter of the row losses (csrc/kernels/row_loss.h: categorical
// cross-entropy over rows of V classes): op registration, shape functions,
// input validation and the OpKernels. row_loss_ops.cc expands it over
// MASKED_OPS_ROW_LOSS_LIST; the kernels never see TensorFlow.
//
// Each loss NAME has three ops:
//   NAME          forward: loss, sum, weight_sum, count and row_stats (the
//                 per-row statistics its gradient reads instead of a second
//                 pass over the logits);
//   NAME "Grad"   d loss / d y_pred for upstream gradients of loss and sum;
//   NAME "WithGrad" the forward that also writes the gradient of `loss` for an
//                 upstream gradient of 1 in the same pass, into y_pred's own
//                 buffer when TensorFlow lets the op reuse it
//                 (MaskedOps>ScaleGradient then applies the upstream gradient).
#pragma once

#include <string>

#include "../kernels/row_loss.h"
#include "masked_loss_op.h"

namespace masked_ops {
namespace tf_adapter {

absl::Status RowForwardShape(tf::shape_inference::InferenceContext* c, int row_stats);
absl::Status RowGradShape(tf::shape_inference::InferenceContext* c);
absl::Status RowWithGradShape(tf::shape_inference::InferenceContext* c, int row_stats);

// Shapes, dtypes and alignment of y_true, y_pred, mask and label_smoothing;
// the messages name the argument and the shapes. Sparse losses take integer
// labels of shape y_pred.shape[:-1], dense ones targets of y_pred's shape and
// dtype; the mask is a leading prefix of y_pred.shape[:-1].
absl::Status ValidateRowInputs(const tf::Tensor& y_true, const tf::Tensor& y_pred,
                               const tf::Tensor& mask, const tf::Tensor& label_smoothing,
                               bool sparse);

// The message for a kept row whose label is not a class index: the first
// such row, found only once the kernel reported one.
absl::Status LabelOutOfRange(const tf::Tensor& y_true, int64_t row, int64_t classes);

// The op's attributes, read the same way by its three kernels.
struct RowAttrs {
  Reduction reduction = Reduction::kMean;
  bool has_ignore_class = false;
  int64_t ignore_class = 0;

  absl::Status Read(tf::OpKernelConstruction* ctx);
};

template <class Loss, typename T, typename M>
RowLossParams<kernel_t<T>, kernel_t<M>> MakeRowParams(const tf::Tensor& y_true,
                                                      const tf::Tensor& y_pred,
                                                      const tf::Tensor& mask,
                                                      const tf::Tensor& label_smoothing,
                                                      const RowAttrs& attrs) {
  RowLossParams<kernel_t<T>, kernel_t<M>> p;
  p.y_pred = InputData<kernel_t<T>>(y_pred);
  if constexpr (Loss::kSparse) {
    p.labels = y_true.tensor_data().data();
    p.label_kind = y_true.dtype() == tf::DT_INT32 ? LabelKind::kInt32 : LabelKind::kInt64;
    p.has_ignore_class = attrs.has_ignore_class;
    p.ignore_class = attrs.ignore_class;
  } else {
    p.y_true = InputData<kernel_t<T>>(y_true);
  }
  p.mask = InputData<kernel_t<M>>(mask);
  p.mask_n = mask.NumElements();
  p.classes = y_pred.dim_size(y_pred.dims() - 1);
  p.rows = p.classes == 0 ? 0 : y_pred.NumElements() / p.classes;
  p.reduction = attrs.reduction;
  p.label_smoothing = *InputData<double>(label_smoothing);
  p.from_logits = Loss::kFromLogits;
  return p;
}

// The first row the kernel refused: kept by the mask, not ignore_class, and
// not a class index (-1 when there is none).
template <typename KT, typename KM>
int64_t FirstBadRow(const RowLossParams<KT, KM>& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    if (p.mask != nullptr && !(MaskWeight<double, KM>::of(p.mask[r / p.rows_per_entry()]) != 0.0)) {
      continue;
    }
    const int64_t label = p.label(r);
    if (p.has_ignore_class && label == p.ignore_class) continue;
    if (label < 0 || label >= p.classes) return r;
  }
  return -1;
}

// Device-specific launch of the row engine: CPU in row_loss_op_cpu.h.
template <typename Device, class Loss, typename T, typename M>
struct RowLaunch;

template <typename Device, class Loss, typename T, typename M>
class RowLossOp : public tf::OpKernel {
 public:
  using KT = kernel_t<T>;
  using Acc = acc_t<KT>;

  RowLossOp(tf::OpKernelConstruction* ctx, bool with_grad)
      : tf::OpKernel(ctx), with_grad_(with_grad) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx));
    OP_REQUIRES_OK(ctx, CheckAccumulatorDtype(ctx->output_type(0), tf::DataTypeToEnum<T>::v(),
                                              tf::DataTypeToEnum<Acc>::v()));
  }
  explicit RowLossOp(tf::OpKernelConstruction* ctx) : RowLossOp(ctx, false) {}

  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& y_true = ctx->input(0);
    const tf::Tensor& y_pred = ctx->input(1);
    const tf::Tensor& mask = ctx->input(2);
    const tf::Tensor& label_smoothing = ctx->input(3);
    OP_REQUIRES_OK(ctx, ValidateRowInputs(y_true, y_pred, mask, label_smoothing, Loss::kSparse));
    tf::Tensor* out[4];
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, tf::TensorShape({}), &out[i]));
    }
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, tf::TensorShape({}), &out[3]));
    tf::TensorShape stats_shape = y_pred.shape();
    stats_shape.set_dim(stats_shape.dims() - 1, Loss::kRowStats);
    tf::Tensor* stats = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, stats_shape, &stats));
    const auto p = MakeRowParams<Loss, T, M>(y_true, y_pred, mask, label_smoothing, attrs_);
    KT* grad = nullptr;
    if (with_grad_) {
      // The gradient overwrites the logits when nothing else holds them.
      tf::Tensor* grad_out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1}, 5, y_pred.shape(), &grad_out));
      grad = reinterpret_cast<KT*>(grad_out->flat<T>().data());
    }
    const absl::Status s = RowLaunch<Device, Loss, T, M>::Forward(
        ctx, p, out[0]->flat<Acc>().data(), out[1]->flat<Acc>().data(), out[2]->flat<Acc>().data(),
        out[3]->flat<int64_t>().data(), stats->flat<Acc>().data(), grad);
    OP_REQUIRES_OK(ctx,
                   absl::IsOutOfRange(s) ? LabelOutOfRange(y_true, FirstBadRow(p), p.classes) : s);
  }

 private:
  RowAttrs attrs_;
  bool with_grad_;
};

template <typename Device, class Loss, typename T, typename M>
class RowLossWithGradOp : public RowLossOp<Device, Loss, T, M> {
 public:
  explicit RowLossWithGradOp(tf::OpKernelConstruction* ctx)
      : RowLossOp<Device, Loss, T, M>(ctx, true) {}
};

template <typename Device, class Loss, typename T, typename M>
class RowLossGradOp : public tf::OpKernel {
 public:
  using KT = kernel_t<T>;
  using Acc = acc_t<KT>;

  explicit RowLossGradOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx));
    OP_REQUIRES_OK(ctx, CheckAccumulatorDtype(ctx->input_type(0), tf::DataTypeToEnum<T>::v(),
                                              tf::DataTypeToEnum<Acc>::v()));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    static const char* const kScalars[] = {"grad_loss", "grad_sum", "",     "",
                                           "",          "",         "loss", "weight_sum"};
    for (int i : {0, 1, 6, 7}) {
      OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(ctx->input(i).shape()),
                  absl::InvalidArgumentError(absl::StrCat(kScalars[i], " must be a scalar, got ",
                                                          ctx->input(i).shape().DebugString())));
    }
    const tf::Tensor& y_true = ctx->input(2);
    const tf::Tensor& y_pred = ctx->input(3);
    const tf::Tensor& mask = ctx->input(4);
    const tf::Tensor& label_smoothing = ctx->input(5);
    const tf::Tensor& row_stats = ctx->input(8);
    OP_REQUIRES_OK(ctx, ValidateRowInputs(y_true, y_pred, mask, label_smoothing, Loss::kSparse));
    tf::TensorShape stats_shape = y_pred.shape();
    stats_shape.set_dim(stats_shape.dims() - 1, Loss::kRowStats);
    OP_REQUIRES(ctx, row_stats.shape() == stats_shape,
                absl::InvalidArgumentError(absl::StrCat(
                    "row_stats must have shape ", stats_shape.DebugString(), " for y_pred ",
                    y_pred.shape().DebugString(), ", got ", row_stats.shape().DebugString())));
    tf::Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, y_pred.shape(), &grad));
    BackwardScalars<Acc> scalars;
    const Acc zero(0);
    scalars.grad_loss = InputData<Acc>(ctx->input(0));
    scalars.grad_sum = InputData<Acc>(ctx->input(1));
    scalars.grad_weight_sum = &zero;
    scalars.loss = InputData<Acc>(ctx->input(6));
    scalars.weight_sum = InputData<Acc>(ctx->input(7));
    const auto p = MakeRowParams<Loss, T, M>(y_true, y_pred, mask, label_smoothing, attrs_);
    const absl::Status s = RowLaunch<Device, Loss, T, M>::Backward(
        ctx, p, scalars, InputData<Acc>(row_stats), reinterpret_cast<KT*>(grad->flat<T>().data()));
    OP_REQUIRES_OK(ctx,
                   absl::IsOutOfRange(s) ? LabelOutOfRange(y_true, FirstBadRow(p), p.classes) : s);
  }

 private:
  RowAttrs attrs_;
};

}  // namespace tf_adapter
}  // namespace masked_ops

// Registers the three ops of the row loss NAME whose functor has ROW_STATS
// per-row statistics. y_true is integer labels (L = int32/int64) for the
// sparse losses and targets of dtype T for the dense ones; the kernels check
// which. label_smoothing (dense losses; 0 for sparse ones) is a float64
// scalar, as Keras keeps it as a Python float.
#define MASKED_OPS_REGISTER_ROW_LOSS_OPS(NAME, ROW_STATS)                  \
  REGISTER_OP(NAME)                                                        \
      .Input("y_true: L")                                                  \
      .Input("y_pred: T")                                                  \
      .Input("mask: M")                                                    \
      .Input("label_smoothing: double")                                    \
      .Output("loss: Tout")                                                \
      .Output("sum: Tout")                                                 \
      .Output("weight_sum: Tout")                                          \
      .Output("count: int64")                                              \
      .Output("row_stats: Tout")                                           \
      .Attr("T: {half, bfloat16, float, double}")                          \
      .Attr("M: {bool, half, bfloat16, float, double}")                    \
      .Attr("L: {half, bfloat16, float, double, int32, int64}")            \
      .Attr("Tout: {float, double}")                                       \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")                         \
      .Attr("has_ignore_class: bool = false")                              \
      .Attr("ignore_class: int = 0")                                       \
      .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) { \
        return ::masked_ops::tf_adapter::RowForwardShape(c, ROW_STATS);    \
      });                                                                  \
  REGISTER_OP(NAME "Grad")                                                 \
      .Input("grad_loss: Tout")                                            \
      .Input("grad_sum: Tout")                                             \
      .Input("y_true: L")                                                  \
      .Input("y_pred: T")                                                  \
      .Input("mask: M")                                                    \
      .Input("label_smoothing: double")                                    \
      .Input("loss: Tout")                                                 \
      .Input("weight_sum: Tout")                                           \
      .Input("row_stats: Tout")                                            \
      .Output("grad_y_pred: T")                                            \
      .Attr("T: {half, bfloat16, float, double}")                          \
      .Attr("M: {bool, half, bfloat16, float, double}")                    \
      .Attr("L: {half, bfloat16, float, double, int32, int64}")            \
      .Attr("Tout: {float, double}")                                       \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")                         \
      .Attr("has_ignore_class: bool = false")                              \
      .Attr("ignore_class: int = 0")                                       \
      .SetShapeFn(::masked_ops::tf_adapter::RowGradShape);                 \
  REGISTER_OP(NAME "WithGrad")                                             \
      .Input("y_true: L")                                                  \
      .Input("y_pred: T")                                                  \
      .Input("mask: M")                                                    \
      .Input("label_smoothing: double")                                    \
      .Output("loss: Tout")                                                \
      .Output("sum: Tout")                                                 \
      .Output("weight_sum: Tout")                                          \
      .Output("count: int64")                                              \
      .Output("row_stats: Tout")                                           \
      .Output("grad_y_pred: T")                                            \
      .Attr("T: {half, bfloat16, float, double}")                          \
      .Attr("M: {bool, half, bfloat16, float, double}")                    \
      .Attr("L: {half, bfloat16, float, double, int32, int64}")            \
      .Attr("Tout: {float, double}")                                       \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")                         \
      .Attr("has_ignore_class: bool = false")                              \
      .Attr("ignore_class: int = 0")                                       \
      .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) { \
        return ::masked_ops::tf_adapter::RowWithGradShape(c, ROW_STATS);   \
      })

// Kernels of one row loss on one device for input dtype T and mask dtype M
// (bool, T, or T's accumulator dtype, as for the elementwise losses).
#define MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, M)       \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name(NAME).Device(DEVICE).TypeConstraint<T>("T").TypeConstraint<M>("M").HostMemory( \
          "label_smoothing"),                                                             \
      ::masked_ops::tf_adapter::RowLossOp<DEV_TAG, LOSS, T, M>);                          \
  REGISTER_KERNEL_BUILDER(Name(NAME "Grad")                                               \
                              .Device(DEVICE)                                             \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<M>("M")                                     \
                              .HostMemory("label_smoothing"),                             \
                          ::masked_ops::tf_adapter::RowLossGradOp<DEV_TAG, LOSS, T, M>);  \
  REGISTER_KERNEL_BUILDER(Name(NAME "WithGrad")                                           \
                              .Device(DEVICE)                                             \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<M>("M")                                     \
                              .HostMemory("label_smoothing"),                             \
                          ::masked_ops::tf_adapter::RowLossWithGradOp<DEV_TAG, LOSS, T, M>)

// One row loss on one device for every supported input dtype: the dtype list lives here only.
#define MASKED_OPS_REGISTER_ROW_KERNELS_ALL_DTYPES(NAME, LOSS, DEVICE, DEV_TAG)                    \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::half, bool);        \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::half, Eigen::half); \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::half, float);       \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::bfloat16, bool);    \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::bfloat16,           \
                                           Eigen::bfloat16);                                       \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::bfloat16, float);   \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, float, bool);              \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, float, float);             \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, double, bool);             \
  MASKED_OPS_REGISTER_ROW_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, double, double)
