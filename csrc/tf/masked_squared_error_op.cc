// Masked squared error: sum / weight_sum of (y_true - y_pred)^2 over kept positions.
#include "../kernels/squared_error.h"
#include "masked_loss_op_cpu.h"

MASKED_OPS_REGISTER_LOSS_OPS("MaskedSquaredError");
MASKED_OPS_REGISTER_LOSS_CPU_KERNELS("MaskedSquaredError", ::masked_ops::SquaredError);
#if MASKED_OPS_WITH_CUDA
#include "masked_loss_op_gpu.h"
MASKED_OPS_REGISTER_LOSS_GPU_KERNELS("MaskedSquaredError", ::masked_ops::SquaredError);
#endif
