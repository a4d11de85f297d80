// CUDA multi-tensor dot products (apex multi_tensor_apply style).
//
// The tensor list is described by a table passed as a __grid_constant__ kernel argument (CUDA
// >= 12.1 allows 32 KiB of arguments on sm_70+; this table is ~12 KiB), so up to kMaxTensors
// tensors take ONE launch with no host-to-device copy. Tensors are cut into kChunk-element
// chunks; block b sums chunks b, b + grid, ... (its chunk -> tensor lookup is a binary search in
// the table's prefix sums) into one fp64 partial. More tensors than a table holds: further
// launches write further partials. A single-block kernel then sums all partials in a fixed
// order. The grid size depends only on the sizes (never on the GPU), so results are bitwise
// reproducible.
#include <algorithm>
#include <vector>

#include "common/cuda.cuh"
#include "grad_dot/grad_dot.h"

namespace mplfast {
namespace cuda {
namespace {

constexpr int kMaxTensors = 320;   // ResNet-50 has 161 parameter tensors
constexpr int64_t kChunk = 16384;  // elements per chunk (multiple of every vector width)
constexpr int kThreads = 512;
constexpr int kMaxBlocks = 1024;   // per launch; fixed, so the reduction tree is device-independent
constexpr int kFinalThreads = 512;

struct Table {
  const void* x[kMaxTensors];
  const void* y[kMaxTensors];
  const void* z[kMaxTensors];      // nullptr entries when no delta
  int64_t n[kMaxTensors];
  int32_t chunk_start[kMaxTensors + 1];  // prefix sum of chunk counts
  uint8_t dtype[kMaxTensors];
  uint8_t vec_ok[kMaxTensors];     // every pointer of tensor i is 16-byte aligned
  int32_t num_tensors;
  int32_t total_chunks;
};
static_assert(sizeof(Table) < 32000, "kernel argument limit is 32764 bytes");

// Sum over one chunk of x*y or x*(y-z), per thread in fp32 (each thread adds kChunk/kThreads
// = 32 values at most), returned per thread.
template <typename T, int V>
__device__ float chunk_dot(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ z, int64_t len) {
  float acc = 0.f;
  const int64_t nv = len / V;
  for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
    const Vec<T, V> xv = reinterpret_cast<const Vec<T, V>*>(x)[i];
    const Vec<T, V> yv = reinterpret_cast<const Vec<T, V>*>(y)[i];
    if (z) {
      const Vec<T, V> zv = reinterpret_cast<const Vec<T, V>*>(z)[i];
#pragma unroll
      for (int j = 0; j < V; ++j) acc += ld(xv.v[j]) * (ld(yv.v[j]) - ld(zv.v[j]));
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) acc += ld(xv.v[j]) * ld(yv.v[j]);
    }
  }
  for (int64_t i = nv * V + threadIdx.x; i < len; i += blockDim.x)
    acc += z ? ld(x[i]) * (ld(y[i]) - ld(z[i])) : ld(x[i]) * ld(y[i]);
  return acc;
}

template <typename T>
__device__ float chunk_dot_any(const Table& t, int i, int64_t start, int64_t len) {
  constexpr int V = 16 / sizeof(T);
  const T* x = static_cast<const T*>(t.x[i]) + start;
  const T* y = static_cast<const T*>(t.y[i]) + start;
  const T* z = t.z[i] ? static_cast<const T*>(t.z[i]) + start : nullptr;
  // start is a multiple of kChunk, so aligned bases stay aligned.
  return t.vec_ok[i] ? chunk_dot<T, V>(x, y, z, len) : chunk_dot<T, 1>(x, y, z, len);
}

// Fixed-order shared-memory tree over blockDim.x (a power of two) doubles; result in s[0].
__device__ void block_sum_f64(double* s) {
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    __syncthreads();
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) grad_dot_partials(const __grid_constant__ Table t, double* __restrict__ partials) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int k = blockIdx.x; k < t.total_chunks; k += gridDim.x) {
    // Largest i with chunk_start[i] <= k (chunk_start is non-decreasing; empty tensors repeat).
    int lo = 0, hi = t.num_tensors - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (t.chunk_start[mid] <= k) lo = mid; else hi = mid - 1;
    }
    const int i = lo;
    const int64_t start = int64_t(k - t.chunk_start[i]) * kChunk;
    const int64_t len = min(kChunk, t.n[i] - start);
    float c = 0.f;
    switch (t.dtype[i]) {  // uniform per block: no divergence
      case kFloat32: c = chunk_dot_any<float>(t, i, start, len); break;
      case kFloat16: c = chunk_dot_any<__half>(t, i, start, len); break;
      case kBFloat16: c = chunk_dot_any<__nv_bfloat16>(t, i, start, len); break;
      default: c = nan_f(); break;  // rejected on the host; never silently 0
    }
    acc += double(c);
  }
  s[threadIdx.x] = acc;
  block_sum_f64(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s[0];
}

