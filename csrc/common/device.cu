// See device.h.
#include <algorithm>
#include <type_traits>

#include "common/cuda.cuh"
#include "common/device.h"

namespace mplfast {

std::pair<int, std::string> cuda_device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear, so later calls do not see a stale error
    return {-1, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err)};
  }
  return {count, ""};
}

namespace cuda {
namespace {

constexpr int kScaleThreads = 256;
constexpr int64_t kScaleMaxBlocks = 4096;  // grid-stride beyond this

template <typename T, typename A, int V>
__global__ void __launch_bounds__(kScaleThreads)
    scale_inplace_kernel(T* __restrict__ data, int64_t numel, const void* __restrict__ scale_v, int scale_dtype) {
  // Every block reads the one scale value (an L2 hit after the first) and leaves when it is 1.
  const A s = A(ld_scale(scale_v, scale_dtype));
  if (s == A(1)) return;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = numel / V;
  Vec<T, V>* dv = reinterpret_cast<Vec<T, V>*>(data);
  for (int64_t i = first; i < nvec; i += stride) {
    Vec<T, V> v = dv[i];
#pragma unroll
    for (int j = 0; j < V; ++j) v.v[j] = scale_elem(v.v[j], s);
    dv[i] = v;
  }
  for (int64_t i = nvec * V + first; i < numel; i += stride) data[i] = scale_elem(data[i], s);
}

template <typename T>
void launch_scale(void* data, int64_t numel, const void* scale, int scale_dtype, cudaStream_t stream) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr int V = 16 / sizeof(T);
  T* p = static_cast<T*>(data);
  const bool vec = aligned(data, 16);
  const int64_t per_block = int64_t(kScaleThreads) * (vec ? V : 1);
  const unsigned blocks = unsigned(std::min<int64_t>((numel + per_block - 1) / per_block, kScaleMaxBlocks));
  if (vec)
    scale_inplace_kernel<T, A, V><<<blocks, kScaleThreads, 0, stream>>>(p, numel, scale, scale_dtype);
  else
    scale_inplace_kernel<T, A, 1><<<blocks, kScaleThreads, 0, stream>>>(p, numel, scale, scale_dtype);
  check_launch("scale_inplace_kernel");
}

}  // namespace
}  // namespace cuda

void scale_inplace_cuda(void* data, int dtype, int64_t numel, const void* scale, int scale_dtype,
                        uint64_t stream) {
  using namespace cuda;
  if (scale_dtype != kFloat32 && scale_dtype != kFloat16 && scale_dtype != kBFloat16 && scale_dtype != kFloat64)
    throw std::invalid_argument(std::string("scale_inplace_cuda: unsupported scale dtype ") + dtype_name(scale_dtype));
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16 && dtype != kFloat64)
    throw std::invalid_argument(std::string("scale_inplace_cuda: unsupported dtype ") + dtype_name(dtype));
  if (numel <= 0) return;
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case kFloat32: return launch_scale<float>(data, numel, scale, scale_dtype, s);
    case kFloat16: return launch_scale<__half>(data, numel, scale, scale_dtype, s);
    case kBFloat16: return launch_scale<__nv_bfloat16>(data, numel, scale, scale_dtype, s);
    default: return launch_scale<double>(data, numel, scale, scale_dtype, s);
  }
}

}  // namespace mplfast
