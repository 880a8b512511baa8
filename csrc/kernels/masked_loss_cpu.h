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
#include <functional>
#include <type_traits>

#include "masked_loss.h"

namespace masked_ops {
namespace cpu {

constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kBlock = 1024;
constexpr int kLanes = 16;

// Runs fn(first, last) over task indices [0, num_tasks), possibly on several
// threads; elements_per_task is a cost hint. The adapter supplies it (TF's
// intra-op pool, or a std::thread pool in the Python binding).
using TaskFn = std::function<void(int64_t, int64_t)>;
using ParallelFor = std::function<void(int64_t num_tasks, int64_t elements_per_task, const TaskFn& fn)>;

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

// Reduces len <= kBlock elements. kElementwise: weight from mask[i]; otherwise
// every element has weight w_const (a prefix-mask row, or no mask).
template <class Loss, class T, class M, bool kElementwise>
Partial forward_block(const T* yt, const T* yp, const M* mask, acc_t<T> w_const, acc_t<T> pad,
                      int64_t len) {
  using Acc = acc_t<T>;
  Acc s[kLanes] = {};
  Acc ws[kLanes] = {};
  int32_t c[kLanes] = {};
  auto step = [&](int64_t i, int l) {
    const Acc t = to_acc(yt[i]);
    const Acc p = to_acc(yp[i]);
    const Acc w = kElementwise ? MaskWeight<Acc, M>::of(mask[i]) : w_const;
    const bool keep = (w != Acc(0)) & (t != pad);
    const Acc v = Loss::value(t, p) * w;
    s[l] += keep ? v : Acc(0);
    ws[l] += keep ? w : Acc(0);
    c[l] += keep ? 1 : 0;
  };
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) step(i + l, l);
  }
  for (int l = 0; i < len; ++i, ++l) step(i, l);
  Partial out;
  for (int l = 0; l < kLanes; ++l) {
    out.sum += double(s[l]);
    out.weight_sum += double(ws[l]);
    out.count += c[l];
  }
  return out;
}

template <class Loss, class T, class M>
Partial forward_range(const MaskedInputs<T, M>& in, int64_t begin, int64_t end) {
  using Acc = acc_t<T>;
  const Acc pad = Acc(in.padding_value);
  const int64_t inner = in.inner();
  Partial total;
  if (in.mask != nullptr && inner == 1) {
    for (int64_t b = begin; b < end; b += kBlock) {
      total.add(forward_block<Loss, T, M, true>(in.y_true + b, in.y_pred + b, in.mask + b, Acc(0),
                                                pad, std::min(kBlock, end - b)));
    }
    return total;
  }
  // One mask entry per row of `inner` elements: constant weight per segment.
  for (int64_t row = begin / inner, pos = begin; pos < end; ++row) {
    const int64_t seg_end = std::min(end, (row + 1) * inner);
    const Acc w = in.mask != nullptr ? MaskWeight<Acc, M>::of(in.mask[row]) : Acc(1);
    if (w != Acc(0)) {
      for (int64_t b = pos; b < seg_end; b += kBlock) {
        total.add(forward_block<Loss, T, M, false>(in.y_true + b, in.y_pred + b, nullptr, w, pad,
                                                   std::min(kBlock, seg_end - b)));
      }
    }
    pos = seg_end;
  }
  return total;
}

// Gradient of len elements. Writes grad_true/grad_pred (when kTrue/kPred) and,
// for an elementwise float mask, grad_mask; for a prefix mask returns the sum
// of the mask gradient over the span (the caller owns whole rows).
template <class Loss, class T, class M, bool kElementwise, bool kTrue, bool kPred, bool kMask>
acc_t<T> backward_span(const T* yt, const T* yp, const M* mask, acc_t<T> w_const, acc_t<T> pad,
                       GradCoefficients<acc_t<T>> k, int64_t len, T* grad_true, T* grad_pred,
                       M* grad_mask) {
  using Acc = acc_t<T>;
  Acc row[kLanes] = {};
  auto step = [&](int64_t i, int l) {
    const Acc t = to_acc(yt[i]);
    const Acc p = to_acc(yp[i]);
    const Acc w = kElementwise ? MaskWeight<Acc, M>::of(mask[i]) : w_const;
    const bool keep = (w != Acc(0)) & (t != pad);
    const Acc aw = k.a * w;
    if (kTrue) grad_true[i] = from_acc<T>(keep ? aw * Loss::grad_true(t, p) : Acc(0));
    if (kPred) grad_pred[i] = from_acc<T>(keep ? aw * Loss::grad_pred(t, p) : Acc(0));
    if constexpr (kMask) {
      const Acc gw = keep ? k.a * Loss::value(t, p) + k.b : Acc(0);
      if (kElementwise) {
        grad_mask[i] = from_acc<M>(gw);
      } else {
        row[l] += gw;
      }
    }
  };
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) step(i + l, l);
  }
  for (int l = 0; i < len; ++i, ++l) step(i, l);
  Acc total = Acc(0);
  for (int l = 0; l < kLanes; ++l) total += row[l];
  return total;
}

