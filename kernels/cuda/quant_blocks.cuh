// Device helpers for GGUF weight rows (kernels/quant_blocks.h layouts), shared by matvec.cu and
// dequantize.cu:
//  * f16 / bf16 bits <-> float;
//  * byte-level loads, and "window" loaders that read N consecutive 32-bit words from a pointer
//    that is only 2-byte aligned (blocks of 18, 22, 34, 110 or 210 bytes sit at 2-byte offsets);
//  * per format, one 32-value unit (a legacy block, or 1/8 of a K-quant super-block) unpacked to
//    integer form: 8 words of packed byte quants plus its integer and float scales, from which
//    both the float dequantization (dequantize.cu) and the integer dp4a dots (matvec.cu) are
//    computed, so each bit layout is written once;
//  * staging a byte range of global memory into shared memory with 16-byte cp.async copies.
//
// Everything per-thread is __host__ __device__ with plain C++ fallbacks, so the bit twiddling can
// be checked on a machine without a GPU.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "base/fp16.h"
#include "base/ggml_type.h"
#include "kernels/quant_blocks.h"

#define EOQ_HD __host__ __device__ __forceinline__

namespace eoq::cuda {

// ---- scalar conversions ---------------------------------------------------------------------

// The host fallbacks are the CPU's (base/fp16.h): the same bits on both sides.
EOQ_HD float f16_to_f32(uint16_t h) {
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  return fp16_to_fp32(h);
#endif
}

// float -> f16 bits, round to nearest even (overflow to inf, NaN stays NaN).
EOQ_HD uint16_t f32_to_f16(float f) {
#ifdef __CUDA_ARCH__
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  return fp32_to_fp16(f);
#endif
}

EOQ_HD float bits_to_f32(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}
EOQ_HD uint32_t f32_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t b;
  memcpy(&b, &f, 4);
  return b;
#endif
}
EOQ_HD float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

// ---- integer helpers --------------------------------------------------------------------------

// c + the dot product of the four signed bytes of a and b.
EOQ_HD int dp4a(int a, int b, int c) {
#ifdef __CUDA_ARCH__
  return __dp4a(a, b, c);
#else
  for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
#endif
}

// The 32 bits at bit offset `shift` (0..31) of the 64-bit value hi:lo.
EOQ_HD uint32_t funnel_r(uint32_t lo, uint32_t hi, uint32_t shift) {
#ifdef __CUDA_ARCH__
  return __funnelshift_r(lo, hi, shift);
#else
  return (uint32_t)((((uint64_t)hi << 32) | lo) >> (shift & 31));
#endif
}

// Bits 0..3 of t moved to bit 0 of bytes 0..3 (no carries: the four shifted copies of t occupy
// disjoint bit ranges).
EOQ_HD uint32_t spread_nibble(uint32_t t) { return (t * 0x00204081u) & 0x01010101u; }

// ---- loads ------------------------------------------------------------------------------------

EOQ_HD uint32_t ld_u8(const uint8_t* p) { return *p; }
EOQ_HD uint32_t ld_u16(const uint8_t* p) {  // p 2-byte aligned
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint16_t*>(p);
#else
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
#endif
}
EOQ_HD uint32_t ld_u32(const uint8_t* p) {  // p 4-byte aligned
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
#endif
}

