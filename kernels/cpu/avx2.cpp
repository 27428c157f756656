// AVX2 + FMA + F16C versions of the vector kernels (compiled with -mavx2 -mfma -mf16c; only
// called after CPUID says the CPU has them). Tested against kernels/ref/vec.cpp.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cmath>

#include "kernels/cpu/avx2.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"

namespace eoq {

// Attention over packed codes and f16 rows, in kernels/cpu/avx2_codes.cpp.
void scores_f16_avx2(const uint16_t* rows, int64_t m, int d, const float* q, int nq, float* out);
void values_f16_avx2(const uint16_t* rows, int64_t m, int d, const float* w, int nq, float* acc);
void scores_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* q, int nq, float* out);
void decode_codes_avx2(const uint8_t* codes, int64_t n, int bits, const float* table, float* out);
void values_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* w, int nq, float* acc);
float softmax_exp_avx2(float* x, int64_t n, float mx);
float max_f32_avx2(const float* x, int64_t n);
// Activation quantizers and weight × activation dot products, in kernels/cpu/avx2_dot.cpp.
void quantize_act_avx2(GGMLType act, const float* x, void* dst, int64_t n);
void vec_dot_avx2(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy);

namespace {

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float dot_f32_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

void axpy_f32_avx2(float alpha, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += alpha * x[i];
}

// axpy_f32_avx2 over the m rows in order, 64 coordinates at a time in 8 registers (the same
// fused multiply-add per element and row, so the same bits), the last d mod 8 as its tail.
void values_f32_chain_avx2(const float* v, int m, int d, const float* w, float* acc) {
  int i0 = 0;
  for (; i0 + 64 <= d; i0 += 64) {
    __m256 a[8];
    for (int k = 0; k < 8; k++) a[k] = _mm256_loadu_ps(acc + i0 + 8 * k);
    for (int j = 0; j < m; j++) {
      const __m256 wj = _mm256_set1_ps(w[j]);
      const float* r = v + (size_t)j * d + i0;
      for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(r + 8 * k), a[k]);
    }
    for (int k = 0; k < 8; k++) _mm256_storeu_ps(acc + i0 + 8 * k, a[k]);
  }
  for (; i0 + 8 <= d; i0 += 8) {
    __m256 a = _mm256_loadu_ps(acc + i0);
    for (int j = 0; j < m; j++) a = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(v + (size_t)j * d + i0), a);
    _mm256_storeu_ps(acc + i0, a);
  }
  for (int i = i0; i < d; i++)
    for (int j = 0; j < m; j++) acc[i] += w[j] * v[(size_t)j * d + i];
}

float dot_f16_f32_avx2(const uint16_t* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i))), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i + 8))), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i))), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += _cvtsh_ss(a[i]) * b[i];
  return s;
}

void axpy_f16_avx2(float alpha, const uint16_t* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + i))),
                                            _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += alpha * _cvtsh_ss(x[i]);
}

void axpy_f16_acc16_avx2(float alpha, const uint16_t* x, uint16_t* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 vy = _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + i))),
                                      _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(y + i))));
    _mm_storeu_si128((__m128i*)(y + i), _mm256_cvtps_ph(vy, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; i++) y[i] = _cvtss_sh(std::fma(alpha, _cvtsh_ss(x[i]), _cvtsh_ss(y[i])), _MM_FROUND_TO_NEAREST_INT);
}

void scale_f16_avx2(float alpha, uint16_t* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 vy = _mm256_mul_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(y + i))));
    _mm_storeu_si128((__m128i*)(y + i), _mm256_cvtps_ph(vy, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; i++) y[i] = _cvtss_sh(_cvtsh_ss(y[i]) * alpha, _MM_FROUND_TO_NEAREST_INT);
}

// exp(x) the way ggml's vectorised expf computes it (the ARM optimized-routines algorithm:
// x = n ln2 + b with n = round(x / ln2), exp(b) by a degree-5 polynomial, times 2^n), rounding
// step for step as its AVX-512 build (wide = true: the polynomial includes the 1, then an exact
// scaling by 2^n) or its AVX2 build (the 1 is added in the final fma, k + k*j) does.
constexpr float kExpShift = 0x1.8p23f, kLog2e = 0x1.715476p+0f, kLn2Hi = 0x1.62e4p-1f, kLn2Lo = 0x1.7f7d1cp-20f;
constexpr float kC5 = 0x1.0e4020p-7f, kC4 = 0x1.573e2ep-5f, kC3 = 0x1.555e66p-3f, kC2 = 0x1.fffdb6p-2f,
                kC1 = 0x1.ffffecp-1f;

