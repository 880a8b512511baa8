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

// log(c) and log(1 - c), from math::log_and_log_one_minus.
template <typename A>
struct LogPair {
  A log_c;
  A log_one_minus_c;
};

#if defined(__CUDA_ARCH__)
MO_HD float exp(float x) { return expf(x); }
MO_HD float log(float x) { return logf(x); }
MO_HD float log1p(float x) { return log1pf(x); }
MO_HD float log1p_of_nonnegative(float x) { return log1pf(x); }
#else
// float32 exp, log and log1p on the host: libm's are calls the compiler cannot
// vectorize, which made the cross-entropies 2-5x slower than XLA's vectorized
// formulas. These are branch-free Cephes-style polynomials that vectorize
// inside the kernels' lane loops, checked against float64 in the tests
// (tests/test_losses.py, through masked_ops/_math_check.so): exp and log
// within 1 ulp of the correctly rounded result, log1p_of_at_most_one within
// 1, log1p_of_nonnegative within 2.5. Every step is an operation AVX (without
// AVX2) has for 8 floats: float arithmetic, compares and selects, and/or on
// the bits, int32 <-> float conversions, but no integer add or shift, which
// would make the compiler fall back to 4-float vectors for the whole loop.
// Special values as IEEE, except that exp's results below the normal range
// flush to 0 (log keeps subnormal arguments).

// Always inlined: a call per element would stop the lane loops' vectorization.
#define MO_MATH_INLINE inline __attribute__((always_inline))

MO_HD float log1p(float x) { return log1pf(x); }

