// Helpers shared by the CUDA kernels: error checks, device guard, dtype load/store, vectors,
// warp/group reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <type_traits>
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

__host__ __device__ __forceinline__ float nan_f() {
#ifdef __CUDA_ARCH__
  return __int_as_float(0x7fc00000);
#else
  return bits_to_float(0x7fc00000u);
#endif
}

// ---- masked classes --------------------------------------------------------------------------
// A logit at or below -1e30 (-inf included) is a masked class: loaded as -1e30 (ld_logit), so the
// arithmetic stays finite, and flagged, so the row's loss can be set to what -inf gives in the
// reference and the Triton kernels (the CPU kernels do the same: common/rowwise.h).
enum MaskFlags : int { kMaskedPos = 1, kMaskedZero = 2, kMaskedNeg = 4 };

__device__ __forceinline__ bool is_masked(float floored) { return floored == -1e30f; }

// Flag bit for a masked class with target weight w: +inf (w > 0), NaN (w == 0), -inf (w < 0).
__device__ __forceinline__ int mask_flag(float w) {
  return w > 0.f ? kMaskedPos : (w < 0.f ? kMaskedNeg : (w == 0.f ? kMaskedZero : 0));
}

// The row's loss given the OR of its flags (a NaN loss stays NaN; NaN tested on the bits).
__device__ __forceinline__ float mask_loss(float loss, int flags) {
  if (flags == 0 || (__float_as_uint(loss) & 0x7fffffffu) > 0x7f800000u) return loss;
  if ((flags & kMaskedZero) || ((flags & kMaskedPos) && (flags & kMaskedNeg))) return nan_f();
  return __uint_as_float((flags & kMaskedNeg) ? 0xff800000u : 0x7f800000u);
}

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

// ---- online softmax --------------------------------------------------------------------------
// State over the elements x_c seen so far: m = max x_c, s = sum exp(x_c - m) and, for kernels
// that need one, w = sum exp(x_c - m) y_c for a companion value y_c (UDA: the strong logits),
// rescaled together with s whenever m grows.
struct Softmax {
  float m = kNegHuge;
  float s = 0.f;
  float w = 0.f;
};

// Folds K new values into st (one rescale for all K). kW: also fold y into st.w.
template <int K, bool kW>
__device__ __forceinline__ void softmax_update(Softmax& st, const float (&x)[K], const float (&y)[K]) {
  float mx = x[0];
#pragma unroll
  for (int j = 1; j < K; ++j) mx = fmaxf(mx, x[j]);
  const float mn = fmaxf(st.m, mx);
  const float r = __expf(st.m - mn);
  float s = st.s * r, w = st.w * r;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const float e = __expf(x[j] - mn);
    s += e;
    if constexpr (kW) w += e * y[j];
  }
  st.m = mn;
  st.s = s;
  if constexpr (kW) st.w = w;
}

// Merges state b into a.
template <bool kW>
__device__ __forceinline__ void softmax_merge(Softmax& a, const Softmax& b) {
  const float mn = fmaxf(a.m, b.m);
  const float ra = __expf(a.m - mn), rb = __expf(b.m - mn);
  a.s = a.s * ra + b.s * rb;
  if constexpr (kW) a.w = a.w * ra + b.w * rb;
  a.m = mn;
}

// Shift for the sums of a row's logits (sum_c (z_c - r) instead of sum_c z_c, so huge logits
// lose no precision, as in the Triton kernels): the row's first logit, or 0 where that is no use
// (a masked class, an overflowed value, NaN).
__device__ __forceinline__ float row_shift(float first) {
  return (first > -1e30f && first < 1e30f) ? first : 0.f;
}

// Row-group reductions. A row is handled either by one warp (block_mode == false) or by the
// whole block (block_mode == true, blockDim.x <= 1024). In block mode every thread of the block
// must call these (they contain __syncthreads); all threads get the same result, combined in a
// fixed order (butterfly within warps, then warp 0, 1, ...), so results are deterministic.
struct GroupSmem {
  float v[3][32];
};