template <class Loss, class T, class M, bool kTrue, bool kPred, bool kMask>
void backward_tasks(const MaskedInputs<T, M>& in, GradCoefficients<acc_t<T>> k, T* grad_true,
                    T* grad_pred, M* grad_mask, const ParallelFor& parallel_for) {
  using Acc = acc_t<T>;
  const Acc pad = Acc(in.padding_value);
  const int64_t n = in.n;
  const int64_t inner = in.inner();
  const bool elementwise = in.mask != nullptr && inner == 1;
  auto weight = [&](int64_t row) {
    return in.mask != nullptr ? MaskWeight<Acc, M>::of(in.mask[row]) : Acc(1);
  };

  if (elementwise) {
    parallel_for(num_chunks(n), kChunk, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const int64_t b = c * kChunk;
        backward_span<Loss, T, M, true, kTrue, kPred, kMask>(
            in.y_true + b, in.y_pred + b, in.mask + b, Acc(0), pad, k, std::min(kChunk, n - b),
            offset(grad_true, b), offset(grad_pred, b), offset(grad_mask, b));
      }
    });
    return;
  }
  if constexpr (kMask) {
    // The row sums of the mask gradient need whole rows per task.
    const int64_t rows_per_task = std::max<int64_t>(1, kChunk / std::max<int64_t>(inner, 1));
    const int64_t tasks = (in.mask_n + rows_per_task - 1) / rows_per_task;
    parallel_for(tasks, rows_per_task * inner, [&](int64_t first, int64_t last) {
      for (int64_t row = first * rows_per_task; row < std::min(in.mask_n, last * rows_per_task);
           ++row) {
        const int64_t b = row * inner;
        const Acc g = backward_span<Loss, T, M, false, kTrue, kPred, kMask>(
            in.y_true + b, in.y_pred + b, nullptr, weight(row), pad, k, inner, offset(grad_true, b),
            offset(grad_pred, b), nullptr);
        grad_mask[row] = from_acc<M>(g);
      }
    });
    return;
  }
  parallel_for(num_chunks(n), kChunk, [&](int64_t first, int64_t last) {
    const int64_t end = std::min(n, last * kChunk);
    for (int64_t pos = first * kChunk, row = pos / inner; pos < end; ++row) {
      const int64_t seg_end = std::min(end, (row + 1) * inner);
      backward_span<Loss, T, M, false, kTrue, kPred, false>(
          in.y_true + pos, in.y_pred + pos, nullptr, weight(row), pad, k, seg_end - pos,
          offset(grad_true, pos), offset(grad_pred, pos), nullptr);
      pos = seg_end;
    }
  });
}

}  // namespace detail

// Forward: writes loss, sum, weight_sum (accumulator type) and the exact count.
template <class Loss, class T, class M>
Status forward(const MaskedInputs<T, M>& in, Reduction reduction, void* workspace,
               size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum, acc_t<T>* weight_sum,
               int64_t* count, const ParallelFor& parallel_for = run_serially) {
  using Acc = acc_t<T>;
  if (!in.valid_shape()) return Status::kBadShape;
  const int64_t chunks = num_chunks(in.n);
  if (workspace_bytes < forward_workspace_bytes(in.n)) return Status::kWorkspaceTooSmall;
  Partial* partials = static_cast<Partial*>(workspace);
  parallel_for(chunks, kChunk, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      partials[c] = detail::forward_range<Loss>(in, c * kChunk, std::min(in.n, (c + 1) * kChunk));
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
Status backward(const MaskedInputs<T, M>& in, Reduction reduction,
                const BackwardScalars<acc_t<T>>& scalars, T* grad_true, T* grad_pred,
                M* grad_mask, const ParallelFor& parallel_for = run_serially) {
  if (!in.valid_shape()) return Status::kBadShape;
  const auto k = grad_coefficients(*scalars.grad_loss, *scalars.grad_sum,
                                   *scalars.grad_weight_sum, *scalars.loss, *scalars.weight_sum,
                                   reduction);
  const bool want_true = grad_true != nullptr;
  const bool want_pred = grad_pred != nullptr;
  bool want_mask = false;
  if constexpr (!std::is_same<M, bool>::value) want_mask = grad_mask != nullptr;

  auto run = [&](auto kTrue, auto kPred, auto kMask) {
    if constexpr (!(kMask && std::is_same<M, bool>::value)) {
      detail::backward_tasks<Loss, T, M, kTrue, kPred, kMask>(in, k, grad_true, grad_pred,
                                                               grad_mask, parallel_for);
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

}  // namespace cpu
}  // namespace masked_ops
