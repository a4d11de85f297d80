// Helpers shared by the CUDA kernels: error checks, device guard, dtype load/store, vectors,
// warp/group reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace mplfast {
namespace cuda {

// Every CUDA runtime call goes through this; failures become std::runtime_error, which pybind11
// raises as RuntimeError in Python.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("mplfast CUDA error in ") + what + ": " + cudaGetErrorName(err) +
                             ": " + cudaGetErrorString(err));
}
#define MPLFAST_CUDA_CHECK(expr) ::mplfast::cuda::check((expr), #expr)

// Makes `device` current for the launches in scope and restores the caller's device after.
// (_C links its own static cudart; both runtimes share the driver's primary context.)
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MPLFAST_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) MPLFAST_CUDA_CHECK(cudaSetDevice(device));
    changed_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);  // best effort; cannot throw from a destructor
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

// Checks the launch just made (bad configuration, missing kernel image for this GPU, ...).
inline void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("mplfast CUDA launch of ") + kernel + " failed: " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

inline cudaStream_t as_stream(uint64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s)); }

inline bool aligned(const void* p, size_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

// ---- element conversion ---------------------------------------------------------------------
// ld/ld_logit are host-callable too, so tests/ops/test_native_cuda_helpers.py can check them in
// a host program (no GPU needed).
__host__ __device__ __forceinline__ float ld(float v) { return v; }
__host__ __device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }

// Logit load: values below -1e30 (masked classes arrive as -inf) become -1e30, which fast-math
// code computes with safely: probability exactly 0, finite sums (see csrc/soft_ce/cpu.cpp).
// A comparison, not fmaxf: fmaxf (PTX max.f32) returns the non-NaN operand, so a NaN logit would
// become -1e30 and give a finite loss where the reference gives NaN. (--use_fast_math does not
// assume finite math, so the compare-and-select keeps NaN.)
template <typename T> __host__ __device__ __forceinline__ float ld_logit(T v) {
  const float x = ld(v);
  return x < -1e30f ? -1e30f : x;
}

template <typename T> __device__ __forceinline__ T st(float v);
template <> __device__ __forceinline__ float st<float>(float v) { return v; }
template <> __device__ __forceinline__ __half st<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// A one-element scale of dtype code `code` (fp32, fp16, bf16, fp64), exactly, as a double.
__host__ __device__ __forceinline__ double ld_scale(const void* p, int code) {
  switch (code) {
    case kFloat16: return ld(*static_cast<const __half*>(p));
    case kBFloat16: return ld(*static_cast<const __nv_bfloat16*>(p));
    case kFloat64: return *static_cast<const double*>(p);
    default: return *static_cast<const float*>(p);
  }
}

// x * s rounded to x's type, the product in fp32 (fp64 for double): torch's `grad * grad_out`.
__host__ __device__ __forceinline__ float scale_elem(float x, float s) { return x * s; }
__host__ __device__ __forceinline__ double scale_elem(double x, double s) { return x * s; }
__host__ __device__ __forceinline__ __half scale_elem(__half x, float s) { return __float2half_rn(__half2float(x) * s); }
__host__ __device__ __forceinline__ __nv_bfloat16 scale_elem(__nv_bfloat16 x, float s) {
  return __float2bfloat16_rn(__bfloat162float(x) * s);
}

// V elements of T loaded/stored as one (or two) aligned vector transactions.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }

// Largest finite negative as "-inf": kernels are built with --use_fast_math (finite math).
constexpr float kNegHuge = -3.0e38f;

// ---- reductions -----------------------------------------------------------------------------
// Butterfly reductions: every lane ends with the same, bitwise identical value (each level
// combines the same two subtree values, and + and max are commutative).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Merge online-softmax states (m, s): s is sum exp(x - m) over the elements seen.
__device__ __forceinline__ void merge_ms(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

__device__ __forceinline__ void warp_merge_ms(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_ms(m, s, m2, s2);
  }
}

