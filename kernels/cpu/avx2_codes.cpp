// AVX2 + FMA + F16C attention kernels over one KV head's cached rows (the kernels.h entries
// scores_f16, values_f16, scores_codes, values_codes; references in kernels/ref/vec.cpp).
//
// TurboQuant rows are read straight from their packed codes: 8 coordinates of b <= 4 bits are
// exactly b bytes, so one 32-bit broadcast, a per-lane variable shift and a mask give the 8
// codes in the lanes of a vector, and vpermps looks their centroids up in a register (two
// vpermps and a blend for the 16 centroids of b = 4). That is an exact float table look-up,
// 8 coordinates per instruction, shared by the nq query vectors of a GQA group, which then
// cost one FMA per 8 coordinates each. Measured against the alternatives: a 16-entry float
// table per coordinate pair scanned with vgatherdps took about twice as long (d = 64, b = 2,
// 3 query heads: ~14 against ~7 ns per token and head), and 8-bit pshufb tables ("fast scan")
// would not keep scores within float rounding of the dequantized oracle. b > 4 goes to the
// reference.
//
// Scores keep one accumulator per query vector and token and reduce 8 tokens at a time with a
// horizontal-add transpose; values run over the coordinates in the outer loop (16 at a time)
// and the tokens in the inner one, so the accumulators stay in registers.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/turboquant.h"

namespace eoq {

namespace {

constexpr int kMaxNQ = 4;  // query vectors per pass (accumulators: 2 per vector)

// Loops over the NH query vectors must be unrolled for the accumulator arrays to live in
// registers (GCC's -O2 keeps them on the stack otherwise).
#define EOQ_UNROLL _Pragma("GCC unroll 8")

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// r[i] = Σ lanes of v[i], i = 0..7.
inline __m256 reduce8(const __m256* v) {
  const __m256 a01 = _mm256_hadd_ps(v[0], v[1]), a23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 a45 = _mm256_hadd_ps(v[4], v[5]), a67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 b0 = _mm256_hadd_ps(a01, a23), b1 = _mm256_hadd_ps(a45, a67);
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

// ---- packed codes ----

// The centroids of the 8 coordinates of group g (coordinates 8g..8g+7) of a row of B-bit codes
// (rb >= 4 bytes). The group's 8B bits start at byte B·g; the 4 bytes read start there or, for
// the last groups, at rb − 4 with the shifts moved up to match, so no read leaves the row.
template <int B>
struct CodeLookup {
  static constexpr int kMaxGroups = 64;  // d <= 512
  __m256i mask;
  __m256 lo, hi;  // centroids 0..7 and 8..15
  int off[kMaxGroups];
  alignas(32) int32_t shifts[kMaxGroups][8];
  CodeLookup(const float* centroids, int ng, size_t rb) {
    mask = _mm256_set1_epi32((1 << B) - 1);
    alignas(32) float c[16] = {0};
    for (int i = 0; i < (1 << B); i++) c[i] = centroids[i];
    lo = _mm256_load_ps(c);
    hi = _mm256_load_ps(c + 8);
    for (int g = 0; g < ng; g++) {
      off[g] = std::min(B * g, (int)rb - 4);
      for (int i = 0; i < 8; i++) shifts[g][i] = 8 * (B * g - off[g]) + B * i;
    }
  }
  __m256 operator()(const uint8_t* row, int g) const {
    uint32_t x;
    std::memcpy(&x, row + off[g], 4);
    const __m256i sh = _mm256_load_si256((const __m256i*)shifts[g]);
    const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)x), sh), mask);
    if (B <= 3) return _mm256_permutevar8x32_ps(lo, idx);
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
};

