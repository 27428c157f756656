// Activations to Q8_1 for the quantized mat-vec (cuda_kernels.h, quantize_q8_1): x [n_tok][n]
// float -> xq, n_tok * n/32 blocks of 36 bytes (block_q8_1), row t at xq + t * (n/32) * 36.
//
// The CPU's formula (kernels/quant_dot.h), so both backends give the same bytes: per block of 32,
// amax = max |x|, d = amax / 127 (float32, stored as f16, nearest even), id = amax ? 127 / amax
// : 0, q = round_half_even(x * id) saturated to [-128, 127] (NaN -> -128, as x86's conversion
// gives), s = f16(d * sum q).
//
// One warp per block: lane l holds value l; the max and the sum are warp reductions.
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/quant_blocks.cuh"

namespace eoq::cuda {

namespace {

constexpr int kWarpsPerCta = 8;

// Rows are contiguous (x row stride n, xq row stride n/32 blocks), so block b of the whole batch
// is x[32b .. 32b+32) -> xq + 36b. grid.x * 8 >= n_blocks, block 256.
__global__ void __launch_bounds__(32 * kWarpsPerCta)
    quantize_q8_1_kernel(const float* __restrict__ x, int64_t n_blocks, uint8_t* __restrict__ xq) {
  const int lane = threadIdx.x & 31;
  const int64_t b = (int64_t)blockIdx.x * kWarpsPerCta + (threadIdx.x >> 5);
  if (b >= n_blocks) return;  // whole warps
  const float v = x[b * 32 + lane];
  float amax = fmaxf(0.0f, fabsf(v));  // a NaN is ignored, as std::fmax(0, ...) on the CPU does
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  const float r = rintf(v * id);  // nearest, ties to even
  const int q = !(r >= -128.0f) ? -128 : (r > 127.0f ? 127 : (int)r);
  int sum = q;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  uint8_t* blk = xq + b * 36;
  blk[4 + lane] = (uint8_t)(int8_t)q;
  if (lane == 0) {
    reinterpret_cast<uint16_t*>(blk)[0] = f32_to_f16(d);
    reinterpret_cast<uint16_t*>(blk)[1] = f32_to_f16(d * (float)sum);
  }
}

bool quantize_q8_1(const float* x, int64_t n, int64_t n_tok, void* xq, cudaStream_t s) {
  if (n < 0 || n_tok < 0 || n % 32 != 0 || ((uintptr_t)xq & 1)) return false;
  const int64_t n_blocks = n / 32 * n_tok;
  if (n_blocks == 0) return true;
  if (!x || !xq) return false;
  const int64_t grid = (n_blocks + kWarpsPerCta - 1) / kWarpsPerCta;
  if (grid > INT32_MAX) return false;
  quantize_q8_1_kernel<<<(unsigned)grid, 32 * kWarpsPerCta, 0, s>>>(x, n_blocks, static_cast<uint8_t*>(xq));
  return true;
}

}  // namespace

void register_quantize(CudaKernels& t) { t.quantize_q8_1 = quantize_q8_1; }

}  // namespace eoq::cuda
