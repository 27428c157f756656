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
void scores_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids, const float* q,
                       int nq, float* out);
void values_codes_avx2(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids, const float* w,
                       int nq, float* acc);
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

}  // namespace

const CpuKernels* cpu_kernels_avx2() {
  static const CpuKernels k = {"avx2", dot_f32_avx2, axpy_f32_avx2, dequantize_row_avx2,
                               dot_f16_f32_avx2, axpy_f16_avx2, scores_f16_avx2, values_f16_avx2,
                               scores_codes_avx2, values_codes_avx2, softmax_exp_avx2,
                               max_f32_avx2, quantize_act_avx2, vec_dot_avx2,
                               axpy_f16_acc16_avx2, scale_f16_avx2};
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
