// The decode products of the formats most files use for their big matrices (Q4_0, Q8_0) in a
// layout repacked at load time for wide, aligned loads: the GGUF blocks' quants and scales split
// into two planes (structure of arrays), so that a warp reads one row as consecutive 16-byte
// pieces instead of 18- or 34-byte blocks at 2-byte offsets.
//
//   repacked matrix [n_rows][nb = n_cols/32 blocks]:  qs plane  n_rows*nb*QB bytes (QB = 16 for
//   Q4_0: byte j = value j | value j+16 << 4, as GGUF; 32 for Q8_0: int8), row r block b at
//   (r*nb + b)*QB;  then the d plane, n_rows*nb f16 scales.  Same size as the GGUF bytes.
//
// Activations (quantize_q8s): per token row of n values, qs int8 [n], then per block of 32 its
// scale d (float: the f16-rounded amax/127, as the CPU's Q8_0 stores it) and its quant sum
// (int32), with the CPU's rounding (q = round_half_even(x * 127/amax)). Dots are exact integers:
//   Q4_0: d_w d_a (Σ q_w q_a − 8 Σ q_a),   Q8_0: d_w d_a Σ q_w q_a   (q_w of Q4_0 unsigned 0..15)
// which is the CPU's Q4_0·Q8_0 / Q8_0·Q8_0 arithmetic up to float rounding of the block sums.
//
// The product kernel: one warp per row, its lanes on consecutive blocks (each lane one 16-byte
// piece of Q4_0 or two of Q8_0 per block, kUnroll blocks in flight), up to 3 matrices of the same
// input in one launch (attention's Q, K, V), and SwiGLU fused for the FFN's gate and up (the warp
// computes both rows and writes silu(g)·u).
#include <algorithm>
#include <cstdint>

#include <cuda_fp16.h>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {

namespace {

constexpr int kWarps = 4;   // rows per CTA
constexpr int kUnroll = 4;  // blocks per lane in flight

template <GGMLType T>
struct Fmt;
template <>
struct Fmt<GGMLType::Q4_0> {
  static constexpr int QB = 16;      // quant bytes per block
  static constexpr int kGguf = 18;   // GGUF block: f16 d, 16 bytes of nibbles
};
template <>
struct Fmt<GGMLType::Q8_0> {
  static constexpr int QB = 32;
  static constexpr int kGguf = 34;   // f16 d, 32 int8
};


__device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }

// ---- repacking -------------------------------------------------------------------------------

// One thread per block: GGUF row bytes -> the two planes.
template <GGMLType T>
__global__ void repack_kernel(const uint8_t* __restrict__ src, size_t row_bytes, int64_t nb, int64_t n_rows,
                              uint8_t* __restrict__ qs, uint16_t* __restrict__ d) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= nb * n_rows) return;
  const int64_t r = i / nb, b = i % nb;
  const uint8_t* blk = src + r * row_bytes + b * Fmt<T>::kGguf;  // 2-byte aligned
  d[i] = (uint16_t)(blk[0] | (blk[1] << 8));
  uint8_t* q = qs + i * Fmt<T>::QB;  // 16-byte aligned
  for (int j = 0; j < Fmt<T>::QB; j++) q[j] = blk[2 + j];
}

// Q6_K (210-byte super-blocks, 2-byte aligned in a row) in four planes over the N = n_rows·n_cols/256
// super-blocks of the matrix: ql [N][128], qh [N][64], scales [N][16] (int8), d [N] (f16); each
// plane 16-byte aligned, the whole the GGUF size. One thread per super-block.
__global__ void repack_q6k_kernel(const uint8_t* __restrict__ src, size_t row_bytes, int64_t nsb, int64_t n_rows,
                                  uint8_t* __restrict__ dst) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t N = nsb * n_rows;
  if (i >= N) return;
  const uint8_t* blk = src + (i / nsb) * row_bytes + (i % nsb) * 210;
  for (int k = 0; k < 128; k++) dst[i * 128 + k] = blk[k];
  for (int k = 0; k < 64; k++) dst[N * 128 + i * 64 + k] = blk[128 + k];
  for (int k = 0; k < 16; k++) dst[N * 192 + i * 16 + k] = blk[192 + k];
  dst[N * 208 + i * 2] = blk[208];
  dst[N * 208 + i * 2 + 1] = blk[209];
}

