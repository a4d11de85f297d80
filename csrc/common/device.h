// CUDA pieces of _C that belong to no single op: the runtime's device count and the in-place
// gradient scaling used by the fused ops' backward. Declared only in CUDA builds.
#pragma once
#ifdef MPLFAST_WITH_CUDA
#include <cstdint>
#include <string>
#include <utility>

namespace mplfast {

// (device count, "") or (-1, reason) when _C's CUDA runtime cannot be used (no driver, ...).
std::pair<int, std::string> cuda_device_count();

// data[i] *= *scale for i < numel, in place, on `stream` (a cudaStream_t as an integer) of the
// current device; asynchronous, no host sync. data: dtype code `dtype` (common/dtype.h: fp32,
// fp16, bf16, fp64); scale: ONE element on the device, dtype code `scale_dtype`. The product is
// taken in fp32 (fp64 for fp64 data) with the scale first rounded to that type, then rounded to
// the data's dtype, as torch's `grad * grad_out` does. When *scale == 1 every block returns at
// once, so the usual backward (grad_out of exactly 1) costs one launch and no traffic.
// Bad dtype codes throw std::invalid_argument before anything is launched; numel <= 0 is a
// no-op.
void scale_inplace_cuda(void* data, int dtype, int64_t numel, const void* scale, int scale_dtype,
                        uint64_t stream);

}  // namespace mplfast
#endif
