// CUDA kernels and launchers for any masked loss functor (see masked_loss.h and
// the declarations in masked_loss_cuda.h). Include only from .cu files; a loss
// instantiates the launchers with MASKED_OPS_INSTANTIATE_CUDA_LOSS.
//
// Partition: [0, n) is an unaligned scalar head, then "units" (16-byte vectors,
// or single elements when the pointers do not allow vectors), then a scalar
// tail. The units are cut into tiles whose size depends on the unit count only
// (tile_plan); block b takes tile b, and its thread t the units t, t + kThreads,
// ... of it. How values are grouped and in which order they are added thus
// depends on n, the mask's shape and the pointers' offsets from a 16-byte
// boundary, never on the device, its SM count or the grid, and the arithmetic
// is compiled without contraction (cmake/cuda.cmake), so every GPU gives the
// same bits.
//
// Forward: each block reduces its tile into one Partial (per-thread double sums
// of per-vector float sums, then a fixed-shape block reduction); a one-block
// kernel adds the tiles' partials in a fixed order and writes loss, sum,
// weight_sum and count. No atomics, no host synchronization: both launches go
// on the caller's stream and can be captured in a CUDA graph.
//
// Backward: one elementwise pass over the same tiles writes the wanted
// gradients. The gradient of a prefix (or 0-d) mask is a sum over each mask
// entry's elements: groups of lanes own whole rows, or fixed segments of long
// rows whose partials a second kernel adds in order (row_plan: n and mask_n only).
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
// Tiles hold at least kMinUnitsPerThread units per thread (loads in flight),
// and there are at most kMaxTiles of them (the partials the finalize adds).
// One block per tile: the hardware spreads the blocks over whatever SMs exist.
constexpr int64_t kMinUnitsPerThread = 4;
constexpr int64_t kMaxTiles = 16384;
// Mask-gradient rows longer than a warp are split into segments of at least
// kMinSegment elements while fewer than kRowTasks tasks exist. kRowTasks is a
// constant (above the resident warps of current GPUs), not a device query,
// so the split and hence the bits are the same on every GPU.
constexpr int64_t kMinSegment = 2048;
constexpr int64_t kRowTasks = 16384;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One tile's share of the forward.
struct Partial {
  double sum;
  double weight_sum;
  long long count;
};

// ---- partition (host and device) ---------------------------------------------

// Tiles over `units` units: units_per_tile is a multiple of kThreads, so every
// thread of a full tile gets the same number of units.
struct TilePlan {
  int64_t units_per_tile;
  int64_t tiles;
};

inline TilePlan tile_plan(int64_t units) {
  const int64_t per_thread =
      std::max(kMinUnitsPerThread, ceil_div(std::max<int64_t>(units, 0), kThreads * kMaxTiles));
  const int64_t per_tile = kThreads * per_thread;
  return {per_tile, units > 0 ? ceil_div(units, per_tile) : 0};
}

// Upper bound of tile_plan(units).tiles over every plan of n elements (units
// <= n whatever the vector width).
inline int64_t max_tiles(int64_t n) {
  return n > 0 ? std::min(kMaxTiles, ceil_div(n, kThreads * kMinUnitsPerThread)) : 0;
}

// How a mask entry is found for element i: one entry for everything (0-d mask
// or none), one per element, or one per row of `inner` elements.
enum class MaskMode : int { kConst, kElementwise, kPrefix };

// The elementwise partition of one launch (see the top of this file).
struct ElementPlan {
  int64_t n;
  int64_t inner;  // elements per mask entry (kPrefix)
  // Elements [0, head) and [tail_begin, n) are scalars handled by tile 0;
  // num_units units of `width` elements start at head.
  int64_t head;
  int64_t num_units;
  int64_t tail_begin;
  int64_t units_per_tile;
  int64_t tiles;
  // kPrefix: a thread's next unit is kThreads * width elements further, that
  // is step_rows rows and step_cols elements; tracking the row this way avoids
  // a 64-bit division per unit.
  int64_t step_rows;
  int64_t step_cols;
};

template <MaskMode kMode>
MO_HD int64_t mask_index(int64_t i, int64_t inner) {
  if constexpr (kMode == MaskMode::kConst) {
    return 0;
  } else if constexpr (kMode == MaskMode::kElementwise) {
    return i;
  } else {
    return i / inner;
  }
}

