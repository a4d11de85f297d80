// Shared definitions for the CPU and CUDA kernels of mplfast._C.
//
// _C never links libtorch: Python passes raw data pointers (as integers), sizes and the dtype
// codes below, so one build of _C serves every torch version.
#pragma once
#include <cstdint>
#include <cstring>

namespace mplfast {

// Must match mplfast/_native.py (_DTYPE_CODES).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kFloat64: return "float64";
    default: return "unknown";
  }
}

// Host-side storage types for the 16-bit formats (bit patterns; converted by hand below so the
// CPU kernels need neither F16C nor _Float16 support from the compiler).
struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// IEEE half -> float, exact. Integer logic only: this file is compiled with -ffast-math, so
// nothing here may depend on NaN/inf-aware float comparisons.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24 is exact and a normal float.
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return bits_to_float(float_to_bits(mag) | sign);
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// float -> IEEE half, round to nearest even (Eigen's algorithm).
inline uint16_t float_to_half(float x) {
  uint32_t u = float_to_bits(x);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  uint16_t o;
  if (u >= 0x47800000u) {                 // >= 65536 (or inf/NaN): overflow
    o = (u > 0x7f800000u) ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {           // < 2^-14: subnormal half or zero
    // Adding 0.5 (as a float with exponent chosen so the half mantissa lands in the low bits)
    // makes the FPU do the round-to-nearest-even for us.
    const uint32_t magic_u = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const float f = bits_to_float(u) + bits_to_float(magic_u);
    o = uint16_t(float_to_bits(f) - magic_u);
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (uint32_t(15 - 127) << 23) + 0xfffu;
    u += mant_odd;
    o = uint16_t(u >> 13);
  }
  return uint16_t(o | sign);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float x) {
  const uint32_t u = float_to_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // keep NaN a NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Uniform load/store in the compute type.
inline float to_compute(float v) { return v; }
inline double to_compute(double v) { return v; }
inline float to_compute(half_t v) { return half_to_float(v.bits); }
inline float to_compute(bf16_t v) { return bf16_to_float(v.bits); }

// A type as a value, for dispatching a dtype code to generic lambdas: f(Tag<T>{}).
template <typename T> struct Tag { using type = T; };

template <typename T> struct Store;
template <> struct Store<float> { static float conv(float v) { return v; } };
template <> struct Store<double> { static double conv(double v) { return v; } };
template <> struct Store<half_t> { static half_t conv(float v) { return half_t{float_to_half(v)}; } };
template <> struct Store<bf16_t> { static bf16_t conv(float v) { return bf16_t{float_to_bf16(v)}; } };

// Largest finite magnitude used as "minus infinity": the kernels are built with finite-math
// (-ffast-math / --use_fast_math), where real infinities are not safe to compute with.
constexpr float kNegHugeF = -3.0e38f;
constexpr double kNegHugeD = -1.0e300;

}  // namespace mplfast
