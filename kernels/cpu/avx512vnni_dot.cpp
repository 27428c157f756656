// The weight x activation products of kernels/cpu/avx2_dot.cpp compiled a second time for CPUs
// with AVX512-VNNI (and AVX512VL): the integer sum of each group of four u8·s8 products of the
// legacy formats (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) is one vpdpbusd instead of maddubs + madd. The lane
// sums are the same integers and every float operation is the same, so the results are the
// AVX2 table's bits (tests/test_quant_dot.py checks both against the scalar reference). The
// table is the AVX2 one with vec_dot swapped, chosen when CPUID reports VNNI; where it also
// reports VBMI, the attention kernels over packed codes are kernels/cpu/avx512_codes.cpp's.
#if defined(__x86_64__) || defined(_M_X64)
#define EOQ_DOT_VNNI 1
#define quantize_act_avx2 quantize_act_avx512vnni
#define vec_dot_avx2 vec_dot_avx512vnni
#include "kernels/cpu/avx2_dot.cpp"
#include "kernels/kernels.h"
#undef quantize_act_avx2
#undef vec_dot_avx2

namespace eoq {

void vec_dot_avx2(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy);
// kernels/cpu/avx512_codes.cpp (needs AVX512-VBMI as well)
void scores_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* q, int nq, float* out);
void values_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* w, int nq, float* acc);
void decode_codes_avx512(const uint8_t* codes, int64_t n, int bits, const float* table, float* out);
float softmax_exp_avx512(float* x, int64_t n, float mx);

namespace {

// The legacy formats here; every other type through the AVX2 table's own code (this file's
// compile flags would let the compiler vectorise the float paths differently).
void vec_dot_vnni(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy) {
  switch (w) {
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q8_0:
      return vec_dot_avx512vnni(w, n, w_rows, w_stride, nr, a_rows, a_stride, nt, y, ldy);
    default:
      return vec_dot_avx2(w, n, w_rows, w_stride, nr, a_rows, a_stride, nt, y, ldy);
  }
}

}  // namespace

const CpuKernels* cpu_kernels_avx512vnni() {
  static const CpuKernels* k = []() -> const CpuKernels* {
    const CpuKernels* base = cpu_kernels_avx2();
    if (!base || !__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vl") ||
        !__builtin_cpu_supports("avx512bw"))
      return nullptr;
    static CpuKernels t = *base;
    t.isa = "avx512vnni";
    t.vec_dot = vec_dot_vnni;
    if (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512dq")) {
      t.scores_codes = scores_codes_avx512;
      t.values_codes = values_codes_avx512;
      t.decode_codes = decode_codes_avx512;
      t.softmax_exp = softmax_exp_avx512;
    }
    return &t;
  }();
  return k;
}

}  // namespace eoq
#else
#include "kernels/kernels.h"
namespace eoq {
const CpuKernels* cpu_kernels_avx512vnni() { return nullptr; }
}  // namespace eoq
#endif
