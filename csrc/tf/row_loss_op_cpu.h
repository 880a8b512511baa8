// CPU launch of the row-loss OpKernels: TF's intra-op thread pool and
// allocate_temp around the framework-free row engine (row_loss_cpu.h).
#pragma once

#include "../kernels/row_loss_cpu.h"
#include "masked_loss_op_cpu.h"
#include "row_loss_op.h"

namespace masked_ops {
namespace tf_adapter {

// A label out of range becomes OutOfRange here; the OpKernel turns it into
// an InvalidArgument naming the row.
inline absl::Status RowStatus(Status s, const char* what) {
  if (s == Status::kLabelOutOfRange) return absl::OutOfRangeError(status_message(s));
  return ToStatus(s, what);
}

template <class Loss, typename T, typename M>
struct RowLaunch<CPUDevice, Loss, T, M> {
  using KT = kernel_t<T>;
  using KM = kernel_t<M>;
  using Acc = acc_t<KT>;

  static absl::Status Workspace(tf::OpKernelContext* ctx, const RowLossParams<KT, KM>& p,
                                tf::Tensor* workspace, size_t* bytes) {
    *bytes = cpu::rows::workspace_bytes(p.rows, p.classes);
    return ctx->allocate_temp(tf::DT_UINT8, tf::TensorShape({static_cast<int64_t>(*bytes)}),
                              workspace);
  }

  // grad null: the forward only; otherwise also the gradient of `loss` for
  // an upstream gradient of 1, in the same pass (grad may be y_pred).
  static absl::Status Forward(tf::OpKernelContext* ctx, const RowLossParams<KT, KM>& p, Acc* loss,
                              Acc* sum, Acc* weight_sum, int64_t* count, Acc* row_stats, KT* grad) {
    tf::Tensor workspace;
    size_t bytes = 0;
    TF_RETURN_IF_ERROR(Workspace(ctx, p, &workspace, &bytes));
    void* data = workspace.flat<uint8_t>().data();
    if (grad == nullptr) {
      return RowStatus(cpu::rows::forward<Loss>(p, data, bytes, loss, sum, weight_sum, count,
                                                row_stats, IntraOpParallelFor(ctx)),
                       "forward");
    }
    return RowStatus(cpu::rows::forward_backward<Loss>(p, data, bytes, loss, sum, weight_sum, count,
                                                       row_stats, grad, IntraOpParallelFor(ctx)),
                     "forward_backward");
  }

  static absl::Status Backward(tf::OpKernelContext* ctx, const RowLossParams<KT, KM>& p,
                               const BackwardScalars<Acc>& scalars, const Acc* row_stats,
                               KT* grad) {
    tf::Tensor workspace;
    size_t bytes = 0;
    TF_RETURN_IF_ERROR(Workspace(ctx, p, &workspace, &bytes));
    return RowStatus(
        cpu::rows::backward<Loss>(p, scalars, row_stats, grad, workspace.flat<uint8_t>().data(),
                                  bytes, IntraOpParallelFor(ctx)),
        "backward");
  }
};

}  // namespace tf_adapter
}  // namespace masked_ops
