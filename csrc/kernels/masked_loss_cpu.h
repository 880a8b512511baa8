// CPU kernels for any masked loss functor (see masked_loss.h).
//
// Work is cut into fixed chunks of kChunk elements, independent of the thread
// count; each chunk is reduced by one thread into a double-precision partial
// and the partials are combined in chunk order, so results are bitwise
// identical for any number of threads. Inside a chunk, blocks of kBlock
// elements are reduced with kLanes independent accumulators: the compiler can
// vectorize that loop without -ffast-math, and float32 rounding error stays
// bounded by the block length instead of growing with n.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <emmintrin.h>
#include <xmmintrin.h>
#define MO_CPU_X86 1
#endif

#include "cpu_isa.h"
#include "masked_loss.h"

namespace masked_ops {
namespace cpu {

// The lane loops are vectorized with `omp simd` (compile with -fopenmp-simd; no
// OpenMP runtime): the lanes are independent accumulators, so this reorders
// nothing and results do not depend on the vector width.
#define MO_SIMD_LANES _Pragma("omp simd")

constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kBlock = 1024;
constexpr int kLanes = 16;
// Gradients at least this large are written with streaming (non-temporal)
// stores: they do not fit in the caches anyway, and a plain store first reads
// each line it writes, which is a third of a training step's traffic.
constexpr size_t kStreamingBytes = size_t(16) << 20;

// Runs fn(first, last) over task indices [0, num_tasks), possibly on several
// threads; elements_per_task is a cost hint. The adapter supplies it (TF's
// intra-op pool, or a std::thread pool in the Python binding).
using TaskFn = std::function<void(int64_t, int64_t)>;
using ParallelFor =
    std::function<void(int64_t num_tasks, int64_t elements_per_task, const TaskFn& fn)>;

// Subnormal inputs and results are kept (IEEE), whichever thread runs the
// work: TensorFlow's threads flush subnormals to zero (FTZ/DAZ) while the
// binding's and the GPU's do not, and both must give the same bits. The
// guard clears the flush bits for its scope and restores them after.
class IeeeSubnormals {
 public:
#if defined(MO_CPU_X86)
  IeeeSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~kFlushBits); }
  ~IeeeSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFlushBits = 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
  unsigned saved_;
#elif defined(__aarch64__)
  IeeeSubnormals() {
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved_));
    const uint64_t cleared = saved_ & ~kFlushBit;
    __asm__ __volatile__("msr fpcr, %0" : : "r"(cleared));
  }
  ~IeeeSubnormals() { __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_)); }

 private:
  static constexpr uint64_t kFlushBit = uint64_t(1) << 24;  // FPCR.FZ
  uint64_t saved_;
#endif
  IeeeSubnormals(const IeeeSubnormals&) = delete;
  IeeeSubnormals& operator=(const IeeeSubnormals&) = delete;
};

// parallel_for whose tasks each run under IeeeSubnormals (pool threads keep
// their own floating-point control state).
inline ParallelFor with_ieee_subnormals(const ParallelFor& parallel_for) {
  return [&parallel_for](int64_t num_tasks, int64_t elements_per_task, const TaskFn& fn) {
    parallel_for(num_tasks, elements_per_task, [&fn](int64_t first, int64_t last) {
      IeeeSubnormals ieee;
      fn(first, last);
    });
  };
}

inline void run_serially(int64_t num_tasks, int64_t, const TaskFn& fn) {
  if (num_tasks > 0) fn(0, num_tasks);
}

struct Partial {
  double sum = 0.0;
  double weight_sum = 0.0;
  int64_t count = 0;
  void add(const Partial& o) {
    sum += o.sum;
    weight_sum += o.weight_sum;
    count += o.count;
  }
};

inline int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Two-phase workspace query: the forward needs one Partial per chunk.
inline size_t forward_workspace_bytes(int64_t n) { return size_t(num_chunks(n)) * sizeof(Partial); }

namespace detail {

// Null stays null: outputs that are not wanted are passed as nullptr.
template <typename P>
P* offset(P* p, int64_t i) {
  return p != nullptr ? p + i : nullptr;
}

// Writes a group of kLanes values; `stream`: with non-temporal stores (dst
// 16-byte aligned). Same bits either way.
template <class T>
inline void store_group(T* dst, const T* src, bool stream) {
  constexpr size_t kBytes = sizeof(T) * kLanes;
#if defined(MO_CPU_X86)
  static_assert(kBytes % 16 == 0, "a group is whole 16-byte vectors");
  if (stream) {
    for (size_t b = 0; b < kBytes; b += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(reinterpret_cast<char*>(dst) + b),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                           reinterpret_cast<const char*>(src) + b)));
    }
    return;
  }
#endif
  std::memcpy(dst, src, kBytes);
}

// Orders a thread's streaming stores before whatever reads them next.
inline void end_streaming_stores() {
#if defined(MO_CPU_X86)
  _mm_sfence();
#endif
}

