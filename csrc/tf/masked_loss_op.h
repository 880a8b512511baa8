// TensorFlow adapter shared by every masked loss: op registration, shape
// functions, input validation and the OpKernels. A loss's op file only names
// the op and its functor (see masked_squared_error_op.cc); the kernels in
// csrc/kernels/ never see TensorFlow.
#pragma once

#include <string>
#include <type_traits>

#include "../kernels/masked_loss.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"

namespace masked_ops {
namespace tf_adapter {

namespace tf = ::tensorflow;

// TensorFlow element types -> the kernels' layout-compatible storage types.
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<Eigen::half> {
  using type = half_t;
};
template <>
struct KernelType<Eigen::bfloat16> {
  using type = bfloat16_t;
};
template <typename T>
using kernel_t = typename KernelType<T>::type;

static_assert(sizeof(Eigen::half) == sizeof(half_t), "half layout");
static_assert(sizeof(Eigen::bfloat16) == sizeof(bfloat16_t), "bfloat16 layout");

absl::Status ForwardShape(tf::shape_inference::InferenceContext* c);
absl::Status GradShape(tf::shape_inference::InferenceContext* c);

// Checks shapes of y_true, y_pred, mask and padding_value; the message names
// the shapes involved.
absl::Status ValidateInputs(const tf::Tensor& y_true, const tf::Tensor& y_pred,
                            const tf::Tensor& mask, const tf::Tensor& padding_value);

absl::Status ParseReduction(const std::string& name, Reduction* reduction);

// Tout must be the accumulator dtype of T (float32 for 16-bit inputs).
absl::Status CheckAccumulatorDtype(tf::DataType tout, tf::DataType t, tf::DataType expected);

absl::Status ToStatus(masked_ops::Status s, const char* what);

// Input buffers through tensor_data(): unlike flat<T>(), no alignment CHECK, so
// tensors from DLPack or other foreign buffers work (the kernels need no alignment).
template <typename P>
const P* InputData(const tf::Tensor& t) {
  return reinterpret_cast<const P*>(t.tensor_data().data());
}

template <typename T, typename M>
MaskedInputs<kernel_t<T>, kernel_t<M>> MakeInputs(const tf::Tensor& y_true,
                                                  const tf::Tensor& y_pred, const tf::Tensor& mask,
                                                  const tf::Tensor& padding_value) {
  MaskedInputs<kernel_t<T>, kernel_t<M>> in;
  in.y_true = InputData<kernel_t<T>>(y_true);
  in.y_pred = InputData<kernel_t<T>>(y_pred);
  in.mask = InputData<kernel_t<M>>(mask);
  in.n = y_true.NumElements();
  in.mask_n = mask.NumElements();
  in.padding_value = double(*InputData<T>(padding_value));
  return in;
}

template <typename T, typename P>
P* DataOrNull(tf::Tensor* t, bool wanted) {
  return wanted ? reinterpret_cast<P*>(t->flat<T>().data()) : nullptr;
}

// Device-specific launch: specialized for CPU below and for GPU in
// masked_loss_op_gpu.h.
template <typename Device, class Loss, typename T, typename M>
struct Launch;

template <typename Device, class Loss, typename T, typename M>
class MaskedLossOp : public tf::OpKernel {
 public:
  using Acc = acc_t<kernel_t<T>>;

  explicit MaskedLossOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    std::string reduction;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
    OP_REQUIRES_OK(ctx, ParseReduction(reduction, &reduction_));
    OP_REQUIRES_OK(ctx, CheckAccumulatorDtype(ctx->output_type(0), tf::DataTypeToEnum<T>::v(),
                                              tf::DataTypeToEnum<Acc>::v()));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& y_true = ctx->input(0);
    const tf::Tensor& y_pred = ctx->input(1);
    const tf::Tensor& mask = ctx->input(2);
    const tf::Tensor& padding_value = ctx->input(3);
    OP_REQUIRES_OK(ctx, ValidateInputs(y_true, y_pred, mask, padding_value));
    tf::Tensor* out[3];
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, tf::TensorShape({}), &out[i]));
    }
    tf::Tensor* count = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, tf::TensorShape({}), &count));
    const auto in = MakeInputs<T, M>(y_true, y_pred, mask, padding_value);
    OP_REQUIRES_OK(ctx,
                   (Launch<Device, Loss, T, M>::Forward(
                       ctx, in, reduction_, out[0]->flat<Acc>().data(), out[1]->flat<Acc>().data(),
                       out[2]->flat<Acc>().data(), count->flat<int64_t>().data())));
  }

 private:
  Reduction reduction_ = Reduction::kMean;
};

template <typename Device, class Loss, typename T, typename M>
class MaskedLossGradOp : public tf::OpKernel {
 public:
  using Acc = acc_t<kernel_t<T>>;

