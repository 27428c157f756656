// The residual add: y[i] += x[i], i < n (exact float addition, as on the CPU).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride beyond this

// vec: y and x 16-byte aligned; the first n/4*4 elements four at a time, the rest singly.
__global__ void __launch_bounds__(kThreads) add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n,
                                                       bool vec) {
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  const int64_t i0 = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 a = reinterpret_cast<const float4*>(y)[i];
      const float4 b = reinterpret_cast<const float4*>(x)[i];
      a.x += b.x;
      a.y += b.y;
      a.z += b.z;
      a.w += b.w;
      reinterpret_cast<float4*>(y)[i] = a;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) y[i] += x[i];
}

bool add(float* y, const float* x, int64_t n, cudaStream_t s) {
  if (n < 0 || (n > 0 && (!y || !x))) return false;
  if (n == 0) return true;
  const bool vec = ((reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(x)) % 16) == 0;
  const int64_t per_block = (int64_t)kThreads * (vec ? 4 : 1);
  const int64_t blocks = (n + per_block - 1) / per_block;
  add_kernel<<<(unsigned)(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0, s>>>(y, x, n, vec);
  return true;
}

}  // namespace

void register_add(CudaKernels& t) { t.add = add; }

}  // namespace eoq::cuda