// Whether gradients of n elements are written with streaming stores.
template <class T>
bool streaming_output(int64_t n) {
  return size_t(n) * sizeof(T) >= kStreamingBytes;
}

// kLanes independent float accumulators, flushed into a double Partial at
// least every kBlock elements so the float error stays bounded by the block.
// 0/1 (boolean) weights: weight_sum is the count and the value needs no multiply.
template <typename Acc, bool kBinary>
struct LaneSums {
  Acc s[kLanes] = {};
  Acc ws[kLanes] = {};
  Acc c[kLanes] = {};  // exact: at most kBlock / kLanes per lane between flushes
  int64_t pending = 0;

  void flush(Partial& out) {
    for (int l = 0; l < kLanes; ++l) {
      out.sum += double(s[l]);
      out.weight_sum += double(kBinary ? c[l] : ws[l]);
      out.count += int64_t(c[l]);
      s[l] = ws[l] = c[l] = Acc(0);
    }
    pending = 0;
  }
};

// Adds len <= kBlock - acc.pending elements. kElementwise: the weight comes from
// mask[i]; otherwise every element has weight w_const (a prefix-mask row with
// non-zero weight, or no mask).
template <class Loss, class T, class M, bool kElementwise>
void accumulate(const Loss& loss, LaneSums<acc_t<T>, std::is_same<M, bool>::value>& acc,
                const T* yt, const T* yp, const M* mask, acc_t<T> w_const, acc_t<T> pad,
                int64_t len) {
  using Acc = acc_t<T>;
  constexpr bool kBinary = std::is_same<M, bool>::value;
  // A boolean mask is read as bytes (compilers do not vectorize loads of bool)
  // and widened to 0/1 floats first: comparing bytes inside the lane loop
  // mixes 1- and 4-byte vectors, which vectorizes poorly.
  Acc flags[kElementwise && kBinary ? kBlock : 1];
  if constexpr (kElementwise && kBinary) {
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(mask);
    for (int64_t i = 0; i < len; ++i) flags[i] = bytes[i] != 0 ? Acc(1) : Acc(0);
  }
  auto step = [&](int64_t i, int l) {
    const Acc t = to_acc(yt[i]);
    const Acc p = to_acc(yp[i]);
    Acc w = w_const;
    bool keep = t != pad;
    if constexpr (kElementwise && kBinary) {
      keep &= flags[i] != Acc(0);
    } else if constexpr (kElementwise) {
      w = to_acc(mask[i]);
      keep &= w != Acc(0);
    }
    const Acc v = kBinary ? loss.value(t, p) : loss.value(t, p) * w;
    acc.s[l] += select_or_zero(keep, v);
    if (!kBinary) acc.ws[l] += select_or_zero(keep, w);
    acc.c[l] += select_or_zero(keep, Acc(1));
  };
  const int64_t full = len - len % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    MO_SIMD_LANES
    for (int l = 0; l < kLanes; ++l) step(i + l, l);
  }
  for (int64_t i = full; i < len; ++i) step(i, int(i - full));
  acc.pending += len;
}

// Writes the mask entry of each element in [begin, begin + len) to out.
template <class M>
void expand_rows(const M* mask, int64_t inner, int64_t begin, int64_t len, M* out) {
  for (int64_t pos = begin, row = begin / inner; pos < begin + len; ++row) {
    const int64_t seg_end = std::min(begin + len, (row + 1) * inner);
    std::fill(out + (pos - begin), out + (seg_end - begin), mask[row]);
    pos = seg_end;
  }
}

// y_true of elements [begin, begin + len) (len <= kBlock) as T: in place, or
// labels of another dtype converted into buf.
template <class T, class M>
const T* targets(const MaskedInputs<T, M>& in, int64_t begin, int64_t len, T* buf) {
  if (in.labels.data == nullptr) return in.y_true + begin;
  for (int64_t j = 0; j < len; ++j) buf[j] = label_as<T>(in.labels, begin + j);
  return buf;
}

// Calls fn(pos, len, y_true) over [begin, end) in pieces of at most kBlock
// elements (one piece when y_true is read in place).
template <class T, class M, class F>
void for_target_blocks(const MaskedInputs<T, M>& in, int64_t begin, int64_t end, F&& fn) {
  if (in.labels.data == nullptr) {
    if (end > begin) fn(begin, end - begin, in.y_true + begin);
    return;
  }
  T buf[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t len = std::min(kBlock, end - b);
    fn(b, len, targets(in, b, len, buf));
  }
}

// ---- several masks: combined per block, never materialized -----------------

template <class X>
struct TypeTag {
  using type = X;
};

// Combines two weights: their product, or 0 when either is 0 (so a NaN or
// Inf weight under another mask's 0 is not kept: 0 * NaN would be NaN).
template <class Acc>
Acc combine(Acc a, Acc b) {
  return a != Acc(0) && b != Acc(0) ? a * b : Acc(0);
}

