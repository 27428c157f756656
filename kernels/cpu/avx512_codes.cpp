// AVX-512 (F, BW, VL, DQ, VBMI, VNNI) versions of the compressed cache's attention kernels
// (kernels.h scores_codes, scores_codes_q8, values_codes, decode_codes, softmax_exp; references
// in kernels/ref/vec.cpp, AVX2 versions in kernels/cpu/avx2_codes.cpp). Chosen with the
// AVX512-VNNI table when CPUID also reports VBMI.
//
// Sixteen coordinates of b <= 4 bits are 2b <= 8 bytes. One 64-bit broadcast load puts them in
// every qword of a vector; vpmultishiftqb then moves the bits of coordinate i to the low byte of
// dword lane i (each lane takes 8 bits at offset b·i of its qword); vpermps looks the 16 lanes
// up in a 16-entry table that repeats the 2^b centroids (entry e = centroids[e mod 2^b]), so the
// bits above a code in the lane's low nibble do not matter and no mask is needed. Three
// instructions per 16 coordinates, the AVX2 path's cost per 8; the look-up is exact, so results
// differ from the reference only in float summation order. Other shapes (d not a multiple of 16,
// rows under 8 bytes, d > 512) and b > 4 go to the AVX2 versions.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/turboquant.h"

// GCC 12 flags the _mm512_undefined_* operands inside the multishift and permute intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace eoq {

void scores_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* q, int nq, float* out);
void values_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* w, int nq, float* acc);

