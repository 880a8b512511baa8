// Categorical cross-entropy over rows of V classes, exactly as Keras 3
// computes it on the TensorFlow backend (keras/src/losses/losses.py,
// keras/src/backend/tensorflow/nn.py): that source is the spec of every rule
// below. x is a row of y_pred, y its label (sparse forms), t its dense
// targets; eps = 1e-7 (keras.backend.epsilon()) and clip(v) = min(max(v,
// eps), 1 - eps) with eps and 1 - eps rounded to the accumulator type;
// lse(x) = log sum_j exp(x_j).
//
// SparseCategoricalCrossentropyFromLogits (tf.nn.sparse_softmax_cross_entropy_with_logits):
//   value = lse(x) - x_y,  d/dx_j = softmax(x)_j - [j == y].
// CategoricalCrossentropyFromLogits (tf.nn.softmax_cross_entropy_with_logits):
//   z = t (1 - s) + s / V (label smoothing s, categorical_crossentropy's rule,
//   s / V formed in the accumulator type as Keras forms it in y_pred's dtype),
//   value = sum_j z_j (lse(x) - x_j),  d/dx_j = softmax(x)_j - z_j: TF's
//   gradient of the op, the derivative of value when the row's z sums to 1
//   (one-hot or probability targets, smoothed or not). A -inf logit with
//   z = 0 gives NaN, as in TF (0 * inf).
// SparseCategoricalCrossentropy (probabilities p): Keras clips p WITHOUT
//   normalizing it and feeds log(clip(p)) to the sparse op as logits, whose
//   softmax re-normalizes after the clipping: with c = clip(p),
//   value = log(sum_j c_j) - log(c_y),
//   d/dp_j = [eps <= p_j <= 1 - eps] (1 / sum c - [j == y] / c_y)
//   (tf.clip_by_value passes no gradient where it clips).
// CategoricalCrossentropy (probabilities p): Keras normalizes by the row sum
//   FIRST, then clips, and does not re-normalize: S = sum_j p_j, q = p / S,
//   c = clip(q), value = -sum_j z_j log(c_j), and TF's autodiff through the
//   clip and the division by S gives
//   d/dp_i = (Z_in - [in_i] z_i / q_i) / S,  in_i = (eps <= q_i <= 1 - eps),
//   Z_in = sum_{j: in_j} z_j.
// ignore_class (sparse forms): Keras sets the label and the row to 0, the
//   row's loss to 0, and masks the row out of the mean; here such a row is
//   simply not kept (row_loss.h). Labels compare with it as integers.
// Out-of-range labels: TF's CPU kernel raises; here kLabelOutOfRange.
//
// Per-row statistics the forward writes and the backward reads instead of a
// second pass over the row (kRowStats values per row, accumulator type):
// the log-sum-exp as (M, sum_j exp(x_j - M)) with M the row's max (lse = M +
// log(sum)) for the logits forms, sum_j c_j for SparseCategoricalCrossentropy,
// and (S, Z_in) for CategoricalCrossentropy. Split so that the gradient keeps
// float32 accuracy: softmax = exp(x - M) / sum as TF computes it; a single
// float32 lse would carry an absolute error of half an ulp of |lse| into
// every exp(x - lse) (2e-6 relative for logits around 40).
#pragma once

#include "../loss_math.h"
#include "../row_loss.h"

namespace masked_ops {

struct RowLossBase {
  static constexpr double kEpsilon = 1e-7;

  MO_HD RowLossBase(double label_smoothing, int64_t classes)
      : smoothing(label_smoothing), classes(classes) {}

  // z = t * target_scale + target_offset: t (1 - s) + s / V, and exactly t for s = 0.
  template <typename Acc>
  MO_HD Acc target_scale() const {
    return Acc(1.0 - smoothing);
  }
  template <typename Acc>
  MO_HD Acc target_offset() const {
    return Acc(smoothing) / Acc(double(classes));
  }

