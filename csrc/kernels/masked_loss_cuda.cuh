// CUDA kernels and launchers for any masked loss functor (see masked_loss.h and
// the declarations in masked_loss_cuda.h). Include only from .cu files; a loss
// instantiates the launchers with MASKED_OPS_INSTANTIATE_CUDA_LOSS.
//
// Forward: one pass in which each thread walks its elements with a grid-stride
// loop (16-byte loads where the pointers allow), keeps double-precision sums and
// an exact count, and each block writes one Partial to the workspace; a second
// one-block kernel adds the partials in a fixed order and writes loss, sum,
// weight_sum and count. The grid depends only on n and the device, and every
// reduction has a fixed shape, so repeated runs give identical bits. No atomics,
// no host synchronization: both launches go on the caller's stream and can be
// captured in a CUDA graph.
//
// Backward: one elementwise pass writes the wanted gradients. The gradient of a
// prefix (or 0-d) mask is a sum over each mask entry's elements: groups of lanes
// own whole rows, or fixed segments of long rows whose partials a second kernel
// adds in order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "masked_loss.h"
#include "masked_loss_cuda.h"

namespace masked_ops {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kVectorBytes = 16;
// The forward grid gives each thread at least this many elements before it is
// capped at one full wave of resident blocks.
constexpr int64_t kMinElementsPerThread = 8;
// A long row's mask gradient is split into segments of at least this many
// elements (64 per lane of a warp).
constexpr int64_t kMinSegment = 2048;

// One block's share of the forward.
struct Partial {
  double sum;
  double weight_sum;
  long long count;
};

// Non-template helpers, defined in cuda_common.cu.

// Blocks of kThreads that fit on the current device at once (SMs x blocks per
// SM), cached per device.
int64_t max_resident_blocks();
// Forward grid for n elements; also the number of Partials in the workspace.
int64_t forward_grid(int64_t n);

// How the mask gradient of a prefix or 0-d mask is reduced: `group` lanes (a
// power of two up to a warp) share a task; a task is one segment of one row;
// each row has `segments` segments of `segment_len` elements.
struct RowPlan {
  int group;
  int64_t segments;
  int64_t segment_len;
  int64_t tasks;
};
RowPlan row_plan(int64_t n, int64_t mask_n);
size_t row_workspace_bytes(const RowPlan& plan, int64_t mask_n);

// Clears a stale error of this runtime before launching; after launching,
// turns cudaGetLastError into a Status and remembers its description.
void clear_launch_error();
Status launch_status();

// ---- element access ----------------------------------------------------------

// Booleans are read as bytes, so any non-zero byte is true.
template <typename M>
struct RawMask {
  using type = M;
};
template <>
struct RawMask<bool> {
  using type = uint8_t;
};
template <typename M>
using raw_mask_t = typename RawMask<M>::type;

template <int kBytes>
struct WordOf;
template <>
struct WordOf<1> {
  using type = unsigned char;
};
template <>
struct WordOf<2> {
  using type = unsigned short;
};
template <>
struct WordOf<4> {
  using type = unsigned int;
};
template <>
struct WordOf<8> {
  using type = uint2;
};
template <>
struct WordOf<16> {
  using type = uint4;
};

// N consecutive elements moved as one load or store.
template <typename E, int N>
struct alignas(sizeof(E) * N) Pack {
  E v[N];
};

template <typename P>
__device__ __forceinline__ P load(const P* p) {
  using Word = typename WordOf<sizeof(P)>::type;
  const Word w = __ldg(reinterpret_cast<const Word*>(p));
  P out;
  memcpy(&out, &w, sizeof(P));
  return out;
}

template <typename P>
__device__ __forceinline__ void store(P* p, const P& value) {
  using Word = typename WordOf<sizeof(P)>::type;
  Word w;
  memcpy(&w, &value, sizeof(P));
  *reinterpret_cast<Word*>(p) = w;
}

// 16-bit conversions with the hardware instructions; same rounding (to nearest
// even) as numeric_types.h.
__device__ __forceinline__ float load_acc(half_t x) {
  return __half2float(__ushort_as_half(x.bits));
}
__device__ __forceinline__ float load_acc(bfloat16_t x) {
  return __uint_as_float(uint32_t(x.bits) << 16);
}
__device__ __forceinline__ float load_acc(float x) { return x; }
__device__ __forceinline__ double load_acc(double x) { return x; }

// Loads V consecutive (vector-aligned) y_true and y_pred values in the
// accumulator type: the vector path of both the forward and the backward.
template <int V, typename T>
__device__ __forceinline__ void load_vector(const T* y_true, const T* y_pred, int64_t i,
                                            acc_t<T>* t, acc_t<T>* p) {
  const auto tp = load(reinterpret_cast<const Pack<T, V>*>(y_true + i));
  const auto pp = load(reinterpret_cast<const Pack<T, V>*>(y_pred + i));
#pragma unroll
  for (int j = 0; j < V; ++j) {
    t[j] = load_acc(tp.v[j]);
    p[j] = load_acc(pp.v[j]);
  }
}

template <typename T>
struct DeviceStore {
  __device__ __forceinline__ static T from(acc_t<T> x) { return T(x); }
};
template <>
struct DeviceStore<half_t> {
  __device__ __forceinline__ static half_t from(float x) {
    return half_t{__half_as_ushort(__float2half_rn(x))};
  }
};
template <>
struct DeviceStore<bfloat16_t> {
  __device__ __forceinline__ static bfloat16_t from(float x) {
    return bfloat16_t{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
  }
};
template <typename T>
__device__ __forceinline__ T store_as(acc_t<T> x) {
  return DeviceStore<T>::from(x);
}

template <typename Acc, typename RM>
struct Weight {
  __device__ __forceinline__ static Acc of(RM m) { return Acc(load_acc(m)); }
};
template <typename Acc>
struct Weight<Acc, uint8_t> {
  __device__ __forceinline__ static Acc of(uint8_t m) { return m != 0 ? Acc(1) : Acc(0); }
};

// Weight of mask entry `index`; no mask means weight 1.
template <typename Acc, typename RM>
__device__ __forceinline__ Acc mask_weight(const RM* mask, int64_t index) {
  return mask != nullptr ? Weight<Acc, RM>::of(load(mask + index)) : Acc(1);
}

template <typename Acc>
__device__ __forceinline__ GradCoefficients<Acc> load_coefficients(const BackwardScalars<Acc>& s,
                                                                   Reduction reduction) {
  return grad_coefficients(__ldg(s.grad_loss), __ldg(s.grad_sum), __ldg(s.grad_weight_sum),
                           __ldg(s.loss), __ldg(s.weight_sum), reduction);
}

__device__ __forceinline__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// ---- elementwise traversal ---------------------------------------------------

// How a mask entry is found for element i: one entry for everything (0-d mask
// or none), one per element, or one per row of `inner` elements.
enum class MaskMode : int { kConst, kElementwise, kPrefix };

template <typename T, typename RM>
struct ElementArgs {
  const T* y_true;
  const T* y_pred;
  const RM* mask;  // null: weight 1 everywhere (kConst only)
  int64_t n;
  int64_t inner;  // elements per mask entry (kPrefix)
  acc_t<T> pad;
  // Elements [0, head) and [tail_begin, n) one at a time, num_vecs vectors of V
  // elements from head on; head makes every vector access 16-byte aligned.
  int64_t head;
  int64_t num_vecs;
  int64_t tail_begin;
  // kPrefix: a thread's next vector is grid_threads * V elements further, that
  // is step_rows rows and step_cols elements; tracking the row this way avoids
  // a 64-bit division per vector.
  int64_t step_rows;
  int64_t step_cols;
};

// Calls op.vector(i, w) with the V weights of the vector at element i,
// op.uniform(i, w) when they are all w, and op.scalar(i, w) for the unaligned
// head and tail, over this thread's share of the elements.
template <MaskMode kMode, int V, typename Acc, typename T, typename RM, class Op>
__device__ __forceinline__ void for_each_element(const ElementArgs<T, RM>& a, Op& op) {
  const int64_t tid = global_thread();
  const int64_t threads = grid_threads();
  auto scalar_weight = [&](int64_t i) {
    if constexpr (kMode == MaskMode::kConst) {
      return mask_weight<Acc>(a.mask, 0);
    } else if constexpr (kMode == MaskMode::kElementwise) {
      return mask_weight<Acc>(a.mask, i);
    } else {
      return mask_weight<Acc>(a.mask, i / a.inner);
    }
  };
  if (tid < a.head) op.scalar(tid, scalar_weight(tid));
  if (tid < a.n - a.tail_begin) op.scalar(a.tail_begin + tid, scalar_weight(a.tail_begin + tid));

  if constexpr (kMode == MaskMode::kConst) {
    const Acc w = mask_weight<Acc>(a.mask, 0);
    for (int64_t v = tid; v < a.num_vecs; v += threads) op.uniform(a.head + v * V, w);
  } else if constexpr (kMode == MaskMode::kElementwise) {
    for (int64_t v = tid; v < a.num_vecs; v += threads) {
      const int64_t i = a.head + v * V;
      const auto m = load(reinterpret_cast<const Pack<RM, V>*>(a.mask + i));
      Acc w[V];
#pragma unroll
      for (int j = 0; j < V; ++j) w[j] = Weight<Acc, RM>::of(m.v[j]);
      op.vector(i, w);
    }
  } else {
    const int64_t first = a.head + tid * V;
    int64_t row = first / a.inner;
    int64_t col = first - row * a.inner;
    for (int64_t v = tid; v < a.num_vecs; v += threads) {
      const int64_t i = a.head + v * V;
      if (col + V <= a.inner) {
        op.uniform(i, mask_weight<Acc>(a.mask, row));
      } else {
        // The vector crosses one or more row ends.
        Acc w[V];
        int64_t r = row, c = col;
        Acc wr = mask_weight<Acc>(a.mask, r);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if (c == a.inner) {
            c = 0;
            wr = mask_weight<Acc>(a.mask, ++r);
          }
          w[j] = wr;
          ++c;
        }
        op.vector(i, w);
      }
      row += a.step_rows;
      col += a.step_cols;
      if (col >= a.inner) {
        col -= a.inner;
        ++row;
      }
    }
  }
}

// ---- reductions --------------------------------------------------------------

template <typename X>
__device__ __forceinline__ X warp_sum(X x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

// Fixed-shape block reduction of a Partial; the result is valid in thread 0.
__device__ __forceinline__ Partial block_sum(Partial p) {
  __shared__ double sums[kThreads / kWarp];
  __shared__ double weight_sums[kThreads / kWarp];
  __shared__ long long counts[kThreads / kWarp];
  p.sum = warp_sum(p.sum);
  p.weight_sum = warp_sum(p.weight_sum);
  p.count = warp_sum(p.count);
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  if (lane == 0) {
    sums[warp] = p.sum;
    weight_sums[warp] = p.weight_sum;
    counts[warp] = p.count;
  }
  __syncthreads();
  if (warp == 0) {
    const bool has = lane < kThreads / kWarp;
    p.sum = warp_sum(has ? sums[lane] : 0.0);
    p.weight_sum = warp_sum(has ? weight_sums[lane] : 0.0);
    p.count = warp_sum(has ? counts[lane] : 0ll);
  }
  return p;
}

// ---- forward -----------------------------------------------------------------

// Float (or double) sums over one vector, added to the thread's double totals:
// float rounding error stays bounded by the vector length. 0/1 (boolean)
// weights: weight_sum is the count and the value needs no multiply.
template <class Loss, typename T, bool kBinary, int V>
struct ForwardOp {
  using Acc = acc_t<T>;
  const T* y_true;
  const T* y_pred;
  Acc pad;
  double sum = 0.0;
  double weight_sum = 0.0;
  long long count = 0;

  __device__ __forceinline__ void add(const Acc* t, const Acc* p, const Acc* w, int len) {
    Acc s = Acc(0), ws = Acc(0);
    int c = 0;
#pragma unroll
    for (int j = 0; j < len; ++j) {
      const bool keep = (w[j] != Acc(0)) && (t[j] != pad);
      const Acc value = kBinary ? Loss::value(t[j], p[j]) : Loss::value(t[j], p[j]) * w[j];
      s += keep ? value : Acc(0);
      if (!kBinary) ws += keep ? w[j] : Acc(0);
      c += keep ? 1 : 0;
    }
    sum += double(s);
    if (!kBinary) weight_sum += double(ws);
    count += c;
  }

  __device__ __forceinline__ void vector(int64_t i, const Acc* w) {
    Acc t[V], p[V];
    load_vector<V>(y_true, y_pred, i, t, p);
    add(t, p, w, V);
  }

  __device__ __forceinline__ void uniform(int64_t i, Acc w) {
    if (w == Acc(0)) return;  // nothing kept: the inputs need not be read
    Acc ws[V];
#pragma unroll
    for (int j = 0; j < V; ++j) ws[j] = w;
    vector(i, ws);
  }

  __device__ __forceinline__ void scalar(int64_t i, Acc w) {
    const Acc t = load_acc(load(y_true + i));
    const Acc p = load_acc(load(y_pred + i));
    add(&t, &p, &w, 1);
  }
};

template <class Loss, typename T, typename RM, MaskMode kMode, int V>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const ElementArgs<T, RM> a, Partial* __restrict__ partials) {
  constexpr bool kBinary = std::is_same<RM, uint8_t>::value;
  ForwardOp<Loss, T, kBinary, V> op{a.y_true, a.y_pred, a.pad};
  for_each_element<kMode, V, acc_t<T>>(a, op);
  Partial p{op.sum, kBinary ? double(op.count) : op.weight_sum, op.count};
  p = block_sum(p);
  if (threadIdx.x == 0) partials[blockIdx.x] = p;
}

// Adds the per-block partials in a fixed order; with none (n == 0) it writes zeros.
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const Partial* __restrict__ partials, int64_t num_partials, Reduction reduction,
                    Acc* loss, Acc* sum, Acc* weight_sum, int64_t* count) {
  Partial p{0.0, 0.0, 0};
  for (int64_t b = threadIdx.x; b < num_partials; b += kThreads) {
    p.sum += partials[b].sum;
    p.weight_sum += partials[b].weight_sum;
    p.count += partials[b].count;
  }
  p = block_sum(p);
  if (threadIdx.x == 0) {
    *loss = Acc(finalize_loss(p.sum, p.weight_sum, reduction));
    *sum = Acc(p.sum);
    *weight_sum = Acc(p.weight_sum);
    *count = p.count;
  }
}

