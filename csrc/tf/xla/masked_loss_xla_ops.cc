// XLA lowerings of every loss of the table (csrc/kernels/loss_list.h).
#include "masked_loss_xla.h"

#define MASKED_OPS_XLA_LOSS(FUNCTOR, OP, NAME) \
  MASKED_OPS_REGISTER_LOSS_XLA("MaskedOps>" OP, ::masked_ops::FUNCTOR);
MASKED_OPS_LOSS_LIST(MASKED_OPS_XLA_LOSS)
