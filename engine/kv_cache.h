// The KV-cache interface the forward pass talks to. The model never touches cache storage: it
// appends each layer's new keys (after RoPE) and values, then asks the cache for attention.
// Caches are made by a backend (Backend::make_kv_cache) and take tensors on its device. CPU
// implementations: exact caches (f32, f16) in kv_cache_exact.cpp and the compressed caches in
// kv_cache_compressed.cpp, both HostKVCache (host rows, the backend's thread pool); the CUDA
// backend's caches live in engine/cuda/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace eoq {

class ThreadPool;

struct KVCacheShape {
  int n_layer = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ctx = 0;  // capacity in tokens
  int n_head = 0; // query heads reading the cache (0: n_head_kv); sizes the GPU's attention scratch
};

// Cache configuration. `mode` picks the storage; the rest tune the compressed modes
// (see ../shared/spec/kv-compression.md sections 2, 3, 6, 7). -1 means "the mode's default".
struct KVCacheParams {
  std::string mode = "f16";  // f32, f16, q8_0, q4_0, turbo2/3/4, eoq2/3/4, eoq (preset)
  int k_bits = -1;           // residual bits for keys   (turbo/eoq; default: the mode's digit)
  int v_bits = -1;           // residual bits for values
  int rank_cap = -1;         // eoq: max low-rank components per block (default 3 if d <= 64 else 4)
  int v_rank_cap = -1;       // eoq: the cap for values alone (default: rank_cap; 0: values are plain turbo)
  int factor_bits = -1;      // eoq: bits of the low-rank coefficient and basis codes (default 4)
  bool shrink = true;        // eoq: eOptShrink gains (true) or plain truncation (false)
  int block = -1;            // tokens per sealed block (default 256 if head_dim < 128 else 128)
  int ring = -1;             // exact recent tokens kept before sealing (default = block)
  int sinks = 4;             // exact attention-sink tokens at the start
  int boundary_layers = 0;   // first and last n layers at higher precision:
  int boundary_bits = 0;     //   0: stored f16; 1..8: sealed like the others with this many residual bits
  bool norm_correction = true;
  int norm_bits = -1;        // turbo/eoq sealed blocks' row norms: 16 (f16, the default) or 8
                             //   (log-domain bytes, one exponent per block)
  int tail_bits = -1;        // turbo/eoq tokens not yet sealed: 0 (the default) exact f16; 1..8
                             //   TurboQuant codes of that many bits (f16 norm) per token, the
                             //   `window` most recent exact as well; blocks seal from the codes
  int v_tail_bits = -1;      // the tail bits of values alone (default: tail_bits)
  int window = -1;           // with tail_bits: recent tokens read exact (default 16)
  int k_adapt = 0;           // turbo/eoq keys: a block is sealed with k_bits − 1 when that keeps its
                             //   relative error ‖X − X̂‖/‖X‖ at most k_adapt/1000, else k_bits (0: off)
  bool exact_scores = false; // true: sealed-block scores in float (kernels.h scores_codes), not
                             // through int8 q and centroids where the CPU does that faster
  uint64_t seed = 0x5eed;    // rotation seeds derive from (seed, layer, kv head)
};

// One knob by its field name above (bools as 0/1); throws Error(invalid_arg) for unknown keys.
void set_kv_option(KVCacheParams& p, const std::string& key, long long value);
// "eoq2:ring=0:shrink=false" -> mode "eoq2" with those knobs (values: integers, true, false).
KVCacheParams parse_kv_spec(const std::string& spec);
// Mode "eoq", the default operating point chosen by measurement (README, Results): eoq2 with the
// preset's knobs (k_bits 3, v_bits 2, v_rank_cap 0, ring 0, factor_bits 3, norm_bits 8,
// tail_bits 5, v_tail_bits 2; window 16) wherever the caller left the mode's default (-1).
// Other modes are returned unchanged.
KVCacheParams apply_kv_preset(const KVCacheParams& p);

class KVCache {
 public:
  virtual ~KVCache() = default;

  // Called once per forward call, before layer 0's append: checks that positions [pos0, pos0 + n)
  // follow the tokens held and fit n_ctx (Error(internal) otherwise), so that nothing is computed
  // for a call that cannot be stored.
  virtual void begin(int pos0, int n);

