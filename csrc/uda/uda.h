// Fused UDA consistency-loss rows: the CPU and CUDA entry points (raw pointers, validated by the
// Python wrapper) and their pybind11 binding.
#pragma once
#include <cstdint>

namespace pybind11 { class module_; }

namespace mplfast {

// weak/strong [N, C] same dtype; loss, mask [N] float (double for fp64); grad [N, C] or nullptr.
void uda_cpu(const void* weak, const void* strong, int dtype, void* loss, void* mask, void* grad,
             int64_t N, int64_t C, double temperature, double threshold, double grad_scale,
             int num_threads);

#ifdef MPLFAST_WITH_CUDA
// Same on `stream` of `device`, asynchronous; loss and mask are float.
void uda_cuda(const void* weak, const void* strong, int dtype, float* loss, float* mask, void* grad,
              int64_t N, int64_t C, float temperature, float threshold, float grad_scale,
              int device, uint64_t stream);
#endif

// Adds uda_cpu (and uda_cuda when built with CUDA) to the module.
void bind_uda(pybind11::module_& m);

}  // namespace mplfast