// Calls visit.scalar(i, mask_index) for the head and tail elements (tile 0
// only) and visit.unit(i, row, col) for the units of `tile` that `thread`
// owns, i being the unit's first element and (row, col) its position in the
// prefix mask's rows (kPrefix only).
template <MaskMode kMode, int V, class Visit>
MO_HD void visit_tile(const ElementPlan& p, int64_t tile, int thread, Visit& visit) {
  if (tile == 0) {
    if (thread < p.head) visit.scalar(thread, mask_index<kMode>(thread, p.inner));
    const int64_t t = p.tail_begin + thread;
    if (t < p.n) visit.scalar(t, mask_index<kMode>(t, p.inner));
  }
  const int64_t begin = tile * p.units_per_tile + thread;
  const int64_t end = std::min(p.num_units, (tile + 1) * p.units_per_tile);
  if (begin >= end) return;
  int64_t row = 0, col = 0;
  if constexpr (kMode == MaskMode::kPrefix) {
    const int64_t first = p.head + begin * V;
    row = first / p.inner;
    col = first - row * p.inner;
  }
  for (int64_t u = begin; u < end; u += kThreads) {
    visit.unit(p.head + u * V, row, col);
    if constexpr (kMode == MaskMode::kPrefix) {
      row += p.step_rows;
      col += p.step_cols;
      if (col >= p.inner) {
        col -= p.inner;
        ++row;
      }
    }
  }
}

// Walks the V elements of a unit at (row, col) that crosses a row end:
// on_row(j, r) for the first element j of each row r in the unit.
template <int V, class F>
MO_HD void walk_unit_rows(int64_t row, int64_t col, int64_t inner, F&& on_row) {
  on_row(0, row);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 1; j < V; ++j) {
    if (++col == inner) {
      col = 0;
      on_row(j, ++row);
    }
  }
}

// Non-template helpers, defined in cuda_common.cu.

// Blocks of kThreads threads of `kernel` resident at once on the current
// device (SMs x occupancy), cached per device and kernel.
int64_t resident_blocks(const void* kernel);

// How the mask gradient of a prefix or 0-d mask is reduced: `group` lanes (a
// power of two up to a warp) share a task; a task is one segment of one row;
// each row has `segments` segments of `segment_len` elements. Depends on n and
// mask_n only.
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

constexpr size_t pack_alignment(size_t bytes) {
  return bytes < size_t(kVectorBytes) ? bytes : size_t(kVectorBytes);
}

// N consecutive elements moved as one load or store (two for the 32 bytes of
// eight float32 mask weights of a 16-bit vector).
template <typename E, int N>
struct alignas(pack_alignment(sizeof(E) * N)) Pack {
  E v[N];
};

template <typename P>
__device__ __forceinline__ P load(const P* p) {
  constexpr size_t kWordBytes = pack_alignment(sizeof(P));
  constexpr size_t kWords = sizeof(P) / kWordBytes;
  using Word = typename WordOf<int(kWordBytes)>::type;
  Word w[kWords];
#pragma unroll
  for (size_t k = 0; k < kWords; ++k) w[k] = __ldg(reinterpret_cast<const Word*>(p) + k);
  P out;
  memcpy(&out, w, sizeof(P));
  return out;
}