template <int B, int NH>
void scores_codes_nh(const uint8_t* codes, int64_t m, int d, const float* centroids, const float* q, float* out,
                     int64_t ldo) {
  const size_t rb = packed_bytes(d, B);
  const int ng = d / 8;
  const CodeLookup<B> look(centroids, ng, rb);
  __m256 buf[NH][8];
  float tail[NH][8];
  for (int64_t t = 0; t < m; t++) {
    const uint8_t* row = codes + (size_t)t * rb;
    __m256 a0[NH], a1[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a0[h] = a1[h] = _mm256_setzero_ps();
    int g = 0;
    for (; g + 2 <= ng; g += 2) {
      const __m256 c0 = look(row, g), c1 = look(row, g + 1);
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) {
        a0[h] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(q + (size_t)h * d + 8 * g), a0[h]);
        a1[h] = _mm256_fmadd_ps(c1, _mm256_loadu_ps(q + (size_t)h * d + 8 * g + 8), a1[h]);
      }
    }
    if (g < ng) {
      const __m256 c0 = look(row, g);
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) a0[h] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(q + (size_t)h * d + 8 * g), a0[h]);
    }
    const int k = (int)(t & 7);
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      buf[h][k] = _mm256_add_ps(a0[h], a1[h]);
      float s = 0;
      for (int j = 8 * ng; j < d; j++) s += q[(size_t)h * d + j] * centroids[get_bits(row, j, B)];
      tail[h][k] = s;
    }
    if (k == 7) {
      EOQ_UNROLL
      for (int h = 0; h < NH; h++)
        _mm256_storeu_ps(out + h * ldo + t - 7, _mm256_add_ps(reduce8(buf[h]), _mm256_loadu_ps(tail[h])));
    } else if (t + 1 == m) {
      EOQ_UNROLL
      for (int h = 0; h < NH; h++)
        for (int i = 0; i <= k; i++) out[h * ldo + t - k + i] = hsum(buf[h][i]) + tail[h][i];
    }
  }
}

template <int B, int NH>
void values_codes_nh(const uint8_t* codes, int64_t m, int d, const float* centroids, const float* w, int64_t ldw,
                     float* acc) {
  const size_t rb = packed_bytes(d, B);
  const int ng = d / 8;
  const CodeLookup<B> look(centroids, ng, rb);
  int g = 0;
  for (; g + 2 <= ng; g += 2) {
    __m256 a0[NH], a1[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      a0[h] = _mm256_loadu_ps(acc + (size_t)h * d + 8 * g);
      a1[h] = _mm256_loadu_ps(acc + (size_t)h * d + 8 * g + 8);
    }
    for (int64_t t = 0; t < m; t++) {
      const uint8_t* row = codes + (size_t)t * rb;
      const __m256 c0 = look(row, g), c1 = look(row, g + 1);
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) {
        const __m256 wt = _mm256_broadcast_ss(w + h * ldw + t);
        a0[h] = _mm256_fmadd_ps(wt, c0, a0[h]);
        a1[h] = _mm256_fmadd_ps(wt, c1, a1[h]);
      }
    }
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      _mm256_storeu_ps(acc + (size_t)h * d + 8 * g, a0[h]);
      _mm256_storeu_ps(acc + (size_t)h * d + 8 * g + 8, a1[h]);
    }
  }
  if (g < ng) {
    __m256 a0[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a0[h] = _mm256_loadu_ps(acc + (size_t)h * d + 8 * g);
    for (int64_t t = 0; t < m; t++) {
      const uint8_t* row = codes + (size_t)t * rb;
      const __m256 c0 = look(row, g);
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) a0[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + h * ldw + t), c0, a0[h]);
    }
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) _mm256_storeu_ps(acc + (size_t)h * d + 8 * g, a0[h]);
  }
  for (int j = 8 * ng; j < d; j++)
    for (int64_t t = 0; t < m; t++) {
      const float c = centroids[get_bits(codes + (size_t)t * rb, j, B)];
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) acc[(size_t)h * d + j] += w[h * ldw + t] * c;
    }
}

template <int B>
void scores_codes_b(const uint8_t* codes, int64_t m, int d, const float* cent, const float* q, int nq, float* out) {
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* qh = q + (size_t)h0 * d;
    float* oh = out + h0 * m;
    switch (std::min(kMaxNQ, nq - h0)) {
      case 1: scores_codes_nh<B, 1>(codes, m, d, cent, qh, oh, m); break;
      case 2: scores_codes_nh<B, 2>(codes, m, d, cent, qh, oh, m); break;
      case 3: scores_codes_nh<B, 3>(codes, m, d, cent, qh, oh, m); break;
      default: scores_codes_nh<B, 4>(codes, m, d, cent, qh, oh, m); break;
    }
  }
}

