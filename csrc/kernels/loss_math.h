// The few math functions the loss functors use, for every accumulator type:
// float and double on the host and the device, and the XLA lowering's
// expression type (csrc/tf/xla/xla_value.h overloads the same names). A
// functor writes its element math once, with these and the arithmetic
// operators, and every backend instantiates it.
#pragma once

#include <math.h>

#include "numeric_types.h"

namespace masked_ops {
namespace math {

MO_HD float abs(float x) { return fabsf(x); }
MO_HD double abs(double x) { return fabs(x); }
MO_HD float exp(float x) { return expf(x); }
MO_HD double exp(double x) { return ::exp(x); }
MO_HD float log(float x) { return logf(x); }
MO_HD double log(double x) { return ::log(x); }
MO_HD float log1p(float x) { return log1pf(x); }
MO_HD double log1p(double x) { return ::log1p(x); }

// cond ? a : b. Written as a function so that the XLA expression type, whose
// comparisons are not bools, can overload it.
template <typename A>
MO_HD A select(bool cond, A a, A b) {
  return cond ? a : b;
}

// sign(x) with sign(0) == 0, as TensorFlow's (the derivative of |x| at 0).
template <typename A>
MO_HD A sign(A x) {
  return select(x > A(0), A(1), select(x < A(0), A(-1), A(0)));
}

// min(max(x, lo), hi) as tf.clip_by_value.
template <typename A>
MO_HD A clip(A x, A lo, A hi) {
  const A above = select(x < lo, lo, x);
  return select(above > hi, hi, above);
}

}  // namespace math
}  // namespace masked_ops