namespace {

constexpr int kMaxNQ = 4;  // query vectors per pass

#define EOQ_UNROLL _Pragma("GCC unroll 16")

// The centroids of coordinates 16g..16g+15 of a row of B-bit codes (rb >= 8 bytes). The group's
// 16B bits start at byte 2Bg; the 8 bytes read start there or, for the last groups, at rb − 8
// with the bit offsets moved up to match, so no read leaves the row.
// The 16-entry vpermps table: entry e = centroids[e mod 2^B].
template <int B>
inline __m512 repeated_table(const float* centroids) {
  alignas(64) float t[16];
  for (int e = 0; e < 16; e++) t[e] = centroids[e & ((1 << B) - 1)];
  return _mm512_load_ps(t);
}

// The multishift control that moves field i (bits shift + B·i.. of a qword) into the low byte of
// dword lane i; c[64] zeroed by the caller.
template <int B>
inline void fill_ctrl(uint8_t* c, int shift) {
  for (int i = 0; i < 16; i++) c[(i / 2) * 8 + (i % 2) * 4] = (uint8_t)(shift + B * i);
}

template <int B>
struct Lookup16 {
  static constexpr int kMaxGroups = 32;  // d <= 512
  __m512 table;
  int off[kMaxGroups];
  alignas(64) uint8_t ctrl[kMaxGroups][64];
  __attribute__((always_inline)) Lookup16(const float* centroids, int ng, size_t rb) {
    table = repeated_table<B>(centroids);
    for (int g = 0; g < ng; g++) {
      off[g] = std::min(2 * B * g, (int)rb - 8);
      std::memset(ctrl[g], 0, 64);
      fill_ctrl<B>(ctrl[g], 8 * (2 * B * g - off[g]));  // the group starts 2Bg − off bytes in
    }
  }
  __attribute__((always_inline)) __m512 operator()(const uint8_t* row, int g) const {
    uint64_t x;
    std::memcpy(&x, row + off[g], 8);
    const __m512i idx = _mm512_multishift_epi64_epi8(_mm512_load_si512(ctrl[g]), _mm512_set1_epi64((long long)x));
    return _mm512_permutexvar_ps(idx, table);
  }
};

// Five-bit codes (the eoq preset's key tail): a group's 16 codes are 10 bytes, so lanes 0..7 come
// from the 8 bytes at 10g and lanes 8..15 from those at 10g + 5 (each 40 bits of codes; the last
// group's second read moved back to end at the row's end, its offsets up to match), and the 32
// centroids are two vpermt2ps tables (index bits 0..4; the bits above, the next code's, are
// ignored). Five instructions per 16 coordinates.
template <>
struct Lookup16<5> {
  static constexpr int kMaxGroups = 32;
  __m512 lo, hi;
  int off0[kMaxGroups], off1[kMaxGroups];
  alignas(64) uint8_t ctrl[kMaxGroups][64];
  __attribute__((always_inline)) Lookup16(const float* centroids, int ng, size_t rb) {
    lo = _mm512_loadu_ps(centroids);
    hi = _mm512_loadu_ps(centroids + 16);
    for (int g = 0; g < ng; g++) {
      off0[g] = std::min(10 * g, (int)rb - 8);
      off1[g] = std::min(10 * g + 5, (int)rb - 8);
      std::memset(ctrl[g], 0, 64);
      for (int i = 0; i < 16; i++) {
        const int shift = i < 8 ? 8 * (10 * g - off0[g]) + 5 * i : 8 * (10 * g + 5 - off1[g]) + 5 * (i - 8);
        ctrl[g][(i / 2) * 8 + (i % 2) * 4] = (uint8_t)shift;
      }
    }
  }
  __attribute__((always_inline)) __m512 operator()(const uint8_t* row, int g) const {
    uint64_t x0, x1;
    std::memcpy(&x0, row + off0[g], 8);
    std::memcpy(&x1, row + off1[g], 8);
    const __m512i src = _mm512_inserti64x4(_mm512_set1_epi64((long long)x0), _mm256_set1_epi64x((long long)x1), 1);
    const __m512i idx = _mm512_multishift_epi64_epi8(_mm512_load_si512(ctrl[g]), src);
    return _mm512_permutex2var_ps(lo, idx, hi);
  }
};

// r[i] = Σ lanes of v[i], i = 0..7 (8 ymm vectors -> one).
inline __m256 reduce8(const __m256* v) {
  const __m256 a01 = _mm256_hadd_ps(v[0], v[1]), a23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 a45 = _mm256_hadd_ps(v[4], v[5]), a67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 b0 = _mm256_hadd_ps(a01, a23), b1 = _mm256_hadd_ps(a45, a67);
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Σ_j q[h][j]·centroid(row, j) for the NH query vectors, 16 lanes folded to 8 (NG groups of 16
// coordinates; NG = 0: ng at run time).
template <int B, int NH, int NG>
inline void score_row(const Lookup16<B>& look, const uint8_t* row, int ng, const float* q, int d, __m256* s) {
  __m512 a[NH];
  EOQ_UNROLL
  for (int h = 0; h < NH; h++) a[h] = _mm512_setzero_ps();
  EOQ_UNROLL
  for (int g = 0; g < (NG ? NG : ng); g++) {
    const __m512 c = look(row, g);
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a[h] = _mm512_fmadd_ps(c, _mm512_loadu_ps(q + (size_t)h * d + 16 * g), a[h]);
  }
  EOQ_UNROLL
  for (int h = 0; h < NH; h++) s[h] = _mm256_add_ps(_mm512_castps512_ps256(a[h]), _mm512_extractf32x8_ps(a[h], 1));
}

// One accumulator per query vector and token; the scores of 8 tokens are reduced together by a
// horizontal-add transpose.
template <int B, int NH, int NG>
void scores_nh(const uint8_t* codes, int64_t m, int d, const float* centroids, const float* q, float* out,
               int64_t ldo) {
  const size_t rb = packed_bytes(d, B);
  const int ng = d / 16;
  const Lookup16<B> look(centroids, ng, rb);
  int64_t t = 0;
  for (; t + 8 <= m; t += 8) {
    __m256 buf[8][NH];
    EOQ_UNROLL
    for (int k = 0; k < 8; k++) score_row<B, NH, NG>(look, codes + (size_t)(t + k) * rb, ng, q, d, buf[k]);
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      const __m256 v[8] = {buf[0][h], buf[1][h], buf[2][h], buf[3][h], buf[4][h], buf[5][h], buf[6][h], buf[7][h]};
      _mm256_storeu_ps(out + h * ldo + t, reduce8(v));
    }
  }
  for (; t < m; t++) {
    __m256 s[NH];
    score_row<B, NH, NG>(look, codes + (size_t)t * rb, ng, q, d, s);
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) out[h * ldo + t] = hsum8(s[h]);
  }
}

// acc[h][16(g0+i) + l] += Σ_t w[h][t] · centroid(row t, 16(g0+i) + l) for i < GN: NH·GN
// accumulators in registers (GN a constant, so no accumulator lives in memory), tokens inner.
template <int B, int NH, int GN>
void values_pass(const Lookup16<B>& look, const uint8_t* codes, int64_t m, size_t rb, int g0, const float* w,
                 int64_t ldw, float* acc, int d) {
  __m512 a[NH][GN];
  EOQ_UNROLL
  for (int h = 0; h < NH; h++)
    EOQ_UNROLL
    for (int i = 0; i < GN; i++) a[h][i] = _mm512_loadu_ps(acc + (size_t)h * d + 16 * (g0 + i));
  for (int64_t t = 0; t < m; t++) {
    const uint8_t* row = codes + (size_t)t * rb;
    __m512 wt[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) wt[h] = _mm512_set1_ps(w[h * ldw + t]);
    EOQ_UNROLL
    for (int i = 0; i < GN; i++) {
      const __m512 c = look(row, g0 + i);
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) a[h][i] = _mm512_fmadd_ps(wt[h], c, a[h][i]);
    }
  }
  EOQ_UNROLL
  for (int h = 0; h < NH; h++)
    EOQ_UNROLL
    for (int i = 0; i < GN; i++) _mm512_storeu_ps(acc + (size_t)h * d + 16 * (g0 + i), a[h][i]);
}