// Combines out[j] with the weight of element begin + j under a mask of mask_n
// entries of type E (0/1 for booleans), for j in [0, len).
template <class Acc, class E>
void multiply_weights(const E* mask, int64_t n, int64_t mask_n, int64_t begin, int64_t len,
                      Acc* out) {
  if (mask_n == n) {
    if constexpr (std::is_same<E, bool>::value) {
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(mask) + begin;
      for (int64_t j = 0; j < len; ++j) out[j] = bytes[j] != 0 ? out[j] : Acc(0);
    } else {
      for (int64_t j = 0; j < len; ++j) out[j] = combine(out[j], Acc(to_acc(mask[begin + j])));
    }
    return;
  }
  const int64_t inner = n / mask_n;
  for (int64_t pos = begin, row = begin / inner; pos < begin + len; ++row) {
    const int64_t seg_end = std::min(begin + len, (row + 1) * inner);
    Acc w;
    if constexpr (std::is_same<E, bool>::value) {
      w = reinterpret_cast<const uint8_t*>(mask)[row] != 0 ? Acc(1) : Acc(0);
    } else {
      w = to_acc(mask[row]);
    }
    for (int64_t j = pos - begin; j < seg_end - begin; ++j) out[j] = combine(out[j], w);
    pos = seg_end;
  }
}

// The combined weight of elements [begin, begin + len): `mask` times every
// extra mask, in list order. Returns whether any is non-zero.
template <class T, class M>
bool combined_weights(const MaskedInputs<T, M>& in, int64_t begin, int64_t len, acc_t<T>* out) {
  using Acc = acc_t<T>;
  std::fill(out, out + len, Acc(1));
  if (in.mask != nullptr) multiply_weights(in.mask, in.n, in.mask_n, begin, len, out);
  for (int k = 0; k < in.extra.size; ++k) {
    const ExtraMask& e = in.extra.mask[k];
    switch (e.kind) {
      case MaskKind::kBool:
        multiply_weights(static_cast<const bool*>(e.data), in.n, e.mask_n, begin, len, out);
        break;
      case MaskKind::kInput:
        multiply_weights(static_cast<const T*>(e.data), in.n, e.mask_n, begin, len, out);
        break;
      case MaskKind::kAccumulator:
        multiply_weights(static_cast<const Acc*>(e.data), in.n, e.mask_n, begin, len, out);
        break;
    }
  }
  bool any = false;
  for (int64_t j = 0; j < len; ++j) any |= out[j] != Acc(0);
  return any;
}

// As combined_weights for boolean masks only: 0/1 bytes, so the binary
// (count == weight_sum) path applies.
template <class T, class M>
bool combined_flags(const MaskedInputs<T, M>& in, int64_t begin, int64_t len, bool* out) {
  acc_t<T> w[kBlock];
  const bool any = combined_weights(in, begin, len, w);
  for (int64_t j = 0; j < len; ++j) out[j] = w[j] != acc_t<T>(0);
  return any;
}

template <class Loss, class T, class M>
Partial forward_range_combined(const Loss& loss, const MaskedInputs<T, M>& in, int64_t begin,
                               int64_t end) {
  using Acc = acc_t<T>;
  const Acc pad = Acc(in.padding_value);
  Partial total;
  auto run = [&](auto weight_type) {
    using W = typename decltype(weight_type)::type;
    LaneSums<Acc, std::is_same<W, bool>::value> acc;
    W combined[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t len = std::min(kBlock, end - b);
      bool any;
      if constexpr (std::is_same<W, bool>::value) {
        any = combined_flags(in, b, len, combined);
      } else {
        any = combined_weights(in, b, len, combined);
      }
      // A block nothing keeps: its inputs need not be read.
      if (!any) continue;
      T labels[kBlock];
      const T* yt = targets(in, b, len, labels);
      accumulate<Loss, T, W, true>(loss, acc, yt, in.y_pred + b, combined, Acc(1), pad, len);
      acc.flush(total);
    }
  };
  if (std::is_same<M, bool>::value && in.extra.all_bool()) {
    run(TypeTag<bool>{});
  } else {
    run(TypeTag<Acc>{});
  }
  return total;
}

