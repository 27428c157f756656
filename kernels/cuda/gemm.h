// The prefill product's backends by name, beyond the table's automatic choice (gemm.cu): for the
// test hooks, which run both backends in one process. Plain C++ header (no device code).
//
// Automatic choice (the table's gemm_f16): cuBLAS when it loads (env EOQ_CUBLAS = a library path,
// else libcublas.so.13, .so.12, .so), unless env EOQ_GEMM=wmma (read once, at the first call);
// after a cuBLAS failure (handle creation, workspace, a refused call) the process stays on our
// own tensor-core kernel.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

namespace eoq::cuda {

enum class GemmBackend { automatic, cublas, wmma };

// gemm_f16 (kernels/cuda/cuda_kernels.h) through one backend. cublas: false when cuBLAS cannot
// be loaded or refuses the call (no fallback); wmma: false unless K % 32 == 0 and a, b are
// 16-byte aligned.
bool gemm_f16_with(GemmBackend backend, const void* a_f16, const void* b_f16, float* c, int64_t M, int64_t N,
                   int64_t K, int64_t ldc, bool accumulate, cudaStream_t s);

// "" when cuBLAS is loaded (dlopen and every symbol found), else why not (loads it on first call).
const char* cublas_unavailable_reason();

}  // namespace eoq::cuda