  // Store keys and values of tokens at positions [pos0, pos0 + n) for layer il.
  // k, v: F32 [n_head_kv * head_dim, n] on the cache's device. Positions arrive in order: pos0 ==
  // tokens already held. Compressed caches seal blocks here, spread over the pool (one stream
  // per KV head and K/V).
  virtual void append(int il, int pos0, int n, const Tensor& k, const Tensor& v) = 0;

  // Causal attention for n queries at positions pos0.. of layer il: query i attends to cached
  // tokens [0, pos0 + i]. q: F32 [n_head * head_dim, n] (after RoPE, unscaled); out: same shape.
  // Query head h reads KV head h / (n_head / n_head_kv). Scores are scaled by 1/sqrt(head_dim).
  // Compressed caches: the queries of the latest append() see the cache as the decode step at
  // their position would (blocks that append sealed after their position are read exact), so
  // prefilling n tokens equals n decode steps; earlier queries see every block sealed.
  virtual void attend(int il, int pos0, int n, int n_head, const Tensor& q, Tensor& out) = 0;

  virtual void clear() = 0;                // drop every token
  // Keeps the first n tokens (0 <= n <= n_tokens(), Error(invalid_arg) otherwise) and returns how
  // many it really kept: exact caches keep n; a cache that cannot cut at n keeps fewer, the
  // longest prefix whose state equals that of a fresh run over it (a compressed cache: its last
  // kept block boundary), and the caller evaluates the tokens after it again. Default: clear()
  // (keeps 0), always correct.
  virtual int truncate(int n);

  // State files (engine/state_file.h): the cache's own payload for the tokens it holds, appended
  // to out; load_payload replaces what the cache holds with n_tokens tokens from a payload that
  // save_payload of a cache of the same mode, knobs and shape wrote. The payload is untrusted
  // input: anything inconsistent is Error(format), never a crash, and leaves the cache empty.
  // Default (a cache without a serializer yet): Error(unsupported) naming the mode.
  virtual void save_payload(std::vector<uint8_t>& out) const;
  virtual void load_payload(const uint8_t* data, size_t size, int n_tokens);
  virtual int n_tokens() const = 0;        // tokens held (layer 0)
  virtual size_t bytes() const = 0;        // bytes held for the tokens cached now, K and V
  virtual double bits_per_entry() const = 0;  // bytes * 8 / (cached values), fully counted
  virtual std::string mode() const = 0;
  // Statistics as a JSON object (spec section 8 for compressed modes): plain data for Python
  // (json.loads) and the C API. Exact caches report mode, tokens, bytes and bits per entry.
  virtual std::string stats_json() const;
  const KVCacheShape& shape() const { return shape_; }
  // Unique per cache object in the process (a new cache at a freed one's address differs).
  uint64_t serial() const { return serial_; }

 protected:
  KVCacheShape shape_;
  void check_truncate(int n) const;  // Error(invalid_arg) unless 0 <= n <= n_tokens()

 private:
  const uint64_t serial_ = next_serial();
  static uint64_t next_serial();
};

// Bytes of an exact cache's K and V storage, [n_layer][n_head_kv][n_ctx][head_dim] each, allocated
// up front (value_bytes: 2 for f16, 4 for f32).
inline size_t exact_kv_cache_bytes(const KVCacheShape& s, size_t value_bytes) {
  return 2 * (size_t)s.n_layer * s.n_head_kv * (size_t)s.n_ctx * s.head_dim * value_bytes;
}

// A cache over host memory, computing on a thread pool (the CPU backend's caches). The same
// contracts as KVCache, on host rows: k, v [n][n_head_kv][head_dim], q, out [n][n_head][head_dim].
class HostKVCache : public KVCache {
 public:
  void append(int il, int pos0, int n, const Tensor& k, const Tensor& v) final;
  void attend(int il, int pos0, int n, int n_head, const Tensor& q, Tensor& out) final;
  virtual void append_rows(int il, int pos0, int n, const float* k, const float* v, ThreadPool& pool) = 0;
  virtual void attend_rows(int il, int pos0, int n, int n_head, const float* q, float* out, ThreadPool& pool) = 0;
  void set_pool(ThreadPool* pool) { pool_ = pool; }

 private:
  ThreadPool* pool_ = nullptr;
};

// The CPU backend's caches (host memory, computing on `pool`, which must outlive the cache).
// Throws Error(invalid_arg) for an unknown mode (the message lists the known ones).
std::unique_ptr<KVCache> make_host_kv_cache(const KVCacheParams& params, const KVCacheShape& shape, ThreadPool& pool);

}  // namespace eoq
