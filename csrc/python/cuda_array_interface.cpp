#include "cuda_array_interface.h"

#include <exception>

namespace masked_ops {
namespace binding {
namespace {

size_t typestr_itemsize(const std::string& typestr) {
  if (typestr.size() < 3) return 0;
  try {
    return size_t(std::stoul(typestr.substr(2)));
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

DeviceArray device_array(const py::object& obj, const char* name) {
  if (!is_cuda_array(obj)) {
    throw py::type_error(std::string(name) +
                         " must be a CUDA array (an object with __cuda_array_interface__, e.g. "
                         "a CuPy array or a PyTorch CUDA tensor); got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))) +
                         ". Host arrays go to forward/backward");
  }
  const py::object cai_obj = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(cai_obj)) {
    throw py::type_error(std::string(name) + ".__cuda_array_interface__ is not a dict");
  }
  const py::dict cai = cai_obj;
  auto field = [&](const char* key) -> py::object {
    if (!cai.contains(key)) {
      throw py::value_error(std::string(name) + ".__cuda_array_interface__ has no '" + key +
                            "' entry");
    }
    return cai[key];
  };
  const int version = field("version").cast<int>();
  if (version < 0 || version > 3) {
    throw py::value_error(std::string(name) + ".__cuda_array_interface__ has version " +
                          std::to_string(version) + "; versions 0 to 3 are supported");
  }
  DeviceArray a;
  a.name = name;
  for (const auto& d : field("shape").cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
  a.typestr = field("typestr").cast<std::string>();
  const auto data = field("data").cast<py::tuple>();
  if (data.size() != 2) {
    throw py::value_error(std::string(name) +
                          ".__cuda_array_interface__['data'] must be a "
                          "(pointer, read_only) pair");
  }
  a.ptr = data[0].cast<uintptr_t>();
  if (a.ptr == 0 && a.size() != 0) {
    throw py::value_error(std::string(name) + " has a null data pointer but " +
                          std::to_string(a.size()) + " elements");
  }
  // A misaligned load faults on the device and takes the CUDA context (and
  // every later call in the process) down with it.
  const size_t item = typestr_itemsize(a.typestr);
  if (item > 1 && a.ptr % item != 0) {
    a.misaligned = std::string(name) + "'s device buffer is not aligned to its " +
                   std::to_string(item) + "-byte element size (address % " + std::to_string(item) +
                   " = " + std::to_string(a.ptr % item) + "); pass an aligned copy";
  }
  if (cai.contains("mask") && !cai["mask"].is_none()) {
    throw py::value_error(std::string(name) +
                          " is a masked array (its __cuda_array_interface__ has a 'mask'); pass "
                          "the mask as the mask argument instead");
  }
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const auto strides = cai["strides"].cast<py::tuple>();
    if (strides.size() != a.shape.size()) {
      throw py::value_error(std::string(name) + " has " + std::to_string(strides.size()) +
                            " strides for " + std::to_string(a.shape.size()) + " dimensions");
    }
    // C-contiguous: each stride is the byte size of the trailing dimensions;
    // extents of 1 (and empty arrays) make any stride fine.
    int64_t expected = int64_t(item);
    bool contiguous = true;
    for (size_t i = a.shape.size(); i-- > 0;) {
      const int64_t s = strides[i].cast<int64_t>();
      if (a.shape[i] != 1 && s != expected) contiguous = false;
      expected *= a.shape[i];
    }
    if (!contiguous && a.size() != 0) {
      std::vector<int64_t> st;
      for (const auto& s : strides) st.push_back(s.cast<int64_t>());
      a.not_contiguous = std::string(name) + " must be C-contiguous, got strides " + shape_str(st) +
                         " (bytes) for shape " + shape_str(a.shape) + "; pass a contiguous copy";
    }
  }
  if (version >= 3 && cai.contains("stream") && !cai["stream"].is_none()) {
    const intptr_t stream = cai["stream"].cast<intptr_t>();
    if (stream == 0) {
      throw py::value_error(std::string(name) +
                            ".__cuda_array_interface__['stream'] is 0, which the protocol "
                            "disallows (1 is the legacy default stream)");
    }
    a.stream = stream;
  }
  return a;
}

std::optional<DeviceArray> optional_array(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return device_array(obj, name);
}

DType device_dtype(const DeviceArray& a, std::optional<DType> as, bool is_mask) {
  const std::string& ts = a.typestr;
  const bool well_formed = ts.size() >= 3 && (ts[0] == '<' || ts[0] == '|' || ts[0] == '=');
  if (!well_formed) {
    throw py::type_error(a.name + " has typestr '" + ts +
                         "'; only little-endian float16/float32/float64/bool buffers are "
                         "supported");
  }
  const char kind = ts[1];
  const std::string size = ts.substr(2);
  if (kind == 'b' && size == "1") return DType::kBool;
  if (as && *as != DType::kBool && std::to_string(itemsize(*as)) == size &&
      (kind == 'f' || kind == 'i' || kind == 'u' || kind == 'V')) {
    return *as;
  }
  if ((!as || is_mask) && kind == 'f') {
    if (size == "2") return DType::kHalf;
    if (size == "4") return DType::kFloat;
    if (size == "8") return DType::kDouble;
  }
  throw py::type_error(a.name + " has typestr '" + ts + "', which is not " +
                       (as ? std::string(dtype_name(*as)) + " (dtype=)"
                           : std::string("float16 ('<f2'), float32 ('<f4'), float64 ('<f8') "
                                         "or bool ('|b1')")) +
                       (as ? "" : "; for bfloat16 pass dtype='bfloat16'"));
}

void check_output(const DeviceArray& a, const char* typestr, int64_t size, const char* what) {
  if (a.typestr.substr(1) != std::string(typestr).substr(1)) {
    throw py::type_error(a.name + " must have typestr '" + typestr + "' (" + what + "), got '" +
                         a.typestr + "'");
  }
  if (a.size() != size) {
    throw py::value_error(a.name + " must have " + std::to_string(size) + " elements (" + what +
                          "), got shape " + shape_str(a.shape));
  }
  a.check_layout();
}

intptr_t parse_stream(const py::object& stream) {
  py::object handle = stream;
  if (py::hasattr(stream, "cuda_stream")) {
    handle = stream.attr("cuda_stream");
  } else if (py::hasattr(stream, "ptr")) {
    handle = stream.attr("ptr");
  }
  if (!py::isinstance<py::int_>(handle) || py::isinstance<py::bool_>(handle)) {
    throw py::type_error(
        "stream must be a cudaStream_t handle as an int, a torch.cuda.Stream or a "
        "cupy.cuda.Stream; got " +
        std::string(py::str(py::type::handle_of(stream).attr("__name__"))));
  }
  return handle.cast<intptr_t>();
}

std::optional<intptr_t> choose_stream(const py::object& stream,
                                      const std::vector<const DeviceArray*>& arrays) {
  if (!stream.is_none()) return parse_stream(stream);
  std::optional<intptr_t> chosen;
  const DeviceArray* by = nullptr;
  for (const DeviceArray* a : arrays) {
    if (!a || !a->stream) continue;
    if (chosen && *chosen != *a->stream) {
      throw py::value_error(by->name + " names stream " + std::to_string(*chosen) + " but " +
                            a->name + " names stream " + std::to_string(*a->stream) +
                            "; pass stream= to choose one");
    }
    chosen = a->stream;
    by = a;
  }
  return chosen;
}

}  // namespace binding
}  // namespace masked_ops
