// See device.h.
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

}  // namespace mplfast
