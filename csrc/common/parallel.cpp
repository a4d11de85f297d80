// See parallel.h. A process-wide pool of sleeping workers, started lazily, never shut down
// (they block in a condition variable; the process exit ends them). After fork() the child
// starts with no workers (pthread_atfork), since threads do not survive a fork.
#include "common/parallel.h"

#include <pthread.h>
#if defined(__linux__)
#include <sched.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>

namespace mplfast {
namespace {

constexpr int kMaxWorkers = 255;

// How long a worker polls for the next job before it sleeps. Waking a sleeping thread costs
// tens of microseconds on a VM (the idle vCPU has to be woken first), which is a quarter of a
// 0.2 ms grad_dot; calls that follow each other closely (an MPL step's ops, a benchmark loop)
// find the worker still polling. OpenMP runtimes spin far longer (libgomp: ~300k polls).
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

struct Job {
  std::atomic<int64_t> next{0};   // next item to claim
  int caller_cpu = -1;            // the CPU the caller was on when it posted the job (-1: unknown)
  std::atomic<int64_t> done{0};   // items finished
  std::atomic<int> seats{0};      // workers that may still join this job
  int64_t n = 0;
  const std::function<void(int64_t)>* body = nullptr;  // valid while done < n
};

// Claims and runs items until none are left.
void run_items(Job& job) {
  for (;;) {
    const int64_t k = job.next.fetch_add(1, std::memory_order_relaxed);
    if (k >= job.n) return;
    (*job.body)(k);
    job.done.fetch_add(1, std::memory_order_release);
  }
}

struct Pool {
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<Job> job;  // the current job, or null
  std::atomic<uint64_t> generation{0};  // written under mu; read without it while polling
  int workers = 0;
};

// Never destroyed: workers may still wait on it while the process exits.
Pool* pool = new Pool;

// Keeps the calling worker off the CPU its job's caller runs on. The caller computes too, so a
// worker the scheduler woke onto the caller's CPU takes turns with it there while the other CPU
// runs something else. On the 2-core machine here, where torch's OpenMP worker polls after each
// torch op, that happened in a third to a half of the processes, and grad_dot interleaved with
// torch ops ran at about half speed for the whole process (benchmarks/RESULTS.md). The worker's
// mask becomes its own allowed CPUs less that one, set again only when the caller has moved. A
// mask someone else set meanwhile (taskset -a) is taken as the new allowed set, never widened;
// a worker allowed on one CPU alone is left as it is.
class CallerCpuAvoidance {
 public:
  void before(const Job& job) {
#if defined(__linux__)
    const int cpu = job.caller_cpu;
    if (off_ || cpu < 0 || cpu >= CPU_SETSIZE || cpu == avoided_) return;
    cpu_set_t now;
    if (sched_getaffinity(0, sizeof now, &now) != 0) return void(off_ = true);
    if (avoided_ < 0 || !CPU_EQUAL(&now, &mine_)) allowed_ = now;  // first call, or set by someone else
    if (!CPU_ISSET(cpu, &allowed_) || CPU_COUNT(&allowed_) < 2) return;
    cpu_set_t want = allowed_;
    CPU_CLR(cpu, &want);
    if (sched_setaffinity(0, sizeof want, &want) != 0) return void(off_ = true);  // a cpuset forbids it
    mine_ = want;
    avoided_ = cpu;
#else
    (void)job;
#endif
  }

 private:
#if defined(__linux__)
  cpu_set_t allowed_{};  // where the worker may run
  cpu_set_t mine_{};     // the mask this set last
#endif
  bool off_ = false;
  int avoided_ = -1;     // the caller's CPU that mask leaves out (-1: none set yet)
};

inline int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

void worker_main(Pool* p) {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "mplfast-pool");  // as top -H and /proc/<pid>/task/*/comm show it
#endif
  CallerCpuAvoidance avoidance;
  uint64_t seen = 0;
  for (;;) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    while (p->generation.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
      cpu_relax();
    std::shared_ptr<Job> job;  // shared ownership: the caller may return before a worker wakes
    {
      std::unique_lock<std::mutex> lock(p->mu);
      p->cv.wait(lock, [&] { return p->generation.load(std::memory_order_relaxed) != seen; });
      seen = p->generation.load(std::memory_order_relaxed);
      job = p->job;
    }
    if (job && job->seats.fetch_sub(1, std::memory_order_relaxed) > 0) {
      avoidance.before(*job);
      run_items(*job);
    }
  }
}

void reset_after_fork() {
  // The child has only the forking thread: forget the parent's workers and any lock state.
  pool = new Pool;
}

void ensure_workers(Pool* p, int want) {
  static std::once_flag atfork;
  std::call_once(atfork, [] { pthread_atfork(nullptr, nullptr, reset_after_fork); });
  if (want > kMaxWorkers) want = kMaxWorkers;
  std::lock_guard<std::mutex> lock(p->mu);
  for (; p->workers < want; ++p->workers) {
    try {
      std::thread(worker_main, p).detach();
    } catch (const std::system_error&) {
      break;  // no more threads: run with the ones there are (the caller alone if need be)
    }
  }
}

}  // namespace

void parallel_items(int64_t n, int threads, const std::function<void(int64_t)>& body) {
  if (n <= 0) return;
  if (threads > n) threads = int(n);
  if (threads <= 1) {
    for (int64_t k = 0; k < n; ++k) body(k);
    return;
  }
  Pool* p = pool;
  ensure_workers(p, threads - 1);
  auto job = std::make_shared<Job>();
  job->n = n;
  job->body = &body;
  job->caller_cpu = current_cpu();
  job->seats.store(threads - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(p->mu);
    p->job = job;
    p->generation.fetch_add(1, std::memory_order_release);
  }
  p->cv.notify_all();
  run_items(*job);
  // Only items that a worker claimed can still be running; wait for those alone.
  while (job->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
  std::lock_guard<std::mutex> lock(p->mu);
  if (p->job == job) p->job.reset();
}

}  // namespace mplfast