namespace detail {

// Cephes's polynomial for log(1 + f) - f + f^2 / 2 (z = f^2), f in
// [sqrt(1/2) - 1, sqrt(2) - 1]. Evaluated by Estrin's scheme (pairs of
// coefficients, then powers of z), not Horner's: the lane loops are bound by
// this chain's latency, and Estrin's is 7 operations deep instead of 16 (25%
// faster in the cross-entropy).
MO_MATH_INLINE float log1p_cubic_part(float f, float z) {
  const float z2 = z * z;
  const float p01 = 3.3333331174e-1f + f * -2.4999993993e-1f;
  const float p23 = 2.0000714765e-1f + f * -1.6668057665e-1f;
  const float p45 = 1.4249322787e-1f + f * -1.2420140846e-1f;
  const float p67 = 1.1676998740e-1f + f * -1.1514610310e-1f;
  const float p03 = p01 + z * p23;
  const float p47 = p45 + z * p67;
  const float y = (p03 + z2 * p47) + (z2 * z2) * 7.0376836292e-2f;
  return y * f * z;
}

// log(m 2^e) from f = m - 1 with m in [sqrt(1/2), sqrt(2)), e log(2) in two parts.
MO_MATH_INLINE float log_reduced(float f, float e) {
  const float z = f * f;
  float y = log1p_cubic_part(f, z);
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return (f + y) + 0.693359375f * e;
}

// The same plus a small correction tail (for an argument that was rounded),
// added with the small terms.
MO_MATH_INLINE float log_reduced(float f, float e, float tail) {
  const float z = f * f;
  float y = log1p_cubic_part(f, z);
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  y += tail;
  return (f + y) + 0.693359375f * e;
}

// log(x 2^bias) for positive, finite, normal x. The exponent and mantissa come
// from and/or on the bits and an int32 -> float conversion instead of a shift
// (with the shift, the lane loops fell back to 4-float vectors and this was
// slower than libm's logf).
MO_MATH_INLINE float log_of_normal(float x, float bias = 0.0f) {
  const uint32_t u = bits_from_float(x);
  // The biased exponent times 2^23 is an int32 that float holds exactly.
  float e = float(int32_t(u & 0x7f800000u)) * 1.1920928955078125e-7f + (bias - 127.0f);
  float m = float_from_bits((u & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1.0f : e;
  return log_reduced(m - 1.0f, e);
}

}  // namespace detail

// log(x) for any float: subnormals are scaled by 2^23 into the normal range
// (exactly) first; log(0) = -inf, log(inf) = inf, NaN for x < 0, NaN
// propagates.
MO_MATH_INLINE float log(float x) {
  const bool subnormal = x < 1.17549435e-38f;
  const float r = detail::log_of_normal(subnormal ? x * 8388608.0f : x, subnormal ? -23.0f : 0.0f);
  // Selects of floats one after the other (no && of conditions: GCC then
  // builds a select of booleans, which it cannot vectorize).
  const float positive = x > 0.0f ? r : (x == 0.0f ? -__builtin_inff() : __builtin_nanf(""));
  return x < __builtin_inff() ? positive : x;  // inf and NaN are themselves
}

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
  // The bits of 2^n are (n + 127) 2^23, formed in float (exact) and
  // converted to int32: no integer add or shift.
  const float biased = (n > 127.0f ? 127.0f : n) + 127.0f;
  const float pow2 = float_from_bits(uint32_t(int32_t(biased * 8388608.0f)));
  float r = y * pow2 * top;
  r = x < -87.33654f ? 0.0f : r;
  r = x > 88.72283f ? __builtin_inff() : r;
  return x != x ? x : r;
}

// log(c) and log(1 - c) for c in [2^-126, 1 - 2^-24] (c and 1 - c positive
// normal floats: the cross-entropy's clipped probability) or NaN, which
// propagates to both; other c are outside the domain. Bitwise equal to log(c)
// and log(1 - c), with less work: of lo = min(c, 1 - c) and hi = max(c, 1 - c),
// hi is in [1/2, 1], whose exponent is known, so only lo's log takes its
// exponent and mantissa from the bits, and neither needs log's special cases.
MO_MATH_INLINE LogPair<float> log_and_log_one_minus(float c) {
  const float d = 1.0f - c;
  const bool small = c < 0.5f;
  const float lo = small ? c : d;
  const float hi = small ? d : c;
  // As log_of_normal(hi): m = 2 hi in [1, 2), e = -1, halved above sqrt(2).
  const bool high = hi > 1.41421356f * 0.5f;
  const float log_hi =
      detail::log_reduced(high ? hi - 1.0f : (hi + hi) - 1.0f, high ? 0.0f : -1.0f);
  const float log_lo = detail::log_of_normal(lo);
  const float log_c = small ? log_lo : log_hi;
  const float log_d = small ? log_hi : log_lo;
  return {c == c ? log_c : c, c == c ? log_d : c};
}

// log1p(x) for x in [0, 1] or NaN (the cross-entropy's log1p(exp(-|x|))):
// log(w) + c / w with w = 1 + x in [1, 2] and c = x - (w - 1) its exact
// rounding error. w's exponent is known (no bit manipulation), and there is
// no select on the result, which measured 25% slower in the cross-entropy
// than this division.
MO_MATH_INLINE float log1p_of_at_most_one(float x) {
  const float w = 1.0f + x;
  const float d = w - 1.0f;  // exact
  const float c = x - d;     // exact
  // As log_of_normal: m = w or w / 2 in [sqrt(1/2), sqrt(2)).
  const bool high = w > 1.41421356f;
  return detail::log_reduced(high ? w * 0.5f - 1.0f : d, high ? 1.0f : 0.0f, c / w);
}

// log1p(x) for x in [0, 2^127] or NaN: log(w) x / (w - 1) with w = 1 + x (the
// ratio corrects w's rounding), x itself where w rounds to 1.
MO_MATH_INLINE float log1p_of_nonnegative(float x) {
  const float w = 1.0f + x;
  const float d = w - 1.0f;
  const float r = d == 0.0f ? x : detail::log_of_normal(w) * (x / d);
  return x != x ? x : r;
}
#endif

// log(c) and log(1 - c) (the host's float overload above shares their work).
template <typename A>
MO_HD LogPair<A> log_and_log_one_minus(A c) {
  return {log(c), log(A(1) - c)};
}

// log1p(x) for x in [0, 1] (the host's float overload above is faster).
template <typename A>
MO_HD A log1p_of_at_most_one(A x) {
  return log1p_of_nonnegative(x);
}

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
