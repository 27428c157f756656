// Weight formats: block layouts and the scalar reference kernels (the executable spec).
//
// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
// Layouts follow GGML's (see kernels/ref/quants.cpp for the per-block comments); sizes are
// static_asserted there. SIMD versions in kernels/cpu/ are tested against these.
#pragma once
#include <cstddef>
#include <cstdint>

#include "base/ggml_type.h"

namespace eoq {

// dst[0..n) = dequantized values of one row. n is a multiple of the type's block size.
// Unsupported types throw Error(unsupported).
void dequantize_row_ref(GGMLType t, const void* src, float* dst, int64_t n);

// Σ_i w[i] * x[i] over one row of n values of type t, in float.
// Reference: accumulates the exact products in double and rounds the sum once to float.
float vec_dot_ref(GGMLType t, const void* row, const float* x, int64_t n);

// Quantizes n floats (a multiple of 32) into n/32 Q8_0 blocks (34 bytes each) at dst, as
// GGML's reference does: d = amax/127 stored as fp16, q = round-half-away(x * (1/d)) with
// 1/d taken from the float32 d (before fp16 rounding). Used by the KV cache.
void quantize_row_q8_0_ref(const float* x, void* dst, int64_t n);

}  // namespace eoq
