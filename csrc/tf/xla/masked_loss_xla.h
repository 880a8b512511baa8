// XLA lowerings of the masked-loss ops, so that they compile under
// jit_compile=True. They express the kernels' select-based formula (see
// ../../kernels/masked_loss.h) with XLA ops; the element math is the loss's
// own functor, instantiated with the XlaValue expression type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

// First: the functors' math must see the XlaValue overloads where they are defined.
#include "xla_value.h"
// clang-format off
#include "../../kernels/loss_list.h"
#include "../masked_loss_op.h"
// clang-format on

#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "xla/hlo/builder/lib/constants.h"
#include "xla/hlo/builder/xla_builder.h"

namespace masked_ops {
namespace xla_lowering {

namespace tf = ::tensorflow;

// Names of the forward ops that have lowerings, for the library's
// MaskedOps>XlaLoweredOps op (Python asks it whether to emit the op under XLA).
std::vector<std::string>& LoweredOps();

struct LoweredOpRegistrar {
  explicit LoweredOpRegistrar(const char* name) { LoweredOps().emplace_back(name); }
};

// Everything both directions need, built from (y_true, y_pred, mask, padding_value).
struct Prepared {
  xla::PrimitiveType acc;
  xla::XlaOp t, p;  // inputs in the accumulator type, 0 where not kept
  xla::XlaOp w;     // mask weight broadcast to the inputs' shape, accumulator type
  xla::XlaOp keep;  // (w != 0) && (y_true != padding_value)
  xla::XlaOp zeros;
  // True when the run-time padding value is one the op refuses (NaN, or finite
  // but overflowing y_true's dtype): XLA cannot raise an error at run time, so
  // the forward's outputs become NaN instead of silently masking nothing.
  xla::XlaOp bad_padding;
  std::vector<int64_t> dims;  // inputs' shape
  int64_t mask_rank;
  int num_extra_masks;
};

absl::Status Prepare(tf::XlaOpKernelContext* ctx, int first_input, bool has_padding_value,
                     Prepared* out);

// Reads the attributes every lowering needs.
absl::Status ReadAttrs(tf::OpKernelConstruction* ctx, bool* is_sum, bool* has_padding_value);

// Sum over all elements of `x` (of type `type`).
xla::XlaOp SumAll(tf::XlaOpKernelContext* ctx, xla::XlaOp x, xla::PrimitiveType type);

// Sums `x` (inputs' shape, element type `type`) over the trailing dims each
// mask entry covers.
xla::XlaOp SumToMask(tf::XlaOpKernelContext* ctx, xla::XlaOp x, const Prepared& in,
                     xla::PrimitiveType type);

// The loss functor with its parameters, which must be compile-time constants.
template <class Loss>
absl::Status CompileTimeLoss(tf::XlaOpKernelContext* ctx, int index, Loss* loss) {
  TF_ASSIGN_OR_RETURN(const tf::Tensor params, ctx->ConstantInputTensor(index));
  return tf_adapter::MakeLoss(params, loss);
}

template <class Loss>
class MaskedLossXlaOp : public tf::XlaOpKernel {
 public:
  explicit MaskedLossXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &is_sum_, &has_padding_value_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    Prepared in;
    OP_REQUIRES_OK(ctx, Prepare(ctx, 0, has_padding_value_, &in));
    Loss loss_fn;
    OP_REQUIRES_OK(ctx, CompileTimeLoss(ctx, 4, &loss_fn));
    const xla::XlaOp value = loss_fn.value(XlaValue(in.t), XlaValue(in.p)).op();
    const xla::XlaOp sum = SumAll(ctx, xla::Select(in.keep, in.w * value, in.zeros), in.acc);
    const xla::XlaOp weight_sum = SumAll(ctx, xla::Select(in.keep, in.w, in.zeros), in.acc);
    const xla::XlaOp count = SumAll(ctx, xla::ConvertElementType(in.keep, xla::S64), xla::S64);
    xla::XlaOp loss = sum;
    if (!is_sum_) {
      // The mean is exactly 0 when nothing is kept.
      const xla::XlaOp zero = xla::ScalarLike(weight_sum, 0);
      const xla::XlaOp nonzero = xla::Ne(weight_sum, zero);
      loss = xla::Select(nonzero, sum / xla::Select(nonzero, weight_sum, xla::ScalarLike(sum, 1)),
                         zero);
    }
    const xla::XlaOp nan = xla::NanValue(ctx->builder(), in.acc);
    ctx->SetOutput(0, xla::Select(in.bad_padding, nan, loss));
    ctx->SetOutput(1, xla::Select(in.bad_padding, nan, sum));
    ctx->SetOutput(2, xla::Select(in.bad_padding, nan, weight_sum));
    ctx->SetOutput(3, count);
  }

