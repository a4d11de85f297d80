// The pybind11 module mplfast._C. Tensors cross this boundary as raw data pointers (Python ints)
// plus sizes and dtype codes (common/dtype.h), so _C does not link libtorch; the Python wrappers
// validate every argument before calling in here. Each op binds its own functions
// (csrc/<op>/bind.cpp, csrc/augment/cpu.cpp); this file adds the build flags and the CUDA
// helpers that belong to no single op.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/bind.h"
#include "common/device.h"
#include "grad_dot/grad_dot.h"
#include "soft_ce/soft_ce.h"
#include "uda/uda.h"

namespace py = pybind11;

#ifdef MPLFAST_WITH_AUGMENT
void bind_augment(pybind11::module_& m);  // csrc/augment/cpu.cpp
#endif

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

  mplfast::bind_soft_ce(m);
  mplfast::bind_uda(m);
  mplfast::bind_grad_dot(m);
#ifdef MPLFAST_WITH_CUDA
  m.def("cuda_device_count", &mplfast::cuda_device_count,
        "(count, '') from the CUDA runtime, or (-1, reason) when it cannot be used.");
  m.def(
      "scale_inplace_cuda",
      [](uint64_t data, int dtype, int64_t numel, uint64_t scale, int scale_dtype, uint64_t stream) {
        py::gil_scoped_release nogil;
        mplfast::scale_inplace_cuda(mplfast::ptr<void>(data), dtype, numel, mplfast::ptr<const void>(scale),
                                    scale_dtype, stream);
      },
      py::arg("data"), py::arg("dtype"), py::arg("numel"), py::arg("scale"), py::arg("scale_dtype"),
      py::arg("stream"),
      "data[:numel] *= scale[0] in place on `stream` of the current device, no host sync; a no-op "
      "(every block returns at once) when scale[0] == 1. dtype codes: fp32 0, fp16 1, bf16 2, fp64 3.");
#endif

#ifdef MPLFAST_WITH_AUGMENT
  bind_augment(m);
  m.attr("with_augment") = true;
#else
  m.attr("with_augment") = false;
#endif
}
