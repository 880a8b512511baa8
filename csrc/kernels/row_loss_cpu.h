// CPU kernels for the row losses (row_loss.h; functors in
// losses/categorical_crossentropy.h).
//
// Rows are cut into fixed tasks of rows_per_task(classes) rows, independent
// of the thread count; each task reduces its rows into a double-precision
// Partial (row values are formed in double) and the partials are combined in
// task order, so results are bitwise identical for any number of threads.
// A row that is not kept is skipped without reading its logits or its label.
//
// A kept row of logits is read once: an online log-sum-exp keeps, per lane
// of kLanes independent lanes, a running max and the sum of exp(x - max)
// relative to it, updated together once per tile of kTile elements (the
// tile's max first, from L1, then one exp per element), so there is one exp
// per element and no second pass over the row. Lane sums are float32 for
// 16-bit and float32 inputs within a tile and double across tiles, so the
// rounding error is bounded by the tile, not by V. The row's log-sum-exp,
// as its max and sum (the functor's kRowStats statistics), is written to a
// small per-row output that the backward reads instead of a second max/sum pass.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "masked_loss_cpu.h"
#include "row_loss.h"

namespace masked_ops {
namespace cpu {
namespace rows {

// Elements per tile of the lane loops: 32 steps of kLanes. The partial sums
// of one tile are float32 (for float32 inputs) before they go to double.
constexpr int64_t kTile = int64_t(kLanes) * 32;

// A task's partial sums, and the number of its kept rows whose label is out
// of range.
struct TaskPartial {
  Partial partial;
  int64_t bad_labels = 0;
};

// About kChunk elements per task: enough work to be worth a thread, and few
// enough rows that the tasks balance.
inline int64_t rows_per_task(int64_t classes) {
  return std::max<int64_t>(1, kChunk / std::max<int64_t>(classes, 1));
}

inline int64_t num_tasks(int64_t rows, int64_t classes) {
  const int64_t per = rows_per_task(classes);
  return rows <= 0 ? 0 : (rows + per - 1) / per;
}

// Two-phase workspace query: forward, backward and forward_backward each need
// one TaskPartial per task.
inline size_t workspace_bytes(int64_t rows, int64_t classes) {
  return size_t(num_tasks(rows, classes)) * sizeof(TaskPartial);
}

namespace detail {

// Whether a row is kept, its weight and (sparse losses) its label. The label
// is read only where the mask keeps the row; `bad` marks a kept row whose
// label is out of range (never used to index).
template <class Acc>
struct RowKeep {
  Acc w = Acc(0);
  int64_t label = 0;
  bool keep = false;
  bool bad = false;
};

template <bool kSparse, class T, class M>
RowKeep<acc_t<T>> row_keep(const RowLossParams<T, M>& p, int64_t row) {
  using Acc = acc_t<T>;
  RowKeep<Acc> r;
  if (p.mask == nullptr) {
    r.w = Acc(1);
  } else if constexpr (std::is_same<M, bool>::value) {
    // Booleans are read as bytes (any non-zero byte keeps), as the elementwise engine reads them.
    r.w = reinterpret_cast<const uint8_t*>(p.mask)[row / p.rows_per_entry()] != 0 ? Acc(1) : Acc(0);
  } else {
    r.w = MaskWeight<Acc, M>::of(p.mask[row / p.rows_per_entry()]);
  }
  if (r.w == Acc(0)) return r;
  if constexpr (kSparse) {
    r.label = p.label(row);
    if (p.has_ignore_class && r.label == p.ignore_class) return r;
    r.bad = r.label < 0 || r.label >= p.classes;
  }
  r.keep = !r.bad;
  return r;
}

// Sums over j in [0, len) of N terms per element: step(j, l, acc) adds the
// element's terms to acc[k][l] (lane l). Lanes are float32 for float32 and
// 16-bit inputs within a tile, flushed to `total` in double after each tile.
template <class Acc, int N, class Step>
inline __attribute__((always_inline)) void tiled_lane_sums(int64_t len, double* total, Step step) {
  for (int64_t b = 0; b < len; b += kTile) {
    const int64_t end = std::min(len, b + kTile);
    Acc acc[N][kLanes] = {};
    int64_t j = b;
    for (; j + kLanes <= end; j += kLanes) {
      MO_SIMD_LANES
      for (int l = 0; l < kLanes; ++l) step(j + l, l, acc);
    }
    for (int l = 0; j < end; ++j, ++l) step(j, l, acc);
    for (int k = 0; k < N; ++k) {
      for (int l = 0; l < kLanes; ++l) total[k] += double(acc[k][l]);
    }
  }
}

// A row of logits reduced by the online log-sum-exp: the max M, sum_j exp(x_j
// - M) and, for dense targets z, sum_j z_j and sum_j z_j (x_j - M).
struct LogitsRow {
  double max;
  double sum_exp;
  double z_total;
  double zx;
};

template <class Loss, class T>
LogitsRow logits_row(const Loss& loss, const T* x, const T* t, int64_t classes) {
  using Acc = acc_t<T>;
  constexpr bool kDense = !Loss::kSparse;
  constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
  const Acc t_scale = loss.template target_scale<Acc>();
  const Acc t_offset = loss.template target_offset<Acc>();
  // Per lane: the running max, the shift its sums are relative to (the max,
  // or 0 while the lane has seen only -inf: exp(-inf - -inf) would be NaN),
  // sum exp(x - shift) and the target sums.
  Acc max[kLanes], shift[kLanes];
  double sum[kLanes] = {}, z_sum[kLanes] = {}, zx_sum[kLanes] = {};
  for (int l = 0; l < kLanes; ++l) {
    max[l] = kNegInf;
    shift[l] = Acc(0);
  }
  for (int64_t b = 0; b < classes; b += kTile) {
    const int64_t len = std::min(kTile, classes - b);
    const int64_t full = len - len % kLanes;
    const T* xt = x + b;
    // The tile's max per lane first (a NaN is not a max; its exp is NaN below).
    Acc tile_max[kLanes];
    for (int l = 0; l < kLanes; ++l) tile_max[l] = max[l];
    for (int64_t i = 0; i < full; i += kLanes) {
      MO_SIMD_LANES
      for (int l = 0; l < kLanes; ++l) {
        const Acc v = to_acc(xt[i + l]);
        tile_max[l] = v > tile_max[l] ? v : tile_max[l];
      }
    }
    for (int64_t i = full; i < len; ++i) {
      const Acc v = to_acc(xt[i]);
      const int l = int(i - full);
      tile_max[l] = v > tile_max[l] ? v : tile_max[l];
    }
    Acc new_shift[kLanes], rescale[kLanes];
    MO_SIMD_LANES
    for (int l = 0; l < kLanes; ++l) {
      new_shift[l] = tile_max[l] == kNegInf ? shift[l] : tile_max[l];
      rescale[l] = math::exp(shift[l] - new_shift[l]);  // exactly 1 when the max did not move
    }
    Acc s[kLanes] = {}, zs[kLanes] = {}, zxs[kLanes] = {};
    auto step = [&](int64_t i, int l) {
      const Acc v = to_acc(xt[i]);
      s[l] += Loss::exp_shifted(v, new_shift[l]);
      if constexpr (kDense) {
        const Acc z = to_acc(t[b + i]) * t_scale + t_offset;
        zs[l] += z;
        zxs[l] += z * (v - new_shift[l]);
      }
    };
    for (int64_t i = 0; i < full; i += kLanes) {
      MO_SIMD_LANES
      for (int l = 0; l < kLanes; ++l) step(i + l, l);
    }
    for (int64_t i = full; i < len; ++i) step(i, int(i - full));
    for (int l = 0; l < kLanes; ++l) {
      sum[l] = sum[l] * double(rescale[l]) + double(s[l]);
      if constexpr (kDense) {
        zx_sum[l] += (double(shift[l]) - double(new_shift[l])) * z_sum[l] + double(zxs[l]);
        z_sum[l] += double(zs[l]);
      }
      shift[l] = new_shift[l];
      max[l] = tile_max[l];
    }
  }
  // Lanes combined in lane order, relative to the row's max.
  LogitsRow row{double(kNegInf), 0.0, 0.0, 0.0};
  for (int l = 0; l < kLanes; ++l) row.max = std::max(row.max, double(max[l]));
  for (int l = 0; l < kLanes; ++l) {
    // A lane that saw only -inf adds exp terms of 0 (its shift is 0, not its max).
    if (max[l] != kNegInf) row.sum_exp += sum[l] * std::exp(double(shift[l]) - row.max);
    if constexpr (kDense) {
      row.z_total += z_sum[l];
      row.zx += zx_sum[l] + (double(shift[l]) - row.max) * z_sum[l];
    }
  }
  return row;
}

// The forward of one kept row: writes its kRowStats statistics and returns its value.
template <class Loss, class T>
double row_forward(const Loss& loss, const T* x, const T* t, int64_t label, int64_t classes,
                   acc_t<T>* stats) {
  using Acc = acc_t<T>;
  if constexpr (Loss::kFromLogits) {
    const LogitsRow row = logits_row(loss, x, t, classes);
    stats[0] = Acc(row.max);  // exact: one of the row's values
    stats[1] = Acc(row.sum_exp);
    if constexpr (Loss::kSparse) {
      return Loss::row_value(row.max, row.sum_exp, double(to_acc(x[label])));
    } else {
      return Loss::row_value(row.sum_exp, row.z_total, row.zx);
    }
  } else if constexpr (Loss::kSparse) {
    double total = 0.0;
    tiled_lane_sums<Acc, 1>(classes, &total, [&](int64_t j, int l, Acc(&acc)[1][kLanes]) {
      acc[0][l] += Loss::clipped(to_acc(x[j]));
    });
    stats[0] = Acc(total);
    return Loss::row_value(total, double(Loss::clipped(to_acc(x[label]))));
  } else {
    // Keras normalizes by the row sum before clipping: the sum first, then
    // the logs of the normalized row (from cache).
    double row_sum = 0.0;
    tiled_lane_sums<Acc, 1>(classes, &row_sum, [&](int64_t j, int l, Acc(&acc)[1][kLanes]) {
      acc[0][l] += to_acc(x[j]);
    });
    const Acc s = Acc(row_sum);
    const Acc t_scale = loss.template target_scale<Acc>();
    const Acc t_offset = loss.template target_offset<Acc>();
    double totals[2] = {0.0, 0.0};  // sum z log(clip(q)), Z_in
    tiled_lane_sums<Acc, 2>(classes, totals, [&](int64_t j, int l, Acc(&acc)[2][kLanes]) {
      const Acc z = to_acc(t[j]) * t_scale + t_offset;
      const Acc q = Loss::normalized(to_acc(x[j]), s);
      acc[0][l] += Loss::log_term(z, q);
      acc[1][l] += Loss::unclipped_target(z, q);
    });
    stats[0] = s;
    stats[1] = Acc(totals[1]);
    return -totals[0];
  }
}

// The gradient of one kept row, aw (the coefficient times the row's weight)
// times d value / d y_pred, from its statistics. g may equal x (in place):
// every element is read before it is written, the label's first.
template <class Loss, class T>
void row_gradient(const Loss& loss, const T* x, const T* t, int64_t label, int64_t classes,
                  const acc_t<T>* stats, acc_t<T> aw, T* g) {
  using Acc = acc_t<T>;
  const Acc t_scale = loss.template target_scale<Acc>();
  const Acc t_offset = loss.template target_offset<Acc>();
  if constexpr (Loss::kFromLogits && Loss::kSparse) {
    const Acc max = stats[0], inverse_sum = Acc(1) / stats[1];
    const Acc x_label = to_acc(x[label]);
    MO_SIMD_LANES
    for (int64_t j = 0; j < classes; ++j) {
      g[j] = from_acc<T>(aw * Loss::grad(to_acc(x[j]), Acc(0), max, inverse_sum));
    }
    g[label] = from_acc<T>(aw * Loss::grad(x_label, Acc(1), max, inverse_sum));
  } else if constexpr (Loss::kFromLogits) {
    const Acc max = stats[0], inverse_sum = Acc(1) / stats[1];
    MO_SIMD_LANES
    for (int64_t j = 0; j < classes; ++j) {
      const Acc z = to_acc(t[j]) * t_scale + t_offset;
      g[j] = from_acc<T>(aw * Loss::grad(to_acc(x[j]), z, max, inverse_sum));
    }
  } else if constexpr (Loss::kSparse) {
    const Acc inverse_sum = Acc(1) / stats[0];
    const Acc p_label = to_acc(x[label]);
    MO_SIMD_LANES
    for (int64_t j = 0; j < classes; ++j) {
      g[j] = from_acc<T>(aw * Loss::grad(to_acc(x[j]), inverse_sum));
    }
    g[label] = from_acc<T>(aw * Loss::grad_label(p_label, inverse_sum));
  } else {
    const Acc s = stats[0];
    const Acc z_in = stats[1];
    MO_SIMD_LANES
    for (int64_t j = 0; j < classes; ++j) {
      const Acc z = to_acc(t[j]) * t_scale + t_offset;
      g[j] = from_acc<T>(aw * Loss::grad(z, Loss::normalized(to_acc(x[j]), s), s, z_in));
    }
  }
}

// Rows [first, last): all the per-row work of every entry point. kForward:
// reduce the kept rows into the returned partial and write their statistics
// (stats may be null: not wanted); otherwise read them. kGrad: write the
// gradient of every row (0 for a row that is not kept) with coefficients k.
// A kept row with an out-of-range label is counted in bad_labels and skipped.
template <class Loss, class T, class M, bool kForward, bool kGrad>
TaskPartial row_range_impl(const Loss& loss, const RowLossParams<T, M>& p, int64_t first,
                           int64_t last, acc_t<T>* stats, GradCoefficients<acc_t<T>> k, T* grad) {
  using Acc = acc_t<T>;
  constexpr int kStats = Loss::kRowStats;
  const int64_t classes = p.classes;
  TaskPartial out;
  for (int64_t r = first; r < last; ++r) {
    const RowKeep<Acc> row = row_keep<Loss::kSparse>(p, r);
    Acc own[kStats];
    Acc* st = stats != nullptr ? stats + r * kStats : own;
    T* g = kGrad ? grad + r * classes : nullptr;
    if (!row.keep) {
      out.bad_labels += row.bad ? 1 : 0;
      if (kForward && stats != nullptr) std::fill(st, st + kStats, Acc(0));
      if (kGrad) std::fill(g, g + classes, from_acc<T>(Acc(0)));
      continue;
    }
    const T* x = p.y_pred + r * classes;
    const T* t = Loss::kSparse ? nullptr : p.y_true + r * classes;
    if constexpr (kForward) {
      const double value = row_forward(loss, x, t, row.label, classes, st);
      out.partial.sum += double(row.w) * value;
      out.partial.weight_sum += double(row.w);
      out.partial.count += 1;
    }
    if constexpr (kGrad) row_gradient(loss, x, t, row.label, classes, st, k.times_weight(row.w), g);
  }
  return out;
}

#if defined(MO_CPU_DISPATCH)
template <class Loss, class T, class M, bool kForward, bool kGrad>
MO_CPU_AVX2 TaskPartial row_range_avx2(const Loss& loss, const RowLossParams<T, M>& p,
                                       int64_t first, int64_t last, acc_t<T>* stats,
                                       GradCoefficients<acc_t<T>> k, T* grad) {
  return row_range_impl<Loss, T, M, kForward, kGrad>(loss, p, first, last, stats, k, grad);
}
template <class Loss, class T, class M, bool kForward, bool kGrad>
MO_CPU_AVX512 TaskPartial row_range_avx512(const Loss& loss, const RowLossParams<T, M>& p,
                                           int64_t first, int64_t last, acc_t<T>* stats,
                                           GradCoefficients<acc_t<T>> k, T* grad) {
  return row_range_impl<Loss, T, M, kForward, kGrad>(loss, p, first, last, stats, k, grad);
}
#endif

// row_range_impl for the CPU's instruction set (cpu_isa.h).
template <class Loss, class T, class M, bool kForward, bool kGrad>
TaskPartial row_range(const Loss& loss, const RowLossParams<T, M>& p, int64_t first, int64_t last,
                      acc_t<T>* stats, GradCoefficients<acc_t<T>> k, T* grad) {
#if defined(MO_CPU_DISPATCH)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return row_range_avx512<Loss, T, M, kForward, kGrad>(loss, p, first, last, stats, k, grad);
    case Isa::kAvx2:
      return row_range_avx2<Loss, T, M, kForward, kGrad>(loss, p, first, last, stats, k, grad);
    case Isa::kBaseline:
      break;
  }
#endif
  return row_range_impl<Loss, T, M, kForward, kGrad>(loss, p, first, last, stats, k, grad);
}

// Weight sum, count and out-of-range labels of the kept rows, per task, in
// the same order of additions as row_range's: reads the mask and the labels
// of the rows the mask keeps, nothing else.
template <bool kSparse, class T, class M>
void kept_rows(const RowLossParams<T, M>& p, TaskPartial* partials,
               const ParallelFor& parallel_for) {
  const int64_t per = rows_per_task(p.classes);
  parallel_for(num_tasks(p.rows, p.classes), per, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      TaskPartial out;
      for (int64_t r = task * per; r < std::min(p.rows, (task + 1) * per); ++r) {
        const auto row = row_keep<kSparse>(p, r);
        out.bad_labels += row.bad ? 1 : 0;
        if (!row.keep) continue;
        out.partial.weight_sum += double(row.w);
        out.partial.count += 1;
      }
      partials[task] = out;
    }
  });
}

inline TaskPartial combine(const TaskPartial* partials, int64_t tasks) {
  TaskPartial total;
  for (int64_t i = 0; i < tasks; ++i) {
    total.partial.add(partials[i].partial);
    total.bad_labels += partials[i].bad_labels;
  }
  return total;
}

template <class Loss, class T, class M>
Status check(const RowLossParams<T, M>& p, size_t workspace_bytes) {
  if (!p.valid_shape()) return Status::kBadShape;
  if (!p.valid_for(Loss::kSparse, Loss::kFromLogits)) return Status::kBadRowArgs;
  if (!p.aligned()) return Status::kMisaligned;
  if (workspace_bytes < rows::workspace_bytes(p.rows, p.classes)) {
    return Status::kWorkspaceTooSmall;
  }
  return Status::kOk;
}

template <class Loss, class T, class M, bool kForward, bool kGrad>
void run_tasks(const Loss& loss, const RowLossParams<T, M>& p, TaskPartial* partials,
               acc_t<T>* stats, GradCoefficients<acc_t<T>> k, T* grad,
               const ParallelFor& parallel_for) {
  const int64_t per = rows_per_task(p.classes);
  parallel_for(num_tasks(p.rows, p.classes), per * p.classes, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      partials[task] = row_range<Loss, T, M, kForward, kGrad>(
          loss, p, task * per, std::min(p.rows, (task + 1) * per), stats, k, grad);
    }
  });
}

