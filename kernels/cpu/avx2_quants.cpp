// AVX2 + F16C row dequantizers for every supported weight type (compiled with -mavx2 -mfma
// -mf16c; called only through the avx2 kernel table, i.e. after CPUID said yes).
//
// Contract: the same results as dequantize_row_ref (kernels/ref/quants.cpp), bit for bit
// (F16/BF16 rows even for NaN inputs; for the quantized types whenever the fp16 scales are
// not NaN: a NaN scale gives NaN on both sides, its payload not guaranteed equal).
// Integer unpacking is exact, int -> float conversion of these small integers is exact, and
// the fp16 scales go through F16C, which is exact for every finite value, inf and subnormal.
// The float arithmetic is the reference's, with one liberty: d * q + m and d * q - m are
// single FMAs. That cannot change a bit, because wherever an add follows, the product is
// exact in float32: d is an fp16 value (11 significant bits) and q has at most 5 bits
// (legacy formats: <= 16 bits); for Q2_K/Q4_K/Q5_K, d1 = d * sc is exact (sc <= 6 bits, so
// <= 17 bits) and d1 * q has <= 17 + 5 = 22 bits < 24, with no overflow or underflow (fp16
// magnitudes stay within [2^-24, 65504]). So the FMA's single rounding is the reference's
// rounding of the sum. (Q3_K and Q6_K have no add; their one multiply rounds the same way.)
//
// Layout reminders (the full description is in kernels/ref/quants.cpp):
//   legacy blocks of 32: value j < 16 in the low nibble of qs[j], value j+16 in its high
//   nibble; the fifth bit of value j (Q5_*) is bit j of the little-endian u32 qh.
//   K-quant super-blocks of 256: see each function.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/avx2.h"
#include "base/fp16.h"
#include "kernels/quant_blocks.h"
#include "kernels/quants.h"

namespace eoq {

namespace {

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
// fp16 scale field -> float (F16C; exact, same as fp16_to_fp32 for every non-NaN value)
inline float h2f(const uint8_t* p) { return _cvtsh_ss(rd16(p)); }

inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }

// The four 8-float groups of 32 signed bytes, in byte order.
struct F4 {
  __m256 v[4];
};
inline F4 to_float(__m256i q) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  F4 r;
  r.v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  r.v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
  r.v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  r.v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
  return r;
}

// 32 values y[0..32) = d * q
inline void put_mul(float* y, __m256i q, __m256 d) {
  const F4 f = to_float(q);
  for (int i = 0; i < 4; i++) _mm256_storeu_ps(y + 8 * i, _mm256_mul_ps(d, f.v[i]));
}
// 32 values y = d * q + m (d * q is exact: see the top of the file)
inline void put_mul_add(float* y, __m256i q, __m256 d, __m256 m) {
  const F4 f = to_float(q);
  for (int i = 0; i < 4; i++) _mm256_storeu_ps(y + 8 * i, _mm256_fmadd_ps(d, f.v[i], m));
}
// 32 values y = d * q - m (d * q is exact)
inline void put_mul_sub(float* y, __m256i q, __m256 d, __m256 m) {
  const F4 f = to_float(q);
  for (int i = 0; i < 4; i++) _mm256_storeu_ps(y + 8 * i, _mm256_fmsub_ps(d, f.v[i], m));
}
// 32 values in two sub-blocks of 16: y[0..16) = d0 * q, y[16..32) = d1 * q
inline void put_mul2(float* y, __m256i q, __m256 d0, __m256 d1) {
  const F4 f = to_float(q);
  _mm256_storeu_ps(y, _mm256_mul_ps(d0, f.v[0]));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(d0, f.v[1]));
  _mm256_storeu_ps(y + 16, _mm256_mul_ps(d1, f.v[2]));
  _mm256_storeu_ps(y + 24, _mm256_mul_ps(d1, f.v[3]));
}
// as put_mul2 with y = d * q - m per sub-block
inline void put_mul_sub2(float* y, __m256i q, __m256 d0, __m256 m0, __m256 d1, __m256 m1) {
  const F4 f = to_float(q);
  _mm256_storeu_ps(y, _mm256_fmsub_ps(d0, f.v[0], m0));
  _mm256_storeu_ps(y + 8, _mm256_fmsub_ps(d0, f.v[1], m0));
  _mm256_storeu_ps(y + 16, _mm256_fmsub_ps(d1, f.v[2], m1));
  _mm256_storeu_ps(y + 24, _mm256_fmsub_ps(d1, f.v[3], m1));
}