 private:
  bool is_sum_ = false;
  bool has_padding_value_ = false;
};

template <class Loss>
class MaskedLossGradXlaOp : public tf::XlaOpKernel {
 public:
  explicit MaskedLossGradXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &is_sum_, &has_padding_value_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_y_true", &want_true_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_y_pred", &want_pred_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("want_mask", &want_mask_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    Prepared in;
    OP_REQUIRES_OK(ctx, Prepare(ctx, 3, has_padding_value_, &in));
    Loss loss_fn;
    OP_REQUIRES_OK(ctx, CompileTimeLoss(ctx, 7, &loss_fn));
    const XlaValue t(in.t), p(in.p);
    OP_REQUIRES(ctx, !(want_mask_ && ctx->input_type(5) == tf::DT_BOOL),
                absl::InvalidArgumentError(
                    "want_mask=True needs a floating-point mask; a boolean mask has no gradient"));
    OP_REQUIRES(ctx, !(want_true_ && ctx->input_type(3) != ctx->input_type(4)),
                absl::InvalidArgumentError(
                    "want_y_true=True needs floating-point y_true; labels have no gradient"));
    OP_REQUIRES(ctx, !(want_mask_ && in.num_extra_masks > 0),
                absl::InvalidArgumentError(
                    "want_mask=True with extra_masks: no mask gradient for several masks "
                    "(masked_ops derives it from the combined weight)"));
    const xla::XlaOp grad_loss = ctx->Input(0);
    const xla::XlaOp grad_sum = ctx->Input(1);
    const xla::XlaOp grad_weight_sum = ctx->Input(2);
    const xla::XlaOp loss = ctx->Input(8);
    const xla::XlaOp weight_sum = ctx->Input(9);
    // Same coefficients as grad_coefficients() in masked_loss.h.
    xla::XlaOp a = grad_loss + grad_sum;
    xla::XlaOp b = xla::ScalarLike(weight_sum, 0);
    const xla::XlaOp c = grad_weight_sum;
    xla::XlaOp scale = xla::ScalarLike(weight_sum, 1);
    if (!is_sum_) {
      const xla::XlaOp zero = xla::ScalarLike(weight_sum, 0);
      const xla::XlaOp nonzero = xla::Ne(weight_sum, zero);
      const xla::XlaOp tiny = xla::Lt(xla::Abs(weight_sum), xla::ScalarLike(weight_sum, 0x1p-64));
      scale = xla::Select(tiny, xla::ScalarLike(weight_sum, 0x1p64), scale);
      const xla::XlaOp inv = xla::Select(
          nonzero,
          xla::ScalarLike(weight_sum, 1) /
              (xla::Select(nonzero, weight_sum, xla::ScalarLike(weight_sum, 1)) * scale),
          zero);
      a = grad_loss * inv + grad_sum / scale;
      b = xla::Neg(grad_loss * loss * inv);
    }
    const xla::PrimitiveType t_type = ctx->input_xla_type(4);  // y_pred's: labels have none
    const xla::XlaOp aw = a * (in.w * scale);
    auto element_grad = [&](xla::XlaOp g) {
      return xla::ConvertElementType(xla::Select(in.keep, aw * g, in.zeros), t_type);
    };
    ctx->SetOutput(0, want_true_ ? element_grad(loss_fn.grad_true(t, p).op()) : Empty(ctx, t_type));
    ctx->SetOutput(1, want_pred_ ? element_grad(loss_fn.grad_pred(t, p).op()) : Empty(ctx, t_type));
    const xla::PrimitiveType m_type = ctx->input_xla_type(5);
    if (want_mask_) {
      const xla::XlaOp value = loss_fn.value(t, p).op();
      xla::XlaOp grad_mask;
      if (in.mask_rank < static_cast<int64_t>(in.dims.size())) {
        // Terms of a row's sum in f64, as the kernels (weight_gradient_term):
        // scaled one by one in Acc they could overflow although their sum does not.
        auto wide = [](xla::XlaOp x) { return xla::ConvertElementType(x, xla::F64); };
        const xla::XlaOp term = wide(a * value + b) * wide(scale) + wide(c);
        grad_mask = SumToMask(ctx, xla::Select(in.keep, term, xla::ZerosLike(term)), in, xla::F64);
      } else {
        grad_mask = xla::Select(in.keep, (a * value + b) * scale + c, in.zeros);
      }
      ctx->SetOutput(2, xla::ConvertElementType(grad_mask, m_type));
    } else {
      ctx->SetOutput(2, Empty(ctx, m_type));
    }
  }

 private:
  static xla::XlaOp Empty(tf::XlaOpKernelContext* ctx, xla::PrimitiveType type) {
    return xla::Broadcast(xla::Zero(ctx->builder(), type), {0});
  }

  bool is_sum_ = false;
  bool has_padding_value_ = false;
  bool want_true_ = false;
  bool want_pred_ = true;
  bool want_mask_ = false;
};

}  // namespace xla_lowering
}  // namespace masked_ops

// Registers the lowerings of the forward op NAME and its gradient NAME "Grad".
// padding_value stays an ordinary operand: it need not be a compile-time
// constant; the loss's params must be one (they shape the computation).
#define MASKED_OPS_REGISTER_LOSS_XLA(NAME, LOSS)                               \
  REGISTER_XLA_OP(Name(NAME).CompileTimeConstantInput("params"),               \
                  ::masked_ops::xla_lowering::MaskedLossXlaOp<LOSS>);          \
  REGISTER_XLA_OP(Name(NAME "Grad").CompileTimeConstantInput("params"),        \
                  ::masked_ops::xla_lowering::MaskedLossGradXlaOp<LOSS>);      \
  static ::masked_ops::xla_lowering::LoweredOpRegistrar MASKED_OPS_XLA_CONCAT( \
      masked_ops_xla_registrar_, __COUNTER__)(NAME)

#define MASKED_OPS_XLA_CONCAT_INNER(a, b) a##b
#define MASKED_OPS_XLA_CONCAT(a, b) MASKED_OPS_XLA_CONCAT_INNER(a, b)
