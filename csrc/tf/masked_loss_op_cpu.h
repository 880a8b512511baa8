// CPU launch for the masked loss OpKernels: TF's intra-op thread pool and
// allocate_temp around the framework-free kernels.
#pragma once

#include "../kernels/masked_loss_cpu.h"
#include "masked_loss_op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace masked_ops {
namespace tf_adapter {

using CPUDevice = Eigen::ThreadPoolDevice;

inline cpu::ParallelFor IntraOpParallelFor(tf::OpKernelContext* ctx) {
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  return [threads](int64_t tasks, int64_t elements_per_task, const cpu::TaskFn& fn) {
    if (tasks == 1) {
      fn(0, 1);
      return;
    }
    // About two cycles per element; Shard decides the split over the intra-op pool.
    tf::Shard(threads->num_threads, threads->workers, tasks, 2 * elements_per_task, fn);
  };
}

template <class Loss, typename T, typename M>
struct Launch<CPUDevice, Loss, T, M> {
  using KT = kernel_t<T>;
  using KM = kernel_t<M>;
  using Acc = acc_t<KT>;

  static absl::Status Forward(tf::OpKernelContext* ctx, const Loss& loss_fn,
                              const MaskedInputs<KT, KM>& in, Reduction reduction, Acc* loss,
                              Acc* sum, Acc* weight_sum, int64_t* count) {
    const size_t bytes = cpu::forward_workspace_bytes(in.n);
    tf::Tensor workspace;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        tf::DT_UINT8, tf::TensorShape({static_cast<int64_t>(bytes)}), &workspace));
    return ToStatus(cpu::forward(loss_fn, in, reduction, workspace.flat<uint8_t>().data(), bytes,
                                 loss, sum, weight_sum, count, IntraOpParallelFor(ctx)),
                    "forward");
  }

  static absl::Status ForwardBackward(tf::OpKernelContext* ctx, const Loss& loss_fn,
                                      const MaskedInputs<KT, KM>& in, Reduction reduction,
                                      Acc* loss, Acc* sum, Acc* weight_sum, int64_t* count,
                                      KT* grad_true, KT* grad_pred) {
    const size_t bytes = cpu::forward_backward_workspace_bytes(in.n, in.mask_n);
    tf::Tensor workspace;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        tf::DT_UINT8, tf::TensorShape({static_cast<int64_t>(bytes)}), &workspace));
    return ToStatus(cpu::forward_backward(loss_fn, in, reduction, workspace.flat<uint8_t>().data(),
                                          bytes, loss, sum, weight_sum, count, grad_true, grad_pred,
                                          IntraOpParallelFor(ctx)),
                    "forward_backward");
  }

  static absl::Status Backward(tf::OpKernelContext* ctx, const Loss& loss,
                               const MaskedInputs<KT, KM>& in, Reduction reduction,
                               const BackwardScalars<Acc>& scalars, KT* grad_true, KT* grad_pred,
                               KM* grad_mask) {
    return ToStatus(cpu::backward(loss, in, reduction, scalars, grad_true, grad_pred, grad_mask,
                                  IntraOpParallelFor(ctx)),
                    "backward");
  }
};

template <typename T>
struct ScaleLaunch<CPUDevice, T> {
  using KT = kernel_t<T>;
  static absl::Status Run(tf::OpKernelContext* ctx, const acc_t<KT>* scale, const KT* in, KT* out,
                          int64_t n) {
    // Host memory: an upstream gradient of exactly 1 on a forwarded buffer is
    // the gradient already.
    if (*scale == acc_t<KT>(1) && in == out) return absl::OkStatus();
    return ToStatus(cpu::scale_gradient(*scale, in, out, n, IntraOpParallelFor(ctx)),
                    "scale_gradient");
  }
};

}  // namespace tf_adapter
}  // namespace masked_ops

// CPU kernels of one loss for every supported input dtype.
#define MASKED_OPS_REGISTER_LOSS_CPU_KERNELS(NAME, LOSS)                            \
  MASKED_OPS_REGISTER_LOSS_KERNELS_ALL_DTYPES(NAME, LOSS, ::tensorflow::DEVICE_CPU, \
                                              ::masked_ops::tf_adapter::CPUDevice)
