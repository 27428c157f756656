// AVX2 (+FMA, F16C) activation quantizers and weight × activation dot products: the avx2 table's
// quantize_act and vec_dot (contracts in kernels/kernels.h, formats and formulas in
// kernels/quant_dot.h, scalar spec in kernels/ref/quant_dot.cpp). Compiled with -mavx2 -mfma
// -mf16c and only reached through cpu_kernels_avx2(), i.e. after CPUID said yes.
//
// Quantizers: the same bytes as the reference. Each step is the same IEEE float32 operation (the
// max of |x| is exact, d = amax/127, id = 127/amax and x*id are single roundings), and
// _mm256_cvtps_epi32 rounds half to even under the default MXCSR mode, as std::nearbyint does;
// pack saturation is the reference's clamp (NaN converts to INT_MIN and saturates to -128 too).
//
// Dot products: tiles of NR weight rows × NT tokens. Per block each (row, token) pair does
//   int16 pair sums  p = maddubs(w_u8, a_s8)          (w unsigned: 4/5/6-bit quants; Q8_0 weights
//                                                       use |w| and a·sign(w))
//   int32            isum = madd(p, 1 or int16 scales) (K-quants: the sub-block scales, summed
//                                                       over the super-block in int32)
//   float            acc += float(isum) · (d_w · d_a)   (8 lanes, summed once at the end)
// so the integer part of every block is exact, as in GGML. The operations for a pair are the
// same in every tile shape, which makes each result independent of nr, nt and the neighbours
// (the contract in kernels.h). A tile keeps NR·NT accumulators in registers (AVX2 has 16), and
// the weight rows of a call stay in L1/L2 while the kernel walks the tokens NT at a time.
//
// Legacy offsets (Q4_0: q-8, Q5_0: q-16) are applied in int16 by subtracting maddubs(offset, a),
// which stays exact (|p| <= 2*31*127 + 2*16*127 < 2^15). The Q4_1/Q5_1 minimum term Σ_b m_w s_a
// is a separate float dot over the blocks, added at the end. With one token (decode) the tiles
// are 4 rows × 1 token and the next tile's rows are prefetched: there the rows stream from memory.
// Q2_K and Q3_K use the scalar reference (rare formats).
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/fp16.h"
#include "kernels/quant_dot.h"

namespace eoq {

namespace {


// Fully unroll the loops over a tile's rows and tokens, so that the accumulator arrays become
// registers (GCC keeps arrays indexed by loop counters in memory otherwise).
#define EOQ_UNROLL _Pragma("GCC unroll 16")
// Tiles are compiled as functions of their own (inlined into the walkers they get worse code).
#define EOQ_NOINLINE __attribute__((noinline))

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float h2f(const uint8_t* p) { return _cvtsh_ss(rd16(p)); }  // exact for every finite fp16
inline __m256i load32(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline __m128i load16(const void* p) { return _mm_loadu_si128((const __m128i*)p); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline __m256 absf(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// ---- activation quantizers ----

// 32 floats x -> 32 int8 round_half_even(x * scale) in value order (saturating); *sum = Σ of them.
inline __m256i round_pack32(const float* x, __m256 scale, int* sum) {
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), scale));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), scale));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), scale));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), scale));
  if (sum) *sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
  // packs work per 128-bit lane: the bytes come out as dwords (0-3, 8-11, 16-19, 24-27 | 4-7, ...)
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void quantize_q8_0(const float* x, uint8_t* out, int64_t nb, bool q8_1) {
  const size_t bytes = q8_1 ? sizeof(block_q8_1) : sizeof(block_q8_0);
  for (int64_t i = 0; i < nb; i++, x += QK, out += bytes) {
    __m256 mx = _mm256_max_ps(absf(_mm256_loadu_ps(x)), absf(_mm256_loadu_ps(x + 8)));
    mx = _mm256_max_ps(mx, _mm256_max_ps(absf(_mm256_loadu_ps(x + 16)), absf(_mm256_loadu_ps(x + 24))));
    const float amax = hmax(mx);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    const __m256i q = round_pack32(x, _mm256_set1_ps(id), q8_1 ? &sum : nullptr);
    const uint16_t dh = fp32_to_fp16(d);
    std::memcpy(out, &dh, 2);
    if (q8_1) {
      const uint16_t sh = fp32_to_fp16(d * (float)sum);
      std::memcpy(out + 2, &sh, 2);
    }
    _mm256_storeu_si256((__m256i*)(out + (q8_1 ? 4 : 2)), q);
  }
}

