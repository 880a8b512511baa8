// pybind11 module masked_ops._kernels: the framework-free kernels without
// TensorFlow, for tests and for GPU machines that have no TensorFlow. The
// Python-facing API is documented in kModuleDoc below; the functions it names
// are in host_arrays.cpp, cuda_arrays.cpp and thread_pool.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../kernels/cpu_isa.h"
#include "binding_common.h"
#include "entry_points.h"

#if defined(MASKED_OPS_WITH_CUDA)
#include "../kernels/masked_loss_cuda.h"
#endif

namespace py = pybind11;

namespace {

constexpr const char* kModuleDoc = R"doc(Masked-loss kernels without TensorFlow.

Every loss of the loss table (`losses` lists their names; `loss_name=` picks one,
`params=` gives its scalar parameters, e.g. loss_name="huber", params=[delta]).
Semantics are those of the TF ops MaskedOps>...: with w the mask weight of an
element (bool masks weigh 0/1), keep = (w != 0) and (y_true != padding_value)
and value the loss's element function,
  sum = sum(keep ? w * value(y_true, y_pred) : 0), weight_sum = sum(keep ? w : 0),
  count = sum(keep), loss = sum / weight_sum (0 when weight_sum == 0) or sum.
The mask has the inputs' shape or a leading prefix of it (a 0-d mask covers
everything); None means no mask. A list or tuple of arrays is several masks,
combined in the same pass (booleans AND-ed, float weights multiplied; the
product, or 0 once any weight is 0), each of its own prefix shape; they have
no mask gradient (want_mask / grad_mask refused). padding_value None means no padding. Results
accumulate in float32 for 16-bit and float32 inputs, float64 for float64, and
are bitwise deterministic.

