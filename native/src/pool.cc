#include "pool.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SDLAB_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define SDLAB_PAUSE() __asm__ __volatile__("yield")  // the spin-wait hint, as PAUSE on x86
#else
#define SDLAB_PAUSE() std::this_thread::yield()
#endif

namespace sdlab {

namespace {
using Clock = std::chrono::steady_clock;
thread_local bool in_job = false;  // this thread is running a pool task: nested jobs run inline
constexpr auto WORKER_SPIN = std::chrono::microseconds(50);  // wait for the next job this long before sleeping
constexpr auto CALLER_SPIN = std::chrono::microseconds(50);  // wait for claimed tasks this long before sleeping
}  // namespace

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
  std::lock_guard<std::mutex> serial(run_mu_);
  stop_all();
  nthreads_ = n;
  for (int i = 1; i < n; ++i) workers_.emplace_back(&Pool::worker, this, i);
}

void Pool::work_on(uint32_t gen, const std::function<void(int)>* job, int ntasks) {
  for (;;) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    do {
      if ((uint32_t)(t >> 32) != gen || (int)(uint32_t)t >= ntasks) return;
    } while (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel));
    in_job = true;
    (*job)((int)(uint32_t)t);
    in_job = false;
    // seq_cst on both sides (here and in run()), so the caller either sees the count or is woken.
    if (done_.fetch_add(1) + 1 == ntasks && caller_sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_done_.notify_one();
    }
  }
}

void Pool::worker(int /*id*/) {
  uint32_t seen = generation_.load();
  for (;;) {
    // Spin briefly for the next job, then sleep.
    auto until = Clock::now() + WORKER_SPIN;
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      SDLAB_PAUSE();
      if (++spins % 64 == 0 && Clock::now() > until) break;
    }
    const std::function<void(int)>* job;
    int ntasks;
    uint32_t gen;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (generation_.load() == seen && !quit_) {
        sleepers_.fetch_add(1);
        cv_start_.wait(lock, [&] { return quit_ || generation_.load() != seen; });
        sleepers_.fetch_sub(1);
      }
      if (quit_) return;
      gen = seen = generation_.load();
      job = job_;
      ntasks = ntasks_;
    }
    if (job) work_on(gen, job, ntasks);
  }
}

void Pool::run(int ntasks, const std::function<void(int)>& fn) {
  if (ntasks <= 0) return;
  if (ntasks == 1 || workers_.empty() || in_job) {
    for (int t = 0; t < ntasks; ++t) fn(t);
    return;
  }
  std::lock_guard<std::mutex> serial(run_mu_);
  uint32_t gen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    ntasks_ = ntasks;
    done_.store(0);
    gen = generation_.load() + 1;
    ticket_.store((uint64_t)gen << 32);
    generation_.store(gen, std::memory_order_release);
  }
  if (sleepers_.load() > 0) cv_start_.notify_all();
  work_on(gen, &fn, ntasks);
  // Wait for tasks that workers claimed and are still running.
  auto until = Clock::now() + CALLER_SPIN;
  int spins = 0;
  while (done_.load(std::memory_order_acquire) < ntasks) {
    SDLAB_PAUSE();
    if (++spins % 64 == 0 && Clock::now() > until) {
      std::unique_lock<std::mutex> lock(mu_);
      caller_sleeping_.store(true);
      cv_done_.wait_for(lock, std::chrono::milliseconds(1), [&] { return done_.load() >= ntasks; });
      caller_sleeping_.store(false);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  job_ = nullptr;  // late workers see no job
}

void parallel_for(long n, long min_per_task, const std::function<void(long, long)>& fn) {
  if (n <= 0) return;
  Pool& pool = Pool::get();
  const long T = pool.threads();
  long parts = std::min<long>(4 * T, std::max<long>(1, n / std::max<long>(1, min_per_task)));
  if (T <= 1 || parts <= 1) {
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
    if (s.p[slot]) advise_huge(s.p[slot], bytes);
    s.cap[slot] = n;
  }
  return s.p[slot];
}

namespace {
bool huge_pages_wanted() {
  static const bool on = [] {
    const char* e = std::getenv("SDLAB_HUGEPAGES");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}
}  // namespace

void advise_huge(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < HUGE_MIN_BYTES || !huge_pages_wanted()) return;
  constexpr uintptr_t H = 2u << 20;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + H - 1) & ~(H - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(H - 1);
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);  // advice only: failure changes nothing
#else
  (void)p;
  (void)bytes;
#endif
}

namespace {
uintptr_t heap_advised = 0;  // the heap's end when last advised (JS calls come from one thread)
}

void advise_heap_init() {
#if defined(__linux__) && defined(MADV_HUGEPAGE) && defined(__GLIBC__)
  heap_advised = reinterpret_cast<uintptr_t>(sbrk(0));
#endif
}

void advise_heap_growth() {
#if defined(__linux__) && defined(MADV_HUGEPAGE) && defined(__GLIBC__)
  if (!heap_advised || !huge_pages_wanted()) return;
  const uintptr_t end = reinterpret_cast<uintptr_t>(sbrk(0));
  if (end > heap_advised) madvise(reinterpret_cast<void*>(heap_advised), end - heap_advised, MADV_HUGEPAGE);
  heap_advised = end;  // also after a trim moved it down
#endif
}

BigBuffer::BigBuffer(size_t n) : p_(static_cast<float*>(std::malloc((n ? n : 1) * sizeof(float)))) {
  if (!p_) throw std::bad_alloc();
  advise_huge(p_, n * sizeof(float));
}

BigBuffer::~BigBuffer() { std::free(p_); }

}  // namespace sdlab
