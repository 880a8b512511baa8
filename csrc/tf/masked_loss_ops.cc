// Every loss of the table (csrc/kernels/loss_list.h) as a TensorFlow op
// "MaskedOps>NAME" with its gradient op, and its CPU (and GPU) kernels.
#include "../kernels/loss_list.h"
#include "masked_loss_op_cpu.h"

#define MASKED_OPS_CPU_LOSS(FUNCTOR, OP, NAME)   \
  MASKED_OPS_REGISTER_LOSS_OPS("MaskedOps>" OP); \
  MASKED_OPS_REGISTER_LOSS_CPU_KERNELS("MaskedOps>" OP, ::masked_ops::FUNCTOR);
MASKED_OPS_LOSS_LIST(MASKED_OPS_CPU_LOSS)

REGISTER_OP("MaskedOps>ScaleGradient")
    .Input("scale: Tout")
    .Input("gradient: T")
    .Output("scaled: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tout: {float, double}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      return absl::OkStatus();
    });
MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNELS(::tensorflow::DEVICE_CPU,
                                           ::masked_ops::tf_adapter::CPUDevice);

#if MASKED_OPS_WITH_CUDA
#include "masked_loss_op_gpu.h"
#define MASKED_OPS_GPU_LOSS(FUNCTOR, OP, NAME) \
  MASKED_OPS_REGISTER_LOSS_GPU_KERNELS("MaskedOps>" OP, ::masked_ops::FUNCTOR);
MASKED_OPS_LOSS_LIST(MASKED_OPS_GPU_LOSS)
[[maybe_unused]] static const bool masked_ops_scale_gradient_gpu_registered =
    ::masked_ops::tf_adapter::RegisterGpuKernelsIfUsable([] {
      MASKED_OPS_REGISTER_SCALE_GRADIENT_KERNELS(::tensorflow::DEVICE_GPU,
                                                 ::masked_ops::tf_adapter::GPUDevice);
    });
#endif