inline __m256 pow2i(__m256i n) {  // 2^n for integer n in [-126, 127]
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

template <bool wide>
inline __m256 exp_ggml(__m256 x) {
  const __m256 r = _mm256_set1_ps(kExpShift);
  const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), r);
  const __m256 n = _mm256_sub_ps(z, r);
  const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x));
  const __m256 u = _mm256_mul_ps(b, b);
  const __m256 p = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kC5), b, _mm256_set1_ps(kC4)), u,
                                   _mm256_fmadd_ps(_mm256_set1_ps(kC3), b, _mm256_set1_ps(kC2)));
  const __m256 an = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
  if (wide) {
    const __m256 j = _mm256_fmadd_ps(p, u, _mm256_fmadd_ps(_mm256_set1_ps(kC1), b, _mm256_set1_ps(1.0f)));
    // j * 2^n, exactly (as scalef): in two exact halves when |n| > 126, so that only the last
    // product rounds (overflow to inf, gradual underflow).
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256 big = _mm256_cmp_ps(an, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 res = _mm256_blendv_ps(_mm256_mul_ps(j, pow2i(_mm256_min_epi32(_mm256_max_epi32(ni, _mm256_set1_epi32(-126)), _mm256_set1_epi32(127)))),
                                        _mm256_mul_ps(_mm256_mul_ps(j, pow2i(n1)), pow2i(n2)), big);
    const __m256 d = _mm256_cmp_ps(an, _mm256_set1_ps(192), _CMP_GT_OQ);
    if (!_mm256_movemask_ps(d)) return res;
    const __m256 alt = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_setzero_ps(),
                                        _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ));
    return _mm256_blendv_ps(res, alt, d);
  }
  const __m256 j = _mm256_fmadd_ps(p, u, _mm256_mul_ps(_mm256_set1_ps(kC1), b));
  const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
  const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
  const __m256 c = _mm256_cmp_ps(an, _mm256_set1_ps(126), _CMP_GT_OQ);
  if (!_mm256_movemask_ps(c)) return _mm256_fmadd_ps(k, j, k);
  // |n| > 126: 2^n split as s1 * s2 (s1 = 2^127 or 2^-127 ... as the AVX2 build does)
  const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                     _mm256_set1_epi32((int)0x82000000u));
  const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
  const __m256 d = _mm256_cmp_ps(an, _mm256_set1_ps(192), _CMP_GT_OQ);
  const __m256 mid = _mm256_blendv_ps(_mm256_fmadd_ps(k, j, k), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1), c);
  return _mm256_blendv_ps(mid, _mm256_mul_ps(s1, s1), d);
}

template <bool wide>
void swiglu_avx2_t(float* gate, const float* up, int64_t n) {
  // ggml's block width (16 for its AVX-512 build, 8 for AVX2); the tail uses the libm formula
  // there, and here.
  const int64_t W = wide ? 16 : 8;
  const int64_t nv = n / W * W;
  for (int64_t i = 0; i < nv; i += 8) {
    const __m256 x = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_ggml<wide>(_mm256_sub_ps(_mm256_setzero_ps(), x));
    const __m256 s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
  for (int64_t i = nv; i < n; i++) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void swiglu_avx2(float* gate, const float* up, int64_t n) {
  static const bool wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  if (wide) swiglu_avx2_t<true>(gate, up, n);
  else swiglu_avx2_t<false>(gate, up, n);
}

// ggml_vec_dot_f16's order. AVX-512 build (wide): steps of 64 values into 4 accumulators of 16
// lanes (each emulated here as two 8-lane halves), folded a0+a2, a1+a3, then a0+a1, then
// _mm512_reduce_add_ps's tree (halves of 8, of 4, then pairs 0+2 / 1+3, then the two). AVX2
// build: steps of 32 into 4 accumulators of 8, the same fold, then 128-bit halves and two
// horizontal adds. Leftovers after the last full step in double, as there.
inline __m256 ld16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

template <bool wide>
float dot_f16_f16_avx2_t(const uint16_t* a, const uint16_t* b, int64_t n) {
  const int64_t step = wide ? 64 : 32;
  const int64_t np = n / step * step;
  double sum = 0;
  if (np > 0) {
    __m256 acc[wide ? 8 : 4];  // wide: accumulator j = halves (acc[2j], acc[2j+1])
    for (auto& v : acc) v = _mm256_setzero_ps();
    for (int64_t i = 0; i < np; i += step)
      for (int j = 0; j < (wide ? 8 : 4); j++) acc[j] = _mm256_fmadd_ps(ld16(a + i + 8 * j), ld16(b + i + 8 * j), acc[j]);
    float r;
    if (wide) {
      const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
      const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
      const __m256 h8 = _mm256_add_ps(hi, lo);
      const __m128 h4 = _mm_add_ps(_mm256_extractf128_ps(h8, 1), _mm256_castps256_ps128(h8));
      const __m128 h2 = _mm_add_ps(h4, _mm_shuffle_ps(h4, h4, _MM_SHUFFLE(1, 0, 3, 2)));
      r = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, _MM_SHUFFLE(0, 1, 0, 1))));
    } else {
      const __m256 x = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
      const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
      const __m128 t1 = _mm_hadd_ps(t0, t0);
      r = _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
    }
    sum = r;
  }
  for (int64_t i = np; i < n; i++) sum += (double)(_cvtsh_ss(a[i]) * _cvtsh_ss(b[i]));
  return (float)sum;
}