// Coordinates in the outer loop, 4 groups of 16 per pass, tokens in the inner one.
template <int B, int NH>
void values_nh(const uint8_t* codes, int64_t m, int d, const float* centroids, const float* w, int64_t ldw,
               float* acc) {
  const size_t rb = packed_bytes(d, B);
  const int ng = d / 16;
  const Lookup16<B> look(centroids, ng, rb);
  for (int g0 = 0; g0 < ng; g0 += 4) {
    switch (std::min(4, ng - g0)) {
      case 1: values_pass<B, NH, 1>(look, codes, m, rb, g0, w, ldw, acc, d); break;
      case 2: values_pass<B, NH, 2>(look, codes, m, rb, g0, w, ldw, acc, d); break;
      case 3: values_pass<B, NH, 3>(look, codes, m, rb, g0, w, ldw, acc, d); break;
      default: values_pass<B, NH, 4>(look, codes, m, rb, g0, w, ldw, acc, d); break;
    }
  }
}

// ---- scores in integers (q and centroids rounded to int8) ----
//
// The float scan above spends ~28 operations of the two 512-bit pipes per token (4 look-ups of
// 16 centroids, 12 FMAs for three query heads, the horizontal sums); the pipes are its limit.
// Here 64 centroids of one token are 64 bytes: q is rounded to int8 per query vector and the
// centroids to int8 (both as x·127/max|x|, round half to even: quantize_q8_0's rule), and one
// vpdpbusd multiplies-and-adds 64 code×query pairs. A 128-bit lane holds one token's 16
// coordinates of a group, so a vector holds 4 tokens: vpermt2b gathers each token's group bytes
// (4 rows of rb <= 32 bytes are at most two 64-byte loads), vpmultishiftqb moves code i to byte
// i, vpermb looks it up in a 64-byte table (c8 + 128, repeating with period 2^B so the bits above
// the code do not matter). The integer sums are exact; the result is
//   out = (float)(Σ_j q8_j (c8 + 128) − 128 Σ_j q8_j) · (s_q · s_c) · ρ_t,
// within ρ_t·(½ s_q Σ_j |c_j| + ½ s_c Σ_j |q_j| + ¾ s_q s_c d) of the float scan (kernels.h
// scores_codes_q8; used for codes of 1..3 bits, see scores_codes_q8_avx512).
constexpr int kQ8MaxRowBytes = 32;  // 4 rows per two loads
constexpr int kQ8MaxD = 256;

// x[0..n) (n a multiple of 16, n <= kQ8MaxD) -> int8 round_half_even(x · 127/max|x|) into out
// (quantize_q8_0's rule: _mm512_cvtps_epi32 rounds half to even); *sum = Σ of them; returns
// the scale max|x|/127 (0, with all codes 0, when max|x| is 0 or not finite).
inline float round_q8(const float* x, int n, int8_t* out, int32_t* sum) {
  __m512 mx = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
  const float amax = _mm512_reduce_max_ps(mx);
  const bool ok = amax > 0.0f && amax <= 3.4028235e38f;  // false for 0, inf and NaN
  const __m512 id = _mm512_set1_ps(ok ? 127.0f / amax : 0.0f);
  __m512i s = _mm512_setzero_si512();
  for (int j = 0; j < n; j += 16) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + j), id));  // |v| <= 127
    s = _mm512_add_epi32(s, v);
    _mm_storeu_si128((__m128i*)(out + j), _mm512_cvtsepi32_epi8(v));
  }
  *sum = _mm512_reduce_add_epi32(s);
  return ok ? amax / 127.0f : 0.0f;
}