// ---- backward ----------------------------------------------------------------

// Writes the wanted gradients of one vector (or element); grad_mask only for an
// elementwise floating-point mask.
template <class Loss, typename T, typename RM, int V>
struct BackwardOp {
  using Acc = acc_t<T>;
  const T* y_true;
  const T* y_pred;
  Acc pad;
  GradCoefficients<Acc> k;
  T* grad_true;
  T* grad_pred;
  RM* grad_mask;

  template <int N>
  __device__ __forceinline__ void write(int64_t i, const Acc* t, const Acc* p, const Acc* w) {
    Pack<T, N> gt, gp;
    [[maybe_unused]] Pack<RM, N> gm;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool keep = (w[j] != Acc(0)) && (t[j] != pad);
      const Acc aw = k.a * w[j];
      gt.v[j] = store_as<T>(keep ? aw * Loss::grad_true(t[j], p[j]) : Acc(0));
      gp.v[j] = store_as<T>(keep ? aw * Loss::grad_pred(t[j], p[j]) : Acc(0));
      if constexpr (!std::is_same<RM, uint8_t>::value) {
        gm.v[j] = store_as<RM>(keep ? k.a * Loss::value(t[j], p[j]) + k.b : Acc(0));
      }
    }
    if (grad_true != nullptr) store(reinterpret_cast<Pack<T, N>*>(grad_true + i), gt);
    if (grad_pred != nullptr) store(reinterpret_cast<Pack<T, N>*>(grad_pred + i), gp);
    if constexpr (!std::is_same<RM, uint8_t>::value) {
      if (grad_mask != nullptr) store(reinterpret_cast<Pack<RM, N>*>(grad_mask + i), gm);
    }
  }

  __device__ __forceinline__ void vector(int64_t i, const Acc* w) {
    Acc t[V], p[V];
    load_vector<V>(y_true, y_pred, i, t, p);
    write<V>(i, t, p, w);
  }

  __device__ __forceinline__ void uniform(int64_t i, Acc w) {
    Acc ws[V];
#pragma unroll
    for (int j = 0; j < V; ++j) ws[j] = w;
    if (w != Acc(0)) {
      vector(i, ws);
      return;
    }
    // Nothing kept: zero gradients without reading the inputs.
    Acc zeros[V];
#pragma unroll
    for (int j = 0; j < V; ++j) zeros[j] = Acc(0);
    write<V>(i, zeros, zeros, ws);
  }

  __device__ __forceinline__ void scalar(int64_t i, Acc w) {
    const Acc t = load_acc(load(y_true + i));
    const Acc p = load_acc(load(y_pred + i));
    write<1>(i, &t, &p, &w);
  }
};

