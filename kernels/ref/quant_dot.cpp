// Scalar references for the activation formats and the weight × activation dot products
// (kernels/quant_dot.h): the spec the SIMD versions are tested against, written for clarity.
//
// Why these quantizer formulas: llama.cpp's CPU backend converts activations with its x86 SIMD
// quantizers for Q8_0/Q8_1 (scale 127/amax, round half to even) and with its plain reference for
// Q8_K (iscale = -127/max, round half to even). We compute exactly that on every ISA, so the
// scalar table, the SIMD tables and llama.cpp on x86 all produce the same activation bytes. (GGML's
// generic C reference for Q8_0/Q8_1 differs only at rounding boundaries: it multiplies by 1/d and
// rounds halves away from zero.)
//
// Weight layouts are GGML's; kernels/ref/quants.cpp documents each block field by field. Here
// each weight row is first unpacked to its integer quants and float scale factors (IntRow), so
// the dot products below read like the formulas in quant_dot.h.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fp16.h"
#include "kernels/quant_dot.h"

namespace eoq {

namespace {


uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
float h2f(const uint8_t* p) { return fp16_to_fp32(rd16(p)); }
uint32_t rd32le(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// round(v) with halves to even, as a small integer; NaN and values beyond [-128, 127] saturate
// (NaN to -128, matching the x86 float->int conversion the SIMD versions use).
int round_even_sat(float v) {
  const float r = std::nearbyint(v);  // default rounding mode: to nearest, ties to even
  if (!(r >= -128.0f)) return -128;
  return r > 127.0f ? 127 : (int)r;
}

// bfloat16 of x, round to nearest even; NaN stays NaN (made quiet).
uint16_t fp32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

// Q8_0 blocks, or Q8_1 blocks (q8_1: with the sum field s).
void quantize_q8_0(const float* x, uint8_t* out, int64_t nb, bool q8_1) {
  for (int64_t i = 0; i < nb; i++) {
    const float* xb = x + i * QK;
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int8_t q[QK];
    int sum = 0;
    for (int j = 0; j < QK; j++) {
      q[j] = (int8_t)round_even_sat(xb[j] * id);
      sum += q[j];
    }
    if (q8_1) {
      block_q8_1 b;
      b.d = fp32_to_fp16(d);
      b.s = fp32_to_fp16(d * (float)sum);
      std::memcpy(b.qs, q, QK);
      std::memcpy(out + i * sizeof b, &b, sizeof b);
    } else {
      block_q8_0 b;
      b.d = fp32_to_fp16(d);
      std::memcpy(b.qs, q, QK);
      std::memcpy(out + i * sizeof b, &b, sizeof b);
    }
  }
}

void quantize_q8_K(const float* x, uint8_t* out, int64_t nb) {
  for (int64_t i = 0; i < nb; i++) {
    const float* xb = x + i * QK_K;
    float amax = 0.0f, m = 0.0f;  // m: the first element of largest magnitude
    for (int j = 0; j < QK_K; j++) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        m = xb[j];
      }
    }
    block_q8_K b;
    std::memset(&b, 0, sizeof b);
    if (amax != 0.0f) {
      const float iscale = -127.0f / m;
      for (int j = 0; j < QK_K; j++) b.qs[j] = (int8_t)round_even_sat(iscale * xb[j]);
      for (int g = 0; g < QK_K / 16; g++) {
        int s = 0;
        for (int l = 0; l < 16; l++) s += b.qs[16 * g + l];
        b.bsums[g] = (int16_t)s;
      }
      b.d = 1.0f / iscale;
    }
    std::memcpy(out + i * sizeof b, &b, sizeof b);
  }
}

// ---- weight rows in integer form ----

// One weight row unpacked: q[i] is the integer quant of value i, so that
//   legacy types (blocks of 32):     x_i = d[b] * q_i + m[b]              (m = 0 for Q4_0/Q5_0/Q8_0)
//   K-quants (super-blocks of 256):  x_i = d[b] * sc[s] * q_i - dmin[b] * mn[s]
// with b = i / block, s = i / sub (sub-blocks of `sub` values; mn = 0 for Q3_K and Q6_K).
struct IntRow {
  std::vector<int8_t> q;
  std::vector<float> d, m;    // per block
  std::vector<int> sc, mn;    // per sub-block (K-quants)
  int sub = 0;                // values per sub-block (K-quants)
  bool has_min = false;       // Q4_1, Q5_1, Q2_K, Q4_K, Q5_K
};

// One legacy block at p -> its 32 quants (Q4_0/Q5_0 with the offset subtracted), d and m.
// The fifth bit of value j (Q5_0/Q5_1) is bit j of the little-endian u32 qh.
void unpack_legacy(GGMLType t, const uint8_t* p, int8_t* q, float* d, float* m) {
  *d = h2f(p);
  *m = 0.0f;
  switch (t) {
    case GGMLType::Q4_0:  // d, qs[16]: value j in the low nibble of qs[j], j+16 in its high nibble
      for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((p[2 + j] & 0x0f) - 8);
        q[j + 16] = (int8_t)((p[2 + j] >> 4) - 8);
      }
      return;
    case GGMLType::Q4_1:  // d, m, qs[16]
      *m = h2f(p + 2);
      for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(p[4 + j] & 0x0f);
        q[j + 16] = (int8_t)(p[4 + j] >> 4);
      }
      return;
    case GGMLType::Q5_0: {  // d, qh[4], qs[16]
      const uint32_t qh = rd32le(p + 2);
      for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(((p[6 + j] & 0x0f) | ((qh >> j) & 1) << 4) - 16);
        q[j + 16] = (int8_t)(((p[6 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16);
      }
      return;
    }
    case GGMLType::Q5_1: {  // d, m, qh[4], qs[16]
      *m = h2f(p + 2);
      const uint32_t qh = rd32le(p + 4);
      for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((p[8 + j] & 0x0f) | ((qh >> j) & 1) << 4);
        q[j + 16] = (int8_t)((p[8 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
      }
      return;
    }
    case GGMLType::Q8_0:  // d, qs[32]
      std::memcpy(q, p + 2, 32);
      return;
    default: break;
  }
  fail(ErrorCode::internal, std::string("unpack_legacy: ") + type_name(t));
}

// The eight 6-bit (scale, min) pairs of Q4_K/Q5_K packed in 12 bytes: j < 4 sit in the low 6 bits
// of bytes j (scale) and j+4 (min); j >= 4 take their low 4 bits from byte j+4 (scale: low nibble,
// min: high nibble) and their top 2 bits from the top bits of bytes j-4 (scale) and j (min).
void scales_k4(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | (s[j - 4] >> 6) << 4;
    *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
  }
}

// One K-quant super-block at p -> q[256], sc/mn of its sub-blocks, d and dmin.
void unpack_k(GGMLType t, const uint8_t* p, int8_t* q, int* sc, int* mn, float* d, float* dmin) {
  *dmin = 0.0f;
  switch (t) {
    case GGMLType::Q2_K: {  // scales[16] (lo nibble scale, hi nibble min), qs[64], d, dmin
      *d = h2f(p + 80);
      *dmin = h2f(p + 82);
      for (int s = 0; s < 16; s++) {
        sc[s] = p[s] & 0x0f;
        mn[s] = p[s] >> 4;
      }
      // value h*128 + k*32 + l is bits 2k..2k+1 of qs[h*32 + l]
      for (int i = 0; i < QK_K; i++) q[i] = (int8_t)((p[16 + (i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3);
      return;
    }
    case GGMLType::Q3_K: {  // hmask[32], qs[64], scales[12], d
      *d = h2f(p + 108);
      const uint8_t* s = p + 96;
      for (int j = 0; j < 16; j++) {
        const int lo = (s[j % 8] >> (4 * (j / 8))) & 0x0f, hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | hi << 4) - 32;
        mn[j] = 0;
      }
      // low 2 bits as Q2_K; a clear bit i/32 of hmask[i%32] subtracts 4
      for (int i = 0; i < QK_K; i++) {
        const int low = (p[32 + (i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
        q[i] = (int8_t)(low - (((p[i % 32] >> (i / 32)) & 1) ? 0 : 4));
      }
      return;
    }
    case GGMLType::Q4_K:    // d, dmin, scales[12], qs[128]
    case GGMLType::Q5_K: {  // d, dmin, scales[12], qh[32], qs[128]
      const bool five = t == GGMLType::Q5_K;
      *d = h2f(p);
      *dmin = h2f(p + 2);
      for (int j = 0; j < 8; j++) scales_k4(p + 4, j, &sc[j], &mn[j]);
      const uint8_t* qs = p + (five ? 48 : 16);
      // sub-blocks 2g and 2g+1 are the low and high nibbles of qs[32g .. 32g+32); Q5_K's fifth
      // bit of value l of sub-block j is bit j of qh[l]
      for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) {
          int v = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
          if (five) v |= ((p[16 + l] >> j) & 1) << 4;
          q[32 * j + l] = (int8_t)v;
        }
      return;
    }
    case GGMLType::Q6_K: {  // ql[128], qh[64], scales[16] (int8), d
      *d = h2f(p + 208);
      for (int s = 0; s < 16; s++) {
        sc[s] = (int8_t)p[192 + s];
        mn[s] = 0;
      }
      // value h*128 + k*32 + l: low nibble of ql[h*64 + (k%2)*32 + l] (high nibble for k >= 2),
      // top 2 bits = bits 2k..2k+1 of qh[h*32 + l]; q = that 6-bit value - 32
      for (int i = 0; i < QK_K; i++) {
        const int h = i / 128, k = (i % 128) / 32, l = i % 32;
        const int lo = (p[h * 64 + (k % 2) * 32 + l] >> (4 * (k / 2))) & 0x0f;
        const int hi = (p[128 + h * 32 + l] >> (2 * k)) & 3;
        q[i] = (int8_t)((lo | hi << 4) - 32);
      }
      return;
    }
    default: break;
  }
  fail(ErrorCode::internal, std::string("unpack_k: ") + type_name(t));
}

bool is_k_quant(GGMLType t) {
  return t == GGMLType::Q2_K || t == GGMLType::Q3_K || t == GGMLType::Q4_K || t == GGMLType::Q5_K ||
         t == GGMLType::Q6_K;
}

void unpack_row(GGMLType t, const uint8_t* p, int64_t n, IntRow* r) {
  const TypeInfo ti = type_info(t);
  const int64_t nb = n / ti.block_size;
  r->q.resize((size_t)n);
  r->d.resize((size_t)nb);
  r->m.resize((size_t)nb);
  r->has_min = t == GGMLType::Q4_1 || t == GGMLType::Q5_1 || t == GGMLType::Q2_K || t == GGMLType::Q4_K ||
               t == GGMLType::Q5_K;
  if (is_k_quant(t)) {
    r->sub = (t == GGMLType::Q4_K || t == GGMLType::Q5_K) ? 32 : 16;
    const int ns = QK_K / r->sub;
    r->sc.resize((size_t)(nb * ns));
    r->mn.resize((size_t)(nb * ns));
    for (int64_t b = 0; b < nb; b++)
      unpack_k(t, p + b * ti.type_size, &r->q[b * QK_K], &r->sc[b * ns], &r->mn[b * ns], &r->d[b], &r->m[b]);
  } else {
    for (int64_t b = 0; b < nb; b++) unpack_legacy(t, p + b * ti.type_size, &r->q[b * QK], &r->d[b], &r->m[b]);
  }
}

int dot_i8(const int8_t* a, const int8_t* b, int n) {
  int s = 0;
  for (int i = 0; i < n; i++) s += (int)a[i] * (int)b[i];
  return s;
}

// Legacy weights · Q8_0 or Q8_1: Σ_b (d_w d_a) isum_b, plus Σ_b m_w s_a for Q8_1 (Q4_1/Q5_1).
float dot_legacy(const IntRow& w, int64_t nb, const uint8_t* a, bool q8_1) {
  float main = 0.0f, mins = 0.0f;
  const size_t bs = q8_1 ? sizeof(block_q8_1) : sizeof(block_q8_0);
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* ab = a + b * bs;
    const int8_t* qa = (const int8_t*)(ab + (q8_1 ? 4 : 2));
    const int isum = dot_i8(&w.q[b * QK], qa, QK);
    main += (w.d[b] * h2f(ab)) * (float)isum;
    if (q8_1) mins += w.m[b] * h2f(ab + 2);
  }
  return main + mins;
}

// K-quant weights · Q8_K: per super-block d_a (d_w S - dmin_w M), S = Σ_s sc_s Σ q_w q_a,
// M = Σ_s mn_s Σ q_a (the activation sums come from bsums).
float dot_k(const IntRow& w, int64_t nb, const uint8_t* a) {
  const int ns = QK_K / w.sub;
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    block_q8_K ab;
    std::memcpy(&ab, a + b * sizeof ab, sizeof ab);
    int S = 0, M = 0;
    for (int s = 0; s < ns; s++) {
      S += w.sc[b * ns + s] * dot_i8(&w.q[b * QK_K + s * w.sub], ab.qs + s * w.sub, w.sub);
      int asum = 0;
      for (int g = s * w.sub / 16; g < (s + 1) * w.sub / 16; g++) asum += ab.bsums[g];
      M += w.mn[b * ns + s] * asum;
    }
    sum += (ab.d * w.d[b]) * (float)S;
    if (w.has_min) sum -= (ab.d * w.m[b]) * (float)M;
  }
  return sum;
}

// Plain float rows (F32 · F32, F16 · F16, BF16 · BF16) with 8 float accumulators, as the
// scalar dot_f32 does (the products of F16/BF16 values are exact in float32).
template <typename Load>
float dot_float(int64_t n, Load wv, Load av) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) s[j] += wv(i + j) * av(i + j);
  for (; i < n; i++) s[0] += wv(i) * av(i);
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

float dot_plain(GGMLType t, int64_t n, const uint8_t* w, const uint8_t* a) {
  switch (t) {
    case GGMLType::F32: {
      auto f = [](const uint8_t* p) {
        return [p](int64_t i) {
          float v;
          std::memcpy(&v, p + 4 * i, 4);
          return v;
        };
      };
      return dot_float(n, f(w), f(a));
    }
    case GGMLType::F16: {
      auto f = [](const uint8_t* p) { return [p](int64_t i) { return fp16_to_fp32(rd16(p + 2 * i)); }; };
      return dot_float(n, f(w), f(a));
    }
    case GGMLType::BF16: {
      auto f = [](const uint8_t* p) { return [p](int64_t i) { return bf16_to_fp32(rd16(p + 2 * i)); }; };
      return dot_float(n, f(w), f(a));
    }
    default: break;
  }
  fail(ErrorCode::internal, std::string("dot_plain: ") + type_name(t));
}

void check_n(GGMLType t, int64_t n, const char* fn) {
  const TypeInfo ti = type_info(t);
  if (n < 0 || ti.block_size <= 0 || n % ti.block_size != 0)
    fail(ErrorCode::invalid_arg, std::string(fn) + ": n = " + std::to_string(n) + " is not a multiple of the " +
                                     type_name(t) + " block size");
}

}  // namespace

GGMLType vec_dot_type(GGMLType w) {
  switch (w) {
    case GGMLType::F32: return GGMLType::F32;
    case GGMLType::F16: return GGMLType::F16;
    case GGMLType::BF16: return GGMLType::BF16;
    case GGMLType::Q4_0:
    case GGMLType::Q5_0:
    case GGMLType::Q8_0: return GGMLType::Q8_0;
    case GGMLType::Q4_1:
    case GGMLType::Q5_1: return GGMLType::Q8_1;
    case GGMLType::Q2_K:
    case GGMLType::Q3_K:
    case GGMLType::Q4_K:
    case GGMLType::Q5_K:
    case GGMLType::Q6_K: return GGMLType::Q8_K;
    default: break;
  }
  fail(ErrorCode::unsupported, std::string("no dot product for weight type ") + type_name(w));
}

size_t act_row_bytes(GGMLType act, int64_t n) {
  switch (act) {
    case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16:
    case GGMLType::Q8_0: case GGMLType::Q8_1: case GGMLType::Q8_K:
      check_n(act, n, "act_row_bytes");
      return row_size(act, n);
    default: break;
  }
  fail(ErrorCode::invalid_arg, std::string(type_name(act)) + " is not an activation format");
}

void quantize_act_ref(GGMLType act, const float* x, void* dst, int64_t n) {
  act_row_bytes(act, n);  // validates
  uint8_t* out = static_cast<uint8_t*>(dst);
  switch (act) {
    case GGMLType::F32: std::memcpy(out, x, (size_t)n * sizeof(float)); return;
    case GGMLType::F16:
      for (int64_t i = 0; i < n; i++) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    case GGMLType::BF16:
      for (int64_t i = 0; i < n; i++) {
        const uint16_t h = fp32_to_bf16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    case GGMLType::Q8_0: return quantize_q8_0(x, out, n / QK, false);
    case GGMLType::Q8_1: return quantize_q8_0(x, out, n / QK, true);
    case GGMLType::Q8_K: return quantize_q8_K(x, out, n / QK_K);
    default: break;
  }
}

void vec_dot_ref_rows(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                      size_t a_stride, int nt, float* y, int64_t ldy) {
  const GGMLType act = vec_dot_type(w);
  check_n(w, n, "vec_dot");
  const uint8_t* wp = static_cast<const uint8_t*>(w_rows);
  const uint8_t* ap = static_cast<const uint8_t*>(a_rows);
  const int64_t nb = n / type_info(w).block_size;
  if (act == GGMLType::F32 || act == GGMLType::F16 || act == GGMLType::BF16) {
    for (int r = 0; r < nr; r++)
      for (int t = 0; t < nt; t++) y[t * ldy + r] = dot_plain(w, n, wp + r * w_stride, ap + t * a_stride);
    return;
  }
  IntRow row;
  for (int r = 0; r < nr; r++) {
    unpack_row(w, wp + r * w_stride, n, &row);
    for (int t = 0; t < nt; t++) {
      const uint8_t* a = ap + t * a_stride;
      y[t * ldy + r] = act == GGMLType::Q8_K ? dot_k(row, nb, a) : dot_legacy(row, nb, a, act == GGMLType::Q8_1);
    }
  }
}

}  // namespace eoq