// Shared set-up of one call (a sealed block's part, for the NH query vectors): the look-up
// table, q in int8, the gather indices. Kept small: a decode step makes thousands of calls.
template <int B, int NH>
struct Q8Scan {
  int G, rb;
  __m512i table, ctrl, base;
  alignas(64) int8_t q8[NH][kQ8MaxD];
  float f[NH];
  int32_t qsum[NH];
  Q8Scan(int d, const float* cent, const float* q) : G(d / 16), rb(2 * B * (d / 16)) {
    // centroids -> int8 as q is (n = 16: the 2^B centroids, zero padded), then c8 + 128 in a
    // 64-entry table repeating with period 2^B
    alignas(64) float cp[16] = {0};
    std::memcpy(cp, cent, sizeof(float) << B);
    alignas(16) int8_t c8[16];
    int32_t unused;
    const float cs = round_q8(cp, 16, c8, &unused);
    const __m512i iota = _mm512_set_epi64(0x3f3e3d3c3b3a3938, 0x3736353433323130, 0x2f2e2d2c2b2a2928,
                                          0x2726252423222120, 0x1f1e1d1c1b1a1918, 0x1716151413121110,
                                          0x0f0e0d0c0b0a0908, 0x0706050403020100);
    const __m512i c8v = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)c8));
    table = _mm512_add_epi8(_mm512_permutexvar_epi8(_mm512_and_si512(iota, _mm512_set1_epi8((1 << B) - 1)), c8v),
                            _mm512_set1_epi8((char)128));
    // multishift control: byte i of every qword takes the bits from B·i
    uint64_t cq = 0;
    for (int i = 0; i < 8; i++) cq |= (uint64_t)(B * i) << (8 * i);
    ctrl = _mm512_set1_epi64((long long)cq);
    // gather index of group 0: byte 16L + 8k + i = byte L·rb + k·B + i of the 4 rows (row L's
    // k-th 8 codes); group g adds 2Bg
    const __m512i L = _mm512_srli_epi16(_mm512_and_si512(iota, _mm512_set1_epi8(0x30)), 4);
    const __m512i k = _mm512_srli_epi16(_mm512_and_si512(iota, _mm512_set1_epi8(0x08)), 3);
    const __m512i i = _mm512_and_si512(iota, _mm512_set1_epi8(0x07));
    // L·rb as bytes: rb <= 32, L <= 3; the products fit a byte
    __m512i lr = _mm512_setzero_si512();
    for (int r = 0; r < 3; r++)
      lr = _mm512_add_epi8(lr, _mm512_and_si512(_mm512_set1_epi8((char)rb),
                                                _mm512_movm_epi8(_mm512_cmpgt_epu8_mask(L, _mm512_set1_epi8((char)r)))));
    base = _mm512_add_epi8(_mm512_add_epi8(lr, i), _mm512_and_si512(_mm512_set1_epi8(B), _mm512_movm_epi8(_mm512_test_epi8_mask(k, k))));
    for (int h = 0; h < NH; h++) f[h] = round_q8(q + (size_t)h * d, d, q8[h], &qsum[h]) * cs;
  }
  // indices past the 128 bytes only feed bits above a code: clamped to 127
  __m512i idx(int g) const { return _mm512_min_epu8(_mm512_add_epi8(base, _mm512_set1_epi8((char)(2 * B * g))), _mm512_set1_epi8(127)); }
};

inline __mmask64 first_bytes(int64_t n) {
  return n >= 64 ? ~(__mmask64)0 : n <= 0 ? (__mmask64)0 : ((__mmask64)1 << n) - 1;
}

// The int32 sums of 4 rows (nrows <= 4 of them read) into acc[h] (lane L: row L's 4 partial sums).
template <int B, int NH, int NG>
__attribute__((always_inline)) inline void q8_quad(const Q8Scan<B, NH>& z, const uint8_t* src, __mmask64 m0,
                                                   __mmask64 m1, __m512i ctrl, __m512i table, __m512i* acc) {
  const __m512i s0 = _mm512_maskz_loadu_epi8(m0, src);
  const __m512i s1 = _mm512_maskz_loadu_epi8(m1, src + 64);
  EOQ_UNROLL
  for (int g = 0; g < (NG ? NG : z.G); g++) {
    const __m512i x = _mm512_permutex2var_epi8(s0, z.idx(g), s1);
    const __m512i cv = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(ctrl, x), table);
    EOQ_UNROLL
    for (int h = 0; h < NH; h++)
      acc[h] = _mm512_dpbusd_epi32(acc[h], cv, _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)&z.q8[h][16 * g])));
  }
}

