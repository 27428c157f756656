// Decode attention straight from a compressed cache's codes (cuda_kernels.h KVCodesLayer):
// flash-decoding as attention_decode.cu (grid (n_tok, n_split, n_head_kv), the G query heads of a
// KV group in one block so every cached byte is read once per token, the same split rule and
// partial layout, then its log-sum-exp combine), without an f16 copy of K or V anywhere.
//
//   qrot:  [n_tok][n_head][head_dim] float, already rotated (Π q, kv_rotate); unscaled
//   out:   [n_tok][n_head][head_dim] float in the rotated basis (the caller applies Πᵀ once)
//
// Lane layout: a cached row is read by L = head_dim / 16 lanes, each holding 16 of its dims
// (q and the accumulators are G x 16 floats per lane), so a warp covers RS = 32 / L rows at once
// and U of them per iteration (all their loads issued before any use). Per lane and row:
//   q8_0   16 int8 in one 128-bit load + the f16 scale of its block of 32;
//   q4_0   8 bytes (64 bits) of a block: low nibbles dims b*32 + h*8 + [0, 8), high nibbles the same
//          + 16 (b = lane / 2, h = lane % 2), + the block scale;
//   turbo  sealed rows: 16 bits-bit codes (2*bits bytes) + the row's f16 norm; the centroids sit in
//          shared memory (2^bits <= 16 entries: lanes reading different codes hit different banks),
//          so a row costs 16 look-ups and G x 16 FMAs against q in registers. Exact rows (sinks,
//          ring): 32 bytes of f16 in two 128-bit loads.
// The score is scale * Σ_e q_e c_e (scale: the block's d, or norm/sqrt(d)) and the value update
// acc_e += (p * scale) * c_e: the products of explicit dequantization up to float rounding.
// Softmax in the log2 domain (q pre-scaled by log2(e)/sqrt(head_dim)), as the f16 kernel.
//
// Sealing rule (turbo): the query at position p reads rows [sinks, sinks + nsealed * block) from
// the codes and the others exact, nsealed = m >= window + block ? (m - window) / block : 0,
// m = p + 1 - sinks: what the CPU cache holds sealed when that decode step attends.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int DPL = 16;  // dims of a row per lane

template <int HD>
struct CCfg {
  static constexpr int L = HD / DPL;   // lanes per row
  static constexpr int RS = 32 / L;    // row slots per warp
  static constexpr int U = 4;          // rows per row slot per iteration
  static constexpr int TP = RS * U;    // positions per warp iteration
  static constexpr int BT = kWarps * TP;
};

// Dim e (0..15) of lane l's share of a row.
template <int MODE>
__device__ __forceinline__ int lane_dim(int l, int e) {
  if (MODE == KVCodesLayer::q4_0) return (l >> 1) * 32 + (l & 1) * 8 + (e & 7) + (e >> 3) * 16;
  return l * DPL + e;
}

// One lane's raw share of a cached row: bytes as loaded plus its scale, and for turbo whether the
// row is exact (f16) or codes.
struct Raw {
  uint4 a, b;
  float s;
  bool exact;
};

__device__ __forceinline__ void f16x8(const uint4& r, float* f) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    __half2 h;
    memcpy(&h, &w[i], 4);
    const float2 x = __half22float2(h);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// The K (which = 0) or V row at pos for lane l of KV head g: loads only (decoded later).
template <int HD, int MODE>
__device__ __forceinline__ void load_row(const KVCodesLayer& L, int which, int g, int pos, int nsealed_end, int l,
                                         Raw& r) {
  const uint16_t* sc = which == 0 ? L.k_scale : L.v_scale;
  if (MODE == KVCodesLayer::q8_0) {
    const int64_t row = (int64_t)g * L.n_ctx + pos;
    const int8_t* q = static_cast<const int8_t*>(which == 0 ? L.k_codes : L.v_codes);
    r.a = __ldg(reinterpret_cast<const uint4*>(q + row * HD + l * DPL));
    r.s = __half2float(__ushort_as_half(__ldg(sc + row * (HD / 32) + (l >> 1))));
    r.exact = false;
  } else if (MODE == KVCodesLayer::q4_0) {
    const int64_t row = (int64_t)g * L.n_ctx + pos;
    const uint8_t* q = static_cast<const uint8_t*>(which == 0 ? L.k_codes : L.v_codes);
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(q + row * (HD / 2) + (l >> 1) * 16 + (l & 1) * 8));
    r.a.x = w.x;
    r.a.y = w.y;
    r.s = __half2float(__ushort_as_half(__ldg(sc + row * (HD / 32) + (l >> 1))));
    r.exact = false;
  } else {
    if (pos < L.sinks || pos >= nsealed_end) {
      const uint16_t* src = pos < L.sinks
          ? (which == 0 ? L.k_sinks : L.v_sinks) + ((int64_t)g * L.sinks + pos) * HD
          : (which == 0 ? L.k_ring : L.v_ring) + ((int64_t)g * L.ring_slots + (pos - L.sinks) % L.ring_slots) * HD;
      const uint4* p = reinterpret_cast<const uint4*>(src + l * DPL);
      r.a = __ldg(p);
      r.b = __ldg(p + 1);
      r.s = 1.0f;
      r.exact = true;
    } else {
      const int bits = which == 0 ? L.k_bits : L.v_bits;
      const int cbytes = HD * bits / 8;
      const int64_t prow = (int64_t)g * (L.n_ctx - L.sinks) + (pos - L.sinks);
      const uint16_t* c = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(which == 0 ? L.k_codes : L.v_codes) +
                                                            prow * cbytes + l * 2 * bits);
      uint32_t lo = 0, hi = 0;  // 16 * bits bits of little-endian fields, bits <= 4: <= 64 bits
      for (int i = 0; i < bits; i++) {
        const uint32_t w = __ldg(c + i);
        if (i < 2) lo |= w << (16 * i);
        else hi |= w << (16 * (i - 2));
      }
      r.a.x = lo;
      r.a.y = hi;
      r.s = __half2float(__ushort_as_half(__ldg(sc + prow))) / sqrtf((float)HD);  // TurboRowCodec::decode
      r.exact = false;
    }
  }
}

