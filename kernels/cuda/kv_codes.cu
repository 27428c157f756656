// The compressed KV caches' element work on the device (cuda_kernels.h KVCodesLayer):
//   kv_rotate        Π x or Πᵀ y for query / output rows (the randomized Hadamard of kernels/turboquant.h);
//   kv_append_codes  new K/V rows rotated, then quantized as the mode stores them (q8_0 / q4_0 blocks,
//                    or turbo: exact f16 sinks / ring slot plus the row's TurboQuant codes and norm);
//   kv_fill_f16      rows decoded (or exact rows copied) into an f16 [n_head_kv][n_ctx][head_dim]
//                    scratch for the tensor-core prefill attention.
// Bits: the rotation is the CPU's operation for operation (t = s1·x, the same Walsh–Hadamard
// butterflies, y = (s2·t)·rs: sign flips are exact and each butterfly output is one float add of
// the same operands), the q8_0 / q4_0 rounding is kernels/ref/quants.cpp's and
// kv_cache_compressed.cpp's (products and sums kept apart with __fmul_rn / __fadd_rn so that nvcc
// does not contract them into an FMA the CPU does not do), and the TurboQuant row codec is
// TurboRowCodec::encode's: the squared norm and Σ centroid² as sequential double sums in one
// thread (the CPU's order), x_j · sqrt(d)/ρ in double then rounded to float, nearest centroid by
// counting thresholds <= x. So the codes equal the CPU cache's for the same K/V.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

// In-place unnormalised Walsh–Hadamard of buf[0..HD) by HD threads (thread j owns buf[j]); the
// CPU's fwht: for len = 1, 2, .. the pair (j, j + len) with j & len == 0 becomes (a + b, a - b).
template <int HD>
__device__ __forceinline__ void fwht_smem(float* buf) {
  const int j = threadIdx.x;
#pragma unroll
  for (int len = 1; len < HD; len <<= 1) {
    __syncthreads();
    if ((j & len) == 0) {
      const float a = buf[j], b = buf[j + len];
      buf[j] = __fadd_rn(a, b);
      buf[j + len] = __fsub_rn(a, b);
    }
  }
  __syncthreads();
}

// Π x (inverse: Πᵀ x) of this thread's value x_j; every thread of the block must call it.
// s1, s2: the head's D1, D2 diagonals.
template <int HD>
__device__ __forceinline__ float rotate_value(float x, const float* s1, const float* s2, float rs, bool inverse,
                                              float* buf) {
  const int j = threadIdx.x;
  buf[j] = __fmul_rn(inverse ? s2[j] : s1[j], x);
  fwht_smem<HD>(buf);
  const float y = __fmul_rn(__fmul_rn(inverse ? s1[j] : s2[j], buf[j]), rs);
  __syncthreads();  // buf is reused by the caller
  return y;
}

