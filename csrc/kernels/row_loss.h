// Arguments shared by every row loss: a loss over each row of V classes
// (categorical cross-entropy), where the elementwise engine (masked_loss.h)
// cannot go because a row needs its log-sum-exp before any element's value.
//
// A row loss is a functor (csrc/kernels/losses/categorical_crossentropy.h,
// listed in MASKED_OPS_ROW_LOSS_LIST of loss_list.h) holding the element and
// per-row math; the kernels (row_loss_cpu.h) own the loops. With w the mask
// weight of a row and
//   keep = (w != 0) && !(sparse && ignore_class given && label == ignore_class)
// the forward reduces over the rows
//   sum = sum(keep ? w * value(row) : 0), weight_sum = sum(keep ? w : 0),
//   count = sum(keep ? 1 : 0)
// and the loss is sum / weight_sum ("mean", 0 when weight_sum == 0) or sum,
// as the elementwise engine does. A row that is not kept is never read (its
// logits nor its label): padding labels such as -100 and NaN/Inf there are fine.
#pragma once

#include <cstddef>
#include <cstdint>

#include "masked_loss.h"

namespace masked_ops {

// Arguments of one call, passed to the kernels by value (no pointer chasing
// in the kernels, one struct for every backend). The mask covers rows the way
// a leading-prefix mask covers elements in MaskedInputs: mask_n entries, each
// for rows / mask_n consecutive rows (a (B,) mask on logits (B, T, V)). M is
// bool (any non-zero byte keeps), T or acc_t<T> (weights), read through
// MaskWeight as the elementwise engine reads them.
template <typename T, typename M>
struct RowLossParams {
  const T* y_pred = nullptr;     // rows x classes, row-major: logits or probabilities
  const T* y_true = nullptr;     // dense targets, rows x classes (categorical forms), else null
  const void* labels = nullptr;  // one class index per row (sparse forms), else null
  LabelKind label_kind = LabelKind::kInt64;  // kInt32 or kInt64
  const M* mask = nullptr;                   // null: every row has weight 1
  int64_t mask_n = 1;
  int64_t rows = 0;
  int64_t classes = 0;  // V >= 1
  Reduction reduction = Reduction::kMean;
  // Keras's ignore_class (sparse labels only): rows with this label are not kept.
  bool has_ignore_class = false;
  int64_t ignore_class = 0;
  double label_smoothing = 0.0;  // dense targets only, in [0, 1]
  bool from_logits = true;       // must match the functor's kFromLogits

  int64_t rows_per_entry() const { return mask_n == 0 ? 0 : rows / mask_n; }

  int64_t label(int64_t row) const {
    return label_kind == LabelKind::kInt32 ? int64_t(static_cast<const int32_t*>(labels)[row])
                                           : static_cast<const int64_t*>(labels)[row];
  }

  bool aligned() const {
    const size_t label_bytes = label_kind == LabelKind::kInt32 ? 4 : 8;
    return is_aligned(y_pred) && is_aligned(y_true) && is_aligned(mask) &&
           reinterpret_cast<uintptr_t>(labels) % label_bytes == 0;
  }

  bool valid_shape() const {
    if (rows < 0 || classes < 1) return false;
    if (mask != nullptr && !MaskedInputs<T, M>::covers(rows, mask_n)) return false;
    return rows == 0 || y_pred != nullptr;
  }

  // The arguments agree with a loss that reads sparse labels (kSparse) and
  // logits (kFromLogits).
  bool valid_for(bool sparse, bool logits) const {
    if (from_logits != logits) return false;
    if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) return false;
    if (sparse) {
      const bool kind_ok = label_kind == LabelKind::kInt32 || label_kind == LabelKind::kInt64;
      return kind_ok && y_true == nullptr && label_smoothing == 0.0 &&
             (rows == 0 || labels != nullptr);
    }
    return labels == nullptr && !has_ignore_class && (rows == 0 || y_true != nullptr);
  }
};

}  // namespace masked_ops
