// Arguments shared by every masked loss, CPU and CUDA alike.
//
// A loss is a functor (csrc/kernels/losses/, listed in loss_list.h) with
//   value(t, p)      the per-element loss,
//   grad_pred(t, p)  d value / d p,
//   grad_true(t, p)  d value / d t,
// all templates on the accumulator type, and its scalar parameters (Huber's
// delta, a label smoothing) as members, set from LossParams and passed to the
// kernels by value. With w the mask weight of an element and
// keep = (w != 0) && (t != padding_value), the forward reduces
//   sum = sum(keep ? w * value : 0), weight_sum = sum(keep ? w : 0),
//   count = sum(keep ? 1 : 0)
// and the loss is sum / weight_sum ("mean", 0 when weight_sum == 0) or sum.
// Masking is a select, never a multiply, so NaN/Inf under the mask never leak.
#pragma once

#include <cstddef>
#include <cstdint>

#include "numeric_types.h"

namespace masked_ops {

enum class Reduction : int { kMean = 0, kSum = 1 };

enum class Status : int {
  kOk = 0,
  kBadShape = 1,  // n is not a multiple of the mask size
  kWorkspaceTooSmall = 2,
  kLaunchFailed = 3,       // CUDA launch / runtime error
  kMisaligned = 4,         // a buffer is not aligned to its element size
  kExtraMaskGradient = 5,  // a mask gradient was asked for with extra masks
  kLabelGradient = 6,      // a gradient of boolean or integer labels was asked for
  kUnsupported = 7,        // the one-pass forward+backward's preconditions do not hold
  kLabelOutOfRange = 8,    // row losses: a kept row's label is not in [0, classes)
  kBadRowArgs = 9,         // row losses: arguments that do not fit the loss
};

inline const char* status_message(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kBadShape:
      return "the number of elements is not a multiple of the mask size";
    case Status::kWorkspaceTooSmall:
      return "workspace smaller than the size query returned";
    case Status::kLaunchFailed:
      return "CUDA kernel launch failed";
    case Status::kMisaligned:
      return "an input or output buffer is not aligned to its element size";
    case Status::kExtraMaskGradient:
      return "mask gradients are not computed by the kernels when extra masks are given";
    case Status::kLabelGradient:
      return "boolean or integer y_true (labels) has no gradient";
    case Status::kUnsupported:
      return "the one-pass forward+backward takes one boolean mask and no padding value";
    case Status::kLabelOutOfRange:
      return "a label of a kept row (mask non-zero, label not ignore_class) is outside [0, "
             "classes)";
    case Status::kBadRowArgs:
      return "row loss arguments do not fit the loss: sparse losses take int32/int64 labels and "
             "no label_smoothing, categorical ones dense targets and no ignore_class; "
             "label_smoothing in [0, 1]; from_logits as the loss's";
  }
  return "unknown status";
}

// The scalar parameters of a loss, in the order its functor documents
// (kNumParams of them); the adapters fill it from the op's `params` input.
struct LossParams {
  static constexpr int kMax = 2;
  double value[kMax] = {};
  int size = 0;
};

// Loads through a misaligned pointer are undefined behaviour on the host and
// kill the CUDA context on the device: adapters refuse such buffers up front
// (naming the argument) and the launchers check again.
template <typename P>
MO_HD bool is_aligned(const P* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(P) == 0;
}

// Further masks combined with `mask` in the same pass (several masks: a
// padding mask and a weight tensor, two boolean masks), without materializing
// their product: an element's weight is the product of every mask's weight
// for it (booleans as 0/1, so booleans AND), in the accumulator type, in list
// order after `mask`. Each has its own dtype (kind) and its own leading-prefix
// shape (mask_n entries, as `mask`). The kernels compute no mask gradient with
// extra masks (kExtraMaskGradient); adapters derive those from the gradient
// of the combined weight.
enum class MaskKind : int {
  kBool = 0,         // bool (read as bytes: any non-zero byte is true)
  kInput = 1,        // the inputs' dtype T
  kAccumulator = 2,  // acc_t<T>
};

struct ExtraMask {
  const void* data = nullptr;
  int64_t mask_n = 1;
  MaskKind kind = MaskKind::kBool;
};

struct ExtraMasks {
  static constexpr int kMax = 4;
  ExtraMask mask[kMax];
  int size = 0;

  // Whether the combined weights stay 0/1 (every extra mask boolean).
  bool all_bool() const {
    for (int k = 0; k < size; ++k) {
      if (mask[k].kind != MaskKind::kBool) return false;
    }
    return true;
  }
};

template <typename T>
size_t mask_kind_bytes(MaskKind kind) {
  switch (kind) {
    case MaskKind::kBool:
      return 1;
    case MaskKind::kInput:
      return sizeof(T);
    case MaskKind::kAccumulator:
      return sizeof(acc_t<T>);
  }
  return 1;
}

// y_true read in another dtype than y_pred's: 0/1 or integer labels, which
// the kernels convert to T element by element as tf.cast would (integers
// through the accumulator type), so no full-size cast precedes them.
enum class LabelKind : int { kBool = 1, kInt32 = 2, kInt64 = 3 };

struct Labels {
  const void* data = nullptr;  // null: y_true holds T values
  LabelKind kind = LabelKind::kBool;

  size_t bytes() const { return kind == LabelKind::kBool ? 1 : kind == LabelKind::kInt32 ? 4 : 8; }
};

