// Elementwise and small ops of the Llama forward pass, scalar reference versions.
// Shapes are given per call; all buffers are row-major float32.
#pragma once
#include <cstdint>

namespace eoq {

// out[i] = x[i] / sqrt(mean(x²) + eps) * w[i], for one row of n values (out may alias x).
void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps);

// RoPE, GGUF "normal" layout: rotates adjacent pairs (x[2i], x[2i+1]) of each head by
// angle pos * inv_freq[i]. x: [n_head][head_dim]; inv_freq: [n_rot/2]; dims >= n_rot untouched.
void rope_adjacent(float* x, int n_head, int head_dim, int n_rot, float pos, const float* inv_freq);

// gate[i] = silu(gate[i]) * up[i]
void swiglu(float* gate, const float* up, int64_t n);

// In-place softmax over n values; returns nothing. Handles -inf entries.
void softmax(float* x, int64_t n);

}  // namespace eoq
