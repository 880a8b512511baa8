// Masked Huber loss, as keras.losses.Huber: with e = p - t,
//   value = |e| <= delta ? 0.5 e^2 : delta |e| - 0.5 delta^2.
// Parameter: delta (> 0).
#pragma once

#include "../loss_math.h"
#include "../masked_loss.h"

namespace masked_ops {

struct Huber {
  static constexpr int kNumParams = 1;
  static const char* invalid_params(const LossParams& p) {
    return p.value[0] > 0 && p.value[0] < 1e300 ? nullptr : "delta must be positive and finite";
  }
  MO_HD explicit Huber(const LossParams& p = {{1.0}, 1}) : delta(p.value[0]) {}

  template <typename Acc>
  MO_HD Acc value(Acc t, Acc p) const {
    const Acc e = p - t;
    const Acc a = math::abs(e);
    const Acc d = Acc(delta);
    // Keras's order of operations, so float32 results match it.
    return math::select(a <= d, Acc(0.5) * (e * e), d * a - Acc(0.5) * (d * d));
  }
  template <typename Acc>
  MO_HD Acc grad_pred(Acc t, Acc p) const {
    const Acc e = p - t;
    const Acc d = Acc(delta);
    return math::select(math::abs(e) <= d, e, d * math::sign(e));
  }
  template <typename Acc>
  MO_HD Acc grad_true(Acc t, Acc p) const {
    return -grad_pred(t, p);
  }

  double delta;
};

}  // namespace masked_ops
