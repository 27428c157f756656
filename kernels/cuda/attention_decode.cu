// Decode attention over one layer's f16 KV cache: flash-decoding with the query heads of a KV group
// packed in one thread block, then a log-sum-exp combine of the splits.
//
//   q, out:            [n_tok][n_head][head_dim] float (q after RoPE, unscaled)
//   cache_k, cache_v:  [n_head_kv][n_ctx][head_dim] f16
//   query t (position *d_pos0 + t) sees cached positions [0, *d_pos0 + t]; query head h reads KV head
//   h / G, G = n_head / n_head_kv; scores scaled by 1/sqrt(head_dim); float softmax and sums.
//
// Pass 1, decode_partial_kernel, grid (n_tok, n_split, n_head_kv), 4 warps per block. Block
// (t, split, g) takes the G query heads of KV group g for token t and one contiguous range of
// positions: the splits cut [0, *d_pos0 + n_tok) (the last token's length, read on the device, so a
// captured graph replays at any position) into n_split equal chunks, rounded up to the block's step;
// token t clips the range to its own length. Tokens are the fastest grid dimension, so the blocks
// of one (split, KV head) run together and the 2nd..n_tok-th reads of a K/V line hit L2.
//   Inside a block each warp streams its own tiles of positions (warp w takes tiles w, w+4, ...).
// A tile is U rows per lane-row-slot: L = head_dim / DPL lanes share one cached row, each holding
// DPL dims of it (DPL = 16 for G <= 4, 8 for larger groups, to bound the registers: q and the
// accumulators are G * DPL floats each), so a warp covers RS = 32 / L rows at once. Each lane
// copies its own 16-byte pieces of K and V into a 4-stage shared-memory ring with cp.async (no
// barrier: a lane reads only what it copied; 3 tiles = 384 bytes per lane in flight, 96-144 KB
// per SM at 2-3 blocks per SM; ptxas: 168 registers for G = 4, head_dim 128), then: partial dots
// for its G heads, a butterfly sum over the L lanes (every lane gets every score of its rows),
// an online softmax in the log2 domain (q pre-scaled by log2(e)/sqrt(head_dim); the accumulators
// are rescaled only when a running max grows), and the p·V accumulation. Lanes of different row slots keep separate (max, sum, acc) states, merged at
// the end across row slots (shuffles) and warps (shared memory). The block writes one partial
// per (token, head, split) into `work`: acc[head_dim] (unnormalised) and (max, sum); an empty
// range writes (max, sum) = (-inf, 0) and exits.
// Pass 2, decode_combine_kernel, one block per (token, head): out = Σ_s 2^(m_s - M) acc_s /
// Σ_s 2^(m_s - M) sum_s over the non-empty partials.
//
// Cost model (H200, 132 SMs, 4.27 TB/s, Llama-3.1-8B: G = 4, head_dim 128): a cached position is
// 512 bytes of K+V, ~31 SM-cycles of bandwidth per SM at full clock, ~125 warp-instruction issue
// slots; the kernel spends ~55 per position (32 are the G*2*hd FMAs themselves, the rest the
// f16->f32 conversions, the butterfly and the softmax), so it stays memory bound. G = 8 doubles
// the FMAs and the butterfly (~115 slots): near the issue limit.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 4;            // ring depth per lane: kStages - 1 tiles in flight
constexpr int kLaneTileHalves = 32;   // f16 values of K per lane per tile (64 bytes; V the same)
constexpr int kCombineThreads = 256;

