#include "pool.h"

#include <algorithm>
#include <cstdlib>

namespace sdlab {

Pool& Pool::get() {
  static Pool pool;
  return pool;
}

Pool::~Pool() { stop_all(); }

void Pool::stop_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  quit_ = false;
}

void Pool::set_threads(int n) {
  if (n < 1) n = 1;
  if (n == nthreads_ && (int)workers_.size() == n - 1) return;
  stop_all();
  nthreads_ = n;
  for (int i = 1; i < n; ++i) workers_.emplace_back(&Pool::worker, this, i);
}

void Pool::worker(int /*id*/) {
  long seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    int ntasks;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_start_.wait(lock, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
      job = job_;
      ntasks = ntasks_;
    }
    for (int t; (t = next_.fetch_add(1)) < ntasks;) (*job)(t);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) cv_done_.notify_one();
    }
  }
}

void Pool::run(int ntasks, const std::function<void(int)>& fn) {
  if (ntasks <= 0) return;
  if (ntasks == 1 || workers_.empty()) {
    for (int t = 0; t < ntasks; ++t) fn(t);
    return;
  }
  std::lock_guard<std::mutex> serial(run_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    ntasks_ = ntasks;
    next_.store(0);
    pending_ = (int)workers_.size();
    ++generation_;
  }
  cv_start_.notify_all();
  for (int t; (t = next_.fetch_add(1)) < ntasks;) fn(t);
  std::unique_lock<std::mutex> lock(mu_);
  cv_done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
}

void parallel_for(long n, long min_per_task, const std::function<void(long, long)>& fn) {
  if (n <= 0) return;
  Pool& pool = Pool::get();
  long parts = std::min<long>(pool.threads(), std::max<long>(1, n / std::max<long>(1, min_per_task)));
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  pool.run((int)parts, [&](int t) {
    long b = n * t / parts, e = n * (t + 1) / parts;
    if (b < e) fn(b, e);
  });
}

namespace {
struct Scratch {
  float* p[4] = {nullptr, nullptr, nullptr, nullptr};
  size_t cap[4] = {0, 0, 0, 0};
  ~Scratch() {
    for (float* q : p) std::free(q);
  }
};
thread_local Scratch tls_scratch;
}  // namespace

float* scratch(int slot, size_t n) {
  Scratch& s = tls_scratch;
  if (n > s.cap[slot]) {
    std::free(s.p[slot]);
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    s.p[slot] = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    s.cap[slot] = n;
  }
  return s.p[slot];
}

}  // namespace sdlab
