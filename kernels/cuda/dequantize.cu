// Weight rows to dense floats (cuda_kernels.h):
//  * dequantize_f16: rows r0 .. r0+n_rows of W to an f16 matrix [n_rows][n_cols] (the prefill
//    GEMM's B operand), nearest-even rounding of GGML's float values;
//  * get_rows: the embedding rows W[ids[t]] to float [n][n_cols]; ids outside [0, n_rows) give
//    zero rows.
// Values are GGML's / gguf's bit for bit before the f16 rounding (quant_blocks.cuh: unit_value).
//
// Quantized types: a CTA of 128 threads turns 128 units (32 values each; 4096 values) of one row
// into floats. The row segment is staged into shared memory with 16-byte cp.async copies; thread
// u decodes unit u into a shared output tile, which the CTA then writes with contiguous 16-byte
// stores. Reads are ~0.3-1.1 bytes per value, writes 2 (f16) or 4 (f32): the writes set the pace.
// Float types: a plain coalesced element-wise conversion.
#include <climits>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/quant_blocks.cuh"

namespace eoq::cuda {

namespace {

constexpr int kUnitsPerCta = 128;  // threads per CTA, one 32-value unit each

template <class F>
struct RowTile {  // input bytes of 128 units: 128 legacy blocks or 16 super-blocks
  static constexpr int kBytes = kUnitsPerCta / F::kUnits * F::kBlockBytes;
  static constexpr int kSmem = 16 * stage_pieces_max(kBytes) + 16;  // + slack for the loaders
};

// Output row o of the launch reads source row ids[o] (get_rows) or r0 + o (dequantize_f16).
// grid = (n_out_rows, ceil(n_units / 128)), block 128. OutT: uint16_t (f16 bits) or float.
// The output tile in shared memory has one padded row per unit (kRow bytes: 16 more than the
// unit's values, so that both the 16-byte stores of a unit's values and the 16-byte loads of the
// contiguous copy-out are free of bank conflicts).
template <class F, class OutT>
__global__ void __launch_bounds__(kUnitsPerCta)
    dequantize_rows_q(const uint8_t* __restrict__ w, size_t row_bytes, int n_units, int64_t n_src_rows, int64_t r0,
                      const int32_t* __restrict__ ids, OutT* __restrict__ out, int vec_out) {
  constexpr int kVecs = 32 * (int)sizeof(OutT) / 16;  // 16-byte vectors per unit
  constexpr int kRow = 16 * kVecs + 16;
  constexpr int kPer = 16 / (int)sizeof(OutT);       // values per vector
  __shared__ __align__(16) uint8_t in[RowTile<F>::kSmem];
  __shared__ __align__(16) uint8_t tile[kUnitsPerCta * kRow];
  const int tid = threadIdx.x;
  const int64_t o = blockIdx.x;
  const int u0 = blockIdx.y * kUnitsPerCta, nu = min(kUnitsPerCta, n_units - u0);
  const int64_t n_cols = (int64_t)n_units * 32;
  OutT* dst = out + o * n_cols + (int64_t)u0 * 32;
  const int64_t src_row = ids ? (int64_t)ids[o] : r0 + o;
  const bool valid = src_row >= 0 && src_row < n_src_rows;  // always true for dequantize_f16

  if (valid) {  // the same for the whole CTA
    const int64_t row_data = (int64_t)(n_units / F::kUnits) * F::kBlockBytes;
    const int len = (nu + F::kUnits - 1) / F::kUnits * F::kBlockBytes;  // u0 is a multiple of kUnits
    const int64_t off = (int64_t)(u0 / F::kUnits) * F::kBlockBytes;
    const uint8_t* src = w + src_row * (int64_t)row_bytes + off;
    // valid bytes of the matrix from src on: the rest of this row and the rows after it
    const int64_t left = (n_src_rows - 1 - src_row) * (int64_t)row_bytes + row_data - off;
    constexpr int kIter = (stage_pieces_max(RowTile<F>::kBytes) + kUnitsPerCta - 1) / kUnitsPerCta;
    stage_segment<kIter>(SmemBuf(in), 0, src, len, left, tid, kUnitsPerCta, w - ((uintptr_t)w & 15));
    stage_commit();
    stage_wait<0>();
    __syncthreads();
    if (tid < nu) {
      const uint8_t* p = in + ((uintptr_t)src & 15) + (tid / F::kUnits) * F::kBlockBytes;
      Unit un;
      F::template unit<typename F::Loader>(p, tid % F::kUnits, un);
#pragma unroll
      for (int v = 0; v < kVecs; v++) {
        uint32_t b[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
          if constexpr (sizeof(OutT) == 2)
            b[j] = (uint32_t)f32_to_f16(unit_value<F>(un, v * kPer + 2 * j)) |
                   (uint32_t)f32_to_f16(unit_value<F>(un, v * kPer + 2 * j + 1)) << 16;
          else
            b[j] = f32_bits(unit_value<F>(un, v * kPer + j));
        }
        *reinterpret_cast<uint4*>(tile + tid * kRow + 16 * v) = make_uint4(b[0], b[1], b[2], b[3]);
      }
    }
  } else if (tid < nu) {
#pragma unroll
    for (int v = 0; v < kVecs; v++) *reinterpret_cast<uint4*>(tile + tid * kRow + 16 * v) = make_uint4(0, 0, 0, 0);
  }
  __syncthreads();
  // Contiguous stores of the nu * 32 values at dst.
  if (vec_out) {
    uint4* to = reinterpret_cast<uint4*>(dst);
    for (int i = tid; i < nu * kVecs; i += kUnitsPerCta)
      to[i] = *reinterpret_cast<const uint4*>(tile + (i / kVecs) * kRow + 16 * (i % kVecs));
  } else {
    for (int i = tid; i < nu * 32; i += kUnitsPerCta)
      dst[i] = *reinterpret_cast<const OutT*>(tile + (i / 32) * kRow + sizeof(OutT) * (i % 32));
  }
}

template <GGMLType T>
__device__ __forceinline__ float float_weight(const uint8_t* p) {
  if constexpr (T == GGMLType::F32)
    return bits_to_f32(ld_u16(p) | ld_u16(p + 2) << 16);
  else if constexpr (T == GGMLType::F16)
    return f16_to_f32((uint16_t)ld_u16(p));
  else
    return bf16_to_f32((uint16_t)ld_u16(p));
}

// Float types: grid = (n_out_rows, ceil(n_cols / 1024)), block 128, 8 elements per thread.
template <GGMLType T, class OutT>
__global__ void __launch_bounds__(128)
    dequantize_rows_f(const uint8_t* __restrict__ w, size_t row_bytes, int64_t n_cols, int64_t n_src_rows, int64_t r0,
                      const int32_t* __restrict__ ids, OutT* __restrict__ out) {
  constexpr int kElt = T == GGMLType::F32 ? 4 : 2;
  const int64_t o = blockIdx.x;
  const int64_t src_row = ids ? (int64_t)ids[o] : r0 + o;
  const bool valid = src_row >= 0 && src_row < n_src_rows;
  const uint8_t* row = w + (valid ? src_row : 0) * (int64_t)row_bytes;
  OutT* dst = out + o * n_cols;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const int64_t c = (int64_t)blockIdx.y * 1024 + k * 128 + threadIdx.x;
    if (c >= n_cols) break;
    const float v = valid ? float_weight<T>(row + c * kElt) : 0.0f;
    if constexpr (sizeof(OutT) == 2)
      dst[c] = f32_to_f16(v);
    else
      dst[c] = v;
  }
}

// Shared by both entry points: n_out rows of output from source rows (ids or r0 + o).
template <class OutT>
bool dequantize_rows(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t n_src_rows, int64_t r0,
                     const int32_t* ids, int64_t n_out, OutT* out, cudaStream_t s) {
  if (n_cols <= 0 || n_out < 0 || n_src_rows < 0 || r0 < 0 || n_out > INT_MAX) return false;
  if (n_out == 0) return true;
  if (!w || !out || n_src_rows == 0) return false;
  const auto* wb = static_cast<const uint8_t*>(w);
  if (type == GGMLType::F32 || type == GGMLType::F16 || type == GGMLType::BF16) {
    const int elt = type == GGMLType::F32 ? 4 : 2;
    if (row_bytes < (size_t)n_cols * elt || ((uintptr_t)w & 1) || (row_bytes & 1)) return false;
    const int64_t gy = (n_cols + 1023) / 1024;
    if (gy > 65535) return false;
    const dim3 grid((unsigned)n_out, (unsigned)gy);
    switch (type) {
      case GGMLType::F32: dequantize_rows_f<GGMLType::F32, OutT><<<grid, 128, 0, s>>>(wb, row_bytes, n_cols, n_src_rows, r0, ids, out); break;
      case GGMLType::F16: dequantize_rows_f<GGMLType::F16, OutT><<<grid, 128, 0, s>>>(wb, row_bytes, n_cols, n_src_rows, r0, ids, out); break;
      default: dequantize_rows_f<GGMLType::BF16, OutT><<<grid, 128, 0, s>>>(wb, row_bytes, n_cols, n_src_rows, r0, ids, out); break;
    }
    return true;
  }
  bool ok = false;
  const bool known = with_quant_format(type, [&](auto f) {
    using F = decltype(f);
    if (n_cols % F::kBlockValues != 0 || row_bytes < (size_t)(n_cols / F::kBlockValues) * F::kBlockBytes) return;
    const uintptr_t align = F::kAlign4 ? 3 : 1;  // the shared-memory loaders' assumption
    if (((uintptr_t)w & align) || (row_bytes & align)) return;
    const int64_t n_units = n_cols / 32, gy = (n_units + kUnitsPerCta - 1) / kUnitsPerCta;
    if (gy > 65535) return;
    const int vec = ((uintptr_t)out & 15) == 0;  // n_cols * sizeof(OutT) is a multiple of 64
    dequantize_rows_q<F, OutT><<<dim3((unsigned)n_out, (unsigned)gy), kUnitsPerCta, 0, s>>>(
        wb, row_bytes, (int)n_units, n_src_rows, r0, ids, out, vec);
    ok = true;
  });
  return known && ok;
}

bool dequantize_f16(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t r0, int64_t n_rows,
                    void* dst_f16, cudaStream_t s) {
  if (((uintptr_t)dst_f16 & 1)) return false;
  // Rows r0 .. r0 + n_rows - 1 exist (the source matrix has at least r0 + n_rows rows).
  return dequantize_rows<uint16_t>(type, w, row_bytes, n_cols, r0 + n_rows, r0, nullptr, n_rows,
                                   static_cast<uint16_t*>(dst_f16), s);
}

bool get_rows(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t n_rows, const int32_t* ids, int n,
              float* out, cudaStream_t s) {
  if (n > 0 && !ids) return false;
  if (((uintptr_t)out & 3)) return false;
  return dequantize_rows<float>(type, w, row_bytes, n_cols, n_rows, 0, ids, n, out, s);
}

}  // namespace

void register_dequantize(CudaKernels& t) {
  t.dequantize_f16 = dequantize_f16;
  t.get_rows = get_rows;
}

}  // namespace eoq::cuda