// One block per (token, head) row, HD threads.
template <int HD>
__global__ void __launch_bounds__(HD) rotate_kernel(const float* x, float* y, int n_head, int G,
                                                    const float* __restrict__ signs, float rs, bool inverse) {
  __shared__ float buf[HD];
  const int64_t row = blockIdx.x;
  const int h = (int)(row % n_head), g = h / G;
  const float v = x[row * HD + threadIdx.x];
  const float* s1 = signs + (int64_t)g * 2 * HD;
  const float r = rotate_value<HD>(v, s1, s1 + HD, rs, inverse, buf);
  y[row * HD + threadIdx.x] = r;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// grid (n_tok, n_head_kv, 2: K then V), HD threads: one cached row each.
template <int HD>
__global__ void __launch_bounds__(HD) append_kernel(KVCodesLayer L, const float* __restrict__ k,
                                                    const float* __restrict__ v, const int32_t* __restrict__ d_pos0,
                                                    const float* __restrict__ signs, float rs, __half* scratch_k,
                                                    __half* scratch_v) {
  __shared__ float buf[HD];
  __shared__ uint8_t code[HD];
  __shared__ double rho_s;
  const int t = blockIdx.x, g = blockIdx.y, which = blockIdx.z, j = threadIdx.x;
  const int hkv = L.n_head_kv;
  float x = (which == 0 ? k : v)[((int64_t)t * hkv + g) * HD + j];
  if (!isfinite(x)) x = 0.0f;  // as the CPU cache: never let NaN/inf reach attention
  const float* s1 = signs + (int64_t)g * 2 * HD;
  const float y = rotate_value<HD>(x, s1, s1 + HD, rs, false, buf);
  const int pos = *d_pos0 + t;
  if (pos < 0 || pos >= L.n_ctx) return;  // block-uniform: no barrier follows for this block

  if (L.mode == KVCodesLayer::q8_0 || L.mode == KVCodesLayer::q4_0) {
    uint8_t* q = static_cast<uint8_t*>(which == 0 ? L.k_codes : L.v_codes);
    uint16_t* sc = which == 0 ? L.k_scale : L.v_scale;
    const int lane = j & 31, blk = j >> 5;
    const int64_t row = (int64_t)g * L.n_ctx + pos;
    if (L.mode == KVCodesLayer::q8_0) {  // d = amax/127, q = round(x/d) half away from zero
      const float amax = warp_max(fabsf(y));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      float r = roundf(__fmul_rn(y, id));
      r = r > 127.0f ? 127.0f : (r < -128.0f ? -128.0f : r);
      reinterpret_cast<int8_t*>(q)[row * HD + j] = (int8_t)r;
      if (lane == 0) sc[row * (HD / 32) + blk] = __half_as_ushort(__float2half_rn(d));
    } else {  // d = m / -8 for m the first value of largest magnitude, q = min(15, trunc(x/d + 8.5))
      float a = fabsf(y);
      int idx = lane;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ao = __shfl_xor_sync(0xffffffffu, a, o);
        const int io = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ao > a || (ao == a && io < idx)) {
          a = ao;
          idx = io;
        }
      }
      const float m = __shfl_sync(0xffffffffu, y, idx);
      const float d = m / -8.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const int qv = min(15, (int)__fadd_rn(__fmul_rn(y, id), 8.5f));
      const int hi = __shfl_down_sync(0xffffffffu, qv, 16);
      if (lane < 16) q[row * (HD / 2) + blk * 16 + lane] = (uint8_t)(qv | (hi << 4));
      if (lane == 0) sc[row * (HD / 32) + blk] = __half_as_ushort(__float2half_rn(d));
    }
    return;
  }

  // turbo: the exact f16 row (clamped to ±65504 as the CPU's ring rows), then its codes.
  const float yc = fminf(fmaxf(y, -65504.0f), 65504.0f);
  const __half h = __float2half_rn(yc);
  __half* scr = which == 0 ? scratch_k : scratch_v;
  if (scr) scr[((int64_t)g * L.n_ctx + pos) * HD + j] = h;
  if (pos < L.sinks) {
    (which == 0 ? L.k_sinks : L.v_sinks)[((int64_t)g * L.sinks + pos) * HD + j] = __half_as_ushort(h);
    return;
  }
  // Only the call's last ring_slots rows go to the ring: an earlier row of a long prefill shares
  // its slot with a later one (the prefill reads the batch's exact rows from the scratch).
  if (t + L.ring_slots >= (int)gridDim.x) {
    const int slot = (pos - L.sinks) % L.ring_slots;
    (which == 0 ? L.k_ring : L.v_ring)[((int64_t)g * L.ring_slots + slot) * HD + j] = __half_as_ushort(h);
  }

  const int bits = which == 0 ? L.k_bits : L.v_bits;
  const float* cb = which == 0 ? L.k_cb : L.v_cb;  // centroids [2^bits], thresholds [2^bits - 1]
  const int nlev = 1 << bits;
  const float xf = __half2float(h);  // the CPU seals the ring's f16 rows
  buf[j] = xf;
  __syncthreads();
  if (j == 0) {
    double n2 = 0;
    for (int i = 0; i < HD; i++) n2 += (double)buf[i] * (double)buf[i];
    rho_s = sqrt(n2);
  }
  __syncthreads();
  const double rho = rho_s;
  const bool zero = !(rho > 0) || !isfinite(rho);
  int c = 0;
  if (!zero) {
    const float xs = (float)((double)xf * (sqrt((double)HD) / rho));
    for (int i = 0; i < nlev - 1; i++) c += cb[nlev + i] <= xs;
  }
  code[j] = (uint8_t)c;
  __syncthreads();
  const int64_t prow = (int64_t)g * (L.n_ctx - L.sinks) + (pos - L.sinks);
  const int cbytes = (HD * bits + 7) / 8;
  uint8_t* out = static_cast<uint8_t*>(which == 0 ? L.k_codes : L.v_codes) + prow * cbytes;
  if (j < cbytes) {  // byte j of the packed row: bits [8j, 8j + 8) of the little-endian field stream
    uint32_t w = 0;
    for (int b = 0; b < 8; b++) {
      const int gbit = 8 * j + b, f = gbit / bits;
      if (f < HD) w |= (uint32_t)((code[f] >> (gbit % bits)) & 1) << b;
    }
    out[j] = (uint8_t)w;
  }
  if (j == 0) {
    double stored = 0;
    if (!zero) {
      double c2 = 0;
      for (int i = 0; i < HD; i++) {
        const double cj = cb[code[i]];
        c2 += cj * cj;
      }
      stored = rho;
      if (L.norm_correction && c2 > 0) stored = rho / sqrt(c2 / HD);
    }
    (which == 0 ? L.k_scale : L.v_scale)[prow] = __half_as_ushort(__float2half_rn((float)stored));
  }
}

