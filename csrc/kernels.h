// Entry points of the CPU and CUDA kernels (raw pointers; validated by mplfast/_native.py).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mplfast {

// ---- CPU (csrc/cpu) ------------------------------------------------------------------------
// logits [N, C] (dtype code `dtype`), contiguous. target: int64 [N] when target_dtype < 0,
// else [N, C] of dtype code target_dtype. loss [N]: float (double for fp64 logits).
// grad [N, C] in the logits dtype, or nullptr for no gradient.
void soft_ce_cpu(const void* logits, int dtype, const void* target, int target_dtype, void* loss,
                 void* grad, int64_t N, int64_t C, double label_smoothing, double grad_scale,
                 int num_threads);

// weak/strong [N, C] same dtype; loss, mask [N] float (double for fp64); grad [N, C] or nullptr.
void uda_cpu(const void* weak, const void* strong, int dtype, void* loss, void* mask, void* grad,
             int64_t N, int64_t C, double temperature, double threshold, double grad_scale,
             int num_threads);

// sum_i <x_i, y_i> (z empty) or sum_i <x_i, y_i - z_i>; fp64 accumulation, fixed order.
double grad_dot_cpu(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys,
                    const std::vector<uint64_t>& zs, const std::vector<int64_t>& sizes,
                    const std::vector<int>& dtypes, int num_threads);

#ifdef MPLFAST_WITH_CUDA
// ---- CUDA (csrc/cuda) ----------------------------------------------------------------------
// All launches go on `stream` (a cudaStream_t as an integer) of device `device`; they are
// asynchronous. Errors (launch failures, bad configuration) throw std::runtime_error.
void soft_ce_cuda(const void* logits, int dtype, const void* target, int target_dtype, float* loss,
                  void* grad, int64_t N, int64_t C, float label_smoothing, float grad_scale,
                  int device, uint64_t stream);
void uda_cuda(const void* weak, const void* strong, int dtype, float* loss, float* mask, void* grad,
              int64_t N, int64_t C, float temperature, float threshold, float grad_scale,
              int device, uint64_t stream);
// Number of fp64 partials the workspace of grad_dot_cuda must hold for these sizes.
int64_t grad_dot_cuda_workspace(const std::vector<int64_t>& sizes);
void grad_dot_cuda(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys,
                   const std::vector<uint64_t>& zs, const std::vector<int64_t>& sizes,
                   const std::vector<int>& dtypes, double* workspace, int64_t workspace_len,
                   float* out, int device, uint64_t stream);
// (device count, "" ) or (-1, reason).
std::pair<int, std::string> cuda_device_count();
#endif

}  // namespace mplfast
