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

}  // namespace mplfast
#endif