template <class Loss, typename T, typename RM, MaskMode kMode, int V>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const ElementArgs<T, RM> a, const BackwardScalars<acc_t<T>> scalars,
                    Reduction reduction, T* grad_true, T* grad_pred, RM* grad_mask) {
  BackwardOp<Loss, T, RM, V> op{
      a.y_true,  a.y_pred,  a.pad,    load_coefficients(scalars, reduction),
      grad_true, grad_pred, grad_mask};
  for_each_element<kMode, V, acc_t<T>>(a, op);
}

template <typename T>
struct RowArgs {
  const T* y_true;
  const T* y_pred;
  const T* mask;  // null: weight 1
  int64_t inner;
  acc_t<T> pad;
  RowPlan plan;
};

// Gradients of a prefix or 0-d floating-point mask (and of y_true/y_pred on the
// way). Each group of plan.group lanes takes one task (a segment of a row) at a
// time; the loop bound is the same for the whole warp so every lane reaches the
// shuffles. A row in one segment writes grad_mask directly, otherwise its
// segment sums go to `partials` for row_combine_kernel.
template <class Loss, typename T>
__global__ void __launch_bounds__(kThreads)
    row_backward_kernel(const RowArgs<T> a, const BackwardScalars<acc_t<T>> scalars,
                        Reduction reduction, T* grad_true, T* grad_pred, T* grad_mask,
                        double* __restrict__ partials) {
  using Acc = acc_t<T>;
  const GradCoefficients<Acc> k = load_coefficients(scalars, reduction);
  const int group = a.plan.group;
  const int64_t segments = a.plan.segments;
  const int64_t tid = global_thread();
  const int lane = threadIdx.x & (group - 1);
  const int64_t groups = grid_threads() / group;
  for (int64_t task = tid / group, warp_task = (tid / kWarp) * (kWarp / group);
       warp_task < a.plan.tasks; task += groups, warp_task += groups) {
    const bool active = task < a.plan.tasks;
    const int64_t row = segments == 1 ? task : task / segments;
    Acc acc = Acc(0);
    if (active) {
      const int64_t segment = task - row * segments;
      const int64_t row_begin = row * a.inner;
      const int64_t begin = row_begin + segment * a.plan.segment_len;
      const int64_t seg_end = (segment + 1) * a.plan.segment_len;
      const int64_t end = row_begin + (seg_end < a.inner ? seg_end : a.inner);
      const Acc w = mask_weight<Acc>(a.mask, row);
      const bool live = w != Acc(0);
      const Acc aw = k.a * w;
      for (int64_t i = begin + lane; i < end; i += group) {
        // A row of weight 0 keeps nothing: its inputs need not be read.
        const Acc t = live ? load_acc(load(a.y_true + i)) : Acc(0);
        const Acc p = live ? load_acc(load(a.y_pred + i)) : Acc(0);
        const bool keep = live && t != a.pad;
        if (grad_true != nullptr) {
          grad_true[i] = store_as<T>(keep ? aw * Loss::grad_true(t, p) : Acc(0));
        }
        if (grad_pred != nullptr) {
          grad_pred[i] = store_as<T>(keep ? aw * Loss::grad_pred(t, p) : Acc(0));
        }
        acc += keep ? k.a * Loss::value(t, p) + k.b : Acc(0);
      }
    }
    double total = double(acc);
    for (int offset = group / 2; offset > 0; offset /= 2) {
      total += __shfl_down_sync(0xffffffffu, total, offset, group);
    }
    if (active && lane == 0) {
      if (segments == 1) {
        grad_mask[row] = store_as<T>(Acc(total));
      } else {
        partials[task] = total;
      }
    }
  }
}

