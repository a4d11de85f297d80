// CUDA multi-tensor dot products (apex multi_tensor_apply style).
//
// The tensor list is described by a table passed as a __grid_constant__ kernel argument (CUDA
// >= 12.1 allows 32 KiB of arguments on sm_70+; this table is ~13 KiB), so up to kMaxTensors
// tensors take ONE launch with no host-to-device copy. The elements of the list, in 16-element
// units that never straddle tensors, are split evenly over the blocks (partials.cuh): every
// block sums the same number of units (+-1), tensor by tensor, into one fp64 partial, so no
// block does twice the work of another. More tensors than a table holds: further launches write
// further partials. A single-block kernel then sums all partials in a fixed order. The grid size
// and the split depend only on the sizes (never on the GPU), so results are bitwise
// reproducible.
#include <algorithm>
#include <vector>

#include "common/cuda.cuh"
#include "grad_dot/grad_dot.h"
#include "grad_dot/partials.cuh"

namespace mplfast {
namespace cuda {
namespace {

using namespace grad_dot;
constexpr int kFinalThreads = 512;

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
  s[threadIdx.x] = thread_partial(t, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x);
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

// Partition of the tensor list into launches: [begin, end) index ranges, each at most
// kMaxTensors tensors and fewer than 2^40 units.
std::vector<std::pair<size_t, size_t>> batches(const std::vector<int64_t>& sizes) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t b = 0;
  int64_t units = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t u = num_units(sizes[i]);
    if (i - b == size_t(kMaxTensors) || units + u > int64_t(1) << 40) {
      out.emplace_back(b, i);
      b = i;
      units = 0;
    }
    units += u;
  }
  if (b < sizes.size()) out.emplace_back(b, sizes.size());
  return out;
}

int64_t batch_blocks(const std::vector<int64_t>& sizes, size_t b, size_t e) {
  int64_t u = 0;
  for (size_t i = b; i < e; ++i) u += num_units(sizes[i]);
  return blocks_for(u);
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
    int64_t u = 0;
    for (size_t i = b; i < e; ++i) {
      const int k = int(i - b);
      t.x[k] = reinterpret_cast<const void*>(static_cast<uintptr_t>(xs[i]));
      t.y[k] = reinterpret_cast<const void*>(static_cast<uintptr_t>(ys[i]));
      t.z[k] = zs.empty() ? nullptr : reinterpret_cast<const void*>(static_cast<uintptr_t>(zs[i]));
      t.n[k] = sizes[i];
      t.dtype[k] = uint8_t(dtypes[i]);
      t.vec_ok[k] = aligned(t.x[k], 16) && aligned(t.y[k], 16) && (t.z[k] == nullptr || aligned(t.z[k], 16));
      t.unit_start[k] = u;
      u += num_units(sizes[i]);
    }
    for (int k = t.num_tensors; k <= kMaxTensors; ++k) t.unit_start[k] = u;
    for (int k = t.num_tensors; k < kMaxTensors; ++k) {
      t.x[k] = t.y[k] = t.z[k] = nullptr;
      t.n[k] = 0;
      t.dtype[k] = 0;
      t.vec_ok[k] = 0;
    }
    grad_dot_partials<<<unsigned(blocks), kThreads, 0, s>>>(t, workspace + offset);
    check_launch("grad_dot_partials");
    offset += blocks;
  }
  grad_dot_final<<<1, kFinalThreads, 0, s>>>(workspace, offset, out);
  check_launch("grad_dot_final");
}

}  // namespace mplfast
