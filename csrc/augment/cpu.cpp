// CPU augmentation kernel of mplfast (the "native" augment backend).
//
// Semantics: docs/augmentation.md; the torch reference is mplfast/augment/reference.py and the
// tests require this file to match it bit for bit. The random parameters (composed inverse
// affine map, op ids, signs, cutout corners) are drawn by mplfast/augment/params.py in torch and
// passed in; this file does the per-pixel work: one nearest-neighbour resample, the colour
// layers, cutout and normalization, one image per OpenMP iteration.
//
// The target is built with -O3 -ffast-math -march=native. Bit-exactness with torch needs IEEE
// float32 semantics: no FMA contraction (a*u + b*v would round differently), no reassociation,
// no reciprocal division. The pragma below turns those off for this file only.
#pragma GCC optimize("no-fast-math", "fp-contract=off")

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace py = pybind11;

namespace {

// op ids: mplfast/augment/params.py
enum Op : int64_t {
  IDENTITY = 0, AUTOCONTRAST, EQUALIZE, ROTATE, SOLARIZE, COLOR, POSTERIZE, CONTRAST,
  BRIGHTNESS, SHARPNESS, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y
};
constexpr float kFill = 128.0f;

inline float rnd(float x) {  // round half up, clamp to 0..255
  float r = std::floor(x + 0.5f);
  return r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
}
inline float blend(float deg, float x, float f) {
  float t = x - deg;
  t = f * t;
  return rnd(deg + t);
}

struct Args {
  const uint8_t* images; int64_t H, W, C;
  const int64_t* index; const float* affine; int64_t n_ops; const int64_t* ops;
  const float* signs; const int64_t* cut_x0; const int64_t* cut_y0; int64_t cut_l;
  float enhance; float sol_thr; float post_q; const float* scale; const float* shift;
  float* out;
};

inline int64_t luma(const float* px, int64_t C) {
  if (C == 1) return static_cast<int64_t>(px[0]);
  int64_t r = static_cast<int64_t>(px[0]), g = static_cast<int64_t>(px[1]),
          b = static_cast<int64_t>(px[2]);
  return (299 * r + 587 * g + 114 * b + 500) / 1000;  // non-negative: / is floor
}

void one_image(const Args& a, int64_t j, std::vector<float>& v, std::vector<float>& tmp) {
  const int64_t H = a.H, W = a.W, C = a.C, HW = H * W;
  // ---- resample: out(x, y) = img(floor(M [u v 1])) or fill --------------------------------
  const float* m = a.affine + 6 * j;
  const float hw = static_cast<float>(W) / 2.0f, hh = static_cast<float>(H) / 2.0f;
  const uint8_t* img = a.images + a.index[j] * HW * C;
  for (int64_t y = 0; y < H; ++y) {
    const float vv = (static_cast<float>(y) + 0.5f) - hh;
    const float bv = m[1] * vv, ev = m[4] * vv;
    for (int64_t x = 0; x < W; ++x) {
      const float u = (static_cast<float>(x) + 0.5f) - hw;
      const float sx = ((m[0] * u + bv) + m[2]) + hw;
      const float sy = ((m[3] * u + ev) + m[5]) + hh;
      const float fx = std::floor(sx), fy = std::floor(sy);
      float* o = v.data() + (y * W + x) * C;
      if (fx >= 0.0f && fx < static_cast<float>(W) && fy >= 0.0f && fy < static_cast<float>(H)) {
        const uint8_t* s = img + (static_cast<int64_t>(fy) * W + static_cast<int64_t>(fx)) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<float>(s[c]);
      } else {
        for (int64_t c = 0; c < C; ++c) o[c] = kFill;
      }
    }
  }
  const int64_t n = HW * C;
  // ---- colour layers ------------------------------------------------------------------------
  for (int64_t s = 0; s < a.n_ops; ++s) {
    const int64_t op = a.ops[j * a.n_ops + s];
    const float f = 1.0f + a.signs[j * a.n_ops + s] * a.enhance;
    switch (op) {
      case AUTOCONTRAST:
        for (int64_t c = 0; c < C; ++c) {
          float lo = 255.0f, hi = 0.0f;
          for (int64_t p = 0; p < HW; ++p) {
            lo = std::min(lo, v[p * C + c]);
            hi = std::max(hi, v[p * C + c]);
          }
          if (!(hi > lo)) continue;
          const float den = hi - lo;
          for (int64_t p = 0; p < HW; ++p) v[p * C + c] = rnd(((v[p * C + c] - lo) * 255.0f) / den);
        }
        break;
      case EQUALIZE:
        for (int64_t c = 0; c < C; ++c) {
          int64_t hist[256] = {0};
          int vmax = 0;
          for (int64_t p = 0; p < HW; ++p) {
            const int t = static_cast<int>(v[p * C + c]);
            ++hist[t];
            vmax = std::max(vmax, t);
          }
          const int64_t step = (HW - hist[vmax]) / 255;
          if (step == 0) continue;
          float lut[256];
          int64_t acc = 0;
          for (int i = 0; i < 256; ++i) {
            lut[i] = static_cast<float>(std::min<int64_t>((step / 2 + acc) / step, 255));
            acc += hist[i];
          }
          for (int64_t p = 0; p < HW; ++p) v[p * C + c] = lut[static_cast<int>(v[p * C + c])];
        }
        break;
      case SOLARIZE:
        for (int64_t i = 0; i < n; ++i) v[i] = v[i] < a.sol_thr ? v[i] : 255.0f - v[i];
        break;
      case COLOR:
        if (C == 3)
          for (int64_t p = 0; p < HW; ++p) {
            const float g = static_cast<float>(luma(&v[p * 3], 3));
            for (int64_t c = 0; c < 3; ++c) v[p * 3 + c] = blend(g, v[p * 3 + c], f);
          }
        break;
      case POSTERIZE:
        for (int64_t i = 0; i < n; ++i) v[i] = std::floor(v[i] / a.post_q) * a.post_q;
        break;
      case CONTRAST: {
        int64_t tot = 0;
        for (int64_t p = 0; p < HW; ++p) tot += luma(&v[p * C], C);
        const float mean = static_cast<float>((2 * tot + HW) / (2 * HW));
        for (int64_t i = 0; i < n; ++i) v[i] = blend(mean, v[i], f);
        break;
      }
      case BRIGHTNESS:
        for (int64_t i = 0; i < n; ++i) v[i] = rnd(f * v[i]);
        break;
      case SHARPNESS: {
        std::copy(v.begin(), v.begin() + n, tmp.begin());  // smooth = v on the border
        if (H >= 3 && W >= 3)
          for (int64_t y = 1; y < H - 1; ++y)
            for (int64_t x = 1; x < W - 1; ++x)
              for (int64_t c = 0; c < C; ++c) {
                int64_t acc = 4 * static_cast<int64_t>(v[(y * W + x) * C + c]);
                for (int64_t dy = -1; dy <= 1; ++dy)
                  for (int64_t dx = -1; dx <= 1; ++dx)
                    acc += static_cast<int64_t>(v[((y + dy) * W + x + dx) * C + c]);
                tmp[(y * W + x) * C + c] = static_cast<float>((acc + 6) / 13);
              }
        for (int64_t i = 0; i < n; ++i) v[i] = blend(tmp[i], v[i], f);
        break;
      }
      default:  // identity and the geometric ops (already in the resample)
        break;
    }
  }
  // ---- cutout, normalize ----------------------------------------------------------------------
  if (a.cut_l > 0) {
    const int64_t y0 = std::max<int64_t>(a.cut_y0[j], 0), y1 = std::min(a.cut_y0[j] + a.cut_l, H);
    const int64_t x0 = std::max<int64_t>(a.cut_x0[j], 0), x1 = std::min(a.cut_x0[j] + a.cut_l, W);
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x)
        for (int64_t c = 0; c < C; ++c) v[(y * W + x) * C + c] = kFill;
  }
  float* o = a.out + j * n;
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < C; ++c) o[p * C + c] = v[p * C + c] * a.scale[c] + a.shift[c];
}

