// Non-template parts of the CUDA launchers: device limits, grid and workspace
// planning, launch error reporting.
#include <atomic>

#include "masked_loss_cuda.cuh"

namespace masked_ops {
namespace cuda {
namespace detail {
namespace {

// Resident-block counts of the first devices, 0 until queried. The value of a
// device never changes, so racing first queries store the same number.
constexpr int kCachedDevices = 64;
std::atomic<int64_t> resident_blocks[kCachedDevices];

// Used only when the device cannot be queried; the launch then reports the error.
constexpr int64_t kFallbackBlocks = 1;

thread_local const char* last_error = "no error";

int64_t query_resident_blocks(int device) {
  int multiprocessors = 0;
  int threads_per_multiprocessor = 0;
  if (cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&threads_per_multiprocessor, cudaDevAttrMaxThreadsPerMultiProcessor,
                             device) != cudaSuccess) {
    return 0;
  }
  return int64_t(multiprocessors) * std::max(1, threads_per_multiprocessor / kThreads);
}

}  // namespace

int64_t max_resident_blocks() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return kFallbackBlocks;
  const bool cached = device >= 0 && device < kCachedDevices;
  if (cached) {
    const int64_t blocks = resident_blocks[device].load(std::memory_order_relaxed);
    if (blocks > 0) return blocks;
  }
  const int64_t blocks = query_resident_blocks(device);
  if (blocks <= 0) return kFallbackBlocks;
  if (cached) resident_blocks[device].store(blocks, std::memory_order_relaxed);
  return blocks;
}

int64_t forward_grid(int64_t n) {
  if (n <= 0) return 0;
  return std::min(max_resident_blocks(), ceil_div(n, kThreads * kMinElementsPerThread));
}

RowPlan row_plan(int64_t n, int64_t mask_n) {
  const int64_t inner = mask_n > 0 ? n / mask_n : 0;
  RowPlan plan{1, 1, inner, mask_n};
  if (inner <= kWarp) {
    // Short rows: the smallest power-of-two group of lanes that covers a row.
    while (plan.group < inner) plan.group *= 2;
    return plan;
  }
  plan.group = kWarp;
  // Few long rows: split them so that about one task per resident warp exists.
  const int64_t target_tasks = max_resident_blocks() * (kThreads / kWarp);
  if (mask_n < target_tasks) {
    const int64_t segments = std::min(ceil_div(target_tasks, mask_n), ceil_div(inner, kMinSegment));
    plan.segment_len = ceil_div(inner, std::max<int64_t>(segments, 1));
    plan.segments = ceil_div(inner, plan.segment_len);
    plan.tasks = mask_n * plan.segments;
  }
  return plan;
}

size_t row_workspace_bytes(const RowPlan& plan, int64_t mask_n) {
  return plan.segments > 1 ? size_t(mask_n) * size_t(plan.segments) * sizeof(double) : 0;
}

void clear_launch_error() { (void)cudaGetLastError(); }

Status launch_status() {
  const cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess) return Status::kOk;
  last_error = cudaGetErrorString(error);
  return Status::kLaunchFailed;
}

}  // namespace detail

size_t forward_workspace_bytes(int64_t n) {
  return size_t(detail::forward_grid(n)) * sizeof(detail::Partial);
}

size_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask) {
  // An elementwise mask's gradient is written directly (see backward()).
  if (!want_mask || (n > 0 && mask_n == n)) return 0;
  return detail::row_workspace_bytes(detail::row_plan(n, mask_n), mask_n);
}

const char* last_error_message() { return detail::last_error; }

}  // namespace cuda
}  // namespace masked_ops
