// The __cuda_array_interface__ protocol: device arrays, their dtypes and the
// stream they name, parsed and validated without CUDA, so that these checks
// are compiled (and tested) in every build; only the launch needs CUDA.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "binding_common.h"

namespace masked_ops {
namespace binding {

struct DeviceArray {
  std::string name;
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  std::string typestr;
  std::optional<intptr_t> stream;
  // Layout errors, raised after the shape and dtype checks.
  std::string not_contiguous;
  std::string misaligned;
  int64_t size() const { return num_elements(shape); }
  void check_layout() const {
    if (!not_contiguous.empty()) throw py::value_error(not_contiguous);
    if (!misaligned.empty()) throw py::value_error(misaligned);
  }
};

// obj's __cuda_array_interface__, checked; raises unless obj has one.
DeviceArray device_array(const py::object& obj, const char* name);
// None stays None; anything else as device_array.
std::optional<DeviceArray> optional_array(const py::object& obj, const char* name);

// Element type of a device array from its typestr. With `as` (the dtype=
// argument), 2-, 4- or 8-byte buffers are reinterpreted as that type: the
// protocol has no typestr for bfloat16. Masks (is_mask) of another size keep
// their float typestr: float32 weights for 16-bit inputs.
DType device_dtype(const DeviceArray& a, std::optional<DType> as, bool is_mask = false);

// Output/scratch array checks: dtype by typestr, element count.
void check_output(const DeviceArray& a, const char* typestr, int64_t size, const char* what);

// stream=: a cudaStream_t as an int, or a stream object (PyTorch's
// torch.cuda.Stream has .cuda_stream, CuPy's cupy.cuda.Stream .ptr).
intptr_t parse_stream(const py::object& stream);

// One stream for the whole call: stream= if given, else the one the arrays
// name (all that name one must agree); none when neither says.
std::optional<intptr_t> choose_stream(const py::object& stream,
                                      const std::vector<const DeviceArray*>& arrays);

}  // namespace binding
}  // namespace masked_ops