template <typename T> T* ptr(uint64_t p) { return reinterpret_cast<T*>(static_cast<uintptr_t>(p)); }

}  // namespace

void bind_augment(pybind11::module_& m) {
  m.def(
      "augment_cpu",
      [](uint64_t images, int64_t H, int64_t W, int64_t C, uint64_t index, int64_t N,
         uint64_t affine, int64_t n_ops, uint64_t ops, uint64_t signs, uint64_t cut_x0,
         uint64_t cut_y0, int64_t cut_l, double enhance, double sol_thr, double post_q,
         uint64_t scale, uint64_t shift, uint64_t out, int threads) {
        Args a{ptr<const uint8_t>(images), H, W, C, ptr<const int64_t>(index),
               ptr<const float>(affine), n_ops, ptr<const int64_t>(ops), ptr<const float>(signs),
               ptr<const int64_t>(cut_x0), ptr<const int64_t>(cut_y0), cut_l,
               static_cast<float>(enhance), static_cast<float>(sol_thr),
               static_cast<float>(post_q), ptr<const float>(scale), ptr<const float>(shift),
               ptr<float>(out)};
        py::gil_scoped_release nogil;
#ifdef MPLFAST_WITH_OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
#endif
        {
          std::vector<float> v(H * W * C), tmp(H * W * C);
#ifdef MPLFAST_WITH_OPENMP
#pragma omp for schedule(static)
#endif
          for (int64_t j = 0; j < N; ++j) one_image(a, j, v, tmp);
        }
        (void)threads;
      },
      "Augment N images (uint8 NHWC set, int64 rows, params from mplfast.augment.params) into a "
      "float32 [N, H, W, C] normalized buffer. Pointers are raw data addresses.");
}
