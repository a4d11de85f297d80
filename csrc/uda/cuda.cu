// CUDA fused UDA consistency loss. Per row (one warp, or one block for large C):
// pass 1 reads weak and strong once, keeping online (max, sum exp) states for weak/tau and for
// strong; the row is kept when max q = 1 / sum exp(weak/tau - max) >= threshold. Pass 2 (kept
// rows only) re-reads both, writes grad = scale (softmax(strong) - q) and accumulates
// sum q (strong - max_s) for the loss; dropped rows get loss 0 and a zero gradient.
#include "common/cuda.cuh"
#include "uda/uda.h"

namespace mplfast {
namespace cuda {
namespace {

template <typename T, int V>
__global__ void uda_kernel(const T* __restrict__ weak, const T* __restrict__ strong, float* __restrict__ loss,
                           float* __restrict__ mask, T* __restrict__ grad, int64_t N, int C, float inv_tau,
                           float threshold, float scale, bool block_mode) {
  __shared__ GroupSmem sm;
  const auto [G, lane, row] = row_group(block_mode);
  if (row >= N) return;  // warp mode only (block mode launches exactly N blocks)

  const T* w = weak + row * int64_t(C);
  const T* s = strong + row * int64_t(C);
  T* g = grad ? grad + row * int64_t(C) : nullptr;
  const int nvec = C / V;

  float mw = kNegHuge, Sw = 0.f, ms = kNegHuge, Ss = 0.f;
  for (int i = lane; i < nvec; i += G) {
    const Vec<T, V> wv = reinterpret_cast<const Vec<T, V>*>(w)[i];
    const Vec<T, V> sv = reinterpret_cast<const Vec<T, V>*>(s)[i];
    float xw[V], xs[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      xw[j] = ld_logit(wv.v[j]) * inv_tau;
      xs[j] = ld_logit(sv.v[j]);
    }
    online_update<V>(mw, Sw, xw);
    online_update<V>(ms, Ss, xs);
  }
  group_merge_ms(mw, Sw, block_mode, sm);
  group_merge_ms(ms, Ss, block_mode, sm);

  const float inv_Sw = 1.f / Sw;
  const bool keep = inv_Sw >= threshold;  // the largest q is exp(0) / Sw; uniform per row
  if (!keep) {
    if (g) {
      Vec<T, V> zero;
#pragma unroll
      for (int j = 0; j < V; ++j) zero.v[j] = st<T>(0.f);
      for (int i = lane; i < nvec; i += G) reinterpret_cast<Vec<T, V>*>(g)[i] = zero;
    }
    if (lane == 0) {
      loss[row] = 0.f;
      mask[row] = 0.f;
    }
    return;  // uniform across the row group, so no barrier is skipped by part of a block
  }

  const float a = scale / Ss, b = scale * inv_Sw;
  float Q = 0.f, B = 0.f;
  for (int i = lane; i < nvec; i += G) {
    const Vec<T, V> wv = reinterpret_cast<const Vec<T, V>*>(w)[i];
    const Vec<T, V> sv = reinterpret_cast<const Vec<T, V>*>(s)[i];
    Vec<T, V> gv;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float qe = __expf(ld_logit(wv.v[j]) * inv_tau - mw);
      const float d = ld_logit(sv.v[j]) - ms;
      const float q = qe * inv_Sw;
      Q += q;
      B += q * d;
      gv.v[j] = st<T>(a * __expf(d) - b * qe);
    }
    if (g) reinterpret_cast<Vec<T, V>*>(g)[i] = gv;
  }
  Q = group_sum(Q, block_mode, sm);
  B = group_sum(B, block_mode, sm);
  if (lane == 0) {
    loss[row] = Q * __logf(Ss) - B;
    mask[row] = 1.f;
  }
}

template <typename T>
void launch(const void* weak, const void* strong, float* loss, float* mask, void* grad, int64_t N, int64_t C,
            float inv_tau, float threshold, float scale, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = (C % V == 0) && aligned(weak, 16) && aligned(strong, 16) && (grad == nullptr || aligned(grad, 16));
  const RowLaunch rl = row_launch(N, C);
  const T* wp = static_cast<const T*>(weak);
  const T* sp = static_cast<const T*>(strong);
  T* gp = static_cast<T*>(grad);
  if (vec) {
    uda_kernel<T, V><<<rl.blocks, rl.threads, 0, stream>>>(wp, sp, loss, mask, gp, N, int(C), inv_tau, threshold,
                                                           scale, rl.block_mode);
  } else {
    uda_kernel<T, 1><<<rl.blocks, rl.threads, 0, stream>>>(wp, sp, loss, mask, gp, N, int(C), inv_tau, threshold,
                                                           scale, rl.block_mode);
  }
  check_launch("uda_kernel");
}

}  // namespace
}  // namespace cuda

void uda_cuda(const void* weak, const void* strong, int dtype, float* loss, float* mask, void* grad, int64_t N,
              int64_t C, float temperature, float threshold, float grad_scale, int device, uint64_t stream) {
  using namespace cuda;
  if (N <= 0) return;
  check_rows("uda_cuda", N, C);
  if (!(temperature > 0.f)) throw std::invalid_argument("uda_cuda: temperature must be > 0");
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  const float inv_tau = 1.f / temperature;
  dispatch_dtype(dtype, "uda_cuda: unsupported dtype ", [&](auto tag) {
    launch<typename decltype(tag)::type>(weak, strong, loss, mask, grad, N, C, inv_tau, threshold, grad_scale, s);
  });
}

}  // namespace mplfast