template <int B>
void values_codes_b(const uint8_t* codes, int64_t m, int d, const float* cent, const float* w, int nq, float* acc) {
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* wh = w + h0 * m;
    float* ah = acc + (size_t)h0 * d;
    switch (std::min(kMaxNQ, nq - h0)) {
      case 1: values_codes_nh<B, 1>(codes, m, d, cent, wh, m, ah); break;
      case 2: values_codes_nh<B, 2>(codes, m, d, cent, wh, m, ah); break;
      case 3: values_codes_nh<B, 3>(codes, m, d, cent, wh, m, ah); break;
      default: values_codes_nh<B, 4>(codes, m, d, cent, wh, m, ah); break;
    }
  }
}

// ---- f16 rows ----

template <int NH>
void scores_f16_nh(const uint16_t* rows, int64_t m, int d, const float* q, float* out, int64_t ldo) {
  const int ng = d / 8;
  __m256 buf[NH][8];
  float tail[NH][8];
  for (int64_t t = 0; t < m; t++) {
    const uint16_t* row = rows + (size_t)t * d;
    __m256 a0[NH], a1[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a0[h] = a1[h] = _mm256_setzero_ps();
    int g = 0;
    for (; g + 2 <= ng; g += 2) {
      const __m256 c0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 8 * g)));
      const __m256 c1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 8 * g + 8)));
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) {
        a0[h] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(q + (size_t)h * d + 8 * g), a0[h]);
        a1[h] = _mm256_fmadd_ps(c1, _mm256_loadu_ps(q + (size_t)h * d + 8 * g + 8), a1[h]);
      }
    }
    if (g < ng) {
      const __m256 c0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 8 * g)));
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) a0[h] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(q + (size_t)h * d + 8 * g), a0[h]);
    }
    const int k = (int)(t & 7);
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      buf[h][k] = _mm256_add_ps(a0[h], a1[h]);
      float s = 0;
      for (int j = 8 * ng; j < d; j++) s += q[(size_t)h * d + j] * _cvtsh_ss(row[j]);
      tail[h][k] = s;
    }
    if (k == 7) {
      EOQ_UNROLL
      for (int h = 0; h < NH; h++)
        _mm256_storeu_ps(out + h * ldo + t - 7, _mm256_add_ps(reduce8(buf[h]), _mm256_loadu_ps(tail[h])));
    } else if (t + 1 == m) {
      EOQ_UNROLL
      for (int h = 0; h < NH; h++)
        for (int i = 0; i <= k; i++) out[h * ldo + t - k + i] = hsum(buf[h][i]) + tail[h][i];
    }
  }
}

template <int NH>
void values_f16_nh(const uint16_t* rows, int64_t m, int d, const float* w, int64_t ldw, float* acc) {
  const int ng = d / 8;
  int g = 0;
  for (; g + 2 <= ng; g += 2) {
    __m256 a0[NH], a1[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      a0[h] = _mm256_loadu_ps(acc + (size_t)h * d + 8 * g);
      a1[h] = _mm256_loadu_ps(acc + (size_t)h * d + 8 * g + 8);
    }
    for (int64_t t = 0; t < m; t++) {
      const uint16_t* row = rows + (size_t)t * d + 8 * g;
      const __m256 c0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)row));
      const __m256 c1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 8)));
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) {
        const __m256 wt = _mm256_broadcast_ss(w + h * ldw + t);
        a0[h] = _mm256_fmadd_ps(wt, c0, a0[h]);
        a1[h] = _mm256_fmadd_ps(wt, c1, a1[h]);
      }
    }
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) {
      _mm256_storeu_ps(acc + (size_t)h * d + 8 * g, a0[h]);
      _mm256_storeu_ps(acc + (size_t)h * d + 8 * g + 8, a1[h]);
    }
  }
  if (g < ng) {
    __m256 a0[NH];
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) a0[h] = _mm256_loadu_ps(acc + (size_t)h * d + 8 * g);
    for (int64_t t = 0; t < m; t++) {
      const __m256 c0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rows + (size_t)t * d + 8 * g)));
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) a0[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + h * ldw + t), c0, a0[h]);
    }
    EOQ_UNROLL
    for (int h = 0; h < NH; h++) _mm256_storeu_ps(acc + (size_t)h * d + 8 * g, a0[h]);
  }
  for (int j = 8 * ng; j < d; j++)
    for (int64_t t = 0; t < m; t++) {
      const float c = _cvtsh_ss(rows[(size_t)t * d + j]);
      EOQ_UNROLL
      for (int h = 0; h < NH; h++) acc[(size_t)h * d + j] += w[h * ldw + t] * c;
    }
}

}  // namespace

