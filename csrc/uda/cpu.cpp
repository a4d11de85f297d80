// CPU fused UDA consistency loss: sharpened weak softmax, confidence mask, masked CE against the
// strong logits and its gradient, per row in one parallel sweep (rows stay in L1/L2 scratch).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "common/rowwise.h"
#include "uda/uda.h"

namespace mplfast {
namespace {

template <typename T, typename A>
void uda_impl(const T* weak, const T* strong, A* loss, A* mask, T* grad, int64_t N, int64_t C,
              A inv_tau, A threshold, A scale, int nthreads) {
  // Items of whole rows, about kGrainElements elements each (common/parallel.h).
  const int64_t rows = std::max<int64_t>(1, kGrainElements / C);
  parallel_items((N + rows - 1) / rows, nthreads, [&](int64_t item) {
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> wbuf(conv ? C : 0), sbuf(conv ? C : 0), qbuf(C), pbuf(C);
    A* qe = qbuf.data();
    A* pe = pbuf.data();
    const int64_t n_end = std::min(N, (item + 1) * rows);
    for (int64_t n = item * rows; n < n_end; ++n) {
      T* g = grad ? grad + n * C : nullptr;
      const A* w = load_row<T, A>(weak + n * C, C, wbuf.data());
      // softmax(w / tau): max(w / tau) = max(w) / tau since tau > 0.
      const A mw = row_max(w, C);
      A Sw = 0;
#pragma omp simd reduction(+ : Sw)
      for (int64_t c = 0; c < C; ++c) {
        const A v = exp_c((floor_logit(w[c]) - mw) * inv_tau);
        qe[c] = v;
        Sw += v;
      }
      // The largest q is exp(0) / Sw. A weak row with no logit above the floor (all -inf) has
      // no distribution: it is dropped (mask, loss and gradient 0), as in the reference (whose
      // softmax of such a row is NaN, never >= threshold) and the Triton kernel.
      const bool keep = !is_masked(mw) && A(1) / Sw >= threshold;
      mask[n] = keep ? A(1) : A(0);
      if (!keep) {
        loss[n] = A(0);
        if (g) for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(A(0));
        continue;
      }
      const A* s = load_row<T, A>(strong + n * C, C, sbuf.data());
      const A ms = row_max(s, C);
      const A inv_Sw = A(1) / Sw;
      if (is_masked(ms)) {
        // every strong class masked: log_softmax is NaN, so are the loss and the gradient
        loss[n] = nan_bits_value<A>();
        if (g) for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(nan_bits_value<A>());
        continue;
      }
      A Ss = 0, Q = 0, B = 0, n_masked = 0;
#pragma omp simd reduction(+ : Ss, Q, B, n_masked)
      for (int64_t c = 0; c < C; ++c) {
        const A fs = floor_logit(s[c]);
        const A d = fs - ms;
        const A v = exp_c(d);
        pe[c] = v;
        Ss += v;
        const A q = qe[c] * inv_Sw;
        Q += q;
        B += q * d;
        n_masked += is_masked(fs) ? A(1) : A(0);
      }
      // -sum q (s - ms - log Ss), from shifted logits so huge values keep their precision; a
      // masked strong class adds q * inf as in the reference (common/rowwise.h, mask_loss):
      // +inf for q > 0, NaN for q == 0.
      int flags = 0;
      if (n_masked > A(0)) {
        for (int64_t c = 0; c < C; ++c) {
          if (is_masked(floor_logit(s[c]))) flags |= qe[c] * inv_Sw > A(0) ? kMaskedPos : kMaskedZero;
        }
      }
      loss[n] = mask_loss(Q * log_c(Ss) - B, flags, nan_bits_value<A>());
      if (g) {
        const A a = scale / Ss, b = scale * inv_Sw;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(a * pe[c] - b * qe[c]);
      }
    }
  });
}

}  // namespace

void uda_cpu(const void* weak, const void* strong, int dtype, void* loss, void* mask, void* grad,
             int64_t N, int64_t C, double temperature, double threshold, double grad_scale,
             int num_threads) {
  if (N <= 0) return;
  if (C <= 0) throw std::invalid_argument("uda_cpu: C must be >= 1");
  if (!(temperature > 0)) throw std::invalid_argument("uda_cpu: temperature must be > 0");
  const int nt = threads_for(N * C, num_threads);
  const double inv_tau = 1.0 / temperature;
  dispatch_logits_dtype(dtype, "uda_cpu: unsupported dtype ", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = compute_t<T>;
    uda_impl<T, A>(static_cast<const T*>(weak), static_cast<const T*>(strong), static_cast<A*>(loss),
                   static_cast<A*>(mask), static_cast<T*>(grad), N, C, A(inv_tau), A(threshold),
                   A(grad_scale), nt);
  });
}

}  // namespace mplfast
