// The f16 KV cache in device memory (the CUDA backend's exact cache).
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

namespace eoq {
class KVCache;
struct KVCacheShape;
struct KVCacheParams;
namespace cuda {
class CudaBackendApi;
}

// K and V as [n_layer][n_head_kv][n_ctx][head_dim] f16 (the CPU cache's layout), allocated whole
// at creation; decode attention split across the cache (flash-decoding) and prefill attention
// on tensor cores. The backend must outlive the cache.
std::unique_ptr<KVCache> make_cuda_f16_kv_cache(const KVCacheShape& shape, cuda::CudaBackendApi& be);
size_t cuda_f16_kv_cache_bytes(const KVCacheShape& shape);  // what it allocates

// The compressed caches on the device (engine/cuda/kv_cache_cuda_codes.cpp): q8_0, q4_0, turbo2/3/4
// with the CPU cache's knobs and codes; throws Error(invalid_arg) naming why for a mode or knob the
// GPU cannot hold (the eoq modes: no on-device eigensolver yet). The backend must outlive the cache.
std::unique_ptr<KVCache> make_cuda_codes_kv_cache(const KVCacheParams& params, const KVCacheShape& shape,
                                                  cuda::CudaBackendApi& be);
size_t cuda_codes_kv_cache_bytes(const KVCacheParams& params, const KVCacheShape& shape);  // what it allocates
// Test hook: layer il of a compressed GPU cache decoded on the host and un-rotated (the CPU's
// Rotation), k and v [n_tokens][n_head_kv][head_dim]; the rows a decode step at the last
// position reads. Throws Error(invalid_arg) for other caches.
void cuda_kv_dequantized(const KVCache& cache, int il, std::vector<float>& k, std::vector<float>& v);

}  // namespace eoq
