// CPU fused UDA consistency loss: sharpened weak softmax, confidence mask, masked CE against the
// strong logits and its gradient, per row in one parallel sweep (rows stay in L1/L2 scratch).
#include <cmath>
#include <stdexcept>
#include <vector>

#include "common.h"
#include "cpu/parallel.h"
#include "kernels.h"

namespace mplfast {
namespace {

inline float exp_c(float x) { return expf(x); }
inline double exp_c(double x) { return std::exp(x); }
inline float log_c(float x) { return logf(x); }
inline double log_c(double x) { return std::log(x); }

template <typename T, typename A>
inline const A* load_row(const T* src, int64_t C, A* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    (void)C; (void)scratch;
    return src;
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) scratch[c] = A(to_compute(src[c]));
    return scratch;
  }
}

// -inf (masked) logits are treated as -1e30: finite-math code cannot compute with infinities.
template <typename A> inline A floor_logit(A x) {
  constexpr A kFloor = sizeof(A) == 4 ? A(-1e30f) : A(-1e300);
  return x < kFloor ? kFloor : x;
}

template <typename A>
inline A row_max(const A* z, int64_t C) {
  A m = floor_logit(z[0]);
#pragma omp simd reduction(max : m)
  for (int64_t c = 1; c < C; ++c) {
    const A v = floor_logit(z[c]);
    m = v > m ? v : m;
  }
  return m;
}

template <typename T, typename A>
void uda_impl(const T* weak, const T* strong, A* loss, A* mask, T* grad, int64_t N, int64_t C,
              A inv_tau, A threshold, A scale, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> wbuf(conv ? C : 0), sbuf(conv ? C : 0), qbuf(C), pbuf(C);
    A* qe = qbuf.data();
    A* pe = pbuf.data();
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
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
      // The largest q is exp(0) / Sw.
      const bool keep = A(1) / Sw >= threshold;
      mask[n] = keep ? A(1) : A(0);
      if (!keep) {
        loss[n] = A(0);
        if (g) for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(A(0));
        continue;
      }
      const A* s = load_row<T, A>(strong + n * C, C, sbuf.data());
      const A ms = row_max(s, C);
      const A inv_Sw = A(1) / Sw;
      A Ss = 0, Q = 0, B = 0;
#pragma omp simd reduction(+ : Ss, Q, B)
      for (int64_t c = 0; c < C; ++c) {
        const A d = floor_logit(s[c]) - ms;
        const A v = exp_c(d);
        pe[c] = v;
        Ss += v;
        const A q = qe[c] * inv_Sw;
        Q += q;
        B += q * d;
      }
      // -sum q (s - ms - log Ss), from shifted logits so huge values keep their precision.
      loss[n] = Q * log_c(Ss) - B;
      if (g) {
        const A a = scale / Ss, b = scale * inv_Sw;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) g[c] = Store<T>::conv(a * pe[c] - b * qe[c]);
      }
    }
  }
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
  switch (dtype) {
    case kFloat32:
      return uda_impl<float, float>(static_cast<const float*>(weak), static_cast<const float*>(strong),
                                    static_cast<float*>(loss), static_cast<float*>(mask),
                                    static_cast<float*>(grad), N, C, float(inv_tau), float(threshold),
                                    float(grad_scale), nt);
    case kFloat64:
      return uda_impl<double, double>(static_cast<const double*>(weak), static_cast<const double*>(strong),
                                      static_cast<double*>(loss), static_cast<double*>(mask),
                                      static_cast<double*>(grad), N, C, inv_tau, threshold, grad_scale, nt);
    case kFloat16:
      return uda_impl<half_t, float>(static_cast<const half_t*>(weak), static_cast<const half_t*>(strong),
                                     static_cast<float*>(loss), static_cast<float*>(mask),
                                     static_cast<half_t*>(grad), N, C, float(inv_tau), float(threshold),
                                     float(grad_scale), nt);
    case kBFloat16:
      return uda_impl<bf16_t, float>(static_cast<const bf16_t*>(weak), static_cast<const bf16_t*>(strong),
                                     static_cast<float*>(loss), static_cast<float*>(mask),
                                     static_cast<bf16_t*>(grad), N, C, float(inv_tau), float(threshold),
                                     float(grad_scale), nt);
    default:
      throw std::invalid_argument(std::string("uda_cpu: unsupported dtype ") + dtype_name(dtype));
  }
}

}  // namespace mplfast