template <class Acc>
void write_outputs(const Partial& total, Reduction reduction, Acc* loss, Acc* sum, Acc* weight_sum,
                   int64_t* count) {
  *loss = Acc(finalize_loss(total.sum, total.weight_sum, reduction));
  *sum = Acc(total.sum);
  *weight_sum = Acc(total.weight_sum);
  *count = total.count;
}

}  // namespace detail

// Forward: loss, sum, weight_sum (accumulator type), the exact count of kept
// rows, and row_stats (rows x Loss::kRowStats, accumulator type; null: not
// wanted; 0 for rows that are not kept). kLabelOutOfRange when a kept row's
// label is outside [0, classes): the scalar outputs are not written then.
template <class Loss, class T, class M>
Status forward(const RowLossParams<T, M>& p, void* workspace, size_t workspace_bytes,
               acc_t<T>* loss, acc_t<T>* sum, acc_t<T>* weight_sum, int64_t* count,
               acc_t<T>* row_stats, const ParallelFor& parallel_for = run_serially) {
  const Status s = detail::check<Loss>(p, workspace_bytes);
  if (s != Status::kOk) return s;
  if (!is_aligned(row_stats)) return Status::kMisaligned;
  TaskPartial* partials = static_cast<TaskPartial*>(workspace);
  IeeeSubnormals ieee;
  const Loss loss_fn(p.label_smoothing, p.classes);
  detail::run_tasks<Loss, T, M, true, false>(loss_fn, p, partials, row_stats, {}, nullptr,
                                             with_ieee_subnormals(parallel_for));
  const TaskPartial total = detail::combine(partials, num_tasks(p.rows, p.classes));
  if (total.bad_labels > 0) return Status::kLabelOutOfRange;
  detail::write_outputs(total.partial, p.reduction, loss, sum, weight_sum, count);
  return Status::kOk;
}

