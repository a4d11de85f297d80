// CUDA soft-target / label-smoothed cross-entropy with the gradient computed in the forward.
//
// One warp per row (C <= 1024) or one block per row. Pass 1 reads the row once (16-byte vector
// loads when every pointer and the row length allow, kUnroll of them in flight per thread) and
// keeps an online (max, sum exp) state plus the sums the loss needs, taken against a fixed shift
// r (the row's first logit): B = sum_c (z_c - r), and for soft targets T = sum_c t_c and
// A = sum_c t_c (z_c - r). The loss follows from those alone,
//     loss = sum(t') (m - r + log S) - sum_c t'_c (z_c - r),   t' = (1 - eps) t + eps / C,
// so without a gradient the logits are read once. Pass 2 (gradient only) re-reads the row and
// writes grad_c = scale (sum(t') exp(z_c - m) / S - t'_c). An out-of-range class index never
// reads memory: the row's loss and gradient become NaN. Masked classes (-inf) are computed with
// as -1e30 and flagged; the loss is then what -inf gives (cuda.cuh, mask_loss).
#include "common/cuda.cuh"
#include "soft_ce/soft_ce.h"

namespace mplfast {
namespace cuda {
namespace {

// T: logits/grad storage; TT: probability-target storage (ignored when kIndex); V: elements per
// vector load (1 = scalar path).
template <typename T, typename TT, int V, bool kIndex>
__global__ void __launch_bounds__(kRowMaxThreads, kRowMinBlocks)
    soft_ce_kernel(const T* __restrict__ logits, const void* __restrict__ target_v, float* __restrict__ loss,
                   T* __restrict__ grad, int64_t N, int C, float eps, float scale, bool block_mode) {
  // Vectors in flight per thread and pass: 4 with one input stream, 2 with two (soft targets).
  constexpr int kUnroll = kIndex ? 4 : 2;
  __shared__ GroupSmem sm;
  const RowGroup rg = row_group(block_mode);
  const int G = rg.size, lane = rg.lane;
  const int64_t row = rg.row;
  // Warp mode has no block-wide barriers, so idle warps of the last block may leave; in block
  // mode the grid has exactly N blocks.
  if (row >= N) return;

  const T* z = logits + row * int64_t(C);
  const TT* t = kIndex ? nullptr : static_cast<const TT*>(target_v) + row * int64_t(C);
  T* g = grad ? grad + row * int64_t(C) : nullptr;
  const int nvec = C / V;  // host guarantees C % V == 0 when V > 1
  const float r = row_shift(ld_logit(z[0]));

  // ---- pass 1: online max / sum exp, and the shifted sums of the loss ----------------------
  Softmax sm_state;
  float sums[kIndex ? 1 : 3] = {};  // B, then A and T for soft targets
  const float eps_c = eps / float(C);
  const float keep = 1.f - eps;
  int flags = 0;  // masked classes: any (index targets), or by the sign of t' (soft targets)
  for_strided<kUnroll>(lane, nvec, G, [&](auto ku, int i) {
    constexpr int K = decltype(ku)::value;
    float x[K * V], tt[kIndex ? 1 : K * V];
    (void)tt;
    load_strided<K, V, true>(z, i, G, x);
    if constexpr (!kIndex) load_strided<K, V, false>(t, i, G, tt);
    softmax_update<K * V, false>(sm_state, x, x);
#pragma unroll
    for (int j = 0; j < K * V; ++j) {
      const float d = x[j] - r;
      sums[0] += d;
      if constexpr (!kIndex) {
        sums[1] += tt[j] * d;
        sums[2] += tt[j];
        if (is_masked(x[j])) flags |= mask_flag(keep * tt[j] + eps_c);
      } else {
        if (is_masked(x[j])) flags |= kMaskedPos;
      }
    }
  });
  group_softmax<false>(sm_state, block_mode, sm);
  group_sum(sums, block_mode, sm);
  flags = group_or(flags, block_mode);
  const float m = sm_state.m, S = sm_state.s;
  const bool all_masked = is_masked(m);  // log_softmax of the row is NaN: loss and gradient too
  bool valid = true;
  int64_t y = 0;
  float sum_tp = 1.f;  // sum_c t'_c
  if constexpr (kIndex) {
    y = static_cast<const int64_t*>(target_v)[row];
    valid = (y >= 0) && (y < C);
  } else {
    sum_tp = keep * sums[2] + eps;
  }
  if (lane == 0) {
    // log S is added last, after the shifted terms (which cancel exactly when m = r).
    float l;
    if constexpr (kIndex) {
      const float zy = valid ? ld_logit(z[y]) : 0.f;
      l = valid ? ((m - r) - keep * (zy - r) - eps_c * sums[0]) + __logf(S) : nan_f();
      // as the reference: (1 - eps) * nll (0 * inf = NaN when eps = 1), and - eps/C sum log p
      // only when eps > 0
      int f = (flags && eps_c > 0.f) ? kMaskedPos : 0;
      if (valid && is_masked(zy)) f |= keep > 0.f ? kMaskedPos : kMaskedZero;
      flags = f;
    } else {
      l = (sum_tp * (m - r) - (keep * sums[1] + eps_c * sums[0])) + sum_tp * __logf(S);
    }
    loss[row] = all_masked ? nan_f() : mask_loss(l, flags);
  }
  if (!g) return;

  // ---- pass 2: the gradient -------------------------------------------------------------------
  const float a = scale * sum_tp / S;  // grad_c = a * exp(z_c - m) - scale * t'_c
  for_strided<kUnroll>(lane, nvec, G, [&](auto ku, int i) {
    constexpr int K = decltype(ku)::value;
    float x[K * V], tt[kIndex ? 1 : K * V];
    (void)tt;
    load_strided<K, V, true>(z, i, G, x);
    if constexpr (!kIndex) load_strided<K, V, false>(t, i, G, tt);
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int e = k * V + j;
        float tp;
        if constexpr (kIndex) {
          const int c = (i + k * G) * V + j;
          tp = eps_c + (c == y ? keep : 0.f);
        } else {
          tp = keep * tt[e] + eps_c;
        }
        const float gv = a * __expf(x[e] - m) - scale * tp;
        x[e] = (kIndex && !valid) || all_masked ? nan_f() : gv;
      }
    }
    store_strided<K, V>(g, i, G, x);
  });
}

template <typename T, typename TT, bool kIndex>
void launch(const void* logits, const void* target, float* loss, void* grad, int64_t N, int64_t C,
            float eps, float scale, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = (C % V == 0) && aligned(logits, 16) && (grad == nullptr || aligned(grad, 16)) &&
                   (kIndex || aligned(target, sizeof(TT) * V));
  const RowLaunch rl = row_launch(N, C);
  const T* lp = static_cast<const T*>(logits);
  T* gp = static_cast<T*>(grad);
  if (vec) {
    soft_ce_kernel<T, TT, V, kIndex><<<rl.blocks, rl.threads, 0, stream>>>(lp, target, loss, gp, N, int(C), eps,
                                                                            scale, rl.block_mode);
  } else {
    soft_ce_kernel<T, TT, 1, kIndex><<<rl.blocks, rl.threads, 0, stream>>>(lp, target, loss, gp, N, int(C), eps,
                                                                            scale, rl.block_mode);
  }
  check_launch("soft_ce_kernel");
}

template <typename T>
void dispatch(const void* logits, const void* target, int target_dtype, int dtype, float* loss, void* grad,
              int64_t N, int64_t C, float eps, float scale, cudaStream_t stream) {
  if (target_dtype < 0) return launch<T, T, true>(logits, target, loss, grad, N, C, eps, scale, stream);
  if (target_dtype == kFloat32) return launch<T, float, false>(logits, target, loss, grad, N, C, eps, scale, stream);
  if (target_dtype == dtype) return launch<T, T, false>(logits, target, loss, grad, N, C, eps, scale, stream);
  throw std::invalid_argument(std::string("soft_ce_cuda: target dtype ") + dtype_name(target_dtype) +
                              " with logits " + dtype_name(dtype) + " (use float32 or the logits dtype)");
}

}  // namespace
}  // namespace cuda

void soft_ce_cuda(const void* logits, int dtype, const void* target, int target_dtype, float* loss, void* grad,
                  int64_t N, int64_t C, float label_smoothing, float grad_scale, int device, uint64_t stream) {
  using namespace cuda;
  if (N <= 0) return;
  check_rows("soft_ce_cuda", N, C);
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  dispatch_dtype(dtype, "soft_ce_cuda: unsupported logits dtype ", [&](auto tag) {
    dispatch<typename decltype(tag)::type>(logits, target, target_dtype, dtype, loss, grad, N, C,
                                           label_smoothing, grad_scale, s);
  });
}

}  // namespace mplfast