// Window loaders: words<N>(p, out) reads out[i] = the little-endian u32 at p + 4i, i < N.
// LoadA4: p is 4-byte aligned.
struct LoadA4 {
  template <int N>
  EOQ_HD static void words(const uint8_t* p, uint32_t* out) {
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = ld_u32(p + 4 * i);
  }
};
// LoadFunnel: p 2-byte aligned; N+1 aligned loads and N funnel shifts. Reads up to 2 bytes on
// either side of [p, p + 4N): for shared-memory tiles with slack around the data.
struct LoadFunnel {
  template <int N>
  EOQ_HD static void words(const uint8_t* p, uint32_t* out) {
    const uint8_t* base = p - ((uintptr_t)p & 3);
    const uint32_t shift = 8 * (uint32_t)((uintptr_t)p & 3);
    uint32_t w0 = ld_u32(base);
#pragma unroll
    for (int i = 0; i < N; i++) {
      const uint32_t w1 = ld_u32(base + 4 * i + 4);
      out[i] = funnel_r(w0, w1, shift);
      w0 = w1;
    }
  }
};
// LoadBranch: as LoadFunnel, but plain loads when p happens to be 4-aligned. Pays off when all
// lanes of a warp agree on the alignment (K-quant blocks of 110 / 210 bytes in rows whose size is
// a multiple of 4: the parity is that of the block index, the same for the whole warp).
struct LoadBranch {
  template <int N>
  EOQ_HD static void words(const uint8_t* p, uint32_t* out) {
    if (((uintptr_t)p & 3) == 0)
      LoadA4::words<N>(p, out);
    else
      LoadFunnel::words<N>(p, out);
  }
};
// LoadHalves: p 2-byte aligned, two 16-bit loads per word: never reads outside [p, p + 4N).
struct LoadHalves {
  template <int N>
  EOQ_HD static void words(const uint8_t* p, uint32_t* out) {
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = ld_u16(p + 4 * i) | ld_u16(p + 4 * i + 2) << 16;
  }
};

// ---- one 32-value unit in integer form ------------------------------------------------------
//
// Value i (0..31) of a unit, with h = i / 16 its half and q_i byte i%4 of word q[i/4] (an
// unsigned byte, or a signed one for Q8_0):
//
//     x_i = (d * sc[h]) * (q_i + kOffset)  +  dm * mn[h]
//
// (sc = 1 when the format has no integer sub-block scales; the dm term only when kMin). This is
// GGML's own evaluation order, so the float results equal GGML's / gguf's bit for bit: the
// products d*sc*q are exact in float32 for every format but Q6_K, where (d*sc) is rounded times
// q just as in GGML. dm carries the sign: -dmin for the K-quants, +m for Q4_1/Q5_1.
//
// Against an activation unit (Q8_1 quants a_i, scale da, half sums S_h = sum of a_i over half h):
//
//     sum_i x_i * da * a_i = da * ( d * sum_h sc[h] * (C_h + kOffset * S_h)  +  dm * sum_h mn[h] * S_h )
//
// with C_h = sum over half h of q_i * a_i: exact integers, four values per dp4a.
struct Unit {
  uint32_t q[8];  // word j: quants of values 4j..4j+3, one per byte
  int sc[2];      // integer scale of each half (1 for the legacy formats)
  int mn[2];      // integer min of each half (kMin formats)
  float d;        // float scale
  float dm;       // float min factor (kMin formats)
};

// Per format F = Format<type>:
//   kBlockValues, kBlockBytes    block geometry (32 or 256 values)
//   kUnits                       32-value units per block
//   kAlign4                      blocks are 4-byte aligned in a 4-aligned row (size % 4 == 0)
//   kOffset, kSigned             the offset added to a quant, and whether its bytes are signed
//   kScaled, kMin, kHalves       integer sub-block scales; a float min term; scales per half
//   Loader                       the window loader for shared-memory tiles
//   unit<L>(p, u, out)           unit u of the block at p, words read through loader L
template <GGMLType T>
struct Format;

template <>
struct Format<GGMLType::Q4_0> {  // d, qs[16]
  static constexpr int kBlockValues = 32, kBlockBytes = 18, kUnits = 1, kOffset = -8;
  static constexpr bool kAlign4 = false, kSigned = false, kScaled = false, kMin = false, kHalves = false;
  using Loader = LoadFunnel;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int, Unit& o) {
    uint32_t w[4];
    L::template words<4>(p + 2, w);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      o.q[j] = w[j] & 0x0f0f0f0fu;             // values 4j..4j+3: low nibbles
      o.q[4 + j] = (w[j] >> 4) & 0x0f0f0f0fu;  // values 16+4j..: high nibbles
    }
    o.d = f16_to_f32((uint16_t)ld_u16(p));
  }
};

