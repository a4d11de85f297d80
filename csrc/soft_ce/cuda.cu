// CUDA soft-target / label-smoothed cross-entropy with the gradient computed in the forward.
//
// One warp per row (C <= 1024) or one block per row. Pass 1 reads the row once (16-byte vector
// loads when every pointer and the row length allow) and keeps an online (max, sum exp) state;
// pass 2 reads it again and writes the gradient while accumulating sum_c t'_c (z_c - m), from
// which the loss is formed as sum(t') log(S) - sum_c t'_c (z_c - m) (shifted logits: exact for
// huge values). An out-of-range class index never reads memory: the row's loss and gradient
// become NaN.
#include "common/cuda.cuh"
#include "soft_ce/soft_ce.h"

namespace mplfast {
namespace cuda {
namespace {

// T: logits/grad storage; TT: probability-target storage (ignored when kIndex); V: elements per
// vector load (1 = scalar path).
template <typename T, typename TT, int V, bool kIndex>
__global__ void soft_ce_kernel(const T* __restrict__ logits, const void* __restrict__ target_v,
                               float* __restrict__ loss, T* __restrict__ grad, int64_t N, int C,
                               float eps, float scale, bool block_mode) {
  __shared__ GroupSmem sm;
  const auto [G, lane, row] = row_group(block_mode);
  // Warp mode has no block-wide barriers, so idle warps of the last block may leave; in block
  // mode the grid has exactly N blocks.
  if (row >= N) return;

  const T* z = logits + row * int64_t(C);
  const TT* t = kIndex ? nullptr : static_cast<const TT*>(target_v) + row * int64_t(C);
  T* g = grad ? grad + row * int64_t(C) : nullptr;
  const int nvec = C / V;  // host guarantees C % V == 0 when V > 1

  // ---- pass 1: online max / sum exp (and sum t for soft targets) -------------------------
  float m = kNegHuge, s = 0.f, sum_t = 0.f;
  for (int i = lane; i < nvec; i += G) {
    const Vec<T, V> zv = reinterpret_cast<const Vec<T, V>*>(z)[i];
    float x[V];
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] = ld_logit(zv.v[j]);
    online_update<V>(m, s, x);
    if constexpr (!kIndex) {
      const Vec<TT, V> tv = reinterpret_cast<const Vec<TT, V>*>(t)[i];
#pragma unroll
      for (int j = 0; j < V; ++j) sum_t += ld(tv.v[j]);
    }
  }
  group_merge_ms(m, s, block_mode, sm);
  if constexpr (!kIndex) sum_t = group_sum(sum_t, block_mode, sm);

  const float eps_c = eps / float(C);
  const float keep = 1.f - eps;
  bool valid = true;
  int64_t y = 0;
  float sum_tp = 1.f;  // sum_c t'_c
  if constexpr (kIndex) {
    y = static_cast<const int64_t*>(target_v)[row];
    valid = (y >= 0) && (y < C);
  } else {
    sum_tp = keep * sum_t + eps;
  }

  // ---- pass 2: gradient, and sum_c t'_c (z_c - m) for the loss -----------------------------
  const float a = scale * sum_tp / s;  // grad_c = a * exp(z_c - m) - scale * t'_c
  float acc = 0.f;
  for (int i = lane; i < nvec; i += G) {
    const Vec<T, V> zv = reinterpret_cast<const Vec<T, V>*>(z)[i];
    Vec<T, V> gv;
    if constexpr (kIndex) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = ld_logit(zv.v[j]) - m;
        acc += d;
        const int c = i * V + j;
        const float tp = eps_c + (c == y ? keep : 0.f);
        gv.v[j] = st<T>(valid ? a * __expf(d) - scale * tp : nan_f());
      }
    } else {
      const Vec<TT, V> tv = reinterpret_cast<const Vec<TT, V>*>(t)[i];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = ld_logit(zv.v[j]) - m;
        const float tp = keep * ld(tv.v[j]) + eps_c;
        acc += tp * d;
        gv.v[j] = st<T>(a * __expf(d) - scale * tp);
      }
    }
    if (g) reinterpret_cast<Vec<T, V>*>(g)[i] = gv;
  }
  acc = group_sum(acc, block_mode, sm);
  if (lane == 0) {
    float l;
    if constexpr (kIndex) {
      l = valid ? __logf(s) - (eps_c * acc + keep * (ld_logit(z[y]) - m)) : nan_f();
    } else {
      l = sum_tp * __logf(s) - acc;
    }
    loss[row] = l;
  }
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