void quantize_q8_K(const float* x, uint8_t* out, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK_K, out += sizeof(block_q8_K)) {
    __m256 mx = _mm256_setzero_ps();
    for (int k = 0; k < QK_K; k += 8) mx = _mm256_max_ps(mx, absf(_mm256_loadu_ps(x + k)));
    const float amax = hmax(mx);
    block_q8_K b;
    std::memset(&b, 0, sizeof b);
    if (amax != 0.0f) {
      int j = 0;  // the first element of largest magnitude (the reference's strict '>' scan)
      const __m256 va = _mm256_set1_ps(amax);
      for (int k = 0; k < QK_K; k += 8) {
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(absf(_mm256_loadu_ps(x + k)), va, _CMP_EQ_OQ));
        if (mask) {
          j = k + __builtin_ctz((unsigned)mask);
          break;
        }
      }
      const float iscale = -127.0f / x[j];
      const __m256 s = _mm256_set1_ps(iscale);
      for (int k = 0; k < QK_K; k += 32) _mm256_storeu_si256((__m256i*)(b.qs + k), round_pack32(x + k, s, nullptr));
      for (int g = 0; g < QK_K / 16; g++) {
        // Σ of 16 int8: widen to int16, add pairs into int32 (madd), add those up
        const __m256i w = _mm256_cvtepi8_epi16(load16(b.qs + 16 * g));
        b.bsums[g] = (int16_t)hsum_i32(_mm256_madd_epi16(w, _mm256_set1_epi16(1)));
      }
      b.d = 1.0f / iscale;
    }
    std::memcpy(out, &b, sizeof b);
  }
}

void quantize_f16(const float* x, uint8_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(out + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) {
    const uint16_t h = fp32_to_fp16(x[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

void quantize_bf16(const float* x, uint8_t* out, int64_t n) {
  const __m256i absmask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(0x40);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    // round to nearest even: add 0x7fff plus the lowest kept bit, keep the top 16 bits
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(half, odd)), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absmask), inf);
    const __m256i v = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet), nan);
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x08);  // 8 uint16, in order
    _mm_storeu_si128((__m128i*)(out + 2 * i), _mm256_castsi256_si128(p));
  }
  for (; i < n; i++) {  // the same arithmetic on one value
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    const uint16_t h = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40)
                                                        : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

// ---- dot products: shared machinery ----

// Per-thread scratch: the current token group's activations (repacked), a tile's row minima.
struct Scratch {
  std::vector<int8_t> aq;
  std::vector<float> ad, as, wm;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Calls tile<R, T>(args...) for T = nt in 1..4 (T is a template argument so that the
// accumulators are registers).
template <int R, template <int, int> class Tile, class... Args>
inline void tile_nt(int nt, Args&&... args) {
  switch (nt) {
    case 1: return Tile<R, 1>::run(args...);
    case 2: return Tile<R, 2>::run(args...);
    case 3: return Tile<R, 3>::run(args...);
    default: return Tile<R, 4>::run(args...);
  }
}
constexpr int kNT = 4;  // tokens per tile
// Rows per tile: 2 with several tokens (2×4 accumulators + operands fit the 16 registers), 4
// when there is one token (decode: no token reuse, more rows in flight for the loads).
inline int rows_per_tile(int nt) { return nt == 1 ? 4 : 2; }

inline void prefetch(const uint8_t* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) _mm_prefetch((const char*)p + i, _MM_HINT_T0);
}
// How far ahead of a decode kernel the weight rows are prefetched: a call's rows are one
// contiguous stream read once, and DRAM latency needs several KiB in flight per core.
constexpr size_t kPrefetchAhead = 8192;
// The stream [w, end): its first kPrefetchAhead bytes at the start of a call, then before each
// tile the tile's bytes [p, p + n) kPrefetchAhead further on.
inline void prefetch_stream_start(const uint8_t* w, const uint8_t* end) {
  prefetch(w, std::min(kPrefetchAhead, (size_t)(end - w)));
}
inline void prefetch_stream_ahead(const uint8_t* p, size_t n, const uint8_t* end) {
  p += kPrefetchAhead;
  if (p < end) prefetch(p, std::min(n, (size_t)(end - p)));
}

// Walks an nr × nt call in tiles: tokens kNT at a time (outer), rows in tiles (inner), so the
// rows of the call are re-read from cache for each token group. prep_tokens(t0, ntg) runs once
// per token group before its tiles.
template <template <int, int> class Tile, class Ctx, class Prep>
void walk(const Ctx& c, int nr, int nt, Prep prep_tokens) {
  for (int t0 = 0; t0 < nt; t0 += kNT) {
    const int ntg = std::min(kNT, nt - t0);
    prep_tokens(t0, ntg);
    const int R = rows_per_tile(ntg);
    int r0 = 0;
    if (R == 4) {
      // One token: the rows stream from memory once, so keep kPrefetchAhead bytes of them on
      // their way (the hardware prefetcher alone leaves half the bandwidth unused here).
      const uint8_t* end = c.w + (size_t)nr * c.ws;
      prefetch_stream_start(c.w, end);
      for (; r0 + 4 <= nr; r0 += 4) {
        prefetch_stream_ahead(c.w + (size_t)r0 * c.ws, 4 * c.ws, end);
        Tile<4, 1>::run(c, r0, t0);
      }
    }
    for (; r0 + 2 <= nr; r0 += 2) tile_nt<2, Tile>(ntg, c, r0, t0);
    for (; r0 < nr; r0++) tile_nt<1, Tile>(ntg, c, r0, t0);
  }
}

// ---- legacy formats (blocks of 32) ----

// Weight formats (layouts in kernels/ref/quants.cpp): block bytes, the offset subtracted from the
// quants, the activation block's size and where its quants start, and the 32 quants of one block
// as unsigned bytes (Q8_0: signed) in value order.
inline __m256i nibbles32(const uint8_t* qs) {  // 16 bytes: low nibbles = values 0..15, high = 16..31
  const __m256i q = _mm256_broadcastsi128_si256(load16(qs));
  return _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
}
inline __m256i bit4_from_u32(uint32_t qh) {  // byte j = 0x10 if bit j of qh is set
  const __m256i v = _mm256_set1_epi32((int)qh);
  const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                       2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(v, sel), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(0x10));
}

