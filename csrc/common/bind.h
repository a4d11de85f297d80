// Shared by the per-op binding files (csrc/<op>/bind.cpp): tensors cross into _C as raw data
// pointers carried in Python ints.
#pragma once
#include <cstdint>

namespace mplfast {
template <typename P> P* ptr(uint64_t v) { return reinterpret_cast<P*>(static_cast<uintptr_t>(v)); }
}  // namespace mplfast
