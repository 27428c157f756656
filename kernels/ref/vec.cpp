// Scalar reference vector kernels. Loops keep several independent accumulators so that the
// baseline (SSE2) compiler output still vectorises without -ffast-math.
#include "kernels/fp16.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"

namespace eoq {

namespace {

float dot_f32_scalar(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
  for (; i < n; i++) s[0] += a[i] * b[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

void axpy_f32_scalar(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

float dot_f16_f32_scalar(const uint16_t* a, const float* b, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; j++) s[j] += fp16_to_fp32(a[i + j]) * b[i + j];
  for (; i < n; i++) s[0] += fp16_to_fp32(a[i]) * b[i];
  return (s[0] + s[2]) + (s[1] + s[3]);
}

void axpy_f16_scalar(float alpha, const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += alpha * fp16_to_fp32(x[i]);
}

}  // namespace

const CpuKernels& cpu_kernels_scalar() {
  static const CpuKernels k = {"scalar", dot_f32_scalar, axpy_f32_scalar, dequantize_row_ref,
                               dot_f16_f32_scalar, axpy_f16_scalar};
  return k;
}

}  // namespace eoq
