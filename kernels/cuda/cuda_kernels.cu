// The CUDA kernel table, filled once by each op file's register_* function.
#include "kernels/cuda/cuda_kernels.h"

namespace eoq::cuda {

const CudaKernels& cuda_kernels() {
  static const CudaKernels table = [] {
    CudaKernels t;
    register_quantize(t);
    register_matvec(t);
    register_matvec_soa(t);
    register_dequantize(t);
    register_gemm(t);
    register_norm(t);
    register_rope(t);
    register_swiglu(t);
    register_add(t);
    register_kv_f16(t);
    register_attention_decode(t);
    register_attention_prefill(t);
    register_kv_codes(t);
    register_attention_decode_codes(t);
    return t;
  }();
  return table;
}

}  // namespace eoq::cuda
