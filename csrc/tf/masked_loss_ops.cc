// Every loss of the table (csrc/kernels/loss_list.h) as a TensorFlow op
// "MaskedOps>NAME" with its gradient op, and its CPU (and GPU) kernels.
#include "../kernels/loss_list.h"
#include "masked_loss_op_cpu.h"

#define MASKED_OPS_CPU_LOSS(FUNCTOR, OP, NAME)   \
  MASKED_OPS_REGISTER_LOSS_OPS("MaskedOps>" OP); \
  MASKED_OPS_REGISTER_LOSS_CPU_KERNELS("MaskedOps>" OP, ::masked_ops::FUNCTOR);
MASKED_OPS_LOSS_LIST(MASKED_OPS_CPU_LOSS)

#if MASKED_OPS_WITH_CUDA
#include "masked_loss_op_gpu.h"
#define MASKED_OPS_GPU_LOSS(FUNCTOR, OP, NAME) \
  MASKED_OPS_REGISTER_LOSS_GPU_KERNELS("MaskedOps>" OP, ::masked_ops::FUNCTOR);
MASKED_OPS_LOSS_LIST(MASKED_OPS_GPU_LOSS)
#endif
