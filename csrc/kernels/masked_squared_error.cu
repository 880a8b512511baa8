// CUDA launchers of the masked squared error.
#include "masked_loss_cuda.cuh"
#include "squared_error.h"

MASKED_OPS_INSTANTIATE_CUDA_LOSS(::masked_ops::SquaredError);
