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

#include <cstdint>

#include "numeric_types.h"

namespace masked_ops {

enum class Reduction : int { kMean = 0, kSum = 1 };

enum class Status : int {
  kOk = 0,
  kBadShape = 1,  // n is not a multiple of the mask size
  kWorkspaceTooSmall = 2,
  kLaunchFailed = 3,  // CUDA launch / runtime error
  kMisaligned = 4,    // a buffer is not aligned to its element size
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

// The mask has mask_n entries and each covers `inner` consecutive elements:
// mask_n == n means an elementwise mask, a leading-prefix mask (B, T) on
// inputs (B, T, F) has inner == F, and a 0-d mask (mask_n == 1) covers all.
// padding_value is NaN when there is no padding: NaN never compares equal.
template <typename T, typename M>
struct MaskedInputs {
  const T* y_true = nullptr;
  const T* y_pred = nullptr;
  const M* mask = nullptr;
  int64_t n = 0;
  int64_t mask_n = 1;
  double padding_value = 0.0;

  int64_t inner() const { return mask_n == 0 ? 0 : n / mask_n; }
  bool aligned() const { return is_aligned(y_true) && is_aligned(y_pred) && is_aligned(mask); }
  bool valid_shape() const {
    return n >= 0 && mask_n >= 0 && (mask_n == 0 ? n == 0 : n % mask_n == 0);
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
