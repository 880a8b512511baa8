// Every row loss of the table (MASKED_OPS_ROW_LOSS_LIST in
// csrc/kernels/loss_list.h) as the TensorFlow ops "MaskedOps>NAME", NAME
// "Grad" and NAME "WithGrad", with their CPU kernels.
#include "../kernels/loss_list.h"
#include "row_loss_op_cpu.h"

#define MASKED_OPS_CPU_ROW_LOSS(FUNCTOR, OP, NAME)                                     \
  MASKED_OPS_REGISTER_ROW_LOSS_OPS("MaskedOps>" OP, ::masked_ops::FUNCTOR::kRowStats); \
  MASKED_OPS_REGISTER_ROW_KERNELS_ALL_DTYPES("MaskedOps>" OP, ::masked_ops::FUNCTOR,   \
                                             ::tensorflow::DEVICE_CPU,                 \
                                             ::masked_ops::tf_adapter::CPUDevice);
MASKED_OPS_ROW_LOSS_LIST(MASKED_OPS_CPU_ROW_LOSS)
