// pybind11 binding of the multi-tensor dot kernels (see grad_dot.h). The GIL is released while
// they run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/bind.h"
#include "grad_dot/grad_dot.h"

namespace py = pybind11;

namespace mplfast {

void bind_grad_dot(py::module_& m) {
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
#endif
}

}  // namespace mplfast