// 16 packed bytes (legacy qs) -> 32 nibbles in value order: low nibbles (values 0..15) in
// the low lane, high nibbles (values 16..31) in the high lane.
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i q = _mm_loadu_si128((const __m128i*)qs);
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(q, m4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

// Bit j of the 32-bit word qh -> byte j is 0x10 if set, else 0 (the fifth bit of Q5_0/Q5_1).
inline __m256i bit4_from_u32(uint32_t qh) {
  const __m256i v = _mm256_set1_epi32((int)qh);
  // byte j takes byte j/8 of qh (shuffle works per 128-bit lane; every lane holds all 4 bytes)
  const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                       2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(v, sel), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(0x10));
}

// ---- legacy formats, blocks of 32 ----

void row_q4_0(const uint8_t* p, float* y, int64_t nb) {  // 18 bytes: d, qs[16]
  const __m256i eight = _mm256_set1_epi8(8);
  for (int64_t i = 0; i < nb; i++, p += 18, y += QK)
    put_mul(y, _mm256_sub_epi8(nibbles32(p + 2), eight), _mm256_set1_ps(h2f(p)));
}

void row_q4_1(const uint8_t* p, float* y, int64_t nb) {  // 20 bytes: d, m, qs[16]
  for (int64_t i = 0; i < nb; i++, p += 20, y += QK)
    put_mul_add(y, nibbles32(p + 4), _mm256_set1_ps(h2f(p)), _mm256_set1_ps(h2f(p + 2)));
}

void row_q5_0(const uint8_t* p, float* y, int64_t nb) {  // 22 bytes: d, qh[4], qs[16]
  const __m256i sixteen = _mm256_set1_epi8(16);
  for (int64_t i = 0; i < nb; i++, p += 22, y += QK) {
    const __m256i q = _mm256_or_si256(nibbles32(p + 6), bit4_from_u32(rd32(p + 2)));
    put_mul(y, _mm256_sub_epi8(q, sixteen), _mm256_set1_ps(h2f(p)));
  }
}

void row_q5_1(const uint8_t* p, float* y, int64_t nb) {  // 24 bytes: d, m, qh[4], qs[16]
  for (int64_t i = 0; i < nb; i++, p += 24, y += QK) {
    const __m256i q = _mm256_or_si256(nibbles32(p + 8), bit4_from_u32(rd32(p + 4)));
    put_mul_add(y, q, _mm256_set1_ps(h2f(p)), _mm256_set1_ps(h2f(p + 2)));
  }
}

void row_q8_0(const uint8_t* p, float* y, int64_t nb) {  // 34 bytes: d, qs[32] (int8)
  for (int64_t i = 0; i < nb; i++, p += 34, y += QK) put_mul(y, load32(p + 2), _mm256_set1_ps(h2f(p)));
}

// ---- K-quants, super-blocks of 256 ----

// Q2_K, 84 bytes: scales[16] (lo nibble scale, hi nibble min), qs[64], d, dmin.
// Value h*128 + k*32 + l is bits 2k..2k+1 of qs[h*32 + l]; its sub-block is h*8 + 2k + l/16.
void row_q2_K(const uint8_t* p, float* y, int64_t nb) {
  const __m256i m3 = _mm256_set1_epi8(3);
  for (int64_t i = 0; i < nb; i++, p += 84, y += QK_K) {
    const float d = h2f(p + 80), dmin = h2f(p + 82);
    float dl[16], ml[16];
    for (int s = 0; s < 16; s++) {
      dl[s] = d * (float)(p[s] & 0x0f);
      ml[s] = dmin * (float)(p[s] >> 4);
    }
    for (int h = 0; h < 2; h++) {
      const __m256i q = load32(p + 16 + 32 * h);
      for (int k = 0; k < 4; k++) {
        const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m3);
        const int s = h * 8 + 2 * k;
        put_mul_sub2(y + h * 128 + k * 32, v, _mm256_set1_ps(dl[s]), _mm256_set1_ps(ml[s]),
                     _mm256_set1_ps(dl[s + 1]), _mm256_set1_ps(ml[s + 1]));
      }
    }
  }
}

