// A tiny persistent thread pool: the calling thread is worker 0, the others sleep on a
// condition variable between jobs. Jobs are synchronous (the N-API call blocks until done),
// which is what tfjs kernels want: they return a finished tensor.
#pragma once
#include <atomic>
#include <cstddef>
#include <condition_variable>
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
  void run(int ntasks, const std::function<void(int)>& fn);
  ~Pool();

 private:
  void worker(int id);
  void stop_all();
  int nthreads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::mutex run_mu_;  // one job at a time, even if several JS threads (worker_threads) call in
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int)>* job_ = nullptr;
  int ntasks_ = 0;
  std::atomic<int> next_{0};
  int pending_ = 0;
  long generation_ = 0;
  bool quit_ = false;
};

// Splits [0, n) into `parts` contiguous ranges and runs fn(begin, end) on each, in parallel.
void parallel_for(long n, long min_per_task, const std::function<void(long, long)>& fn);

// Grow-only per-thread scratch buffer number `slot` (0..3), 64-byte aligned, at least n floats.
// Reused across calls so hot loops never touch fresh pages (page faults are slow, in VMs above all).
float* scratch(int slot, size_t n);

}  // namespace sdlab
