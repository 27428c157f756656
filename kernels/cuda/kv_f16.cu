// kv_store_f16: new K/V rows (float) into one layer's f16 cache.
//   k, v:              [n_tok][n_head_kv][head_dim] float (k after RoPE)
//   cache_k, cache_v:  [n_head_kv][n_ctx][head_dim] f16; token t goes to position *d_pos0 + t
// Every value is rounded to the nearest f16, ties to even (__float2half_rn: overflow gives inf,
// NaN stays NaN), the same bits as NumPy's astype(np.float16) and base/fp16.h fp32_to_fp16.
// The grid depends on n_tok, n_head_kv and head_dim only (the position is read on the device), so
// the launch can sit in a captured decode graph. Positions outside [0, n_ctx) are skipped (the
// host checks the context size before the step; this only keeps a bad step inside the arrays).
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per W consecutive values of one (token, KV head) row, for K and for V. W = 4 reads a
// float4 from k and v and writes 8 bytes to each cache (head_dim % 4 == 0, aligned pointers);
// W = 1 is the plain fallback for any other shape.
template <int W>
__global__ void __launch_bounds__(kThreads)
kv_store_kernel(const float* __restrict__ k, const float* __restrict__ v, int n_tok, int n_head_kv, int head_dim,
                int n_ctx, const int32_t* __restrict__ d_pos0, __half* __restrict__ cache_k,
                __half* __restrict__ cache_v) {
  const int64_t n_groups = (int64_t)n_tok * n_head_kv * head_dim / W;
  const int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (i >= n_groups) return;
  const int64_t e = i * W;  // flat index into k / v
  const int d = (int)(e % head_dim);
  const int64_t row = e / head_dim;  // t * n_head_kv + g
  const int g = (int)(row % n_head_kv);
  const int t = (int)(row / n_head_kv);
  const int pos = *d_pos0 + t;
  if (pos < 0 || pos >= n_ctx) return;
  const int64_t dst = ((int64_t)g * n_ctx + pos) * head_dim + d;
  if constexpr (W == 4) {
    const float4 kk = *reinterpret_cast<const float4*>(k + e);
    const float4 vv = *reinterpret_cast<const float4*>(v + e);
    const __half2 k01 = __halves2half2(__float2half_rn(kk.x), __float2half_rn(kk.y));
    const __half2 k23 = __halves2half2(__float2half_rn(kk.z), __float2half_rn(kk.w));
    const __half2 v01 = __halves2half2(__float2half_rn(vv.x), __float2half_rn(vv.y));
    const __half2 v23 = __halves2half2(__float2half_rn(vv.z), __float2half_rn(vv.w));
    uint2 ko, vo;
    ko.x = *reinterpret_cast<const uint32_t*>(&k01);
    ko.y = *reinterpret_cast<const uint32_t*>(&k23);
    vo.x = *reinterpret_cast<const uint32_t*>(&v01);
    vo.y = *reinterpret_cast<const uint32_t*>(&v23);
    *reinterpret_cast<uint2*>(cache_k + dst) = ko;
    *reinterpret_cast<uint2*>(cache_v + dst) = vo;
  } else {
    cache_k[dst] = __float2half_rn(k[e]);
    cache_v[dst] = __float2half_rn(v[e]);
  }
}

bool aligned(const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

bool kv_store_f16(const float* k, const float* v, int n_tok, int n_head_kv, int head_dim, int n_ctx,
                  const int32_t* d_pos0, void* cache_k, void* cache_v, cudaStream_t s) {
  if (n_tok < 0 || n_head_kv <= 0 || head_dim <= 0 || n_ctx <= 0) return false;
  if (!k || !v || !d_pos0 || !cache_k || !cache_v) return false;
  if (n_tok == 0) return true;
  const int64_t n = (int64_t)n_tok * n_head_kv * head_dim;
  const bool vec = head_dim % 4 == 0 && aligned(k, 16) && aligned(v, 16) && aligned(cache_k, 8) && aligned(cache_v, 8);
  const int w = vec ? 4 : 1;
  const int64_t blocks = (n / w + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return false;
  auto* ck = static_cast<__half*>(cache_k);
  auto* cv = static_cast<__half*>(cache_v);
  if (vec)
    kv_store_kernel<4><<<(unsigned)blocks, kThreads, 0, s>>>(k, v, n_tok, n_head_kv, head_dim, n_ctx, d_pos0, ck, cv);
  else
    kv_store_kernel<1><<<(unsigned)blocks, kThreads, 0, s>>>(k, v, n_tok, n_head_kv, head_dim, n_ctx, d_pos0, ck, cv);
  return true;
}

}  // namespace

void register_kv_f16(CudaKernels& t) { t.kv_store_f16 = kv_store_f16; }

}  // namespace eoq::cuda
