// The f16 KV cache in device memory (the CUDA backend's exact cache).
#pragma once
#include <cstddef>
#include <memory>

namespace eoq {
class KVCache;
struct KVCacheShape;
namespace cuda {
class CudaBackendApi;
}

// K and V as [n_layer][n_head_kv][n_ctx][head_dim] f16 (the CPU cache's layout), allocated whole
// at creation; decode attention split across the cache (flash-decoding) and prefill attention
// on tensor cores. The backend must outlive the cache.
std::unique_ptr<KVCache> make_cuda_f16_kv_cache(const KVCacheShape& shape, cuda::CudaBackendApi& be);
size_t cuda_f16_kv_cache_bytes(const KVCacheShape& shape);  // what it allocates

}  // namespace eoq
