// CPU parallelism of the native kernels: a grain rule for how many threads a piece of work may
// use, and parallel_items, which runs work items on the calling thread plus pool workers.
//
// Why not `omp parallel for`: an OpenMP region ends in a barrier that waits for EVERY thread of
// the team, so on a busy machine one worker the OS runs late (a time slice is milliseconds) makes
// a 0.2 ms call take 8 ms. parallel_items instead hands out items from an atomic counter; the
// caller takes items too and returns as soon as every item is done, without waiting for workers
// that never started (a late worker finds nothing left and goes back to sleep). Pool workers
// poll for 200 us after a job, then sleep on a condition variable, so idle kernels leave the
// shared CPUs alone; a worker never runs on the CPU its caller posted the job from (its own
// affinity mask, parallel.cpp), since the caller computes too. Results stay deterministic when
// each item writes its own slot.
#pragma once
#include <cstdint>
#include <functional>

namespace mplfast {

// torch's grain size (at::internal::GRAIN_SIZE): a thread is worth starting for at least this
// many elements of work.
constexpr int64_t kGrainElements = 32768;

// Threads worth using for `work` elements: at most `requested`, at most one per kGrainElements.
inline int threads_for(int64_t work, int requested) {
  if (requested < 1) requested = 1;
  const int64_t by_grain = work / kGrainElements;
  if (by_grain < 2) return 1;
  return by_grain < requested ? int(by_grain) : requested;
}

// Calls body(k) once for every k in [0, n), on the calling thread and up to threads - 1 pool
// workers (threads <= 1: inline, in order). Returns when all calls have returned. body must not
// throw and must be safe to call concurrently for different k.
void parallel_items(int64_t n, int threads, const std::function<void(int64_t)>& body);

}  // namespace mplfast