template <class Loss, class T, class M>
Partial forward_range_impl(const Loss& loss, const MaskedInputs<T, M>& in, int64_t begin,
                           int64_t end) {
  using Acc = acc_t<T>;
  if (in.extra.size > 0) return forward_range_combined(loss, in, begin, end);
  const Acc pad = Acc(in.padding_value);
  const int64_t inner = in.inner();
  LaneSums<Acc, std::is_same<M, bool>::value> acc;
  Partial total;
  T labels[kBlock];
  if (in.mask != nullptr && inner == 1) {
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t len = std::min(kBlock, end - b);
      const T* yt = targets(in, b, len, labels);
      accumulate<Loss, T, M, true>(loss, acc, yt, in.y_pred + b, in.mask + b, Acc(1), pad, len);
      acc.flush(total);
    }
    return total;
  }
  if (in.mask != nullptr && inner < kBlock) {
    // Short rows: expand the block's mask entries into a small buffer and take
    // the elementwise path (a per-row loop would be dominated by its overhead).
    M expanded[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t len = std::min(kBlock, end - b);
      expand_rows(in.mask, inner, b, len, expanded);
      const T* yt = targets(in, b, len, labels);
      accumulate<Loss, T, M, true>(loss, acc, yt, in.y_pred + b, expanded, Acc(1), pad, len);
      acc.flush(total);
    }
    return total;
  }
  // Long rows (or no mask): constant weight per row, rows of weight 0 skipped
  // without reading them.
  for (int64_t row = begin / inner, pos = begin; pos < end; ++row) {
    const int64_t seg_end = std::min(end, (row + 1) * inner);
    const Acc w = in.mask != nullptr ? MaskWeight<Acc, M>::of(in.mask[row]) : Acc(1);
    while (w != Acc(0) && pos < seg_end) {
      const int64_t len = std::min(seg_end - pos, kBlock - acc.pending);
      const T* yt = targets(in, pos, len, labels);
      accumulate<Loss, T, M, false>(loss, acc, yt, in.y_pred + pos, nullptr, w, pad, len);
      if (acc.pending == kBlock) acc.flush(total);
      pos += len;
    }
    pos = seg_end;
  }
  acc.flush(total);
  return total;
}

#if defined(MO_CPU_DISPATCH)
template <class Loss, class T, class M>
MO_CPU_AVX2 Partial forward_range_avx2(const Loss& loss, const MaskedInputs<T, M>& in,
                                       int64_t begin, int64_t end) {
  return forward_range_impl(loss, in, begin, end);
}
template <class Loss, class T, class M>
MO_CPU_AVX512 Partial forward_range_avx512(const Loss& loss, const MaskedInputs<T, M>& in,
                                           int64_t begin, int64_t end) {
  return forward_range_impl(loss, in, begin, end);
}
#endif

// The forward of the elements [begin, end), for the CPU's instruction set.
template <class Loss, class T, class M>
Partial forward_range(const Loss& loss, const MaskedInputs<T, M>& in, int64_t begin, int64_t end) {
#if defined(MO_CPU_DISPATCH)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return forward_range_avx512(loss, in, begin, end);
    case Isa::kAvx2:
      return forward_range_avx2(loss, in, begin, end);
    case Isa::kBaseline:
      break;
  }
#endif
  return forward_range_impl(loss, in, begin, end);
}

// Gradient of len elements. Writes grad_true/grad_pred (when kTrue/kPred) and,
// for an elementwise float mask, grad_mask; for a prefix mask returns the sum
// of the mask gradient over the span (the caller owns whole rows).
template <class Loss, class T, class M, bool kElementwise, bool kTrue, bool kPred, bool kMask>
double backward_span_impl(const Loss& loss, const T* yt, const T* yp, const M* mask,
                          acc_t<T> w_const, acc_t<T> pad, GradCoefficients<acc_t<T>> k, int64_t len,
                          T* grad_true, T* grad_pred, M* grad_mask, bool stream) {
  using Acc = acc_t<T>;
  if constexpr (kElementwise && std::is_same<M, bool>::value) {
    // Blocks of the boolean mask widened to 0/1 weights (as in accumulate):
    // a weight of exactly 1 scales as the boolean path does, so the bits are
    // the same. Booleans have no mask gradient.
    static_assert(!kMask, "boolean masks have no gradient");
    Acc flags[kBlock];
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(mask);
    for (int64_t b = 0; b < len; b += kBlock) {
      const int64_t n = std::min(kBlock, len - b);
      for (int64_t i = 0; i < n; ++i) flags[i] = bytes[b + i] != 0 ? Acc(1) : Acc(0);
      backward_span_impl<Loss, T, Acc, true, kTrue, kPred, false>(
          loss, yt + b, yp + b, flags, w_const, pad, k, n, offset(grad_true, b),
          offset(grad_pred, b), nullptr, stream);
    }
    return 0.0;
  } else {
    Acc row[kLanes] = {};
    Acc kept[kLanes] = {};  // exact: at most kBlock per lane on the row path
    // A group's gradients are gathered here, then stored (streaming or not).
    T gt[kLanes], gp[kLanes];
    auto step = [&](int64_t i, int l) {
      const Acc t = to_acc(yt[i]);
      const Acc p = to_acc(yp[i]);
      Acc w = w_const;
      bool keep = t != pad;
      if constexpr (kElementwise) {
        w = to_acc(mask[i]);
        keep &= w != Acc(0);
      } else {
        keep &= w != Acc(0);
      }
      const Acc aw = k.times_weight(w);
      if (kTrue) gt[l] = from_acc<T>(select_or_zero(keep, aw * loss.grad_true(t, p)));
      if (kPred) gp[l] = from_acc<T>(select_or_zero(keep, aw * loss.grad_pred(t, p)));
      if constexpr (kMask) {
        const Acc value = loss.value(t, p);
        if (kElementwise) {
          grad_mask[i] = from_acc<M>(select_or_zero(keep, k.weight_gradient(value)));
        } else {
          row[l] += select_or_zero(keep, k.a * value + k.b);
          kept[l] += select_or_zero(keep, Acc(1));
        }
      }
    };
    const bool stream_true = kTrue && stream && reinterpret_cast<uintptr_t>(grad_true) % 16 == 0;
    const bool stream_pred = kPred && stream && reinterpret_cast<uintptr_t>(grad_pred) % 16 == 0;
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      MO_SIMD_LANES
      for (int l = 0; l < kLanes; ++l) step(i + l, l);
      if (kTrue) store_group(grad_true + i, gt, stream_true);
      if (kPred) store_group(grad_pred + i, gp, stream_pred);
    }
    for (int l = 0; i + l < len; ++l) step(i + l, l);
    for (int l = 0; i + l < len; ++l) {
      if (kTrue) grad_true[i + l] = gt[l];
      if (kPred) grad_pred[i + l] = gp[l];
    }
    // The row's terms a * value + b are added before they are scaled (by 2^64
    // when weight_sum is subnormal): scaled one by one they could overflow
    // float although their sum, often near 0, does not.
    Acc total = Acc(0), count = Acc(0);
    for (int l = 0; l < kLanes; ++l) {
      total += row[l];
      count += kept[l];
    }
    return double(total) * double(k.scale) + double(k.c) * double(count);
  }
}