// grid (ceil(n / (kFillThreads / HD)), n_head_kv, 2), kFillThreads threads: HD per row.
constexpr int kFillThreads = 256;

template <int HD>
__global__ void __launch_bounds__(kFillThreads) fill_kernel(KVCodesLayer L, int p_lo, int p_hi, bool from_codes,
                                                            __half* scratch_k, __half* scratch_v) {
  constexpr int RPB = kFillThreads / HD;
  const int j = threadIdx.x % HD;
  const int pos = p_lo + blockIdx.x * RPB + threadIdx.x / HD;
  const int g = blockIdx.y, which = blockIdx.z;
  if (pos >= p_hi) return;
  __half* dst = (which == 0 ? scratch_k : scratch_v) + ((int64_t)g * L.n_ctx + pos) * HD + j;
  const uint16_t* sc = which == 0 ? L.k_scale : L.v_scale;
  if (L.mode == KVCodesLayer::q8_0 || L.mode == KVCodesLayer::q4_0) {
    const uint8_t* q = static_cast<const uint8_t*>(which == 0 ? L.k_codes : L.v_codes);
    const int64_t row = (int64_t)g * L.n_ctx + pos;
    const float d = __half2float(__ushort_as_half(sc[row * (HD / 32) + j / 32]));
    int qi;
    if (L.mode == KVCodesLayer::q8_0) {
      qi = reinterpret_cast<const int8_t*>(q)[row * HD + j];
    } else {
      const int i = j & 31;
      const uint8_t byte = q[row * (HD / 2) + (j >> 5) * 16 + (i & 15)];
      qi = (int)(i < 16 ? byte & 0xf : byte >> 4) - 8;
    }
    *dst = __float2half_rn(d * (float)qi);
    return;
  }
  if (!from_codes) {
    const uint16_t* src = pos < L.sinks
        ? (which == 0 ? L.k_sinks : L.v_sinks) + ((int64_t)g * L.sinks + pos) * HD
        : (which == 0 ? L.k_ring : L.v_ring) + ((int64_t)g * L.ring_slots + (pos - L.sinks) % L.ring_slots) * HD;
    *dst = __ushort_as_half(src[j]);
    return;
  }
  const int bits = which == 0 ? L.k_bits : L.v_bits;
  const int cbytes = (HD * bits + 7) / 8;
  const int64_t prow = (int64_t)g * (L.n_ctx - L.sinks) + (pos - L.sinks);
  const uint8_t* codes = static_cast<const uint8_t*>(which == 0 ? L.k_codes : L.v_codes) + prow * cbytes;
  const int bit = j * bits;
  const uint32_t w = (uint32_t)codes[bit >> 3] | ((bit >> 3) + 1 < cbytes ? (uint32_t)codes[(bit >> 3) + 1] << 8 : 0u);
  const int c = (int)((w >> (bit & 7)) & ((1u << bits) - 1));
  const float s = __half2float(__ushort_as_half(sc[prow])) / sqrtf((float)HD);  // TurboRowCodec::decode
  *dst = __float2half_rn(s * (which == 0 ? L.k_cb : L.v_cb)[c]);
}

