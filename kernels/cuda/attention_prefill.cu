// Prefill attention over one layer's f16 KV cache: causal flash attention on the tensor cores
// (mma.sync m16n8k16, f16 inputs, f32 accumulators).
//
//   q, out:            [n_tok][n_head][head_dim] float (q after RoPE, unscaled)
//   cache_k, cache_v:  [n_head_kv][n_ctx][head_dim] f16, positions [0, pos0 + n_tok) written
//   query t (position pos0 + t) sees cached positions [0, pos0 + t]; query head h reads KV head h / G,
//   G = n_head / n_head_kv; scores scaled by 1/sqrt(head_dim).
// Precision: Q (pre-scaled by log2(e)/sqrt(head_dim)) and the probabilities P are rounded to f16
// for the tensor cores; scores, the softmax (max, exp2, row sums of the unrounded P) and the P·V
// accumulators are f32. Expect a normalised error of a few 1e-4 against exact attention over the
// same f16 cache (the f16 rounding of P and Q, 2^-11 relative each, averaged over the keys).
//
// Grid (n_head_kv, n_qtiles), 4 warps per block, heaviest query tiles first (causal: later
// queries see more keys). A block owns 64 rows = the G query heads of KV group g for TB = 64 / G
// consecutive tokens (row ρ: token q0 + ρ / G, head g*G + ρ % G; the ρ >= TB*G rows are padding),
// so each K/V tile it loads serves the whole group (GQA packing: 1/G of the K/V traffic of a block
// per head). Warp w holds rows 16w..16w+15: its Q fragments stay in registers for the whole pass.
// Keys go by tiles of 64 positions, double-buffered in shared memory by cp.async (rows padded by
// 16 bytes, so ldmatrix is free of bank conflicts): S = Q·K^T (ldmatrix for K^T fragments), causal
// mask on the tiles that reach past the block's first query, online softmax in the log2 domain,
// P converted in registers from the S accumulators to the A fragments of P·V (ldmatrix.trans for V).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16 * kWarps;  // query rows per block
constexpr int kBN = 64;             // keys per tile

