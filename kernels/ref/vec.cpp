// Scalar reference vector kernels. Loops keep several independent accumulators so that the
// baseline (SSE2) compiler output still vectorises without -ffast-math.
#include "base/fp16.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "kernels/quant_dot.h"
#include "kernels/quants.h"
#include "kernels/turboquant.h"

#include <cmath>
#include <vector>

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

// Attention over m cached rows for nq query vectors (kernels.h). Plain loops, one row at a time:
// the reference the SIMD versions are tested against.
void scores_f16_scalar(const uint16_t* rows, int64_t m, int d, const float* q, int nq, float* out) {
  for (int64_t t = 0; t < m; t++)
    for (int h = 0; h < nq; h++) out[h * m + t] = dot_f16_f32_scalar(rows + t * d, q + (size_t)h * d, d);
}

void values_f16_scalar(const uint16_t* rows, int64_t m, int d, const float* w, int nq, float* acc) {
  for (int64_t t = 0; t < m; t++)
    for (int h = 0; h < nq; h++) axpy_f16_scalar(w[h * m + t], rows + t * d, acc + (size_t)h * d, d);
}

void decode_log_norms_scalar(const uint8_t* codes, int64_t m, int shift, uint16_t* out) {
  for (int64_t t = 0; t < m; t++) out[t] = log_norm_f16(codes[t], shift);
}

void scores_codes_scalar(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* q, int nq, float* out) {
  const size_t rb = packed_bytes(d, bits);
  std::vector<uint8_t> c(d);
  for (int64_t t = 0; t < m; t++) {
    unpack_bits(codes + t * rb, d, bits, c.data());
    for (int h = 0; h < nq; h++) {
      const float* qh = q + (size_t)h * d;
      float s = 0;
      for (int j = 0; j < d; j++) s += qh[j] * centroids[c[j]];
      out[h * m + t] = s * (scale * fp16_to_fp32(norms[t]));
    }
  }
}

void values_codes_scalar(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* w, int nq, float* acc) {
  const size_t rb = packed_bytes(d, bits);
  std::vector<uint8_t> c(d);
  for (int64_t t = 0; t < m; t++) {
    unpack_bits(codes + t * rb, d, bits, c.data());
    for (int h = 0; h < nq; h++) {
      const float wt = w[h * m + t] * (scale * fp16_to_fp32(norms[t]));
      float* a = acc + (size_t)h * d;
      for (int j = 0; j < d; j++) a[j] += wt * centroids[c[j]];
    }
  }
}

float softmax_exp_scalar(float* x, int64_t n, float mx) {
  float s = 0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - mx);
    s += x[i];
  }
  return s;
}

void axpy_f16_acc16_scalar(float alpha, const uint16_t* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(std::fma(alpha, fp16_to_fp32(x[i]), fp16_to_fp32(y[i])));
}

void scale_f16_scalar(float alpha, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(fp16_to_fp32(y[i]) * alpha);
}

void swiglu_scalar(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

float dot_f16_f16_scalar(const uint16_t* a, const uint16_t* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)(fp16_to_fp32(a[i]) * fp16_to_fp32(b[i]));
  return (float)s;
}

void scores_f32t_chain_scalar(const float* kt, int d, int m, const float* q, float* out) {
  for (int t = 0; t < m; t++) out[t] = 0.0f;
  for (int j = 0; j < d; j++)
    for (int t = 0; t < m; t++) out[t] = std::fma(q[j], kt[(size_t)j * m + t], out[t]);
}

void values_f32_chain_scalar(const float* v, int m, int d, const float* w, float* acc) {
  for (int j = 0; j < m; j++) axpy_f32_scalar(w[j], v + (size_t)j * d, acc, d);
}

double soft_max_ggml_scalar(float* x, int64_t n, float mx) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - mx);
    s += x[i];
  }
  return s;
}

float max_f32_scalar(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

void decode_codes_scalar(const uint8_t* codes, int64_t n, int bits, const float* table, float* out) {
  for (int64_t j = 0; j < n; j++) out[j] = table[get_bits(codes, j, bits)];
}

}  // namespace

const CpuKernels& cpu_kernels_scalar() {
  static const CpuKernels k = [] {
    CpuKernels t{};
    t.isa = "scalar";
    t.dot_f32 = dot_f32_scalar;
    t.axpy_f32 = axpy_f32_scalar;
    t.dequantize_row = dequantize_row_ref;
    t.dot_f16_f32 = dot_f16_f32_scalar;
    t.axpy_f16 = axpy_f16_scalar;
    t.scores_f16 = scores_f16_scalar;
    t.values_f16 = values_f16_scalar;
    t.scores_codes = scores_codes_scalar;
    t.values_codes = values_codes_scalar;
    t.softmax_exp = softmax_exp_scalar;
    t.max_f32 = max_f32_scalar;
    t.quantize_act = quantize_act_ref;
    t.vec_dot = vec_dot_ref_rows;
    t.axpy_f16_acc16 = axpy_f16_acc16_scalar;
    t.scale_f16 = scale_f16_scalar;
    t.swiglu = swiglu_scalar;
    t.dot_f16_f16 = dot_f16_f16_scalar;
    t.scores_f32t_chain = scores_f32t_chain_scalar;
    t.soft_max_ggml = soft_max_ggml_scalar;
    t.decode_codes = decode_codes_scalar;
    t.decode_log_norms = decode_log_norms_scalar;
    t.scores_codes_q8 = scores_codes_scalar;
    t.values_f32_chain = values_f32_chain_scalar;
    t.rms_norm = rms_norm;
    t.rope_adjacent = rope_adjacent;
    return t;
  }();
  return k;
}

}  // namespace eoq