struct Q4_0W {  // d, qs[16]; value q - 8
  static constexpr int kBytes = 18, kOffset = 8, kActBytes = 34, kActQs = 2, kQs = 2;
  static constexpr bool kMin = false, kSigned = false;
  static __m256i quants(const uint8_t* p) { return nibbles32(p + 2); }
};
struct Q4_1W {  // d, m, qs[16]; value d*q + m
  static constexpr int kBytes = 20, kOffset = 0, kActBytes = 36, kActQs = 4, kQs = 4;
  static constexpr bool kMin = true, kSigned = false;
  static __m256i quants(const uint8_t* p) { return nibbles32(p + 4); }
};
struct Q5_0W {  // d, qh[4], qs[16]; value q - 16
  static constexpr int kBytes = 22, kOffset = 16, kActBytes = 34, kActQs = 2;
  static constexpr bool kMin = false, kSigned = false;
  static __m256i quants(const uint8_t* p) { return _mm256_or_si256(nibbles32(p + 6), bit4_from_u32(rd32(p + 2))); }
};
struct Q5_1W {  // d, m, qh[4], qs[16]; value d*q + m
  static constexpr int kBytes = 24, kOffset = 0, kActBytes = 36, kActQs = 4;
  static constexpr bool kMin = true, kSigned = false;
  static __m256i quants(const uint8_t* p) { return _mm256_or_si256(nibbles32(p + 8), bit4_from_u32(rd32(p + 4))); }
};
struct Q8_0W {  // d, qs[32] signed
  static constexpr int kBytes = 34, kOffset = 0, kActBytes = 34, kActQs = 2, kQs = 2;
  static constexpr bool kMin = false, kSigned = true;
  static __m256i quants(const uint8_t* p) { return load32(p + 2); }
};

// One call's operands. The current token group's activations are repacked block-major, so that
// a tile reads all of them through one pointer: aq[(b*kNT + t)*32 ..] the 32 quants and
// ad[b*kNT + t] the float d of block b of token t; as[t*nb + b] Q8_1's s. wm: room for the
// Q4_1/Q5_1 minimum m of each block of a tile's rows (nb per row).
struct LegacyCtx {
  const uint8_t* w;
  size_t ws;
  int64_t nb;
  const int8_t* aq;
  const float *ad, *asum;
  float* wm;
  float* y;
  int64_t ldy;
};

// Σ_b m[b] s[b] over nb blocks, one fused multiply-add per block in block order: GGML's
// ggml_vec_dot_q4_1_q8_1 rounding (its float summs += m * s compiles to vfmadd231ss), so that
// our products carry the same bits as llama.cpp's.
inline float dot_mins(const float* m, const float* s, int64_t nb) {
  float r = 0.0f;
  for (int64_t b = 0; b < nb; b++) r = std::fma(m[b], s[b], r);
  return r;
}