// The lane's 16 values of a row, before its scale.
template <int MODE>
__device__ __forceinline__ void decode_row(const Raw& r, int bits, const float* cent, float* f) {
  if (MODE == KVCodesLayer::q8_0) {
    const uint32_t w[4] = {r.a.x, r.a.y, r.a.z, r.a.w};
#pragma unroll
    for (int e = 0; e < 16; e++) f[e] = (float)(int8_t)(w[e >> 2] >> (8 * (e & 3)));
  } else if (MODE == KVCodesLayer::q4_0) {
    const uint32_t w[2] = {r.a.x, r.a.y};
#pragma unroll
    for (int e = 0; e < 8; e++) {
      const uint32_t byte = (w[e >> 2] >> (8 * (e & 3))) & 0xff;
      f[e] = (float)((int)(byte & 0xf) - 8);
      f[e + 8] = (float)((int)(byte >> 4) - 8);
    }
  } else if (r.exact) {
    f16x8(r.a, f);
    f16x8(r.b, f + 8);
  } else {
    const uint64_t w = (uint64_t)r.a.x | ((uint64_t)r.a.y << 32);
    const uint32_t mask = (1u << bits) - 1;
#pragma unroll
    for (int e = 0; e < 16; e++) f[e] = cent[(uint32_t)(w >> (e * bits)) & mask];
  }
}

template <int HD, int G, int MODE>
__global__ void __launch_bounds__(kThreads)
codes_partial_kernel(KVCodesLayer L, const float* __restrict__ q, int n_head, const int32_t* __restrict__ d_pos0,
                     int n_split, float qscale, float* __restrict__ w_acc, float* __restrict__ w_ml) {
  using C = CCfg<HD>;
  constexpr int LN = C::L, RS = C::RS, U = C::U, TP = C::TP;
  __shared__ float s_cent[2][16];
  __shared__ float sm_acc[kWarps * G * HD];
  __shared__ float sm_m[kWarps * G], sm_s[kWarps * G];

  const int t = blockIdx.x, split = blockIdx.y, g = blockIdx.z;
  const int n_tok = gridDim.x, n_ctx = L.n_ctx;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane / LN, l = lane % LN;

  const int pos0 = *d_pos0;
  const int len_all = min(pos0 + n_tok, n_ctx);
  const int len = min(pos0 + t + 1, n_ctx);
  int chunk = (max(len_all, 1) + n_split - 1) / n_split;
  chunk = (chunk + C::BT - 1) / C::BT * C::BT;
  const int64_t lo64 = (int64_t)split * chunk;
  const int lo = lo64 < len ? (int)lo64 : max(len, 0);
  const int hi = min(lo + chunk, len);
  const int64_t part0 = ((int64_t)t * n_head + (int64_t)g * G) * n_split + split;
  if (lo >= hi) {
    if (threadIdx.x < G) {
      float* ml = w_ml + 2 * (part0 + (int64_t)threadIdx.x * n_split);
      ml[0] = -INFINITY;
      ml[1] = 0.0f;
    }
    return;
  }
  int sealed_end = 0;  // turbo: rows [sinks, sealed_end) are read from the codes
  if (MODE == KVCodesLayer::turbo) {
    const int m = len - L.sinks;
    const int ns = m >= L.window + L.block ? (m - L.window) / L.block : 0;
    sealed_end = L.sinks + ns * L.block;
    if (threadIdx.x < 32) {
      const int i = threadIdx.x & 15, w = threadIdx.x >> 4;
      const int bits = w == 0 ? L.k_bits : L.v_bits;
      const float* cb = w == 0 ? L.k_cb : L.v_cb;
      s_cent[w][i] = i < (1 << bits) ? cb[i] : 0.0f;
    }
    __syncthreads();
  }

  float qf[G][DPL];
#pragma unroll
  for (int j = 0; j < G; j++) {
    const float* qh = q + ((int64_t)t * n_head + (int64_t)g * G + j) * HD;
#pragma unroll
    for (int e = 0; e < DPL; e++) qf[j][e] = qh[lane_dim<MODE>(l, e)] * qscale;
  }

  float m[G], lsum[G], acc[G][DPL];
#pragma unroll
  for (int j = 0; j < G; j++) {
    m[j] = -INFINITY;
    lsum[j] = 0.0f;
#pragma unroll
    for (int e = 0; e < DPL; e++) acc[j][e] = 0.0f;
  }

  const int n_tiles = (hi - lo + TP - 1) / TP;
  for (int i = warp; i < n_tiles; i += kWarps) {
    const int base = lo + i * TP;
    Raw rk[U], rv[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int pos = base + u * RS + r;
      ok[u] = pos < hi;
      const int p = ok[u] ? pos : lo;
      load_row<HD, MODE>(L, 0, g, p, sealed_end, l, rk[u]);
      load_row<HD, MODE>(L, 1, g, p, sealed_end, l, rv[u]);
    }
    float sc[U][G];
#pragma unroll
    for (int u = 0; u < U; u++) {
      float kf[DPL];
      decode_row<MODE>(rk[u], L.k_bits, s_cent[0], kf);
#pragma unroll
      for (int j = 0; j < G; j++) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; e++) s = fmaf(qf[j][e], kf[e], s);
        sc[u][j] = s * rk[u].s;
      }
    }