void scores_f16_avx2(const uint16_t* rows, int64_t m, int d, const float* q, int nq, float* out) {
  if (m <= 0) return;
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* qh = q + (size_t)h0 * d;
    float* oh = out + h0 * m;
    switch (std::min(kMaxNQ, nq - h0)) {
      case 1: scores_f16_nh<1>(rows, m, d, qh, oh, m); break;
      case 2: scores_f16_nh<2>(rows, m, d, qh, oh, m); break;
      case 3: scores_f16_nh<3>(rows, m, d, qh, oh, m); break;
      default: scores_f16_nh<4>(rows, m, d, qh, oh, m); break;
    }
  }
}

void values_f16_avx2(const uint16_t* rows, int64_t m, int d, const float* w, int nq, float* acc) {
  if (m <= 0) return;
  for (int h0 = 0; h0 < nq; h0 += kMaxNQ) {
    const float* wh = w + h0 * m;
    float* ah = acc + (size_t)h0 * d;
    switch (std::min(kMaxNQ, nq - h0)) {
      case 1: values_f16_nh<1>(rows, m, d, wh, m, ah); break;
      case 2: values_f16_nh<2>(rows, m, d, wh, m, ah); break;
      case 3: values_f16_nh<3>(rows, m, d, wh, m, ah); break;
      default: values_f16_nh<4>(rows, m, d, wh, m, ah); break;
    }
  }
}

// ρ_t = scale · f16 norms[t] for t < m into rho (8 at a time through F16C).
static void row_norms(const uint16_t* norms, int64_t m, float scale, float* rho) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t t = 0;
  for (; t + 8 <= m; t += 8)
    _mm256_storeu_ps(rho + t, _mm256_mul_ps(s, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(norms + t)))));
  for (; t < m; t++) rho[t] = scale * _cvtsh_ss(norms[t]);
}

// Both entries take the row norms outside the code scan: scores are multiplied by ρ_t after it,
// values scan with the weights w_t·ρ_t (a per-call buffer in L1).
void scores_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* q, int nq, float* out) {
  if (m <= 0) return;
  if (packed_bytes(d, bits) < 4 || d / 8 > CodeLookup<1>::kMaxGroups || bits > 4)
    return cpu_kernels_scalar().scores_codes(codes, m, d, bits, centroids, norms, scale, q, nq, out);
  switch (bits) {
    case 1: scores_codes_b<1>(codes, m, d, centroids, q, nq, out); break;
    case 2: scores_codes_b<2>(codes, m, d, centroids, q, nq, out); break;
    case 3: scores_codes_b<3>(codes, m, d, centroids, q, nq, out); break;
    default: scores_codes_b<4>(codes, m, d, centroids, q, nq, out); break;
  }
  thread_local std::vector<float> rho;
  rho.resize(m);
  row_norms(norms, m, scale, rho.data());
  for (int h = 0; h < nq; h++) {
    float* o = out + (size_t)h * m;
    int64_t t = 0;
    for (; t + 8 <= m; t += 8) _mm256_storeu_ps(o + t, _mm256_mul_ps(_mm256_loadu_ps(o + t), _mm256_loadu_ps(&rho[t])));
    for (; t < m; t++) o[t] *= rho[t];
  }
}

