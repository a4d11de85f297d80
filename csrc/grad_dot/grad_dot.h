// Multi-tensor dot products sum_i <x_i, y_i> and sum_i <x_i, y_i - z_i>: the CPU and CUDA entry
// points (tensors as raw pointers in lists, validated by the Python wrapper) and their binding.
#pragma once
#include <cstdint>
#include <vector>

namespace pybind11 { class module_; }

namespace mplfast {

// zs empty: sum_i <x_i, y_i>, else sum_i <x_i, y_i - z_i>; fp64 accumulation, fixed order.
double grad_dot_cpu(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys,
                    const std::vector<uint64_t>& zs, const std::vector<int64_t>& sizes,
                    const std::vector<int>& dtypes, int num_threads);

#ifdef MPLFAST_WITH_CUDA
// Number of fp64 partials the workspace of grad_dot_cuda must hold for these sizes.
int64_t grad_dot_cuda_workspace(const std::vector<int64_t>& sizes);
// Writes the float result to *out on `stream` of `device`, asynchronous.
void grad_dot_cuda(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys,
                   const std::vector<uint64_t>& zs, const std::vector<int64_t>& sizes,
                   const std::vector<int>& dtypes, double* workspace, int64_t workspace_len,
                   float* out, int device, uint64_t stream);
#endif

// Adds grad_dot_cpu (and grad_dot_cuda_workspace / grad_dot_cuda with CUDA) to the module.
void bind_grad_dot(pybind11::module_& m);

}  // namespace mplfast
