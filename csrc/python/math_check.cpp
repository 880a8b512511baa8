// masked_ops/_math_check.so: the host float32 math of csrc/kernels/loss_math.h
// over arrays, with a plain C interface for the tests (tests/test_losses.py
// loads it with ctypes and checks it against float64). Compiled with the
// kernels' flags, so it runs the code the lane loops inline.
#include <cstdint>
#include <cstring>

#include "../kernels/loss_math.h"

namespace {

template <class F>
void apply(const float* x, float* y, int64_t n, F f) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

}  // namespace

#define MO_EXPORT extern "C" __attribute__((visibility("default")))

// Writes fn(x[i]) to y[i]; y2 (log_and_log_one_minus only) gets the second
// result. Returns 0, or -1 for an unknown name.
MO_EXPORT int masked_ops_math_check(const char* fn, const float* x, float* y, float* y2,
                                    int64_t n) {
  namespace math = masked_ops::math;
  if (std::strcmp(fn, "log") == 0) {
    apply(x, y, n, [](float v) { return math::log(v); });
  } else if (std::strcmp(fn, "exp") == 0) {
    apply(x, y, n, [](float v) { return math::exp(v); });
  } else if (std::strcmp(fn, "log1p_of_nonnegative") == 0) {
    apply(x, y, n, [](float v) { return math::log1p_of_nonnegative(v); });
  } else if (std::strcmp(fn, "log1p_of_at_most_one") == 0) {
    apply(x, y, n, [](float v) { return math::log1p_of_at_most_one(v); });
  } else if (std::strcmp(fn, "log_and_log_one_minus") == 0) {
    apply(x, y, n, [](float v) { return math::log_and_log_one_minus(v).log_c; });
    apply(x, y2, n, [](float v) { return math::log_and_log_one_minus(v).log_one_minus_c; });
  } else {
    return -1;
  }
  return 0;
}