bool repack_soa(GGMLType type, const void* src, size_t row_bytes, int64_t n_cols, int64_t n_rows, void* dst,
                cudaStream_t s) {
  if (n_cols % 32 || ((uintptr_t)dst & 15)) return false;
  if (type == GGMLType::Q6_K) {
    if (n_cols % 256) return false;
    const int64_t N = n_cols / 256 * n_rows;
    if (N) repack_q6k_kernel<<<(unsigned)((N + 127) / 128), 128, 0, s>>>(static_cast<const uint8_t*>(src), row_bytes,
                                                                     n_cols / 256, n_rows, static_cast<uint8_t*>(dst));
    return true;
  }
  const int64_t nb = n_cols / 32, n = nb * n_rows;
  const unsigned grid = (unsigned)((n + 255) / 256);
  uint8_t* out = static_cast<uint8_t*>(dst);
  if (n == 0) return true;
  if (type == GGMLType::Q4_0) {
    repack_kernel<GGMLType::Q4_0><<<grid, 256, 0, s>>>(static_cast<const uint8_t*>(src), row_bytes, nb, n_rows, out,
                                                     reinterpret_cast<uint16_t*>(out + n * 16));
  } else if (type == GGMLType::Q8_0) {
    repack_kernel<GGMLType::Q8_0><<<grid, 256, 0, s>>>(static_cast<const uint8_t*>(src), row_bytes, nb, n_rows, out,
                                                     reinterpret_cast<uint16_t*>(out + n * 32));
  } else {
    return false;
  }
  return true;
}

// ---- activations -------------------------------------------------------------------------------

// Bytes of one token's row of n values in the q8s format.
__host__ __device__ constexpr int64_t q8s_row_bytes(int64_t n) { return n + n / 4; }

// One warp per block of 32 values (lane l: value l). out_f32 (optional) receives v as given.
__device__ __forceinline__ void quantize_block(float v, int lane, int8_t* qs, float* dp, int* sp) {
  float amax = fmaxf(0.0f, fabsf(v));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  const float r = rintf(v * id);
  const int q = !(r >= -128.0f) ? -128 : (r > 127.0f ? 127 : (int)r);
  int sum = q;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  qs[lane] = (int8_t)q;
  if (lane == 0) {
    *dp = __half2float(__float2half_rn(d));
    *sp = sum;
  }
}

// Token row pointers of the q8s layout: qs at base, d at base + n, sums after the scales.
struct Q8sRow {
  int8_t* qs;
  float* d;
  int* s;
  __device__ Q8sRow(uint8_t* base, int64_t n)
      : qs(reinterpret_cast<int8_t*>(base)), d(reinterpret_cast<float*>(base + n)),
        s(reinterpret_cast<int*>(base + n + n / 32 * 4)) {}
};

__global__ void quantize_q8s_kernel(const float* __restrict__ x, int64_t n, int64_t n_tok, uint8_t* __restrict__ xq) {
  const int lane = threadIdx.x & 31;
  const int64_t nb = n / 32;
  const int64_t blk = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  if (blk >= nb * n_tok) return;
  const int64_t t = blk / nb, b = blk % nb;
  Q8sRow row(xq + t * q8s_row_bytes(n), n);
  quantize_block(x[t * n + b * 32 + lane], lane, row.qs + b * 32, row.d + b, row.s + b);
}

bool quantize_q8s(const float* x, int64_t n, int64_t n_tok, void* xq, cudaStream_t s) {
  if (n % 128 || ((uintptr_t)xq & 15)) return false;  // n % 128: each token row stays 16-byte aligned
  const int64_t blocks = n / 32 * n_tok;
  if (blocks == 0) return true;
  quantize_q8s_kernel<<<(unsigned)((blocks + 7) / 8), 256, 0, s>>>(x, n, n_tok, static_cast<uint8_t*>(xq));
  return true;
}

// out[t] = x[t] / sqrt(mean(x[t]²) + eps) * w, and out[t] quantized to q8s: one CTA per token,
// each thread holding kChunks float4 chunks of the row in registers (chunk k = thread + j*blockDim
// covers values 4k..4k+3, so a block of 32 values is 8 consecutive lanes: its max and quant sum
// are 3-step shuffles), squares summed in double as the CPU and norm.cu do.
constexpr int kNormChunks = 4;

__global__ void __launch_bounds__(1024) rms_norm_q8s_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                                          float* out, int64_t n, float eps, uint8_t* __restrict__ xq) {
  const int64_t t = blockIdx.x;
  const int nc = (int)(n / 4);  // chunks in the row
  const float4* xr = reinterpret_cast<const float4*>(x + t * n);
  float4 v[kNormChunks];
  double ss = 0;
#pragma unroll
  for (int j = 0; j < kNormChunks; j++) {
    const int k = threadIdx.x + j * blockDim.x;
    v[j] = k < nc ? xr[k] : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += (double)(v[j].x * v[j].x) + (double)(v[j].y * v[j].y) + (double)(v[j].z * v[j].z) + (double)(v[j].w * v[j].w);
  }
  __shared__ double part[32];
  __shared__ float scale_s;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double p = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
    if (threadIdx.x == 0) scale_s = 1.0f / sqrtf((float)(p / (double)n) + eps);
  }
  __syncthreads();
  const float scale = scale_s;
  Q8sRow row(xq + t * q8s_row_bytes(n), n);
  const float4* wr = reinterpret_cast<const float4*>(w);
  float4* outr = reinterpret_cast<float4*>(out + t * n);