#if defined(MO_CPU_DISPATCH)
template <class Loss, class T, class M, bool kElementwise, bool kTrue, bool kPred, bool kMask>
MO_CPU_AVX2 double backward_span_avx2(const Loss& loss, const T* yt, const T* yp, const M* mask,
                                      acc_t<T> w_const, acc_t<T> pad, GradCoefficients<acc_t<T>> k,
                                      int64_t len, T* grad_true, T* grad_pred, M* grad_mask,
                                      bool stream) {
  return backward_span_impl<Loss, T, M, kElementwise, kTrue, kPred, kMask>(
      loss, yt, yp, mask, w_const, pad, k, len, grad_true, grad_pred, grad_mask, stream);
}
template <class Loss, class T, class M, bool kElementwise, bool kTrue, bool kPred, bool kMask>
MO_CPU_AVX512 double backward_span_avx512(const Loss& loss, const T* yt, const T* yp, const M* mask,
                                          acc_t<T> w_const, acc_t<T> pad,
                                          GradCoefficients<acc_t<T>> k, int64_t len, T* grad_true,
                                          T* grad_pred, M* grad_mask, bool stream) {
  return backward_span_impl<Loss, T, M, kElementwise, kTrue, kPred, kMask>(
      loss, yt, yp, mask, w_const, pad, k, len, grad_true, grad_pred, grad_mask, stream);
}
#endif

// backward_span_impl for the CPU's instruction set.
template <class Loss, class T, class M, bool kElementwise, bool kTrue, bool kPred, bool kMask>
double backward_span(const Loss& loss, const T* yt, const T* yp, const M* mask, acc_t<T> w_const,
                     acc_t<T> pad, GradCoefficients<acc_t<T>> k, int64_t len, T* grad_true,
                     T* grad_pred, M* grad_mask, bool stream = false) {
#if defined(MO_CPU_DISPATCH)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return backward_span_avx512<Loss, T, M, kElementwise, kTrue, kPred, kMask>(
          loss, yt, yp, mask, w_const, pad, k, len, grad_true, grad_pred, grad_mask, stream);
    case Isa::kAvx2:
      return backward_span_avx2<Loss, T, M, kElementwise, kTrue, kPred, kMask>(
          loss, yt, yp, mask, w_const, pad, k, len, grad_true, grad_pred, grad_mask, stream);
    case Isa::kBaseline:
      break;
  }
#endif
  return backward_span_impl<Loss, T, M, kElementwise, kTrue, kPred, kMask>(
      loss, yt, yp, mask, w_const, pad, k, len, grad_true, grad_pred, grad_mask, stream);
}