template <int HD>
struct PCfg {
  static constexpr int LDS = HD + 8;  // shared row stride in halves (+16 bytes: conflict-free ldmatrix)
  static constexpr size_t tile_halves = (size_t)kBN * LDS;
  static constexpr size_t smem_bytes = 2 /*stages*/ * 2 /*K, V*/ * tile_halves * sizeof(__half);
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane l gives the row address of matrix l / 8, row l % 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

// d += a·b, a: 16x16 f16 (row), b: 16x8 f16 (col), d: 16x8 f32. Fragments (g = lane/4, c = lane%4):
// a[0] = (row g, cols 2c, 2c+1), a[1] = (row g+8, same cols), a[2] = (row g, cols 2c+8, 2c+9),
// a[3] = (row g+8, cols 2c+8, 2c+9); b0 = (k 2c, 2c+1; n g), b1 = (k 2c+8, 2c+9; n g);
// d[0..1] = (row g, cols 2c, 2c+1), d[2..3] = (row g+8, cols 2c, 2c+1).
__device__ __forceinline__ void mma_f16_f32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Register budget: HD 128 needs ~230 registers (2 blocks per SM); HD 64 fits 168 without spills
// (3 blocks per SM; left alone, ptxas picks 128 and spills).
template <int HD>
__global__ void __launch_bounds__(kThreads, HD == 64 ? 3 : 2)
prefill_kernel(const float* __restrict__ q, int n_tok, int n_head, int G, int n_ctx, int pos0,
               const __half* __restrict__ cache_k, const __half* __restrict__ cache_v, float qscale,
               float* __restrict__ out) {
  using C = PCfg<HD>;
  constexpr int LDS = C::LDS;
  constexpr int KS = HD / 16;  // k-steps of Q·K^T
  constexpr int DT = HD / 8;   // n-tiles of the output
  extern __shared__ uint4 smem_u4[];
  __half* sk = reinterpret_cast<__half*>(smem_u4);  // [2][kBN][LDS]
  __half* sv = sk + 2 * C::tile_halves;             // [2][kBN][LDS]

  const int g = blockIdx.x;
  const int TB = kRows / G;  // tokens per block
  const int q0 = (gridDim.y - 1 - blockIdx.y) * TB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gq = lane >> 2, tq = lane & 3;  // fragment row group, thread in group

  // This thread's two rows (fragment rows gq and gq + 8 of the warp).
  int tok[2], head[2], qpos[2];
  bool valid[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    const int rho = warp * 16 + gq + 8 * i;
    const int tt = rho / G;
    tok[i] = q0 + tt;
    head[i] = g * G + rho % G;
    valid[i] = tt < TB && tok[i] < n_tok;
    qpos[i] = pos0 + tok[i];  // padding rows: past the block's tokens, harmless (q = 0, not stored)
  }

  // Q fragments, f16, scaled by log2(e)/sqrt(HD): qa[ks] covers dims ks*16 .. ks*16+15.
  uint32_t qa[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ks++) {
#pragma unroll
    for (int hi = 0; hi < 2; hi++) {
#pragma unroll
      for (int i = 0; i < 2; i++) {
        float2 x = make_float2(0.0f, 0.0f);
        if (valid[i])
          x = *reinterpret_cast<const float2*>(q + ((int64_t)tok[i] * n_head + head[i]) * HD + ks * 16 + hi * 8 + tq * 2);
        qa[ks][hi * 2 + i] = pack_f16x2(x.x * qscale, x.y * qscale);
      }
    }
  }

  const int kv_end = pos0 + min(q0 + TB, n_tok);  // keys seen by the block's last query
  const int n_kt = (kv_end + kBN - 1) / kBN;
  const __half* kg = cache_k + (int64_t)g * n_ctx * HD;
  const __half* vg = cache_v + (int64_t)g * n_ctx * HD;

  // Tile kt into stage st: kBN rows of HD halves, 16 bytes per copy; rows >= kv_end are zeros.
  auto load_tile = [&](int kt, int st) {
    constexpr int PER_ROW = HD / 8;
    __half* dk = sk + st * C::tile_halves;
    __half* dv = sv + st * C::tile_halves;
    static_assert(kBN * PER_ROW % kThreads == 0, "whole copies per thread");
#pragma unroll
    for (int it = 0; it < kBN * PER_ROW / kThreads; it++) {
      const int i = threadIdx.x + it * kThreads;
      const int row = i / PER_ROW, ch = i % PER_ROW;
      const int j = kt * kBN + row;
      const bool ok = j < kv_end;
      const int64_t off = (int64_t)(ok ? j : 0) * HD + ch * 8;
      cp_async16(dk + row * LDS + ch * 8, kg + off, ok ? 16 : 0);
      cp_async16(dv + row * LDS + ch * 8, vg + off, ok ? 16 : 0);
    }
  };

  float o[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.0f, 0.0f};

  load_tile(0, 0);
  cp_async_commit();
  for (int kt = 0; kt < n_kt; kt++) {
    if (kt + 1 < n_kt) load_tile(kt + 1, (kt + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile kt has landed (this thread's copies) ...
    __syncthreads();     // ... and everyone's
    const __half* ks_ = sk + (kt & 1) * C::tile_halves;
    const __half* vs_ = sv + (kt & 1) * C::tile_halves;

    // S = Q·K^T: 16 rows x 64 keys per warp, n-tile nt = keys nt*8 .. nt*8+7 of the tile.
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
#pragma unroll
      for (int np = 0; np < 4; np++) {
        // matrices: (keys +0..7, dims +0..7), (keys +0..7, dims +8..15), (keys +8..15, dims +0..7),
        // (keys +8..15, dims +8..15) -> b0, b1 of n-tile 2np, b0, b1 of n-tile 2np+1
        uint32_t b[4];
        ldmatrix_x4(b, ks_ + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
        mma_f16_f32(s[2 * np], qa[ks], b[0], b[1]);
        mma_f16_f32(s[2 * np + 1], qa[ks], b[2], b[3]);
      }
    }

    // Causal mask where the tile reaches past the block's first query (also hides the zero rows
    // past kv_end from every real row).
    if (kt * kBN + kBN - 1 > pos0 + q0) {
#pragma unroll
      for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = kt * kBN + nt * 8 + tq * 2 + (e & 1);
          if (key > qpos[e >> 1]) s[nt][e] = -INFINITY;
        }
    }

    // Online softmax per row (the 4 threads of a quad share a row).
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float corr[2], mref[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      mref[i] = mx[i] == -INFINITY ? 0.0f : mx[i];  // a row with no key yet: p = 0, no NaN
      corr[i] = exp2f(m[i] - mref[i]);                 // m = -inf (first tile): 0
      m[i] = mx[i];
      lsum[i] *= corr[i];
    }
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
      o[dt][0] *= corr[0];
      o[dt][1] *= corr[0];
      o[dt][2] *= corr[1];
      o[dt][3] *= corr[1];
    }
    // P as the A fragments of P·V: k-step kk = keys kk*16 .. kk*16+15 = n-tiles 2kk, 2kk+1.
    uint32_t pa[4][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float p0 = exp2f(s[nt][0] - mref[0]), p1 = exp2f(s[nt][1] - mref[0]);
      const float p2 = exp2f(s[nt][2] - mref[1]), p3 = exp2f(s[nt][3] - mref[1]);
      lsum[0] += p0 + p1;
      lsum[1] += p2 + p3;
      pa[nt >> 1][(nt & 1) * 2 + 0] = pack_f16x2(p0, p1);
      pa[nt >> 1][(nt & 1) * 2 + 1] = pack_f16x2(p2, p3);
    }

    // O += P·V
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
#pragma unroll
      for (int dp = 0; dp < HD / 16; dp++) {
        // transposed matrices: (keys +0..7, dims +0..7), (keys +8..15, dims +0..7),
        // (keys +0..7, dims +8..15), (keys +8..15, dims +8..15) -> b0, b1 of dim tile 2dp, of 2dp+1
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs_ + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + dp * 16 + (lane >> 4) * 8);
        mma_f16_f32(o[2 * dp], pa[kk], b[0], b[1]);
        mma_f16_f32(o[2 * dp + 1], pa[kk], b[2], b[3]);
      }
    }
    __syncthreads();  // the stage is refilled by the next iteration's copies
  }
  cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 2; i++) {
    lsum[i] += __shfl_xor_sync(0xffffffffu, lsum[i], 1);
    lsum[i] += __shfl_xor_sync(0xffffffffu, lsum[i], 2);
  }
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (!valid[i]) continue;
    const float inv = 1.0f / lsum[i];
    float* orow = out + ((int64_t)tok[i] * n_head + head[i]) * HD + tq * 2;
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
      *reinterpret_cast<float2*>(orow + dt * 8) = make_float2(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv);
  }
}

