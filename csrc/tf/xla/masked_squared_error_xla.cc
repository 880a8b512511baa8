// XLA lowering of MaskedSquaredError: the element math of ../../kernels/squared_error.h as XLA ops.
#include "masked_loss_xla.h"

namespace {

struct SquaredErrorXla {
  static xla::XlaOp value(xla::XlaOp t, xla::XlaOp p) {
    const xla::XlaOp d = t - p;
    return d * d;
  }
  static xla::XlaOp grad_pred(xla::XlaOp t, xla::XlaOp p) {
    return xla::ScalarLike(t, 2) * (p - t);
  }
  static xla::XlaOp grad_true(xla::XlaOp t, xla::XlaOp p) {
    return xla::ScalarLike(t, 2) * (t - p);
  }
};

}  // namespace

MASKED_OPS_REGISTER_LOSS_XLA("MaskedSquaredError", SquaredErrorXla);