#pragma unroll
    for (int off = 1; off < LN; off <<= 1)
#pragma unroll
      for (int u = 0; u < U; u++)
#pragma unroll
        for (int j = 0; j < G; j++) sc[u][j] += __shfl_xor_sync(0xffffffffu, sc[u][j], off);

#pragma unroll
    for (int j = 0; j < G; j++) {
      float mt = m[j];
#pragma unroll
      for (int u = 0; u < U; u++)
        if (ok[u]) mt = fmaxf(mt, sc[u][j]);
      if (mt > m[j]) {
        const float corr = exp2f(m[j] - mt);
        lsum[j] *= corr;
#pragma unroll
        for (int e = 0; e < DPL; e++) acc[j][e] *= corr;
        m[j] = mt;
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        sc[u][j] = ok[u] ? exp2f(sc[u][j] - m[j]) : 0.0f;
        lsum[j] += sc[u][j];
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      float vf[DPL];
      decode_row<MODE>(rv[u], L.v_bits, s_cent[1], vf);
#pragma unroll
      for (int j = 0; j < G; j++) {
        const float p = sc[u][j] * rv[u].s;
#pragma unroll
        for (int e = 0; e < DPL; e++) acc[j][e] = fmaf(p, vf[e], acc[j][e]);
      }
    }
  }

  // Merge the row slots of the warp (lanes l, l + L, ... hold the same dims), then the warps.
#pragma unroll
  for (int off = LN; off < 32; off <<= 1) {
#pragma unroll
    for (int j = 0; j < G; j++) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[j], off);
      const float so = __shfl_xor_sync(0xffffffffu, lsum[j], off);
      const float mn = fmaxf(m[j], mo);
      const float a = m[j] == -INFINITY ? 0.0f : exp2f(m[j] - mn);
      const float b = mo == -INFINITY ? 0.0f : exp2f(mo - mn);
      lsum[j] = lsum[j] * a + so * b;
#pragma unroll
      for (int e = 0; e < DPL; e++) acc[j][e] = acc[j][e] * a + __shfl_xor_sync(0xffffffffu, acc[j][e], off) * b;
      m[j] = mn;
    }
  }
  if (r == 0) {
#pragma unroll
    for (int j = 0; j < G; j++) {
#pragma unroll
      for (int e = 0; e < DPL; e++) sm_acc[(warp * G + j) * HD + lane_dim<MODE>(l, e)] = acc[j][e];
      if (l == 0) {
        sm_m[warp * G + j] = m[j];
        sm_s[warp * G + j] = lsum[j];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * HD; idx += kThreads) {
    const int j = idx / HD, d = idx % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) mx = fmaxf(mx, sm_m[w * G + j]);
    float num = 0.0f, den = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      const float mw = sm_m[w * G + j];
      if (mw != -INFINITY) {
        const float a = exp2f(mw - mx);
        num = fmaf(a, sm_acc[(w * G + j) * HD + d], num);
        den = fmaf(a, sm_s[w * G + j], den);
      }
    }
    const int64_t p = part0 + (int64_t)j * n_split;
    w_acc[p * HD + d] = num;
    if (d == 0) {
      w_ml[2 * p] = mx;
      w_ml[2 * p + 1] = den;
    }
  }
}