template <class W>
struct LegacyTile {
  template <int R, int T>
  struct Of {
    EOQ_NOINLINE static void run(const LegacyCtx& c, int r0, int t0) {
      const __m256i ones = _mm256_set1_epi16(1), off = _mm256_set1_epi8((char)W::kOffset);
      (void)ones;  // unused with VNNI
      __m256 acc[R][T];
      EOQ_UNROLL
      for (int r = 0; r < R; r++)
        EOQ_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
      const uint8_t* wrow[R];
      EOQ_UNROLL
      for (int r = 0; r < R; r++) wrow[r] = c.w + (size_t)(r0 + r) * c.ws;
      const int8_t* aq = c.aq;
      const float* ad = c.ad;
      for (int64_t b = 0; b < c.nb; b++, aq += kNT * QK, ad += kNT) {
        __m256i wq[R], wabs[R];
        __m256 wdb[R];
        EOQ_UNROLL
        for (int r = 0; r < R; r++) {
          const uint8_t* blk = wrow[r] + b * W::kBytes;
          wq[r] = W::quants(blk);
          if (W::kSigned) wabs[r] = _mm256_sign_epi8(wq[r], wq[r]);
          const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)rd32(blk)));  // d, (m), ...
          wdb[r] = _mm256_broadcastss_ps(dm);
          if (W::kMin) _mm_store_ss(c.wm + r * c.nb + b, _mm_movehdup_ps(dm));
        }
        EOQ_UNROLL
        for (int t = 0; t < T; t++) {
          const __m256i a = load32(aq + t * QK);
          const __m256 adb = _mm256_broadcast_ss(ad + t);
#if EOQ_DOT_VNNI
          // vpdpbusd: each int32 lane the sum of its four u8·s8 products, as maddubs + madd
          const __m256i zero = _mm256_setzero_si256();
          __m256i corr = zero;
          if (W::kOffset) corr = _mm256_dpbusd_epi32(zero, off, a);  // offset · (a_4i + .. + a_4i+3)
#else
          __m256i corr = _mm256_setzero_si256();
          if (W::kOffset) corr = _mm256_maddubs_epi16(off, a);  // offset · (a_2i + a_2i+1)
#endif
          EOQ_UNROLL
          for (int r = 0; r < R; r++) {
#if EOQ_DOT_VNNI
            __m256i isum;
            if (W::kSigned) {
              isum = _mm256_dpbusd_epi32(zero, wabs[r], _mm256_sign_epi8(a, wq[r]));
            } else {
              isum = _mm256_dpbusd_epi32(zero, wq[r], a);
              if (W::kOffset) isum = _mm256_sub_epi32(isum, corr);
            }
            const __m256 f = _mm256_cvtepi32_ps(isum);
#else
            __m256i p;
            if (W::kSigned) {
              p = _mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(a, wq[r]));
            } else {
              p = _mm256_maddubs_epi16(wq[r], a);
              if (W::kOffset) p = _mm256_sub_epi16(p, corr);
            }
            const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
#endif
            acc[r][t] = _mm256_fmadd_ps(f, _mm256_mul_ps(wdb[r], adb), acc[r][t]);
          }
        }
      }
      EOQ_UNROLL
      for (int r = 0; r < R; r++)
        EOQ_UNROLL
        for (int t = 0; t < T; t++) {
          float v = hsum(acc[r][t]);
          if (W::kMin) v += dot_mins(c.wm + r * c.nb, c.asum + t * c.nb, c.nb);  // Σ_b m_w s_a
          c.y[(t0 + t) * c.ldy + r0 + r] = v;
        }
    }
  };
};

// Activation rows t0..t0+ntg-1 (stride as bytes, nb blocks) into the scratch's token-group
// layout (LegacyCtx: aq, ad block-major, as token-major); sized by the caller.
template <class W>
void repack_tokens(Scratch& s, const uint8_t* a, size_t as, int t0, int ntg, int64_t nb) {
  for (int t = 0; t < ntg; t++) {
    const uint8_t* arow = a + (size_t)(t0 + t) * as;
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t* blk = arow + b * W::kActBytes;
      std::memcpy(&s.aq[(size_t)((b * kNT + t) * QK)], blk + W::kActQs, QK);
      s.ad[b * kNT + t] = h2f(blk);
      if (W::kMin) s.as[t * nb + b] = h2f(blk + 2);
    }
  }
}

template <class W>
void dot_legacy(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, size_t as, int nt, float* y,
                int64_t ldy) {
  Scratch& s = scratch();
  const int64_t nb = n / QK;
  s.aq.resize((size_t)(kNT * nb * QK));
  s.ad.resize((size_t)(kNT * nb));
  if (W::kMin) {
    s.as.resize((size_t)(kNT * nb));
    s.wm.resize((size_t)(4 * nb));
  }
  const LegacyCtx c{w, ws, nb, s.aq.data(), s.ad.data(), s.as.data(), s.wm.data(), y, ldy};
  walk<LegacyTile<W>::template Of>(c, nr, nt, [&](int t0, int ntg) { repack_tokens<W>(s, a, as, t0, ntg, nb); });
}