template <typename P>
__device__ __forceinline__ void store(P* p, const P& value) {
  constexpr size_t kWordBytes = pack_alignment(sizeof(P));
  constexpr size_t kWords = sizeof(P) / kWordBytes;
  using Word = typename WordOf<int(kWordBytes)>::type;
  Word w[kWords];
  memcpy(w, &value, sizeof(P));
#pragma unroll
  for (size_t k = 0; k < kWords; ++k) reinterpret_cast<Word*>(p)[k] = w[k];
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
// y_true comes from `labels` (another dtype, converted to T per element)
// when y_true is null.
template <int V, typename T>
__device__ __forceinline__ void load_vector(const T* y_true, const Labels& labels, const T* y_pred,
                                            int64_t i, acc_t<T>* t, acc_t<T>* p) {
  const auto pp = load(reinterpret_cast<const Pack<T, V>*>(y_pred + i));
  if (y_true != nullptr) {
    const auto tp = load(reinterpret_cast<const Pack<T, V>*>(y_true + i));
#pragma unroll
    for (int j = 0; j < V; ++j) t[j] = load_acc(tp.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) t[j] = load_acc(label_as<T>(labels, i + j));
  }
#pragma unroll
  for (int j = 0; j < V; ++j) p[j] = load_acc(pp.v[j]);
}

template <typename T>
__device__ __forceinline__ acc_t<T> load_target(const T* y_true, const Labels& labels, int64_t i) {
  return y_true != nullptr ? load_acc(load(y_true + i)) : load_acc(label_as<T>(labels, i));
}

template <typename T>
struct DeviceStore {
  template <typename X>
  __device__ __forceinline__ static T from(X x) {
    return T(x);
  }
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
template <typename T, typename X>
__device__ __forceinline__ T store_as(X x) {
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

// Extra masks (MaskedInputs::extra) as the kernels read them: scalar loads,
// one per mask per element, their dtype a run-time (warp-uniform) choice so
// that several masks cost no further instantiations.
struct ExtraArgs {
  const void* data[ExtraMasks::kMax];
  int64_t inner[ExtraMasks::kMax];
  MaskKind kind[ExtraMasks::kMax];
  int size;
};

// w combined with the extra masks' weights of element i: the product, or 0
// once any weight is 0 (0 * NaN would keep a NaN weight), in list order.
template <typename T>
__device__ __forceinline__ acc_t<T> with_extra_weights(acc_t<T> w, const ExtraArgs& e, int64_t i) {
  using Acc = acc_t<T>;
  for (int k = 0; k < e.size && w != Acc(0); ++k) {
    const int64_t index = e.inner[k] == 1 ? i : i / e.inner[k];
    Acc m;
    switch (e.kind[k]) {
      case MaskKind::kBool:
        m = load(static_cast<const uint8_t*>(e.data[k]) + index) != 0 ? Acc(1) : Acc(0);
        break;
      case MaskKind::kInput:
        m = Acc(load_acc(load(static_cast<const T*>(e.data[k]) + index)));
        break;
      default:
        m = load(static_cast<const Acc*>(e.data[k]) + index);
        break;
    }
    w = m != Acc(0) ? w * m : Acc(0);
  }
  return w;
}

template <typename T, typename RM>
struct ElementArgs {
  const T* y_true;
  const T* y_pred;
  const RM* mask;  // null: weight 1 everywhere (kConst only)
  acc_t<T> pad;
  ElementPlan plan;
  ExtraArgs extra;
  bool extra_all_bool;
  Labels labels;  // y_true's values when y_true is null
};

// Turns visit_tile's indices into mask weights for the op: op.vector(i, w)
// with the V weights of the unit at element i, op.uniform(i, w) when they are
// all w, op.scalar(i, w) for one element.
template <MaskMode kMode, int V, typename T, typename RM, class Op>
struct WeightedVisit {
  using Acc = acc_t<T>;
  const RM* mask;
  int64_t inner;
  Acc const_weight;  // kConst
  const ExtraArgs& extra;
  Op& op;

  __device__ __forceinline__ void scalar(int64_t i, int64_t m) {
    Acc w = kMode == MaskMode::kConst ? const_weight : mask_weight<Acc>(mask, m);
    if (extra.size > 0) w = with_extra_weights<T>(w, extra, i);
    op.scalar(i, w);
  }

  __device__ __forceinline__ void unit(int64_t i, int64_t row, int64_t col) {
    if (extra.size > 0) {
      with_extras(i, row, col);
    } else {
      plain_unit(i, row, col);
    }
  }

  // The unit's weights from `mask` alone, times the extra masks' weights.
  __device__ __forceinline__ void with_extras(int64_t i, int64_t row, int64_t col) {
    struct Collect {
      Acc* w;
      bool uniform_zero = false;
      __device__ __forceinline__ void vector(int64_t, const Acc* v) {
#pragma unroll
        for (int j = 0; j < V; ++j) w[j] = v[j];
      }
      __device__ __forceinline__ void uniform(int64_t, Acc v) {
#pragma unroll
        for (int j = 0; j < V; ++j) w[j] = v;
        uniform_zero = v == Acc(0);
      }
    };
    Acc w[V];
    Collect collect{w};
    WeightedVisit<kMode, V, T, RM, Collect> base{mask, inner, const_weight, extra, collect};
    base.plain_unit(i, row, col);
    if (collect.uniform_zero) {
      op.uniform(i, Acc(0));
      return;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) w[j] = with_extra_weights<T>(w[j], extra, i + j);
    op.vector(i, w);
  }

  __device__ __forceinline__ void plain_unit(int64_t i, int64_t row, int64_t col) {
    if constexpr (kMode == MaskMode::kConst) {
      op.uniform(i, const_weight);
    } else if constexpr (kMode == MaskMode::kElementwise) {
      const auto m = load(reinterpret_cast<const Pack<RM, V>*>(mask + i));
      Acc w[V];
#pragma unroll
      for (int j = 0; j < V; ++j) w[j] = Weight<Acc, RM>::of(m.v[j]);
      op.vector(i, w);
    } else if (col + V <= inner) {
      op.uniform(i, mask_weight<Acc>(mask, row));
    } else {
      // The unit crosses one or more row ends: one load per row it touches.
      Acc w[V];
      walk_unit_rows<V>(row, col, inner, [&](int j, int64_t r) {
        const Acc wr = mask_weight<Acc>(mask, r);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (k >= j) w[k] = wr;
        }
      });
      op.vector(i, w);
    }
  }
};

// Runs op over the elements of tile blockIdx.x that this thread owns.
template <MaskMode kMode, int V, typename T, typename RM, class Op>
__device__ __forceinline__ void for_each_element(const ElementArgs<T, RM>& a, Op& op) {
  using Acc = acc_t<T>;
  WeightedVisit<kMode, V, T, RM, Op> visit{
      a.mask, a.plan.inner, kMode == MaskMode::kConst ? mask_weight<Acc>(a.mask, 0) : Acc(0),
      a.extra, op};
  visit_tile<kMode, V>(a.plan, int64_t(blockIdx.x), int(threadIdx.x), visit);
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
// Called once per block (its shared memory is not reused).
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
  Loss loss;
  const T* y_true;
  const T* y_pred;
  Acc pad;
  // kBinary with a floating-point extra mask: the weights are no longer 0/1.
  bool weighted;
  Labels labels;
  double sum = 0.0;
  double weight_sum = 0.0;
  long long count = 0;

  __device__ __forceinline__ void add(const Acc* t, const Acc* p, const Acc* w, int len) {
    Acc s = Acc(0), ws = Acc(0);
    int c = 0;
#pragma unroll
    for (int j = 0; j < len; ++j) {
      const bool keep = (w[j] != Acc(0)) && (t[j] != pad);
      const bool binary = kBinary && !weighted;
      const Acc value = binary ? loss.value(t[j], p[j]) : loss.value(t[j], p[j]) * w[j];
      s += keep ? value : Acc(0);
      if (!binary) ws += keep ? w[j] : Acc(0);
      c += keep ? 1 : 0;
    }
    sum += double(s);
    if (!kBinary || weighted) weight_sum += double(ws);
    count += c;
  }

  __device__ __forceinline__ void vector(int64_t i, const Acc* w) {
    Acc t[V], p[V];
    load_vector<V>(y_true, labels, y_pred, i, t, p);
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
    if (w == Acc(0)) return;
    const Acc t = load_target(y_true, labels, i);
    const Acc p = load_acc(load(y_pred + i));
    add(&t, &p, &w, 1);
  }
};

// One block per tile: the tile's Partial goes to partials[blockIdx.x].
template <class Loss, typename T, typename RM, MaskMode kMode, int V>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const Loss loss, const ElementArgs<T, RM> a, Partial* __restrict__ partials) {
  constexpr bool kBinary = std::is_same<RM, uint8_t>::value;
  const bool weighted = a.extra.size > 0 && !a.extra_all_bool;
  ForwardOp<Loss, T, kBinary, V> op{loss, a.y_true, a.y_pred, a.pad, weighted, a.labels};
  for_each_element<kMode, V>(a, op);
  Partial p{op.sum, kBinary && !weighted ? double(op.count) : op.weight_sum, op.count};
  p = block_sum(p);
  if (threadIdx.x == 0) partials[blockIdx.x] = p;
}

// Adds the tiles' partials in a fixed order; with none (n == 0) it writes zeros.
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
  Loss loss;
  const T* y_true;
  const T* y_pred;
  Acc pad;
  GradCoefficients<Acc> k;
  T* grad_true;
  T* grad_pred;
  RM* grad_mask;
  Labels labels;

  template <int N>
  __device__ __forceinline__ void write(int64_t i, const Acc* t, const Acc* p, const Acc* w) {
    Pack<T, N> gt, gp;
    [[maybe_unused]] Pack<RM, N> gm;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool keep = (w[j] != Acc(0)) && (t[j] != pad);
      const Acc aw = k.times_weight(w[j]);
      gt.v[j] = store_as<T>(keep ? aw * loss.grad_true(t[j], p[j]) : Acc(0));
      gp.v[j] = store_as<T>(keep ? aw * loss.grad_pred(t[j], p[j]) : Acc(0));
      if constexpr (!std::is_same<RM, uint8_t>::value) {
        gm.v[j] = store_as<RM>(keep ? k.weight_gradient(loss.value(t[j], p[j])) : Acc(0));
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
    load_vector<V>(y_true, labels, y_pred, i, t, p);
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
    const Acc zero = Acc(0);
    if (w == Acc(0)) {
      write<1>(i, &zero, &zero, &w);
      return;
    }
    const Acc t = load_target(y_true, labels, i);
    const Acc p = load_acc(load(y_pred + i));
    write<1>(i, &t, &p, &w);
  }
};

template <class Loss, typename T, typename RM, MaskMode kMode, int V>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const Loss loss, const ElementArgs<T, RM> a,
                    const BackwardScalars<acc_t<T>> scalars, Reduction reduction, T* grad_true,
                    T* grad_pred, RM* grad_mask) {
  BackwardOp<Loss, T, RM, V> op{
      loss,      a.y_true,  a.y_pred,  a.pad,   load_coefficients(scalars, reduction),
      grad_true, grad_pred, grad_mask, a.labels};
  for_each_element<kMode, V>(a, op);
}

