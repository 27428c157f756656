// Weight × activations, threaded over output rows.
#pragma once
#include <cstdint>

#include "base/ggml_type.h"

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
// As llama.cpp computes it: each token's X row is first converted to the weight type's
// vec_dot_type (Q8_0 / Q8_1 / Q8_K blocks, or f16 / bf16 values; F32 weights use X as is), then
// the kernel table's vec_dot does integer block dot products (kernels/quant_dot.h). The pool's
// threads take work items (a tile of rows × up to 64 tokens, sized in matmul.cpp) from a shared
// counter.
// Every Y value is independent of n_tok and the thread count (same bits in prefill and decode).
void matmul(const WeightView& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool, int64_t ldy = 0);

// Several products of the same X (attention's Q, K, V; the FFN's gate and up) in one pool job:
// each job's Y = X Wᵀ exactly as matmul computes it, X converted once per activation format.
struct MatmulJob {
  const WeightView* w;
  float* y;
  int64_t ldy = 0;  // 0: w->n_rows
};
void matmul_group(const MatmulJob* jobs, int n_jobs, const float* x, int64_t n_tok, ThreadPool& pool);

}  // namespace eoq
