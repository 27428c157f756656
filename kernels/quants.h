// Weight formats: block layouts and the scalar reference kernels (the executable spec).
//
// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
// Layouts follow GGML's (see kernels/ref/quants.cpp for the per-block comments); sizes are
// static_asserted there. SIMD versions in kernels/cpu/ are tested against these.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/ggml_type.h"

namespace eoq {

// dst[0..n) = dequantized values of one row. n is a multiple of the type's block size.
// Unsupported types throw Error(unsupported).
void dequantize_row_ref(GGMLType t, const void* src, float* dst, int64_t n);

// Σ_i w[i] * x[i] over one row of n values of type t, in float.
float vec_dot_ref(GGMLType t, const void* row, const float* x, int64_t n);

}  // namespace eoq
