// Storage types, accumulator types and conversions shared by the CPU and CUDA
// kernels. Framework-free: the 16-bit types are layout-compatible with
// Eigen::half / Eigen::bfloat16 / __half / __nv_bfloat16, so adapters can pass
// their pointers through reinterpret_cast.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MO_HD __host__ __device__ __forceinline__
#else
#define MO_HD inline
#endif

namespace masked_ops {

struct alignas(2) half_t {
  uint16_t bits;
};
struct alignas(2) bfloat16_t {
  uint16_t bits;
};

// 16-bit and float32 inputs accumulate in float32; float64 in float64.
template <typename T>
struct AccumulatorOf {
  using type = float;
};
template <>
struct AccumulatorOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccumulatorOf<T>::type;

MO_HD float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

MO_HD uint32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// IEEE binary16 -> binary32, exact. Both paths are computed and one selected,
// so the host compiler can vectorize it.
MO_HD float half_bits_to_float(uint16_t h) {
  const uint32_t exp_mask = 0x7c00u << 13;  // binary16 exponent, moved to binary32 place
  const uint32_t shifted = (uint32_t(h) & 0x7fffu) << 13;
  const uint32_t exp = shifted & exp_mask;
  // Normal numbers: rebias the exponent; Inf/NaN: exponent all ones.
  const uint32_t normal =
      shifted + ((127u - 15u) << 23) + (exp == exp_mask ? (128u - 16u) << 23 : 0u);
  // Zero / subnormal: renormalize through a float subtraction.
  const uint32_t subnormal = bits_from_float(float_from_bits(shifted + ((127u - 15u + 1u) << 23)) -
                                             float_from_bits(113u << 23));
  const uint32_t magnitude = exp == 0 ? subnormal : normal;
  return float_from_bits(magnitude | ((uint32_t(h) & 0x8000u) << 16));
}

// binary32 -> binary16 with round-to-nearest-even; NaN stays NaN, overflow -> Inf.
MO_HD uint16_t float_to_half_bits(float value) {
  const uint32_t bits = bits_from_float(value);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t u = bits ^ sign;
  // Too large for binary16, Inf or NaN.
  const uint32_t big = u > (255u << 23) ? 0x7e00u : 0x7c00u;
  // Subnormal or zero result: let a float addition do the rounding.
  const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t small = bits_from_float(float_from_bits(u) + float_from_bits(magic)) - magic;
  // Normal: rebias, round to nearest even on the 13 dropped bits.
  const uint32_t normal =
      (u + (uint32_t(int32_t(15 - 127)) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  const uint32_t o = u >= ((127u + 16u) << 23) ? big : (u < (113u << 23) ? small : normal);
  return uint16_t(o | (sign >> 16));
}

MO_HD float bfloat16_bits_to_float(uint16_t b) { return float_from_bits(uint32_t(b) << 16); }

// binary32 -> bfloat16 with round-to-nearest-even; NaN stays a quiet NaN.
MO_HD uint16_t float_to_bfloat16_bits(float value) {
  const uint32_t u = bits_from_float(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

MO_HD float to_acc(half_t x) { return half_bits_to_float(x.bits); }
MO_HD float to_acc(bfloat16_t x) { return bfloat16_bits_to_float(x.bits); }
MO_HD float to_acc(float x) { return x; }
MO_HD double to_acc(double x) { return x; }

template <typename T>
struct Store;
template <>
struct Store<half_t> {
  MO_HD static half_t from(float x) { return half_t{float_to_half_bits(x)}; }
};
template <>
struct Store<bfloat16_t> {
  MO_HD static bfloat16_t from(float x) { return bfloat16_t{float_to_bfloat16_bits(x)}; }
};
template <>
struct Store<float> {
  MO_HD static float from(float x) { return x; }
};
template <>
struct Store<double> {
  MO_HD static double from(double x) { return x; }
};

template <typename T, typename Acc>
MO_HD T from_acc(Acc x) {
  return Store<T>::from(x);
}

// keep ? x : 0 as a bitwise AND on the host, where a branch-free form lets the
// compiler vectorize (a ternary on a float may not be if-converted); still a
// select, so NaN/Inf in x never leak when keep is false.
MO_HD float select_or_zero(bool keep, float x) {
#if defined(__CUDA_ARCH__)
  return keep ? x : 0.0f;
#else
  return float_from_bits(bits_from_float(x) & (0u - uint32_t(keep)));
#endif
}

MO_HD double select_or_zero(bool keep, double x) {
#if defined(__CUDA_ARCH__)
  return keep ? x : 0.0;
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  u &= 0ull - uint64_t(keep);
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// Weight of one mask entry in the accumulator type: booleans are 0/1, float
// masks are per-position weights.
template <typename Acc, typename M>
struct MaskWeight {
  MO_HD static Acc of(M m) { return Acc(to_acc(m)); }
};
template <typename Acc>
struct MaskWeight<Acc, bool> {
  MO_HD static Acc of(bool m) { return m ? Acc(1) : Acc(0); }
};

}  // namespace masked_ops
