// The pybind11 module mplfast._C. Tensors cross this boundary as raw data pointers (Python ints)
// plus sizes and dtype codes (common/dtype.h), so _C does not link libtorch; the Python wrappers
// validate every argument before calling in here. Each op binds its own functions
// (csrc/<op>/bind.cpp, csrc/augment/cpu.cpp); this file adds the build flags and the CUDA
// helpers that belong to no single op.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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
#endif

#ifdef MPLFAST_WITH_AUGMENT
  bind_augment(m);
  m.attr("with_augment") = true;
#else
  m.attr("with_augment") = false;
#endif
}