  template <typename Acc>
  MO_HD static Acc clipped(Acc p) {
    return math::clip(p, Acc(kEpsilon), Acc(1.0 - kEpsilon));
  }
  // g where tf.clip_by_value passes the gradient (eps <= v <= 1 - eps, and NaN), else 0.
  template <typename Acc>
  MO_HD static Acc where_unclipped(Acc v, Acc g) {
    return math::select(v < Acc(kEpsilon), Acc(0),
                        math::select(v > Acc(1.0 - kEpsilon), Acc(0), g));
  }

  double smoothing;
  int64_t classes;
};

// Shared by both logits forms: per-row values are formed in double from the
// row's max M, sum_j exp(x_j - M) and the target sums, which are all sums of
// terms of one sign (no cancellation).
struct FromLogitsBase : RowLossBase {
  static constexpr bool kFromLogits = true;
  static constexpr int kRowStats = 2;  // M, sum_j exp(x_j - M)
  using RowLossBase::RowLossBase;

  // The terms of the sums: exp(x - shift) for the running max (or 0) as shift.
  template <typename Acc>
  MO_HD static Acc exp_shifted(Acc x, Acc shift) {
    return math::exp(x - shift);
  }
  // d value / dx for target z from the row's statistics: softmax(x) - z, with
  // inverse_sum = 1 / sum_j exp(x_j - M).
  template <typename Acc>
  MO_HD static Acc grad(Acc x, Acc z, Acc max, Acc inverse_sum) {
    return exp_shifted(x, max) * inverse_sum - z;
  }
};

struct SparseCategoricalCrossentropyFromLogits : FromLogitsBase {
  static constexpr bool kSparse = true;
  using FromLogitsBase::FromLogitsBase;

  // lse - x_y = log(sum) + (M - x_y), both terms >= 0.
  MO_HD static double row_value(double max, double sum_exp, double x_label) {
    return math::log(sum_exp) + (max - x_label);
  }
};

struct CategoricalCrossentropyFromLogits : FromLogitsBase {
  static constexpr bool kSparse = false;
  using FromLogitsBase::FromLogitsBase;

  // sum_j z_j (lse - x_j) = Z log(sum) - sum_j z_j (x_j - M): for z >= 0 both
  // terms are >= 0. z_total = sum_j z_j, zx = sum_j z_j (x_j - M).
  MO_HD static double row_value(double sum_exp, double z_total, double zx) {
    return z_total * math::log(sum_exp) - zx;
  }
};

struct SparseCategoricalCrossentropy : RowLossBase {
  static constexpr bool kSparse = true;
  static constexpr bool kFromLogits = false;
  static constexpr int kRowStats = 1;
  using RowLossBase::RowLossBase;

  // From the row statistic sum_j clip(p_j).
  MO_HD static double row_value(double sum_clipped, double clipped_label) {
    return math::log(sum_clipped) - math::log(clipped_label);
  }
  // d value / dp_j for j != y, and for j == y.
  template <typename Acc>
  MO_HD static Acc grad(Acc p, Acc inverse_sum) {
    return where_unclipped(p, inverse_sum);
  }
  template <typename Acc>
  MO_HD static Acc grad_label(Acc p, Acc inverse_sum) {
    return where_unclipped(p, inverse_sum - Acc(1) / clipped(p));
  }
};

struct CategoricalCrossentropy : RowLossBase {
  static constexpr bool kSparse = false;
  static constexpr bool kFromLogits = false;
  static constexpr int kRowStats = 2;  // S, Z_in
  using RowLossBase::RowLossBase;

  // q = p / S, Keras's normalization by the row sum.
  template <typename Acc>
  MO_HD static Acc normalized(Acc p, Acc row_sum) {
    return p / row_sum;
  }
  // z log(clip(q)) (the value is minus their sum), and z where q is not clipped (Z_in's terms).
  template <typename Acc>
  MO_HD static Acc log_term(Acc z, Acc q) {
    return z * math::log(clipped(q));
  }
  template <typename Acc>
  MO_HD static Acc unclipped_target(Acc z, Acc q) {
    return where_unclipped(q, z);
  }
  template <typename Acc>
  MO_HD static Acc grad(Acc z, Acc q, Acc row_sum, Acc z_in) {
    return (z_in - where_unclipped(q, z / q)) / row_sum;
  }
};

}  // namespace masked_ops
