// CUDA launchers for any masked loss functor (see masked_loss.h). Declarations
// only: this header needs neither TensorFlow nor the CUDA headers, so the TF
// adapter and the Python binding can include it with a plain C++ compiler.
// The definitions live in masked_loss_cuda.cuh and are instantiated per loss
// in a .cu file (MASKED_OPS_INSTANTIATE_CUDA_LOSS).
#pragma once

#include <cstddef>
#include <cstdint>

#include "masked_loss.h"

// Same typedef as cuda_runtime_api.h, so both headers can be included together.
typedef struct CUstream_st* cudaStream_t;

namespace masked_ops {
namespace cuda {

// Two-phase workspace query for the forward on n elements, on the current
// device (the grid is sized from its multiprocessor count). Workspaces are
// device memory, 8-byte aligned (any cudaMalloc pointer is).
size_t forward_workspace_bytes(int64_t n);

// Forward: all pointers are device pointers; writes loss, sum, weight_sum and
// the exact count on the device, with no host synchronization.
template <class Loss, class T, class M>
Status forward(const MaskedInputs<T, M>& in, Reduction reduction, void* workspace,
               size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum, acc_t<T>* weight_sum,
               int64_t* count, cudaStream_t stream);

// Two-phase workspace query for the backward (non-zero only when a prefix
// mask's gradient must be reduced over its rows).
size_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask);

// Backward: scalars are device pointers; grad_true, grad_pred, grad_mask may
// be null (not wanted); grad_mask must be null for boolean masks.
template <class Loss, class T, class M>
Status backward(const MaskedInputs<T, M>& in, Reduction reduction,
                const BackwardScalars<acc_t<T>>& scalars, T* grad_true, T* grad_pred, M* grad_mask,
                void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Description of the CUDA error behind this thread's last kLaunchFailed.
const char* last_error_message();

}  // namespace cuda
}  // namespace masked_ops