  explicit MaskedLossGradOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    std::string reduction;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
    OP_REQUIRES_OK(ctx, ParseReduction(reduction, &reduction_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_y_true", &want_true_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_y_pred", &want_pred_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_mask", &want_mask_));
    OP_REQUIRES_OK(ctx, CheckAccumulatorDtype(ctx->input_type(0), tf::DataTypeToEnum<T>::v(),
                                              tf::DataTypeToEnum<Acc>::v()));
    OP_REQUIRES(
        ctx, !(want_mask_ && std::is_same<M, bool>::value),
        absl::InvalidArgumentError(absl::StrCat("want_mask=True needs a floating-point mask; "
                                                "a boolean mask has no gradient")));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(ctx->input(i).shape()),
                  absl::InvalidArgumentError(absl::StrCat("upstream gradient ", i,
                                                          " must be a scalar, got ",
                                                          ctx->input(i).shape().DebugString())));
    }
    const tf::Tensor& y_true = ctx->input(3);
    const tf::Tensor& y_pred = ctx->input(4);
    const tf::Tensor& mask = ctx->input(5);
    const tf::Tensor& padding_value = ctx->input(6);
    OP_REQUIRES_OK(ctx, ValidateInputs(y_true, y_pred, mask, padding_value));
    for (int i = 7; i < 9; ++i) {
      OP_REQUIRES(
          ctx, tf::TensorShapeUtils::IsScalar(ctx->input(i).shape()),
          absl::InvalidArgumentError(absl::StrCat("forward output ", i, " must be a scalar, got ",
                                                  ctx->input(i).shape().DebugString())));
    }
    const tf::TensorShape empty({0});
    tf::Tensor *grad_true = nullptr, *grad_pred = nullptr, *grad_mask = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, want_true_ ? y_true.shape() : empty, &grad_true));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, want_pred_ ? y_pred.shape() : empty, &grad_pred));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, want_mask_ ? mask.shape() : empty, &grad_mask));

    BackwardScalars<Acc> scalars;
    scalars.grad_loss = InputData<Acc>(ctx->input(0));
    scalars.grad_sum = InputData<Acc>(ctx->input(1));
    scalars.grad_weight_sum = InputData<Acc>(ctx->input(2));
    scalars.loss = InputData<Acc>(ctx->input(7));
    scalars.weight_sum = InputData<Acc>(ctx->input(8));
    const auto in = MakeInputs<T, M>(y_true, y_pred, mask, padding_value);
    OP_REQUIRES_OK(
        ctx, (Launch<Device, Loss, T, M>::Backward(
                 ctx, in, reduction_, scalars, DataOrNull<T, kernel_t<T>>(grad_true, want_true_),
                 DataOrNull<T, kernel_t<T>>(grad_pred, want_pred_),
                 DataOrNull<M, kernel_t<M>>(grad_mask, want_mask_))));
  }

 private:
  Reduction reduction_ = Reduction::kMean;
  bool want_true_ = false;
  bool want_pred_ = true;
  bool want_mask_ = false;
};

}  // namespace tf_adapter
}  // namespace masked_ops

// Registers the forward op NAME and its gradient op NAME "Grad".
// The accumulator dtype Tout is float32 for 16-bit and float32 inputs and
// float64 for float64 inputs; the Python wrapper sets it.
#define MASKED_OPS_REGISTER_LOSS_OPS(NAME)                 \
  REGISTER_OP(NAME)                                        \
      .Input("y_true: T")                                  \
      .Input("y_pred: T")                                  \
      .Input("mask: M")                                    \
      .Input("padding_value: T")                           \
      .Output("loss: Tout")                                \
      .Output("sum: Tout")                                 \
      .Output("weight_sum: Tout")                          \
      .Output("count: int64")                              \
      .Attr("T: {half, bfloat16, float, double}")          \
      .Attr("M: {bool, half, bfloat16, float, double}")    \
      .Attr("Tout: {float, double}")                       \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")         \
      .SetShapeFn(::masked_ops::tf_adapter::ForwardShape); \
  REGISTER_OP(NAME "Grad")                                 \
      .Input("grad_loss: Tout")                            \
      .Input("grad_sum: Tout")                             \
      .Input("grad_weight_sum: Tout")                      \
      .Input("y_true: T")                                  \
      .Input("y_pred: T")                                  \
      .Input("mask: M")                                    \
      .Input("padding_value: T")                           \
      .Input("loss: Tout")                                 \
      .Input("weight_sum: Tout")                           \
      .Output("grad_y_true: T")                            \
      .Output("grad_y_pred: T")                            \
      .Output("grad_mask: M")                              \
      .Attr("T: {half, bfloat16, float, double}")          \
      .Attr("M: {bool, half, bfloat16, float, double}")    \
      .Attr("Tout: {float, double}")                       \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")         \
      .Attr("want_y_true: bool = false")                   \
      .Attr("want_y_pred: bool = true")                    \
      .Attr("want_mask: bool = false")                     \
      .SetShapeFn(::masked_ops::tf_adapter::GradShape)

// Kernels for one device, loss and input dtype T, with the two mask dtypes the
// kernels take directly: bool and T itself. Other mask dtypes are converted by
// the Python wrapper.
#define MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, M)      \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name(NAME).Device(DEVICE).TypeConstraint<T>("T").TypeConstraint<M>("M").HostMemory( \
          "padding_value"),                                                               \
      ::masked_ops::tf_adapter::MaskedLossOp<DEV_TAG, LOSS, T, M>);                       \
  REGISTER_KERNEL_BUILDER(Name(NAME "Grad")                                               \
                              .Device(DEVICE)                                             \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<M>("M")                                     \
                              .HostMemory("padding_value"),                               \
                          ::masked_ops::tf_adapter::MaskedLossGradOp<DEV_TAG, LOSS, T, M>)

#define MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, T)           \
  MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, bool); \
  MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, T)

// One loss on one device for every supported input dtype: the dtype list lives here only.
#define MASKED_OPS_REGISTER_LOSS_KERNELS_ALL_DTYPES(NAME, LOSS, DEVICE, DEV_TAG)  \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, Eigen::half);     \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, Eigen::bfloat16); \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, float);           \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, double)
