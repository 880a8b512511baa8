// Whether this library's CUDA kernels can run with the installed NVIDIA driver,
// decided once when the library loads (masked_loss_op_gpu.h registers the GPU
// kernels only then), and the C entry points through which masked_ops/_loader.py
// reads the decision. Compiled in every build: without CUDA there are no GPU
// kernels and nothing to decide.
#include <algorithm>
#include <cstring>
#include <string>

#include "../kernels/masked_loss_cuda.h"

#if MASKED_OPS_WITH_CUDA
#include "masked_loss_op_gpu.h"
#endif

namespace masked_ops {
namespace tf_adapter {
namespace {

int RuntimeVersion() {
#if MASKED_OPS_WITH_CUDA
  return cuda::runtime_version();
#else
  return 0;
#endif
}

int DriverVersion() {
#if MASKED_OPS_WITH_CUDA
  return cuda::driver_version();
#else
  return 0;
#endif
}

}  // namespace

// Only a driver that is present and too old is a problem: without one there is
// no GPU TensorFlow could place the kernels on, and registering them is harmless.
const std::string& GpuKernelsUnavailableReason() {
  static const std::string reason = [] {
    const int runtime = RuntimeVersion();
    const int driver = DriverVersion();
    if (runtime == 0 || driver == 0) return std::string();
    const std::string problem = cuda::driver_problem(driver, runtime);
    if (problem.empty()) return problem;
    return "masked_ops: GPU kernels not registered; masked losses run on the GPU as the "
           "equivalent pure-TensorFlow ops (slower, same results within rounding). " +
           problem;
  }();
  return reason;
}

bool RegisterGpuKernelsIfUsable(void (*register_kernels)()) {
  if (!GpuKernelsUnavailableReason().empty()) return false;
  register_kernels();
  return true;
}

}  // namespace tf_adapter
}  // namespace masked_ops

// Read through ctypes by masked_ops/_loader.py and the tests.
extern "C" {

// "" when the GPU kernels are registered (or none were built), else the warning.
__attribute__((visibility("default"))) const char* MaskedOpsGpuKernelsUnavailableReason() {
  return masked_ops::tf_adapter::GpuKernelsUnavailableReason().c_str();
}

// CUDART_VERSION the kernels were built with; 0 in a build without CUDA.
__attribute__((visibility("default"))) int MaskedOpsCudaRuntimeVersion() {
  return masked_ops::tf_adapter::RuntimeVersion();
}

// cuDriverGetVersion of the installed driver; 0 without one or without CUDA.
__attribute__((visibility("default"))) int MaskedOpsCudaDriverVersion() {
  return masked_ops::tf_adapter::DriverVersion();
}

// The decision for any (driver, runtime) pair: writes driver_problem()'s
// message (truncated to size - 1 bytes) and returns its full length, 0 when the
// kernels can run.
__attribute__((visibility("default"))) int MaskedOpsCudaDriverProblem(int driver, int runtime,
                                                                      char* out, int size) {
  const std::string problem = masked_ops::cuda::driver_problem(driver, runtime);
  if (out != nullptr && size > 0) {
    const size_t n = std::min(problem.size(), size_t(size - 1));
    std::memcpy(out, problem.data(), n);
    out[n] = '\0';
  }
  return int(problem.size());
}
}
