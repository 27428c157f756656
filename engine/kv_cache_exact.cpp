// Exact KV caches: f32 (bit-exact reference for tests) and f16 (what llama.cpp uses by default).
// Storage per layer and KV head is contiguous over tokens: [n_ctx][head_dim], so one head's
// attention streams one contiguous array.
#include <cmath>
#include <cstring>
#include <limits>
#include <algorithm>
#include <atomic>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "base/error.h"
#include "engine/kv_cache.h"
#include "base/thread_pool.h"
#include "base/fp16.h"
#include "kernels/kernels.h"

namespace eoq {

namespace {

// Storage conversion of the two exact caches.
inline float store_as(float x, float*) { return x; }
inline uint16_t store_as(float x, uint16_t*) { return fp32_to_fp16(x); }

template <typename T>
class ExactKVCache final : public HostKVCache {
 public:
  ExactKVCache(const KVCacheShape& s, const char* name) : name_(name) {
    shape_ = s;
    const size_t per = (size_t)s.n_layer * s.n_head_kv * s.n_ctx * s.head_dim;
    // Default-initialised (not zeroed): large allocations come from mmap, so pages become
    // resident only as tokens are written and the reported bytes match what is really used.
    k_.reset(new (std::nothrow) T[per]);
    v_.reset(new (std::nothrow) T[per]);
    if (!k_ || !v_)
      fail(ErrorCode::invalid_arg, std::string("the ") + name + " KV cache of " + std::to_string(s.n_ctx) + " tokens needs " +
                                       std::to_string(exact_kv_cache_bytes(s, sizeof(T))) + " bytes, which cannot be allocated: lower n_ctx (-c)");
    n_.assign(s.n_layer, 0);
  }

  void append_rows(int il, int pos0, int n, const float* k, const float* v, ThreadPool&) override {
    const KVCacheShape& s = shape_;
    if (pos0 != n_[il] || pos0 + n > s.n_ctx) fail(ErrorCode::internal, "KV cache: out-of-order or overflowing append");
    for (int t = 0; t < n; t++)
      for (int g = 0; g < s.n_head_kv; g++) {
        T* kd = head(k_, il, g) + (size_t)(pos0 + t) * s.head_dim;
        T* vd = head(v_, il, g) + (size_t)(pos0 + t) * s.head_dim;
        const float* ks = k + ((size_t)t * s.n_head_kv + g) * s.head_dim;
        const float* vs = v + ((size_t)t * s.n_head_kv + g) * s.head_dim;
        for (int i = 0; i < s.head_dim; i++) {
          kd[i] = store_as(ks[i], kd);
          vd[i] = store_as(vs[i], vd);
        }
      }
    n_[il] = pos0 + n;
  }

  void attend_rows(int il, int pos0, int n, int n_head, const float* q, float* out, ThreadPool& pool) override {
    if constexpr (std::is_same<T, uint16_t>::value) {
      if (n < kGgmlFaTileQ) attend_like_ggml(il, pos0, n, n_head, q, out, pool);
      else attend_tiled_like_ggml(il, pos0, n, n_head, q, out, pool);
    } else {
      // The f32 cache: plain float softmax attention, one work item per (query token, query head).
      const KVCacheShape& s = shape_;
      const int hd = s.head_dim, group = n_head / s.n_head_kv;
      const float scale = 1.0f / std::sqrt((float)hd);
      const CpuKernels& kern = cpu_kernels();
      pool.parallel_for((int64_t)n * n_head, [&](int64_t b, int64_t e, int) {
        thread_local std::vector<float> scores;
        for (int64_t item = b; item < e; item++) {
          const int t = (int)(item / n_head), h = (int)(item % n_head), g = h / group;
          const int n_kv = pos0 + t + 1;
          const float* qh = q + ((size_t)t * n_head + h) * hd;
          float* oh = out + ((size_t)t * n_head + h) * hd;
          const T* kh = head(k_, il, g);
          const T* vh = head(v_, il, g);
          scores.resize(n_kv);
          float mx = -std::numeric_limits<float>::infinity();
          for (int j = 0; j < n_kv; j++) {
            scores[j] = kern.dot_f32(kh + (size_t)j * hd, qh, hd) * scale;
            mx = scores[j] > mx ? scores[j] : mx;
          }
          double sum = 0;
          for (int j = 0; j < n_kv; j++) {
            scores[j] = std::exp(scores[j] - mx);
            sum += scores[j];
          }
          const float inv = (float)(1.0 / sum);
          for (int i = 0; i < hd; i++) oh[i] = 0;
          for (int j = 0; j < n_kv; j++) kern.axpy_f32(scores[j] * inv, vh + (size_t)j * hd, oh, hd);
        }
      });
    }
  }