template <int HD, int G>
struct Cfg {
  static constexpr int DPL = G <= 4 ? 16 : 8;   // dims of a row per lane
  static constexpr int NC = DPL / 8;            // 16-byte pieces per lane per row
  static constexpr int L = HD / DPL;            // lanes per row
  static constexpr int RS = 32 / L;             // row slots per warp
  static constexpr int U = kLaneTileHalves / DPL;  // rows per row slot per tile
  static constexpr int TP = RS * U;             // positions per warp tile
  static constexpr int BT = kWarps * TP;        // positions per block step (splits are multiples)
  static constexpr int CH = U * NC;             // 16-byte pieces per lane per tile, of K (V the same)
  static constexpr int kStageStride = kWarps * 2 * CH * 32;  // uint4 per ring stage
  static constexpr size_t ring_bytes = (size_t)kStages * kStageStride * 16;
  static constexpr size_t merge_bytes = (size_t)kWarps * G * (HD + 2) * sizeof(float);
  static constexpr size_t smem_bytes = ring_bytes > merge_bytes ? ring_bytes : merge_bytes;
  static_assert(L * DPL == HD && RS * L == 32 && U * DPL == kLaneTileHalves, "lane layout");
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
  // src_bytes 0: 16 zero bytes, nothing read (rows past the range)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 8 f16 (one 16-byte piece) -> 8 floats
__device__ __forceinline__ void f16x8_to_f32(const uint4& r, float (&f)[8]) {
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

template <int HD, int G>
__global__ void __launch_bounds__(kThreads)
decode_partial_kernel(const float* __restrict__ q, int n_head, int n_ctx, const int32_t* __restrict__ d_pos0,
                      const __half* __restrict__ cache_k, const __half* __restrict__ cache_v, int n_split,
                      float qscale, float* __restrict__ w_acc, float* __restrict__ w_ml) {
  using C = Cfg<HD, G>;
  constexpr int DPL = C::DPL, NC = C::NC, L = C::L, RS = C::RS, U = C::U, TP = C::TP, CH = C::CH;
  extern __shared__ uint4 smem[];

  const int t = blockIdx.x, split = blockIdx.y, g = blockIdx.z;
  const int n_tok = gridDim.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane / L, l = lane % L;  // row slot, lane within the row

  // This block's positions [lo, hi).
  const int pos0 = *d_pos0;
  const int len_all = min(pos0 + n_tok, n_ctx);  // the last token's length: the splits' frame
  const int len = min(pos0 + t + 1, n_ctx);      // this token's length
  int chunk = (max(len_all, 1) + n_split - 1) / n_split;
  chunk = (chunk + C::BT - 1) / C::BT * C::BT;
  const int64_t lo64 = (int64_t)split * chunk;
  const int lo = lo64 < len ? (int)lo64 : max(len, 0);
  const int hi = min(lo + chunk, len);
  // partial index of head g*G + j: part0 + j * n_split
  const int64_t part0 = ((int64_t)t * n_head + (int64_t)g * G) * n_split + split;
  if (lo >= hi) {
    if (threadIdx.x < G) {
      float* ml = w_ml + 2 * (part0 + (int64_t)threadIdx.x * n_split);
      ml[0] = -INFINITY;
      ml[1] = 0.0f;
    }
    return;
  }

  // This lane's dims of the G query rows, scaled by log2(e)/sqrt(head_dim). Piece c of a row is
  // dims [(c*L + l)*8, +8): each load instruction covers a contiguous stretch of the rows.
  float qf[G][DPL];
#pragma unroll
  for (int j = 0; j < G; j++) {
    const float* qh = q + ((int64_t)t * n_head + (int64_t)g * G + j) * HD;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const float4* p = reinterpret_cast<const float4*>(qh + (c * L + l) * 8);
      const float4 a = p[0], b = p[1];
      qf[j][c * 8 + 0] = a.x * qscale;
      qf[j][c * 8 + 1] = a.y * qscale;
      qf[j][c * 8 + 2] = a.z * qscale;
      qf[j][c * 8 + 3] = a.w * qscale;
      qf[j][c * 8 + 4] = b.x * qscale;
      qf[j][c * 8 + 5] = b.y * qscale;
      qf[j][c * 8 + 6] = b.z * qscale;
      qf[j][c * 8 + 7] = b.w * qscale;
    }
  }

  const __half* kg = cache_k + (int64_t)g * n_ctx * HD + l * 8;
  const __half* vg = cache_v + (int64_t)g * n_ctx * HD + l * 8;
  const int n_tiles = (hi - lo + TP - 1) / TP;
  const int n_it = warp < n_tiles ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
  // ring[stage][warp][K, V][piece][lane] in uint4; this lane's slots
  uint4* ring = smem + warp * (2 * CH * 32) + lane;

  // Tile i of this warp: positions base + u*RS + r, u < U, base = lo + (warp + i*kWarps)*TP.
  auto issue = [&](int i) {
    if (i < n_it) {
      uint4* dst = ring + (i % kStages) * C::kStageStride;
      const int base = lo + (warp + i * kWarps) * TP;
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int pos = base + u * RS + r;
        const bool ok = pos < hi;
        const int64_t off = (int64_t)(ok ? pos : lo) * HD;
#pragma unroll
        for (int c = 0; c < NC; c++) {
          cp_async16(dst + (u * NC + c) * 32, kg + off + c * L * 8, ok ? 16 : 0);
          cp_async16(dst + (CH + u * NC + c) * 32, vg + off + c * L * 8, ok ? 16 : 0);
        }
      }
    }
    cp_async_commit();  // possibly empty: the group count stays uniform
  };

