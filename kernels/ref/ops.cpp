#include "kernels/ops.h"

#include <cmath>

namespace eoq {

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  double ss = 0;  // double: the mean of squares over thousands of values
  for (int64_t i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
  const float mean = (float)(ss / (double)n);
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void rope_adjacent(float* x, int n_head, int head_dim, int n_rot, int pos, float theta_scale, float freq_scale,
                   const float* freq_factors) {
  float theta = (float)pos;
  for (int i = 0; i < n_rot / 2; i++, theta *= theta_scale) {
    const float angle = freq_scale * (freq_factors ? theta / freq_factors[i] : theta);
    const float c = std::cos(angle), s = std::sin(angle);
    for (int h = 0; h < n_head; h++) {
      float* p = x + (int64_t)h * head_dim + 2 * i;
      const float x0 = p[0], x1 = p[1];
      // One product fused, as GCC contracts ggml's x0*c - x1*s and x0*s + x1*c with FMA.
      p[0] = std::fma(x0, c, -(x1 * s));
      p[1] = std::fma(x0, s, x1 * c);
    }
  }
}

void softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = (mx == -INFINITY) ? 0.0f : std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
  for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

}  // namespace eoq
