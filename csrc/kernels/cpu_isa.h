// Runtime choice of the vector instruction set for the CPU kernels.
//
// TensorFlow's wheels require AVX only, so the kernels are compiled for AVX;
// on that baseline the lane loops run on 8-float vectors without 256-bit
// integer operations, which bounds the transcendental losses (XLA compiles for
// the host and uses AVX-512 where it exists). The hot per-chunk functions are
// therefore compiled three times (baseline, AVX2+FMA, AVX-512) and one is
// chosen per call from the CPU's features, read once. Every level gives the
// same bits: FMA contraction is off (-ffp-contract=off), the lanes are
// independent accumulators whatever the vector width, and only IEEE-exact
// operations differ in encoding. MASKED_OPS_CPU_ISA=baseline|avx2|avx512 lowers
// the level (never above what the CPU has), so the tests can compare levels.
#pragma once

#include <cstdlib>
#include <cstring>

namespace masked_ops {
namespace cpu {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    default:
      return "baseline";
  }
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define MO_CPU_DISPATCH 1
// `flatten` inlines the whole call tree (functor math, lane loops) into the
// clone, so all of it is compiled for the clone's instruction set.
#define MO_CPU_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,f16c,lzcnt,popcnt"), flatten))
#define MO_CPU_AVX512                                                                      \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c,lzcnt," \
                        "popcnt"),                                                         \
                 flatten))

inline Isa detect_isa() {
  __builtin_cpu_init();
  Isa best = Isa::kBaseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    best = Isa::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
      best = Isa::kAvx512;
    }
  }
  if (const char* asked = std::getenv("MASKED_OPS_CPU_ISA")) {
    for (Isa lower : {Isa::kBaseline, Isa::kAvx2}) {
      if (std::strcmp(asked, isa_name(lower)) == 0 && lower < best) best = lower;
    }
  }
  return best;
}
#else
inline Isa detect_isa() { return Isa::kBaseline; }
#endif

inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

}  // namespace cpu
}  // namespace masked_ops