// Gradients of y_true/y_pred (no mask gradient) of the elements [begin, end)
// (whole chunks of a task): writes only, so any split of the range gives the
// same bits.
template <class Loss, class T, class M, bool kTrue, bool kPred>
void backward_range(const Loss& loss, const MaskedInputs<T, M>& in, GradCoefficients<acc_t<T>> k,
                    int64_t begin, int64_t end, T* grad_true, T* grad_pred, bool stream) {
  using Acc = acc_t<T>;
  const Acc pad = Acc(in.padding_value);
  const int64_t inner = in.inner();
  if (in.extra.size > 0) {
    // Several masks: each block's combined weights, then the elementwise path.
    auto run = [&](auto weight_type) {
      using W = typename decltype(weight_type)::type;
      W combined[kBlock];
      T labels[kBlock];
      for (int64_t b = begin; b < end; b += kBlock) {
        const int64_t len = std::min(kBlock, end - b);
        if constexpr (std::is_same<W, bool>::value) {
          combined_flags(in, b, len, combined);
        } else {
          combined_weights(in, b, len, combined);
        }
        backward_span<Loss, T, W, true, kTrue, kPred, false>(
            loss, targets(in, b, len, labels), in.y_pred + b, combined, Acc(1), pad, k, len,
            offset(grad_true, b), offset(grad_pred, b), nullptr, stream);
      }
    };
    if (std::is_same<M, bool>::value && in.extra.all_bool()) {
      run(TypeTag<bool>{});
    } else {
      run(TypeTag<Acc>{});
    }
    return;
  }
  if (in.mask != nullptr && inner == 1) {
    for_target_blocks(in, begin, end, [&](int64_t pos, int64_t len, const T* yt) {
      backward_span<Loss, T, M, true, kTrue, kPred, false>(
          loss, yt, in.y_pred + pos, in.mask + pos, Acc(1), pad, k, len, offset(grad_true, pos),
          offset(grad_pred, pos), nullptr, stream);
    });
    return;
  }
  if (in.mask != nullptr && inner < kBlock) {
    // Short rows: expand each block's mask entries, as in the forward.
    M expanded[kBlock];
    T labels[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t len = std::min(kBlock, end - b);
      expand_rows(in.mask, inner, b, len, expanded);
      backward_span<Loss, T, M, true, kTrue, kPred, false>(
          loss, targets(in, b, len, labels), in.y_pred + b, expanded, Acc(1), pad, k, len,
          offset(grad_true, b), offset(grad_pred, b), nullptr, stream);
    }
    return;
  }
  for (int64_t pos = begin, row = pos / inner; pos < end; ++row) {
    const int64_t seg_end = std::min(end, (row + 1) * inner);
    const Acc w = in.mask != nullptr ? MaskWeight<Acc, M>::of(in.mask[row]) : Acc(1);
    for_target_blocks(in, pos, seg_end, [&](int64_t at, int64_t len, const T* yt) {
      backward_span<Loss, T, M, false, kTrue, kPred, false>(loss, yt, in.y_pred + at, nullptr, w,
                                                            pad, k, len, offset(grad_true, at),
                                                            offset(grad_pred, at), nullptr, stream);
    });
    pos = seg_end;
  }
}

template <class Loss, class T, class M, bool kTrue, bool kPred, bool kMask>
void backward_tasks(const Loss& loss, const MaskedInputs<T, M>& in, GradCoefficients<acc_t<T>> k,
                    T* grad_true, T* grad_pred, M* grad_mask, const ParallelFor& parallel_for) {
  using Acc = acc_t<T>;
  const Acc pad = Acc(in.padding_value);
  const int64_t n = in.n;
  const int64_t inner = in.inner();
  const bool stream = streaming_output<T>(n);
  if constexpr (!kMask) {
    parallel_for(num_chunks(n), kChunk, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        backward_range<Loss, T, M, kTrue, kPred>(
            loss, in, k, c * kChunk, std::min(n, (c + 1) * kChunk), grad_true, grad_pred, stream);
      }
      end_streaming_stores();
    });
  } else if (in.mask != nullptr && inner == 1) {
    parallel_for(num_chunks(n), kChunk, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const int64_t b = c * kChunk;
        for_target_blocks(
            in, b, std::min(n, b + kChunk), [&](int64_t pos, int64_t len, const T* yt) {
              backward_span<Loss, T, M, true, kTrue, kPred, kMask>(
                  loss, yt, in.y_pred + pos, in.mask + pos, Acc(1), pad, k, len,
                  offset(grad_true, pos), offset(grad_pred, pos), offset(grad_mask, pos), stream);
            });
      }
      end_streaming_stores();
    });
  } else {
    // The row sums of the mask gradient need whole rows per task.
    auto weight = [&](int64_t row) {
      return in.mask != nullptr ? MaskWeight<Acc, M>::of(in.mask[row]) : Acc(1);
    };
    const int64_t rows_per_task = std::max<int64_t>(1, kChunk / std::max<int64_t>(inner, 1));
    const int64_t tasks = (in.mask_n + rows_per_task - 1) / rows_per_task;
    parallel_for(tasks, rows_per_task * inner, [&](int64_t first, int64_t last) {
      for (int64_t row = first * rows_per_task; row < std::min(in.mask_n, last * rows_per_task);
           ++row) {
        // The row's mask gradient in float32 lanes per block, the blocks added
        // in double (as the forward): the error stays bounded by the block.
        double g = 0.0;
        T labels[kBlock];
        for (int64_t b = row * inner, end = (row + 1) * inner; b < end; b += kBlock) {
          const int64_t len = std::min(kBlock, end - b);
          g += backward_span<Loss, T, M, false, kTrue, kPred, kMask>(
              loss, targets(in, b, len, labels), in.y_pred + b, nullptr, weight(row), pad, k, len,
              offset(grad_true, b), offset(grad_pred, b), nullptr, stream);
        }
        grad_mask[row] = from_acc<M>(acc_t<T>(g));
      }
      end_streaming_stores();
    });
  }
}

}  // namespace detail