template <typename T, typename M>
struct RowArgs {
  const T* y_true;
  const T* y_pred;
  const M* mask;  // null: weight 1
  int64_t inner;
  acc_t<T> pad;
  RowPlan plan;
  Labels labels;
};

// Gradients of a prefix or 0-d floating-point mask (and of y_true/y_pred on the
// way). Each group of plan.group lanes takes one task (a segment of a row) at a
// time; the loop bound is the same for the whole warp so every lane reaches the
// shuffles. Each lane adds its elements in double, like the forward's totals.
// A row in one segment writes grad_mask directly, otherwise its segment sums
// go to `partials` for row_combine_kernel. Which lane adds which element
// depends on the plan only, not on the grid.
template <class Loss, typename T, typename M>
__global__ void __launch_bounds__(kThreads)
    row_backward_kernel(const Loss loss, const RowArgs<T, M> a,
                        const BackwardScalars<acc_t<T>> scalars, Reduction reduction, T* grad_true,
                        T* grad_pred, M* grad_mask, double* __restrict__ partials) {
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
    double total = 0.0;
    if (active) {
      const int64_t segment = task - row * segments;
      const int64_t row_begin = row * a.inner;
      const int64_t begin = row_begin + segment * a.plan.segment_len;
      const int64_t seg_end = (segment + 1) * a.plan.segment_len;
      const int64_t end = row_begin + (seg_end < a.inner ? seg_end : a.inner);
      const Acc w = mask_weight<Acc>(a.mask, row);
      const bool live = w != Acc(0);
      const Acc aw = k.times_weight(w);
      for (int64_t i = begin + lane; i < end; i += group) {
        // A row of weight 0 keeps nothing: its inputs need not be read.
        const Acc t = live ? load_target(a.y_true, a.labels, i) : Acc(0);
        const Acc p = live ? load_acc(load(a.y_pred + i)) : Acc(0);
        const bool keep = live && t != a.pad;
        if (grad_true != nullptr) {
          grad_true[i] = store_as<T>(keep ? aw * loss.grad_true(t, p) : Acc(0));
        }
        if (grad_pred != nullptr) {
          grad_pred[i] = store_as<T>(keep ? aw * loss.grad_pred(t, p) : Acc(0));
        }
        total += keep ? k.weight_gradient_term(loss.value(t, p)) : 0.0;
      }
    }
    for (int offset = group / 2; offset > 0; offset /= 2) {
      total += __shfl_down_sync(0xffffffffu, total, offset, group);
    }
    if (active && lane == 0) {
      if (segments == 1) {
        grad_mask[row] = store_as<M>(Acc(total));
      } else {
        partials[task] = total;
      }
    }
  }
}