  // ggml's CPU flash attention (llama.cpp's default) takes batches of fewer than 64 queries,
  // decode steps included, one query row at a time; larger batches go through its tiled path.
  // The f16 cache reproduces both (the f32 cache is the plain float reference above).
  static constexpr int kGgmlFaTileQ = 64, kGgmlFaTileKV = 64;

  // The f16 cache, batches of kGgmlFaTileQ or more: ggml's tiled flash attention. Keys in tiles
  // of 64 from position 0; per tile float scores (fma chains over the float query and the keys
  // in float), the running max and normaliser updated once per tile, exp and its double sum as
  // ggml_vec_soft_max_f32, values accumulated in float by fma chains over the tile's tokens.
  // Work items are (block of kQB queries, KV head): each key/value tile is converted to float
  // (keys transposed, [d][64]) once for the block's queries and the G query heads of the group.
  static constexpr int kQB = 32;
  void attend_tiled_like_ggml(int il, int pos0, int n, int n_head, const float* q, float* out, ThreadPool& pool) {
    const KVCacheShape& s = shape_;
    const int hd = s.head_dim, hkv = s.n_head_kv, G = n_head / hkv, TK = kGgmlFaTileKV;
    const float scale = 1.0f / std::sqrt((float)hd);
    const CpuKernels& kern = cpu_kernels();
    const int n_blocks = (n + kQB - 1) / kQB;
    const int64_t items = (int64_t)n_blocks * hkv;
    const int nt = pool.size();
    pool.parallel_for(nt, [&](int64_t b, int64_t e, int) {
      thread_local std::vector<float> kt, krow, vt, kq, acc, M, S;
      kt.resize((size_t)hd * TK);
      krow.resize((size_t)TK * hd);
      vt.resize((size_t)TK * hd);
      kq.resize(TK);
      acc.resize((size_t)kQB * G * hd);
      M.resize((size_t)kQB * G);
      S.resize((size_t)kQB * G);
      for (int64_t k = b; k < e; k++)
        for (int64_t item = k; item < items; item += nt) {  // round robin: later blocks see more keys
          const int qb = (int)(item / hkv), g = (int)(item % hkv);
          const int t0 = qb * kQB, nq = std::min(kQB, n - t0);
          const T* kh = head(k_, il, g);
          const T* vh = head(v_, il, g);
          std::fill(acc.begin(), acc.end(), 0.0f);
          std::fill(M.begin(), M.end(), -std::numeric_limits<float>::infinity());
          std::fill(S.begin(), S.end(), 0.0f);
          const int kv_end = pos0 + t0 + nq;  // keys the block's last query sees
          for (int ic = 0; ic < kv_end; ic += TK) {
            const int m = std::min(TK, kv_end - ic);
            // the tile in float (exact conversions): values row-major, keys transposed
            kern.dequantize_row(GGMLType::F16, vh + (size_t)ic * hd, vt.data(), (int64_t)m * hd);
            kern.dequantize_row(GGMLType::F16, kh + (size_t)ic * hd, krow.data(), (int64_t)m * hd);
            for (int j = 0; j < m; j++)
              for (int i = 0; i < hd; i++) kt[(size_t)i * TK + j] = krow[(size_t)j * hd + i];
            for (int t = 0; t < nq; t++) {
              const int mq = std::min(m, pos0 + t0 + t + 1 - ic);  // keys of this tile the query sees
              if (mq <= 0) continue;
              for (int h = 0; h < G; h++) {
                const size_t r = (size_t)t * G + h;
                const float* qh = q + ((size_t)(t0 + t) * n_head + (size_t)g * G + h) * hd;
                kern.scores_f32t_chain(kt.data(), hd, TK, qh, kq.data());
                float tmax = -std::numeric_limits<float>::infinity();
                for (int j = 0; j < mq; j++) {
                  kq[j] *= scale;
                  tmax = std::max(tmax, kq[j]);
                }
                for (int j = mq; j < TK; j++) kq[j] = -std::numeric_limits<float>::infinity();
                float* a = &acc[r * hd];
                const float Mnew = std::max(M[r], tmax);
                if (Mnew > M[r]) {
                  const float ms = std::exp(M[r] - Mnew);
                  for (int i = 0; i < hd; i++) a[i] *= ms;
                  S[r] *= ms;
                }
                M[r] = Mnew;
                S[r] = (float)((double)S[r] + kern.soft_max_ggml(kq.data(), TK, Mnew));
                kern.values_f32_chain(vt.data(), mq, hd, kq.data(), a);
              }
            }
          }
          for (int t = 0; t < nq; t++)
            for (int h = 0; h < G; h++) {
              const size_t r = (size_t)t * G + h;
              const float inv = S[r] == 0.0f ? 0.0f : 1.0f / S[r];
              float* oh = out + ((size_t)(t0 + t) * n_head + (size_t)g * G + h) * hd;
              for (int i = 0; i < hd; i++) oh[i] = acc[r * hd + i] * inv;
            }
        }
    });
  }