__global__ void __launch_bounds__(kFinalThreads) grad_dot_final(const double* __restrict__ partials, int64_t n,
                                                                 float* __restrict__ out) {
  __shared__ double s[kFinalThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
  s[threadIdx.x] = acc;
  block_sum_f64(s);
  if (threadIdx.x == 0) *out = float(s[0]);
}

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Partition of the tensor list into launches: [begin, end) index ranges, each at most
// kMaxTensors tensors and fewer than 2^31 chunks.
std::vector<std::pair<size_t, size_t>> batches(const std::vector<int64_t>& sizes) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t b = 0;
  int64_t chunks = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t c = num_chunks(sizes[i]);
    if (i - b == size_t(kMaxTensors) || chunks + c > int64_t(1) << 30) {
      out.emplace_back(b, i);
      b = i;
      chunks = 0;
    }
    chunks += c;
  }
  if (b < sizes.size()) out.emplace_back(b, sizes.size());
  return out;
}

int64_t batch_blocks(const std::vector<int64_t>& sizes, size_t b, size_t e) {
  int64_t c = 0;
  for (size_t i = b; i < e; ++i) c += num_chunks(sizes[i]);
  return std::min<int64_t>(c, kMaxBlocks);
}

}  // namespace
}  // namespace cuda

int64_t grad_dot_cuda_workspace(const std::vector<int64_t>& sizes) {
  using namespace cuda;
  int64_t total = 0;
  for (auto [b, e] : batches(sizes)) total += batch_blocks(sizes, b, e);
  return std::max<int64_t>(total, 1);
}

void grad_dot_cuda(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys, const std::vector<uint64_t>& zs,
                   const std::vector<int64_t>& sizes, const std::vector<int>& dtypes, double* workspace,
                   int64_t workspace_len, float* out, int device, uint64_t stream) {
  using namespace cuda;
  const size_t n = xs.size();
  if (ys.size() != n || sizes.size() != n || dtypes.size() != n || (!zs.empty() && zs.size() != n))
    throw std::invalid_argument("grad_dot_cuda: tensor lists have different lengths");
  for (size_t i = 0; i < n; ++i) {
    if (sizes[i] < 0) throw std::invalid_argument("grad_dot_cuda: negative size");
    if (dtypes[i] != kFloat32 && dtypes[i] != kFloat16 && dtypes[i] != kBFloat16)
      throw std::invalid_argument(std::string("grad_dot_cuda: unsupported dtype ") + dtype_name(dtypes[i]));
  }
  if (workspace_len < grad_dot_cuda_workspace(sizes))
    throw std::invalid_argument("grad_dot_cuda: workspace too small");
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  int64_t offset = 0;
  for (auto [b, e] : batches(sizes)) {
    const int64_t blocks = batch_blocks(sizes, b, e);
    if (blocks == 0) continue;  // only empty tensors in this batch
    Table t;
    t.num_tensors = int32_t(e - b);
    int32_t c = 0;
    for (size_t i = b; i < e; ++i) {
      const int k = int(i - b);
      t.x[k] = reinterpret_cast<const void*>(static_cast<uintptr_t>(xs[i]));
      t.y[k] = reinterpret_cast<const void*>(static_cast<uintptr_t>(ys[i]));
      t.z[k] = zs.empty() ? nullptr : reinterpret_cast<const void*>(static_cast<uintptr_t>(zs[i]));
      t.n[k] = sizes[i];
      t.dtype[k] = uint8_t(dtypes[i]);
      t.vec_ok[k] = aligned(t.x[k], 16) && aligned(t.y[k], 16) && (t.z[k] == nullptr || aligned(t.z[k], 16));
      t.chunk_start[k] = c;
      c += int32_t(num_chunks(sizes[i]));
    }
    for (int k = t.num_tensors; k <= kMaxTensors; ++k) t.chunk_start[k] = c;
    for (int k = t.num_tensors; k < kMaxTensors; ++k) {
      t.x[k] = t.y[k] = t.z[k] = nullptr;
      t.n[k] = 0;
      t.dtype[k] = 0;
      t.vec_ok[k] = 0;
    }
    t.total_chunks = c;
    grad_dot_partials<<<unsigned(blocks), kThreads, 0, s>>>(t, workspace + offset);
    check_launch("grad_dot_partials");
    offset += blocks;
  }
  grad_dot_final<<<1, kFinalThreads, 0, s>>>(workspace, offset, out);
  check_launch("grad_dot_final");
}

}  // namespace mplfast
