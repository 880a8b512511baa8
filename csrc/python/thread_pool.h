// The host calls' parallelism: plain std::threads, at most get_num_threads().
#pragma once

#include "../kernels/masked_loss_cpu.h"

namespace masked_ops {
namespace binding {

// Splits tasks into contiguous ranges over std::threads; the kernels' fixed
// chunking makes the results independent of the split.
cpu::ParallelFor thread_parallel_for();

}  // namespace binding
}  // namespace masked_ops
