// Weight × activations, threaded over output rows.
#pragma once
#include <cstdint>

#include "kernels/ggml_type.h"

namespace eoq {

class ThreadPool;

// A 2-D weight in GGUF layout: n_rows rows of n_cols values of `type`, row_bytes apart.
struct WeightView {
  GGMLType type;
  int64_t n_cols;   // ne[0]
  int64_t n_rows;   // ne[1]
  size_t row_bytes;
  const uint8_t* data;
};

// Y[t][r] = Σ_c W[r][c] X[t][c] for t < n_tok, r < n_rows.
// X: [n_tok][n_cols], Y: [n_tok][n_rows] (row stride ldy >= n_rows, 0 means n_rows).
// Rows are dequantized in tiles to a per-thread buffer and reused across all tokens.
void matmul(const WeightView& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool, int64_t ldy = 0);

}  // namespace eoq
