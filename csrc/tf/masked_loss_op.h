// TensorFlow adapter shared by every masked loss: op registration, shape
// functions, input validation and the OpKernels. A loss's op file only names
// the op and its functor (see masked_squared_error_op.cc); the kernels in
// csrc/kernels/ never see TensorFlow.
#pragma once

#include <limits>
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
absl::Status WithGradShape(tf::shape_inference::InferenceContext* c);

// Checks shapes of y_true, y_pred, mask and padding_value; the message names
// the shapes involved.
absl::Status ValidateInputs(const tf::Tensor& y_true, const tf::Tensor& y_pred,
                            const tf::Tensor& mask, const tf::Tensor& padding_value);

// Checks the extra masks: at most ExtraMasks::kMax, each of dtype bool, T or
// T's accumulator dtype, shaped as `mask` may be, element-aligned.
absl::Status ValidateExtraMasks(const tf::OpInputList& extras, const tf::Tensor& y_pred,
                                tf::DataType accumulator);

absl::Status ParseReduction(const std::string& name, Reduction* reduction);

// Tout must be the accumulator dtype of T (float32 for 16-bit inputs).
absl::Status CheckAccumulatorDtype(tf::DataType tout, tf::DataType t, tf::DataType expected);

absl::Status ToStatus(masked_ops::Status s, const char* what);

// *out = rounded, unless value is NaN or a finite value that overflows dtype.
absl::Status CheckPaddingValue(double value, double rounded, tf::DataType dtype, double* out);

// Input buffers through tensor_data(): unlike flat<T>(), no alignment CHECK
// crash for tensors from DLPack or other foreign buffers; ValidateInputs
// refuses misaligned ones with a message instead.
template <typename P>
const P* InputData(const tf::Tensor& t) {
  return reinterpret_cast<const P*>(t.tensor_data().data());
}

// The padding value the kernels compare y_true with: padding_value (float64)
// rounded to T as tf.cast rounds it, or NaN (equal to nothing) without padding.
// A NaN padding value, or a finite one that overflows T, is an error: either
// would silently mask nothing or mask infinite targets.
template <typename T>
absl::Status PaddingValue(const tf::Tensor& padding_value, bool has_padding_value, double* out) {
  using KT = kernel_t<T>;
  if (!has_padding_value) {
    *out = std::numeric_limits<double>::quiet_NaN();
    return absl::OkStatus();
  }
  const double v = *InputData<double>(padding_value);
  const double rounded = double(to_acc(from_acc<KT>(acc_t<KT>(v))));
  return CheckPaddingValue(v, rounded, tf::DataTypeToEnum<T>::v(), out);
}

template <typename T, typename M>
absl::Status MakeInputs(const tf::Tensor& y_true, const tf::Tensor& y_pred, const tf::Tensor& mask,
                        const tf::OpInputList& extras, const tf::Tensor& padding_value,
                        bool has_padding_value, MaskedInputs<kernel_t<T>, kernel_t<M>>* in) {
  using Acc = acc_t<kernel_t<T>>;
  TF_RETURN_IF_ERROR(ValidateExtraMasks(extras, y_pred, tf::DataTypeToEnum<Acc>::v()));
  switch (y_true.dtype()) {
    case tf::DT_BOOL:
      in->labels = {y_true.tensor_data().data(), LabelKind::kBool};
      break;
    case tf::DT_INT32:
      in->labels = {y_true.tensor_data().data(), LabelKind::kInt32};
      break;
    case tf::DT_INT64:
      in->labels = {y_true.tensor_data().data(), LabelKind::kInt64};
      break;
    default:
      if (y_true.dtype() != tf::DataTypeToEnum<T>::v()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "y_true must have y_pred's dtype ", tf::DataTypeString(y_pred.dtype()),
            ", or be bool, int32 or int64 labels; got ", tf::DataTypeString(y_true.dtype())));
      }
      in->y_true = InputData<kernel_t<T>>(y_true);
  }
  in->y_pred = InputData<kernel_t<T>>(y_pred);
  in->mask = InputData<kernel_t<M>>(mask);
  in->n = y_true.NumElements();
  in->mask_n = mask.NumElements();
  in->extra.size = extras.size();
  for (int k = 0; k < extras.size(); ++k) {
    ExtraMask& e = in->extra.mask[k];
    e.data = extras[k].tensor_data().data();
    e.mask_n = extras[k].NumElements();
    const tf::DataType dtype = extras[k].dtype();
    e.kind = dtype == tf::DT_BOOL                  ? MaskKind::kBool
             : dtype == tf::DataTypeToEnum<T>::v() ? MaskKind::kInput
                                                   : MaskKind::kAccumulator;
  }
  return PaddingValue<T>(padding_value, has_padding_value, &in->padding_value);
}

