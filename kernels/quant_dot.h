// Weight × activation dot products in GGML's "vec_dot_type" scheme: before a weight product, each
// activation row (n floats) is converted once to the format its weight type pairs with, and the
// dot products then run on integers per block, scaled in float per block:
//
//   weight type                      activation format (vec_dot_type)
//   F32                              F32  (plain copy: the f32 path stays exact)
//   F16                              F16  (each x rounded to nearest-even half)
//   BF16                             BF16 (each x rounded to nearest-even bfloat16)
//   Q4_0, Q5_0, Q8_0                 Q8_0
//   Q4_1, Q5_1                       Q8_1
//   Q2_K, Q3_K, Q4_K, Q5_K, Q6_K     Q8_K
//
// Activation quantizers (what llama.cpp's CPU backend computes on x86; all ISAs here give the
// same bytes, see kernels/ref/quant_dot.cpp for the derivation):
//   Q8_0 / Q8_1, per block of 32: amax = max |x|, d = amax / 127 (float32), stored as fp16
//     (round to nearest even); q = round_half_even(x * id), id = amax ? 127 / amax : 0 (float32).
//     Q8_1 also stores s = fp16(d * Σ q) with the float32 d.
//   Q8_K, per block of 256: m = the element of largest magnitude (the first one on ties);
//     m = 0 gives d = 0 and q = 0; else iscale = -127 / m, q = min(127, round_half_even(iscale * x)),
//     d = 1 / iscale (float32, not rounded), bsums[j] = Σ q[16j .. 16j+16).
//
// Dot products (w = weight row, a = activation row, b = block): exact integer sums per block,
// then float scales (floats accumulate in an ISA-specific order):
//   Q4_0/Q5_0/Q8_0 · Q8_0:  Σ_b d_w d_a Σ q_w q_a            (q_w signed: q-8, q-16, q)
//   Q4_1/Q5_1 · Q8_1:       Σ_b d_w d_a Σ q_w q_a + m_w s_a    (q_w unsigned)
//   K-quants · Q8_K:        Σ_b d_a (d_w Σ_j sc_j Σ q_w q_a - dmin_w Σ_j m_j Σ q_a)
//   F32/F16/BF16:           Σ w x in float32 (F16/BF16 products are exact in float32)
#pragma once
#include <cstddef>
#include <cstdint>

#include "base/ggml_type.h"
#include "kernels/quant_blocks.h"

namespace eoq {

constexpr int kQ8Block = 32;    // values per Q8_0 / Q8_1 block
constexpr int kQ8KBlock = 256;  // values per Q8_K block

// The activation blocks (block_q8_0, block_q8_1, block_q8_K) are GGML's layouts, defined once for
// the CPU and CUDA code in kernels/quant_blocks.h.

// The activation format a weight type's dot products take (table above). Types this engine
// cannot dot (type_info(w).supported == false) throw Error(unsupported).
GGMLType vec_dot_type(GGMLType w);

// Bytes of one activation row of n values in format act (F32, F16, BF16, Q8_0, Q8_1, Q8_K);
// n must be a multiple of the format's block size.
size_t act_row_bytes(GGMLType act, int64_t n);

// ---- scalar references (kernels/ref/quant_dot.cpp): the spec the SIMD versions are tested
// against, and the scalar kernel table's entries. Contracts as in kernels.h. ----

// dst (act_row_bytes(act, n) bytes) = x[0..n) in format act.
void quantize_act_ref(GGMLType act, const float* x, void* dst, int64_t n);

// y[t*ldy + r] = dot(weight row r, activation row t) for r < nr, t < nt.
void vec_dot_ref_rows(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                      size_t a_stride, int nt, float* y, int64_t ldy);

}  // namespace eoq
