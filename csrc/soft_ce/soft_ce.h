// Soft-target / label-smoothed cross-entropy rows: the CPU and CUDA entry points (raw pointers,
// validated by the Python wrapper) and their pybind11 binding.
#pragma once
#include <cstdint>

namespace pybind11 { class module_; }

namespace mplfast {

// logits [N, C] (dtype code `dtype`, common/dtype.h), contiguous. target: int64 [N] when
// target_dtype < 0, else [N, C] of dtype code target_dtype. loss [N]: float (double for fp64
// logits). grad [N, C] in the logits dtype, or nullptr for no gradient.
void soft_ce_cpu(const void* logits, int dtype, const void* target, int target_dtype, void* loss,
                 void* grad, int64_t N, int64_t C, double label_smoothing, double grad_scale,
                 int num_threads);

#ifdef MPLFAST_WITH_CUDA
// Same on `stream` (a cudaStream_t as an integer) of `device`, asynchronous; loss is float.
// Launch failures and bad configurations throw std::runtime_error.
void soft_ce_cuda(const void* logits, int dtype, const void* target, int target_dtype, float* loss,
                  void* grad, int64_t N, int64_t C, float label_smoothing, float grad_scale,
                  int device, uint64_t stream);
#endif

// Adds soft_ce_cpu (and soft_ce_cuda when built with CUDA) to the module.
void bind_soft_ce(pybind11::module_& m);

}  // namespace mplfast
