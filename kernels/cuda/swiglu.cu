// SwiGLU: gate[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], i < n, in
// place on gate. Rounded as the CPU reference (kernels/ref/vec.cpp swiglu_scalar): expf (not
// __expf: within 2 ulp over the whole range), IEEE division, then the product. A very negative
// gate overflows exp to +inf and gives -0, as on the CPU.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride beyond this

__device__ __forceinline__ float swiglu1(float g, float u) { return __fdiv_rn(g, 1.0f + expf(-g)) * u; }

// vec: gate and up 16-byte aligned; the first n/4*4 elements four at a time, the rest singly.
__global__ void __launch_bounds__(kThreads) swiglu_kernel(float* __restrict__ gate, const float* __restrict__ up,
                                                          int64_t n, bool vec) {
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  const int64_t i0 = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 g = reinterpret_cast<const float4*>(gate)[i];
      const float4 u = reinterpret_cast<const float4*>(up)[i];
      g.x = swiglu1(g.x, u.x);
      g.y = swiglu1(g.y, u.y);
      g.z = swiglu1(g.z, u.z);
      g.w = swiglu1(g.w, u.w);
      reinterpret_cast<float4*>(gate)[i] = g;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) gate[i] = swiglu1(gate[i], up[i]);
}

bool swiglu(float* gate, const float* up, int64_t n, cudaStream_t s) {
  if (n < 0 || (n > 0 && (!gate || !up))) return false;
  if (n == 0) return true;
  const bool vec = ((reinterpret_cast<uintptr_t>(gate) | reinterpret_cast<uintptr_t>(up)) % 16) == 0;
  const int64_t per_block = (int64_t)kThreads * (vec ? 4 : 1);
  const int64_t blocks = (n + per_block - 1) / per_block;
  swiglu_kernel<<<(unsigned)(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0, s>>>(gate, up, n, vec);
  return true;
}

}  // namespace

void register_swiglu(CudaKernels& t) { t.swiglu = swiglu; }

}  // namespace eoq::cuda