// Backward: grad (rows x classes, y_pred's dtype) = d/dy_pred of the forward's
// outputs for the upstream gradients in `scalars` (grad_weight_sum is not
// used: masks get no gradient here), from the forward's row_stats; 0 for rows
// that are not kept. Labels are checked before anything is written.
template <class Loss, class T, class M>
Status backward(const RowLossParams<T, M>& p, const BackwardScalars<acc_t<T>>& scalars,
                const acc_t<T>* row_stats, T* grad, void* workspace, size_t workspace_bytes,
                const ParallelFor& parallel_for = run_serially) {
  using Acc = acc_t<T>;
  const Status s = detail::check<Loss>(p, workspace_bytes);
  if (s != Status::kOk) return s;
  if (!is_aligned(row_stats) || !is_aligned(grad)) return Status::kMisaligned;
  if (p.rows > 0 && (row_stats == nullptr || grad == nullptr)) return Status::kBadShape;
  TaskPartial* partials = static_cast<TaskPartial*>(workspace);
  IeeeSubnormals ieee;
  const ParallelFor guarded = with_ieee_subnormals(parallel_for);
  detail::kept_rows<Loss::kSparse>(p, partials, guarded);
  if (detail::combine(partials, num_tasks(p.rows, p.classes)).bad_labels > 0) {
    return Status::kLabelOutOfRange;
  }
  const auto k = grad_coefficients(*scalars.grad_loss, *scalars.grad_sum, Acc(0), *scalars.loss,
                                   *scalars.weight_sum, p.reduction);
  const Loss loss_fn(p.label_smoothing, p.classes);
  detail::run_tasks<Loss, T, M, false, true>(loss_fn, p, partials, const_cast<Acc*>(row_stats), k,
                                             grad, guarded);
  return Status::kOk;
}

