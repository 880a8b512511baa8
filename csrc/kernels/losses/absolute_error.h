// Masked mean absolute error: value = |t - p|; the gradient at t == p is 0,
// as TensorFlow's gradient of abs.
#pragma once

#include "../loss_math.h"
#include "../masked_loss.h"

namespace masked_ops {

struct AbsoluteError {
  static constexpr int kNumParams = 0;
  static const char* invalid_params(const LossParams&) { return nullptr; }
  MO_HD explicit AbsoluteError(const LossParams& = {}) {}

  template <typename Acc>
  MO_HD Acc value(Acc t, Acc p) const {
    return math::abs(t - p);
  }
  template <typename Acc>
  MO_HD Acc grad_pred(Acc t, Acc p) const {
    return math::sign(p - t);
  }
  template <typename Acc>
  MO_HD Acc grad_true(Acc t, Acc p) const {
    return math::sign(t - p);
  }
};

}  // namespace masked_ops