// One block per row adds the row's segment sums in a fixed order.
template <typename T, typename M>
__global__ void __launch_bounds__(kThreads)
    row_combine_kernel(const double* __restrict__ partials, int64_t rows, int64_t segments,
                       M* grad_mask) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    Partial p{0.0, 0.0, 0};
    for (int64_t s = threadIdx.x; s < segments; s += kThreads)
      p.sum += partials[row * segments + s];
    p = block_sum(p);
    if (threadIdx.x == 0) grad_mask[row] = store_as<M>(acc_t<T>(p.sum));
    __syncthreads();  // block_sum's shared memory is reused by the next row
  }
}

// ---- host-side planning ------------------------------------------------------

inline bool aligned_at(const void* p, int64_t offset_bytes, size_t alignment) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) + uint64_t(offset_bytes)) % alignment == 0;
}

template <typename T, typename M>
MaskMode mask_mode(const MaskedInputs<T, M>& in) {
  if (in.mask != nullptr && in.mask_n == in.n) return MaskMode::kElementwise;
  if (in.mask == nullptr || in.mask_n == 1) return MaskMode::kConst;
  return MaskMode::kPrefix;
}

// The partition of n elements (pointers already checked to be element-aligned).
// Vectors need y_true, y_pred and the outputs at the same offset from a 16-byte
// boundary, and an elementwise mask (and its gradient) aligned for a pack of
// V entries; otherwise every unit is one element (*vectorized = false).
template <typename T, typename RM>
ElementPlan plan_elements(const T* y_true, const T* y_pred, const RM* mask, int64_t n,
                          int64_t inner, MaskMode mode, const void* out_a, const void* out_b,
                          const void* out_mask, bool* vectorized) {
  constexpr int V = kVectorBytes / int(sizeof(T));
  const uintptr_t base = reinterpret_cast<uintptr_t>(y_true);
  const int64_t head = int64_t((kVectorBytes - base % kVectorBytes) % kVectorBytes / sizeof(T));
  const int64_t head_bytes = head * int64_t(sizeof(T));
  bool ok = head + V <= n && aligned_at(y_pred, head_bytes, kVectorBytes) &&
            aligned_at(out_a, head_bytes, kVectorBytes) &&
            aligned_at(out_b, head_bytes, kVectorBytes);
  if (mode == MaskMode::kElementwise) {
    const int64_t mask_head_bytes = head * int64_t(sizeof(RM));
    const size_t pack = pack_alignment(V * sizeof(RM));
    ok = ok && aligned_at(mask, mask_head_bytes, pack) &&
         aligned_at(out_mask, mask_head_bytes, pack);
  }
  const int width = ok ? V : 1;
  ElementPlan p{};
  p.n = n;
  p.inner = inner;
  p.head = ok ? head : 0;
  p.num_units = ok ? (n - head) / V : n;
  p.tail_begin = p.head + p.num_units * width;
  const TilePlan tiles = tile_plan(p.num_units);
  p.units_per_tile = tiles.units_per_tile;
  p.tiles = tiles.tiles;
  if (mode == MaskMode::kPrefix && inner > 0) {
    const int64_t step = int64_t(kThreads) * width;
    p.step_rows = step / inner;
    p.step_cols = step % inner;
  }
  *vectorized = ok;
  return p;
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
ElementArgs<T, raw_mask_t<M>> element_args(const MaskedInputs<T, M>& in, MaskMode mode,
                                           const void* out_a, const void* out_b,
                                           const void* out_mask, bool* vectorized) {
  using RM = raw_mask_t<M>;
  ElementArgs<T, RM> a{};
  a.y_true = in.y_true;
  a.y_pred = in.y_pred;
  a.mask = reinterpret_cast<const RM*>(in.mask);
  a.pad = acc_t<T>(in.padding_value);
  a.labels = in.labels;
  // Labels are read element by element: y_pred alone sets the vectors' phase.
  const T* base = in.y_true != nullptr ? in.y_true : in.y_pred;
  a.plan = plan_elements(base, in.y_pred, a.mask, in.n, in.inner(), mode, out_a, out_b, out_mask,
                         vectorized);
  a.extra.size = in.extra.size;
  for (int k = 0; k < in.extra.size; ++k) {
    a.extra.data[k] = in.extra.mask[k].data;
    a.extra.kind[k] = in.extra.mask[k].kind;
    a.extra.inner[k] = in.extra.mask[k].mask_n > 0 ? in.n / in.extra.mask[k].mask_n : 1;
  }
  a.extra_all_bool = in.extra.all_bool();
  return a;
}

inline bool aligned_to(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace detail

// ---- launchers ---------------------------------------------------------------

template <class Loss, class T, class M>
Status forward(const Loss& loss_fn, const MaskedInputs<T, M>& in, Reduction reduction,
               void* workspace, size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum,
               acc_t<T>* weight_sum, int64_t* count, cudaStream_t stream) {
  using namespace detail;
  using RM = raw_mask_t<M>;
  if (!in.valid_shape()) return Status::kBadShape;
  // A misaligned load faults and takes the CUDA context down with it.
  if (!in.aligned() || !is_aligned(loss) || !is_aligned(sum) || !is_aligned(weight_sum) ||
      !is_aligned(count) || !aligned_to(workspace, alignof(Partial))) {
    return Status::kMisaligned;
  }
  if (workspace_bytes < forward_workspace_bytes(in.n)) return Status::kWorkspaceTooSmall;
  Partial* partials = static_cast<Partial*>(workspace);
  const MaskMode mode = mask_mode(in);
  bool vectorized = false;
  const ElementArgs<T, RM> a = element_args(in, mode, nullptr, nullptr, nullptr, &vectorized);
  clear_launch_error();
  if (a.plan.tiles > 0) {
    constexpr int V = kVectorBytes / int(sizeof(T));
    dispatch<V>(mode, vectorized, [&](auto m, auto v) {
      forward_kernel<Loss, T, RM, decltype(m)::value, decltype(v)::value>
          <<<unsigned(a.plan.tiles), kThreads, 0, stream>>>(loss_fn, a, partials);
    });
  }
  finalize_kernel<acc_t<T>>
      <<<1, kThreads, 0, stream>>>(partials, a.plan.tiles, reduction, loss, sum, weight_sum, count);
  return launch_status();
}

template <class Loss, class T, class M>
Status backward(const Loss& loss, const MaskedInputs<T, M>& in, Reduction reduction,
                const BackwardScalars<acc_t<T>>& scalars, T* grad_true, T* grad_pred, M* grad_mask,
                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  using namespace detail;
  using RM = raw_mask_t<M>;
  if (!in.valid_shape()) return Status::kBadShape;
  if (!in.aligned() || !is_aligned(grad_true) || !is_aligned(grad_pred) || !is_aligned(grad_mask) ||
      !is_aligned(scalars.grad_loss) || !is_aligned(scalars.grad_sum) ||
      !is_aligned(scalars.grad_weight_sum) || !is_aligned(scalars.loss) ||
      !is_aligned(scalars.weight_sum) || !aligned_to(workspace, alignof(double))) {
    return Status::kMisaligned;
  }
  if (grad_mask != nullptr && in.extra.size > 0) return Status::kExtraMaskGradient;
  if (grad_true != nullptr && in.labels.data != nullptr) return Status::kLabelGradient;
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
      const RowArgs<T, M> a{in.y_true, in.y_pred, in.mask, in.inner(), acc_t<T>(in.padding_value),
                            plan,      in.labels};
      const auto row_kernel = row_backward_kernel<Loss, T, M>;
      const int64_t grid = std::min(resident_blocks(reinterpret_cast<const void*>(row_kernel)),
                                    ceil_div(plan.tasks * plan.group, kThreads));
      double* partials = static_cast<double*>(workspace);
      row_kernel<<<unsigned(grid), kThreads, 0, stream>>>(loss, a, scalars, reduction, grad_true,
                                                          grad_pred, grad_mask, partials);
      if (plan.segments > 1) {
        const auto combine = row_combine_kernel<T, M>;
        const int64_t blocks =
            std::min(in.mask_n, resident_blocks(reinterpret_cast<const void*>(combine)));
        combine<<<unsigned(blocks), kThreads, 0, stream>>>(partials, in.mask_n, plan.segments,
                                                           grad_mask);
      }
      return launch_status();
    }
  }

  if (in.n == 0) return Status::kOk;
  const MaskMode mode = mask_mode(in);
  bool vectorized = false;
  const ElementArgs<T, RM> a = element_args(in, mode, grad_true, grad_pred, mask_out, &vectorized);
  clear_launch_error();
  constexpr int V = kVectorBytes / int(sizeof(T));
  dispatch<V>(mode, vectorized, [&](auto m, auto v) {
    backward_kernel<Loss, T, RM, decltype(m)::value, decltype(v)::value>
        <<<unsigned(a.plan.tiles), kThreads, 0, stream>>>(loss, a, scalars, reduction, grad_true,
                                                          grad_pred, mask_out);
  });
  return launch_status();
}