// The loss functor with its parameters from the op's `params` input.
template <class Loss>
absl::Status MakeLoss(const tf::Tensor& params, Loss* loss) {
  if (params.dims() != 1 || params.NumElements() != Loss::kNumParams) {
    return absl::InvalidArgumentError(absl::StrCat("params must be a vector of ", Loss::kNumParams,
                                                   " values for this loss, got shape ",
                                                   params.shape().DebugString()));
  }
  LossParams p;
  p.size = Loss::kNumParams;
  for (int i = 0; i < Loss::kNumParams; ++i) p.value[i] = InputData<double>(params)[i];
  if (const char* problem = Loss::invalid_params(p)) return absl::InvalidArgumentError(problem);
  *loss = Loss(p);
  return absl::OkStatus();
}

template <typename T, typename P>
P* DataOrNull(tf::Tensor* t, bool wanted) {
  return wanted ? reinterpret_cast<P*>(t->flat<T>().data()) : nullptr;
}

// Device-specific launch: specialized for CPU below and for GPU in
// masked_loss_op_gpu.h.
template <typename Device, class Loss, typename T, typename M>
struct Launch;
template <typename Device, typename T>
struct ScaleLaunch;

template <typename Device, class Loss, typename T, typename M>
class MaskedLossOp : public tf::OpKernel {
 public:
  using Acc = acc_t<kernel_t<T>>;

  explicit MaskedLossOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    std::string reduction;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
    OP_REQUIRES_OK(ctx, ParseReduction(reduction, &reduction_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_padding_value", &has_padding_value_));
    OP_REQUIRES_OK(ctx, CheckAccumulatorDtype(ctx->output_type(0), tf::DataTypeToEnum<T>::v(),
                                              tf::DataTypeToEnum<Acc>::v()));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& y_true = ctx->input(0);
    const tf::Tensor& y_pred = ctx->input(1);
    const tf::Tensor& mask = ctx->input(2);
    const tf::Tensor& padding_value = ctx->input(3);
    OP_REQUIRES_OK(ctx, ValidateInputs(y_true, y_pred, mask, padding_value));
    Loss loss;
    OP_REQUIRES_OK(ctx, MakeLoss(ctx->input(4), &loss));
    tf::Tensor* out[3];
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, tf::TensorShape({}), &out[i]));
    }
    tf::Tensor* count = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, tf::TensorShape({}), &count));
    tf::OpInputList extras;
    OP_REQUIRES_OK(ctx, ctx->input_list("extra_masks", &extras));
    MaskedInputs<kernel_t<T>, kernel_t<M>> in;
    OP_REQUIRES_OK(ctx, (MakeInputs<T, M>(y_true, y_pred, mask, extras, padding_value,
                                          has_padding_value_, &in)));
    OP_REQUIRES_OK(
        ctx, (Launch<Device, Loss, T, M>::Forward(
                 ctx, loss, in, reduction_, out[0]->flat<Acc>().data(), out[1]->flat<Acc>().data(),
                 out[2]->flat<Acc>().data(), count->flat<int64_t>().data())));
  }

 private:
  Reduction reduction_ = Reduction::kMean;
  bool has_padding_value_ = false;
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
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_padding_value", &has_padding_value_));
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
    Loss loss;
    OP_REQUIRES_OK(ctx, MakeLoss(ctx->input(7), &loss));
    for (int i = 8; i < 10; ++i) {
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
    scalars.loss = InputData<Acc>(ctx->input(8));
    scalars.weight_sum = InputData<Acc>(ctx->input(9));
    tf::OpInputList extras;
    OP_REQUIRES_OK(ctx, ctx->input_list("extra_masks", &extras));
    OP_REQUIRES(ctx, !(want_true_ && y_true.dtype() != y_pred.dtype()),
                absl::InvalidArgumentError(
                    absl::StrCat("want_y_true=True needs floating-point y_true; ",
                                 tf::DataTypeString(y_true.dtype()), " labels have no gradient")));
    OP_REQUIRES(ctx, !(want_mask_ && extras.size() > 0),
                absl::InvalidArgumentError(
                    "want_mask=True with extra_masks: the kernels compute no mask gradient for "
                    "several masks (masked_ops derives it from the combined weight)"));
    MaskedInputs<kernel_t<T>, kernel_t<M>> in;
    OP_REQUIRES_OK(ctx, (MakeInputs<T, M>(y_true, y_pred, mask, extras, padding_value,
                                          has_padding_value_, &in)));
    OP_REQUIRES_OK(ctx, (Launch<Device, Loss, T, M>::Backward(
                            ctx, loss, in, reduction_, scalars,
                            DataOrNull<T, kernel_t<T>>(grad_true, want_true_),
                            DataOrNull<T, kernel_t<T>>(grad_pred, want_pred_),
                            DataOrNull<M, kernel_t<M>>(grad_mask, want_mask_))));
  }

 private:
  Reduction reduction_ = Reduction::kMean;
  bool want_true_ = false;
  bool want_pred_ = true;
  bool want_mask_ = false;
  bool has_padding_value_ = false;
};

