#include "engine/cuda/kv_cache_cuda.h"

#include <algorithm>

#include "base/error.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/kv_cache.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_kernels.h"

namespace eoq {

namespace {

constexpr int kDecodeTokens = 8;  // queries per call through the decode kernel

class CudaF16KVCache final : public KVCache {
 public:
  CudaF16KVCache(const KVCacheShape& s, cuda::CudaBackendApi& be) : be_(be), k_(cuda::cuda_kernels()) {
    shape_ = s;
    per_layer_ = (size_t)s.n_head_kv * s.n_ctx * s.head_dim;  // f16 values of K (or V) per layer
    storage_ = be.alloc(cuda_f16_kv_cache_bytes(s), "the f16 KV cache");
    // Decode partials for the largest split count any length of this cache gets, for a decode
    // call of up to kDecodeTokens queries of up to n_head_max heads.
    // Allocated here, not in a step: a captured step may not allocate.
    max_split_ = cuda::attention_decode_splits(s.n_head_kv, cuda::decode_len_bucket(s.n_ctx));
    n_head_ = s.n_head > 0 ? s.n_head : s.n_head_kv;
    work_ = be.alloc(k_.attention_decode_work_bytes(kDecodeTokens, n_head_, s.head_dim, max_split_), "attention partials");
  }

  void begin(int pos0, int n) override {
    KVCache::begin(pos0, n);
    n_ = pos0 + n;  // the host's count; the kernels read positions on the device
  }
  void append(int il, int pos0, int n, const Tensor& k, const Tensor& v) override {
    const KVCacheShape& s = shape_;
    cuda::launched(k_.kv_store_f16(k.f32(), v.f32(), n, s.n_head_kv, s.head_dim, s.n_ctx, be_.step_pos0_device(),
                                   layer_k(il), layer_v(il), be_.stream()),
                   "kv_store_f16");
  }
  void attend(int il, int pos0, int n, int n_head, const Tensor& q, Tensor& out) override {
    const KVCacheShape& s = shape_;
    if (n <= kDecodeTokens) {
      // The split count follows the length bucket that keys the step's graph.
      const int n_split = cuda::attention_decode_splits(s.n_head_kv, cuda::decode_len_bucket(pos0 + n));
      if (n_head > n_head_) fail(ErrorCode::internal, "KV cache: more query heads than its shape named");
      cuda::launched(k_.attention_decode_f16(q.f32(), n, n_head, s.n_head_kv, s.head_dim, s.n_ctx, be_.step_pos0_device(),
                                             layer_k(il), layer_v(il), std::min(n_split, max_split_), work_->data(),
                                             out.f32(), be_.stream()),
                     "attention_decode_f16");
    } else {
      cuda::launched(k_.attention_prefill_f16(q.f32(), n, n_head, s.n_head_kv, s.head_dim, s.n_ctx, pos0, layer_k(il),
                                              layer_v(il), out.f32(), be_.stream()),
                     "attention_prefill_f16");
    }
  }

  void clear() override { n_ = 0; }
  int n_tokens() const override { return n_; }
  size_t bytes() const override { return (size_t)2 * shape_.n_layer * shape_.n_head_kv * shape_.head_dim * n_ * 2; }
  double bits_per_entry() const override { return 16.0; }
  std::string mode() const override { return "f16"; }

 private:
  uint16_t* layer_k(int il) const { return static_cast<uint16_t*>(storage_->data()) + (size_t)(2 * il) * per_layer_; }
  uint16_t* layer_v(int il) const { return static_cast<uint16_t*>(storage_->data()) + (size_t)(2 * il + 1) * per_layer_; }

  cuda::CudaBackendApi& be_;
  const cuda::CudaKernels& k_;
  size_t per_layer_ = 0;
  std::unique_ptr<Buffer> storage_;  // per layer: K then V, each [n_head_kv][n_ctx][head_dim]
  std::unique_ptr<Buffer> work_;  // decode partials (max, sum, acc) per token, head and split
  int max_split_ = 1, n_head_ = 0;
  int n_ = 0;
};

}  // namespace

size_t cuda_f16_kv_cache_bytes(const KVCacheShape& s) {
  return (size_t)2 * s.n_layer * s.n_head_kv * (size_t)s.n_ctx * s.head_dim * sizeof(uint16_t);
}

std::unique_ptr<KVCache> make_cuda_f16_kv_cache(const KVCacheShape& shape, cuda::CudaBackendApi& be) {
  if (shape.n_layer <= 0 || shape.n_head_kv <= 0 || shape.head_dim <= 0 || shape.n_ctx <= 0)
    fail(ErrorCode::invalid_arg, "KV cache: invalid shape");
  return std::make_unique<CudaF16KVCache>(shape, be);
}

}  // namespace eoq