  void attend_like_ggml(int il, int pos0, int n, int n_head, const float* q, float* out, ThreadPool& pool) {
    const KVCacheShape& s = shape_;
    const int hd = s.head_dim, group = n_head / s.n_head_kv;
    const CpuKernels& kern = cpu_kernels();
    // A decode step whose key view (llama.cpp pads it to a multiple of 256, at most n_ctx) holds
    // 512 or more slots is split into one chunk of keys per thread, merged in float at the end.
    const int nek1 = std::min(s.n_ctx, std::max(256, (pos0 + 1 + 255) / 256 * 256));
    const int n_chunks = n == 1 && nek1 >= 512 ? pool.size() : 1;
    const int chunk = (nek1 + n_chunks - 1) / n_chunks;
    pool.parallel_for((int64_t)n * n_head, [&](int64_t b, int64_t e, int) {
      thread_local std::vector<uint16_t> q16, acc16;
      thread_local std::vector<float> acc;
      q16.resize(hd);
      acc16.resize(hd);
      acc.resize(hd);
      for (int64_t item = b; item < e; item++) {
        const int t = (int)(item / n_head), h = (int)(item % n_head), g = h / group;
        const int n_kv = pos0 + t + 1;
        const float* qh = q + ((size_t)t * n_head + h) * hd;
        for (int i = 0; i < hd; i++) q16[i] = fp32_to_fp16(qh[i]);
        float* oh = out + ((size_t)t * n_head + h) * hd;
        if (n_chunks == 1) {
          float M, S;
          ggml_fa_row(kern, il, g, q16.data(), 0, n_kv, acc16.data(), M, S);
          const float inv = S == 0.0f ? 0.0f : 1.0f / S;
          for (int i = 0; i < hd; i++) oh[i] = fp16_to_fp32(acc16[i]) * inv;
          continue;
        }
        // ggml_flash_attn_ext_reduce_partials: chunks merged in order, products fused as GCC
        // contracts a*b + c*d there (the first product fused).
        float Mf = -std::numeric_limits<float>::infinity(), Sf = 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int c = 0; c < n_chunks; c++) {
          const int lo = c * chunk, hi = std::min(n_kv, std::min(nek1, lo + chunk));
          if (lo >= hi) continue;
          float M, S;
          ggml_fa_row(kern, il, g, q16.data(), lo, hi, acc16.data(), M, S);
          if (S == 0.0f) continue;
          const float Mn = std::max(Mf, M);
          const float so = std::exp(Mf - Mn), sn = std::exp(M - Mn);
          for (int i = 0; i < hd; i++) acc[i] = std::fma(acc[i], so, fp16_to_fp32(acc16[i]) * sn);
          Sf = std::fma(Sf, so, S * sn);
          Mf = Mn;
        }
        const float inv = Sf != 0.0f ? 1.0f / Sf : 1.0f;
        for (int i = 0; i < hd; i++) oh[i] = acc[i] * inv;
      }
    });
  }

