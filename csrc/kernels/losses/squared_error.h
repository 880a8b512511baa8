// Masked mean squared error: value = (t - p)^2.
#pragma once

#include "../loss_math.h"
#include "../masked_loss.h"

namespace masked_ops {

struct SquaredError {
  static constexpr int kNumParams = 0;
  static const char* invalid_params(const LossParams&) { return nullptr; }
  MO_HD explicit SquaredError(const LossParams& = {}) {}

  template <typename Acc>
  MO_HD Acc value(Acc t, Acc p) const {
    const Acc d = t - p;
    return d * d;
  }
  template <typename Acc>
  MO_HD Acc grad_pred(Acc t, Acc p) const {
    return Acc(2) * (p - t);
  }
  template <typename Acc>
  MO_HD Acc grad_true(Acc t, Acc p) const {
    return Acc(2) * (t - p);
  }
};

}  // namespace masked_ops
