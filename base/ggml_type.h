// GGML tensor types as numbered in GGUF files, and their block geometry.
#pragma once
#include <cstddef>
#include <cstdint>

namespace eoq {

enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct TypeInfo {
  const char* name;   // "Q4_K", or nullptr for numbers GGML never used
  int64_t block_size; // values per block (1 for plain float types)
  size_t type_size;   // bytes per block
  bool supported;     // this engine can dequantize and dot it (weights)
};

// Info for any 32-bit type number; unknown numbers give {nullptr, 0, 0, false}.
TypeInfo type_info(GGMLType t);
const char* type_name(GGMLType t);  // "type 123" style string for unknown numbers (static buffer-free)

// Bytes for n values of type t (n must be a multiple of the block size; returns 0 otherwise).
size_t row_size(GGMLType t, int64_t n);

}  // namespace eoq