template <>
struct Format<GGMLType::Q4_1> {  // d, m, qs[16]
  static constexpr int kBlockValues = 32, kBlockBytes = 20, kUnits = 1, kOffset = 0;
  static constexpr bool kAlign4 = true, kSigned = false, kScaled = false, kMin = true, kHalves = false;
  using Loader = LoadA4;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int, Unit& o) {
    uint32_t w[4];
    L::template words<4>(p + 4, w);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      o.q[j] = w[j] & 0x0f0f0f0fu;
      o.q[4 + j] = (w[j] >> 4) & 0x0f0f0f0fu;
    }
    o.d = f16_to_f32((uint16_t)ld_u16(p));
    o.dm = f16_to_f32((uint16_t)ld_u16(p + 2));
    o.mn[0] = o.mn[1] = 1;
  }
};

template <>
struct Format<GGMLType::Q5_0> {  // d, qh[4], qs[16]
  static constexpr int kBlockValues = 32, kBlockBytes = 22, kUnits = 1, kOffset = -16;
  static constexpr bool kAlign4 = false, kSigned = false, kScaled = false, kMin = false, kHalves = false;
  using Loader = LoadFunnel;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int, Unit& o) {
    uint32_t w[5];  // qh, then qs (contiguous: bytes 2..21)
    L::template words<5>(p + 2, w);
    const uint32_t qh = w[0];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      o.q[j] = (w[1 + j] & 0x0f0f0f0fu) | spread_nibble((qh >> (4 * j)) & 0xf) << 4;
      o.q[4 + j] = ((w[1 + j] >> 4) & 0x0f0f0f0fu) | spread_nibble((qh >> (16 + 4 * j)) & 0xf) << 4;
    }
    o.d = f16_to_f32((uint16_t)ld_u16(p));
  }
};

template <>
struct Format<GGMLType::Q5_1> {  // d, m, qh[4], qs[16]
  static constexpr int kBlockValues = 32, kBlockBytes = 24, kUnits = 1, kOffset = 0;
  static constexpr bool kAlign4 = true, kSigned = false, kScaled = false, kMin = true, kHalves = false;
  using Loader = LoadA4;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int, Unit& o) {
    uint32_t w[5];
    L::template words<5>(p + 4, w);
    const uint32_t qh = w[0];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      o.q[j] = (w[1 + j] & 0x0f0f0f0fu) | spread_nibble((qh >> (4 * j)) & 0xf) << 4;
      o.q[4 + j] = ((w[1 + j] >> 4) & 0x0f0f0f0fu) | spread_nibble((qh >> (16 + 4 * j)) & 0xf) << 4;
    }
    o.d = f16_to_f32((uint16_t)ld_u16(p));
    o.dm = f16_to_f32((uint16_t)ld_u16(p + 2));
    o.mn[0] = o.mn[1] = 1;
  }
};

template <>
struct Format<GGMLType::Q8_0> {  // d, qs[32] (signed)
  static constexpr int kBlockValues = 32, kBlockBytes = 34, kUnits = 1, kOffset = 0;
  static constexpr bool kAlign4 = false, kSigned = true, kScaled = false, kMin = false, kHalves = false;
  using Loader = LoadFunnel;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int, Unit& o) {
    L::template words<8>(p + 2, o.q);
    o.d = f16_to_f32((uint16_t)ld_u16(p));
  }
};

// K-quants: unit u (0..7) holds values 32u..32u+31 of the super-block. In the 2-bit-plane layout
// of Q2_K/Q3_K/Q6_K that is half h = u/4, plane k = u%4, l = 0..31; its halves are the 16-value
// sub-blocks 2u and 2u+1.

template <>
struct Format<GGMLType::Q2_K> {  // scales[16], qs[64], d, dmin
  static constexpr int kBlockValues = 256, kBlockBytes = 84, kUnits = 8, kOffset = 0;
  static constexpr bool kAlign4 = true, kSigned = false, kScaled = true, kMin = true, kHalves = true;
  using Loader = LoadA4;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int u, Unit& o) {
    const int h = u >> 2, k = u & 3;
    uint32_t w[8];
    L::template words<8>(p + 16 + 32 * h, w);
#pragma unroll
    for (int j = 0; j < 8; j++) o.q[j] = (w[j] >> (2 * k)) & 0x03030303u;
    const uint32_t s = ld_u16(p + 2 * u);  // scales[2u], scales[2u+1]
    o.sc[0] = s & 0xf;
    o.mn[0] = (s >> 4) & 0xf;
    o.sc[1] = (s >> 8) & 0xf;
    o.mn[1] = (s >> 12) & 0xf;
    o.d = f16_to_f32((uint16_t)ld_u16(p + 80));
    o.dm = -f16_to_f32((uint16_t)ld_u16(p + 82));
  }
};