// One block per row adds the row's segment sums in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_combine_kernel(const double* __restrict__ partials, int64_t rows, int64_t segments,
                       T* grad_mask) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    Partial p{0.0, 0.0, 0};
    for (int64_t s = threadIdx.x; s < segments; s += kThreads)
      p.sum += partials[row * segments + s];
    p = block_sum(p);
    if (threadIdx.x == 0) grad_mask[row] = store_as<T>(acc_t<T>(p.sum));
    __syncthreads();  // block_sum's shared memory is reused by the next row
  }
}

// ---- host-side planning ------------------------------------------------------

inline bool aligned_at(const void* p, int64_t offset_bytes, size_t alignment) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) + uint64_t(offset_bytes)) % alignment == 0;
}

// Splits [0, n) into a scalar head, aligned vectors of V elements and a scalar
// tail. Vectors need y_true, y_pred and the outputs at the same offset from a
// 16-byte boundary, and an elementwise mask (and its gradient) aligned to V
// entries; otherwise everything goes one element at a time (vectorized = false).
template <typename T, typename RM>
bool plan_vectors(ElementArgs<T, RM>& a, bool elementwise_mask, const void* out_a,
                  const void* out_b, const void* out_mask) {
  constexpr int V = kVectorBytes / int(sizeof(T));
  const uintptr_t base = reinterpret_cast<uintptr_t>(a.y_true);
  bool ok = base % sizeof(T) == 0;
  const int64_t head =
      ok ? int64_t((kVectorBytes - base % kVectorBytes) % kVectorBytes / sizeof(T)) : 0;
  ok = ok && head + V <= a.n;
  const int64_t head_bytes = head * int64_t(sizeof(T));
  ok = ok && aligned_at(a.y_pred, head_bytes, kVectorBytes) &&
       aligned_at(out_a, head_bytes, kVectorBytes) && aligned_at(out_b, head_bytes, kVectorBytes);
  if (elementwise_mask) {
    const int64_t mask_head_bytes = head * int64_t(sizeof(RM));
    ok = ok && aligned_at(a.mask, mask_head_bytes, V * sizeof(RM)) &&
         aligned_at(out_mask, mask_head_bytes, V * sizeof(RM));
  }
  if (ok) {
    a.head = head;
    a.num_vecs = (a.n - head) / V;
  } else {
    a.head = 0;
    a.num_vecs = a.n;
  }
  a.tail_begin = a.head + a.num_vecs * (ok ? V : 1);
  return ok;
}

