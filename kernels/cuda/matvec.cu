// Decode products y[t][r] (+)= sum_c W[r][c] x_t[c] for n_tok <= 8 tokens (cuda_kernels.h,
// mul_mat_vec). Memory bound: each weight byte is read once per call, for all tokens.
//
// Quantized weights (Q4_0 .. Q6_K) against Q8_1 activations (quantize.cu), integer dp4a dots:
//  * a warp owns a tile of 16 consecutive rows and walks its share of the columns in chunks of
//    256 (8 units of 32 values: 8 legacy blocks, or one K-quant super-block); the CTA's warps
//    (ksplit of them, 1..8) take every ksplit-th chunk of the same 16 rows and add their partial
//    sums at the end through shared memory, so wide matrices with few rows still fill the GPU;
//  * each chunk's 16 row segments and its n_tok activation segments are staged into shared memory
//    by 16-byte cp.async copies (coalesced, alignment-agnostic: GGUF blocks of 18/22/34/110/210
//    bytes sit at 2-byte offsets), kStages chunks in flight per warp;
//  * lane = (row group rg = lane/8, unit kb = lane%8): it loads activation unit kb of every token
//    once per chunk into registers and applies it to rows rg, rg+4, rg+8, rg+12, decoding each
//    weight unit once for all tokens (quant_blocks.cuh: Unit and its dot formula);
//  * the 8 lanes of a row group are summed with shuffles, the warps through shared memory.
// Float weights (F32/F16/BF16) read x directly, float FMAs: 16-byte loads when the rows and x are
// 16-byte aligned, a warp per R rows, each lane a strided slice of the columns, two vectors per
// row in flight, one shuffle reduction per (row, token) at the end; element loads otherwise.
#include <algorithm>
#include <atomic>
#include <climits>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/quant_blocks.cuh"