// Forward: writes loss, sum, weight_sum (accumulator type) and the exact count.
template <class Loss, class T, class M>
Status forward(const Loss& loss_fn, const MaskedInputs<T, M>& in, Reduction reduction,
               void* workspace, size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum,
               acc_t<T>* weight_sum, int64_t* count,
               const ParallelFor& parallel_for = run_serially) {
  using Acc = acc_t<T>;
  if (!in.valid_shape()) return Status::kBadShape;
  if (!in.aligned()) return Status::kMisaligned;
  const int64_t chunks = num_chunks(in.n);
  if (workspace_bytes < forward_workspace_bytes(in.n)) return Status::kWorkspaceTooSmall;
  Partial* partials = static_cast<Partial*>(workspace);
  IeeeSubnormals ieee;
  with_ieee_subnormals(parallel_for)(chunks, kChunk, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      partials[c] =
          detail::forward_range(loss_fn, in, c * kChunk, std::min(in.n, (c + 1) * kChunk));
    }
  });
  Partial total;
  for (int64_t c = 0; c < chunks; ++c) total.add(partials[c]);
  *loss = Acc(finalize_loss(total.sum, total.weight_sum, reduction));
  *sum = Acc(total.sum);
  *weight_sum = Acc(total.weight_sum);
  *count = total.count;
  return Status::kOk;
}

// Backward: any of grad_true, grad_pred, grad_mask may be null (not wanted);
// grad_mask must be null for boolean masks and has the mask's shape.
template <class Loss, class T, class M>
Status backward(const Loss& loss, const MaskedInputs<T, M>& in, Reduction reduction,
                const BackwardScalars<acc_t<T>>& scalars, T* grad_true, T* grad_pred, M* grad_mask,
                const ParallelFor& parallel_for = run_serially) {
  if (!in.valid_shape()) return Status::kBadShape;
  if (!in.aligned() || !is_aligned(grad_true) || !is_aligned(grad_pred) || !is_aligned(grad_mask)) {
    return Status::kMisaligned;
  }
  if (grad_mask != nullptr && in.extra.size > 0) return Status::kExtraMaskGradient;
  if (grad_true != nullptr && in.labels.data != nullptr) return Status::kLabelGradient;
  IeeeSubnormals ieee;
  const ParallelFor guarded = with_ieee_subnormals(parallel_for);
  const auto k = grad_coefficients(*scalars.grad_loss, *scalars.grad_sum, *scalars.grad_weight_sum,
                                   *scalars.loss, *scalars.weight_sum, reduction);
  const bool want_true = grad_true != nullptr;
  const bool want_pred = grad_pred != nullptr;
  bool want_mask = false;
  if constexpr (!std::is_same<M, bool>::value) want_mask = grad_mask != nullptr;

  auto run = [&](auto kTrue, auto kPred, auto kMask) {
    if constexpr (!(kMask && std::is_same<M, bool>::value)) {
      detail::backward_tasks<Loss, T, M, kTrue, kPred, kMask>(loss, in, k, grad_true, grad_pred,
                                                              grad_mask, guarded);
    }
  };
  auto with_mask = [&](auto kTrue, auto kPred) {
    if (want_mask) {
      run(kTrue, kPred, std::true_type{});
    } else {
      run(kTrue, kPred, std::false_type{});
    }
  };
  if (want_true && want_pred) {
    with_mask(std::true_type{}, std::true_type{});
  } else if (want_true) {
    with_mask(std::true_type{}, std::false_type{});
  } else if (want_pred) {
    with_mask(std::false_type{}, std::true_type{});
  } else {
    with_mask(std::false_type{}, std::false_type{});
  }
  return Status::kOk;
}

// ---- one pass: loss and gradient together ------------------------------------
//
// When a gradient will be taken, the forward can write it while it reduces
// the loss: each chunk is reduced (exactly as forward() does, so the loss has
// the same bits) and its gradients written right after, from the chunk's
// inputs still in cache (a chunk's inputs fit in L2). That needs the normalization before the pass:
// with one boolean mask and no padding value, weight_sum is the kept count, which a pre-pass over
// the mask alone gives. The gradients are those of the loss output for an upstream gradient of
// exactly 1 (grad_sum = grad_weight_sum = 0); scale_gradient applies another upstream gradient.

inline size_t forward_backward_workspace_bytes(int64_t n, int64_t mask_n) {
  return forward_workspace_bytes(n) + size_t(num_chunks(mask_n)) * sizeof(int64_t);
}