// The forward and, in the same pass, the gradients of `loss` for an upstream
// gradient of 1 (see cpu::forward_backward): boolean masks only, no padding
// value, no extra masks; Python emits it when a gradient will be taken.
template <typename Device, class Loss, typename T>
class MaskedLossWithGradOp : public tf::OpKernel {
 public:
  using Acc = acc_t<kernel_t<T>>;

  explicit MaskedLossWithGradOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    std::string reduction;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
    OP_REQUIRES_OK(ctx, ParseReduction(reduction, &reduction_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_y_true", &want_true_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_y_pred", &want_pred_));
    OP_REQUIRES_OK(ctx, CheckAccumulatorDtype(ctx->output_type(0), tf::DataTypeToEnum<T>::v(),
                                              tf::DataTypeToEnum<Acc>::v()));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& y_true = ctx->input(0);
    const tf::Tensor& y_pred = ctx->input(1);
    const tf::Tensor& mask = ctx->input(2);
    const tf::Tensor& padding_value = ctx->input(3);
    OP_REQUIRES_OK(ctx, ValidateInputs(y_true, y_pred, mask, padding_value));
    Loss loss;
    OP_REQUIRES_OK(ctx, MakeLoss(ctx->input(4), &loss));
    tf::OpInputList extras;
    OP_REQUIRES_OK(ctx, ctx->input_list("extra_masks", &extras));
    OP_REQUIRES(ctx, extras.size() == 0,
                absl::InvalidArgumentError("the one-pass op takes no extra_masks"));
    OP_REQUIRES(ctx, !(want_true_ && y_true.dtype() != y_pred.dtype()),
                absl::InvalidArgumentError(
                    absl::StrCat("want_y_true=True needs floating-point y_true; ",
                                 tf::DataTypeString(y_true.dtype()), " labels have no gradient")));
    tf::Tensor* out[4];
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, tf::TensorShape({}), &out[i]));
    }
    const tf::TensorShape empty({0});
    tf::Tensor *grad_true = nullptr, *grad_pred = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, want_true_ ? y_true.shape() : empty, &grad_true));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, want_pred_ ? y_pred.shape() : empty, &grad_pred));
    MaskedInputs<kernel_t<T>, bool> in;
    OP_REQUIRES_OK(ctx, (MakeInputs<T, bool>(y_true, y_pred, mask, extras, padding_value,
                                             /*has_padding_value=*/false, &in)));
    OP_REQUIRES_OK(
        ctx, (Launch<Device, Loss, T, bool>::ForwardBackward(
                 ctx, loss, in, reduction_, out[0]->flat<Acc>().data(), out[1]->flat<Acc>().data(),
                 out[2]->flat<Acc>().data(), out[3]->flat<int64_t>().data(),
                 DataOrNull<T, kernel_t<T>>(grad_true, want_true_),
                 DataOrNull<T, kernel_t<T>>(grad_pred, want_pred_))));
  }

 private:
  Reduction reduction_ = Reduction::kMean;
  bool want_true_ = false;
  bool want_pred_ = true;
};