// Scores of tokens t..t+nt-1 (nt <= 8) from the quads' sums: out[h*ldo + t + i].
template <int B, int NH>
__attribute__((always_inline)) inline void q8_finish(const Q8Scan<B, NH>& z, const __m512i* a0, const __m512i* a1,
                                                     __m256 rho, float* out, int64_t ldo, int nt) {
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  EOQ_UNROLL
  for (int h = 0; h < NH; h++) {
    // lane L of a0 / a1: the 4 partial sums of token L / 4 + L
    __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi32(a0[h], a1[h]), _mm512_unpackhi_epi32(a0[h], a1[h]));
    s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, (_MM_PERM_ENUM)0x4e));
    const __m256i tot = _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, s));
    const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(tot, _mm256_set1_epi32(128 * z.qsum[h])));
    const __m256 r = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(z.f[h])), rho);
    if (nt == 8) _mm256_storeu_ps(out + h * ldo, r);
    else _mm256_mask_storeu_ps(out + h * ldo, (__mmask8)((1u << nt) - 1), r);
  }
}

template <int B, int NH, int NG>
void scores_q8_nh(const uint8_t* codes, int64_t m, int d, const float* cent, const uint16_t* norms, float scale,
                  const float* q, float* out, int64_t ldo) {
  const Q8Scan<B, NH> z(d, cent, q);
  const int rb = z.rb;
  const __m512i ctrl = z.ctrl, table = z.table;
  const __m256 vscale = _mm256_set1_ps(scale);
  const __mmask64 m0 = first_bytes(4 * rb), m1 = first_bytes(4 * rb - 64);
  int64_t t = 0;
  for (; t + 8 <= m; t += 8) {
    __m512i a0[NH], a1[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a0[h] = a1[h] = _mm512_setzero_si512();
    q8_quad<B, NH, NG>(z, codes + (size_t)t * rb, m0, m1, ctrl, table, a0);
    q8_quad<B, NH, NG>(z, codes + (size_t)(t + 4) * rb, m0, m1, ctrl, table, a1);
    const __m256 rho = _mm256_mul_ps(vscale, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(norms + t))));
    q8_finish<B, NH>(z, a0, a1, rho, out + t, ldo, 8);
  }
  if (t < m) {  // 1..7 rows: loads under masks, lanes past m are 0 and not stored
    const int nt = (int)(m - t);
    __m512i a0[NH], a1[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a0[h] = a1[h] = _mm512_setzero_si512();
    const int64_t b0 = (int64_t)std::min(4, nt) * rb, b1 = (int64_t)std::max(0, nt - 4) * rb;
    q8_quad<B, NH, NG>(z, codes + (size_t)t * rb, first_bytes(b0), first_bytes(b0 - 64), ctrl, table, a0);
    if (b1 > 0) q8_quad<B, NH, NG>(z, codes + (size_t)(t + 4) * rb, first_bytes(b1), first_bytes(b1 - 64), ctrl, table, a1);
    alignas(16) uint16_t nb[8] = {0};
    std::memcpy(nb, norms + t, 2 * (size_t)nt);
    const __m256 rho = _mm256_mul_ps(vscale, _mm256_cvtph_ps(_mm_load_si128((const __m128i*)nb)));
    q8_finish<B, NH>(z, a0, a1, rho, out + t, ldo, nt);
  }
}

template <int B>
void scores_q8_b(const uint8_t* codes, int64_t m, int d, const float* cent, const uint16_t* norms, float scale,
                 const float* q, int nq, float* out) {
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* qh = q + (size_t)h0 * d;
    float* oh = out + h0 * m;
    const int nh = std::min(kMaxNQ, nq - h0);
    if (d == 64) {  // the group loop unrolled
      switch (nh) {
        case 1: scores_q8_nh<B, 1, 4>(codes, m, d, cent, norms, scale, qh, oh, m); break;
        case 2: scores_q8_nh<B, 2, 4>(codes, m, d, cent, norms, scale, qh, oh, m); break;
        case 3: scores_q8_nh<B, 3, 4>(codes, m, d, cent, norms, scale, qh, oh, m); break;
        default: scores_q8_nh<B, 4, 4>(codes, m, d, cent, norms, scale, qh, oh, m); break;
      }
    } else {
      switch (nh) {
        case 1: scores_q8_nh<B, 1, 0>(codes, m, d, cent, norms, scale, qh, oh, m); break;
        case 2: scores_q8_nh<B, 2, 0>(codes, m, d, cent, norms, scale, qh, oh, m); break;
        case 3: scores_q8_nh<B, 3, 0>(codes, m, d, cent, norms, scale, qh, oh, m); break;
        default: scores_q8_nh<B, 4, 0>(codes, m, d, cent, norms, scale, qh, oh, m); break;
      }
    }
  }
}

