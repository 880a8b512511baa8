// GPU launch for the masked loss OpKernels: TensorFlow's compute stream and
// allocate_temp around the CUDA launchers of csrc/kernels/masked_loss_cuda.h.
// Built by the host compiler without CUDA headers: TensorFlow's wheel and the
// kernels may come from different CUDA versions, so only the raw stream handle
// and device pointers cross over.
#pragma once

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

  static absl::Status Forward(tf::OpKernelContext* ctx, const MaskedInputs<KT, KM>& in,
                              Reduction reduction, Acc* loss, Acc* sum, Acc* weight_sum,
                              int64_t* count) {
    cudaStream_t stream = nullptr;
    TF_RETURN_IF_ERROR(GetCudaStream(ctx, &stream));
    const size_t bytes = cuda::forward_workspace_bytes(in.n);
    tf::Tensor workspace;
    void* data = nullptr;
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &workspace, &data));
    return CudaToStatus(
        cuda::forward<Loss>(in, reduction, data, bytes, loss, sum, weight_sum, count, stream),
        "forward");
  }

  static absl::Status Backward(tf::OpKernelContext* ctx, const MaskedInputs<KT, KM>& in,
                               Reduction reduction, const BackwardScalars<Acc>& scalars,
                               KT* grad_true, KT* grad_pred, KM* grad_mask) {
    cudaStream_t stream = nullptr;
    TF_RETURN_IF_ERROR(GetCudaStream(ctx, &stream));
    const size_t bytes = cuda::backward_workspace_bytes(in.n, in.mask_n, grad_mask != nullptr);
    tf::Tensor workspace;
    void* data = nullptr;
    TF_RETURN_IF_ERROR(AllocateWorkspace(ctx, bytes, &workspace, &data));
    return CudaToStatus(cuda::backward<Loss>(in, reduction, scalars, grad_true, grad_pred,
                                             grad_mask, data, bytes, stream),
                        "backward");
  }
};

}  // namespace tf_adapter
}  // namespace masked_ops

// GPU kernels of one loss for every supported input dtype (padding_value stays
// in host memory: it is read when the kernels are launched).
#define MASKED_OPS_REGISTER_LOSS_GPU_KERNELS(NAME, LOSS)                            \
  MASKED_OPS_REGISTER_LOSS_KERNELS_ALL_DTYPES(NAME, LOSS, ::tensorflow::DEVICE_GPU, \
                                              ::masked_ops::tf_adapter::GPUDevice)
