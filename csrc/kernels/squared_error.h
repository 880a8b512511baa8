// Element math of the masked squared error: value = (t - p)^2.
#pragma once

#include "numeric_types.h"

namespace masked_ops {

struct SquaredError {
  template <typename Acc>
  MO_HD static Acc value(Acc t, Acc p) {
    const Acc d = t - p;
    return d * d;
  }
  template <typename Acc>
  MO_HD static Acc grad_pred(Acc t, Acc p) {
    return Acc(2) * (p - t);
  }
  template <typename Acc>
  MO_HD static Acc grad_true(Acc t, Acc p) {
    return Acc(2) * (t - p);
  }
};

}  // namespace masked_ops