  // One query row over keys [lo, hi) of KV head g as ggml's one-chunk flash attention computes
  // it: q16 the f16 query; out: the f16 value accumulator, max M and float normaliser S.
  void ggml_fa_row(const CpuKernels& kern, int il, int g, const uint16_t* q16, int lo, int hi, uint16_t* acc,
                   float& M, float& S) {
    const int hd = shape_.head_dim;
    const float scale = 1.0f / std::sqrt((float)hd);
    const uint16_t* kh = head(k_, il, g);
    const uint16_t* vh = head(v_, il, g);
    std::fill(acc, acc + hd, (uint16_t)0);
    M = -std::numeric_limits<float>::infinity();
    S = 0.0f;
    for (int j = lo; j < hi; j++) {
      const float sc = kern.dot_f16_f16(kh + (size_t)j * hd, q16, hd) * scale;
      float ms = 1.0f, vs = 1.0f;
      if (sc > M) {
        ms = std::exp(M - sc);
        M = sc;
        kern.scale_f16(ms, acc, hd);
      } else {
        vs = std::exp(sc - M);
      }
      kern.axpy_f16_acc16(vs, vh + (size_t)j * hd, acc, hd);
      S = std::fma(S, ms, vs);  // contracted so in ggml
    }
  }

  void clear() override { n_.assign(shape_.n_layer, 0); }
  // Rows past n are simply forgotten (the next append overwrites them).
  int truncate(int n) override {
    check_truncate(n);
    n_.assign(shape_.n_layer, n);
    return n;
  }
  int n_tokens() const override { return n_.empty() ? 0 : n_[0]; }
  // Payload: per layer, K then V, per KV head its n_tokens rows of head_dim values of T (the
  // storage type), little-endian as in memory.
  void save_payload(std::vector<uint8_t>& out) const override {
    const KVCacheShape& s = shape_;
    const size_t row = (size_t)s.head_dim * sizeof(T), n = (size_t)n_tokens();
    out.reserve(out.size() + payload_bytes(n_tokens()));
    for (int il = 0; il < s.n_layer; il++)
      for (const auto* store : {&k_, &v_})
        for (int g = 0; g < s.n_head_kv; g++) {
          const uint8_t* src = reinterpret_cast<const uint8_t*>(head(*store, il, g));
          out.insert(out.end(), src, src + n * row);
        }
  }
  void load_payload(const uint8_t* data, size_t size, int n) override {
    const KVCacheShape& s = shape_;
    clear();
    if (n < 0 || n > s.n_ctx)
      fail(ErrorCode::format, "state: " + std::to_string(n) + " tokens do not fit the cache's " + std::to_string(s.n_ctx));
    if (size != payload_bytes(n))
      fail(ErrorCode::format, "state: the " + std::string(name_) + " cache payload has " + std::to_string(size) +
                                  " bytes, expected " + std::to_string(payload_bytes(n)) + " for " + std::to_string(n) + " tokens");
    const size_t bytes = (size_t)n * s.head_dim * sizeof(T);
    for (int il = 0; il < s.n_layer; il++)
      for (auto* store : {&k_, &v_})
        for (int g = 0; g < s.n_head_kv; g++) {
          std::memcpy(head(*store, il, g), data, bytes);
          data += bytes;
        }
    if constexpr (std::is_same<T, float>::value) {  // f32 rows must be finite, as appends make them
      for (int il = 0; il < s.n_layer; il++)
        for (auto* store : {&k_, &v_})
          for (int g = 0; g < s.n_head_kv; g++) {
            const float* x = head(*store, il, g);
            for (size_t i = 0; i < (size_t)n * s.head_dim; i++)
              if (!std::isfinite(x[i])) fail(ErrorCode::format, "state: the f32 cache payload holds a non-finite value");
          }
    }
    n_.assign(s.n_layer, n);
  }
  size_t payload_bytes(int n) const {
    return (size_t)2 * shape_.n_layer * shape_.n_head_kv * (size_t)n * shape_.head_dim * sizeof(T);
  }
  size_t bytes() const override {
    return (size_t)2 * shape_.n_layer * shape_.n_head_kv * shape_.head_dim * n_tokens() * sizeof(T);
  }
  double bits_per_entry() const override { return 8.0 * sizeof(T); }
  std::string mode() const override { return name_; }