template <int B>
void scores_b(const uint8_t* codes, int64_t m, int d, const float* cent, const float* q, int nq, float* out) {
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* qh = q + (size_t)h0 * d;
    float* oh = out + h0 * m;
    const int nh = std::min(kMaxNQ, nq - h0);
    if (d == 64) {  // SmolLM2, Llama 3.2 1B...: the group loop unrolled
      switch (nh) {
        case 1: scores_nh<B, 1, 4>(codes, m, d, cent, qh, oh, m); break;
        case 2: scores_nh<B, 2, 4>(codes, m, d, cent, qh, oh, m); break;
        case 3: scores_nh<B, 3, 4>(codes, m, d, cent, qh, oh, m); break;
        default: scores_nh<B, 4, 4>(codes, m, d, cent, qh, oh, m); break;
      }
    } else {
      switch (nh) {
        case 1: scores_nh<B, 1, 0>(codes, m, d, cent, qh, oh, m); break;
        case 2: scores_nh<B, 2, 0>(codes, m, d, cent, qh, oh, m); break;
        case 3: scores_nh<B, 3, 0>(codes, m, d, cent, qh, oh, m); break;
        default: scores_nh<B, 4, 0>(codes, m, d, cent, qh, oh, m); break;
      }
    }
  }
}

template <int B>
void values_b(const uint8_t* codes, int64_t m, int d, const float* cent, const float* w, int nq, float* acc) {
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* wh = w + h0 * m;
    float* ah = acc + (size_t)h0 * d;
    switch (std::min(kMaxNQ, nq - h0)) {
      case 1: values_nh<B, 1>(codes, m, d, cent, wh, m, ah); break;
      case 2: values_nh<B, 2>(codes, m, d, cent, wh, m, ah); break;
      case 3: values_nh<B, 3>(codes, m, d, cent, wh, m, ah); break;
      default: values_nh<B, 4>(codes, m, d, cent, wh, m, ah); break;
    }
  }
}

// 16 fields per multishift + vpermps while an 8-byte read at the group's own byte stays inside
// the stream (every such group shares one control vector), the last fields one at a time.
template <int B>
void decode_b(const uint8_t* codes, int64_t n, const float* table, float* out) {
  const __m512 tab = repeated_table<B>(table);
  alignas(64) uint8_t c[64] = {0};
  fill_ctrl<B>(c, 0);
  const __m512i ctrl = _mm512_load_si512(c);
  const int64_t nbytes = (int64_t)packed_bytes(n, B);
  int64_t j = 0;
  for (; j + 16 <= n && (j / 16) * 2 * B + 8 <= nbytes; j += 16) {
    uint64_t x;
    std::memcpy(&x, codes + (j / 16) * 2 * B, 8);
    _mm512_storeu_ps(out + j, _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)x)), tab));
  }
  for (; j < n; j++) out[j] = table[get_bits(codes, j, B)];
}

// e^y for y <= 0 as kernels/cpu/avx2_codes.cpp exp_nonpos computes it, 16 lanes: y = n ln2 + r,
// |r| <= ln2/2, e^r by its Taylor series to r^7, 2^n through the exponent bits; y < -87 gives 0.
inline __m512 exp_nonpos16(__m512 y) {
  const __m512 kn = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(kn, _mm512_set1_ps(0.693145751953125f), y);
  r = _mm512_fnmadd_ps(kn, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __mmask16 ok = _mm512_cmp_ps_mask(y, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(kn), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(ok, p, _mm512_castsi512_ps(e));
}

}  // namespace

float softmax_exp_avx512(float* x, int64_t n, float mx) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    const __m512 b = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm));
    _mm512_storeu_ps(x + i, a);
    _mm512_storeu_ps(x + i + 16, b);
    s0 = _mm512_add_ps(s0, a);
    s1 = _mm512_add_ps(s1, b);
  }
  for (; i < n; i += 16) {  // the tail under a mask: lanes past n are neither read nor written
    const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512 a = _mm512_maskz_mov_ps(k, exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm)));
    _mm512_mask_storeu_ps(x + i, k, a);
    s0 = _mm512_add_ps(s0, a);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

