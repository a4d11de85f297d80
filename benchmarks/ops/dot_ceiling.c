// The CPU ceiling for grad_dot: how fast one core reads two fp32 vectors and sums their products,
// by working-set size (L2-resident, L3, DRAM). grad_dot's bare kernel is compared with this
// (benchmarks/RESULTS.md): it reads the same bytes, so it cannot beat the line for its size.
//
//   gcc -O3 -march=native -o /tmp/dot_ceiling benchmarks/ops/dot_ceiling.c && /tmp/dot_ceiling
//
// One thread, best of many repeats, 64 independent fp32 lanes (vectorized by the compiler; gcc
// 12 picks 256-bit registers even with AVX-512, and hand-written 512-bit FMAs with or without
// software prefetch, or transparent huge pages, read no faster here); bytes = 2 x 4 x n. Two
// threads on two cores read about twice this.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static float dot(const float* restrict x, const float* restrict y, long n) {
  float acc[64] = {0};
  for (long i = 0; i + 64 <= n; i += 64)
    for (int j = 0; j < 64; ++j) acc[j] += x[i + j] * y[i + j];
  float s = 0;
  for (int j = 0; j < 64; ++j) s += acc[j];
  return s;
}

int main(void) {
  // 1 MB (L2) ... WRN-28-2's 11.8 MB (the benchmark's lists) ... 189 MB (past the L3 here)
  const long sizes[] = {131072, 524288, 1474560, 5898240, 23592960};
  for (size_t k = 0; k < sizeof sizes / sizeof *sizes; ++k) {
    const long n = sizes[k];
    float* x = aligned_alloc(64, n * sizeof(float));
    float* y = aligned_alloc(64, n * sizeof(float));
    for (long i = 0; i < n; ++i) x[i] = 1e-3f * (i % 7), y[i] = 1e-3f * (i % 5);
    double best = 1e9;
    volatile float sink = 0;
    for (int r = 0; r < (n < 2000000 ? 300 : 30); ++r) {
      const double t0 = now();
      sink += dot(x, y, n);
      const double t = now() - t0;
      if (t < best) best = t;
    }
    printf("%8.1f MB  %8.1f us  %6.1f GB/s per core\n", 8.0 * n / 1e6, best * 1e6, 8.0 * n / best / 1e9);
    free(x);
    free(y);
  }
  return 0;
}