// ---- legacy formats, one token (decode): two rows per 256-bit register ----
//
// With one activation row the tile above spends most of its time on per-block bookkeeping (a
// broadcast, shift, convert and scale per row and block). Here the 16 quant bytes of a block of
// rows r and r+1 fill one register (128-bit lane i = row i): `lo` holds values 0..15 of each
// row, `hi` values 16..31; the same maddubs + madd against the activation's first (second) 16
// bytes, broadcast to both lanes, gives each row's int32 lanes 0-3 (4-7) of the tile's 8-lane
// sum, and acc_lo / acc_hi take the same fused multiply-add with the same d_w·d_a, lane for lane.
// The tile's tail sums the 8 lanes as lo + hi, then lanes (0+2, 1+3), then those two; so does
// this one (IEEE addition commutes), and the minimum term is the same fma chain per row, two
// rows in one vector. So the results have the tile's bits, i.e. ggml's (tests/test_quant_dot.py
// checks every ISA against the 1-row call). kernels/cpu/avx512vnni_dot.cpp does four rows per
// 512-bit register the same way.
inline __m256i load2x16(const uint8_t* p0, const uint8_t* p1) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(load16(p0)), load16(p1), 1);
}

// Σ of the products w·a in groups of four bytes (the tile's maddubs + madd; Q8_0 signed)
template <class W>
inline __m256i dot_groups4(__m256i w, __m256i a) {
  __m256i p;
  if (W::kSigned) {
    p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  } else {
    p = _mm256_maddubs_epi16(w, a);
    if (W::kOffset) p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(_mm256_set1_epi8((char)W::kOffset), a));
  }
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// y[0..4) for rows w, w + ws, w + 2ws, w + 3ws against one activation row a (nb blocks)
template <class W>
EOQ_NOINLINE void decode_rows4(const uint8_t* w, size_t ws, int64_t nb, const uint8_t* a, float* y) {
  const uint8_t* p[4] = {w, w + ws, w + 2 * ws, w + 3 * ws};
  __m256 acc_lo[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, acc_hi[2] = {acc_lo[0], acc_lo[0]};
  __m128 mins[2] = {_mm_setzero_ps(), _mm_setzero_ps()};  // lanes 1 and 3: Σ_b m s of the pair's rows
  const __m256i nib = _mm256_set1_epi8(0x0f);
  const __m256i didx = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);  // row i's d_w·d_a in lanes 4i..4i+3
  for (int64_t b = 0; b < nb; b++, a += W::kActBytes) {
    const size_t o = (size_t)b * W::kBytes;
    const __m256i alo = _mm256_broadcastsi128_si256(load16(a + W::kActQs));
    const __m256i ahi = _mm256_broadcastsi128_si256(load16(a + W::kActQs + 16));
    const __m128 da = _mm_set1_ps(h2f(a));
    EOQ_UNROLL
    for (int k = 0; k < 2; k++) {
      const uint8_t *r0 = p[2 * k] + o, *r1 = p[2 * k + 1] + o;
      __m256i lo, hi;
      if (W::kSigned) {
        lo = load2x16(r0 + W::kQs, r1 + W::kQs);
        hi = load2x16(r0 + W::kQs + 16, r1 + W::kQs + 16);
      } else {
        const __m256i q = load2x16(r0 + W::kQs, r1 + W::kQs);
        lo = _mm256_and_si256(q, nib);
        hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nib);
      }
      // the two rows' (d, m) or (d, next bytes) f16 pairs -> [d0, m0, d1, m1]
      const __m128 dm = _mm_cvtph_ps(_mm_setr_epi32((int)rd32(r0), (int)rd32(r1), 0, 0));
      const __m256 sc = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(dm, da)), didx);
      acc_lo[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_groups4<W>(lo, alo)), sc, acc_lo[k]);
      acc_hi[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_groups4<W>(hi, ahi)), sc, acc_hi[k]);
      if (W::kMin) mins[k] = _mm_fmadd_ps(dm, _mm_set1_ps(h2f(a + 2)), mins[k]);  // m_w · s_a
    }
  }
  EOQ_UNROLL
  for (int k = 0; k < 2; k++) {
    // per row (128-bit lane): lo + hi, then lanes 0+2 and 1+3, then those two
    __m256 s = _mm256_add_ps(acc_lo[k], acc_hi[k]);
    s = _mm256_add_ps(s, _mm256_permute_ps(s, 0x4e));
    s = _mm256_add_ps(s, _mm256_permute_ps(s, 0xb1));
    alignas(32) float v[8];
    _mm256_store_ps(v, s);
    alignas(16) float m[4];
    _mm_store_ps(m, mins[k]);
    y[2 * k] = W::kMin ? v[0] + m[1] : v[0];
    y[2 * k + 1] = W::kMin ? v[4] + m[3] : v[4];
  }
}

