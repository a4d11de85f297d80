// The per-thread work of the CUDA multi-tensor dot (cuda.cu): the tensor table, the even split
// of the elements over the blocks of a launch, and one thread's fp64 partial. All of it is
// __host__ __device__, so tests/ops/test_native_cuda_helpers.py runs the kernel's arithmetic
// in a host program (no GPU) and checks the split and the sums.
#pragma once
#include <cstdint>

#include "common/cuda.cuh"

namespace mplfast {
namespace cuda {
namespace grad_dot {

constexpr int kMaxTensors = 320;           // ResNet-50 has 161 parameter tensors
constexpr int64_t kUnit = 16;              // split granularity in elements: a multiple of every
                                           // vector width, so units start 16-byte aligned
constexpr int64_t kMinUnitsPerBlock = 256; // 4096 elements: smaller lists take fewer blocks
constexpr int kThreads = 512;
constexpr int kMaxBlocks = 1024;           // per launch; fixed, so the reduction is device-independent

struct Table {
  const void* x[kMaxTensors];
  const void* y[kMaxTensors];
  const void* z[kMaxTensors];              // nullptr entries when no delta
  int64_t n[kMaxTensors];
  int64_t unit_start[kMaxTensors + 1];     // prefix sum of ceil(n / kUnit)
  uint8_t dtype[kMaxTensors];
  uint8_t vec_ok[kMaxTensors];             // every pointer of tensor i is 16-byte aligned
  int32_t num_tensors;
};
static_assert(sizeof(Table) < 32000, "kernel argument limit is 32764 bytes");

__host__ __device__ inline int64_t num_units(int64_t n) { return (n + kUnit - 1) / kUnit; }

// Blocks for a launch over `units` units: one per kMinUnitsPerBlock, at most kMaxBlocks.
__host__ __device__ inline int64_t blocks_for(int64_t units) {
  const int64_t b = (units + kMinUnitsPerBlock - 1) / kMinUnitsPerBlock;
  return b < kMaxBlocks ? b : kMaxBlocks;
}

// Block b of nb owns units [unit_begin(b), unit_begin(b + 1)): an even split (the counts differ
// by at most one unit), fixed by the sizes alone.
__host__ __device__ inline int64_t unit_begin(int64_t b, int64_t nb, int64_t total) { return b * total / nb; }

// sum_{k in [0, len)} x_k * y_k (or x_k * (y_k - z_k)) over the elements thread `tid` of `nt`
// takes: vectors tid, tid + nt, ... and then the scalar tail. Products are summed in fp32 over
// at most kU * V <= 32 of them, then added in fp64.
template <typename T, int V, bool kDelta>
__host__ __device__ inline double segment_dot(const T* __restrict__ x, const T* __restrict__ y,
                                              const T* __restrict__ z, int64_t len, int tid, int nt) {
  // Vectors in flight per thread and operand: 8 (dot) or 6 (delta) 16-byte loads per thread.
  constexpr int kU = V == 1 ? 1 : (kDelta ? 2 : 4);
  double acc = 0.0;
  const int64_t nv = len / V;
  const Vec<T, V>* xv = reinterpret_cast<const Vec<T, V>*>(x);
  const Vec<T, V>* yv = reinterpret_cast<const Vec<T, V>*>(y);
  const Vec<T, V>* zv = reinterpret_cast<const Vec<T, V>*>(z);
  int64_t i = tid;
  for (; i + int64_t(kU - 1) * nt < nv; i += int64_t(kU) * nt) {
    Vec<T, V> a[kU], b[kU], c[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      a[u] = xv[i + u * nt];
      b[u] = yv[i + u * nt];
      if constexpr (kDelta) c[u] = zv[i + u * nt];
    }
    float p = 0.f;
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int j = 0; j < V; ++j)
        p += kDelta ? ld(a[u].v[j]) * (ld(b[u].v[j]) - ld(c[u].v[j])) : ld(a[u].v[j]) * ld(b[u].v[j]);
    }
    acc += double(p);
  }
  for (; i < nv; i += nt) {
    const Vec<T, V> a = xv[i], b = yv[i];
    float p = 0.f;
    if constexpr (kDelta) {
      const Vec<T, V> c = zv[i];
#pragma unroll
      for (int j = 0; j < V; ++j) p += ld(a.v[j]) * (ld(b.v[j]) - ld(c.v[j]));
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) p += ld(a.v[j]) * ld(b.v[j]);
    }
    acc += double(p);
  }
  for (int64_t k = nv * V + tid; k < len; k += nt)
    acc += double(kDelta ? ld(x[k]) * (ld(y[k]) - ld(z[k])) : ld(x[k]) * ld(y[k]));
  return acc;
}

template <typename T>
__host__ __device__ inline double segment_dot_any(const Table& t, int i, int64_t start, int64_t len, int tid,
                                                  int nt) {
  constexpr int V = 16 / sizeof(T);
  const T* x = static_cast<const T*>(t.x[i]) + start;
  const T* y = static_cast<const T*>(t.y[i]) + start;
  const T* z = t.z[i] ? static_cast<const T*>(t.z[i]) + start : nullptr;
  // start is a multiple of kUnit, so aligned bases stay aligned.
  if (z) return t.vec_ok[i] ? segment_dot<T, V, true>(x, y, z, len, tid, nt) : segment_dot<T, 1, true>(x, y, z, len, tid, nt);
  return t.vec_ok[i] ? segment_dot<T, V, false>(x, y, z, len, tid, nt) : segment_dot<T, 1, false>(x, y, z, len, tid, nt);
}

// Thread tid's (of nt) fp64 partial of block b (of nb): the units of the block, tensor by tensor.
__host__ __device__ inline double thread_partial(const Table& t, int64_t b, int64_t nb, int tid, int nt) {
  const int64_t total = t.unit_start[t.num_tensors];
  const int64_t u_end = unit_begin(b + 1, nb, total);
  int64_t u = unit_begin(b, nb, total);
  if (u >= u_end) return 0.0;
  // Largest i with unit_start[i] <= u (unit_start is non-decreasing; empty tensors repeat).
  int lo = 0, hi = t.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (t.unit_start[mid] <= u) lo = mid; else hi = mid - 1;
  }
  double acc = 0.0;
  for (int i = lo; u < u_end; ++i) {
    const int64_t seg_end = t.unit_start[i + 1] < u_end ? t.unit_start[i + 1] : u_end;
    if (seg_end <= u) continue;  // empty tensor
    const int64_t e0 = (u - t.unit_start[i]) * kUnit;
    const int64_t e1_units = (seg_end - t.unit_start[i]) * kUnit;
    const int64_t e1 = e1_units < t.n[i] ? e1_units : t.n[i];
    switch (t.dtype[i]) {  // uniform per block: no divergence
      case kFloat32: acc += segment_dot_any<float>(t, i, e0, e1 - e0, tid, nt); break;
      case kFloat16: acc += segment_dot_any<__half>(t, i, e0, e1 - e0, tid, nt); break;
      case kBFloat16: acc += segment_dot_any<__nv_bfloat16>(t, i, e0, e1 - e0, tid, nt); break;
      default: acc += double(nan_f()); break;  // rejected on the host; never silently 0
    }
    u = seg_end;
  }
  return acc;
}

}  // namespace grad_dot
}  // namespace cuda
}  // namespace mplfast
