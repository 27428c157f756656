// The CPU backend: today's kernel table (kernels/kernels.h, chosen from CPUID) and thread pool
// behind the Backend interface. Weights stay in the mapped GGUF file; every op computes what the
// forward pass computed before the seam, in the same order, so the bits are unchanged.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <limits>
#include <new>
#include <vector>

#include "base/error.h"
#include "base/thread_pool.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "kernels/kernels.h"
#include "kernels/matmul.h"

namespace eoq {

namespace {

class HostBuffer final : public Buffer {
 public:
  HostBuffer(size_t bytes, const std::string& what) {
    // 64-byte aligned (AVX-512 rows); not zeroed: large allocations stay lazily mapped.
    data_ = ::operator new(bytes ? bytes : 1, std::align_val_t(64), std::nothrow);
    if (!data_)
      fail(ErrorCode::invalid_arg, what + ": cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    size_ = bytes;
  }
  ~HostBuffer() override { ::operator delete(data_, std::align_val_t(64)); }
};

WeightView view(const Tensor& w) { return WeightView{w.type, w.ne[0], w.ne[1], w.nb1, static_cast<const uint8_t*>(w.data)}; }

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int n_threads) : pool_(n_threads), k_(cpu_kernels()) {
    const char* seg = std::getenv("EOQ_SEGMENTED_STEPS");
    segmented_ = !(seg && std::strcmp(seg, "0") == 0);
  }

  Device device() const override { return Device{}; }
  std::string describe() const override {
    return std::string("cpu (") + k_.isa + ", " + std::to_string(pool_.size()) + " threads)";
  }
  int n_threads() const override { return pool_.size(); }
  // The machine's physical memory: what a plan (the cache's fixed storage, the scratch) can never
  // exceed. Weights are mapped from the file and not counted against it (Engine). Host
  // allocations are also checked where they are made (a failed one is a clear error).
  size_t free_memory() const override {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : std::numeric_limits<size_t>::max();
  }
  size_t kv_cache_reserve_bytes(const KVCacheParams& params, const KVCacheShape& s) const override {
    if (params.mode == "f16") return exact_kv_cache_bytes(s, sizeof(uint16_t));
    if (params.mode == "f32") return exact_kv_cache_bytes(s, sizeof(float));
    return 0;  // the compressed caches grow with the tokens
  }
  std::unique_ptr<Buffer> alloc(size_t bytes, const std::string& what) override {
    return std::make_unique<HostBuffer>(bytes, what);
  }
  Tensor load_weight(GGMLType type, int64_t n_cols, int64_t n_rows, size_t row_bytes, const void* host) override {
    Tensor t;
    t.type = type;
    t.ne[0] = n_cols;
    t.ne[1] = n_rows;
    t.nb1 = row_bytes;
    t.data = const_cast<void*>(host);
    return t;
  }

  bool begin_step(const int32_t* tokens, int n, int, bool) override {
    tokens_.type = GGMLType::I32;
    tokens_.ne[0] = n;
    tokens_.ne[1] = 1;
    tokens_.nb1 = (size_t)n * sizeof(int32_t);
    tokens_.data = const_cast<int32_t*>(tokens);
    return true;
  }
  void end_step() override {}
  // Every op takes its pos0 argument. EOQ_SEGMENTED_STEPS=0 runs multi-sequence steps one
  // sequence at a time instead (the path of backends without segmented steps, testable here).
  bool segmented_steps() const override { return segmented_; }
  Tensor step_tokens() const override { return tokens_; }

