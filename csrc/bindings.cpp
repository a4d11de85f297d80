#include <pybind11/pybind11.h>
namespace py = pybind11;
PYBIND11_MODULE(_C, m) {
  m.doc() = "mplfast native kernels";
#ifdef MPLFAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
