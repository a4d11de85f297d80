#pragma once
#include <cstdint>
#ifdef MPLFAST_WITH_OPENMP
#include <omp.h>
#endif

namespace mplfast {
// Threads worth using for `work` element-operations: below ~64k elements the fork/join costs
// more than it saves.
inline int threads_for(int64_t work, int requested) {
  if (requested < 1) requested = 1;
#ifdef MPLFAST_WITH_OPENMP
  if (work < (int64_t(1) << 16)) return 1;
  return requested;
#else
  (void)work;
  return 1;
#endif
}
}  // namespace mplfast