namespace eoq::cuda {

namespace {

constexpr int kTileRows = 16;       // rows of a warp's tile
constexpr int kChunkUnits = 8;      // 32-value units per chunk (256 columns)
constexpr int kStages = 3;          // chunks in flight per warp
constexpr int kMaxTok = 8;          // tokens per call
constexpr int kMaxWarps = 8;        // warps per CTA (the column split)
constexpr int kQ8Bytes = 36;        // block_q8_1
constexpr int kSmemLimit = 48 * 1024;  // per CTA: no opt-in attribute needed

constexpr int odd(int n) { return n | 1; }  // an odd count of 16-byte pieces spreads rows over banks

// Shared-memory geometry of one stage for format F: 16 weight row segments, then n_tok activation
// segments, then 16 bytes of slack (the funnel loader reads up to 2 bytes past a segment).
template <class F>
struct Tile {
  static constexpr int kChunkBytes = F::kUnits == 1 ? kChunkUnits * F::kBlockBytes : F::kBlockBytes;
  static constexpr int kRowStride = 16 * odd(stage_pieces_max(kChunkBytes));
  static constexpr int kWeightBytes = kTileRows * kRowStride;
};
constexpr int kActChunkBytes = kChunkUnits * kQ8Bytes;
constexpr int kActStride = 16 * odd(stage_pieces_max(kActChunkBytes));

inline int stage_bytes_for(int tile_weight_bytes, int n_tok) { return tile_weight_bytes + n_tok * kActStride + 16; }

// One activation unit (32 values of a Q8_1 row) in registers.
struct Act {
  uint32_t q[8];
  float d;
  int s0, s1;  // sums of the quants of values 0..15 and 16..31
};

EOQ_HD void load_act(const uint8_t* p, Act& a) {  // p: a block_q8_1, 4-byte aligned
  LoadA4::words<8>(p + 4, a.q);
  a.d = f16_to_f32((uint16_t)ld_u16(p));
  int s0 = 0, s1 = 0;
#pragma unroll
  for (int j = 0; j < 4; j++) {
    s0 = dp4a(0x01010101, (int)a.q[j], s0);
    s1 = dp4a(0x01010101, (int)a.q[4 + j], s1);
  }
  a.s0 = s0;
  a.s1 = s1;
}

// sum_i x_i * xa_i over one unit (x: weights, xa: the activation values da * a_i); see Unit.
template <class F>
EOQ_HD float unit_dot(const Unit& w, const Act& a) {
  int c0 = 0, c1 = 0;
#pragma unroll
  for (int j = 0; j < 4; j++) {
    c0 = dp4a((int)w.q[j], (int)a.q[j], c0);
    c1 = dp4a((int)w.q[4 + j], (int)a.q[4 + j], c1);
  }
  float r;
  if (F::kHalves) {
    const int i = w.sc[0] * (c0 + F::kOffset * a.s0) + w.sc[1] * (c1 + F::kOffset * a.s1);
    r = w.d * (float)i;
    if (F::kMin) r += w.dm * (float)(w.mn[0] * a.s0 + w.mn[1] * a.s1);
  } else {
    int i = c0 + c1 + F::kOffset * (a.s0 + a.s1);
    if (F::kScaled) i *= w.sc[0];
    r = w.d * (float)i;
    if (F::kMin) r += w.dm * (float)(w.mn[0] * (a.s0 + a.s1));
  }
  return a.d * r;
}

// Byte offset within a row, and length, of the weights of chunk c (nu = its units, <= 8).
template <class F>
EOQ_HD int chunk_weight_offset(int c) { return F::kUnits == 1 ? c * kChunkUnits * F::kBlockBytes : c * F::kBlockBytes; }
template <class F>
EOQ_HD int chunk_weight_len(int nu) { return F::kUnits == 1 ? nu * F::kBlockBytes : F::kBlockBytes; }

// grid.x = ceil(n_rows / 16), block = 32 * n_warps; dynamic shared memory = n_warps * kStages *
// stage_bytes (stages) + n_warps * 16 * NT floats (partial sums). NT >= n_tok: the token count
// rounded up to 1, 2, 4 or 8 (register arrays need a compile-time size).
template <class F, int NT>
__global__ void __launch_bounds__(32 * kMaxWarps)
    mul_mat_vec_q(const uint8_t* __restrict__ w, size_t row_bytes, int n_rows, int n_units, const uint8_t* __restrict__ xq,
                  int n_tok, float* __restrict__ y, int64_t ldy, int accumulate, int stage_bytes) {
  using TL = Tile<F>;
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int kb = lane & 7, rg = lane >> 3;
  const int64_t r0 = (int64_t)blockIdx.x * kTileRows;
  const int n_chunks = (n_units + kChunkUnits - 1) / kChunkUnits;
  const size_t act_row = (size_t)n_units * kQ8Bytes;
  const uint8_t* tile = w + (size_t)r0 * row_bytes;
  uint8_t* stages = smem + (size_t)warp * kStages * stage_bytes;
  // A valid, 16-aligned address of each buffer for copies that read nothing.
  const uint8_t* w_safe = w - ((uintptr_t)w & 15);
  const uint8_t* x_safe = xq - ((uintptr_t)xq & 15);

  // Copy duties, fixed for the whole loop. Weights: lane copies pieces lane%2, lane%2 + 2, ... of
  // row lane/2 of the tile. Activations: kLanesPerTok lanes per token (NT tokens), lane copies
  // pieces lane % kLanesPerTok + kLanesPerTok * m of token lane / kLanesPerTok.
  constexpr int kWPieces = TL::kRowStride / 16, kWIter = (kWPieces + 1) / 2;
  constexpr int kLanesPerTok = 32 / NT, kAPieces = kActStride / 16;
  constexpr int kAIter = (kAPieces + kLanesPerTok - 1) / kLanesPerTok;
  const int wr = lane >> 1, wk0 = lane & 1;
  const int at = lane / kLanesPerTok, ak0 = lane % kLanesPerTok;

  // Misalignment (address & 15) of this lane's four rows and of each token's activation row; a
  // segment's bytes start at that plus its offset, mod 16, in the stage.
  uint32_t w_mis[4], x_mis[NT];
#pragma unroll
  for (int e = 0; e < 4; e++) w_mis[e] = (uint32_t)((uintptr_t)(tile + (size_t)(rg + 4 * e) * row_bytes) & 15);
#pragma unroll
  for (int t = 0; t < NT; t++) x_mis[t] = (uint32_t)((uintptr_t)(xq + (size_t)t * act_row) & 15);

  // This warp's chunks: warp, warp + n_warps, ... Staged in that order, so the copy state below
  // (this lane's next source segments and the valid bytes from them on: rows past n_rows have
  // none) advances by a fixed stride per chunk.
  const int my_chunks = warp < n_chunks ? (n_chunks - 1 - warp) / n_warps + 1 : 0;
  const int w_step = chunk_weight_offset<F>(n_warps), x_step = n_warps * kChunkUnits * kQ8Bytes;
  const uint8_t* w_src = tile + (size_t)wr * row_bytes + chunk_weight_offset<F>(warp);
  int64_t w_left = (int64_t)(n_rows - 1 - (r0 + wr)) * (int64_t)row_bytes +
                   (int64_t)(n_units / F::kUnits) * F::kBlockBytes - chunk_weight_offset<F>(warp);
  const uint8_t* x_src = xq + (size_t)at * act_row + (size_t)warp * kChunkUnits * kQ8Bytes;
  int64_t x_left = (int64_t)(n_tok - at) * (int64_t)act_row - (int64_t)warp * kChunkUnits * kQ8Bytes;
  int next_units = n_units - warp * kChunkUnits;  // units left from the next chunk on
  const SmemBuf buf(stages);
  // Stage this warp's next chunk into the stage at byte offset st (this lane's share).
  auto issue_next = [&](int st) {
    const int nu = min(kChunkUnits, next_units);
    stage_segment<kWIter>(buf, st + wr * TL::kRowStride, w_src, chunk_weight_len<F>(nu), w_left, wk0, 2, w_safe);
    if (at < n_tok)
      stage_segment<kAIter>(buf, st + TL::kWeightBytes + at * kActStride, x_src, nu * kQ8Bytes, x_left, ak0,
                            kLanesPerTok, x_safe);
    w_src += w_step;
    w_left -= w_step;
    x_src += x_step;
    x_left -= x_step;
    next_units -= n_warps * kChunkUnits;
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; s++) {
    if (s < my_chunks) issue_next(s * stage_bytes);
    stage_commit();
  }

  float acc[4][NT];
#pragma unroll
  for (int e = 0; e < 4; e++)
#pragma unroll
    for (int t = 0; t < NT; t++) acc[e][t] = 0.0f;

  // Stage of chunk i: i % kStages, the one refilled in iteration i: (i - 1) % kStages.
  int st_read = 0, st_fill = (kStages - 1) * stage_bytes;
  const int st_end = kStages * stage_bytes;
  for (int i = 0; i < my_chunks; i++) {
    // Refill the stage consumed in iteration i - 1 (every lane is past it: the __syncwarp below).
    if (i + kStages - 1 < my_chunks) issue_next(st_fill);
    stage_commit();
    stage_wait<kStages - 1>();  // this lane's copies of chunk i have landed
    __syncwarp();               // ... and every other lane's

    const int c = warp + i * n_warps;
    const uint8_t* st = stages + st_read;
    st_read = st_read + stage_bytes == st_end ? 0 : st_read + stage_bytes;
    st_fill = st_fill + stage_bytes == st_end ? 0 : st_fill + stage_bytes;
    const int nu = min(kChunkUnits, n_units - c * kChunkUnits);
    if (kb < nu) {
      Act a[NT];
      const uint32_t aoff = (uint32_t)(c * kChunkUnits * kQ8Bytes);
#pragma unroll
      for (int t = 0; t < NT; t++)
        if (t == 0 || t < n_tok) load_act(st + TL::kWeightBytes + t * kActStride + ((x_mis[t] + aoff) & 15) + kb * kQ8Bytes, a[t]);
      const uint32_t woff = (uint32_t)chunk_weight_offset<F>(c);
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const uint8_t* p = st + (rg + 4 * e) * TL::kRowStride + ((w_mis[e] + woff) & 15) +
                           (F::kUnits == 1 ? kb * F::kBlockBytes : 0);
        Unit u;
        F::template unit<typename F::Loader>(p, F::kUnits == 1 ? 0 : kb, u);
#pragma unroll
        for (int t = 0; t < NT; t++)
          if (t == 0 || t < n_tok) acc[e][t] += unit_dot<F>(u, a[t]);
      }
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }

  // Sum the 8 lanes of each row group, then the warps.
#pragma unroll
  for (int e = 0; e < 4; e++)
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float v = acc[e][t];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      acc[e][t] = v;
    }
  float* red = reinterpret_cast<float*>(smem + (size_t)n_warps * kStages * stage_bytes);  // [n_warps][16][NT]
  if (kb == 0) {
#pragma unroll
    for (int e = 0; e < 4; e++)
#pragma unroll
      for (int t = 0; t < NT; t++) red[(warp * kTileRows + rg + 4 * e) * NT + t] = acc[e][t];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTileRows * n_tok; idx += blockDim.x) {
    const int r = idx % kTileRows, t = idx / kTileRows;
    if (r0 + r >= n_rows) continue;
    float s = 0.0f;
    for (int v = 0; v < n_warps; v++) s += red[(v * kTileRows + r) * NT + t];
    float* out = y + (int64_t)t * ldy + r0 + r;
    *out = accumulate ? *out + s : s;
  }
}

// ---- float weights ------------------------------------------------------------------------------

template <GGMLType T>
struct FloatW;
template <>
struct FloatW<GGMLType::F32> {
  static constexpr int kBytes = 4;
  EOQ_HD static float at(const uint8_t* p) {  // p 2-aligned
    return bits_to_f32(ld_u16(p) | ld_u16(p + 2) << 16);
  }
  EOQ_HD static float lane(const uint4& v, int e) {  // element e (0..3) of a 16-byte vector
    return bits_to_f32(e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w);
  }
};
template <>
struct FloatW<GGMLType::F16> {
  static constexpr int kBytes = 2;
  EOQ_HD static float at(const uint8_t* p) { return f16_to_f32((uint16_t)ld_u16(p)); }
  EOQ_HD static float lane(const uint4& v, int e) {  // element e (0..7)
    const uint32_t b = (e >> 1) == 0 ? v.x : (e >> 1) == 1 ? v.y : (e >> 1) == 2 ? v.z : v.w;
    return f16_to_f32((uint16_t)(b >> (16 * (e & 1))));
  }
};
template <>
struct FloatW<GGMLType::BF16> {
  static constexpr int kBytes = 2;
  EOQ_HD static float at(const uint8_t* p) { return bf16_to_f32((uint16_t)ld_u16(p)); }
  EOQ_HD static float lane(const uint4& v, int e) {
    const uint32_t b = (e >> 1) == 0 ? v.x : (e >> 1) == 1 ? v.y : (e >> 1) == 2 ? v.z : v.w;
    return bf16_to_f32((uint16_t)(b >> (16 * (e & 1))));
  }
};

template <int R, int NT>
__device__ __forceinline__ void warp_store(float (&acc)[R][NT], int64_t row0, int n_rows, int n_tok, float* y,
                                           int64_t ldy, int accumulate, int lane) {
#pragma unroll
  for (int i = 0; i < R; i++)
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float v = acc[i][t];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && t < n_tok && row0 + i < n_rows) {
        float* out = y + (int64_t)t * ldy + row0 + i;
        *out = accumulate ? *out + v : v;
      }
    }
}

