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

// IEEE binary16 -> binary32, exact, branch-free enough to vectorize.
MO_HD float half_bits_to_float(uint16_t h) {
  const uint32_t exp_mask = 0x7c00u << 13;  // binary16 exponent, moved to binary32 place
  uint32_t o = (uint32_t(h) & 0x7fffu) << 13;
  const uint32_t exp = o & exp_mask;
  o += (127u - 15u) << 23;  // rebias
  float f;
  if (exp == exp_mask) {  // Inf / NaN: exponent all ones
    o += (128u - 16u) << 23;
    f = float_from_bits(o);
  } else if (exp == 0) {  // zero / subnormal: renormalize through a float subtraction
    o += 1u << 23;
    f = float_from_bits(o) - float_from_bits(113u << 23);
  } else {
    f = float_from_bits(o);
  }
  return float_from_bits(bits_from_float(f) | ((uint32_t(h) & 0x8000u) << 16));
}

// binary32 -> binary16 with round-to-nearest-even; NaN stays NaN, overflow -> Inf.
MO_HD uint16_t float_to_half_bits(float value) {
  uint32_t u = bits_from_float(value);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= ((127u + 16u) << 23)) {  // too large for binary16, Inf or NaN
    o = u > (255u << 23) ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // result is subnormal or zero: let float addition round
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const float f = float_from_bits(u) + float_from_bits(magic);
    o = bits_from_float(f) - magic;
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (uint32_t(int32_t(15 - 127)) << 23) + 0xfffu;
    u += mant_odd;
    o = u >> 13;
  }
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