#pragma unroll
  for (int j = 0; j < kNormChunks; j++) {
    const int k = threadIdx.x + j * blockDim.x;
    if (j * (int)blockDim.x >= nc) break;  // uniform across the block
    float4 y = make_float4(0.f, 0.f, 0.f, 0.f);
    if (k < nc) {
      const float4 ww = wr[k];
      y = make_float4(v[j].x * scale * ww.x, v[j].y * scale * ww.y, v[j].z * scale * ww.z, v[j].w * scale * ww.w);
      outr[k] = y;
    }
    // the block of 32 values: 8 lanes (k / 8); nc is a multiple of 32, so groups are whole
    float amax = fmaxf(fmaxf(fabsf(y.x), fabsf(y.y)), fmaxf(fabsf(y.z), fabsf(y.w)));
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const float f[4] = {y.x, y.y, y.z, y.w};
    int q[4], sum = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float r = rintf(f[i] * id);
      q[i] = !(r >= -128.0f) ? -128 : (r > 127.0f ? 127 : (int)r);
      sum += q[i];
    }
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (k < nc) {
      reinterpret_cast<uint32_t*>(row.qs)[k] =
          (uint32_t)(uint8_t)q[0] | (uint32_t)(uint8_t)q[1] << 8 | (uint32_t)(uint8_t)q[2] << 16 | (uint32_t)(uint8_t)q[3] << 24;
      if ((k & 7) == 0) {
        row.d[k / 8] = __half2float(__float2half_rn(d));
        row.s[k / 8] = sum;
      }
    }
  }
}

bool rms_norm_q8s(const float* x, const float* w, float* out, int64_t n, int64_t n_tok, float eps, void* xq,
                  cudaStream_t s) {
  if (n_tok == 0) return true;
  // the row in registers: at most kNormChunks float4 per thread of 1024
  if (n % 128 || n > 4 * 1024 * kNormChunks || ((uintptr_t)xq & 15) || ((uintptr_t)x & 15) || ((uintptr_t)w & 15) ||
      ((uintptr_t)out & 15) || n_tok < 0)
    return false;
  const int nc = (int)(n / 4);
  const int threads = std::min(1024, (nc + 31) / 32 * 32);  // one chunk a thread up to n = 4096
  rms_norm_q8s_kernel<<<(unsigned)n_tok, threads, 0, s>>>(x, w, out, n, eps, static_cast<uint8_t*>(xq));
  return true;
}

// ---- the product -------------------------------------------------------------------------------

struct Job {
  const uint8_t* qs;   // the matrix's qs plane
  const __half* d;     // its d plane
  float* y;
  int64_t n_rows, ldy;
  int row0;            // first global row of this job in the grid
};
struct Jobs {
  Job j[3];
  int n;
};

// Σ over one block of (weight quants) x (activation quants) in integers; wq: the block's quant
// words (4 for Q4_0, 8 for Q8_0), aq: the activation's 8 words.
template <GGMLType T>
__device__ __forceinline__ int block_dot(const uint32_t* wq, const int* aq);
template <>
__device__ __forceinline__ int block_dot<GGMLType::Q4_0>(const uint32_t* wq, const int* aq) {
  int s = 0;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    s = dp4a((int)(wq[k] & 0x0f0f0f0fu), aq[k], s);
    s = dp4a((int)((wq[k] >> 4) & 0x0f0f0f0fu), aq[k + 4], s);
  }
  return s;
}
template <>
__device__ __forceinline__ int block_dot<GGMLType::Q8_0>(const uint32_t* wq, const int* aq) {
  int s = 0;
#pragma unroll
  for (int k = 0; k < 8; k++) s = dp4a((int)wq[k], aq[k], s);
  return s;
}

template <GGMLType T>
__device__ __forceinline__ void load_w(const uint8_t* qs, int64_t blk, uint32_t* wq) {
  const uint4* p = reinterpret_cast<const uint4*>(qs + blk * Fmt<T>::QB);
  const uint4 a = __ldcs(p);  // streamed: read once
  wq[0] = a.x, wq[1] = a.y, wq[2] = a.z, wq[3] = a.w;
  if constexpr (Fmt<T>::QB == 32) {
    const uint4 b = __ldcs(p + 1);
    wq[4] = b.x, wq[5] = b.y, wq[6] = b.z, wq[7] = b.w;
  }
}

// Row r's dot with NT tokens' activations (tokens >= n_tok are skipped), the warp's lanes on
// blocks lane, lane + 32, ...; result in lane 0 of acc[t].
// Q4_K in its GGUF layout (super-block: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and
// mins, 128 bytes of nibbles; x = d·sc_s·q − dmin·m_s for sub-block s of 32), rows of whole,
// 16-byte aligned super-blocks. Eight lanes per super-block (four super-blocks per warp step):
// lane j holds quant bytes 16j..16j+15 = values 16(j%2)..+15 of sub-blocks 2(j/2) (low nibbles)
// and 2(j/2)+1 (high nibbles), and dots them with the same halves of the activation blocks; the
// minimum terms dmin·m_s·d_a·Σq_a use the q8s block sums, counted by the lanes of even j.
// Byte k (0..11) of the scales, held in the header's words y, z, w (registers, not memory).
__device__ __forceinline__ int q4k_byte(const uint4& hdr, int k) {
  const uint32_t wd = k < 4 ? hdr.y : (k < 8 ? hdr.z : hdr.w);
  return (int)((wd >> (8 * (k & 3))) & 0xff);
}