float dot_f16_f16_avx2(const uint16_t* a, const uint16_t* b, int64_t n) {
  static const bool wide = __builtin_cpu_supports("avx512f");
  return wide ? dot_f16_f16_avx2_t<true>(a, b, n) : dot_f16_f16_avx2_t<false>(a, b, n);
}

void scores_f32t_chain_avx2(const float* kt, int d, int m, const float* q, float* out) {
  int t = 0;
  for (; t + 32 <= m; t += 32) {  // four accumulators of 8 keys
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int j = 0; j < d; j++) {
      const __m256 qj = _mm256_set1_ps(q[j]);
      const float* r = kt + (size_t)j * m + t;
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r), qj, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 8), qj, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 16), qj, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 24), qj, a3);
    }
    _mm256_storeu_ps(out + t, a0);
    _mm256_storeu_ps(out + t + 8, a1);
    _mm256_storeu_ps(out + t + 16, a2);
    _mm256_storeu_ps(out + t + 24, a3);
  }
  for (; t + 8 <= m; t += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (int j = 0; j < d; j++) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(kt + (size_t)j * m + t), _mm256_set1_ps(q[j]), a0);
    _mm256_storeu_ps(out + t, a0);
  }
  for (; t < m; t++) {
    float s = 0.0f;
    for (int j = 0; j < d; j++) s = std::fma(q[j], kt[(size_t)j * m + t], s);
    out[t] = s;
  }
}

template <bool wide>
double soft_max_ggml_t(float* x, int64_t n, float mx) {
  const int64_t W = wide ? 16 : 8;
  const int64_t nv = n / W * W;
  double sum = 0;
  const __m256 vm = _mm256_set1_ps(mx);
  for (int64_t i = 0; i < nv; i += W) {
    const __m256 lo = exp_ggml<wide>(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, lo);
    float r;
    if (wide) {  // _mm512_reduce_add_ps's tree over (lo, hi)
      const __m256 hi = exp_ggml<wide>(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
      _mm256_storeu_ps(x + i + 8, hi);
      const __m256 h8 = _mm256_add_ps(hi, lo);
      const __m128 h4 = _mm_add_ps(_mm256_extractf128_ps(h8, 1), _mm256_castps256_ps128(h8));
      const __m128 h2 = _mm_add_ps(h4, _mm_shuffle_ps(h4, h4, _MM_SHUFFLE(1, 0, 3, 2)));
      r = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, _MM_SHUFFLE(0, 1, 0, 1))));
    } else {
      __m128 v = _mm_add_ps(_mm256_extractf128_ps(lo, 1), _mm256_castps256_ps128(lo));
      v = _mm_add_ps(v, _mm_movehl_ps(v, v));
      r = _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
    }
    sum += (double)r;
  }
  for (int64_t i = nv; i < n; i++) {
    x[i] = std::exp(x[i] - mx);
    sum += (double)x[i];
  }
  return sum;
}

double soft_max_ggml_avx2(float* x, int64_t n, float mx) {
  static const bool wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return wide ? soft_max_ggml_t<true>(x, n, mx) : soft_max_ggml_t<false>(x, n, mx);
}

}  // namespace

const CpuKernels* cpu_kernels_avx2() {
  static const CpuKernels k = [] {
    CpuKernels t{};
    t.isa = "avx2";
    t.dot_f32 = dot_f32_avx2;
    t.axpy_f32 = axpy_f32_avx2;
    t.dequantize_row = dequantize_row_avx2;
    t.dot_f16_f32 = dot_f16_f32_avx2;
    t.axpy_f16 = axpy_f16_avx2;
    t.scores_f16 = scores_f16_avx2;
    t.values_f16 = values_f16_avx2;
    t.scores_codes = scores_codes_avx2;
    t.values_codes = values_codes_avx2;
    t.softmax_exp = softmax_exp_avx2;
    t.max_f32 = max_f32_avx2;
    t.quantize_act = quantize_act_avx2;
    t.vec_dot = vec_dot_avx2;
    t.axpy_f16_acc16 = axpy_f16_acc16_avx2;
    t.scale_f16 = scale_f16_avx2;
    t.swiglu = swiglu_avx2;
    t.dot_f16_f16 = dot_f16_f16_avx2;
    t.scores_f32t_chain = scores_f32t_chain_avx2;
    t.soft_max_ggml = soft_max_ggml_avx2;
    t.decode_codes = decode_codes_avx2;
    t.decode_log_norms = cpu_kernels_scalar().decode_log_norms;  // exact integer bits; a block's norms are a few hundred bytes
    t.scores_codes_q8 = scores_codes_avx2;
    t.values_f32_chain = values_f32_chain_avx2;
    t.rms_norm = cpu_kernels_scalar().rms_norm;  // the double sum: same bits
    t.rope_adjacent = cpu_kernels_scalar().rope_adjacent;  // ggml's serial theta recurrence
    return t;
  }();
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok ? &k : nullptr;
}

}  // namespace eoq
#else
#include "kernels/kernels.h"
namespace eoq {
const CpuKernels* cpu_kernels_avx2() { return nullptr; }
}  // namespace eoq
#endif
