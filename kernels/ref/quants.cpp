// Scalar reference kernels for the weight formats: the executable spec that the SIMD kernels
// in kernels/cpu/ are tested against. Clarity over speed.
//
// Block layouts are GGML's, byte for byte (sizes match kernels/ref/ggml_type.cpp). All
// multi-byte fields are little-endian; scales are IEEE half (fp16) bit patterns. Blocks are
// copied out with memcpy before use, so a row may start at any address.
//
// Arithmetic order matches GGML's reference dequantizers (e.g. (d * sc) * q - (dmin * m)),
// so results are bit-identical to it (and to the gguf Python package) on IEEE float32
// without FMA contraction.
#include <cmath>
#include <cstring>
#include <string>

#include "base/error.h"
#include "base/fp16.h"
#include "kernels/quants.h"
#include "kernels/quant_blocks.h"

namespace eoq {

namespace {

// Block layouts (GGML's, byte for byte): kernels/quant_blocks.h, shared with the CUDA kernels.

template <typename B>
B load_block(const void* src, int64_t i) {
  B b;
  std::memcpy(&b, static_cast<const uint8_t*>(src) + i * (int64_t)sizeof(B), sizeof(B));
  return b;
}

void dq_q4_0(const block_q4_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < QK / 2; j++) {
    y[j] = d * (float)((b.qs[j] & 0x0f) - 8);
    y[j + QK / 2] = d * (float)((b.qs[j] >> 4) - 8);
  }
}

void dq_q4_1(const block_q4_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  for (int j = 0; j < QK / 2; j++) {
    y[j] = d * (float)(b.qs[j] & 0x0f) + m;
    y[j + QK / 2] = d * (float)(b.qs[j] >> 4) + m;
  }
}

uint32_t le32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void dq_q5_0(const block_q5_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint32_t qh = le32(b.qh);
  for (int j = 0; j < QK / 2; j++) {
    const int lo = (b.qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
    const int hi = (b.qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
    y[j] = d * (float)(lo - 16);
    y[j + QK / 2] = d * (float)(hi - 16);
  }
}

void dq_q5_1(const block_q5_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  const uint32_t qh = le32(b.qh);
  for (int j = 0; j < QK / 2; j++) {
    const int lo = (b.qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
    const int hi = (b.qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
    y[j] = d * (float)lo + m;
    y[j + QK / 2] = d * (float)hi + m;
  }
}

void dq_q8_0(const block_q8_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < QK; j++) y[j] = d * (float)b.qs[j];
}

void dq_q2_K(const block_q2_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int i = 0; i < QK_K; i++) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    const int q = (b.qs[h * 32 + l] >> (2 * k)) & 3;
    const uint8_t sc = b.scales[i / 16];
    const float dl = d * (float)(sc & 0x0f), ml = dmin * (float)(sc >> 4);
    y[i] = dl * (float)q - ml;
  }
}

void dq_q3_K(const block_q3_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  int scale[16];
  for (int s = 0; s < 16; s++) {
    const int lo = (b.scales[s % 8] >> (4 * (s / 8))) & 0x0f;
    const int hi = (b.scales[8 + s % 4] >> (2 * (s / 4))) & 0x03;
    scale[s] = (lo | hi << 4) - 32;
  }
  for (int i = 0; i < QK_K; i++) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    const int low = (b.qs[h * 32 + l] >> (2 * k)) & 3;
    const int high = (b.hmask[l] >> (i / 32)) & 1;
    const float dl = d * (float)scale[i / 16];
    y[i] = dl * (float)(low - (high ? 0 : 4));
  }
}

// The 12-byte scale block of Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins.
// j < 4: sc = bytes[j] & 63, m = bytes[j+4] & 63.
// j >= 4: the low 4 bits come from bytes[j+4] (sc: low nibble, m: high nibble) and the top
// 2 bits from the otherwise unused top bits of bytes[j-4] (sc) and bytes[j] (m).
void scale_min_k4(const uint8_t* q, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void dq_q4_K(const block_q4_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    scale_min_k4(b.scales, j, &sc, &m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    const int g = j / 2, shift = 4 * (j % 2);
    for (int l = 0; l < 32; l++) y[j * 32 + l] = d1 * (float)((b.qs[g * 32 + l] >> shift) & 0x0f) - m1;
  }
}

void dq_q5_K(const block_q5_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    scale_min_k4(b.scales, j, &sc, &m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    const int g = j / 2, shift = 4 * (j % 2);
    for (int l = 0; l < 32; l++) {
      const int q = ((b.qs[g * 32 + l] >> shift) & 0x0f) | ((b.qh[l] >> j) & 1) << 4;
      y[j * 32 + l] = d1 * (float)q - m1;
    }
  }
}

void dq_q6_K(const block_q6_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < QK_K; i++) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    const int lo = (b.ql[h * 64 + (k % 2) * 32 + l] >> (4 * (k / 2))) & 0x0f;
    const int hi = (b.qh[h * 32 + l] >> (2 * k)) & 3;
    const float dl = d * (float)b.scales[i / 16];
    y[i] = dl * (float)((lo | hi << 4) - 32);
  }
}