  void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) override {
    const int32_t* id = static_cast<const int32_t*>(ids.data);
    for_rows(ids.ne[0], table.ne[0], [&](int64_t t) {
      k_.dequantize_row(table.type, static_cast<const uint8_t*>(table.data) + (size_t)id[t] * table.nb1,
                        row(out, t), table.ne[0]);
    });
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    for_rows(x.ne[1], x.ne[0], [&](int64_t t) { k_.rms_norm(row(x, t), w.f32(), row(out, t), x.ne[0], eps); });
  }
  void matmul(const Projection* ps, int n, const Tensor& x) override {
    // Products that add to y go through a scratch row block, then y += it: the order of the
    // forward pass before the seam (and of ggml's mul_mat + add).
    constexpr int kMax = 8;  // the forward pass groups at most 3
    if (n > kMax) {
      for (int i = 0; i < n; i += kMax) matmul(ps + i, std::min(kMax, n - i), x);
      return;
    }
    WeightView ws[kMax];
    MatmulJob jobs[kMax];
    size_t tmp_floats = 0;
    for (int i = 0; i < n; i++)
      if (ps[i].add_to_y) tmp_floats += (size_t)ps[i].y->ne[0] * x.ne[1];
    if (tmp_.size() < tmp_floats) tmp_.resize(tmp_floats);
    size_t used = 0;
    for (int i = 0; i < n; i++) {
      ws[i] = view(*ps[i].w);
      float* y = ps[i].y->f32();
      if (ps[i].add_to_y) {
        y = tmp_.data() + used;
        used += (size_t)ps[i].y->ne[0] * x.ne[1];
      }
      jobs[i] = MatmulJob{&ws[i], y, 0};
    }
    matmul_group(jobs, n, x.f32(), x.ne[1], pool_);
    for (int i = 0; i < n; i++)
      if (ps[i].add_to_y) {
        const int64_t m = ps[i].y->ne[0];
        float* y = ps[i].y->f32();
        const float* t = jobs[i].y;
        for_rows(x.ne[1], m, [&](int64_t r) {
          for (int64_t j = r * m; j < (r + 1) * m; j++) y[j] += t[j];
        });
      }
  }
  void rope(Tensor& x, int n_head, const RopeParams& p, int pos0) override {
    const float* ff = p.freq_factors ? p.freq_factors->f32() : nullptr;
    for_rows(x.ne[1], x.ne[0], [&](int64_t t) {
      k_.rope_adjacent(row(x, t), n_head, p.head_dim, p.n_rot, pos0 + (int)t, p.theta_scale, p.freq_scale, ff);
    });
  }
  void swiglu(Tensor& gate, const Tensor& up) override {
    for_rows(gate.ne[1], gate.ne[0], [&](int64_t t) { k_.swiglu(row(gate, t), row(up, t), gate.ne[0]); });
  }
  void add(Tensor& y, const Tensor& x) override {
    for_rows(y.ne[1], y.ne[0], [&](int64_t t) {
      float* a = row(y, t);
      const float* b = row(x, t);
      for (int64_t i = 0; i < y.ne[0]; i++) a[i] += b[i];
    });
  }
  void to_host(const Tensor& src, void* dst) override {
    if (dst != src.data) std::memcpy(dst, src.data, src.bytes());
  }
  void sync() override {}

  std::unique_ptr<KVCache> make_kv_cache(const KVCacheParams& params, const KVCacheShape& shape) override {
    return make_host_kv_cache(params, shape, pool_);
  }

 private:
  // fn(r) for the rows r < n_rows of n_cols values each: on the pool when there are enough
  // values to pay for a fork-join (prompt batches; at 16 threads these row ops would otherwise be
  // a serial part beside the threaded products), in the caller's thread otherwise (decode).
  // Every row is computed by the same code either way, so the bits do not change.
  template <class Fn>
  void for_rows(int64_t n_rows, int64_t n_cols, const Fn& fn) {
    constexpr int64_t kMinValues = 16384;
    if (n_rows < 2 || pool_.size() == 1 || n_rows * n_cols < kMinValues) {
      for (int64_t r = 0; r < n_rows; r++) fn(r);
      return;
    }
    pool_.parallel_for(n_rows, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; r++) fn(r);
    });
  }

  static float* row(const Tensor& t, int64_t r) {
    return reinterpret_cast<float*>(static_cast<uint8_t*>(t.data) + (size_t)r * t.nb1);
  }

  ThreadPool pool_;
  const CpuKernels& k_;
  Tensor tokens_;
  std::vector<float> tmp_;
  bool segmented_ = true;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return std::make_unique<CpuBackend>(n_threads); }

}  // namespace eoq