void values_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* w, int nq, float* acc) {
  if (m <= 0) return;
  if (packed_bytes(d, bits) < 4 || d / 8 > CodeLookup<1>::kMaxGroups || bits > 4)
    return cpu_kernels_scalar().values_codes(codes, m, d, bits, centroids, norms, scale, w, nq, acc);
  thread_local std::vector<float> wr;
  wr.resize((size_t)(nq + 1) * m);
  float* rho = wr.data() + (size_t)nq * m;
  row_norms(norms, m, scale, rho);
  for (int h = 0; h < nq; h++) {
    const float* wh = w + (size_t)h * m;
    float* o = wr.data() + (size_t)h * m;
    int64_t t = 0;
    for (; t + 8 <= m; t += 8) _mm256_storeu_ps(o + t, _mm256_mul_ps(_mm256_loadu_ps(wh + t), _mm256_loadu_ps(rho + t)));
    for (; t < m; t++) o[t] = wh[t] * rho[t];
  }
  switch (bits) {
    case 1: return values_codes_b<1>(codes, m, d, centroids, wr.data(), nq, acc);
    case 2: return values_codes_b<2>(codes, m, d, centroids, wr.data(), nq, acc);
    case 3: return values_codes_b<3>(codes, m, d, centroids, wr.data(), nq, acc);
    default: return values_codes_b<4>(codes, m, d, centroids, wr.data(), nq, acc);
  }
}

// Groups of 8 fields through CodeLookup while its 4-byte reads stay inside the stream, the rest
// one field at a time; chunks of 512 fields (CodeLookup's limit) start on a byte.
template <int B>
void decode_codes_b(const uint8_t* codes, int64_t n, const float* table, float* out) {
  for (int64_t c0 = 0; c0 < n; c0 += 512) {
    const int cn = (int)std::min<int64_t>(512, n - c0);
    const uint8_t* src = codes + c0 * B / 8;
    const size_t rb = packed_bytes(cn, B);
    int j = 0;
    if (rb >= 4) {
      const int ng = cn / 8;
      const CodeLookup<B> look(table, ng, rb);
      for (int g = 0; g < ng; g++, j += 8) _mm256_storeu_ps(out + c0 + j, look(src, g));
    }
    for (; j < cn; j++) out[c0 + j] = table[get_bits(src, j, B)];
  }
}

// exp(y) for y <= 0: y = n ln2 + r with n = round(y / ln2), |r| <= ln2/2, ln2 split in a part
// with 7 trailing zero bits (n·ln2_hi is exact for the |n| <= 126 used here) and the rest;
// e^r by its Taylor series to r^7 (truncation < 1e-8 relative); 2^n through the exponent bits.
// y < -87 (e^y < 2^-125) gives 0.
inline __m256 exp_nonpos(__m256 y) {
  const __m256 ln2_hi = _mm256_set1_ps(0.693145751953125f), ln2_lo = _mm256_set1_ps(1.428606765330187e-06f);
  const __m256 kn = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(kn, ln2_hi, y);
  r = _mm256_fnmadd_ps(kn, ln2_lo, r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256 ok = _mm256_cmp_ps(y, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_and_ps(kn, ok)), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), ok);
}

void decode_codes_avx2(const uint8_t* codes, int64_t n, int bits, const float* table, float* out) {
  switch (bits) {
    case 1: return decode_codes_b<1>(codes, n, table, out);
    case 2: return decode_codes_b<2>(codes, n, table, out);
    case 3: return decode_codes_b<3>(codes, n, table, out);
    case 4: return decode_codes_b<4>(codes, n, table, out);
    default: return cpu_kernels_scalar().decode_codes(codes, n, bits, table, out);
  }
}

float softmax_exp_avx2(float* x, int64_t n, float mx) {
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    const __m256 b = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
    _mm256_storeu_ps(x + i, a);
    _mm256_storeu_ps(x + i + 8, b);
    s0 = _mm256_add_ps(s0, a);
    s1 = _mm256_add_ps(s1, b);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, a);
    s0 = _mm256_add_ps(s0, a);
  }
  float s = hsum(_mm256_add_ps(s0, s1));
  if (i < n) {  // the tail through a padded vector
    alignas(32) float t[8];
    for (int k = 0; k < 8; k++) t[k] = i + k < n ? x[i + k] - mx : -INFINITY;
    _mm256_store_ps(t, exp_nonpos(_mm256_load_ps(t)));
    for (int k = 0; i + k < n; k++) {
      x[i + k] = t[k];
      s += t[k];
    }
  }
  return s;
}

float max_f32_avx2(const float* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
  }
  m0 = _mm256_max_ps(m0, m1);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float m = _mm_cvtss_f32(h);
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace eoq
#endif