namespace detail {

template <typename Acc>
__global__ void unit_upstream_kernel(Acc* out) {
  out[0] = Acc(1);
  out[1] = Acc(0);
  out[2] = Acc(0);
}

// Where forward_backward keeps its upstream constants: after the forward's
// partials, 16-byte aligned.
inline size_t unit_upstream_offset(int64_t n) {
  return (forward_workspace_bytes(n) + 15) / 16 * 16;
}

}  // namespace detail

template <class Loss, class T, class M>
Status forward_backward(const Loss& loss_fn, const MaskedInputs<T, M>& in, Reduction reduction,
                        void* workspace, size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum,
                        acc_t<T>* weight_sum, int64_t* count, T* grad_true, T* grad_pred,
                        cudaStream_t stream) {
  using Acc = acc_t<T>;
  if (!std::is_same<M, bool>::value || in.extra.size > 0 || in.padding_value == in.padding_value) {
    return Status::kUnsupported;
  }
  if (workspace_bytes < forward_backward_workspace_bytes(in.n)) return Status::kWorkspaceTooSmall;
  if (grad_true != nullptr && in.labels.data != nullptr) return Status::kLabelGradient;
  const Status s = forward(loss_fn, in, reduction, workspace, workspace_bytes, loss, sum,
                           weight_sum, count, stream);
  if (s != Status::kOk) return s;
  Acc* upstream =
      reinterpret_cast<Acc*>(static_cast<char*>(workspace) + detail::unit_upstream_offset(in.n));
  detail::clear_launch_error();
  detail::unit_upstream_kernel<Acc><<<1, 1, 0, stream>>>(upstream);
  const Status launched = detail::launch_status();
  if (launched != Status::kOk) return launched;
  BackwardScalars<Acc> scalars;
  scalars.grad_loss = upstream;
  scalars.grad_sum = upstream + 1;
  scalars.grad_weight_sum = upstream + 2;
  scalars.loss = loss;
  scalars.weight_sum = weight_sum;
  return backward(loss_fn, in, reduction, scalars, grad_true, grad_pred, static_cast<M*>(nullptr),
                  nullptr, 0, stream);
}

}  // namespace cuda
}  // namespace masked_ops