// Vector path: w, row_bytes and x 16-byte aligned, n_cols a multiple of the vector width. A warp
// per R rows; lane l reads 16-byte vectors l, l+32, ... of each row, two vectors per row in
// flight. grid.x * 4 warps * R >= n_rows, block 128.
template <GGMLType T, int NT, int R>
__global__ void __launch_bounds__(128)
    mul_mat_vec_f(const uint8_t* __restrict__ w, size_t row_bytes, int n_cols, int n_rows, const float* __restrict__ x,
                  int n_tok, float* __restrict__ y, int64_t ldy, int accumulate) {
  using W = FloatW<T>;
  constexpr int kVW = 16 / W::kBytes;  // values per vector
  const int lane = threadIdx.x & 31;
  const int64_t row0 = ((int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
  if (row0 >= n_rows) return;  // whole warps only; no block barrier below
  const uint8_t* rows[R];
#pragma unroll
  for (int i = 0; i < R; i++) rows[i] = w + (size_t)min(row0 + i, (int64_t)n_rows - 1) * row_bytes;
  float acc[R][NT];
#pragma unroll
  for (int i = 0; i < R; i++)
#pragma unroll
    for (int t = 0; t < NT; t++) acc[i][t] = 0.0f;

  const int n_vec = n_cols / kVW;
  auto consume = [&](const uint4 (&wv)[R], int v) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
      if (t >= n_tok) break;
      const float4* xp = reinterpret_cast<const float4*>(x + (size_t)t * n_cols + (size_t)v * kVW);
      float xs[kVW];
#pragma unroll
      for (int q = 0; q < kVW / 4; q++) {
        const float4 f = xp[q];
        xs[4 * q] = f.x;
        xs[4 * q + 1] = f.y;
        xs[4 * q + 2] = f.z;
        xs[4 * q + 3] = f.w;
      }
#pragma unroll
      for (int i = 0; i < R; i++)
#pragma unroll
        for (int e = 0; e < kVW; e++) acc[i][t] = fmaf(W::lane(wv[i], e), xs[e], acc[i][t]);
    }
  };
  for (int v = lane; v < n_vec; v += 64) {
    const bool two = v + 32 < n_vec;
    uint4 a[R], b[R];
#pragma unroll
    for (int i = 0; i < R; i++) a[i] = reinterpret_cast<const uint4*>(rows[i])[v];
#pragma unroll
    for (int i = 0; i < R; i++) b[i] = two ? reinterpret_cast<const uint4*>(rows[i])[v + 32] : make_uint4(0, 0, 0, 0);
    consume(a, v);
    if (two) consume(b, v + 32);
  }
  warp_store<R, NT>(acc, row0, n_rows, n_tok, y, ldy, accumulate, lane);
}