// Row-group reductions. A row is handled either by one warp (block_mode == false) or by the
// whole block (block_mode == true, blockDim.x <= 1024). In block mode every thread of the block
// must call these (they contain __syncthreads); all threads get the same result, combined in a
// fixed order (warp 0, 1, ...), so results are deterministic.
struct GroupSmem {
  float a[32];
  float b[32];
};

__device__ __forceinline__ float group_sum(float v, bool block_mode, GroupSmem& sm) {
  v = warp_sum(v);
  if (!block_mode) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // previous readers of sm are done
  if (lane == 0) sm.a[warp] = v;
  __syncthreads();
  float r = 0.f;
  for (int i = 0; i < nw; ++i) r += sm.a[i];
  return r;
}

__device__ __forceinline__ void group_merge_ms(float& m, float& s, bool block_mode, GroupSmem& sm) {
  warp_merge_ms(m, s);
  if (!block_mode) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sm.a[warp] = m;
    sm.b[warp] = s;
  }
  __syncthreads();
  float mm = sm.a[0], ss = sm.b[0];
  for (int i = 1; i < nw; ++i) merge_ms(mm, ss, sm.a[i], sm.b[i]);
  m = mm;
  s = ss;
}

// Online softmax update with V new values already known.
template <int V>
__device__ __forceinline__ void online_update(float& m, float& s, const float (&x)[V]) {
  float mx = x[0];
#pragma unroll
  for (int j = 1; j < V; ++j) mx = fmaxf(mx, x[j]);
  const float mn = fmaxf(m, mx);
  float acc = s * __expf(m - mn);
#pragma unroll
  for (int j = 0; j < V; ++j) acc += __expf(x[j] - mn);
  s = acc;
  m = mn;
}

// Host-side limits of the row kernels (row_launch): std::invalid_argument prefixed by `op`.
inline void check_rows(const char* op, int64_t N, int64_t C) {
  if (C <= 0 || C > (int64_t(1) << 30)) throw std::invalid_argument(std::string(op) + ": C out of range");
  if (N >= (int64_t(1) << 31) / 8 * 8) throw std::invalid_argument(std::string(op) + ": too many rows");
}

// Rows handled per launch configuration: one warp per row (8 rows per 256-thread block) for
// small C, a whole block per row for large C.
struct RowLaunch {
  bool block_mode;
  unsigned threads;
  unsigned blocks;
};

inline RowLaunch row_launch(int64_t N, int64_t C) {
  RowLaunch r;
  if (C <= 1024) {
    r.block_mode = false;
    r.threads = 256;
    r.blocks = unsigned((N + 7) / 8);
  } else {
    r.block_mode = true;
    r.threads = C <= 4096 ? 256 : 512;
    r.blocks = unsigned(N);
  }
  return r;
}

// This thread's row and its place in the row group (row_launch): {group size, lane, row}. In
// warp mode idle warps of the last block get row >= N; block mode launches exactly N blocks.
struct RowGroup {
  int size;
  int lane;
  int64_t row;
};

__device__ __forceinline__ RowGroup row_group(bool block_mode) {
  return {block_mode ? int(blockDim.x) : 32, block_mode ? int(threadIdx.x) : int(threadIdx.x & 31),
          block_mode ? int64_t(blockIdx.x) : int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5)};
}

// Calls f(Tag<T>{}) with T the device storage type of dtype code `dtype` (fp32, fp16, bf16); any
// other code throws std::invalid_argument(what + dtype name).
template <typename F>
void dispatch_dtype(int dtype, const char* what, F&& f) {
  switch (dtype) {
    case kFloat32: return f(Tag<float>{});
    case kFloat16: return f(Tag<__half>{});
    case kBFloat16: return f(Tag<__nv_bfloat16>{});
    default: throw std::invalid_argument(std::string(what) + dtype_name(dtype));
  }
}

}  // namespace cuda
}  // namespace mplfast
