// Masked binary cross-entropy, as keras.losses.BinaryCrossentropy. With the
// smoothed target z = t (1 - s) + s / 2 (s = label_smoothing, Keras's rule):
//   from probabilities: p clipped to [eps, 1 - eps] (eps = 1e-7, Keras's
//     epsilon), value = -(z log p + (1 - z) log(1 - p)); no gradient flows
//     through the clipping outside [eps, 1 - eps], as in TensorFlow;
//   from logits x: value = max(x, 0) - x z + log1p(exp(-|x|)) (the stable
//     form of tf.nn.sigmoid_cross_entropy_with_logits), d/dx = sigmoid(x) - z.
// Parameter: label_smoothing in [0, 1].
#pragma once

#include "../loss_math.h"
#include "../masked_loss.h"

namespace masked_ops {

struct BinaryCrossentropyBase {
  static constexpr int kNumParams = 1;
  static const char* invalid_params(const LossParams& p) {
    return p.value[0] >= 0 && p.value[0] <= 1 ? nullptr : "label_smoothing must be in [0, 1]";
  }
  MO_HD explicit BinaryCrossentropyBase(const LossParams& p) : smoothing(p.value[0]) {}

  // Without a branch on smoothing == 0 (it would stop the lane loops'
  // vectorization): t * 1 + 0 is t.
  template <typename Acc>
  MO_HD Acc target(Acc t) const {
    return t * Acc(1.0 - smoothing) + Acc(0.5 * smoothing);
  }
  // d z / d t
  template <typename Acc>
  MO_HD Acc target_scale() const {
    return Acc(1.0 - smoothing);
  }

  double smoothing;
};

struct BinaryCrossentropy : BinaryCrossentropyBase {
  static constexpr double kEpsilon = 1e-7;
  MO_HD explicit BinaryCrossentropy(const LossParams& p = {{0.0}, 1}) : BinaryCrossentropyBase(p) {}

  template <typename Acc>
  MO_HD static Acc clipped(Acc p) {
    return math::clip(p, Acc(kEpsilon), Acc(1.0 - kEpsilon));
  }
  template <typename Acc>
  MO_HD Acc value(Acc t, Acc p) const {
    const Acc z = target(t);
    const auto logs = math::log_and_log_one_minus(clipped(p));
    return -(z * logs.log_c + (Acc(1) - z) * logs.log_one_minus_c);
  }
  template <typename Acc>
  MO_HD Acc grad_pred(Acc t, Acc p) const {
    const Acc z = target(t);
    const Acc c = clipped(p);
    // (1 - z) / (1 - c) - z / c over one division; it does not cancel
    // where the two terms are close (z near c).
    const Acc g = (c - z) / (c * (Acc(1) - c));
    return math::select(p < Acc(kEpsilon), Acc(0),
                        math::select(p > Acc(1.0 - kEpsilon), Acc(0), g));
  }
  template <typename Acc>
  MO_HD Acc grad_true(Acc, Acc p) const {
    const auto logs = math::log_and_log_one_minus(clipped(p));
    return target_scale<Acc>() * (logs.log_one_minus_c - logs.log_c);
  }
};

struct BinaryCrossentropyFromLogits : BinaryCrossentropyBase {
  MO_HD explicit BinaryCrossentropyFromLogits(const LossParams& p = {{0.0}, 1})
      : BinaryCrossentropyBase(p) {}

  template <typename Acc>
  MO_HD Acc value(Acc t, Acc x) const {
    const Acc relu = math::select(x >= Acc(0), x, Acc(0));
    return relu - x * target(t) + math::log1p_of_at_most_one(math::exp(-math::abs(x)));
  }
  // sigmoid(x) - z, written as TensorFlow's gradient of its formula computes
  // it: 1 - z - e / (1 + e) for x >= 0, e / (1 + e) - z otherwise (e =
  // exp(-|x|)), which does not cancel where the target matches a saturated
  // sigmoid (z = 1, large x: -e / (1 + e), not 1 - 1).
  template <typename Acc>
  MO_HD Acc grad_pred(Acc t, Acc x) const {
    const Acc e = math::exp(-math::abs(x));
    const Acc tail = e / (Acc(1) + e);
    const Acc z = target(t);
    return math::select(x >= Acc(0), (Acc(1) - z) - tail, tail - z);
  }
  template <typename Acc>
  MO_HD Acc grad_true(Acc, Acc x) const {
    return -(target_scale<Acc>() * x);
  }
};

}  // namespace masked_ops