  float m[G], lsum[G], acc[G][DPL];
#pragma unroll
  for (int j = 0; j < G; j++) {
    m[j] = -INFINITY;
    lsum[j] = 0.0f;
#pragma unroll
    for (int d = 0; d < DPL; d++) acc[j][d] = 0.0f;
  }

#pragma unroll
  for (int i = 0; i < kStages - 1; i++) issue(i);
  for (int i = 0; i < n_it; i++) {
    issue(i + kStages - 1);
    cp_async_wait<kStages - 1>();  // tile i has landed (this lane's pieces)
    const uint4* src = ring + (i % kStages) * C::kStageStride;
    const int base = lo + (warp + i * kWarps) * TP;

    // scores (log2 domain) of the U rows for the G heads
    float sc[U][G];
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int j = 0; j < G; j++) sc[u][j] = 0.0f;
#pragma unroll
      for (int c = 0; c < NC; c++) {
        float kf[8];
        f16x8_to_f32(src[(u * NC + c) * 32], kf);
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
          for (int e = 0; e < 8; e++) sc[u][j] = fmaf(qf[j][c * 8 + e], kf[e], sc[u][j]);
      }
    }
#pragma unroll
    for (int off = 1; off < L; off <<= 1)
#pragma unroll
      for (int u = 0; u < U; u++)
#pragma unroll
        for (int j = 0; j < G; j++) sc[u][j] += __shfl_xor_sync(0xffffffffu, sc[u][j], off);

    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; u++) ok[u] = base + u * RS + r < hi;

    // online softmax: sc becomes p = 2^(s - m)
#pragma unroll
    for (int j = 0; j < G; j++) {
      float mt = m[j];
#pragma unroll
      for (int u = 0; u < U; u++)
        if (ok[u]) mt = fmaxf(mt, sc[u][j]);
      if (mt > m[j]) {  // exp2f(-inf) = 0 clears the empty initial state
        const float corr = exp2f(m[j] - mt);
        lsum[j] *= corr;
#pragma unroll
        for (int d = 0; d < DPL; d++) acc[j][d] *= corr;
        m[j] = mt;
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        sc[u][j] = ok[u] ? exp2f(sc[u][j] - m[j]) : 0.0f;
        lsum[j] += sc[u][j];
      }
    }

    // acc += p · V (rows past the range are zeros and have p = 0)
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int c = 0; c < NC; c++) {
        float vf[8];
        f16x8_to_f32(src[(CH + u * NC + c) * 32], vf);
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
          for (int e = 0; e < 8; e++) acc[j][c * 8 + e] = fmaf(sc[u][j], vf[e], acc[j][c * 8 + e]);
      }
    }
  }
  cp_async_wait<0>();

  // Merge the row slots of the warp (lanes l, l + L, l + 2L, ... hold the same dims).
#pragma unroll
  for (int off = L; off < 32; off <<= 1) {
#pragma unroll
    for (int j = 0; j < G; j++) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[j], off);
      const float so = __shfl_xor_sync(0xffffffffu, lsum[j], off);
      const float mn = fmaxf(m[j], mo);
      const float a = m[j] == -INFINITY ? 0.0f : exp2f(m[j] - mn);
      const float b = mo == -INFINITY ? 0.0f : exp2f(mo - mn);
      lsum[j] = lsum[j] * a + so * b;