// Any alignment (2-byte at least) and any n_cols: one element per lane and step, two rows per
// warp, all kMaxTok token slots (predicated on n_tok). Same grid as above with R = 2.
template <GGMLType T>
__global__ void __launch_bounds__(128)
    mul_mat_vec_f_any(const uint8_t* __restrict__ w, size_t row_bytes, int n_cols, int n_rows,
                      const float* __restrict__ x, int n_tok, float* __restrict__ y, int64_t ldy, int accumulate) {
  using W = FloatW<T>;
  constexpr int R = 2;
  const int lane = threadIdx.x & 31;
  const int64_t row0 = ((int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
  if (row0 >= n_rows) return;
  const uint8_t* rows[R];
#pragma unroll
  for (int i = 0; i < R; i++) rows[i] = w + (size_t)min(row0 + i, (int64_t)n_rows - 1) * row_bytes;
  float acc[R][kMaxTok];
#pragma unroll
  for (int i = 0; i < R; i++)
#pragma unroll
    for (int t = 0; t < kMaxTok; t++) acc[i][t] = 0.0f;
  for (int c = lane; c < n_cols; c += 32) {
    float wv[R];
#pragma unroll
    for (int i = 0; i < R; i++) wv[i] = W::at(rows[i] + (size_t)c * W::kBytes);
#pragma unroll
    for (int t = 0; t < kMaxTok; t++) {
      if (t >= n_tok) break;
      const float xv = x[(size_t)t * n_cols + c];
#pragma unroll
      for (int i = 0; i < R; i++) acc[i][t] = fmaf(wv[i], xv, acc[i][t]);
    }
  }
  warp_store<R, kMaxTok>(acc, row0, n_rows, n_tok, y, ldy, accumulate, lane);
}

// ---- launchers ----------------------------------------------------------------------------------

int sm_count() {  // of the current device, cached per device
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v > 0) return v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) v = 132;
  cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

int round_tokens(int n_tok) { return n_tok <= 1 ? 1 : n_tok <= 2 ? 2 : n_tok <= 4 ? 4 : 8; }

template <class F, int NT>
void launch_q(const uint8_t* w, size_t row_bytes, int n_rows, int n_units, const uint8_t* xq, int n_tok, float* y,
              int64_t ldy, bool accumulate, cudaStream_t s) {
  const int stage_bytes = stage_bytes_for(Tile<F>::kWeightBytes, n_tok);
  const int per_warp = kStages * stage_bytes + kTileRows * NT * (int)sizeof(float);
  const int n_groups = (n_rows + kTileRows - 1) / kTileRows;
  const int n_chunks = (n_units + kChunkUnits - 1) / kChunkUnits;
  // Split the columns over enough warps for about 8 resident warps per SM, within the chunk
  // count and the 48 KB of shared memory a CTA gets without opting in.
  const int want = (8 * sm_count() + n_groups - 1) / n_groups;
  const int n_warps = std::max(1, std::min({want, kMaxWarps, n_chunks, kSmemLimit / per_warp}));
  mul_mat_vec_q<F, NT><<<n_groups, 32 * n_warps, (size_t)n_warps * per_warp, s>>>(
      w, row_bytes, n_rows, n_units, xq, n_tok, y, ldy, accumulate ? 1 : 0, stage_bytes);
}

template <class F>
bool mul_mat_vec_quant(const void* w, size_t row_bytes, int64_t n_cols, int64_t n_rows, const void* xq, int n_tok,
                       float* y, int64_t ldy, bool accumulate, cudaStream_t s) {
  if (n_cols % F::kBlockValues != 0 || !xq || ((uintptr_t)xq & 3)) return false;
  if (row_bytes < (size_t)(n_cols / F::kBlockValues) * F::kBlockBytes) return false;
  const uintptr_t align = F::kAlign4 ? 3 : 1;  // the shared-memory loaders' assumption
  if (((uintptr_t)w & align) || (row_bytes & align)) return false;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(xq);
  const int nr = (int)n_rows, nu = (int)(n_cols / 32);
  switch (round_tokens(n_tok)) {
    case 1: launch_q<F, 1>(wb, row_bytes, nr, nu, xb, n_tok, y, ldy, accumulate, s); break;
    case 2: launch_q<F, 2>(wb, row_bytes, nr, nu, xb, n_tok, y, ldy, accumulate, s); break;
    case 4: launch_q<F, 4>(wb, row_bytes, nr, nu, xb, n_tok, y, ldy, accumulate, s); break;
    default: launch_q<F, 8>(wb, row_bytes, nr, nu, xb, n_tok, y, ldy, accumulate, s); break;
  }
  return true;
}

template <GGMLType T>
bool mul_mat_vec_float(const void* w, size_t row_bytes, int64_t n_cols, int64_t n_rows, const float* x, int n_tok,
                       float* y, int64_t ldy, bool accumulate, cudaStream_t s) {
  using W = FloatW<T>;
  if (!x || row_bytes < (size_t)n_cols * W::kBytes || ((uintptr_t)w & 1) || (row_bytes & 1) || ((uintptr_t)x & 3))
    return false;
  const auto* wb = static_cast<const uint8_t*>(w);
  const int nc = (int)n_cols, nr = (int)n_rows, acc = accumulate ? 1 : 0;
  constexpr int kVW = 16 / W::kBytes;
  const bool vec = ((uintptr_t)w & 15) == 0 && (row_bytes & 15) == 0 && ((uintptr_t)x & 15) == 0 && nc % kVW == 0;
  if (!vec) {  // two rows per warp, four warps per CTA
    const unsigned grid = (unsigned)(((n_rows + 1) / 2 + 3) / 4);
    mul_mat_vec_f_any<T><<<grid, 128, 0, s>>>(wb, row_bytes, nc, nr, x, n_tok, y, ldy, acc);
    return true;
  }
  // Two rows per warp up to four tokens; four rows for eight, so that each x load serves more rows.
  const int nt = round_tokens(n_tok);
  const int R = nt <= 4 ? 2 : 4;
  const unsigned grid = (unsigned)(((n_rows + R - 1) / R + 3) / 4);
  switch (nt) {
    case 1: mul_mat_vec_f<T, 1, 2><<<grid, 128, 0, s>>>(wb, row_bytes, nc, nr, x, n_tok, y, ldy, acc); break;
    case 2: mul_mat_vec_f<T, 2, 2><<<grid, 128, 0, s>>>(wb, row_bytes, nc, nr, x, n_tok, y, ldy, acc); break;
    case 4: mul_mat_vec_f<T, 4, 2><<<grid, 128, 0, s>>>(wb, row_bytes, nc, nr, x, n_tok, y, ldy, acc); break;
    default: mul_mat_vec_f<T, 8, 4><<<grid, 128, 0, s>>>(wb, row_bytes, nc, nr, x, n_tok, y, ldy, acc); break;
  }
  return true;
}

bool mul_mat_vec(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t n_rows, const float* x,
                 const void* xq, int n_tok, float* y, int64_t ldy, bool accumulate, cudaStream_t s) {
  if (n_tok < 1 || n_tok > kMaxTok || n_cols <= 0 || n_rows < 0 || !w || !y) return false;
  if (n_rows > INT_MAX / 2 || n_cols > INT_MAX / 8 || (n_tok > 1 && ldy < n_rows)) return false;
  if (n_rows == 0) return true;
  switch (type) {
    case GGMLType::F32: return mul_mat_vec_float<GGMLType::F32>(w, row_bytes, n_cols, n_rows, x, n_tok, y, ldy, accumulate, s);
    case GGMLType::F16: return mul_mat_vec_float<GGMLType::F16>(w, row_bytes, n_cols, n_rows, x, n_tok, y, ldy, accumulate, s);
    case GGMLType::BF16: return mul_mat_vec_float<GGMLType::BF16>(w, row_bytes, n_cols, n_rows, x, n_tok, y, ldy, accumulate, s);
    default: break;
  }
  bool ok = false;
  const bool known = with_quant_format(type, [&](auto f) {
    using F = decltype(f);
    ok = mul_mat_vec_quant<F>(w, row_bytes, n_cols, n_rows, xq, n_tok, y, ldy, accumulate, s);
  });
  return known && ok;
}

}  // namespace

void register_matvec(CudaKernels& t) { t.mul_mat_vec = mul_mat_vec; }

}  // namespace eoq::cuda
