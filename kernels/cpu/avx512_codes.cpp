// AVX-512 (F, BW, VL, DQ, VBMI) versions of the compressed cache's attention kernels (kernels.h
// scores_codes, values_codes, decode_codes, softmax_exp; references in kernels/ref/vec.cpp,
// AVX2 versions in kernels/cpu/avx2_codes.cpp). Chosen with the AVX512-VNNI table when CPUID
// also reports VBMI.
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

void decode_codes_avx512(const uint8_t* codes, int64_t n, int bits, const float* table, float* out) {
  switch (bits) {
    case 1: return decode_b<1>(codes, n, table, out);
    case 2: return decode_b<2>(codes, n, table, out);
    case 3: return decode_b<3>(codes, n, table, out);
    case 4: return decode_b<4>(codes, n, table, out);
    default: return cpu_kernels_scalar().decode_codes(codes, n, bits, table, out);
  }
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
  if (d % 16 != 0 || packed_bytes(d, bits) < 8 || d / 16 > Lookup16<1>::kMaxGroups || bits > 4)
    return scores_codes_avx2(codes, m, d, bits, centroids, norms, scale, q, nq, out);
  switch (bits) {
    case 1: scores_b<1>(codes, m, d, centroids, q, nq, out); break;
    case 2: scores_b<2>(codes, m, d, centroids, q, nq, out); break;
    case 3: scores_b<3>(codes, m, d, centroids, q, nq, out); break;
    default: scores_b<4>(codes, m, d, centroids, q, nq, out); break;
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

void values_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* w, int nq, float* acc) {
  if (m <= 0) return;
  if (d % 16 != 0 || packed_bytes(d, bits) < 8 || d / 16 > Lookup16<1>::kMaxGroups || bits > 4)
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
    default: return values_b<4>(codes, m, d, centroids, wr.data(), nq, acc);
  }
}

}  // namespace eoq
#endif
