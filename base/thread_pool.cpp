#include "base/thread_pool.h"

#include <algorithm>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace eoq {

namespace {

// One step of a busy wait: a pause hint (lets the sibling hyper-thread run, saves power), and
// every 1024 steps a yield so that an oversubscribed machine still makes progress.
inline void spin_pause(int& spins) {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
  if ((++spins & 1023) == 0) std::this_thread::yield();
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
  n_threads_ = n_threads;
  for (int i = 1; i < n_threads_; i++) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_++;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run_range(int index) {
  // Even split in units of grain.
  const int64_t units = (job_n_ + job_grain_ - 1) / job_grain_;
  const int64_t u0 = units * index / n_threads_, u1 = units * (index + 1) / n_threads_;
  const int64_t b = std::min(job_n_, u0 * job_grain_), e = std::min(job_n_, u1 * job_grain_);
  if (b < e) {
    try {
      (*job_)(b, e, index);
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin a little: the next job usually follows within microseconds during decode.
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < 200000) spin_pause(spins);
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return generation_.load() != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_) return;
    run_range(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (n_threads_ == 1 || n <= grain) {
    fn(0, n, 0);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  job_grain_ = grain;
  error_ = nullptr;
  pending_.store(n_threads_ - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  run_range(0);
  int spins = 0;
  while (pending_.load(std::memory_order_acquire) != 0) spin_pause(spins);
  job_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

}  // namespace eoq
