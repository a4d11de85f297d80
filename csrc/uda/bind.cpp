// pybind11 binding of the UDA kernels (see uda.h). The GIL is released while they run.
#include <pybind11/pybind11.h>

#include "common/bind.h"
#include "uda/uda.h"

namespace py = pybind11;

namespace mplfast {

void bind_uda(py::module_& m) {
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
#ifdef MPLFAST_WITH_CUDA
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
#endif
}

}  // namespace mplfast