// One token: rows four at a time (prefetched kPrefetchAhead bytes ahead as one stream), the
// rest through the tiles.
template <class W>
void decode_legacy(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, float* y) {
  const int64_t nb = n / QK;
  const uint8_t* end = w + (size_t)nr * ws;
  prefetch_stream_start(w, end);
  int r = 0;
  for (; r + 4 <= nr; r += 4) {
    prefetch_stream_ahead(w + (size_t)r * ws, 4 * ws, end);
    decode_rows4<W>(w + (size_t)r * ws, ws, nb, a, y + r);
  }
  if (r < nr) dot_legacy<W>(n, w + (size_t)r * ws, ws, nr - r, a, 0, 1, y + r, 0);
}

// ---- K-quants (super-blocks of 256) against Q8_K ----

struct KCtx {
  const uint8_t* w;
  size_t ws;
  const uint8_t* a;
  size_t as;
  int64_t nsb;
  float* y;
  int64_t ldy;
};

// One weight super-block, ready for the integer dot products: per group g of 32 values an int16
// multiplier vector sc[g] for madd (lanes 0..7 pair with values 0..15 of the group, lanes 8..15
// with values 16..31), and mn, int16 lane i pairing with the activation's bsums[i].
struct KRow {
  float d, dmin;
  __m256i sc[8];
  __m256i mn;
};

// Q4_K, 144 bytes: d, dmin, scales[12], qs[128]; Q5_K, 176 bytes: d, dmin, scales[12], qh[32],
// qs[128]. Eight sub-blocks of 32: x = d*sc_j*q - dmin*m_j, q the nibble (sub-blocks 2g and 2g+1
// are the low and high nibbles of qs[32g ..]) plus, for Q5_K, bit j of qh[l] as bit 4.
// Result per super-block: d_a (d S - dmin M), S = Σ_j sc_j Σ q a, M = Σ_j m_j (bsums 2j, 2j+1).
template <bool kFive>
struct Q45K {
  static constexpr int kBytes = kFive ? 176 : 144, kQs = kFive ? 48 : 16;
  static constexpr bool kMinTerm = true;
  static void prep(const uint8_t* p, KRow* k) {
    k->d = h2f(p);
    k->dmin = h2f(p + 2);
    // The 12 scale bytes as words w0..w2: scales 0-3 and mins 0-3 are the low 6 bits of w0 and
    // w1; scales 4-7 take their low nibbles from w2 and top 2 bits from the top of w0's bytes,
    // mins 4-7 their low nibbles from w2's high nibbles and top 2 bits from the top of w1's bytes.
    const uint32_t w0 = rd32(p + 4), w1 = rd32(p + 8), w2 = rd32(p + 12);
    const uint32_t lo6 = 0x3f3f3f3f, lo4 = 0x0f0f0f0f, lo2 = 0x03030303;
    const uint32_t sc03 = w0 & lo6, mn03 = w1 & lo6;
    const uint32_t sc47 = (w2 & lo4) | ((w0 >> 6) & lo2) << 4;
    const uint32_t mn47 = ((w2 >> 4) & lo4) | ((w1 >> 6) & lo2) << 4;
    // int16 scales 0..7, repeated in both 128-bit halves; group g uses scale g everywhere
    const __m128i sc16 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc47, (int)sc03));
    const __m256i scb = _mm256_broadcastsi128_si256(sc16);
    EOQ_UNROLL
    for (int g = 0; g < 8; g++) k->sc[g] = _mm256_shuffle_epi8(scb, _mm256_set1_epi16((short)(0x0100 + 0x0202 * g)));
    const __m128i mn16 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn47, (int)mn03));
    k->mn = _mm256_setr_m128i(_mm_unpacklo_epi16(mn16, mn16), _mm_unpackhi_epi16(mn16, mn16));
  }
  static __m256i quants(const uint8_t* p, int j) {
    const __m256i q = load32(p + kQs + 32 * (j / 2));
    __m256i v = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(q, 4) : q, _mm256_set1_epi8(0x0f));
    if (kFive) {
      const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(load32(p + 16), j), _mm256_set1_epi8(1));
      v = _mm256_or_si256(v, _mm256_slli_epi16(hb, 4));
    }
    return v;
  }
};