#pragma unroll
      for (int d = 0; d < DPL; d++) acc[j][d] = acc[j][d] * a + __shfl_xor_sync(0xffffffffu, acc[j][d], off) * b;
      m[j] = mn;
    }
  }

  // Merge the warps through shared memory (the ring is free: every lane drained its copies).
  __syncthreads();
  float* sm_acc = reinterpret_cast<float*>(smem);  // [kWarps][G][HD]
  float* sm_m = sm_acc + kWarps * G * HD;          // [kWarps][G]
  float* sm_s = sm_m + kWarps * G;                 // [kWarps][G]
  if (r == 0) {
#pragma unroll
    for (int j = 0; j < G; j++) {
#pragma unroll
      for (int c = 0; c < NC; c++)
#pragma unroll
        for (int e = 0; e < 8; e++) sm_acc[(warp * G + j) * HD + (c * L + l) * 8 + e] = acc[j][c * 8 + e];
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
    float num = 0.0f, den = 0.0f;  // mx is finite: warp 0's first row is position lo < hi
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

// One block per (token, head) row: the max over the non-empty partials, then the weighted sums,
// head_dim/4 lanes (a float4 each) per partial and kCombineThreads / (head_dim/4) groups of lanes
// taking every group-th split, summed through shared memory. head_dim % 4 == 0, head_dim/4 divides
// kCombineThreads.
__global__ void __launch_bounds__(kCombineThreads)
decode_combine_kernel(const float* __restrict__ w_acc, const float* __restrict__ w_ml, int n_split, int head_dim,
                      float* __restrict__ out) {
  __shared__ float red[kCombineThreads / 32];
  __shared__ float4 part_num[kCombineThreads];
  __shared__ float part_den[kCombineThreads];
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const float* ml = w_ml + row * n_split * 2;
  const float4* acc = reinterpret_cast<const float4*>(w_acc + row * n_split * head_dim);

  float mx = -INFINITY;
  for (int s = tid; s < n_split; s += kCombineThreads)
    if (ml[2 * s + 1] > 0.0f) mx = fmaxf(mx, ml[2 * s]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if ((tid & 31) == 0) red[tid >> 5] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; w++) mx = fmaxf(mx, red[w]);

  const int lpr = head_dim / 4, ngrp = kCombineThreads / lpr, grp = tid / lpr, d4 = tid % lpr;
  float4 num = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float den = 0.0f;
  for (int s = grp; s < n_split; s += ngrp) {
    const float sum = ml[2 * s + 1];
    if (sum > 0.0f) {
      const float a = exp2f(ml[2 * s] - mx);
      const float4 x = acc[(int64_t)s * lpr + d4];
      num.x = fmaf(a, x.x, num.x);
      num.y = fmaf(a, x.y, num.y);
      num.z = fmaf(a, x.z, num.z);
      num.w = fmaf(a, x.w, num.w);
      den = fmaf(a, sum, den);
    }
  }
  part_num[tid] = num;
  part_den[tid] = den;
  __syncthreads();
  if (tid < lpr) {
    float4 n = part_num[tid];
    float dn = part_den[tid];
    for (int k = 1; k < ngrp; k++) {
      const float4 x = part_num[k * lpr + tid];
      n.x += x.x;
      n.y += x.y;
      n.z += x.z;
      n.w += x.w;
      dn += part_den[k * lpr + tid];
    }
    const float inv = dn > 0.0f ? 1.0f / dn : 0.0f;  // dn == 0 only for a position outside the cache
    reinterpret_cast<float4*>(out + row * head_dim)[tid] = make_float4(n.x * inv, n.y * inv, n.z * inv, n.w * inv);
  }
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// The >48 KB dynamic shared-memory opt-in, once per kernel and device (devices 0..63).
bool ensure_smem(const void* fn, size_t bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  const uint64_t bit = dev >= 0 && dev < 64 ? 1ull << dev : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return true;
  if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) != cudaSuccess) return false;
  done.fetch_or(bit, std::memory_order_release);
  return true;
}

struct PartialArgs {
  const float* q;
  int n_tok, n_head, n_head_kv, n_ctx;
  const int32_t* d_pos0;
  const __half *k, *v;
  int n_split;
  float qscale;
  float *w_acc, *w_ml;
};

template <int HD, int G>
bool launch_partial(const PartialArgs& a, cudaStream_t s) {
  using C = Cfg<HD, G>;
  static std::atomic<uint64_t> done{0};
  if (!ensure_smem((const void*)decode_partial_kernel<HD, G>, C::smem_bytes, done)) return false;
  const dim3 grid((unsigned)a.n_tok, (unsigned)a.n_split, (unsigned)a.n_head_kv);
  decode_partial_kernel<HD, G><<<grid, kThreads, C::smem_bytes, s>>>(a.q, a.n_head, a.n_ctx, a.d_pos0, a.k, a.v,
                                                                    a.n_split, a.qscale, a.w_acc, a.w_ml);
  return true;
}

template <int HD>
bool launch_partial_hd(int G, const PartialArgs& a, cudaStream_t s) {
  switch (G) {
    case 1: return launch_partial<HD, 1>(a, s);
    case 2: return launch_partial<HD, 2>(a, s);
    case 3: return launch_partial<HD, 3>(a, s);
    case 4: return launch_partial<HD, 4>(a, s);
    case 5: return launch_partial<HD, 5>(a, s);
    case 6: return launch_partial<HD, 6>(a, s);
    case 7: return launch_partial<HD, 7>(a, s);
    case 8: return launch_partial<HD, 8>(a, s);
    default: return false;
  }
}

size_t attention_decode_work_bytes(int n_tok, int n_head, int head_dim, int n_split) {
  if (n_tok <= 0 || n_head <= 0 || head_dim <= 0 || n_split <= 0) return 0;
  return (size_t)n_tok * n_head * n_split * (head_dim + 2) * sizeof(float);
}

bool attention_decode_f16(const float* q, int n_tok, int n_head, int n_head_kv, int head_dim, int n_ctx,
                          const int32_t* d_pos0, const void* cache_k, const void* cache_v, int n_split, void* work,
                          float* out, cudaStream_t s) {
  if (n_tok < 0 || n_head <= 0 || n_head_kv <= 0 || n_head_kv > 65535 || n_head % n_head_kv != 0) return false;
  const int G = n_head / n_head_kv;
  if (G > 8 || (head_dim != 64 && head_dim != 128) || n_ctx <= 0 || n_split <= 0 || n_split > 65535) return false;
  if (!q || !d_pos0 || !cache_k || !cache_v || !work || !out) return false;
  if (!aligned16(q) || !aligned16(cache_k) || !aligned16(cache_v) || !aligned16(work) || !aligned16(out)) return false;
  if (n_tok == 0) return true;
  PartialArgs a;
  a.q = q;
  a.n_tok = n_tok;
  a.n_head = n_head;
  a.n_head_kv = n_head_kv;
  a.n_ctx = n_ctx;
  a.d_pos0 = d_pos0;
  a.k = static_cast<const __half*>(cache_k);
  a.v = static_cast<const __half*>(cache_v);
  a.n_split = n_split;
  a.qscale = (float)(1.4426950408889634 / std::sqrt((double)head_dim));  // log2(e) / sqrt(head_dim)
  a.w_acc = static_cast<float*>(work);                                      // [n_tok][n_head][n_split][head_dim]
  a.w_ml = a.w_acc + (size_t)n_tok * n_head * n_split * head_dim;           // [n_tok][n_head][n_split][2]
  const bool ok = head_dim == 64 ? launch_partial_hd<64>(G, a, s) : launch_partial_hd<128>(G, a, s);
  if (!ok) return false;
  return attention_decode_combine(work, (int64_t)n_tok * n_head, n_split, head_dim, out, s);
}

}  // namespace