template <>
struct Format<GGMLType::Q3_K> {  // hmask[32], qs[64], scales[12], d
  static constexpr int kBlockValues = 256, kBlockBytes = 110, kUnits = 8, kOffset = -4;
  static constexpr bool kAlign4 = false, kSigned = false, kScaled = true, kMin = false, kHalves = true;
  using Loader = LoadBranch;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int u, Unit& o) {
    const int h = u >> 2, k = u & 3;
    uint32_t lo[8], hm[8];
    L::template words<8>(p + 32 + 32 * h, lo);
    L::template words<8>(p, hm);  // hmask[l], bit u = the high bit of value 32u + l
#pragma unroll
    for (int j = 0; j < 8; j++)
      o.q[j] = ((lo[j] >> (2 * k)) & 0x03030303u) | ((hm[j] >> u) & 0x01010101u) << 2;  // q + 4, 0..7
    // 6-bit scale s (s = 2u + e): low nibble from scales[s%8] >> 4*(s/8), top 2 bits from
    // scales[8 + s%4] >> 2*(s/4); here s%8 = 2(u%4) + e, s/8 = u/4, s%4 = 2(u%2) + e, s/4 = u/2.
    const uint32_t sl = ld_u16(p + 96 + 2 * (u & 3)), sh = ld_u16(p + 104 + 2 * (u & 1));
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int low = (sl >> (8 * e + 4 * (u >> 2))) & 0xf, high = (sh >> (8 * e + 2 * (u >> 1))) & 3;
      o.sc[e] = (low | high << 4) - 32;
    }
    o.d = f16_to_f32((uint16_t)ld_u16(p + 108));
  }
};

// Q4_K / Q5_K: the (sc, m) pair of sub-block j from the 12 packed scale bytes s.
EOQ_HD void scale_min_k4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = ld_u8(s + j) & 63;
    *m = ld_u8(s + j + 4) & 63;
  } else {
    const uint32_t b = ld_u8(s + j + 4);
    *sc = (b & 0xf) | (ld_u8(s + j - 4) >> 6) << 4;
    *m = (b >> 4) | (ld_u8(s + j) >> 6) << 4;
  }
}

template <>
struct Format<GGMLType::Q4_K> {  // d, dmin, scales[12], qs[128]
  static constexpr int kBlockValues = 256, kBlockBytes = 144, kUnits = 8, kOffset = 0;
  static constexpr bool kAlign4 = true, kSigned = false, kScaled = true, kMin = true, kHalves = false;
  using Loader = LoadA4;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int u, Unit& o) {
    uint32_t w[8];
    L::template words<8>(p + 16 + 32 * (u >> 1), w);  // sub-block u: nibble u%2 of qs[32(u/2) + l]
#pragma unroll
    for (int j = 0; j < 8; j++) o.q[j] = (w[j] >> (4 * (u & 1))) & 0x0f0f0f0fu;
    int sc, m;
    scale_min_k4(p + 4, u, &sc, &m);
    o.sc[0] = o.sc[1] = sc;
    o.mn[0] = o.mn[1] = m;
    o.d = f16_to_f32((uint16_t)ld_u16(p));
    o.dm = -f16_to_f32((uint16_t)ld_u16(p + 2));
  }
};