namespace detail {

// Kept elements of a boolean mask (no padding): non-zero entries times the
// elements each covers. Integer partials per chunk of entries: any order.
template <class T, class M>
int64_t kept_count(const MaskedInputs<T, M>& in, int64_t* partials,
                   const ParallelFor& parallel_for) {
  if (in.mask == nullptr) return in.n;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(in.mask);
  const int64_t chunks = num_chunks(in.mask_n);
  parallel_for(chunks, kChunk, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      // Byte lanes, widened every 255 steps (before they could overflow): one
      // vector add per 16 mask bytes.
      constexpr int64_t kWidth = 16, kSteps = 255;
      int64_t kept = 0;
      const int64_t end = std::min(in.mask_n, (c + 1) * kChunk);
      int64_t i = c * kChunk;
      for (; i + kWidth * kSteps <= end; i += kWidth * kSteps) {
        uint8_t lanes[kWidth] = {};
        for (int64_t step = 0; step < kSteps; ++step) {
          MO_SIMD_LANES
          for (int l = 0; l < kWidth; ++l) lanes[l] += uint8_t(bytes[i + step * kWidth + l] != 0);
        }
        for (int l = 0; l < kWidth; ++l) kept += lanes[l];
      }
      for (; i < end; ++i) kept += bytes[i] != 0;
      partials[c] = kept;
    }
  });
  int64_t kept = 0;
  for (int64_t c = 0; c < chunks; ++c) kept += partials[c];
  return kept * in.inner();
}

}  // namespace detail

// Forward (outputs as forward()) and the gradients of `loss` for an upstream
// gradient of 1 (any of grad_true, grad_pred null: not wanted) in one pass
// over the inputs. M must be bool, with no padding value and no extra masks
// (else kUnsupported: use forward and backward).
template <class Loss, class T, class M>
Status forward_backward(const Loss& loss_fn, const MaskedInputs<T, M>& in, Reduction reduction,
                        void* workspace, size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum,
                        acc_t<T>* weight_sum, int64_t* count, T* grad_true, T* grad_pred,
                        const ParallelFor& parallel_for = run_serially) {
  using Acc = acc_t<T>;
  if (!in.valid_shape()) return Status::kBadShape;
  if (!std::is_same<M, bool>::value || in.extra.size > 0 || in.padding_value == in.padding_value) {
    return Status::kUnsupported;
  }
  if (!in.aligned() || !is_aligned(grad_true) || !is_aligned(grad_pred)) {
    return Status::kMisaligned;
  }
  if (grad_true != nullptr && in.labels.data != nullptr) return Status::kLabelGradient;
  if (workspace_bytes < forward_backward_workspace_bytes(in.n, in.mask_n)) {
    return Status::kWorkspaceTooSmall;
  }
  const int64_t chunks = num_chunks(in.n);
  Partial* partials = static_cast<Partial*>(workspace);
  int64_t* counts = reinterpret_cast<int64_t*>(partials + chunks);
  IeeeSubnormals ieee;
  const ParallelFor guarded = with_ieee_subnormals(parallel_for);
  const int64_t kept = detail::kept_count(in, counts, guarded);
  // As backward() computes them for upstream (1, 0, 0): the forward's
  // weight_sum output is the count rounded to Acc.
  const auto k = grad_coefficients(Acc(1), Acc(0), Acc(0), Acc(0), Acc(double(kept)), reduction);
  const bool stream = detail::streaming_output<T>(in.n);
  auto run = [&](auto kTrue, auto kPred) {
    guarded(chunks, kChunk, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const int64_t begin = c * kChunk, end = std::min(in.n, (c + 1) * kChunk);
        // The chunk's inputs are still in cache for its gradients.
        partials[c] = detail::forward_range(loss_fn, in, begin, end);
        if (kTrue || kPred) {
          detail::backward_range<Loss, T, M, kTrue, kPred>(loss_fn, in, k, begin, end, grad_true,
                                                           grad_pred, stream);
        }
      }
      detail::end_streaming_stores();
    });
  };
  if (grad_true != nullptr && grad_pred != nullptr) {
    run(std::true_type{}, std::true_type{});
  } else if (grad_true != nullptr) {
    run(std::true_type{}, std::false_type{});
  } else if (grad_pred != nullptr) {
    run(std::false_type{}, std::true_type{});
  } else {
    run(std::false_type{}, std::false_type{});
  }
  Partial total;
  for (int64_t c = 0; c < chunks; ++c) total.add(partials[c]);
  *loss = Acc(finalize_loss(total.sum, total.weight_sum, reduction));
  *sum = Acc(total.sum);
  *weight_sum = Acc(total.weight_sum);
  *count = total.count;
  return Status::kOk;
}

// out[i] = scale * in[i] (in T, through the accumulator type): the gradient
// of forward_backward for another upstream gradient. in may equal out.
template <class T>
Status scale_gradient(acc_t<T> scale, const T* in, T* out, int64_t n,
                      const ParallelFor& parallel_for = run_serially) {
  if (n < 0) return Status::kBadShape;
  if (!is_aligned(in) || !is_aligned(out)) return Status::kMisaligned;
  IeeeSubnormals ieee;
  with_ieee_subnormals(parallel_for)(num_chunks(n), kChunk, [&](int64_t first, int64_t last) {
    const int64_t end = std::min(n, last * kChunk);
    MO_SIMD_LANES
    for (int64_t i = first * kChunk; i < end; ++i) out[i] = from_acc<T>(scale * to_acc(in[i]));
  });
  return Status::kOk;
}

}  // namespace cpu
}  // namespace masked_ops