template <typename B, int N, void (*F)(const B&, float*)>
void dq_row(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / N; i++) F(load_block<B>(src, i), dst + i * N);
}

// Validates (t, n) for the row kernels; returns the type's geometry.
TypeInfo check_row(GGMLType t, int64_t n, const char* fn) {
  const TypeInfo ti = type_info(t);
  if (!ti.supported)
    fail(ErrorCode::unsupported, std::string(fn) + ": type " + (ti.name ? ti.name : "unknown") + " (" +
                                     std::to_string((uint32_t)t) + ") is not supported");
  if (n < 0 || n % ti.block_size != 0)
    fail(ErrorCode::invalid_arg, std::string(fn) + ": n = " + std::to_string(n) +
                                     " is not a non-negative multiple of the " + ti.name +
                                     " block size " + std::to_string(ti.block_size));
  return ti;
}

}  // namespace

void dequantize_row_ref(GGMLType t, const void* src, float* dst, int64_t n) {
  check_row(t, n, "dequantize_row_ref");
  switch (t) {
    case GGMLType::F32:
      std::memcpy(dst, src, (size_t)n * sizeof(float));
      return;
    case GGMLType::F16: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
      }
      return;
    }
    case GGMLType::BF16: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_fp32(h);
      }
      return;
    }
    case GGMLType::Q4_0: return dq_row<block_q4_0, QK, dq_q4_0>(src, dst, n);
    case GGMLType::Q4_1: return dq_row<block_q4_1, QK, dq_q4_1>(src, dst, n);
    case GGMLType::Q5_0: return dq_row<block_q5_0, QK, dq_q5_0>(src, dst, n);
    case GGMLType::Q5_1: return dq_row<block_q5_1, QK, dq_q5_1>(src, dst, n);
    case GGMLType::Q8_0: return dq_row<block_q8_0, QK, dq_q8_0>(src, dst, n);
    case GGMLType::Q2_K: return dq_row<block_q2_K, QK_K, dq_q2_K>(src, dst, n);
    case GGMLType::Q3_K: return dq_row<block_q3_K, QK_K, dq_q3_K>(src, dst, n);
    case GGMLType::Q4_K: return dq_row<block_q4_K, QK_K, dq_q4_K>(src, dst, n);
    case GGMLType::Q5_K: return dq_row<block_q5_K, QK_K, dq_q5_K>(src, dst, n);
    case GGMLType::Q6_K: return dq_row<block_q6_K, QK_K, dq_q6_K>(src, dst, n);
    default: break;
  }
  // type_info() says supported but no kernel here: a table/kernel mismatch.
  fail(ErrorCode::internal, std::string("dequantize_row_ref: no kernel for ") + type_name(t));
}

// Dequantizes one block (or 256 values of a plain float type) at a time and accumulates
// the exact float*float products in double, within and across blocks; the result is the
// double sum rounded once to float. SIMD kernels (float accumulation) are compared against
// it with a tolerance.
float vec_dot_ref(GGMLType t, const void* row, const float* x, int64_t n) {
  const TypeInfo ti = check_row(t, n, "vec_dot_ref");
  const int64_t chunk = ti.block_size == 1 ? QK_K : ti.block_size;  // <= QK_K
  float tmp[QK_K];
  double sum = 0.0;
  const uint8_t* p = static_cast<const uint8_t*>(row);
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = n - i < chunk ? n - i : chunk;
    dequantize_row_ref(t, p + row_size(t, i), tmp, m);
    for (int64_t j = 0; j < m; j++) sum += (double)tmp[j] * (double)x[i + j];
  }
  return (float)sum;
}

void quantize_row_q8_0_ref(const float* x, void* dst, int64_t n) {
  if (n < 0 || n % QK != 0)
    fail(ErrorCode::invalid_arg, "quantize_row_q8_0_ref: n = " + std::to_string(n) +
                                     " is not a non-negative multiple of 32");
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n / QK; i++) {
    const float* xb = x + i * QK;
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    block_q8_0 b;
    b.d = fp32_to_fp16(d);
    for (int j = 0; j < QK; j++) {
      float v = std::round(xb[j] * id);  // half away from zero, like roundf
      if (!(v == v)) v = 0.0f;           // NaN input: avoid an undefined conversion
      v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
      b.qs[j] = (int8_t)v;
    }
    std::memcpy(out + i * (int64_t)sizeof(block_q8_0), &b, sizeof b);
  }
}

}  // namespace eoq