// Q6_K, 210 bytes: ql[128], qh[64], scales[16] (int8), d. Value h*128 + k*32 + l (group 4h+k):
// low nibble of ql[h*64 + (k%2)*32 + l] (high nibble for k >= 2), top 2 bits = bits 2k..2k+1 of
// qh[h*32 + l]; x = d*scale_s*(q - 32), sub-block s = 8h + 2k + l/16. Result per super-block:
// d_a d (S - 32 M) with S = Σ_s scale_s Σ q a and M = Σ_s scale_s bsums_s, exact in int32.
struct Q6K {
  static constexpr int kBytes = 210;
  static constexpr bool kMinTerm = false;
  static void prep(const uint8_t* p, KRow* k) {
    k->d = h2f(p + 208);
    const __m128i sc8 = load16(p + 192);
    k->mn = _mm256_cvtepi8_epi16(sc8);  // scale_s pairs with bsums_s
    // group g: scale 2g for lanes 0..7, 2g+1 for lanes 8..15. Each int16 lane takes the byte
    // twice; the arithmetic shift by 8 then leaves it sign-extended.
    const __m256i scb = _mm256_broadcastsi128_si256(sc8);
    EOQ_UNROLL
    for (int g = 0; g < 8; g++) {
      const __m256i idx = _mm256_setr_m128i(_mm_set1_epi8((char)(2 * g)), _mm_set1_epi8((char)(2 * g + 1)));
      k->sc[g] = _mm256_srai_epi16(_mm256_shuffle_epi8(scb, idx), 8);
    }
  }
  static __m256i quants(const uint8_t* p, int g) {
    const int h = g / 4, kk = g % 4;
    const __m256i ql = load32(p + h * 64 + (kk % 2) * 32);
    const __m256i lo = _mm256_and_si256(kk >= 2 ? _mm256_srli_epi16(ql, 4) : ql, _mm256_set1_epi8(0x0f));
    const __m256i qh = _mm256_and_si256(_mm256_srli_epi16(load32(p + 128 + h * 32), 2 * kk), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(qh, 4));
  }
};

inline const block_q8_K* act_block(const uint8_t* arow, int64_t i) {
  return reinterpret_cast<const block_q8_K*>(arow + i * (int64_t)sizeof(block_q8_K));
}

template <class K>
struct KTile {
  template <int R, int T>
  struct Of {
    EOQ_NOINLINE static void run(const KCtx& c, int r0, int t0) {
      __m256 acc[R][T];
      EOQ_UNROLL
      for (int r = 0; r < R; r++)
        EOQ_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
      for (int64_t i = 0; i < c.nsb; i++) {
        KRow k[R];
        const uint8_t* wb[R];
        EOQ_UNROLL
        for (int r = 0; r < R; r++) {
          wb[r] = c.w + (size_t)(r0 + r) * c.ws + i * K::kBytes;
          K::prep(wb[r], &k[r]);
        }
        const block_q8_K* ab[T];
        EOQ_UNROLL
        for (int t = 0; t < T; t++) ab[t] = act_block(c.a + (size_t)(t0 + t) * c.as, i);
        __m256i isum[R][T];
        EOQ_UNROLL
        for (int r = 0; r < R; r++)
          EOQ_UNROLL
          for (int t = 0; t < T; t++) isum[r][t] = _mm256_setzero_si256();
        for (int g = 0; g < 8; g++) {
          __m256i wq[R];
          EOQ_UNROLL
          for (int r = 0; r < R; r++) wq[r] = K::quants(wb[r], g);
          EOQ_UNROLL
          for (int t = 0; t < T; t++) {
            const __m256i aq = load32(ab[t]->qs + 32 * g);
            EOQ_UNROLL
            for (int r = 0; r < R; r++)
              isum[r][t] = _mm256_add_epi32(isum[r][t], _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], aq), k[r].sc[g]));
          }
        }
        EOQ_UNROLL
        for (int t = 0; t < T; t++) {
          const __m256i bs = load32(ab[t]->bsums);
          const float da = ab[t]->d;
          EOQ_UNROLL
          for (int r = 0; r < R; r++) {
            const __m256i m = _mm256_madd_epi16(bs, k[r].mn);
            if (K::kMinTerm) {
              acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(da * k[r].d), acc[r][t]);
              acc[r][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(da * k[r].dmin), acc[r][t]);
            } else {
              const __m256i v = _mm256_sub_epi32(isum[r][t], _mm256_slli_epi32(m, 5));  // S - 32 M
              acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(da * k[r].d), acc[r][t]);
            }
          }
        }
      }
      EOQ_UNROLL
      for (int r = 0; r < R; r++)
        EOQ_UNROLL
        for (int t = 0; t < T; t++) c.y[(t0 + t) * c.ldy + r0 + r] = hsum(acc[r][t]);
    }
  };
};

template <class K>
void dot_k(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, size_t as, int nt, float* y,
           int64_t ldy) {
  const KCtx c{w, ws, a, as, n / QK_K, y, ldy};
  walk<KTile<K>::template Of>(c, nr, nt, [](int, int) {});
}

// ---- plain float weights: F32 · F32, F16 · F16, BF16 · BF16 ----

