// CUDA launchers for any masked loss functor (see masked_loss.h). Declarations
// only: this header needs neither TensorFlow nor the CUDA headers, so the TF
// adapter and the Python binding can include it with a plain C++ compiler.
// The definitions live in masked_loss_cuda.cuh and are instantiated per loss
// in a .cu file (MASKED_OPS_INSTANTIATE_CUDA_LOSS).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "masked_loss.h"

// Same typedef as cuda_runtime_api.h, so both headers can be included together.
typedef struct CUstream_st* cudaStream_t;

namespace masked_ops {
namespace cuda {

// Two-phase workspace query for the forward on n elements. It depends on n
// only (not on the device): the work is cut into tiles of a fixed size, one
// partial result per tile. Workspaces are device memory, 8-byte aligned (any
// cudaMalloc pointer is).
size_t forward_workspace_bytes(int64_t n);

// Forward: all pointers are device pointers; writes loss, sum, weight_sum and
// the exact count on the device, with no host synchronization. Every pointer
// must be aligned to its element size (else kMisaligned, nothing launched).
// loss_fn (the functor, with its parameters) is passed to the kernels by value.
template <class Loss, class T, class M>
Status forward(const Loss& loss_fn, const MaskedInputs<T, M>& in, Reduction reduction,
               void* workspace, size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum,
               acc_t<T>* weight_sum, int64_t* count, cudaStream_t stream);

// Two-phase workspace query for the backward (non-zero only when a prefix
// mask's gradient is reduced over long rows); depends on its arguments only.
size_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask);

// Backward: scalars are device pointers; grad_true, grad_pred, grad_mask may
// be null (not wanted); grad_mask must be null for boolean masks. Alignment as
// for forward.
template <class Loss, class T, class M>
Status backward(const Loss& loss, const MaskedInputs<T, M>& in, Reduction reduction,
                const BackwardScalars<acc_t<T>>& scalars, T* grad_true, T* grad_pred, M* grad_mask,
                void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Loss and gradients together (see cpu::forward_backward): M bool, no padding
// value, no extra masks (else kUnsupported). The outputs are those of forward
// and of backward for an upstream gradient of exactly 1 (grad_true/grad_pred
// may be null). On the GPU it launches the forward's and the backward's
// kernels back to back (the upstream constants are written into the
// workspace), so it saves the scaling pass of the backward, not a read.
size_t forward_backward_workspace_bytes(int64_t n);

template <class Loss, class T, class M>
Status forward_backward(const Loss& loss_fn, const MaskedInputs<T, M>& in, Reduction reduction,
                        void* workspace, size_t workspace_bytes, acc_t<T>* loss, acc_t<T>* sum,
                        acc_t<T>* weight_sum, int64_t* count, T* grad_true, T* grad_pred,
                        cudaStream_t stream);

// out[i] = *scale * in[i], scale read on the device; when *scale is exactly 1
// and out == in (the buffer was forwarded) nothing is read or written.
template <class T>
Status scale_gradient(const acc_t<T>* scale, const T* in, T* out, int64_t n, cudaStream_t stream);

// Description of the CUDA error behind this thread's last kLaunchFailed.
const char* last_error_message();

// ---- driver compatibility ------------------------------------------------------
//
// The CUDA runtime is linked statically, so the kernels need a driver that
// supports the runtime's major version (CUDA minor-version compatibility):
// CUDA 12.x runs on R525+ drivers, CUDA 13.x only on R580+.

// CUDART_VERSION of the runtime the kernels were built with (13000 for 13.0).
int runtime_version();

// The installed driver's CUDA version from cuDriverGetVersion (12020 for a
// driver supporting CUDA 12.2); 0 when no driver (libcuda.so.1) can be loaded.
// Creates no context and does not synchronize.
int driver_version();

// Oldest Linux driver release supporting CUDA `runtime` (major.minor as in
// runtime_version()); 0 when unknown.
inline int minimum_driver_release(int runtime) {
  switch (runtime / 1000) {
    case 11:
      return 450;
    case 12:
      return 525;
    case 13:
      return 580;
  }
  return 0;
}

// Whether kernels built with CUDA `runtime` can run on `driver` (both as
// CUDA versions, 1000 * major + 10 * minor).
inline bool driver_supports(int driver, int runtime) {
  return driver > 0 && driver / 1000 >= runtime / 1000;
}

inline std::string cuda_version_string(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

// Empty when the kernels can run on `driver`; otherwise one message naming the
// driver needed and how to rebuild for the installed one.
inline std::string driver_problem(int driver, int runtime) {
  if (driver_supports(driver, runtime)) return std::string();
  const std::string built = "The masked_ops CUDA kernels were built with CUDA " +
                            cuda_version_string(runtime) + " (static runtime)";
  if (driver <= 0) {
    return built + ", but no NVIDIA driver was found (libcuda.so.1 cannot be loaded)";
  }
  const int release = minimum_driver_release(runtime);
  std::string need = "a driver supporting CUDA " + std::to_string(runtime / 1000) + ".x";
  if (release > 0) need += " (release " + std::to_string(release) + " or newer)";
  return built + ", which needs " + need + "; the installed NVIDIA driver supports CUDA " +
         cuda_version_string(driver) +
         " only. Update the driver, or rebuild masked_ops with a CUDA " +
         std::to_string(driver / 1000) +
         " toolkit: in a fresh build directory, point CMake at its nvcc with CUDACXX (or "
         "-DCMAKE_CUDA_COMPILER), e.g. CUDACXX=/usr/local/cuda-" +
         std::to_string(driver / 1000) + "/bin/nvcc pip install --no-build-isolation -e .";
}

}  // namespace cuda
}  // namespace masked_ops
