// The functions masked_ops._kernels exposes, defined by concern (host_arrays.cpp,
// cuda_arrays.cpp, thread_pool.cpp) and registered with their Python names,
// arguments and docs in module.cpp.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
// params (std::vector<double>) converts from any sequence of numbers; every
// translation unit that sees these signatures agrees on the caster.
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace masked_ops {
namespace binding {

namespace py = pybind11;

// Host (NumPy) arrays on the CPU kernels: host_arrays.cpp.
py::tuple forward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                  const py::object& padding_value, const std::string& reduction,
                  const std::string& loss_name, const std::vector<double>& params);
py::tuple backward(double grad_loss, double grad_sum, double grad_weight_sum,
                   const py::object& y_true, const py::object& y_pred, const py::object& mask,
                   const py::object& padding_value, double loss, double weight_sum,
                   const std::string& reduction, bool want_y_true, bool want_y_pred, bool want_mask,
                   const std::string& loss_name, const std::vector<double>& params);

py::tuple forward_backward(const py::object& y_true, const py::object& y_pred,
                           const py::object& mask, const std::string& reduction, bool want_y_true,
                           bool want_y_pred, const std::string& loss_name,
                           const std::vector<double>& params);

// Host (NumPy) arrays on the CPU row-loss kernels (categorical
// cross-entropy): row_arrays.cpp.
py::tuple row_forward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                      const std::string& loss, bool from_logits, const py::object& ignore_class,
                      double label_smoothing, const std::string& reduction);
py::array row_backward(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                       const py::object& row_stats, double loss_value, double weight_sum,
                       double grad_loss, double grad_sum, const std::string& loss, bool from_logits,
                       const py::object& ignore_class, double label_smoothing,
                       const std::string& reduction);
py::tuple row_forward_backward(const py::object& y_true, const py::object& y_pred,
                               const py::object& mask, const std::string& loss, bool from_logits,
                               const py::object& ignore_class, double label_smoothing,
                               const std::string& reduction, bool in_place, double upstream);

// Threads of the host calls: thread_pool.cpp.
void set_num_threads(int n);
int get_num_threads();

// __cuda_array_interface__ arrays on the CUDA kernels: cuda_arrays.cpp. Without
// CUDA they validate their arguments, then raise.
int64_t forward_workspace_bytes(int64_t n);
int64_t backward_workspace_bytes(int64_t n, int64_t mask_n, bool want_mask);
void forward_cuda(const py::object& y_true, const py::object& y_pred, const py::object& mask,
                  const py::object& padding_value, const std::string& reduction,
                  const py::object& out_obj, const py::object& count_obj,
                  const py::object& workspace_obj, const std::string& loss_name,
                  const std::vector<double>& params, const py::object& dtype,
                  const py::object& stream_obj);
void backward_cuda(const py::object& upstream_obj, const py::object& forward_out_obj,
                   const py::object& y_true, const py::object& y_pred, const py::object& mask,
                   const py::object& padding_value, const std::string& reduction,
                   const py::object& grad_true_obj, const py::object& grad_pred_obj,
                   const py::object& grad_mask_obj, const py::object& workspace_obj,
                   const std::string& loss_name, const std::vector<double>& params,
                   const py::object& dtype, const py::object& stream_obj);

int64_t forward_backward_workspace_bytes(int64_t n);
void forward_backward_cuda(const py::object& y_true, const py::object& y_pred,
                           const py::object& mask, const std::string& reduction,
                           const py::object& out_obj, const py::object& count_obj,
                           const py::object& grad_true_obj, const py::object& grad_pred_obj,
                           const py::object& workspace_obj, const std::string& loss_name,
                           const std::vector<double>& params, const py::object& dtype,
                           const py::object& stream_obj);
void scale_gradient_cuda(const py::object& scale_obj, const py::object& gradient_obj,
                         const py::object& out_obj, const py::object& dtype,
                         const py::object& stream_obj);

}  // namespace binding
}  // namespace masked_ops