template <>
struct Format<GGMLType::Q5_K> {  // d, dmin, scales[12], qh[32], qs[128]
  static constexpr int kBlockValues = 256, kBlockBytes = 176, kUnits = 8, kOffset = 0;
  static constexpr bool kAlign4 = true, kSigned = false, kScaled = true, kMin = true, kHalves = false;
  using Loader = LoadA4;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int u, Unit& o) {
    uint32_t w[8], hb[8];
    L::template words<8>(p + 48 + 32 * (u >> 1), w);
    L::template words<8>(p + 16, hb);  // qh[l], bit u = bit 4 of value l of sub-block u
#pragma unroll
    for (int j = 0; j < 8; j++) o.q[j] = ((w[j] >> (4 * (u & 1))) & 0x0f0f0f0fu) | ((hb[j] >> u) & 0x01010101u) << 4;
    int sc, m;
    scale_min_k4(p + 4, u, &sc, &m);
    o.sc[0] = o.sc[1] = sc;
    o.mn[0] = o.mn[1] = m;
    o.d = f16_to_f32((uint16_t)ld_u16(p));
    o.dm = -f16_to_f32((uint16_t)ld_u16(p + 2));
  }
};

template <>
struct Format<GGMLType::Q6_K> {  // ql[128], qh[64], scales[16] (int8), d
  static constexpr int kBlockValues = 256, kBlockBytes = 210, kUnits = 8, kOffset = -32;
  static constexpr bool kAlign4 = false, kSigned = false, kScaled = true, kMin = false, kHalves = true;
  using Loader = LoadBranch;
  template <class L>
  EOQ_HD static void unit(const uint8_t* p, int u, Unit& o) {
    const int h = u >> 2, k = u & 3;
    uint32_t lo[8], hi[8];
    L::template words<8>(p + 64 * h + 32 * (k & 1), lo);  // nibble k/2 of ql[h*64 + (k%2)*32 + l]
    L::template words<8>(p + 128 + 32 * h, hi);           // bits 2k..2k+1 of qh[h*32 + l]
#pragma unroll
    for (int j = 0; j < 8; j++)
      o.q[j] = ((lo[j] >> (4 * (k >> 1))) & 0x0f0f0f0fu) | ((hi[j] >> (2 * k)) & 0x03030303u) << 4;  // q + 32
    const uint32_t s = ld_u16(p + 192 + 2 * u);
    o.sc[0] = (int8_t)(s & 0xff);
    o.sc[1] = (int8_t)(s >> 8);
    o.d = f16_to_f32((uint16_t)ld_u16(p + 208));
  }
};

// Value i (0..31) of a decoded unit as float, in GGML's evaluation order (see Unit). No FMA
// contraction: __fmul_rn / __fadd_rn keep the two roundings GGML has.
template <class F>
EOQ_HD float unit_value(const Unit& o, int i) {
  const uint32_t byte = (o.q[i >> 2] >> (8 * (i & 3))) & 0xff;
  const int q = (F::kSigned ? (int)(int8_t)byte : (int)byte) + F::kOffset;
  const int h = i >> 4;
#ifdef __CUDA_ARCH__
  const float ds = F::kScaled ? __fmul_rn(o.d, (float)o.sc[h]) : o.d;
  const float v = __fmul_rn(ds, (float)q);
  return F::kMin ? __fadd_rn(v, __fmul_rn(o.dm, (float)o.mn[h])) : v;
#else
  const float ds = F::kScaled ? o.d * (float)o.sc[h] : o.d;
  const float v = ds * (float)q;
  return F::kMin ? v + o.dm * (float)o.mn[h] : v;
#endif
}

// Calls f(Format<T>{}) for a quantized weight type (the legacy and K formats); returns false for
// any other type.
template <class Fn>
bool with_quant_format(GGMLType t, Fn&& f) {
  switch (t) {
    case GGMLType::Q4_0: f(Format<GGMLType::Q4_0>{}); return true;
    case GGMLType::Q4_1: f(Format<GGMLType::Q4_1>{}); return true;
    case GGMLType::Q5_0: f(Format<GGMLType::Q5_0>{}); return true;
    case GGMLType::Q5_1: f(Format<GGMLType::Q5_1>{}); return true;
    case GGMLType::Q8_0: f(Format<GGMLType::Q8_0>{}); return true;
    case GGMLType::Q2_K: f(Format<GGMLType::Q2_K>{}); return true;
    case GGMLType::Q3_K: f(Format<GGMLType::Q3_K>{}); return true;
    case GGMLType::Q4_K: f(Format<GGMLType::Q4_K>{}); return true;
    case GGMLType::Q5_K: f(Format<GGMLType::Q5_K>{}); return true;
    case GGMLType::Q6_K: f(Format<GGMLType::Q6_K>{}); return true;
    default: return false;
  }
}

