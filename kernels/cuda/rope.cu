// RoPE, GGUF "normal" layout, in place: x [n_tok][n_head][head_dim]; token t at position
// *d_pos0 + t (read on the device: the grid depends on n_tok only, so a captured graph replays
// with new positions). Pair i < n_rot/2 of every head, (x[2i], x[2i+1]), turns by
//   angle_i = freq_scale * (θ_i / ff[i])   (ff = freq_factors [n_rot/2], or no division)
//   θ_0 = pos, θ_{i+1} = θ_i * theta_scale in float,
// dims >= n_rot untouched. The angles are ggml's recurrence exactly as the CPU reference
// (kernels/ref/ops.cpp rope_adjacent) computes them: every step rounded to float, IEEE division
// (pair i costs i multiplications, once per token, shared by all heads), so the angles are
// bitwise the CPU's at every position; what differs is sincosf (CUDA: within 2 ulp over the
// whole range, large arguments included) against the host libm, ~2.4e-7 absolute in c and s.
// The rotation is x0*c - x1*s, x0*s + x1*c with one product fused, as on the CPU.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kThreads = 256;

// grid (n_tok, ⌈n_head·n_rot/2 / kThreads⌉): each block computes the token's n_rot/2 (cos, sin)
// pairs into shared memory, then turns its kThreads (head, pair) items (several blocks per token,
// so a decode step's single token spreads over SMs instead of queueing in one).
__global__ void __launch_bounds__(kThreads)
    rope_kernel(float* __restrict__ x, int n_head, int head_dim, int n_rot, const int32_t* __restrict__ d_pos0,
                float theta_scale, float freq_scale, const float* __restrict__ ff) {
  extern __shared__ float cs[];  // [n_rot/2] cos, then [n_rot/2] sin
  const int half = n_rot / 2;
  const int t = blockIdx.x;
  const int pos = *d_pos0 + t;
  for (int i = threadIdx.x; i < half; i += kThreads) {
    float theta = (float)pos;
    for (int j = 0; j < i; j++) theta = __fmul_rn(theta, theta_scale);
    const float angle = __fmul_rn(freq_scale, ff ? __fdiv_rn(theta, ff[i]) : theta);
    float s, c;
    sincosf(angle, &s, &c);
    cs[i] = c;
    cs[half + i] = s;
  }
  __syncthreads();
  float* xt = x + (int64_t)t * n_head * head_dim;
  for (int k = blockIdx.y * kThreads + threadIdx.x; k < n_head * half; k += kThreads * gridDim.y) {
    const int h = k / half, i = k - h * half;
    float* p = xt + (int64_t)h * head_dim + 2 * i;
    const float c = cs[i], s = cs[half + i];
    const float x0 = p[0], x1 = p[1];
    p[0] = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
    p[1] = __fmaf_rn(x0, s, __fmul_rn(x1, c));
  }
}

bool rope(float* x, int n_tok, int n_head, int head_dim, int n_rot, const int32_t* d_pos0, float theta_scale,
          float freq_scale, const float* freq_factors, cudaStream_t s) {
  if (n_tok < 0 || n_head <= 0 || head_dim <= 0 || n_rot < 0 || n_rot % 2 != 0 || n_rot > head_dim) return false;
  if ((int64_t)n_head * head_dim > INT32_MAX || n_rot > 8192) return false;  // shared table: n_rot floats
  if (n_tok == 0 || n_rot == 0) return true;
  if (!x || !d_pos0) return false;
  const dim3 grid((unsigned)n_tok, (unsigned)((n_head * (n_rot / 2) + kThreads - 1) / kThreads));
  rope_kernel<<<grid, kThreads, (size_t)n_rot * sizeof(float), s>>>(x, n_head, head_dim, n_rot, d_pos0,
                                                                     theta_scale, freq_scale, freq_factors);
  return true;
}

}  // namespace

void register_rope(CudaKernels& t) { t.rope = rope; }

}  // namespace eoq::cuda