inline void plan_row_steps(int64_t grid, int vector, int64_t inner, int64_t* rows, int64_t* cols) {
  const int64_t step = grid * kThreads * vector;
  *rows = inner > 0 ? step / inner : 0;
  *cols = inner > 0 ? step % inner : 0;
}

template <typename T, typename M>
MaskMode mask_mode(const MaskedInputs<T, M>& in) {
  if (in.mask != nullptr && in.mask_n == in.n) return MaskMode::kElementwise;
  if (in.mask == nullptr || in.mask_n == 1) return MaskMode::kConst;
  return MaskMode::kPrefix;
}

// Calls f(mode, vector width) with both as compile-time constants.
template <int kV, class F>
void dispatch(MaskMode mode, bool vectorized, F&& f) {
  auto with_width = [&](auto m) {
    if (vectorized) {
      f(m, std::integral_constant<int, kV>{});
    } else {
      f(m, std::integral_constant<int, 1>{});
    }
  };
  switch (mode) {
    case MaskMode::kConst:
      with_width(std::integral_constant<MaskMode, MaskMode::kConst>{});
      break;
    case MaskMode::kElementwise:
      with_width(std::integral_constant<MaskMode, MaskMode::kElementwise>{});
      break;
    case MaskMode::kPrefix:
      with_width(std::integral_constant<MaskMode, MaskMode::kPrefix>{});
      break;
  }
}