bool aligned(const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

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

template <int HD>
bool launch_prefill(const float* q, int n_tok, int n_head, int G, int n_ctx, int pos0, const __half* k,
                    const __half* v, float* out, int n_head_kv, cudaStream_t s) {
  using C = PCfg<HD>;
  static std::atomic<uint64_t> done{0};
  if (!ensure_smem((const void*)prefill_kernel<HD>, C::smem_bytes, done)) return false;
  const int tb = kRows / G;
  const int n_qt = (n_tok + tb - 1) / tb;
  if (n_qt > 65535) return false;
  const float qscale = (float)(1.4426950408889634 / std::sqrt((double)HD));  // log2(e) / sqrt(HD)
  prefill_kernel<HD><<<dim3((unsigned)n_head_kv, (unsigned)n_qt), kThreads, C::smem_bytes, s>>>(
      q, n_tok, n_head, G, n_ctx, pos0, k, v, qscale, out);
  return true;
}

bool attention_prefill_f16(const float* q, int n_tok, int n_head, int n_head_kv, int head_dim, int n_ctx, int pos0,
                           const void* cache_k, const void* cache_v, float* out, cudaStream_t s) {
  if (n_tok < 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv != 0) return false;
  const int G = n_head / n_head_kv;
  if (G > kRows || (head_dim != 64 && head_dim != 128) || pos0 < 0 || n_ctx <= 0) return false;
  if ((int64_t)pos0 + n_tok > n_ctx) return false;
  if (!q || !cache_k || !cache_v || !out) return false;
  if (!aligned(q, 8) || !aligned(out, 8) || !aligned(cache_k, 16) || !aligned(cache_v, 16)) return false;
  if (n_tok == 0) return true;
  const auto* k = static_cast<const __half*>(cache_k);
  const auto* v = static_cast<const __half*>(cache_v);
  return head_dim == 64 ? launch_prefill<64>(q, n_tok, n_head, G, n_ctx, pos0, k, v, out, n_head_kv, s)
                        : launch_prefill<128>(q, n_tok, n_head, G, n_ctx, pos0, k, v, out, n_head_kv, s);
}

}  // namespace

void register_attention_prefill(CudaKernels& t) { t.attention_prefill_f16 = attention_prefill_f16; }

}  // namespace eoq::cuda
