// Elementwise and small ops of the Llama forward pass, scalar reference versions.
// Shapes are given per call; all buffers are row-major float32.
#pragma once
#include <cstdint>

namespace eoq {

// out[i] = x[i] / sqrt(mean(x²) + eps) * w[i], for one row of n values (out may alias x).
// Rounded as ggml does: float squares summed in double, the mean and the scale in float.
void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps);

// RoPE, GGUF "normal" layout: rotates adjacent pairs (x[2i], x[2i+1]) of each head by angle
// freq_scale * θ_i / freq_factors[i], θ_0 = pos, θ_{i+1} = θ_i * theta_scale in float
// (theta_scale = base^(-2/n_rot)): ggml's recurrence, whose float rounding llama.cpp's outputs
// carry. x: [n_head][head_dim]; freq_factors: [n_rot/2] or null; dims >= n_rot untouched.
void rope_adjacent(float* x, int n_head, int head_dim, int n_rot, int pos, float theta_scale, float freq_scale,
                   const float* freq_factors);

// In-place softmax over n values; returns nothing. Handles -inf entries.
void softmax(float* x, int64_t n);

}  // namespace eoq