// ---- staging global bytes into shared memory ------------------------------------------------
//
// A byte range [src, src + len) of global memory is copied as the 16-byte aligned pieces that
// cover it: piece k is [A + 16k, A + 16k + 16) with A = src rounded down to 16, landing at
// dst + 16k (dst 16-aligned), so the range starts at dst + (src & 15) in shared memory. Bytes at
// or past the end of the valid data of the whole buffer are not read: those parts of a piece are
// zero-filled. (Bytes before src down to A are read: they lie in the same buffer, which starts
// 16-aligned.)

// Pieces needed for a range of len bytes starting at misalignment mis = src & 15.
EOQ_HD int stage_pieces(uint32_t mis, int len) { return (int)(mis + len + 15) >> 4; }
// The most pieces a range of len bytes can need, at any alignment.
constexpr int stage_pieces_max(int len) { return (15 + len + 15) / 16; }
// Bytes of a piece that are valid, from `left` = valid bytes from the piece's start onwards.
EOQ_HD int stage_valid(int64_t left) { return left >= 16 ? 16 : (left > 0 ? (int)left : 0); }

// A shared-memory buffer that copies land in: its generic pointer, and on the device its address
// in the shared window (cp.async takes that; converting once saves it per copy).
struct SmemBuf {
  uint8_t* p;
  uint32_t s;
  EOQ_HD explicit SmemBuf(uint8_t* ptr) : p(ptr), s(0) {
#ifdef __CUDA_ARCH__
    s = (uint32_t)__cvta_generic_to_shared(ptr);
#endif
  }
};

// Asynchronous 16-byte copy global -> shared, both 16-aligned.
EOQ_HD void stage_copy16(const SmemBuf& b, int off, const uint8_t* src) {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(b.s + off), "l"(src) : "memory");
#else
  memcpy(b.p + off, src, 16);
#endif
}
// As stage_copy16, but only the first n bytes (0..16) are read and the rest of the 16 zero-filled
// (cp.async's src-size operand). With n == 0 nothing is read, but src must still be a valid address.
EOQ_HD void stage_copy16_fill(const SmemBuf& b, int off, const uint8_t* src, int n) {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(b.s + off), "l"(src), "r"(n) : "memory");
#else
  memset(b.p + off, 0, 16);
  if (n) memcpy(b.p + off, src, (size_t)n);
#endif
}

// Copies the segment [src, src + len) into b at offset off (16-aligned; the bytes land at
// off + (src & 15)) as this thread's share of the pieces: k0, k0 + step, ..., fewer than
// kMaxIter * step of them. `left` = valid bytes of the buffer from src on (negative: none);
// `safe` = any valid 16-aligned address of the buffer (read by nothing, named by zero-byte copies).
template <int kMaxIter>
EOQ_HD void stage_segment(const SmemBuf& b, int off, const uint8_t* src, int len, int64_t left, int k0, int step,
                          const uint8_t* safe) {
  const uint32_t mis = (uint32_t)((uintptr_t)src & 15);
  const uint8_t* a = src - mis;
  const int n16 = stage_pieces(mis, len);
  left += mis;  // from a on
  if (left >= 16 * n16) {  // the whole segment is valid data: plain copies
#pragma unroll
    for (int m = 0; m < kMaxIter; m++) {
      const int k = k0 + step * m;
      if (k < n16) stage_copy16(b, off + 16 * k, a + 16 * k);
    }
  } else {  // the end of the buffer falls in (or before) this segment
#pragma unroll
    for (int m = 0; m < kMaxIter; m++) {
      const int k = k0 + step * m;
      if (k < n16) {
        const int n = stage_valid(left - 16 * k);
        stage_copy16_fill(b, off + 16 * k, n ? a + 16 * k : safe, n);
      }
    }
  }
}

EOQ_HD void stage_commit() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed copy groups are still in flight (the others,
// and so all older ones, have landed in shared memory; other threads' copies need a barrier).
template <int N>
EOQ_HD void stage_wait() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace eoq::cuda
