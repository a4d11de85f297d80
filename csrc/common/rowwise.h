// Per-row helpers shared by the CPU row kernels (soft_ce/cpu.cpp, uda/cpu.cpp): math in the compute type
// A (float, or double for fp64 logits), row loads, the masked-logit floor and the logits-dtype
// dispatch. Built with -ffast-math like the kernels that include it.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dtype.h"

namespace mplfast {

inline float exp_c(float x) { return expf(x); }
inline double exp_c(double x) { return std::exp(x); }
inline float log_c(float x) { return logf(x); }
inline double log_c(double x) { return std::log(x); }

// Logits below this floor are treated as the floor. Masked-out classes arrive as -inf, which
// finite-math code cannot compute with; as -1e30 they get probability exactly 0 and a finite
// loss (without smoothing exactly F.cross_entropy's; with smoothing a huge finite value where
// torch gives +inf). Sums of up to 2^30 floored values stay finite.
//
// NaN must stay NaN (the reference gives a NaN row). Under -ffast-math a float comparison
// `x < floor ? floor : x` may be compiled to maxps, which returns the floor for NaN, so the test
// is done on the bit pattern: as a signed integer, a float below the floor down to -inf lies in
// (bits(floor), bits(-inf)]; NaNs and everything else lie outside. Two integer compares: still
// vectorized inside the `omp simd` loops.
inline float floor_logit(float x) {
  constexpr int32_t kFloor = int32_t(0xf149f2cau);  // bits of -1e30f
  constexpr int32_t kNegInf = int32_t(0xff800000u);
  const int32_t i = int32_t(float_to_bits(x));
  return (i > kFloor && i <= kNegInf) ? -1e30f : x;
}
inline double floor_logit(double x) {
  constexpr int64_t kFloor = int64_t(0xfe37e43c8800759cull);  // bits of -1e300
  constexpr int64_t kNegInf = int64_t(0xfff0000000000000ull);
  int64_t i;
  std::memcpy(&i, &x, 8);
  return (i > kFloor && i <= kNegInf) ? -1e300 : x;
}

// The floor value itself, and whether a floored logit is a masked class. A logit at or below
// the floor counts as -inf for the loss: the arithmetic runs on the floored value (finite), and
// the row's loss is then corrected to what IEEE arithmetic on -inf gives, as in the reference
// and the Triton kernels (mask_loss): +inf where a masked class has positive target weight,
// NaN where it has weight 0 (0 * -inf) and for rows with every class masked.
template <typename A> constexpr A floor_value() { return std::is_same_v<A, double> ? A(-1e300) : A(-1e30f); }
template <typename A> inline bool is_masked(A floored) { return floored == floor_value<A>(); }

// Bits of the per-row masked-class flags the row kernels collect (see mask_loss).
enum MaskFlags : int { kMaskedPos = 1, kMaskedZero = 2, kMaskedNeg = 4 };

// inf / NaN built from bits and NaN tested on bits: -ffast-math assumes finite math, so
// std::numeric_limits<>::infinity() arithmetic and std::isnan may be folded away.
inline float inf_bits(float, bool neg) { return bits_to_float(neg ? 0xff800000u : 0x7f800000u); }
inline double inf_bits(double, bool neg) {
  const uint64_t u = neg ? 0xfff0000000000000ull : 0x7ff0000000000000ull;
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}
inline bool nan_bits(float x) { return (float_to_bits(x) & 0x7fffffffu) > 0x7f800000u; }
inline bool nan_bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  return (u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
}

template <typename A> inline A nan_bits_value() {
  if constexpr (sizeof(A) == 4) return bits_to_float(0x7fc00000u);
  else { uint64_t u = 0x7ff8000000000000ull; double d; std::memcpy(&d, &u, 8); return d; }
}

// The loss of a row given its flags: a masked class with target weight w > 0 adds +inf, w < 0
// adds -inf, w == 0 adds NaN (0 * -inf); a NaN loss stays NaN. Rows with every class masked
// are the caller's (log_softmax of such a row is NaN: loss and gradient NaN).
template <typename A> inline A mask_loss(A loss, int flags, A nan) {
  if (flags == 0 || nan_bits(loss)) return loss;
  if ((flags & kMaskedZero) || ((flags & kMaskedPos) && (flags & kMaskedNeg))) return nan;
  return inf_bits(loss, (flags & kMaskedNeg) != 0);
}

// Row source in the compute type A: the row itself when T == A, else a converted scratch copy.
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

// max_c floor_logit(z_c) of a row of C >= 1 values.
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

// Compute type of a logits storage type: double for fp64, float otherwise.
template <typename T> using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Calls f(Tag<T>{}) with T the storage type of logits dtype code `dtype` (fp32, fp64, fp16,
// bf16); any other code throws std::invalid_argument(what + dtype name).
template <typename F>
void dispatch_logits_dtype(int dtype, const char* what, F&& f) {
  switch (dtype) {
    case kFloat32: return f(Tag<float>{});
    case kFloat64: return f(Tag<double>{});
    case kFloat16: return f(Tag<half_t>{});
    case kBFloat16: return f(Tag<bf16_t>{});
    default: throw std::invalid_argument(std::string(what) + dtype_name(dtype));
  }
}

}  // namespace mplfast