// 32 rows per step: codes widened to 16 bits, vpermw looks the mantissa bits up by the low five
// (the table is 32 entries of 16 bits, one zmm), the exponent offset subtracted in place.
void decode_log_norms_avx512(const uint8_t* codes, int64_t m, int shift, uint16_t* out) {
  const __m512i tab = _mm512_loadu_si512((const void*)log_norm_mantissa());
  const __m512i sh = _mm512_set1_epi16((short)(shift * 1024));
  const __m512i zero_code = _mm512_set1_epi16(kLogNormZero);
  int64_t t = 0;
  for (; t + 32 <= m; t += 32) {
    const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(codes + t)));
    const __m512i mant = _mm512_permutexvar_epi16(c, tab);
    const __m512i hi = _mm512_slli_epi16(_mm512_srli_epi16(c, 5), 10);
    const __m512i v = _mm512_sub_epi16(_mm512_add_epi16(mant, sh), hi);
    const __mmask32 z = _mm512_cmpeq_epi16_mask(c, zero_code);
    _mm512_storeu_si512((void*)(out + t), _mm512_maskz_mov_epi16(~z, v));
  }
  for (; t < m; t++) out[t] = log_norm_f16(codes[t], shift);
}

void decode_codes_avx512(const uint8_t* codes, int64_t n, int bits, const float* table, float* out) {
  switch (bits) {
    case 1: return decode_b<1>(codes, n, table, out);
    case 2: return decode_b<2>(codes, n, table, out);
    case 3: return decode_b<3>(codes, n, table, out);
    case 4: return decode_b<4>(codes, n, table, out);
    default: return cpu_kernels_scalar().decode_codes(codes, n, bits, table, out);
  }
}

// The tiled f16 attention's float kernels at 16 lanes: every output element is the same chain
// of fused multiply-adds as in the AVX2 and scalar versions (lanes are independent), so the
// bits are theirs.
void scores_f32t_chain_avx512(const float* kt, int d, int m, const float* q, float* out) {
  int t = 0;
  for (; t + 64 <= m; t += 64) {  // four accumulators of 16 keys
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int j = 0; j < d; j++) {
      const __m512 qj = _mm512_set1_ps(q[j]);
      const float* r = kt + (size_t)j * m + t;
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r), qj, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 16), qj, a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 32), qj, a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 48), qj, a3);
    }
    _mm512_storeu_ps(out + t, a0);
    _mm512_storeu_ps(out + t + 16, a1);
    _mm512_storeu_ps(out + t + 32, a2);
    _mm512_storeu_ps(out + t + 48, a3);
  }
  for (; t < m; t += 16) {  // the tail under a mask
    const __mmask16 k = m - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (m - t)) - 1);
    __m512 a = _mm512_setzero_ps();
    for (int j = 0; j < d; j++)
      a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, kt + (size_t)j * m + t), _mm512_set1_ps(q[j]), a);
    _mm512_mask_storeu_ps(out + t, k, a);
  }
}

void values_f32_chain_avx512(const float* v, int m, int d, const float* w, float* acc) {
  int i0 = 0;
  for (; i0 + 64 <= d; i0 += 64) {
    __m512 a0 = _mm512_loadu_ps(acc + i0), a1 = _mm512_loadu_ps(acc + i0 + 16);
    __m512 a2 = _mm512_loadu_ps(acc + i0 + 32), a3 = _mm512_loadu_ps(acc + i0 + 48);
    for (int j = 0; j < m; j++) {
      const __m512 wj = _mm512_set1_ps(w[j]);
      const float* r = v + (size_t)j * d + i0;
      a0 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(r), a0);
      a1 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(r + 16), a1);
      a2 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(r + 32), a2);
      a3 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(r + 48), a3);
    }
    _mm512_storeu_ps(acc + i0, a0);
    _mm512_storeu_ps(acc + i0 + 16, a1);
    _mm512_storeu_ps(acc + i0 + 32, a2);
    _mm512_storeu_ps(acc + i0 + 48, a3);
  }
  for (; i0 + 16 <= d; i0 += 16) {
    __m512 a = _mm512_loadu_ps(acc + i0);
    for (int j = 0; j < m; j++) a = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_loadu_ps(v + (size_t)j * d + i0), a);
    _mm512_storeu_ps(acc + i0, a);
  }
  // the last d mod 16 as the AVX2 version does them: 8 in a fused lane, the rest as its tail
  for (; i0 + 8 <= d; i0 += 8) {
    __m256 a = _mm256_loadu_ps(acc + i0);
    for (int j = 0; j < m; j++) a = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(v + (size_t)j * d + i0), a);
    _mm256_storeu_ps(acc + i0, a);
  }
  for (int i = i0; i < d; i++)
    for (int j = 0; j < m; j++) acc[i] += w[j] * v[(size_t)j * d + i];
}

