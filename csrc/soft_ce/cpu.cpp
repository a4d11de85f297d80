// CPU soft-target / label-smoothed cross-entropy with the gradient computed in the forward pass.
//
// Per row, in L1/L2-resident scratch: (1) max, (2) one loop that stores e_c = exp(z_c - m) and
// accumulates every sum the loss and gradient need, (3) the gradient write. The exp loop is
// vectorized by gcc through glibc's libmvec (needs -O3 -ffast-math and `omp simd`), which is
// what makes this faster than torch's eager log_softmax + backward.
//
// The loss is computed as sum(t') * log(S) - sum_c t'_c (z_c - m), i.e. from the *shifted*
// logits, like torch's log_softmax, so huge logits (|z| ~ 1e4) lose no precision.
//
// Masked classes (logits at or below the floor, -inf included) are computed with as the floor
// (finite math), counted, and the row's loss is then set to what the reference gives
// (common/rowwise.h, mask_loss): +inf for positive target weight on a masked class, NaN for
// weight 0 and for rows with every class masked.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "common/rowwise.h"
#include "soft_ce/soft_ce.h"

namespace mplfast {
namespace {

// A row with every class masked (-inf): loss and gradient NaN, as log_softmax gives.
template <typename A, typename T> void masked_row(A* loss, T* g, int64_t C) {
  *loss = nan_bits_value<A>();
  if (g) for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(nan_bits_value<A>());
}

// T: logits storage type; TT: probability-target storage type (unused for index targets);
// A: compute type (float, or double for fp64 logits).
template <typename T, typename TT, typename A, bool kIndex>
void soft_ce_impl(const T* logits, const void* target_v, A* loss, T* grad, int64_t N, int64_t C,
                  A eps, A scale, int nthreads) {
  const int64_t* tidx = static_cast<const int64_t*>(target_v);
  const TT* tprob = static_cast<const TT*>(target_v);
  const A eps_c = eps / A(C);
  const A keep = A(1) - eps;
  // Items of whole rows, about kGrainElements elements each (common/parallel.h).
  const int64_t rows = std::max<int64_t>(1, kGrainElements / C);
  parallel_items((N + rows - 1) / rows, nthreads, [&](int64_t item) {
    std::vector<A> zbuf(std::is_same_v<T, A> ? 0 : C), tbuf(kIndex ? 0 : C), ebuf(C);
    A* e = ebuf.data();
    const int64_t n_end = std::min(N, (item + 1) * rows);
    for (int64_t n = item * rows; n < n_end; ++n) {
      const A* z = load_row<T, A>(logits + n * C, C, zbuf.data());
      T* g = grad ? grad + n * C : nullptr;
      const A m = row_max(z, C);
      A S = 0, sum_zm = 0;
      if constexpr (kIndex) {
        const int64_t y = tidx[n];
        if (y < 0 || y >= C) {
          // Python validates labels first; this only keeps a bad call from reading out of bounds.
          loss[n] = nan_bits_value<A>();
          if (g) for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(nan_bits_value<A>());
          continue;
        }
        A n_masked = 0;  // a float count: an int reduction would change how gcc vectorizes the sums
#pragma omp simd reduction(+ : S, sum_zm, n_masked)
        for (int64_t c = 0; c < C; ++c) {
          const A fz = floor_logit(z[c]);
          const A d = fz - m;
          const A ec = exp_c(d);
          e[c] = ec;
          S += ec;
          sum_zm += d;
          n_masked += is_masked(fz) ? A(1) : A(0);
        }
        if (is_masked(m)) {  // every class masked: NaN, as log_softmax of the row
          masked_row(loss + n, g, C);
          continue;
        }
        // t' = eps/C everywhere plus (1 - eps) at y; sum(t') = 1. As the reference:
        // (1 - eps) * nll (0 * inf = NaN when eps = 1) - eps/C * sum log p (only when eps > 0).
        const A zy = floor_logit(z[y]);
        const A B = eps_c * sum_zm + keep * (zy - m);
        int flags = 0;
        if (is_masked(zy)) flags |= keep > A(0) ? kMaskedPos : kMaskedZero;
        if (n_masked > A(0) && eps_c > A(0)) flags |= kMaskedPos;
        loss[n] = mask_loss(log_c(S) - B, flags, nan_bits_value<A>());
        if (g) {
          const A a = scale / S, b = scale * eps_c;
          for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(a * e[c] - b);
          g[y] = Store<T>::conv(a * e[y] - b - scale * keep);
        }
      } else {
        const A* t = load_row<TT, A>(tprob + n * C, C, tbuf.data());
        A sum_t = 0, sum_tzm = 0, n_masked = 0;
#pragma omp simd reduction(+ : S, sum_zm, sum_t, sum_tzm, n_masked)
        for (int64_t c = 0; c < C; ++c) {
          const A fz = floor_logit(z[c]);
          const A d = fz - m;
          const A ec = exp_c(d);
          e[c] = ec;
          S += ec;
          sum_zm += d;
          sum_t += t[c];
          sum_tzm += t[c] * d;
          n_masked += is_masked(fz) ? A(1) : A(0);
        }
        if (is_masked(m)) {
          masked_row(loss + n, g, C);
          continue;
        }
        int flags = 0;  // masked classes by the sign of their t' (rows with a masked class only)
        if (n_masked > A(0)) {
          for (int64_t c = 0; c < C; ++c) {
            if (!is_masked(floor_logit(z[c]))) continue;
            const A tp = keep * t[c] + eps_c;
            flags |= tp > A(0) ? kMaskedPos : (tp < A(0) ? kMaskedNeg : (tp == A(0) ? kMaskedZero : 0));
          }
        }
        // t' = (1 - eps) t + eps/C, which need not sum to 1 (torch does not renormalise).
        const A sum_tp = keep * sum_t + eps;
        const A B = keep * sum_tzm + eps_c * sum_zm;
        loss[n] = mask_loss(sum_tp * log_c(S) - B, flags, nan_bits_value<A>());
        if (g) {
          const A a = scale * sum_tp / S, b = scale * keep, d0 = scale * eps_c;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(a * e[c] - b * t[c] - d0);
        }
      }
    }
  });
}

template <typename T, typename A>
void dispatch_target(const T* logits, const void* target, int target_dtype, A* loss, T* grad,
                     int64_t N, int64_t C, A eps, A scale, int nt) {
  switch (target_dtype) {
    case -1: return soft_ce_impl<T, float, A, true>(logits, target, loss, grad, N, C, eps, scale, nt);
    case kFloat32: return soft_ce_impl<T, float, A, false>(logits, target, loss, grad, N, C, eps, scale, nt);
    case kFloat64: return soft_ce_impl<T, double, A, false>(logits, target, loss, grad, N, C, eps, scale, nt);
    case kFloat16: return soft_ce_impl<T, half_t, A, false>(logits, target, loss, grad, N, C, eps, scale, nt);
    case kBFloat16: return soft_ce_impl<T, bf16_t, A, false>(logits, target, loss, grad, N, C, eps, scale, nt);
    default: throw std::invalid_argument(std::string("soft_ce_cpu: unsupported target dtype ") + dtype_name(target_dtype));
  }
}

}  // namespace

void soft_ce_cpu(const void* logits, int dtype, const void* target, int target_dtype, void* loss,
                 void* grad, int64_t N, int64_t C, double label_smoothing, double grad_scale,
                 int num_threads) {
  if (N <= 0) return;
  if (C <= 0) throw std::invalid_argument("soft_ce_cpu: C must be >= 1");
  const int nt = threads_for(N * C, num_threads);
  dispatch_logits_dtype(dtype, "soft_ce_cpu: unsupported logits dtype ", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = compute_t<T>;
    dispatch_target<T, A>(static_cast<const T*>(logits), target, target_dtype, static_cast<A*>(loss),
                          static_cast<T*>(grad), N, C, A(label_smoothing), A(grad_scale), nt);
  });
}

}  // namespace mplfast