bool good_layer(const KVCodesLayer& L) {
  if (L.head_dim != 64 && L.head_dim != 128) return false;
  if (L.n_head_kv <= 0 || L.n_head_kv > 65535 || L.n_ctx <= 0 || !L.k_codes || !L.v_codes || !L.k_scale || !L.v_scale)
    return false;
  if (L.mode == KVCodesLayer::turbo) {
    if (L.sinks < 0 || L.sinks >= L.n_ctx || L.ring_slots <= 0 || !L.k_ring || !L.v_ring || !L.k_cb || !L.v_cb)
      return false;
    if (L.sinks > 0 && (!L.k_sinks || !L.v_sinks)) return false;
    if (L.k_bits < 1 || L.k_bits > 4 || L.v_bits < 1 || L.v_bits > 4 || L.block <= 0 || L.window < 0) return false;
    return true;
  }
  return L.mode == KVCodesLayer::q8_0 || L.mode == KVCodesLayer::q4_0;
}

bool kv_rotate(const float* x, float* y, int n_tok, int n_head, int n_head_kv, int head_dim, const float* signs,
               float rs, bool inverse, cudaStream_t s) {
  if (n_tok < 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv != 0 || !x || !y || !signs) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  const int64_t rows = (int64_t)n_tok * n_head;
  if (rows == 0) return true;
  if (rows > 0x7fffffff) return false;
  const int G = n_head / n_head_kv;
  if (head_dim == 64) rotate_kernel<64><<<(unsigned)rows, 64, 0, s>>>(x, y, n_head, G, signs, rs, inverse);
  else rotate_kernel<128><<<(unsigned)rows, 128, 0, s>>>(x, y, n_head, G, signs, rs, inverse);
  return true;
}

bool kv_append_codes(const KVCodesLayer& L, const float* k, const float* v, int n_tok, const int32_t* d_pos0,
                     const float* signs, float rs, void* scratch_k, void* scratch_v, cudaStream_t s) {
  if (!good_layer(L) || n_tok < 0 || n_tok > 0x7fffffff || !k || !v || !d_pos0 || !signs) return false;
  if (n_tok == 0) return true;
  const dim3 grid((unsigned)n_tok, (unsigned)L.n_head_kv, 2);
  auto* sk = static_cast<__half*>(scratch_k);
  auto* sv = static_cast<__half*>(scratch_v);
  if (!sk || !sv) sk = sv = nullptr;
  if (L.head_dim == 64) append_kernel<64><<<grid, 64, 0, s>>>(L, k, v, d_pos0, signs, rs, sk, sv);
  else append_kernel<128><<<grid, 128, 0, s>>>(L, k, v, d_pos0, signs, rs, sk, sv);
  return true;
}

bool kv_fill_f16(const KVCodesLayer& L, int p_lo, int p_hi, bool from_codes, void* scratch_k, void* scratch_v,
                 cudaStream_t s) {
  if (!good_layer(L) || !scratch_k || !scratch_v || p_lo < 0 || p_hi > L.n_ctx) return false;
  if (L.mode == KVCodesLayer::turbo && from_codes && p_lo < L.sinks && p_lo < p_hi) return false;
  if (p_lo >= p_hi) return true;
  const int rpb = kFillThreads / L.head_dim;
  const dim3 grid((unsigned)((p_hi - p_lo + rpb - 1) / rpb), (unsigned)L.n_head_kv, 2);
  auto* sk = static_cast<__half*>(scratch_k);
  auto* sv = static_cast<__half*>(scratch_v);
  if (L.head_dim == 64) fill_kernel<64><<<grid, kFillThreads, 0, s>>>(L, p_lo, p_hi, from_codes, sk, sv);
  else fill_kernel<128><<<grid, kFillThreads, 0, s>>>(L, p_lo, p_hi, from_codes, sk, sv);
  return true;
}

}  // namespace

void register_kv_codes(CudaKernels& t) {
  t.kv_rotate = kv_rotate;
  t.kv_append_codes = kv_append_codes;
  t.kv_fill_f16 = kv_fill_f16;
}

}  // namespace eoq::cuda