// Forward (outputs as forward()) and the gradient of `loss` for an upstream
// gradient of 1 (as backward() with grad_loss = 1, grad_sum = 0 gives it, bit
// for bit) in one pass: each row's gradient is written right after its
// forward, from the row still in cache. grad may be p.y_pred (in place: the
// gradient overwrites the logits). The normalization comes first from a
// pre-pass over the mask (and, for sparse losses, the labels of the rows it
// keeps, which are checked there: on kLabelOutOfRange nothing is written).
// cpu::scale_gradient applies another upstream gradient.
template <class Loss, class T, class M>
Status forward_backward(const RowLossParams<T, M>& p, void* workspace, size_t workspace_bytes,
                        acc_t<T>* loss, acc_t<T>* sum, acc_t<T>* weight_sum, int64_t* count,
                        acc_t<T>* row_stats, T* grad,
                        const ParallelFor& parallel_for = run_serially) {
  using Acc = acc_t<T>;
  const Status s = detail::check<Loss>(p, workspace_bytes);
  if (s != Status::kOk) return s;
  if (!is_aligned(row_stats) || !is_aligned(grad)) return Status::kMisaligned;
  if (p.rows > 0 && grad == nullptr) return Status::kBadShape;
  TaskPartial* partials = static_cast<TaskPartial*>(workspace);
  const int64_t tasks = num_tasks(p.rows, p.classes);
  IeeeSubnormals ieee;
  const ParallelFor guarded = with_ieee_subnormals(parallel_for);
  detail::kept_rows<Loss::kSparse>(p, partials, guarded);
  const TaskPartial kept = detail::combine(partials, tasks);
  if (kept.bad_labels > 0) return Status::kLabelOutOfRange;
  // As backward() computes them from the forward's weight_sum output (the
  // same double total, rounded once); the loss only enters mask gradients.
  const auto k =
      grad_coefficients(Acc(1), Acc(0), Acc(0), Acc(0), Acc(kept.partial.weight_sum), p.reduction);
  const Loss loss_fn(p.label_smoothing, p.classes);
  detail::run_tasks<Loss, T, M, true, true>(loss_fn, p, partials, row_stats, k, grad, guarded);
  detail::write_outputs(detail::combine(partials, tasks).partial, p.reduction, loss, sum,
                        weight_sum, count);
  return Status::kOk;
}

}  // namespace rows
}  // namespace cpu
}  // namespace masked_ops