template <GGMLType kT>
struct PlainTile {
  static constexpr int kSize = kT == GGMLType::F32 ? 4 : 2;
  static __m256 load8(const uint8_t* p) {
    if (kT == GGMLType::F32) return _mm256_loadu_ps((const float*)p);
    if (kT == GGMLType::F16) return _mm256_cvtph_ps(load16(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(p)), 16));
  }
  static float one(const uint8_t* p) {
    if (kT == GGMLType::F32) {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    return kT == GGMLType::F16 ? fp16_to_fp32(rd16(p)) : bf16_to_fp32(rd16(p));
  }
  struct Ctx {
    const uint8_t* w;
    size_t ws;
    const uint8_t* a;
    size_t as;
    int64_t n;
    float* y;
    int64_t ldy;
  };
  template <int R, int T>
  struct Of {
    EOQ_NOINLINE static void run(const Ctx& c, int r0, int t0) {
      __m256 acc[R][T];
      EOQ_UNROLL
      for (int r = 0; r < R; r++)
        EOQ_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
      const uint8_t* wrow[R];
      EOQ_UNROLL
      for (int r = 0; r < R; r++) wrow[r] = c.w + (size_t)(r0 + r) * c.ws;
      const uint8_t* arow[T];
      EOQ_UNROLL
      for (int t = 0; t < T; t++) arow[t] = c.a + (size_t)(t0 + t) * c.as;
      int64_t i = 0;
      for (; i + 8 <= c.n; i += 8) {
        __m256 wv[R];
        EOQ_UNROLL
        for (int r = 0; r < R; r++) wv[r] = load8(wrow[r] + i * kSize);
        EOQ_UNROLL
        for (int t = 0; t < T; t++) {
          const __m256 av = load8(arow[t] + i * kSize);
          EOQ_UNROLL
          for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], av, acc[r][t]);
        }
      }
      EOQ_UNROLL
      for (int r = 0; r < R; r++)
        EOQ_UNROLL
        for (int t = 0; t < T; t++) {
          float s = hsum(acc[r][t]);
          for (int64_t k = i; k < c.n; k++) s += one(wrow[r] + k * kSize) * one(arow[t] + k * kSize);
          c.y[(t0 + t) * c.ldy + r0 + r] = s;
        }
    }
  };
};

template <GGMLType kT>
void dot_plain(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, size_t as, int nt, float* y,
               int64_t ldy) {
  const typename PlainTile<kT>::Ctx c{w, ws, a, as, n, y, ldy};
  walk<PlainTile<kT>::template Of>(c, nr, nt, [](int, int) {});
}

}  // namespace

void quantize_act_avx2(GGMLType act, const float* x, void* dst, int64_t n) {
  act_row_bytes(act, n);  // validates (throws like the reference)
  uint8_t* out = static_cast<uint8_t*>(dst);
  switch (act) {
    case GGMLType::Q8_0: return quantize_q8_0(x, out, n / QK, false);
    case GGMLType::Q8_1: return quantize_q8_0(x, out, n / QK, true);
    case GGMLType::Q8_K: return quantize_q8_K(x, out, n / QK_K);
    case GGMLType::F16: return quantize_f16(x, out, n);
    case GGMLType::BF16: return quantize_bf16(x, out, n);
    default: return quantize_act_ref(act, x, dst, n);  // F32: a copy
  }
}

void vec_dot_avx2(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy) {
  const TypeInfo ti = type_info(w);
  if (!ti.supported || ti.block_size <= 0 || n < 0 || n % ti.block_size != 0 || nr < 0 || nt < 0)
    return vec_dot_ref_rows(w, n, w_rows, w_stride, nr, a_rows, a_stride, nt, y, ldy);  // raises
  const uint8_t* wp = static_cast<const uint8_t*>(w_rows);
  const uint8_t* ap = static_cast<const uint8_t*>(a_rows);
  if (nt == 1) switch (w) {
      case GGMLType::Q4_0: return decode_legacy<Q4_0W>(n, wp, w_stride, nr, ap, y);
      case GGMLType::Q4_1: return decode_legacy<Q4_1W>(n, wp, w_stride, nr, ap, y);
      case GGMLType::Q8_0: return decode_legacy<Q8_0W>(n, wp, w_stride, nr, ap, y);
      default: break;
    }
  switch (w) {
    case GGMLType::Q4_0: return dot_legacy<Q4_0W>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q4_1: return dot_legacy<Q4_1W>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q5_0: return dot_legacy<Q5_0W>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q5_1: return dot_legacy<Q5_1W>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q8_0: return dot_legacy<Q8_0W>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q4_K: return dot_k<Q45K<false>>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q5_K: return dot_k<Q45K<true>>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::Q6_K: return dot_k<Q6K>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::F32: return dot_plain<GGMLType::F32>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::F16: return dot_plain<GGMLType::F16>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    case GGMLType::BF16: return dot_plain<GGMLType::BF16>(n, wp, w_stride, nr, ap, a_stride, nt, y, ldy);
    default: return vec_dot_ref_rows(w, n, w_rows, w_stride, nr, a_rows, a_stride, nt, y, ldy);  // Q2_K, Q3_K
  }
}

}  // namespace eoq

#endif  // x86-64
