// AVX2 + FMA + F16C kernels that live outside kernels/cpu/avx2.cpp. Only call them after
// cpu_kernels_avx2() returned non-null (the CPU has the ISA).
#pragma once
#include <cstdint>

#include "base/ggml_type.h"

namespace eoq {

// dequantize_row_ref's contract and results, bit for bit (kernels/cpu/avx2_quants.cpp).
void dequantize_row_avx2(GGMLType t, const void* src, float* dst, int64_t n);

}  // namespace eoq