// Explicit instantiations of the launchers for one loss, every input dtype T
// and the mask dtypes the kernels take: bool, T, and T's accumulator dtype
// (float32 weights for 16-bit inputs). Use at global scope:
// MASKED_OPS_INSTANTIATE_CUDA_LOSS(::masked_ops::SomeLoss);
#define MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, M)                                         \
  template Status forward<LOSS, T, M>(const LOSS&, const MaskedInputs<T, M>&, Reduction, void*, \
                                      size_t, acc_t<T>*, acc_t<T>*, acc_t<T>*, int64_t*,        \
                                      cudaStream_t);                                            \
  template Status backward<LOSS, T, M>(const LOSS&, const MaskedInputs<T, M>&, Reduction,       \
                                       const BackwardScalars<acc_t<T>>&, T*, T*, M*, void*,     \
                                       size_t, cudaStream_t)

// The one-pass launcher exists for boolean masks only.
#define MASKED_OPS_INSTANTIATE_CUDA_FORWARD_BACKWARD(LOSS, T)                                     \
  template Status forward_backward<LOSS, T, bool>(const LOSS&, const MaskedInputs<T, bool>&,      \
                                                  Reduction, void*, size_t, acc_t<T>*, acc_t<T>*, \
                                                  acc_t<T>*, int64_t*, T*, T*, cudaStream_t)

// M in {bool, T}: float32 and float64 inputs, whose accumulator is T itself.
#define MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, T)      \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, bool);    \
  MASKED_OPS_INSTANTIATE_CUDA_FORWARD_BACKWARD(LOSS, T); \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, T)

// M in {bool, T, float}: 16-bit inputs.
#define MASKED_OPS_INSTANTIATE_CUDA_LOSS_16BIT(LOSS, T) \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, T);          \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_TM(LOSS, T, float)

#define MASKED_OPS_INSTANTIATE_CUDA_LOSS(LOSS)              \
  namespace masked_ops {                                    \
  namespace cuda {                                          \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_16BIT(LOSS, half_t);     \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_16BIT(LOSS, bfloat16_t); \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, float);          \
  MASKED_OPS_INSTANTIATE_CUDA_LOSS_T(LOSS, double);         \
  }                                                         \
  }                                                         \
  static_assert(true, "")