template <typename T, typename M>
ElementArgs<T, raw_mask_t<M>> element_args(const MaskedInputs<T, M>& in) {
  ElementArgs<T, raw_mask_t<M>> a{};
  a.y_true = in.y_true;
  a.y_pred = in.y_pred;
  a.mask = reinterpret_cast<const raw_mask_t<M>*>(in.mask);
  a.n = in.n;
  a.inner = in.inner();
  a.pad = acc_t<T>(in.padding_value);
  return a;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace detail

// ---- launchers ---------------------------------------------------------------

template <class Loss, class T, class M>
Status forward(const MaskedInputs<T, M>& in, Reduction reduction, void* workspace,
               size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum, acc_t<T>* weight_sum,
               int64_t* count, cudaStream_t stream) {
  using namespace detail;
  using RM = raw_mask_t<M>;
  if (!in.valid_shape()) return Status::kBadShape;
  const int64_t grid = forward_grid(in.n);
  if (workspace_bytes < size_t(grid) * sizeof(Partial)) return Status::kWorkspaceTooSmall;
  Partial* partials = static_cast<Partial*>(workspace);
  clear_launch_error();
  if (in.n > 0) {
    ElementArgs<T, RM> a = element_args(in);
    const MaskMode mode = mask_mode(in);
    const bool vectorized =
        plan_vectors(a, mode == MaskMode::kElementwise, nullptr, nullptr, nullptr);
    constexpr int V = kVectorBytes / int(sizeof(T));
    if (mode == MaskMode::kPrefix) {
      plan_row_steps(grid, vectorized ? V : 1, a.inner, &a.step_rows, &a.step_cols);
    }
    dispatch<V>(mode, vectorized, [&](auto m, auto v) {
      forward_kernel<Loss, T, RM, decltype(m)::value, decltype(v)::value>
          <<<unsigned(grid), kThreads, 0, stream>>>(a, partials);
    });
  }
  finalize_kernel<acc_t<T>>
      <<<1, kThreads, 0, stream>>>(partials, grid, reduction, loss, sum, weight_sum, count);
  return launch_status();
}

template <class Loss, class T, class M>
Status backward(const MaskedInputs<T, M>& in, Reduction reduction,
                const BackwardScalars<acc_t<T>>& scalars, T* grad_true, T* grad_pred, M* grad_mask,
                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  using namespace detail;
  using RM = raw_mask_t<M>;
  if (!in.valid_shape()) return Status::kBadShape;
  RM* mask_out = nullptr;
  if constexpr (!std::is_same<M, bool>::value) mask_out = grad_mask;
  if (grad_true == nullptr && grad_pred == nullptr && mask_out == nullptr) return Status::kOk;
  const bool elementwise = in.mask != nullptr && in.n > 0 && in.mask_n == in.n;

  if constexpr (!std::is_same<M, bool>::value) {
    if (mask_out != nullptr && !elementwise) {
      const RowPlan plan = row_plan(in.n, in.mask_n);
      if (workspace_bytes < row_workspace_bytes(plan, in.mask_n)) {
        return Status::kWorkspaceTooSmall;
      }
      if (plan.tasks == 0) return Status::kOk;
      clear_launch_error();
      RowArgs<T> a{in.y_true, in.y_pred, in.mask, in.inner(), acc_t<T>(in.padding_value), plan};
      const int64_t grid =
          std::min(max_resident_blocks(), ceil_div(plan.tasks * plan.group, kThreads));
      double* partials = static_cast<double*>(workspace);
      row_backward_kernel<Loss, T><<<unsigned(grid), kThreads, 0, stream>>>(
          a, scalars, reduction, grad_true, grad_pred, grad_mask, partials);
      if (plan.segments > 1) {
        row_combine_kernel<T>
            <<<unsigned(std::min(in.mask_n, max_resident_blocks())), kThreads, 0, stream>>>(
                partials, in.mask_n, plan.segments, grad_mask);
      }
      return launch_status();
    }
  }

  if (in.n == 0) return Status::kOk;
  clear_launch_error();
  ElementArgs<T, RM> a = element_args(in);
  const MaskMode mode = mask_mode(in);
  const bool vectorized =
      plan_vectors(a, mode == MaskMode::kElementwise, grad_true, grad_pred, mask_out);
  constexpr int V = kVectorBytes / int(sizeof(T));
  const int64_t grid = std::min(max_resident_blocks(), ceil_div(a.num_vecs, kThreads));
  if (mode == MaskMode::kPrefix) {
    plan_row_steps(grid, vectorized ? V : 1, a.inner, &a.step_rows, &a.step_cols);
  }
  dispatch<V>(mode, vectorized, [&](auto m, auto v) {
    backward_kernel<Loss, T, RM, decltype(m)::value, decltype(v)::value>
        <<<unsigned(grid), kThreads, 0, stream>>>(a, scalars, reduction, grad_true, grad_pred,
                                                  mask_out);
  });
  return launch_status();
}

}  // namespace cuda
}  // namespace masked_ops

// Explicit instantiations of the launchers for one loss, every input dtype and
// the two mask dtypes the kernels take (bool and the input dtype). Use at global
// scope: MASKED_OPS_INSTANTIATE_CUDA_LOSS(::masked_ops::SomeLoss);
#define MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, M)                                         \
  template Status forward<LOSS, T, M>(const MaskedInputs<T, M>&, Reduction, void*, size_t,      \
                                      acc_t<T>*, acc_t<T>*, acc_t<T>*, int64_t*, cudaStream_t); \
  template Status backward<LOSS, T, M>(const MaskedInputs<T, M>&, Reduction,                    \
                                       const BackwardScalars<acc_t<T>>&, T*, T*, M*, void*,     \
                                       size_t, cudaStream_t)

#define MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, T)   \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, bool); \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, T)

#define MASKED_OPS_INSTANTIATE_CUDA_LOSS(LOSS)          \
  namespace masked_ops {                                \
  namespace cuda {                                      \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, half_t);     \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, bfloat16_t); \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, float);      \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, double);     \
  }                                                     \
  }                                                     \
  static_assert(true, "")
