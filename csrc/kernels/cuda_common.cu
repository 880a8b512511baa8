// Non-template parts of the CUDA launchers: occupancy, row planning, workspace
// sizes, launch error reporting, driver and runtime versions.
#include <dlfcn.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "masked_loss_cuda.cuh"

namespace masked_ops {
namespace cuda {
namespace detail {
namespace {

// Used only when the device cannot be queried; the launch then reports the error.
constexpr int64_t kFallbackBlocks = 1;

thread_local std::string last_error = "no error";

int64_t query_resident_blocks(const void* kernel, int device) {
  int multiprocessors = 0;
  int per_multiprocessor = 0;
  if (cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, kThreads, 0) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return int64_t(multiprocessors) * std::max(1, per_multiprocessor);
}

}  // namespace

int64_t resident_blocks(const void* kernel) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return kFallbackBlocks;
  }
  // A kernel's occupancy on a device never changes: query it once. The lock is
  // uncontended after the first launches and costs far less than a launch.
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int64_t> cache;
  const std::pair<int, const void*> key(device, kernel);
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const int64_t blocks = query_resident_blocks(kernel, device);
  if (blocks <= 0) return kFallbackBlocks;
  std::lock_guard<std::mutex> lock(mutex);
  cache.emplace(key, blocks);
  return blocks;
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
  // Few long rows: split them until about kRowTasks tasks exist.
  if (mask_n < kRowTasks) {
    const int64_t segments = std::min(ceil_div(kRowTasks, mask_n), ceil_div(inner, kMinSegment));
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
  const std::string problem = driver_problem(driver_version(), runtime_version());
  if (error == cudaErrorInsufficientDriver && !problem.empty()) {
    last_error += ". " + problem;
  } else if (error == cudaErrorNoKernelImageForDevice) {
    last_error += "; the kernels were built for CUDA architectures " MASKED_OPS_CUDA_ARCHITECTURES
                  " only (nvcc 13 cannot target Volta, sm_70, or older): rebuild for this GPU "
                  "with MASKED_OPS_CUDA_ARCHITECTURES (and a CUDA 12 toolkit for sm_70)";
  } else if (error == cudaErrorUnsupportedPtxVersion) {
    last_error +=
        "; this GPU JIT-compiles the kernels' PTX, which needs a driver supporting CUDA " +
        cuda_version_string(runtime_version()) +
        " or newer: update the driver, or rebuild with SASS for this GPU "
        "(MASKED_OPS_CUDA_ARCHITECTURES=native)";
  }
  return Status::kLaunchFailed;
}

}  // namespace detail

size_t forward_workspace_bytes(int64_t n) {
  return size_t(detail::max_tiles(n)) * sizeof(detail::Partial);
}

size_t forward_backward_workspace_bytes(int64_t n) { return detail::unit_upstream_offset(n) + 16; }

namespace {

template <typename T>
__global__ void __launch_bounds__(detail::kThreads)
    scale_gradient_kernel(const acc_t<T>* scale, const T* in, T* out, int64_t n) {
  const acc_t<T> s = __ldg(scale);
  // Exactly 1 on a forwarded buffer: the gradient is already in place.
  if (s == acc_t<T>(1) && in == out) return;
  for (int64_t i = detail::global_thread(); i < n; i += detail::grid_threads()) {
    out[i] = detail::store_as<T>(s * detail::load_acc(in[i]));
  }
}

}  // namespace

template <class T>
Status scale_gradient(const acc_t<T>* scale, const T* in, T* out, int64_t n, cudaStream_t stream) {
  if (n < 0) return Status::kBadShape;
  if (!is_aligned(in) || !is_aligned(out) || !is_aligned(scale)) return Status::kMisaligned;
  if (n == 0) return Status::kOk;
  const auto kernel = scale_gradient_kernel<T>;
  const int64_t blocks = std::min(detail::resident_blocks(reinterpret_cast<const void*>(kernel)),
                                  detail::ceil_div(n, detail::kThreads));
  detail::clear_launch_error();
  kernel<<<unsigned(blocks), detail::kThreads, 0, stream>>>(scale, in, out, n);
  return detail::launch_status();
}

template Status scale_gradient<half_t>(const float*, const half_t*, half_t*, int64_t, cudaStream_t);
template Status scale_gradient<bfloat16_t>(const float*, const bfloat16_t*, bfloat16_t*, int64_t,
                                           cudaStream_t);
template Status scale_gradient<float>(const float*, const float*, float*, int64_t, cudaStream_t);
template Status scale_gradient<double>(const double*, const double*, double*, int64_t,
                                       cudaStream_t);

size_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask) {
  // An elementwise mask's gradient is written directly (see backward()).
  if (!want_mask || (n > 0 && mask_n == n)) return 0;
  return detail::row_workspace_bytes(detail::row_plan(n, mask_n), mask_n);
}

const char* last_error_message() { return detail::last_error.c_str(); }

int runtime_version() { return CUDART_VERSION; }

int driver_version() {
  // Straight from the driver library, as the runtime itself finds it: no
  // runtime initialization, no context.
  void* libcuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (libcuda == nullptr) return 0;
  using GetVersion = int (*)(int*);
  const auto get_version = reinterpret_cast<GetVersion>(dlsym(libcuda, "cuDriverGetVersion"));
  int version = 0;
  if (get_version == nullptr || get_version(&version) != 0) version = 0;
  dlclose(libcuda);
  return version;
}

}  // namespace cuda
}  // namespace masked_ops
