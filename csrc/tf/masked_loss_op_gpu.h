// GPU launch for the masked loss OpKernels: TensorFlow's compute stream and
// allocate_temp around the CUDA launchers of csrc/kernels/masked_loss_cuda.h.
// Built by the host compiler without CUDA headers: TensorFlow's wheel and the
// kernels may come from different CUDA versions, so only the raw stream handle
// and device pointers cross over.
//
// The GPU kernels are registered only when the installed driver can run the
// CUDA runtime the kernels were linked with (cuda_runtime_check.cc): with an
// older driver every launch would fail, whereas without GPU kernels TensorFlow
// places the op on the CPU and masked_ops routes GPU work to pure-TF ops.
#pragma once

#include <string>

#include "../kernels/masked_loss_cuda.h"
#include "masked_loss_op.h"
#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/stream_executor/stream.h"

namespace masked_ops {
namespace tf_adapter {

// Only a tag selecting the Launch specialization; op_kernel.h declares it
// without needing the CUDA headers that its definition requires.
using GPUDevice = Eigen::GpuDevice;

// Empty when this library's CUDA kernels can run here; otherwise why not (the
// driver is older than the kernels' CUDA runtime needs), with the fix.
// Decided once, from the driver version alone: no context, no synchronization.
const std::string& GpuKernelsUnavailableReason();

// Calls register_kernels (static-init registrations, see
// MASKED_OPS_REGISTER_LOSS_GPU_KERNELS) when GpuKernelsUnavailableReason() is
// empty; returns whether it did.
bool RegisterGpuKernelsIfUsable(void (*register_kernels)());

inline absl::Status GetCudaStream(tf::OpKernelContext* ctx, cudaStream_t* stream) {
  const tf::DeviceContext* device_context = ctx->op_device_context();
  stream_executor::Stream* se_stream =
      device_context != nullptr ? device_context->stream() : nullptr;
  void* handle = se_stream != nullptr ? se_stream->platform_specific_handle().stream : nullptr;
  if (handle == nullptr) {
    return absl::InternalError(absl::StrCat("masked loss: ", ctx->op_kernel().name(),
                                            " has no CUDA stream on device ",
                                            ctx->device()->name()));
  }
  *stream = static_cast<cudaStream_t>(handle);
  return absl::OkStatus();
}

// ToStatus plus the CUDA error behind a failed launch.
inline absl::Status CudaToStatus(Status s, const char* what) {
  if (s != Status::kLaunchFailed) return ToStatus(s, what);
  return absl::InternalError(absl::StrCat("masked loss ", what, ": ", status_message(s), " (",
                                          cuda::last_error_message(), ")"));
}

inline absl::Status AllocateWorkspace(tf::OpKernelContext* ctx, size_t bytes, tf::Tensor* workspace,
                                      void** data) {
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(tf::DT_UINT8, tf::TensorShape({static_cast<int64_t>(bytes)}), workspace));
  *data = bytes > 0 ? workspace->flat<uint8_t>().data() : nullptr;
  return absl::OkStatus();
}

template <class Loss, typename T, typename M>
struct Launch<GPUDevice, Loss, T, M> {
  using KT = kernel_t<T>;
  using KM = kernel_t<M>;
  using Acc = acc_t<KT>;

  static absl::Status Forward(tf::OpKernelContext* ctx, const Loss& loss_fn,
                              const MaskedInputs<KT, KM>& in, Reduction reduction, Acc* loss,
                              Acc* sum, Acc* weight_sum, int64_t* count) {
    cudaStream_t stream = nullptr;
    TF_RETURN_IF_ERROR(GetCudaStream(ctx, &stream));
    const size_t bytes = cuda::forward_workspace_bytes(in.n);
    tf::Tensor workspace;
    void* data = nullptr;
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &workspace, &data));
    return CudaToStatus(
        cuda::forward(loss_fn, in, reduction, data, bytes, loss, sum, weight_sum, count, stream),
        "forward");
  }

  static absl::Status ForwardBackward(tf::OpKernelContext* ctx, const Loss& loss_fn,
                                      const MaskedInputs<KT, KM>& in, Reduction reduction,
                                      Acc* loss, Acc* sum, Acc* weight_sum, int64_t* count,
                                      KT* grad_true, KT* grad_pred) {
    cudaStream_t stream = nullptr;
    TF_RETURN_IF_ERROR(GetCudaStream(ctx, &stream));
    const size_t bytes = cuda::forward_backward_workspace_bytes(in.n);
    tf::Tensor workspace;
    void* data = nullptr;
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &workspace, &data));
    return CudaToStatus(cuda::forward_backward(loss_fn, in, reduction, data, bytes, loss, sum,
                                               weight_sum, count, grad_true, grad_pred, stream),
                        "forward_backward");
  }

  static absl::Status Backward(tf::OpKernelContext* ctx, const Loss& loss,
                               const MaskedInputs<KT, KM>& in, Reduction reduction,
                               const BackwardScalars<Acc>& scalars, KT* grad_true, KT* grad_pred,
                               KM* grad_mask) {
    cudaStream_t stream = nullptr;
    TF_RETURN_IF_ERROR(GetCudaStream(ctx, &stream));
    const size_t bytes = cuda::backward_workspace_bytes(in.n, in.mask_n, grad_mask != nullptr);
    tf::Tensor workspace;
    void* data = nullptr;
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &workspace, &data));
    return CudaToStatus(cuda::backward(loss, in, reduction, scalars, grad_true, grad_pred,
                                       grad_mask, data, bytes, stream),
                        "backward");
  }
};

template <typename T>
struct ScaleLaunch<GPUDevice, T> {
  using KT = kernel_t<T>;
  static absl::Status Run(tf::OpKernelContext* ctx, const acc_t<KT>* scale, const KT* in, KT* out,
                          int64_t n) {
    cudaStream_t stream = nullptr;
    TF_RETURN_IF_ERROR(GetCudaStream(ctx, &stream));
    return CudaToStatus(cuda::scale_gradient(scale, in, out, n, stream), "scale_gradient");
  }
};

}  // namespace tf_adapter
}  // namespace masked_ops

// GPU kernels of one loss for every supported input dtype (padding_value stays
// in host memory: it is read when the kernels are launched), registered only
// where they can run. The registrations are the usual REGISTER_KERNEL_BUILDER
// statics, but function-local: they run on the first (and only) call, which
// RegisterGpuKernelsIfUsable makes when the library loads, or not at all.
#define MASKED_OPS_REGISTER_LOSS_GPU_KERNELS(NAME, LOSS) \
  MASKED_OPS_REGISTER_LOSS_GPU_KERNELS_UNIQ(__COUNTER__, NAME, LOSS)
#define MASKED_OPS_REGISTER_LOSS_GPU_KERNELS_UNIQ(ID, NAME, LOSS) \
  MASKED_OPS_REGISTER_LOSS_GPU_KERNELS_IMPL(ID, NAME, LOSS)
#define MASKED_OPS_REGISTER_LOSS_GPU_KERNELS_IMPL(ID, NAME, LOSS)                         \
  [[maybe_unused]] static const bool masked_ops_gpu_kernels_registered_##ID =             \
      ::masked_ops::tf_adapter::RegisterGpuKernelsIfUsable([] {                           \
        MASKED_OPS_REGISTER_LOSS_KERNELS_ALL_DTYPES(NAME, LOSS, ::tensorflow::DEVICE_GPU, \
                                                    ::masked_ops::tf_adapter::GPUDevice); \
      })
