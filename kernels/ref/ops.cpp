#include "kernels/ops.h"

#include <cmath>

namespace eoq {

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  double ss = 0;  // double: the mean of squares over thousands of values
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  const float scale = (float)(1.0 / std::sqrt(ss / (double)n + eps));
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void rope_adjacent(float* x, int n_head, int head_dim, int n_rot, float pos, const float* inv_freq) {
  for (int i = 0; i < n_rot / 2; i++) {
    const double theta = (double)pos * inv_freq[i];
    const float c = (float)std::cos(theta), s = (float)std::sin(theta);
    for (int h = 0; h < n_head; h++) {
      float* p = x + (int64_t)h * head_dim + 2 * i;
      const float x0 = p[0], x1 = p[1];
      p[0] = x0 * c - x1 * s;
      p[1] = x0 * s + x1 * c;
    }
  }
}

void swiglu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
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
