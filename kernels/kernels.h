// The CPU kernel table, filled by field name in each ISA's file. Every entry has a scalar reference (kernels/ref/) and possibly SIMD
// versions (kernels/cpu/<isa>.cpp, compiled with per-file ISA flags); cpu_kernels() picks the
// best the running CPU supports, once, from CPUID. EOQ_ISA=scalar|avx2|avx512vnni in the
// environment forces a choice (for tests and benchmarks); asking for an ISA the CPU lacks falls
// back to the next lower one.
#pragma once
#include <cstddef>
#include <cstdint>

#include "base/ggml_type.h"

namespace eoq {

struct CpuKernels {
  const char* isa;  // "scalar", "avx2", "avx512"
  // Σ a[i] b[i]
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  // y[i] += alpha * x[i]
  void (*axpy_f32)(float alpha, const float* x, float* y, int64_t n);
  // dequantize one row (n values) of a weight type
  void (*dequantize_row)(GGMLType t, const void* src, float* dst, int64_t n);
  // dot of an f16 row with a float vector; and y += alpha * f16 row (attention over f16 K/V)
  float (*dot_f16_f32)(const uint16_t* a, const float* b, int64_t n);
  void (*axpy_f16)(float alpha, const uint16_t* x, float* y, int64_t n);

  // Attention over one KV head for nq query vectors at once (the query heads of a GQA group),
  // reading m cached rows of d values. Scores out[h*m + t] = Σ_j q[h*d + j] · row_t[j]; values
  // acc[h*d + j] += Σ_t w[h*m + t] · row_t[j]. Rows are either
  //  * f16, row t at rows + t*d (sinks, ring, exact blocks), or
  //  * packed TurboQuant codes: row t is ρ_t · centroids[code_tj], code_tj the j-th bits-bit
  //    field (kernels/turboquant.h get_bits) of the packed_bytes(d, bits) bytes at codes + t*that,
  //    ρ_t = scale · f16 norms[t] (bits in 1..8, centroids[2^bits]); scores are computed as
  //    ρ_t · Σ_j q_j c[code_tj], values with the weights w_t · ρ_t.
  // Only the summation order may differ between ISAs.
  void (*scores_f16)(const uint16_t* rows, int64_t m, int d, const float* q, int nq, float* out);
  void (*values_f16)(const uint16_t* rows, int64_t m, int d, const float* w, int nq, float* acc);
  void (*scores_codes)(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* q, int nq, float* out);
  void (*values_codes)(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                       const uint16_t* norms, float scale, const float* w, int nq, float* acc);
  // Softmax weights: x[i] = exp(x[i] − mx) for x[i] <= mx (any finite mx), returns Σ x[i].
  // SIMD versions may differ from std::exp by a few ulp and flush results below 2^-126 to 0.
  float (*softmax_exp)(float* x, int64_t n, float mx);
  // max(x[0..n)), -inf for n = 0 (NaN inputs: unspecified which value wins)
  float (*max_f32)(const float* x, int64_t n);

  // Weight × activation products in GGML's vec_dot_type scheme (formats, formulas and the
  // scalar spec in kernels/quant_dot.h; kernels/matmul.cpp is the caller).
  // quantize_act: dst = x[0..n) in activation format act (F32, F16, BF16, Q8_0, Q8_1 or Q8_K),
  // act_row_bytes(act, n) bytes; n a multiple of act's block size. The same bytes on every ISA
  // (non-finite inputs: unspecified bytes).
  void (*quantize_act)(GGMLType act, const float* x, void* dst, int64_t n);
  // vec_dot: y[t*ldy + r] = Σ_i W_r[i] A_t[i] for r < nr, t < nt, where W_r is the row of n values
  // of weight type w at w_rows + r*w_stride and A_t the activation row at a_rows + t*a_stride in
  // vec_dot_type(w) (from quantize_act). Rows may sit at any address. Each result depends only on
  // (W_r, A_t) and the ISA, never on nr, nt or the other rows/tokens of the call, so a prompt
  // evaluated in one batch or token by token gives the same bits. Across ISAs only the float
  // summation order differs (integer block sums are exact). Works best when the nr rows fit in
  // L1/L2: the kernel walks the tokens in small groups and re-reads the rows for each group.
  void (*vec_dot)(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy);

