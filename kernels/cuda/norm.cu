// RMSNorm: out[t][i] = x[t][i] * (1 / sqrt(mean_i(x[t]²) + eps)) * w[i], n_tok rows of n values.
// One block of 256 threads per row. Rounded as the CPU reference (kernels/ref/ops.cpp) rounds:
// float squares summed in double (Hopper's FP64 rate makes that free for a memory-bound op), the
// mean, the scale and both products in float with IEEE sqrt and division. The only difference
// left is the order of the double sum (a tree here, sequential there): its rounding is ~1e-16
// relative, far below the float rounding of the mean, so the result equals the CPU's except
// where the mean lies within that of a float rounding boundary (then 1 ulp in the scale).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kThreads = 256;

// vec: x, out 16-byte aligned, w too, and n % 4 == 0 (every row then starts aligned).
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* x, const float* __restrict__ w, float* out, int64_t n, float eps, bool vec) {
  const float* xr = x + (int64_t)blockIdx.x * n;
  float* yr = out + (int64_t)blockIdx.x * n;  // may alias xr: each element is read, then written, by one thread

  double ss = 0.0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = threadIdx.x; i < n4; i += kThreads) {
      const float4 v = reinterpret_cast<const float4*>(xr)[i];
      ss += (double)(v.x * v.x);
      ss += (double)(v.y * v.y);
      ss += (double)(v.z * v.z);
      ss += (double)(v.w * v.w);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) ss += (double)(xr[i] * xr[i]);
  }
  // Block sum: warps by shuffles, then the 8 warp sums by warp 0.
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ double warp_sum[kThreads / 32];
  __shared__ float scale_s;
  if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < kThreads / 32 ? warp_sum[threadIdx.x] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) {
      const float mean = (float)(v / (double)n);
      scale_s = 1.0f / sqrtf(mean + eps);
    }
  }
  __syncthreads();
  const float scale = scale_s;

  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = threadIdx.x; i < n4; i += kThreads) {
      const float4 v = reinterpret_cast<const float4*>(xr)[i];
      const float4 g = reinterpret_cast<const float4*>(w)[i];
      float4 r;
      r.x = (v.x * scale) * g.x;
      r.y = (v.y * scale) * g.y;
      r.z = (v.z * scale) * g.z;
      r.w = (v.w * scale) * g.w;
      reinterpret_cast<float4*>(yr)[i] = r;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) yr[i] = (xr[i] * scale) * w[i];
  }
}

bool rms_norm(const float* x, const float* w, float* out, int64_t n, int64_t n_tok, float eps, cudaStream_t s) {
  if (n <= 0 || n_tok < 0 || n_tok > INT32_MAX || !x || !w || !out) return false;
  if (n_tok == 0) return true;
  const bool vec = n % 4 == 0 &&
                   ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w) |
                     reinterpret_cast<uintptr_t>(out)) % 16) == 0;
  rms_norm_kernel<<<(unsigned)n_tok, kThreads, 0, s>>>(x, w, out, n, eps, vec);
  return true;
}

}  // namespace

void register_norm(CudaKernels& t) { t.rms_norm = rms_norm; }

}  // namespace eoq::cuda