bool attention_decode_combine(const void* work, int64_t n_rows, int n_split, int head_dim, float* out, cudaStream_t s) {
  if (n_rows < 0 || n_rows > 0x7fffffff || n_split <= 0 || head_dim <= 0 || head_dim % 4 != 0 ||
      kCombineThreads % (head_dim / 4) != 0 || !work || !out || !aligned16(work) || !aligned16(out))
    return false;
  if (n_rows == 0) return true;
  const float* w_acc = static_cast<const float*>(work);
  const float* w_ml = w_acc + (size_t)n_rows * n_split * head_dim;
  decode_combine_kernel<<<(unsigned)n_rows, kCombineThreads, 0, s>>>(w_acc, w_ml, n_split, head_dim, out);
  return true;
}

int attention_decode_splits(int n_head_kv, int len_bucket, int n_sm) {
  if (n_sm <= 0) {
    int dev = 0, v = 0;
    n_sm = cudaGetDevice(&dev) == cudaSuccess &&
                   cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && v > 0
               ? v
               : 132;
  }
  const int hkv = n_head_kv > 0 ? n_head_kv : 1;
  const int by_grid = (6 * n_sm + hkv - 1) / hkv;      // ~6 blocks per SM: 2-3 full waves
  const int by_len = len_bucket / 256 > 1 ? len_bucket / 256 : 1;  // >= 256 positions per block
  const int n = by_grid < by_len ? by_grid : by_len;
  return n < 1 ? 1 : (n > 65535 ? 65535 : n);
}

void register_attention_decode(CudaKernels& t) {
  t.attention_decode_f16 = attention_decode_f16;
  t.attention_decode_work_bytes = attention_decode_work_bytes;
}

}  // namespace eoq::cuda