  // An f16 accumulator, as ggml's CPU flash attention keeps it for f16 V (the f16 cache's
  // llama.cpp numerics): y[i] = f16(fma(alpha, x[i], y[i])) and y[i] = f16(y[i] * alpha), each
  // rounded to float once and then to f16 (nearest even). The same bits on every ISA.
  void (*axpy_f16_acc16)(float alpha, const uint16_t* x, uint16_t* y, int64_t n);
  void (*scale_f16)(float alpha, uint16_t* y, int64_t n);
  // gate[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)), for one row of n values (rows
  // of a batch in separate calls). The scalar reference uses std::exp; the AVX2 version computes
  // exp as ggml's vectorised expf does on this CPU (its AVX-512 or its AVX2 formula, both
  // within 2 ulp of exp), so that the FFN carries llama.cpp's bits.
  void (*swiglu)(float* gate, const float* up, int64_t n);
  // Σ a[i] b[i] over two f16 vectors (products exact in float). The scalar reference sums in
  // double; the AVX2 version sums in the order of ggml's ggml_vec_dot_f16 on this CPU (its
  // AVX-512 or AVX2 build: lanes, reduction tree, leftovers in double).
  float (*dot_f16_f16)(const uint16_t* a, const uint16_t* b, int64_t n);
  // Scores of ggml's tiled flash attention over m keys in float, transposed (kt[j*m + t]): each
  // out[t] a chain of fused multiply-adds q[j]·kt[j*m + t] in j order from 0; the same bits on
  // every ISA.
  void (*scores_f32t_chain)(const float* kt, int d, int m, const float* q, float* out);
  // ggml_vec_soft_max_f32: x[i] = exp(x[i] - mx) (exp(-inf) = 0), returns Σ x[i] in double.
  // The scalar reference uses std::exp; the AVX2 version ggml's vectorised expf and summation
  // order on this CPU (as swiglu), libm expf for the last n mod (16 or 8) values.
  double (*soft_max_ggml)(float* x, int64_t n, float mx);
  // out[j] = table[code_j] for j < n, code_j the j-th bits-bit field of the stream at codes
  // (kernels/turboquant.h get_bits; bits in 1..8, table[2^bits]): the low-rank factors' codes
  // decoded for attention. Exact on every ISA.
  void (*decode_codes)(const uint8_t* codes, int64_t n, int bits, const float* table, float* out);
  // out[t] = log_norm_f16(codes[t], shift) for t < m (kernels/turboquant.h): a sealed block's
  // 8-bit row norms as the f16 norms the code scans take. Exact on every ISA.
  void (*decode_log_norms)(const uint8_t* codes, int64_t m, int shift, uint16_t* out);
  // scores_codes' fast form: the codebook dot may be computed in integers, q rounded to int8 per
  // query vector (s_q = max_j|q_j|/127, round half to even) and the centroids likewise (s_c =
  // max|c|/127), as llama.cpp dots a quantized K cache with a q8_0 query. Each result is then
  // within ρ_t·(½ s_q Σ_j|c[code_tj]| + ½ s_c Σ_j|q_j| + ¾ s_q s_c d) (+ float rounding) of
  // scores_codes; non-finite q give 0 instead of NaN. The AVX-512 (VBMI + VNNI) version does so for
  // codes of 1..3 bits (kernels/cpu/avx512_codes.cpp); the others are scores_codes itself.
  void (*scores_codes_q8)(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                          const uint16_t* norms, float scale, const float* q, int nq, float* out);
  // acc[i] += w[j]·v[j*d + i] for j = 0..m-1 in that order: the bits of m axpy_f32 calls (the
  // tiled f16 attention's value sums, as ggml_vec_mad_f32), with acc held in registers.
  void (*values_f32_chain)(const float* v, int m, int d, const float* w, float* acc);

  // The forward pass's row ops (kernels/ops.h has their exact contracts): RMSNorm of one row, and
  // RoPE of one token's heads. Every ISA uses the scalar versions: their serial double sum and
  // theta recurrence are the bits llama.cpp's CPU build produces (the elementwise loops are
  // vectorised by the compiler without changing a bit).
  void (*rms_norm)(const float* x, const float* w, float* out, int64_t n, float eps);
  void (*rope_adjacent)(float* x, int n_head, int head_dim, int n_rot, int pos, float theta_scale, float freq_scale,
                        const float* freq_factors);
};

const CpuKernels& cpu_kernels();        // chosen at run time
const CpuKernels& cpu_kernels_scalar(); // the reference table
const CpuKernels* cpu_kernels_avx2();   // nullptr if not compiled in or not supported by the CPU
// The AVX2 table with the legacy-format integer dots on AVX512-VNNI (the same results); nullptr
// unless the CPU has AVX2, AVX512VL/BW and AVX512-VNNI.
const CpuKernels* cpu_kernels_avx512vnni();

}  // namespace eoq
