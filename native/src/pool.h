// A tiny persistent thread pool: the calling thread is worker 0, the others wait between jobs
// (spinning for a few tens of microseconds, since tfjs kernels arrive back to back, then
// sleeping on a condition variable). Jobs are synchronous (the N-API call blocks until done),
// which is what tfjs kernels want: they return a finished tensor.
//
// Tasks are claimed one at a time from a counter tagged with the job's number, and the caller
// waits only for tasks that were actually claimed: a worker that the OS has not scheduled yet
// (the machine is busy) never holds a job up, since the caller takes its tasks instead.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sdlab {

class Pool {
 public:
  static Pool& get();
  void set_threads(int n);  // total threads including the caller; >= 1
  int threads() const { return nthreads_; }
  // Runs fn(t) for t in [0, ntasks) on up to threads() threads; returns when all are done.
  // Called from inside a task, it runs the tasks inline (no nested parallelism, no deadlock).
  void run(int ntasks, const std::function<void(int)>& fn);
  ~Pool();

 private:
  void worker(int id);
  void stop_all();
  // Claims and runs tasks of job `gen` until none are left.
  void work_on(uint32_t gen, const std::function<void(int)>* job, int ntasks);

  int nthreads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::mutex run_mu_;  // one job at a time, even if several JS threads (worker_threads) call in
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int)>* job_ = nullptr;
  int ntasks_ = 0;
  std::atomic<uint32_t> generation_{0};
  std::atomic<uint64_t> ticket_{0};  // (generation << 32) | next task index
  std::atomic<int> done_{0};         // tasks of the current job finished
  std::atomic<int> sleepers_{0};     // workers blocked on cv_start_
  std::atomic<bool> caller_sleeping_{false};
  bool quit_ = false;
};

// Splits [0, n) into contiguous ranges of at least min_per_task items (a few per thread, so a
// descheduled thread holds up little) and runs fn(begin, end) on them in parallel.
void parallel_for(long n, long min_per_task, const std::function<void(long, long)>& fn);

// Grow-only per-thread scratch buffer number `slot` (0..3), 64-byte aligned, at least n floats.
// Reused across calls so hot loops never touch fresh pages (page faults are slow, in VMs above all).
float* scratch(int slot, size_t n);

// Asks the kernel to back [p, p + bytes) with 2 MB transparent huge pages where it is willing
// (Linux, THP "madvise" or "always"): only the whole 2 MB pages inside the range, and only for
// ranges from HUGE_MIN_BYTES up. Call it before the memory is first written. A page fault costs
// about the same for 4 KB as for 2 MB, and in VMs a 4 KB fault is slow (measured on this
// project's Firecracker VM: 2.9 s to first-touch 1 GiB in 4 KB pages, 0.09 s in huge pages), so
// fresh activation buffers otherwise spend seconds of a 512 px decode in the kernel.
// SDLAB_HUGEPAGES=0 turns it off.
constexpr size_t HUGE_MIN_BYTES = 4u << 20;
void advise_huge(void* p, size_t bytes);

// The same advice for the C heap's growth (brk) since the last call, so that the smaller buffers
// malloc carves from new heap get huge pages too. glibc does this itself under
// GLIBC_TUNABLES=glibc.malloc.hugetlb=1, but tunables are read only when a process starts.
// advise_heap_init() (the addon's Init) sets where the growth begins.
void advise_heap_init();
void advise_heap_growth();

// An uninitialised float array of n elements (malloc, huge pages advised when large), freed at
// scope exit: for per-call work buffers of megabytes, where std::vector's zero-fill would touch
// every page in small ones.
class BigBuffer {
 public:
  explicit BigBuffer(size_t n);
  ~BigBuffer();
  BigBuffer(const BigBuffer&) = delete;
  BigBuffer& operator=(const BigBuffer&) = delete;
  float* data() { return p_; }
  float& operator[](size_t i) { return p_[i]; }

 private:
  float* p_;
};

}  // namespace sdlab