// ρ_t = scale · f16 norms[t] for t < m into rho, 16 at a time.
static void row_norms16(const uint16_t* norms, int64_t m, float scale, float* rho) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t t = 0;
  for (; t + 16 <= m; t += 16)
    _mm512_storeu_ps(rho + t, _mm512_mul_ps(s, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(norms + t)))));
  for (; t < m; t++) rho[t] = scale * _cvtsh_ss(norms[t]);
}

// The row norms are applied outside the code scans: scores are multiplied by ρ_t after theirs,
// values scan with the weights w_t·ρ_t (a per-call buffer in L1).
void scores_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* q, int nq, float* out) {
  if (m <= 0) return;
  if (d % 16 != 0 || packed_bytes(d, bits) < 8 || d / 16 > Lookup16<1>::kMaxGroups || bits > 5)
    return scores_codes_avx2(codes, m, d, bits, centroids, norms, scale, q, nq, out);
  switch (bits) {
    case 1: scores_b<1>(codes, m, d, centroids, q, nq, out); break;
    case 2: scores_b<2>(codes, m, d, centroids, q, nq, out); break;
    case 3: scores_b<3>(codes, m, d, centroids, q, nq, out); break;
    case 4: scores_b<4>(codes, m, d, centroids, q, nq, out); break;
    default: scores_b<5>(codes, m, d, centroids, q, nq, out); break;
  }
  thread_local std::vector<float> rho;
  rho.resize(m);
  row_norms16(norms, m, scale, rho.data());
  for (int h = 0; h < nq; h++) {
    float* o = out + (size_t)h * m;
    int64_t t = 0;
    for (; t + 16 <= m; t += 16) _mm512_storeu_ps(o + t, _mm512_mul_ps(_mm512_loadu_ps(o + t), _mm512_loadu_ps(&rho[t])));
    for (; t < m; t++) o[t] *= rho[t];
  }
}

// In integers for codes of 1..3 bits in rows of up to 32 bytes (d = 64 at 2 or 3 bits, 128 at
// 1 or 2); other shapes as scores_codes_avx512 (exact, so within the contract's bound too). At
// 4 bits the rounding would be a fifth of the codes' own error on real SmolLM2 keys (mean over
// queries; 2-6% at 2-3 bits), so 4-bit codes stay in float.
void scores_codes_q8_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                            const uint16_t* norms, float scale, const float* q, int nq, float* out) {
  if (m <= 0) return;
  if (d % 16 != 0 || d > kQ8MaxD || bits > 3 || packed_bytes(d, bits) > kQ8MaxRowBytes)
    return scores_codes_avx512(codes, m, d, bits, centroids, norms, scale, q, nq, out);
  switch (bits) {
    case 1: return scores_q8_b<1>(codes, m, d, centroids, norms, scale, q, nq, out);
    case 2: return scores_q8_b<2>(codes, m, d, centroids, norms, scale, q, nq, out);
    default: return scores_q8_b<3>(codes, m, d, centroids, norms, scale, q, nq, out);
  }
}

void values_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* w, int nq, float* acc) {
  if (m <= 0) return;
  if (d % 16 != 0 || packed_bytes(d, bits) < 8 || d / 16 > Lookup16<1>::kMaxGroups || bits > 5)
    return values_codes_avx2(codes, m, d, bits, centroids, norms, scale, w, nq, acc);
  thread_local std::vector<float> wr;
  wr.resize((size_t)(nq + 1) * m);
  float* rho = wr.data() + (size_t)nq * m;
  row_norms16(norms, m, scale, rho);
  for (int h = 0; h < nq; h++) {
    const float* wh = w + (size_t)h * m;
    float* o = wr.data() + (size_t)h * m;
    int64_t t = 0;
    for (; t + 16 <= m; t += 16) _mm512_storeu_ps(o + t, _mm512_mul_ps(_mm512_loadu_ps(wh + t), _mm512_loadu_ps(rho + t)));
    for (; t < m; t++) o[t] = wh[t] * rho[t];
  }
  switch (bits) {
    case 1: return values_b<1>(codes, m, d, centroids, wr.data(), nq, acc);
    case 2: return values_b<2>(codes, m, d, centroids, wr.data(), nq, acc);
    case 3: return values_b<3>(codes, m, d, centroids, wr.data(), nq, acc);
    case 4: return values_b<4>(codes, m, d, centroids, wr.data(), nq, acc);
    default: return values_b<5>(codes, m, d, centroids, wr.data(), nq, acc);
  }
}

}  // namespace eoq
#endif