// Q3_K, 110 bytes: hmask[32], qs[64], scales[12], d. Low 2 bits as in Q2_K; the high bit of
// value h*128 + k*32 + l is bit h*4 + k of hmask[l], and a clear bit subtracts 4.
void row_q3_K(const uint8_t* p, float* y, int64_t nb) {
  const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4), zero = _mm256_setzero_si256();
  for (int64_t i = 0; i < nb; i++, p += 110, y += QK_K) {
    const uint8_t* sc = p + 96;
    const float d = h2f(p + 108);
    float dl[16];
    for (int s = 0; s < 16; s++) {
      const int lo = (sc[s % 8] >> (4 * (s / 8))) & 0x0f;
      const int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 0x03;
      dl[s] = d * (float)((lo | hi << 4) - 32);
    }
    const __m256i hm = load32(p);
    for (int h = 0; h < 2; h++) {
      const __m256i q = load32(p + 32 + 32 * h);
      for (int k = 0; k < 4; k++) {
        const __m256i low = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m3);
        const __m256i hb = _mm256_and_si256(hm, _mm256_set1_epi8((char)(1 << (h * 4 + k))));
        const __m256i sub = _mm256_and_si256(_mm256_cmpeq_epi8(hb, zero), four);
        const int s = h * 8 + 2 * k;
        put_mul2(y + h * 128 + k * 32, _mm256_sub_epi8(low, sub), _mm256_set1_ps(dl[s]),
                 _mm256_set1_ps(dl[s + 1]));
      }
    }
  }
}

// The eight 6-bit (scale, min) pairs of Q4_K/Q5_K (same packing as the reference's
// scale_min_k4), as floats d * sc and dmin * m.
inline void k4_scales(const uint8_t* q, float d, float dmin, float* d1, float* m1) {
  for (int j = 0; j < 8; j++) {
    int sc, m;
    if (j < 4) {
      sc = q[j] & 63;
      m = q[j + 4] & 63;
    } else {
      sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
      m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    d1[j] = d * (float)sc;
    m1[j] = dmin * (float)m;
  }
}

// Q4_K, 144 bytes: d, dmin, scales[12], qs[128]. Sub-blocks 2g, 2g+1 (32 values each) are the
// low and high nibbles of qs[g*32 .. g*32+32).
void row_q4_K(const uint8_t* p, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int64_t i = 0; i < nb; i++, p += 144, y += QK_K) {
    float d1[8], m1[8];
    k4_scales(p + 4, h2f(p), h2f(p + 2), d1, m1);
    for (int g = 0; g < 4; g++) {
      const __m256i q = load32(p + 16 + 32 * g);
      const int j = 2 * g;
      put_mul_sub(y + 32 * j, _mm256_and_si256(q, m4), _mm256_set1_ps(d1[j]), _mm256_set1_ps(m1[j]));
      put_mul_sub(y + 32 * (j + 1), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_set1_ps(d1[j + 1]),
                  _mm256_set1_ps(m1[j + 1]));
    }
  }
}

// Q5_K, 176 bytes: d, dmin, scales[12], qh[32], qs[128]. As Q4_K with bit 4 of value l of
// sub-block j = bit j of qh[l].
void row_q5_K(const uint8_t* p, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
  for (int64_t i = 0; i < nb; i++, p += 176, y += QK_K) {
    float d1[8], m1[8];
    k4_scales(p + 4, h2f(p), h2f(p + 2), d1, m1);
    const __m256i qh = load32(p + 16);
    for (int g = 0; g < 4; g++) {
      const __m256i q = load32(p + 48 + 32 * g);
      for (int half = 0; half < 2; half++) {
        const int j = 2 * g + half;
        const __m256i bit = _mm256_set1_epi8((char)(1 << j));
        const __m256i hb = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), b4);
        const __m256i nib = _mm256_and_si256(half ? _mm256_srli_epi16(q, 4) : q, m4);
        put_mul_sub(y + 32 * j, _mm256_or_si256(nib, hb), _mm256_set1_ps(d1[j]), _mm256_set1_ps(m1[j]));
      }
    }
  }
}