struct Launch {
  const KVCodesLayer* L;
  const float* q;
  int n_tok, n_head;
  const int32_t* d_pos0;
  int n_split;
  float qscale;
  float *w_acc, *w_ml;
};

template <int HD, int G, int MODE>
void launch(const Launch& a, cudaStream_t s) {
  const dim3 grid((unsigned)a.n_tok, (unsigned)a.n_split, (unsigned)a.L->n_head_kv);
  codes_partial_kernel<HD, G, MODE><<<grid, kThreads, 0, s>>>(*a.L, a.q, a.n_head, a.d_pos0, a.n_split, a.qscale,
                                                             a.w_acc, a.w_ml);
}

template <int HD, int MODE>
bool launch_g(int G, const Launch& a, cudaStream_t s) {
  switch (G) {
    case 1: launch<HD, 1, MODE>(a, s); return true;
    case 2: launch<HD, 2, MODE>(a, s); return true;
    case 3: launch<HD, 3, MODE>(a, s); return true;
    case 4: launch<HD, 4, MODE>(a, s); return true;
    case 5: launch<HD, 5, MODE>(a, s); return true;
    case 6: launch<HD, 6, MODE>(a, s); return true;
    case 7: launch<HD, 7, MODE>(a, s); return true;
    case 8: launch<HD, 8, MODE>(a, s); return true;
    default: return false;
  }
}

template <int HD>
bool launch_mode(int G, const Launch& a, cudaStream_t s) {
  switch (a.L->mode) {
    case KVCodesLayer::q8_0: return launch_g<HD, KVCodesLayer::q8_0>(G, a, s);
    case KVCodesLayer::q4_0: return launch_g<HD, KVCodesLayer::q4_0>(G, a, s);
    case KVCodesLayer::turbo: return launch_g<HD, KVCodesLayer::turbo>(G, a, s);
    default: return false;
  }
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

bool attention_decode_codes(const KVCodesLayer& L, const float* qrot, int n_tok, int n_head, const int32_t* d_pos0,
                            int n_split, void* work, float* out, cudaStream_t s) {
  const int hkv = L.n_head_kv, hd = L.head_dim;
  if (n_tok < 0 || n_head <= 0 || hkv <= 0 || hkv > 65535 || n_head % hkv != 0) return false;
  const int G = n_head / hkv;
  if (G > 8 || (hd != 64 && hd != 128) || L.n_ctx <= 0 || n_split <= 0 || n_split > 65535) return false;
  if (!qrot || !d_pos0 || !work || !out || !L.k_codes || !L.v_codes || !L.k_scale || !L.v_scale) return false;
  if (!aligned16(L.k_codes) || !aligned16(L.v_codes) || !aligned16(work) || !aligned16(out)) return false;
  if (L.mode == KVCodesLayer::turbo) {
    if (L.k_bits < 1 || L.k_bits > 4 || L.v_bits < 1 || L.v_bits > 4 || !L.k_cb || !L.v_cb || !L.k_ring || !L.v_ring)
      return false;
    if (!aligned16(L.k_ring) || !aligned16(L.v_ring) || L.block <= 0 || L.window < 0 || L.ring_slots <= 0) return false;
    if (L.sinks > 0 && (!L.k_sinks || !L.v_sinks || !aligned16(L.k_sinks) || !aligned16(L.v_sinks))) return false;
    // per-lane code loads are 2-byte aligned: rows of HD * bits / 8 bytes, lanes at 2 * bits bytes
  }
  if (n_tok == 0) return true;
  Launch a;
  a.L = &L;
  a.q = qrot;
  a.n_tok = n_tok;
  a.n_head = n_head;
  a.d_pos0 = d_pos0;
  a.n_split = n_split;
  a.qscale = (float)(1.4426950408889634 / std::sqrt((double)hd));  // log2(e) / sqrt(head_dim)
  a.w_acc = static_cast<float*>(work);
  a.w_ml = a.w_acc + (size_t)n_tok * n_head * n_split * hd;
  const bool ok = hd == 64 ? launch_mode<64>(G, a, s) : launch_mode<128>(G, a, s);
  if (!ok) return false;
  return attention_decode_combine(work, (int64_t)n_tok * n_head, n_split, hd, out, s);
}

}  // namespace

void register_attention_decode_codes(CudaKernels& t) { t.attention_decode_codes = attention_decode_codes; }

}  // namespace eoq::cuda
