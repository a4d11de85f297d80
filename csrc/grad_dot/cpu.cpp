// CPU multi-tensor dot products: sum_i <x_i, y_i> and sum_i <x_i, y_i - z_i>.
//
// The tensor list is cut into fixed-size chunks (never straddling tensors); threads take chunks
// (common/parallel.h: at most one thread per 32k elements, and the caller never waits for a
// thread the OS has not run yet), each chunk's fp64 partial lands in its own slot, and the
// slots are summed in list order. The chunking depends only on the sizes, so the result is bitwise identical for any
// thread count.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "grad_dot/grad_dot.h"

namespace mplfast {
namespace {

constexpr int64_t kChunk = kGrainElements;  // 32k elements: 128 KiB of fp32 per operand

constexpr int kLanes = 32;                  // 4 AVX2 registers of independent fp32 accumulators
constexpr int64_t kBlock = 8 * kLanes;      // 256 elements: 8 products per lane, then fp64

// Products are summed in fp32 by 32 independent lanes over a 256-element block (8 products per
// lane, so fp32 rounding stays ~1e-7 relative), and the lanes of each block are summed in fp64.
// Independent lanes keep several FMA chains in flight; a single accumulator would make the loop
// latency-bound (one FMA every 4 cycles). The order is fixed by the code, so the result does
// not depend on the thread count.
template <typename T, bool kDelta>
inline float prod(const T* x, const T* y, const T* z, int64_t i) {
  if constexpr (kDelta) return to_compute(x[i]) * (to_compute(y[i]) - to_compute(z[i]));
  else return to_compute(x[i]) * to_compute(y[i]);
}

template <typename T, bool kDelta>
double dot_chunk(const T* __restrict x, const T* __restrict y, const T* __restrict z, int64_t n) {
  double acc = 0.0;
  int64_t b = 0;
  for (; b + kBlock <= n; b += kBlock) {
    float lane[kLanes] = {};
    for (int r = 0; r < kBlock; r += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) lane[j] += prod<T, kDelta>(x, y, z, b + r + j);
    }
    double s = 0.0;
    for (int j = 0; j < kLanes; ++j) s += double(lane[j]);
    acc += s;
  }
  for (; b < n; ++b) acc += double(prod<T, kDelta>(x, y, z, b));
  return acc;
}

// fp64 inputs: accumulate in fp64 directly.
template <>
double dot_chunk<double, false>(const double* __restrict x, const double* __restrict y, const double*, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * y[i];
  return acc;
}
template <>
double dot_chunk<double, true>(const double* __restrict x, const double* __restrict y, const double* __restrict z,
                               int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * (y[i] - z[i]);
  return acc;
}

struct Chunk {
  int32_t tensor;
  int64_t start, len;
};

}  // namespace

double grad_dot_cpu(const std::vector<uint64_t>& xs, const std::vector<uint64_t>& ys,
                    const std::vector<uint64_t>& zs, const std::vector<int64_t>& sizes,
                    const std::vector<int>& dtypes, int num_threads) {
  const size_t n = xs.size();
  if (ys.size() != n || sizes.size() != n || dtypes.size() != n || (!zs.empty() && zs.size() != n))
    throw std::invalid_argument("grad_dot_cpu: tensor lists have different lengths");
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    if (sizes[i] < 0) throw std::invalid_argument("grad_dot_cpu: negative size");
    switch (dtypes[i]) {
      case kFloat32: case kFloat64: case kFloat16: case kBFloat16: break;
      default: throw std::invalid_argument(std::string("grad_dot_cpu: unsupported dtype ") + dtype_name(dtypes[i]));
    }
    for (int64_t s = 0; s < sizes[i]; s += kChunk)
      chunks.push_back({int32_t(i), s, std::min(kChunk, sizes[i] - s)});
    total += sizes[i];
  }
  std::vector<double> partial(chunks.size(), 0.0);
  const bool delta = !zs.empty();
  // One item per chunk; each writes its own slot, so the result does not depend on which
  // thread ran it, nor on how many did (parallel.h: a late thread costs nothing).
  parallel_items(int64_t(chunks.size()), threads_for(total, num_threads), [&](int64_t k) {
    const Chunk ch = chunks[k];
    const int i = ch.tensor;
    switch (dtypes[i]) {
#define MPLFAST_DOT_CASE(CODE, T)                                                             \
  case CODE: {                                                                                \
    const T* x = reinterpret_cast<const T*>(xs[i]) + ch.start;                                \
    const T* y = reinterpret_cast<const T*>(ys[i]) + ch.start;                                \
    const T* z = delta ? reinterpret_cast<const T*>(zs[i]) + ch.start : nullptr;              \
    partial[k] = delta ? dot_chunk<T, true>(x, y, z, ch.len) : dot_chunk<T, false>(x, y, nullptr, ch.len); \
    break;                                                                                    \
  }
      MPLFAST_DOT_CASE(kFloat32, float)
      MPLFAST_DOT_CASE(kFloat64, double)
      MPLFAST_DOT_CASE(kFloat16, half_t)
      MPLFAST_DOT_CASE(kBFloat16, bf16_t)
#undef MPLFAST_DOT_CASE
      default: break;  // rejected above
    }
  });
  double acc = 0.0;
  for (double p : partial) acc += p;  // fixed (list) order
  return acc;
}

}  // namespace mplfast
