// The CPU kernel table. Every entry has a scalar reference (kernels/ref/) and possibly SIMD
// versions (kernels/cpu/<isa>.cpp, compiled with per-file ISA flags); cpu_kernels() picks the
// best the running CPU supports, once, from CPUID. EOQ_ISA=scalar|avx2|avx512 in the environment
// forces a choice (for tests and benchmarks); asking for an ISA the CPU lacks falls back to scalar.
#pragma once
#include <cstdint>

#include "kernels/ggml_type.h"

namespace eoq {

struct CpuKernels {
  const char* isa;  // "scalar", "avx2", "avx512"
  // Σ a[i] b[i]
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  // y[i] += alpha * x[i]
  void (*axpy_f32)(float alpha, const float* x, float* y, int64_t n);
  // dequantize one row (n values) of a weight type
  void (*dequantize_row)(GGMLType t, const void* src, float* dst, int64_t n);
  // dot of an f16 row with a float vector; and y += alpha * f16 row (attention over f16 K/V)
  float (*dot_f16_f32)(const uint16_t* a, const float* b, int64_t n);
  void (*axpy_f16)(float alpha, const uint16_t* x, float* y, int64_t n);
};

const CpuKernels& cpu_kernels();        // chosen at run time
const CpuKernels& cpu_kernels_scalar(); // the reference table
const CpuKernels* cpu_kernels_avx2();   // nullptr if not compiled in or not supported by the CPU

}  // namespace eoq
