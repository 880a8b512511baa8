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
MO_HD double exp(double x) { return ::exp(x); }
MO_HD double log(double x) { return ::log(x); }
MO_HD double log1p(double x) { return ::log1p(x); }
MO_HD double log1p_of_nonnegative(double x) { return ::log1p(x); }

#if defined(__CUDA_ARCH__)
MO_HD float exp(float x) { return expf(x); }
MO_HD float log(float x) { return logf(x); }
MO_HD float log1p(float x) { return log1pf(x); }
MO_HD float log1p_of_nonnegative(float x) { return log1pf(x); }
#else
// float32 exp and log1p on the host: libm's are calls the compiler cannot
// vectorize, which made the cross-entropy from logits 5x slower than XLA's
// vectorized formula. These are branch-free Cephes-style polynomials (exp
// within 1 ulp of the correctly rounded result, log1p within 2.5, checked
// against float64 in the tests) that vectorize inside the kernels' lane
// loops: 2.5-3x faster than libm there. log stays libm's logf: in the
// cross-entropy from probabilities (two logs per element) the polynomial
// measured 2x slower than logf with the AVX baseline's 128-bit integer ops.
// Special values as IEEE, except that results below the normal range flush to 0.

// Always inlined: a call per element would stop the lane loops' vectorization.
#define MO_MATH_INLINE inline __attribute__((always_inline))

MO_HD float log(float x) { return logf(x); }
MO_HD float log1p(float x) { return log1pf(x); }

namespace detail {

// log(x) for x >= 1 (log1p's argument): x = m 2^e with m in [sqrt(1/2),
// sqrt(2)), log(1 + f) for f = m - 1 by a polynomial, e log(2) in two parts.
MO_MATH_INLINE float log_at_least_one(float x) {
  const uint32_t u = bits_from_float(x);
  float e = float(int32_t(u >> 23) - 127);
  float m = float_from_bits((u & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1.0f : e;
  const float f = m - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return (f + y) + 0.693359375f * e;
}

}  // namespace detail

// exp(x) = 2^n exp(g), g = x - n log(2) in [-log(2)/2, log(2)/2].
MO_MATH_INLINE float exp(float x) {
  const float clamped = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
  const float n = floorf(clamped * 1.44269504088896341f + 0.5f);
  const float g = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  const float z = g * g;
  float y = 1.9875691500e-4f;
  y = y * g + 1.3981999507e-3f;
  y = y * g + 8.3334519073e-3f;
  y = y * g + 4.1665795894e-2f;
  y = y * g + 1.6666665459e-1f;
  y = y * g + 5.0000001201e-1f;
  y = y * z + g + 1.0f;
  // 2^n for n in [-126, 128): n = 128 (x near the top) as 2 * 2^127.
  const float top = n > 127.0f ? 2.0f : 1.0f;
  const float pow2 = float_from_bits(uint32_t(int32_t(n > 127.0f ? 127.0f : n) + 127) << 23);
  float r = y * pow2 * top;
  r = x < -87.33654f ? 0.0f : r;
  r = x > 88.72283f ? __builtin_inff() : r;
  return x != x ? x : r;
}

// log1p(x) for x in [0, 2^127] or NaN (the cross-entropy's
// log1p(exp(-|x|))): log(w) x / (w - 1) with w = 1 + x (the ratio corrects
// w's rounding), x itself where w rounds to 1.
MO_MATH_INLINE float log1p_of_nonnegative(float x) {
  const float w = 1.0f + x;
  const float d = w - 1.0f;
  const float r = d == 0.0f ? x : detail::log_at_least_one(w) * (x / d);
  return x != x ? x : r;
}
#endif

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