Host (NumPy arrays: float16, ml_dtypes.bfloat16, float32, float64; masks bool,
y_pred's dtype or float32 for 16-bit y_pred; C-contiguous, element-aligned),
computed on several threads without the GIL:
  forward(y_true, y_pred, mask=None, padding_value=None, reduction="mean", *,
          loss_name="squared_error", params=())
      -> (loss, sum, weight_sum, count): NumPy scalars of the accumulator dtype, int
  backward(grad_loss, grad_sum, grad_weight_sum, y_true, y_pred, mask, padding_value,
           loss, weight_sum, reduction="mean", want_y_true=False, want_y_pred=True,
           want_mask=False, *, loss_name="squared_error", params=())
      -> (grad_y_true, grad_y_pred, grad_mask), None where not wanted
  set_num_threads(n), get_num_threads()
  cpu_isa() -> "baseline" | "avx2" | "avx512": the instruction set the host
      kernels run (same bits at every level; MASKED_OPS_CPU_ISA lowers it)

Row losses (`row_losses` lists the table; NumPy arrays as above): Keras 3's
sparse_categorical_crossentropy / categorical_crossentropy over the last axis
of y_pred (V classes), one value per row, reduced over the rows with a mask of
the rows' shape or a leading prefix of it (bool, integer: non-zero keeps, or a
float weight per row as above). Sparse y_true: int32/int64 labels of the rows'
shape (a trailing axis of 1 is accepted, as Keras squeezes it); dense y_true:
y_pred's shape and dtype. A row the mask drops, or whose label is
ignore_class, is not kept (weight 0) and never read; a kept row's label outside
[0, V) raises ValueError.
  row_forward(y_true, y_pred, mask=None, *, loss="sparse_categorical_crossentropy",
              from_logits=False, ignore_class=None, label_smoothing=0.0, reduction="mean")
      -> (loss, sum, weight_sum, count, row_stats): row_stats (accumulator dtype,
      the rows' shape plus an axis of 2, except for sparse_categorical_crossentropy
      from probabilities) is what row_backward reads instead of a second pass
      (0 for rows not kept): from logits, the row's max M and sum(exp(x - M))
      (its log-sum-exp is M + log of the sum); from probabilities, the sum of
      the clipped row (sparse), or the row sum S and Z_in (categorical).
  row_backward(y_true, y_pred, mask, row_stats, loss_value, weight_sum, *, grad_loss=1.0,
               grad_sum=0.0, loss=..., from_logits=..., ignore_class=..., label_smoothing=...,
               reduction=...) -> grad_y_pred (y_pred's shape and dtype)
  row_forward_backward(y_true, y_pred, mask=None, *, loss=..., ..., reduction="mean",
                       in_place=False, upstream=1.0)
      -> (loss, sum, weight_sum, count, row_stats, grad_y_pred) in one pass over
      y_pred: the gradient of upstream * loss; in_place=True writes it over
      y_pred (a writeable C-contiguous array) and returns y_pred.

CUDA (any object with __cuda_array_interface__, C-contiguous, aligned to its
element size, on the current device; asynchronous, nothing is synchronized):
the caller owns every buffer.
  forward_workspace_bytes(n), backward_workspace_bytes(n, mask_n, want_mask)
      (they depend on their arguments only, not on the device)
  forward_cuda(y_true, y_pred, mask, padding_value, reduction, out, count, workspace)
      out: accumulator-dtype array of 3 elements <- (loss, sum, weight_sum);
      count: int64 array of 1 element; workspace: at least
      forward_workspace_bytes(y_pred.size) bytes (None when that is 0).
  backward_cuda(upstream, forward_out, y_true, y_pred, mask, padding_value, reduction,
                grad_y_true=None, grad_y_pred=None, grad_mask=None, workspace=None)
      upstream: accumulator-dtype array (grad_loss, grad_sum, grad_weight_sum);
      forward_out: forward_cuda's `out`; each gradient array that is passed is
      written (input or mask shape and dtype); workspace: at least
      backward_workspace_bytes(n, mask.size, grad_mask is not None) bytes.
  Both take the keyword arguments loss_name= and params= (as forward), dtype= (the
  element type of y_true, y_pred, masks of that size and gradients: needed for
  bfloat16, which the protocol has no typestr for, so 2-byte buffers are
  reinterpreted; a '<f4' mask stays float32) and stream= (a cudaStream_t as an
  int, or a torch.cuda.Stream / cupy.cuda.Stream). Without stream=, the stream
  the arrays name is used (all that name one must agree); when none names one
  (PyTorch tensors never do) stream= is required: the launch cannot be ordered
  with the producer's stream otherwise.
  Results are bitwise identical on every GPU model, SM count and MIG slice for
  the same inputs at the same offsets from a 16-byte boundary.
  cuda_runtime_version (the CUDA runtime the kernels were built with, 0 without
  CUDA) and cuda_driver_version() (the installed driver's, 0 without one): the
  driver must support the runtime's major version, else the calls raise with
  the fix.
with_cuda tells whether the CUDA functions were compiled in.)doc";

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  namespace b = masked_ops::binding;
  using py::arg;
  m.doc() = kModuleDoc;
#if defined(MASKED_OPS_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("losses") = b::loss_names();
  m.def("forward", &b::forward, arg("y_true"), arg("y_pred"), arg("mask") = py::none(),
        arg("padding_value") = py::none(), arg("reduction") = "mean", py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        "(loss, sum, weight_sum, count) of a masked loss on host arrays.");
  m.def("backward", &b::backward, arg("grad_loss"), arg("grad_sum"), arg("grad_weight_sum"),
        arg("y_true"), arg("y_pred"), arg("mask"), arg("padding_value"), arg("loss"),
        arg("weight_sum"), arg("reduction") = "mean", arg("want_y_true") = false,
        arg("want_y_pred") = true, arg("want_mask") = false, py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        "(grad_y_true, grad_y_pred, grad_mask) on host arrays; None where not wanted.");
  m.def("forward_backward", &b::forward_backward, arg("y_true"), arg("y_pred"),
        arg("mask") = py::none(), arg("reduction") = "mean", arg("want_y_true") = false,
        arg("want_y_pred") = true, py::kw_only(), arg("loss_name") = "squared_error",
        arg("params") = std::vector<double>(),
        "(loss, sum, weight_sum, count, grad_y_true, grad_y_pred) in one pass: the gradients "
        "of loss for an upstream gradient of 1 (None where not wanted). One boolean mask (or "
        "none), no padding value.");
  m.attr("row_losses") = b::row_loss_names();
  m.def("row_forward", &b::row_forward, arg("y_true"), arg("y_pred"), arg("mask") = py::none(),
        py::kw_only(), arg("loss") = "sparse_categorical_crossentropy", arg("from_logits") = false,
        arg("ignore_class") = py::none(), arg("label_smoothing") = 0.0, arg("reduction") = "mean",
        "(loss, sum, weight_sum, count, row_stats) of a row loss on host arrays.");
  m.def("row_backward", &b::row_backward, arg("y_true"), arg("y_pred"), arg("mask"),
        arg("row_stats"), arg("loss_value"), arg("weight_sum"), py::kw_only(),
        arg("grad_loss") = 1.0, arg("grad_sum") = 0.0,
        arg("loss") = "sparse_categorical_crossentropy", arg("from_logits") = false,
        arg("ignore_class") = py::none(), arg("label_smoothing") = 0.0, arg("reduction") = "mean",
        "Gradient of a row loss w.r.t. y_pred from row_forward's outputs, for upstream "
        "gradients grad_loss (of loss) and grad_sum (of sum).");
  m.def("row_forward_backward", &b::row_forward_backward, arg("y_true"), arg("y_pred"),
        arg("mask") = py::none(), py::kw_only(), arg("loss") = "sparse_categorical_crossentropy",
        arg("from_logits") = false, arg("ignore_class") = py::none(), arg("label_smoothing") = 0.0,
        arg("reduction") = "mean", arg("in_place") = false, arg("upstream") = 1.0,
        "(loss, sum, weight_sum, count, row_stats, grad_y_pred) in one pass; in_place=True "
        "overwrites y_pred with the gradient.");
  m.def("set_num_threads", &b::set_num_threads, arg("n"),
        "Most threads a host call uses (results do not depend on it).");
  m.def("get_num_threads", &b::get_num_threads);
  m.def(
      "cpu_isa", [] { return std::string(masked_ops::cpu::isa_name(masked_ops::cpu::cpu_isa())); },
      "Instruction set the host kernels run: baseline (AVX), avx2 or avx512.");
  m.def("forward_workspace_bytes", &b::forward_workspace_bytes, arg("n"),
        "Workspace bytes forward_cuda needs for n elements (on any device).");
  m.def("backward_workspace_bytes", &b::backward_workspace_bytes, arg("n"), arg("mask_n"),
        arg("want_mask"), "Workspace bytes backward_cuda needs.");
  m.def("forward_backward_workspace_bytes", &b::forward_backward_workspace_bytes, arg("n"),
        "Workspace bytes forward_backward_cuda needs for n elements.");
  m.def("forward_backward_cuda", &b::forward_backward_cuda, arg("y_true"), arg("y_pred"),
        arg("mask"), arg("reduction"), arg("out"), arg("count"), arg("grad_y_true") = py::none(),
        arg("grad_y_pred") = py::none(), arg("workspace") = py::none(), py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        arg("dtype") = py::none(), arg("stream") = py::none(),
        "Asynchronous forward_backward on device arrays (one boolean mask or none).");
  m.def("scale_gradient_cuda", &b::scale_gradient_cuda, arg("scale"), arg("gradient"), arg("out"),
        py::kw_only(), arg("dtype") = py::none(), arg("stream") = py::none(),
        "out = scale[0] * gradient, scale read on the device; nothing when it is exactly 1 and "
        "out is gradient.");
  m.def("forward_cuda", &b::forward_cuda, arg("y_true"), arg("y_pred"), arg("mask"),
        arg("padding_value"), arg("reduction"), arg("out"), arg("count"),
        arg("workspace") = py::none(), py::kw_only(), arg("loss_name") = "squared_error",
        arg("params") = std::vector<double>(), arg("dtype") = py::none(),
        arg("stream") = py::none(), "Asynchronous forward on device arrays; see the module doc.");
  m.def("backward_cuda", &b::backward_cuda, arg("upstream"), arg("forward_out"), arg("y_true"),
        arg("y_pred"), arg("mask"), arg("padding_value"), arg("reduction"),
        arg("grad_y_true") = py::none(), arg("grad_y_pred") = py::none(),
        arg("grad_mask") = py::none(), arg("workspace") = py::none(), py::kw_only(),
        arg("loss_name") = "squared_error", arg("params") = std::vector<double>(),
        arg("dtype") = py::none(), arg("stream") = py::none(),
        "Asynchronous backward on device arrays; see the module doc.");
#if defined(MASKED_OPS_WITH_CUDA)
  m.attr("cuda_runtime_version") = masked_ops::cuda::runtime_version();
  m.def("cuda_driver_version", &masked_ops::cuda::driver_version,
        "cuDriverGetVersion of the installed driver (0 without one).");
#else
  m.attr("cuda_runtime_version") = 0;
  m.def("cuda_driver_version", [] { return 0; }, "0: built without CUDA.");
#endif
}
