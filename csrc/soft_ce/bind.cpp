// pybind11 binding of the soft-CE kernels (see soft_ce.h). The GIL is released while they run.
#include <pybind11/pybind11.h>

#include "common/bind.h"
#include "soft_ce/soft_ce.h"

namespace py = pybind11;

namespace mplfast {

void bind_soft_ce(py::module_& m) {
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
#endif
}

}  // namespace mplfast
