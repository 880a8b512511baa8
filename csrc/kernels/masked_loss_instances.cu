// CUDA launchers of one loss of the table (csrc/kernels/loss_list.h): the
// MASKED_OPS_CUDA_LOSS_SLOT-th. cmake/cuda.cmake compiles this file once per
// slot, so nvcc builds the losses in parallel; slots past the table's end
// compile to nothing.
#include "loss_list.h"
#include "masked_loss_cuda.cuh"

#if !defined(MASKED_OPS_CUDA_LOSS_SLOT) || !defined(MASKED_OPS_CUDA_LOSS_SLOTS)
#error \
    "compile with -DMASKED_OPS_CUDA_LOSS_SLOT=i -DMASKED_OPS_CUDA_LOSS_SLOTS=n (cmake/cuda.cmake)"
#endif

#define MASKED_OPS_COUNT_LOSS(FUNCTOR, OP, NAME) +1
#define MASKED_OPS_NUM_LOSSES (0 MASKED_OPS_LOSS_LIST(MASKED_OPS_COUNT_LOSS))
static_assert(MASKED_OPS_NUM_LOSSES <= MASKED_OPS_CUDA_LOSS_SLOTS,
              "more losses than CUDA instantiation slots: raise MASKED_OPS_CUDA_LOSS_SLOTS in "
              "cmake/cuda.cmake");

#if MASKED_OPS_CUDA_LOSS_SLOT < MASKED_OPS_NUM_LOSSES
namespace masked_ops {
namespace cuda {
namespace slot {

template <typename... L>
struct Types {};
template <int I, class List>
struct Nth;
template <int I, typename Head, typename... Tail>
struct Nth<I, Types<Head, Tail...>> : Nth<I - 1, Types<Tail...>> {};
template <typename Head, typename... Tail>
struct Nth<0, Types<Head, Tail...>> {
  using type = Head;
};

#define MASKED_OPS_LOSS_TYPE(FUNCTOR, OP, NAME) ::masked_ops::FUNCTOR,
using Loss =
    Nth<MASKED_OPS_CUDA_LOSS_SLOT, Types<MASKED_OPS_LOSS_LIST(MASKED_OPS_LOSS_TYPE) void>>::type;

}  // namespace slot
}  // namespace cuda
}  // namespace masked_ops

MASKED_OPS_INSTANTIATE_CUDA_LOSS(::masked_ops::cuda::slot::Loss);
#endif