// gradient * scale: the backward of the one-pass op for an upstream gradient
// `scale`. The gradient's buffer is reused when TensorFlow allows it, and an
// upstream gradient of exactly 1 then costs nothing (on the GPU the check
// runs on the device: no synchronization).
template <typename Device, typename T>
class ScaleGradientOp : public tf::OpKernel {
 public:
  using Acc = acc_t<kernel_t<T>>;
  explicit ScaleGradientOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {}

  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& scale = ctx->input(0);
    const tf::Tensor& gradient = ctx->input(1);
    OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(scale.shape()),
                absl::InvalidArgumentError(absl::StrCat("scale must be a scalar, got shape ",
                                                        scale.shape().DebugString())));
    OP_REQUIRES(ctx, scale.dtype() == tf::DataTypeToEnum<Acc>::v(),
                absl::InvalidArgumentError(absl::StrCat(
                    "scale must be ", tf::DataTypeString(tf::DataTypeToEnum<Acc>::v()),
                    " for a gradient of dtype ", tf::DataTypeString(gradient.dtype()))));
    tf::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1}, 0, gradient.shape(), &out));
    OP_REQUIRES_OK(
        ctx, (ScaleLaunch<Device, T>::Run(
                 ctx, InputData<Acc>(scale), InputData<kernel_t<T>>(gradient),
                 reinterpret_cast<kernel_t<T>*>(out->flat<T>().data()), gradient.NumElements())));
  }
};

}  // namespace tf_adapter
}  // namespace masked_ops

// Registers the forward op NAME and its gradient op NAME "Grad". y_true has
// y_pred's dtype T, or is bool/int32/int64 labels (L) converted in the
// kernel; those have no gradient. extra_masks
// (last, so the other inputs keep their indices) are further masks combined
// with `mask` in the kernel; any number up to ExtraMasks::kMax.
// The accumulator dtype Tout is float32 for 16-bit and float32 inputs and
// float64 for float64 inputs; the Python wrapper sets it.
#define MASKED_OPS_REGISTER_LOSS_OPS(NAME)                            \
  REGISTER_OP(NAME)                                                   \
      .Input("y_true: L")                                             \
      .Input("y_pred: T")                                             \
      .Input("mask: M")                                               \
      .Input("padding_value: double")                                 \
      .Input("params: double")                                        \
      .Input("extra_masks: E")                                        \
      .Output("loss: Tout")                                           \
      .Output("sum: Tout")                                            \
      .Output("weight_sum: Tout")                                     \
      .Output("count: int64")                                         \
      .Attr("T: {half, bfloat16, float, double}")                     \
      .Attr("M: {bool, half, bfloat16, float, double}")               \
      .Attr("L: {half, bfloat16, float, double, bool, int32, int64}") \
      .Attr("E: list({bool, half, bfloat16, float, double}) >= 0")    \
      .Attr("Tout: {float, double}")                                  \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")                    \
      .Attr("has_padding_value: bool = false")                        \
      .SetShapeFn(::masked_ops::tf_adapter::ForwardShape);            \
  REGISTER_OP(NAME "Grad")                                            \
      .Input("grad_loss: Tout")                                       \
      .Input("grad_sum: Tout")                                        \
      .Input("grad_weight_sum: Tout")                                 \
      .Input("y_true: L")                                             \
      .Input("y_pred: T")                                             \
      .Input("mask: M")                                               \
      .Input("padding_value: double")                                 \
      .Input("params: double")                                        \
      .Input("loss: Tout")                                            \
      .Input("weight_sum: Tout")                                      \
      .Input("extra_masks: E")                                        \
      .Output("grad_y_true: T")                                       \
      .Output("grad_y_pred: T")                                       \
      .Output("grad_mask: M")                                         \
      .Attr("T: {half, bfloat16, float, double}")                     \
      .Attr("M: {bool, half, bfloat16, float, double}")               \
      .Attr("L: {half, bfloat16, float, double, bool, int32, int64}") \
      .Attr("E: list({bool, half, bfloat16, float, double}) >= 0")    \
      .Attr("Tout: {float, double}")                                  \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")                    \
      .Attr("want_y_true: bool = false")                              \
      .Attr("want_y_pred: bool = true")                               \
      .Attr("want_mask: bool = false")                                \
      .Attr("has_padding_value: bool = false")                        \
      .SetShapeFn(::masked_ops::tf_adapter::GradShape);               \
  REGISTER_OP(NAME "WithGrad")                                        \
      .Input("y_true: L")                                             \
      .Input("y_pred: T")                                             \
      .Input("mask: bool")                                            \
      .Input("padding_value: double")                                 \
      .Input("params: double")                                        \
      .Input("extra_masks: E")                                        \
      .Output("loss: Tout")                                           \
      .Output("sum: Tout")                                            \
      .Output("weight_sum: Tout")                                     \
      .Output("count: int64")                                         \
      .Output("grad_y_true: T")                                       \
      .Output("grad_y_pred: T")                                       \
      .Attr("T: {half, bfloat16, float, double}")                     \
      .Attr("L: {half, bfloat16, float, double, bool, int32, int64}") \
      .Attr("E: list({bool, half, bfloat16, float, double}) >= 0")    \
      .Attr("Tout: {float, double}")                                  \
      .Attr("reduction: {'mean', 'sum'} = 'mean'")                    \
      .Attr("want_y_true: bool = false")                              \
      .Attr("want_y_pred: bool = true")                               \
      .SetShapeFn(::masked_ops::tf_adapter::WithGradShape)