// Sums each of v[0..K) over the row group.
template <int K>
__device__ __forceinline__ void group_sum(float (&v)[K], bool block_mode, GroupSmem& sm) {
  static_assert(K <= 3, "GroupSmem holds 3 values per warp");
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  if (!block_mode) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // previous readers of sm are done
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) sm.v[k][warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float r = 0.f;
    for (int i = 0; i < nw; ++i) r += sm.v[k][i];
    v[k] = r;
  }
}

// Bitwise OR of the (3-bit) flags over the row group; every thread gets it (block mode: every
// thread of the block must call it).
__device__ __forceinline__ int group_or(int v, bool block_mode) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  if (!block_mode) return v;
  int r = 0;
#pragma unroll
  for (int b = 0; b < 3; ++b) r |= __syncthreads_or(v & (1 << b)) ? (1 << b) : 0;
  return r;
}

template <bool kW>
__device__ __forceinline__ void group_softmax(Softmax& st, bool block_mode, GroupSmem& sm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Softmax b;
    b.m = __shfl_xor_sync(0xffffffffu, st.m, o);
    b.s = __shfl_xor_sync(0xffffffffu, st.s, o);
    if constexpr (kW) b.w = __shfl_xor_sync(0xffffffffu, st.w, o);
    softmax_merge<kW>(st, b);
  }
  if (!block_mode) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sm.v[0][warp] = st.m;
    sm.v[1][warp] = st.s;
    sm.v[2][warp] = st.w;
  }
  __syncthreads();
  Softmax acc;
  acc.m = sm.v[0][0];
  acc.s = sm.v[1][0];
  acc.w = sm.v[2][0];
  for (int i = 1; i < nw; ++i) {
    Softmax b;
    b.m = sm.v[0][i];
    b.s = sm.v[1][i];
    b.w = sm.v[2][i];
    softmax_merge<kW>(acc, b);
  }
  st = acc;
}

// ---- strided, unrolled row walks ------------------------------------------------------------
// A row group of G threads walks the nvec vectors of a row: thread `lane` takes vectors
// lane, lane + G, ... . for_strided hands body kU = std::integral_constant<int, K> and the first
// index i, meaning vectors i, i + G, ..., i + (K - 1) G: K = U in the main loop (so U vector
// loads are in flight per thread before their values are used), K = 1 in the tail.
template <int U, typename F>
__device__ __forceinline__ void for_strided(int lane, int nvec, int G, F&& body) {
  int i = lane;
  for (; i + (U - 1) * G < nvec; i += U * G) body(std::integral_constant<int, U>{}, i);
  for (; i < nvec; i += G) body(std::integral_constant<int, 1>{}, i);
}

// The K vectors i, i + G, ... of row p as K * V floats (all loads issued before any use).
// kLogit: through ld_logit (the -inf floor), else ld.
template <int K, int V, bool kLogit, typename T>
__device__ __forceinline__ void load_strided(const T* __restrict__ p, int i, int G, float (&x)[K * V]) {
  Vec<T, V> raw[K];
#pragma unroll
  for (int k = 0; k < K; ++k) raw[k] = reinterpret_cast<const Vec<T, V>*>(p)[i + k * G];
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int j = 0; j < V; ++j) x[k * V + j] = kLogit ? ld_logit(raw[k].v[j]) : ld(raw[k].v[j]);
  }
}

// Stores K * V floats (rounded to T) as the K vectors i, i + G, ... of row p.
template <int K, int V, typename T>
__device__ __forceinline__ void store_strided(T* __restrict__ p, int i, int G, const float (&x)[K * V]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    Vec<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = st<T>(x[k * V + j]);
    reinterpret_cast<Vec<T, V>*>(p)[i + k * G] = out;
  }
}

// Row kernels: at most 512 threads per block (row_launch); at least kRowMinBlocks such blocks per
// SM caps registers at 64 per thread, enough warps to keep the loads of for_strided in flight.
constexpr int kRowMaxThreads = 512;
constexpr int kRowMinBlocks = 2;

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
