// GGML's block layouts of the weight formats and of the Q8 activation formats, byte for byte, as
// plain structs shared by the CPU code and the CUDA kernels (no std::, no constructors: the same
// header compiles as C++17 and as CUDA device code).
//
// All multi-byte fields are little-endian; f16 fields are IEEE half bit patterns (uint16_t).
// Blocks are packed back to back in a row with no padding, so a block is only as aligned as its
// size allows (an 18-byte Q4_0 block is 2-byte aligned within its row): read fields through
// byte offsets or memcpy, never through a cast of an arbitrary row pointer to a wider type.
//
// Each struct's comment gives the value formula; kernels/ref/quants.cpp holds the scalar
// dequantizers (the executable spec) and kernels/quant_dot.h the activation formats.
#pragma once
#include <stdint.h>

namespace eoq {

constexpr int QK = 32;     // values per block of the legacy formats (Q4_0 .. Q8_1)
constexpr int QK_K = 256;  // values per super-block of the K-quants

// Q4_0: x = d * (q - 8), q a 4-bit nibble. qs[j] holds value j in its low nibble and value j+16
// in its high nibble.
struct block_q4_0 {
  uint16_t d;  // f16 scale
  uint8_t qs[QK / 2];
};
static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");

// Q4_1: x = d * q + m, q a 4-bit nibble packed as in Q4_0.
struct block_q4_1 {
  uint16_t d;  // f16 scale
  uint16_t m;  // f16 minimum (offset)
  uint8_t qs[QK / 2];
};
static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");

// Q5_0: x = d * (q - 16), q 5 bits: the low 4 packed as in Q4_0, bit 4 of value j is bit j of
// the little-endian u32 qh.
struct block_q5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[QK / 2];
};
static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");

// Q5_1: x = d * q + m, q packed as in Q5_0.
struct block_q5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[QK / 2];
};
static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");

// Q8_0: x = d * q, q a signed byte. Also the activation format of Q4_0/Q5_0/Q8_0 on the CPU.
struct block_q8_0 {
  uint16_t d;
  int8_t qs[QK];
};
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");

// Q8_1 (activations): x = d * q; s = f16(d * sum(q)) with d in float32 before rounding.
struct block_q8_1 {
  uint16_t d;  // f16 scale
  uint16_t s;  // f16 of d * sum(qs)
  int8_t qs[QK];
};
static_assert(sizeof(block_q8_1) == 36, "Q8_1 block is 36 bytes");

// Q8_K (activations of the K-quants on the CPU): x = d * q, d in float32; bsums[j] = the sum of
// qs[16j .. 16j+16).
struct block_q8_K {
  float d;
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];
};
static_assert(sizeof(block_q8_K) == 292, "Q8_K block is 292 bytes");

// Q2_K: 16 sub-blocks of 16. scales[s]: low nibble = scale, high nibble = min of sub-block s;
// x = (d * scale) * q - (dmin * min), q 2 bits. Two halves of 128 values; in half h, value
// h*128 + k*32 + l (k = 0..3, l = 0..31) is bits 2k..2k+1 of qs[h*32 + l].
struct block_q2_K {
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];
  uint16_t d;     // f16 super-block scale of the scales
  uint16_t dmin;  // f16 super-block scale of the mins
};
static_assert(sizeof(block_q2_K) == 84, "Q2_K block is 84 bytes");

// Q3_K: 16 sub-blocks of 16, x = (d * (scale - 32)) * q, q in -4..3: the low 2 bits laid out as
// in Q2_K; value i's high bit is bit i/32 of hmask[i%32], and a CLEAR high bit subtracts 4. The
// 16 6-bit scales are packed in 12 bytes: scale s has low nibble scales[s%8] >> (4*(s/8)) and
// high 2 bits scales[8 + s%4] >> (2*(s/4)).
struct block_q3_K {
  uint8_t hmask[QK_K / 8];
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(sizeof(block_q3_K) == 110, "Q3_K block is 110 bytes");

// Q4_K: 8 sub-blocks of 32, x = (d * sc) * q - (dmin * m), q a 4-bit nibble. Sub-blocks 2g and
// 2g+1 are the low and high nibbles of qs[g*32 .. g*32+32). The eight 6-bit (sc, m) pairs are
// packed in 12 bytes: j < 4: sc = scales[j] & 63, m = scales[j+4] & 63; j >= 4: the low 4 bits
// from scales[j+4] (sc: low nibble, m: high nibble), the top 2 bits from the top bits of
// scales[j-4] (sc) and scales[j] (m).
struct block_q4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "Q4_K block is 144 bytes");

// Q5_K: as Q4_K with a fifth bit: bit 4 of value l of sub-block j is bit j of qh[l].
struct block_q5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "Q5_K block is 176 bytes");

// Q6_K: 16 sub-blocks of 16, x = (d * scales[i/16]) * (q - 32), q 6 bits. Two halves of 128
// values; in half h, value h*128 + k*32 + l (k = 0..3, l = 0..31) takes its low nibble from
// ql[h*64 + (k%2)*32 + l] (low nibble for k < 2, high for k >= 2) and its top 2 bits from bits
// 2k..2k+1 of qh[h*32 + l].
struct block_q6_K {
  uint8_t ql[QK_K / 2];
  uint8_t qh[QK_K / 4];
  int8_t scales[QK_K / 16];
  uint16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "Q6_K block is 210 bytes");

}  // namespace eoq