// Sub-block s's 6-bit scale and min (GGML's get_scale_min_k4).
__device__ __forceinline__ void q4k_scale_min(const uint4& hdr, int s, int& scale, int& mn) {
  if (s < 4) {
    scale = q4k_byte(hdr, s) & 63;
    mn = q4k_byte(hdr, s + 4) & 63;
  } else {
    scale = (q4k_byte(hdr, s + 4) & 15) | ((q4k_byte(hdr, s - 4) >> 6) << 4);
    mn = (q4k_byte(hdr, s + 4) >> 4) | ((q4k_byte(hdr, s) >> 6) << 4);
  }
}

template <int NT>
__device__ __forceinline__ void row_dot_q4k(const Job& J, int64_t r, int64_t nsb, const uint8_t* __restrict__ xq,
                                            int64_t xq_row, int n_tok, int lane, float* acc) {
  constexpr int U = 2;  // super-block steps in flight
  const uint8_t* row = J.qs + r * nsb * 144;
  const int j = lane & 7, p = j >> 1, h = j & 1;
  const int64_t n = nsb * 256;
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  for (int64_t sb0 = lane >> 3; sb0 < nsb; sb0 += 4 * U) {
    uint4 hdr[U], q[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t sb = sb0 + 4 * u;
      if (sb < nsb) {
        hdr[u] = __ldg(reinterpret_cast<const uint4*>(row + sb * 144));  // d, dmin, scales[12]
        q[u] = __ldcs(reinterpret_cast<const uint4*>(row + sb * 144 + 16) + j);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t sb = sb0 + 4 * u;
      if (sb >= nsb) break;
      const uint32_t h0 = hdr[u].x;
      const float d = __half2float(__ushort_as_half((unsigned short)(h0 & 0xffff)));
      const float dmin = __half2float(__ushort_as_half((unsigned short)(h0 >> 16)));
      int sc_lo, m_lo, sc_hi, m_hi;
      q4k_scale_min(hdr[u], 2 * p, sc_lo, m_lo);
      q4k_scale_min(hdr[u], 2 * p + 1, sc_hi, m_hi);
      const uint32_t w[4] = {q[u].x, q[u].y, q[u].z, q[u].w};
      const int64_t b_lo = sb * 8 + 2 * p, b_hi = b_lo + 1;  // activation blocks of 32
#pragma unroll
      for (int t = 0; t < NT; t++) {
        if (t >= n_tok) break;
        const uint8_t* a = xq + t * xq_row;
        const int4 al = __ldg(reinterpret_cast<const int4*>(a + b_lo * 32 + 16 * h));
        const int4 ah = __ldg(reinterpret_cast<const int4*>(a + b_hi * 32 + 16 * h));
        const int alw[4] = {al.x, al.y, al.z, al.w}, ahw[4] = {ah.x, ah.y, ah.z, ah.w};
        int dl = 0, dh = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
          dl = dp4a((int)(w[k] & 0x0f0f0f0fu), alw[k], dl);
          dh = dp4a((int)((w[k] >> 4) & 0x0f0f0f0fu), ahw[k], dh);
        }
        const float* da = reinterpret_cast<const float*>(a + n);
        const float da_lo = __ldg(da + b_lo), da_hi = __ldg(da + b_hi);
        float v = d * (da_lo * (float)(sc_lo * dl) + da_hi * (float)(sc_hi * dh));
        if (h == 0) {
          const int* sa = reinterpret_cast<const int*>(a + n + n / 32 * 4);
          v -= dmin * (da_lo * (float)(m_lo * __ldg(sa + b_lo)) + da_hi * (float)(m_hi * __ldg(sa + b_hi)));
        }
        acc[t] += v;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
  }
}

// Q6_K repacked (repack_q6k_kernel's planes): x = d·sc_s·(q − 32), q = 4 low bits from ql and 2
// high bits from qh, sub-blocks of 16 (GGML's layout: in half hf of 128 values, value l of quarter
// k (32 values) takes ql[64hf + l + 32(k&1)] (low nibble for k < 2, high for k >= 2), bits 2k of
// qh[32hf + l] and scale sc[8hf + l/16 + 2k]). Eight lanes per super-block: lane j holds ql bytes
// 64hf + 16(j%4) .. +15 (hf = j/4) = 16 values of two quarters A (k = 0 or 1) and A + 2, with the
// matching 16 qh bytes; the 6-bit quants minus 32 become signed bytes for signed dp4a dots.
__device__ __forceinline__ int sbyte(const uint4& v, int k) {  // signed byte k (0..15) of v
  const uint32_t wd = k < 4 ? v.x : (k < 8 ? v.y : (k < 12 ? v.z : v.w));
  return (int)(int8_t)((wd >> (8 * (k & 3))) & 0xff);
}

template <int NT>
__device__ __forceinline__ void row_dot_q6k(const Job& J, int64_t r, int64_t nsb, const uint8_t* __restrict__ xq,
                                            int64_t xq_row, int n_tok, int lane, float* acc) {
  constexpr int U = 2;
  const int64_t N = J.n_rows * nsb;
  const uint8_t* ql = J.qs;
  const uint8_t* qh = ql + N * 128;
  const uint8_t* scp = ql + N * 192;
  const __half* dp = reinterpret_cast<const __half*>(ql + N * 208);
  const int j = lane & 7, hf = j >> 2, l0 = 16 * (j & 3), A = (j & 3) >> 1, lm = l0 & 31, shA = 2 * A;
  const int sA = 8 * hf + lm / 16 + 2 * A;  // scales of quarters A and A + 2: sA, sA + 4
  const int64_t n = nsb * 256;
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  for (int64_t sb0 = lane >> 3; sb0 < nsb; sb0 += 4 * U) {
    uint4 qlv[U], qhv[U], scv[U];
    float d[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t sb = sb0 + 4 * u;
      if (sb < nsb) {
        const int64_t i = r * nsb + sb;
        qlv[u] = __ldcs(reinterpret_cast<const uint4*>(ql + i * 128 + 64 * hf + l0));
        qhv[u] = __ldcs(reinterpret_cast<const uint4*>(qh + i * 64 + 32 * hf + lm));
        scv[u] = __ldg(reinterpret_cast<const uint4*>(scp + i * 16));
        d[u] = __half2float(dp[i]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t sb = sb0 + 4 * u;
      if (sb >= nsb) break;
      const uint32_t lw[4] = {qlv[u].x, qlv[u].y, qlv[u].z, qlv[u].w};
      const uint32_t hw[4] = {qhv[u].x, qhv[u].y, qhv[u].z, qhv[u].w};
      int wa[4], wb[4];
#pragma unroll
      for (int k = 0; k < 4; k++) {
        const uint32_t a = (lw[k] & 0x0f0f0f0fu) | (((hw[k] >> shA) & 0x03030303u) << 4);
        const uint32_t b = ((lw[k] >> 4) & 0x0f0f0f0fu) | (((hw[k] >> (shA + 4)) & 0x03030303u) << 4);
        wa[k] = (int)__vsub4(a, 0x20202020u);
        wb[k] = (int)__vsub4(b, 0x20202020u);
      }
      const float scA = (float)sbyte(scv[u], sA), scB = (float)sbyte(scv[u], sA + 4);
      const int64_t bA = sb * 8 + 4 * hf + A, bB = bA + 2;  // activation blocks of 32
#pragma unroll
      for (int t = 0; t < NT; t++) {
        if (t >= n_tok) break;
        const uint8_t* a = xq + t * xq_row;
        const int4 aa = __ldg(reinterpret_cast<const int4*>(a + bA * 32 + lm));
        const int4 ab = __ldg(reinterpret_cast<const int4*>(a + bB * 32 + lm));
        const int aw[4] = {aa.x, aa.y, aa.z, aa.w}, bw[4] = {ab.x, ab.y, ab.z, ab.w};
        int dA = 0, dB = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
          dA = dp4a(wa[k], aw[k], dA);
          dB = dp4a(wb[k], bw[k], dB);
        }
        const float* da = reinterpret_cast<const float*>(a + n);
        acc[t] += d[u] * (scA * __ldg(da + bA) * (float)dA + scB * __ldg(da + bB) * (float)dB);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
  }
}

template <GGMLType T, int NT>
__device__ __forceinline__ void row_dot_blocks(const Job& J, int64_t r, int64_t nb, const uint8_t* __restrict__ xq,
                                               int64_t xq_row, int n_tok, int lane, float* acc);

template <GGMLType T, int NT>
__device__ __forceinline__ void row_dot(const Job& J, int64_t r, int64_t nb, const uint8_t* __restrict__ xq,
                                        int64_t xq_row, int n_tok, int lane, float* acc) {
  if constexpr (T == GGMLType::Q4_K) {
    row_dot_q4k<NT>(J, r, nb / 8, xq, xq_row, n_tok, lane, acc);
    return;
  } else if constexpr (T == GGMLType::Q6_K) {
    row_dot_q6k<NT>(J, r, nb / 8, xq, xq_row, n_tok, lane, acc);
    return;
  } else {
    row_dot_blocks<T, NT>(J, r, nb, xq, xq_row, n_tok, lane, acc);
  }
}

template <GGMLType T, int NT>
__device__ __forceinline__ void row_dot_blocks(const Job& J, int64_t r, int64_t nb, const uint8_t* __restrict__ xq,
                                               int64_t xq_row, int n_tok, int lane, float* acc) {
  const uint8_t* qs = J.qs + r * nb * Fmt<T>::QB;
  const __half* d = J.d + r * nb;
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  const int64_t n = nb * 32;
  for (int64_t b0 = lane; b0 < nb; b0 += 32 * kUnroll) {
    uint32_t wq[kUnroll][Fmt<T>::QB / 4];
    float dw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int64_t b = b0 + 32 * u;
      if (b < nb) {
        load_w<T>(qs, b, wq[u]);
        dw[u] = __half2float(d[b]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int64_t b = b0 + 32 * u;
      if (b >= nb) break;
#pragma unroll
      for (int t = 0; t < NT; t++) {
        if (t >= n_tok) break;
        const uint8_t* row = xq + t * xq_row;
        const int4* aq4 = reinterpret_cast<const int4*>(row + b * 32);
        const int4 a0 = __ldg(aq4), a1 = __ldg(aq4 + 1);
        const int aq[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float da = __ldg(reinterpret_cast<const float*>(row + n) + b);
        int s = block_dot<T>(wq[u], aq);
        if constexpr (T == GGMLType::Q4_0) s -= 8 * __ldg(reinterpret_cast<const int*>(row + n + n / 32 * 4) + b);
        acc[t] += dw[u] * da * (float)s;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
  }
}

template <GGMLType T, int NT>
__global__ void __launch_bounds__(32 * kWarps)
    mul_mat_vec_soa_kernel(Jobs jobs, int64_t nb, const uint8_t* __restrict__ xq, int n_tok, bool accumulate,
                           bool swiglu) {
  const int lane = threadIdx.x & 31;
  const int g = blockIdx.x * kWarps + (threadIdx.x >> 5);  // global row over the jobs
  const int64_t xq_row = nb * 32 + nb * 8;
  float acc[NT];
  if (swiglu) {  // jobs 0 and 1: gate and up rows r; y0[r] = silu(gate) * up
    const Job& G = jobs.j[0];
    if (g >= G.n_rows) return;
    float up[NT];
    row_dot<T, NT>(G, g, nb, xq, xq_row, n_tok, lane, acc);
    row_dot<T, NT>(jobs.j[1], g, nb, xq, xq_row, n_tok, lane, up);
    if (lane == 0)
      for (int t = 0; t < n_tok && t < NT; t++) {
        const float v = acc[t];
        G.y[t * G.ldy + g] = v / (1.0f + expf(-v)) * up[t];
      }
    return;
  }
  int k = 0;
  while (k + 1 < jobs.n && g >= jobs.j[k + 1].row0) k++;
  const Job& J = jobs.j[k];
  const int64_t r = g - J.row0;
  if (r >= J.n_rows) return;
  row_dot<T, NT>(J, r, nb, xq, xq_row, n_tok, lane, acc);
  if (lane == 0)
    for (int t = 0; t < n_tok && t < NT; t++) {
      float* y = J.y + t * J.ldy + r;
      *y = accumulate ? *y + acc[t] : acc[t];
    }
}

template <GGMLType T, int NT>
void launch(const Jobs& jobs, int64_t nb, const uint8_t* xq, int n_tok, bool acc, bool swiglu, int rows,
            cudaStream_t s) {
  mul_mat_vec_soa_kernel<T, NT><<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, s>>>(jobs, nb, xq, n_tok, acc, swiglu);
}

template <GGMLType T>
void launch_nt(const Jobs& jobs, int64_t nb, const uint8_t* xq, int n_tok, bool acc, bool swiglu, int rows,
               cudaStream_t s) {
  if (n_tok == 1) launch<T, 1>(jobs, nb, xq, n_tok, acc, swiglu, rows, s);
  else if (n_tok <= 2) launch<T, 2>(jobs, nb, xq, n_tok, acc, swiglu, rows, s);
  else if (n_tok <= 4) launch<T, 4>(jobs, nb, xq, n_tok, acc, swiglu, rows, s);
  else launch<T, 8>(jobs, nb, xq, n_tok, acc, swiglu, rows, s);
}

bool mul_mat_vec_soa(GGMLType type, const SoaJob* js, int n_jobs, int64_t n_cols, const void* xq, int n_tok,
                     bool accumulate, bool swiglu, cudaStream_t s) {
  if (n_jobs < 1 || n_jobs > 3 || n_tok < 1 || n_tok > 8 || n_cols % 128 || (swiglu && n_jobs != 2)) return false;
  Jobs jobs{};
  jobs.n = n_jobs;
  int64_t rows = 0;
  for (int i = 0; i < n_jobs; i++) {
    const int64_t nb = n_cols / 32;
    const uint8_t* base = static_cast<const uint8_t*>(js[i].w);
    if ((uintptr_t)base & 15) return false;
    jobs.j[i].qs = base;
    jobs.j[i].d = type == GGMLType::Q4_K || type == GGMLType::Q6_K
                      ? nullptr  // the K-quants' scales sit inside their super-blocks / planes
                                         : reinterpret_cast<const __half*>(base + js[i].n_rows * nb * (type == GGMLType::Q4_0 ? 16 : 32));
    jobs.j[i].y = js[i].y;
    jobs.j[i].n_rows = js[i].n_rows;
    jobs.j[i].ldy = js[i].ldy;
    jobs.j[i].row0 = (int)rows;
    rows += js[i].n_rows;
  }
  if (swiglu) {
    if (js[0].n_rows != js[1].n_rows) return false;
    rows = js[0].n_rows;
  }
  if (rows > (1 << 30)) return false;
  if (type == GGMLType::Q4_0) launch_nt<GGMLType::Q4_0>(jobs, n_cols / 32, static_cast<const uint8_t*>(xq), n_tok, accumulate, swiglu, (int)rows, s);
  else if (type == GGMLType::Q8_0) launch_nt<GGMLType::Q8_0>(jobs, n_cols / 32, static_cast<const uint8_t*>(xq), n_tok, accumulate, swiglu, (int)rows, s);
  else if (type == GGMLType::Q4_K && n_cols % 256 == 0)
    launch_nt<GGMLType::Q4_K>(jobs, n_cols / 32, static_cast<const uint8_t*>(xq), n_tok, accumulate, swiglu, (int)rows, s);
  else if (type == GGMLType::Q6_K && n_cols % 256 == 0)
    launch_nt<GGMLType::Q6_K>(jobs, n_cols / 32, static_cast<const uint8_t*>(xq), n_tok, accumulate, swiglu, (int)rows, s);
  else return false;
  return true;
}

// ---- dequantization of the repacked layout (prefill tiles, embedding rows) ---------------------

// One thread per 8 consecutive values (a quarter of a block): an 8-byte load of quants, one
// 16-byte (f16) or two 16-byte (float) stores, consecutive threads on consecutive values.
template <GGMLType T>
__device__ __forceinline__ void decode8(const uint8_t* qs, int c, float dd, float* v) {
  if constexpr (T == GGMLType::Q4_0) {
    const uint2 q = *reinterpret_cast<const uint2*>(qs + 8 * (c & 1));  // bytes 8(c&1) .. +7
    const uint32_t w[2] = {q.x, q.y};
    const int shift = c < 2 ? 0 : 4;  // values 0..15: low nibbles, 16..31: high nibbles
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = dd * (float)((int)((w[j / 4] >> (8 * (j % 4) + shift)) & 15) - 8);
  } else {
    const uint2 q = *reinterpret_cast<const uint2*>(qs + 8 * c);
    const uint32_t w[2] = {q.x, q.y};
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = dd * (float)(int8_t)(w[j / 4] >> (8 * (j % 4)));
  }
}

template <GGMLType T, typename Out>
__global__ void dequant_soa_kernel(const uint8_t* __restrict__ qs, const __half* __restrict__ d, int64_t nb,
                                   int64_t r0, int64_t n_rows, const int32_t* ids, int64_t n_all_rows, Out* out) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (row, block, quarter)
  if (i >= n_rows * nb * 4) return;
  const int64_t rr = i / (nb * 4), b = (i / 4) % nb;
  const int c = (int)(i & 3);
  Out* o = out + rr * nb * 32 + b * 32 + 8 * c;
  int64_t r = r0 + rr;
  float v[8];
  if (ids && (ids[rr] < 0 || ids[rr] >= n_all_rows)) {
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = 0.0f;
  } else {
    if (ids) r = ids[rr];
    decode8<T>(qs + (r * nb + b) * Fmt<T>::QB, c, __half2float(d[r * nb + b]), v);
  }
  if constexpr (sizeof(Out) == 2) {
    __align__(16) __half h[8];
#pragma unroll
    for (int j = 0; j < 8; j++) h[j] = __float2half_rn(v[j]);
    *reinterpret_cast<uint4*>(o) = *reinterpret_cast<const uint4*>(h);
  } else {
    reinterpret_cast<float4*>(o)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(o)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// Q6_K planes -> values, one thread per 8 consecutive values (same quarter, same scale).
template <typename Out>
__global__ void dequant_q6k_kernel(const uint8_t* __restrict__ base, int64_t nsb, int64_t n_all_rows, int64_t r0,
                                   int64_t n_rows, const int32_t* ids, Out* out) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (row, super-block, eighth of 32)
  if (e >= n_rows * nsb * 32) return;
  const int64_t rr = e / (nsb * 32), sb = (e / 32) % nsb;
  const int v0 = (int)(e & 31) * 8;  // first value in the super-block
  Out* o = out + rr * nsb * 256 + sb * 256 + v0;
  int64_t r = r0 + rr;
  float v[8];
  if (ids && (ids[rr] < 0 || ids[rr] >= n_all_rows)) {
    for (int k = 0; k < 8; k++) v[k] = 0.0f;
  } else {
    if (ids) r = ids[rr];
    const int64_t N = n_all_rows * nsb, i = r * nsb + sb;
    const uint8_t* ql = base + i * 128;
    const uint8_t* qh = base + N * 128 + i * 64;
    const int8_t* sc = reinterpret_cast<const int8_t*>(base + N * 192 + i * 16);
    const float d = __half2float(reinterpret_cast<const __half*>(base + N * 208)[i]);
    const int hf = v0 / 128, k = (v0 % 128) / 32, l = v0 % 32;
    const float ds = d * (float)sc[8 * hf + l / 16 + 2 * k];
    for (int m = 0; m < 8; m++) {
      const uint8_t b = ql[64 * hf + l + m + 32 * (k & 1)];
      const int q = ((k < 2 ? b & 15 : b >> 4) | (((qh[32 * hf + l + m] >> (2 * k)) & 3) << 4)) - 32;
      v[m] = ds * (float)q;
    }
  }
  if constexpr (sizeof(Out) == 2) {
    __align__(16) __half h[8];
    for (int m = 0; m < 8; m++) h[m] = __float2half_rn(v[m]);
    *reinterpret_cast<uint4*>(o) = *reinterpret_cast<const uint4*>(h);
  } else {
    reinterpret_cast<float4*>(o)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(o)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

template <typename Out>
bool dequant_soa(GGMLType type, const void* w, int64_t n_cols, int64_t n_all_rows, int64_t r0, int64_t n_rows,
                 const int32_t* ids, Out* out, cudaStream_t s) {
  if (n_cols % 32 || ((uintptr_t)out & 15)) return false;
  if (type == GGMLType::Q6_K) {
    if (n_cols % 256) return false;
    const int64_t m = n_rows * (n_cols / 256) * 32;
    if (m) dequant_q6k_kernel<Out><<<(unsigned)((m + 255) / 256), 256, 0, s>>>(static_cast<const uint8_t*>(w), n_cols / 256,
                                                                            n_all_rows, r0, n_rows, ids, out);
    return true;
  }
  const int64_t nb = n_cols / 32, n = n_rows * nb * 4;
  if (n == 0) return true;
  const uint8_t* base = static_cast<const uint8_t*>(w);
  const unsigned grid = (unsigned)((n + 255) / 256);
  if (type == GGMLType::Q4_0)
    dequant_soa_kernel<GGMLType::Q4_0, Out><<<grid, 256, 0, s>>>(
        base, reinterpret_cast<const __half*>(base + n_all_rows * nb * 16), nb, r0, n_rows, ids, n_all_rows, out);
  else if (type == GGMLType::Q8_0)
    dequant_soa_kernel<GGMLType::Q8_0, Out><<<grid, 256, 0, s>>>(
        base, reinterpret_cast<const __half*>(base + n_all_rows * nb * 32), nb, r0, n_rows, ids, n_all_rows, out);
  else
    return false;
  return true;
}

// Prefill activations for the f16 GEMM, rounded first to the grid the CPU's products use for
// the legacy formats (Q8_0 / Q8_1: per block of 32, q = round_half_even(x * 127/amax), value
// f16(amax/127) * q), then to f16: the GPU's prefill then carries the CPU's activation rounding
// and only f16's on top (2^-12 relative).
__global__ void act_q8_grid_f16_kernel(const float* __restrict__ x, int64_t n_blocks, __half* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t b = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  if (b >= n_blocks) return;
  const float v = x[b * 32 + lane];
  float amax = fmaxf(0.0f, fabsf(v));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = __half2float(__float2half_rn(amax / 127.0f));
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  const float r = rintf(v * id);
  const float q = !(r >= -128.0f) ? -128.0f : (r > 127.0f ? 127.0f : r);
  out[b * 32 + lane] = __float2half_rn(d * q);
}

bool act_q8_grid_f16(const float* x, int64_t n, void* dst, cudaStream_t s) {
  if (n % 32) return false;
  const int64_t nb = n / 32;
  if (nb == 0) return true;
  act_q8_grid_f16_kernel<<<(unsigned)((nb + 7) / 8), 256, 0, s>>>(x, nb, static_cast<__half*>(dst));
  return true;
}

bool dequantize_soa_f16(GGMLType type, const void* w, int64_t n_cols, int64_t n_all_rows, int64_t r0, int64_t n_rows,
                        void* dst, cudaStream_t s) {
  return dequant_soa<__half>(type, w, n_cols, n_all_rows, r0, n_rows, nullptr, static_cast<__half*>(dst), s);
}

bool get_rows_soa(GGMLType type, const void* w, int64_t n_cols, int64_t n_all_rows, const int32_t* ids, int n,
                  float* out, cudaStream_t s) {
  return dequant_soa<float>(type, w, n_cols, n_all_rows, 0, n, ids, out, s);
}

}  // namespace

void register_matvec_soa(CudaKernels& t) {
  t.repack_soa = repack_soa;
  t.quantize_q8s = quantize_q8s;
  t.rms_norm_q8s = rms_norm_q8s;
  t.mul_mat_vec_soa = mul_mat_vec_soa;
  t.dequantize_soa_f16 = dequantize_soa_f16;
  t.get_rows_soa = get_rows_soa;
  t.act_q8_grid_f16 = act_q8_grid_f16;
}

}  // namespace eoq::cuda