 private:
  T* head(std::unique_ptr<T[]>& a, int il, int g) {
    return a.get() + ((size_t)il * shape_.n_head_kv + g) * (size_t)shape_.n_ctx * shape_.head_dim;
  }
  const T* head(const std::unique_ptr<T[]>& a, int il, int g) const {
    return a.get() + ((size_t)il * shape_.n_head_kv + g) * (size_t)shape_.n_ctx * shape_.head_dim;
  }
  std::string name_;
  std::unique_ptr<T[]> k_, v_;  // [n_layer][n_head_kv][n_ctx][head_dim]
  std::vector<int> n_;    // tokens held per layer
};

}  // namespace

std::string KVCache::stats_json() const {
  return "{\"mode\": \"" + mode() + "\", \"n_tokens\": " + std::to_string(n_tokens()) +
         ", \"bytes\": " + std::to_string(bytes()) + ", \"bits_per_entry\": " + std::to_string(bits_per_entry()) + "}";
}

uint64_t KVCache::next_serial() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}

void KVCache::begin(int pos0, int n) {
  if (pos0 != n_tokens() || n < 0 || (int64_t)pos0 + n > shape_.n_ctx)
    fail(ErrorCode::internal, "KV cache: positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + n) +
                                  " do not follow the " + std::to_string(n_tokens()) + " tokens held or exceed n_ctx " +
                                  std::to_string(shape_.n_ctx));
}

void KVCache::check_truncate(int n) const {
  if (n < 0 || n > n_tokens())
    fail(ErrorCode::invalid_arg, "KV cache: cannot keep " + std::to_string(n) + " tokens of the " +
                                     std::to_string(n_tokens()) + " held");
}

void KVCache::save_payload(std::vector<uint8_t>&) const {
  fail(ErrorCode::unsupported, "state files: the " + mode() + " cache cannot be saved yet (f16 and f32 can)");
}

void KVCache::load_payload(const uint8_t*, size_t, int) {
  fail(ErrorCode::unsupported, "state files: the " + mode() + " cache cannot be loaded yet (f16 and f32 can)");
}

int KVCache::truncate(int n) {
  check_truncate(n);
  if (n == n_tokens()) return n;
  clear();
  return 0;
}

void HostKVCache::append(int il, int pos0, int n, const Tensor& k, const Tensor& v) {
  if (k.device.type != DeviceType::cpu || v.device.type != DeviceType::cpu)
    fail(ErrorCode::internal, "KV cache: a host cache was handed device tensors");
  append_rows(il, pos0, n, k.f32(), v.f32(), *pool_);
}

void HostKVCache::attend(int il, int pos0, int n, int n_head, const Tensor& q, Tensor& out) {
  if (q.device.type != DeviceType::cpu || out.device.type != DeviceType::cpu)
    fail(ErrorCode::internal, "KV cache: a host cache was handed device tensors");
  attend_rows(il, pos0, n, n_head, q.f32(), out.f32(), *pool_);
}

std::unique_ptr<KVCache> make_host_kv_cache(const KVCacheParams& p, const KVCacheShape& s, ThreadPool& pool) {
  // Defined in engine/kv_cache_compressed.cpp: q8_0, q4_0, turbo2/3/4, eoq2/3/4; it validates
  // the knobs and throws Error(invalid_arg) for unknown modes (listing every known one).
  std::unique_ptr<HostKVCache> make_compressed_kv_cache(const KVCacheParams& params, const KVCacheShape& shape);
  if (s.n_layer <= 0 || s.n_head_kv <= 0 || s.head_dim <= 0 || s.n_ctx <= 0)
    fail(ErrorCode::invalid_arg, "KV cache: invalid shape");
  std::unique_ptr<HostKVCache> c;
  if (p.mode == "f16") c = std::make_unique<ExactKVCache<uint16_t>>(s, "f16");
  else if (p.mode == "f32") c = std::make_unique<ExactKVCache<float>>(s, "f32");
  else c = make_compressed_kv_cache(p, s);
  c->set_pool(&pool);
  return c;
}

}  // namespace eoq