// Q6_K, 210 bytes: ql[128], qh[64], scales[16] (int8), d. Value h*128 + k*32 + l: low nibble
// from ql[h*64 + (k%2)*32 + l] (low nibble for k < 2, high for k >= 2), top 2 bits from bits
// 2k..2k+1 of qh[h*32 + l]; x = (d * scale) * (q - 32), sub-block h*8 + 2k + l/16.
void row_q6_K(const uint8_t* p, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), bias = _mm256_set1_epi8(32);
  for (int64_t i = 0; i < nb; i++, p += 210, y += QK_K) {
    const int8_t* sc = (const int8_t*)(p + 192);
    const float d = h2f(p + 208);
    float dl[16];
    for (int s = 0; s < 16; s++) dl[s] = d * (float)sc[s];
    for (int h = 0; h < 2; h++) {
      const __m256i ql0 = load32(p + h * 64), ql1 = load32(p + h * 64 + 32);
      const __m256i qh = load32(p + 128 + h * 32);
      for (int k = 0; k < 4; k++) {
        const __m256i src = (k % 2) ? ql1 : ql0;
        const __m256i lo = _mm256_and_si256(k >= 2 ? _mm256_srli_epi16(src, 4) : src, m4);
        const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m3), 4);
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), bias);
        const int s = h * 8 + 2 * k;
        put_mul2(y + h * 128 + k * 32, q, _mm256_set1_ps(dl[s]), _mm256_set1_ps(dl[s + 1]));
      }
    }
  }
}

// ---- plain float types ----

void row_f16(const uint8_t* p, float* y, int64_t n) {
  const __m128i absmask = _mm_set1_epi16(0x7fff), inf = _mm_set1_epi16(0x7c00);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128((const __m128i*)(p + 2 * i));
    // F16C quiets signalling NaNs; the reference keeps the payload as is. NaNs are rare in
    // weights, so take the scalar path for a group that has one.
    const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, absmask), inf);
    if (__builtin_expect(_mm_movemask_epi8(nan) != 0, 0)) {
      for (int j = 0; j < 8; j++) y[i + j] = fp16_to_fp32(rd16(p + 2 * (i + j)));
      continue;
    }
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; i++) y[i] = fp16_to_fp32(rd16(p + 2 * i));
}

void row_bf16(const uint8_t* p, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + 2 * i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; i++) y[i] = bf16_to_fp32(rd16(p + 2 * i));
}

}  // namespace

void dequantize_row_avx2(GGMLType t, const void* src, float* dst, int64_t n) {
  const TypeInfo ti = type_info(t);
  // Bad arguments and unsupported types: let the reference raise its usual error.
  if (!ti.supported || n < 0 || ti.block_size <= 0 || n % ti.block_size != 0)
    return dequantize_row_ref(t, src, dst, n);
  const uint8_t* p = static_cast<const uint8_t*>(src);
  const int64_t nb = n / ti.block_size;
  switch (t) {
    case GGMLType::F32: std::memcpy(dst, src, (size_t)n * sizeof(float)); return;
    case GGMLType::F16: return row_f16(p, dst, n);
    case GGMLType::BF16: return row_bf16(p, dst, n);
    case GGMLType::Q4_0: return row_q4_0(p, dst, nb);
    case GGMLType::Q4_1: return row_q4_1(p, dst, nb);
    case GGMLType::Q5_0: return row_q5_0(p, dst, nb);
    case GGMLType::Q5_1: return row_q5_1(p, dst, nb);
    case GGMLType::Q8_0: return row_q8_0(p, dst, nb);
    case GGMLType::Q2_K: return row_q2_K(p, dst, nb);
    case GGMLType::Q3_K: return row_q3_K(p, dst, nb);
    case GGMLType::Q4_K: return row_q4_K(p, dst, nb);
    case GGMLType::Q5_K: return row_q5_K(p, dst, nb);
    case GGMLType::Q6_K: return row_q6_K(p, dst, nb);
    default: return dequantize_row_ref(t, src, dst, n);
  }
}

}  // namespace eoq

#endif  // x86-64