// Label i of `labels` as T.
template <typename T>
MO_HD T label_as(const Labels& labels, int64_t i) {
  using Acc = acc_t<T>;
  switch (labels.kind) {
    case LabelKind::kBool:
      return from_acc<T>(static_cast<const uint8_t*>(labels.data)[i] != 0 ? Acc(1) : Acc(0));
    case LabelKind::kInt32:
      return from_acc<T>(Acc(static_cast<const int32_t*>(labels.data)[i]));
    default:
      return from_acc<T>(Acc(static_cast<const int64_t*>(labels.data)[i]));
  }
}

// The mask has mask_n entries and each covers `inner` consecutive elements:
// mask_n == n means an elementwise mask, a leading-prefix mask (B, T) on
// inputs (B, T, F) has inner == F, and a 0-d mask (mask_n == 1) covers all.
// padding_value is NaN when there is no padding: NaN never compares equal.
template <typename T, typename M>
struct MaskedInputs {
  const T* y_true = nullptr;  // null when `labels` holds y_true
  Labels labels;
  const T* y_pred = nullptr;
  const M* mask = nullptr;
  int64_t n = 0;
  int64_t mask_n = 1;
  double padding_value = 0.0;
  ExtraMasks extra;

  int64_t inner() const { return mask_n == 0 ? 0 : n / mask_n; }
  bool aligned() const {
    bool ok = is_aligned(y_true) && is_aligned(y_pred) && is_aligned(mask) &&
              reinterpret_cast<uintptr_t>(labels.data) % labels.bytes() == 0;
    for (int k = 0; k < extra.size; ++k) {
      ok = ok && reinterpret_cast<uintptr_t>(extra.mask[k].data) %
                         mask_kind_bytes<T>(extra.mask[k].kind) ==
                     0;
    }
    return ok;
  }
  static bool covers(int64_t n, int64_t entries) {
    return entries >= 0 && (entries == 0 ? n == 0 : n % entries == 0);
  }
  bool valid_shape() const {
    bool ok = n >= 0 && covers(n, mask_n) && extra.size >= 0 && extra.size <= ExtraMasks::kMax &&
              !(y_true != nullptr && labels.data != nullptr) &&
              (n == 0 || y_true != nullptr || labels.data != nullptr);
    for (int k = 0; ok && k < extra.size; ++k) {
      // Empty tensors may have no buffer.
      ok = covers(n, extra.mask[k].mask_n) &&
           (extra.mask[k].data != nullptr || extra.mask[k].mask_n == 0);
    }
    return ok;
  }
};

// Scalars the backward reads (device pointers on GPU, host pointers on CPU),
// all in the accumulator type: the upstream gradients of the forward's
// loss, sum and weight_sum outputs, and the forward's loss and weight_sum.
template <typename Acc>
struct BackwardScalars {
  const Acc* grad_loss = nullptr;
  const Acc* grad_sum = nullptr;
  const Acc* grad_weight_sum = nullptr;
  const Acc* loss = nullptr;
  const Acc* weight_sum = nullptr;
};

// Per-element gradient coefficients derived from BackwardScalars:
//   d/dp = keep ? a * (w * scale) * grad_pred : 0,   likewise d/dt,
//   d/dw = keep ? (a * value + b) * scale + c : 0   (summed over the elements w covers).
// scale is 1 unless weight_sum is so small (subnormal weights) that
// 1 / weight_sum would overflow although every w / weight_sum is finite: then
// a and b are kept 2^64 times smaller, and b is added before scaling so that
// a * value and b cancel before they could overflow.
template <typename Acc>
struct GradCoefficients {
  Acc a;
  Acc b;
  Acc c;
  Acc scale;

  MO_HD Acc times_weight(Acc w) const { return a * (w * scale); }
  MO_HD Acc weight_gradient(Acc value) const { return (a * value + b) * scale + c; }
  // The same in double, for terms that are summed into a row's mask gradient:
  // scaled in Acc one by one they could overflow although their sum does not.
  MO_HD double weight_gradient_term(Acc value) const {
    return double(a * value + b) * double(scale) + double(c);
  }
};

template <typename Acc>
MO_HD GradCoefficients<Acc> grad_coefficients(Acc grad_loss, Acc grad_sum, Acc grad_weight_sum,
                                              Acc loss, Acc weight_sum, Reduction reduction) {
  if (reduction == Reduction::kSum) return {grad_loss + grad_sum, Acc(0), grad_weight_sum, Acc(1)};
  // The mean is defined as exactly 0 when weight_sum == 0: no gradient flows through it.
  if (weight_sum == Acc(0)) return {grad_sum, Acc(0), grad_weight_sum, Acc(1)};
  const bool tiny =
      weight_sum < Acc(5.421010862427522e-20) && weight_sum > Acc(-5.421010862427522e-20);
  const Acc scale = tiny ? Acc(18446744073709551616.0) : Acc(1);  // 2^-64 and 2^64
  const Acc inv = Acc(1) / (weight_sum * scale);
  return {grad_loss * inv + grad_sum / scale, -(grad_loss * loss * inv), grad_weight_sum, scale};
}

// Final loss from the double-precision totals.
MO_HD double finalize_loss(double sum, double weight_sum, Reduction reduction) {
  if (reduction == Reduction::kSum) return sum;
  return weight_sum != 0.0 ? sum / weight_sum : 0.0;
}

}  // namespace masked_ops