// Kernels for one device, loss, input dtype T and mask dtype M. The kernels
// take masks of dtype bool, T, or T's accumulator dtype (float32 weights with
// 16-bit inputs: weights are read at least in float32); the Python wrapper
// converts other mask dtypes.
#define MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, M)    \
  REGISTER_KERNEL_BUILDER(Name(NAME)                                                    \
                              .Device(DEVICE)                                           \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<M>("M")                                   \
                              .HostMemory("padding_value")                              \
                              .HostMemory("params"),                                    \
                          ::masked_ops::tf_adapter::MaskedLossOp<DEV_TAG, LOSS, T, M>); \
  REGISTER_KERNEL_BUILDER(Name(NAME "Grad")                                             \
                              .Device(DEVICE)                                           \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<M>("M")                                   \
                              .HostMemory("padding_value")                              \
                              .HostMemory("params"),                                    \
                          ::masked_ops::tf_adapter::MaskedLossGradOp<DEV_TAG, LOSS, T, M>)

#define MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, T)           \
  MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, bool); \
  MASKED_OPS_REGISTER_LOSS_WITH_GRAD_KERNEL(NAME, LOSS, DEVICE, DEV_TAG, T);       \
  MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, T, T)

// One loss on one device for every supported input dtype: the dtype list lives here only.
#define MASKED_OPS_REGISTER_LOSS_WITH_GRAD_KERNEL(NAME, LOSS, DEVICE, DEV_TAG, T) \
  REGISTER_KERNEL_BUILDER(Name(NAME "WithGrad")                                   \
                              .Device(DEVICE)                                     \
                              .TypeConstraint<T>("T")                             \
                              .HostMemory("padding_value")                        \
                              .HostMemory("params"),                              \
                          ::masked_ops::tf_adapter::MaskedLossWithGradOp<DEV_TAG, LOSS, T>)

#define MASKED_OPS_REGISTER_LOSS_KERNELS_ALL_DTYPES(NAME, LOSS, DEVICE, DEV_TAG)                  \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, Eigen::half);                     \
  MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::half, float);     \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, Eigen::bfloat16);                 \
  MASKED_OPS_REGISTER_LOSS_KERNELS_FOR_MASK(NAME, LOSS, DEVICE, DEV_TAG, Eigen::bfloat16, float); \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, float);                           \
  MASKED_OPS_REGISTER_LOSS_KERNELS(NAME, LOSS, DEVICE, DEV_TAG, double)

// The one-pass backward's scaling (one op for every loss).
#define MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNEL(DEVICE, DEV_TAG, T)                            \
  REGISTER_KERNEL_BUILDER(Name("MaskedOps>ScaleGradient").Device(DEVICE).TypeConstraint<T>("T"), \
                          ::masked_ops::tf_adapter::ScaleGradientOp<DEV_TAG, T>)
#define MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNELS(DEVICE, DEV_TAG)            \
  MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNEL(DEVICE, DEV_TAG, Eigen::half);     \
  MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNEL(DEVICE, DEV_TAG, Eigen::bfloat16); \
  MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNEL(DEVICE, DEV_TAG, float);           \
  MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNEL(DEVICE, DEV_TAG, double)
