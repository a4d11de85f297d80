// pybind11 bindings of mplfast._C. Tensors cross this boundary as raw data pointers (Python
// ints) plus sizes and dtype codes, so _C does not link libtorch; mplfast/_native.py validates
// every argument before calling in here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "kernels.h"

namespace py = pybind11;
using namespace mplfast;

#ifdef MPLFAST_WITH_AUGMENT
void bind_augment(pybind11::module_& m);  // csrc/augment/ (data engineer)
#endif

namespace {
template <typename P> P* ptr(uint64_t v) { return reinterpret_cast<P*>(static_cast<uintptr_t>(v)); }
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mplfast native kernels (CPU always; CUDA when built with a toolkit)";
#ifdef MPLFAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef MPLFAST_WITH_OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif

  m.def(
      "soft_ce_cpu",
      [](uint64_t logits, int dtype, uint64_t target, int target_dtype, uint64_t loss, uint64_t grad,
         int64_t N, int64_t C, double eps, double scale, int threads) {
        py::gil_scoped_release nogil;
        soft_ce_cpu(ptr<const void>(logits), dtype, ptr<const void>(target), target_dtype, ptr<void>(loss),
                    ptr<void>(grad), N, C, eps, scale, threads);
      },
      py::arg("logits"), py::arg("dtype"), py::arg("target"), py::arg("target_dtype"), py::arg("loss"),
      py::arg("grad"), py::arg("N"), py::arg("C"), py::arg("label_smoothing"), py::arg("grad_scale"),
      py::arg("num_threads"),
      "Soft/label-smoothed CE rows on CPU. target_dtype -1: int64 class indices. grad 0: none.");

  m.def(
      "uda_cpu",
      [](uint64_t weak, uint64_t strong, int dtype, uint64_t loss, uint64_t mask, uint64_t grad, int64_t N,
         int64_t C, double tau, double thr, double scale, int threads) {
        py::gil_scoped_release nogil;
        uda_cpu(ptr<const void>(weak), ptr<const void>(strong), dtype, ptr<void>(loss), ptr<void>(mask),
                ptr<void>(grad), N, C, tau, thr, scale, threads);
      },
      py::arg("weak"), py::arg("strong"), py::arg("dtype"), py::arg("loss"), py::arg("mask"), py::arg("grad"),
      py::arg("N"), py::arg("C"), py::arg("temperature"), py::arg("threshold"), py::arg("grad_scale"),
      py::arg("num_threads"), "Fused UDA loss rows on CPU. grad 0: none.");

  m.def(
      "grad_dot_cpu",
      [](const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys, const std::vector<uint64_t>& zs,
         const std::vector<int64_t>& sizes, const std::vector<int>& dtypes, int threads) {
        py::gil_scoped_release nogil;
        return grad_dot_cpu(xs, ys, zs, sizes, dtypes, threads);
      },
      py::arg("xs"), py::arg("ys"), py::arg("zs"), py::arg("sizes"), py::arg("dtypes"), py::arg("num_threads"),
      "sum_i <x_i, y_i> (zs empty) or sum_i <x_i, y_i - z_i>, fp64, deterministic.");

#ifdef MPLFAST_WITH_CUDA
  m.def(
      "soft_ce_cuda",
      [](uint64_t logits, int dtype, uint64_t target, int target_dtype, uint64_t loss, uint64_t grad,
         int64_t N, int64_t C, double eps, double scale, int device, uint64_t stream) {
        py::gil_scoped_release nogil;
        soft_ce_cuda(ptr<const void>(logits), dtype, ptr<const void>(target), target_dtype, ptr<float>(loss),
                     ptr<void>(grad), N, C, float(eps), float(scale), device, stream);
      },
      py::arg("logits"), py::arg("dtype"), py::arg("target"), py::arg("target_dtype"), py::arg("loss"),
      py::arg("grad"), py::arg("N"), py::arg("C"), py::arg("label_smoothing"), py::arg("grad_scale"),
      py::arg("device"), py::arg("stream"));
  m.def(
      "uda_cuda",
      [](uint64_t weak, uint64_t strong, int dtype, uint64_t loss, uint64_t mask, uint64_t grad, int64_t N,
         int64_t C, double tau, double thr, double scale, int device, uint64_t stream) {
        py::gil_scoped_release nogil;
        uda_cuda(ptr<const void>(weak), ptr<const void>(strong), dtype, ptr<float>(loss), ptr<float>(mask),
                 ptr<void>(grad), N, C, float(tau), float(thr), float(scale), device, stream);
      },
      py::arg("weak"), py::arg("strong"), py::arg("dtype"), py::arg("loss"), py::arg("mask"), py::arg("grad"),
      py::arg("N"), py::arg("C"), py::arg("temperature"), py::arg("threshold"), py::arg("grad_scale"),
      py::arg("device"), py::arg("stream"));
  m.def("grad_dot_cuda_workspace", &grad_dot_cuda_workspace, py::arg("sizes"),
        "Number of fp64 partial slots grad_dot_cuda needs for these tensor sizes.");
  m.def(
      "grad_dot_cuda",
      [](const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys, const std::vector<uint64_t>& zs,
         const std::vector<int64_t>& sizes, const std::vector<int>& dtypes, uint64_t workspace,
         int64_t workspace_len, uint64_t out, int device, uint64_t stream) {
        py::gil_scoped_release nogil;
        grad_dot_cuda(xs, ys, zs, sizes, dtypes, ptr<double>(workspace), workspace_len, ptr<float>(out), device,
                      stream);
      },
      py::arg("xs"), py::arg("ys"), py::arg("zs"), py::arg("sizes"), py::arg("dtypes"), py::arg("workspace"),
      py::arg("workspace_len"), py::arg("out"), py::arg("device"), py::arg("stream"));
  m.def("cuda_device_count", &cuda_device_count,
        "(count, '') from the CUDA runtime, or (-1, reason) when it cannot be used.");
#endif

#ifdef MPLFAST_WITH_AUGMENT
  bind_augment(m);
  m.attr("with_augment") = true;
#else
  m.attr("with_augment") = false;
#endif
}
