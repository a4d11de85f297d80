// CUDA fused UDA consistency loss. Per row (one warp, or one block for large C): pass 1 reads
// weak and strong once (kUnroll vector loads of each in flight per thread), keeping online
// softmax states for weak/tau, (mw, Sw, W = sum_c exp(weak_c/tau - mw) (strong_c - r)) with r
// the row's first strong logit, and for strong, (ms, Ss). The row is kept when
// max q = 1 / Sw >= threshold, and its loss follows from pass 1 alone:
//     loss = -sum_c q_c log_softmax(strong)_c = log Ss + (ms - r) - W / Sw   (sum q = 1),
// so without a gradient the logits are read once. Pass 2 (kept rows, gradient only) re-reads
// both and writes grad = scale (softmax(strong) - q). Dropped rows: loss 0, zero gradient.
#include "common/cuda.cuh"
#include "uda/uda.h"

namespace mplfast {
namespace cuda {
namespace {

template <typename T, int V>
__global__ void __launch_bounds__(kRowMaxThreads, kRowMinBlocks)
    uda_kernel(const T* __restrict__ weak, const T* __restrict__ strong, float* __restrict__ loss,
               float* __restrict__ mask, T* __restrict__ grad, int64_t N, int C, float inv_tau, float threshold,
               float scale, bool block_mode) {
  constexpr int kUnroll = 2;  // two input streams: 4 vector loads in flight per thread
  __shared__ GroupSmem sm;
  const RowGroup rg = row_group(block_mode);
  const int G = rg.size, lane = rg.lane;
  const int64_t row = rg.row;
  if (row >= N) return;  // warp mode only (block mode launches exactly N blocks)

  const T* w = weak + row * int64_t(C);
  const T* s = strong + row * int64_t(C);
  T* g = grad ? grad + row * int64_t(C) : nullptr;
  const int nvec = C / V;
  const float r = row_shift(ld_logit(s[0]));

  Softmax qw, ps;  // weak / tau (with W in qw.w), strong
  // Masked strong classes: q > 0 there adds +inf to the loss, q == 0 (the weak class masked
  // too) adds NaN (0 * -inf), as in the reference. (A q that underflows to 0 in the reference's
  // softmax counts as > 0 here.)
  int flags = 0;
  for_strided<kUnroll>(lane, nvec, G, [&](auto ku, int i) {
    constexpr int K = decltype(ku)::value;
    float xw[K * V], xs[K * V], d[K * V];
    load_strided<K, V, true>(w, i, G, xw);
    load_strided<K, V, true>(s, i, G, xs);
#pragma unroll
    for (int j = 0; j < K * V; ++j) {
      if (is_masked(xs[j])) flags |= is_masked(xw[j]) ? kMaskedZero : kMaskedPos;
      xw[j] *= inv_tau;
      d[j] = xs[j] - r;
    }
    softmax_update<K * V, true>(qw, xw, d);
    softmax_update<K * V, false>(ps, xs, xs);
  });
  group_softmax<true>(qw, block_mode, sm);
  group_softmax<false>(ps, block_mode, sm);
  flags = group_or(flags, block_mode);
  const bool all_masked = is_masked(ps.m);  // strong log_softmax NaN: loss and gradient NaN

  const float inv_Sw = 1.f / qw.s;
  // The largest q is exp(0) / Sw (uniform per row). A weak row with no logit above the floor
  // (all -inf) has no distribution: dropped, as in the reference and the Triton kernel. qw.m is
  // the row max of ld_logit(w) * inv_tau, so the floor is compared in the same rounding.
  const bool keep = qw.m > -1e30f * inv_tau && inv_Sw >= threshold;
  if (lane == 0) {
    const float l = ((ps.m - r) - qw.w * inv_Sw) + __logf(ps.s);  // log Ss last, as in soft_ce
    loss[row] = keep ? (all_masked ? nan_f() : mask_loss(l, flags)) : 0.f;
    mask[row] = keep ? 1.f : 0.f;
  }
  if (!g) return;
  if (!keep) {
    Vec<T, V> zero;
#pragma unroll
    for (int j = 0; j < V; ++j) zero.v[j] = st<T>(0.f);
    for (int i = lane; i < nvec; i += G) reinterpret_cast<Vec<T, V>*>(g)[i] = zero;
    return;
  }

  // ---- pass 2: grad = a exp(strong - ms) - b exp(weak / tau - mw) -----------------------------
  const float a = scale / ps.s, b = scale * inv_Sw;
  for_strided<kUnroll>(lane, nvec, G, [&](auto ku, int i) {
    constexpr int K = decltype(ku)::value;
    float xw[K * V], xs[K * V];
    load_strided<K, V, true>(w, i, G, xw);
    load_strided<K, V, true>(s, i, G, xs);
#pragma unroll
    for (int j = 0; j < K * V; ++j)
      xs[j] = all_masked ? nan_f() : a * __expf(xs[j] - ps.m) - b * __expf(xw[j] * inv_tau - qw.m);
    store_strided<K, V>(g, i, G, xs);
  });
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
