// The CUDA kernel table: every op of the forward pass as an asynchronous launcher on a stream.
// One .cu file per op (kernel + launcher + its register_* function, which fills the table's
// fields by name); cuda_kernels() builds the table once. Plain C++ header: the engine's CUDA
// backend (g++ with the CUDA runtime headers) includes it, so no device code or CUDA C++ here.
//
// Conventions for every launcher:
//  * all pointers are device pointers unless said otherwise; launchers never synchronise, never
//    allocate, and never copy to or from the host, so that a decode step can be captured in a CUDA
//    graph and replayed; scratch memory comes from the caller;
//  * positions that change between decode steps (pos0) are read from device memory (`d_pos0`), so
//    a captured graph replays with new positions; the grid never depends on them;
//  * weights are GGUF rows: n_rows rows of n_cols values of `type`, row r at w + r*row_bytes
//    (block layouts: kernels/quant_blocks.h, shared with the CPU code);
//  * activations are row-major float32: token t's row of n values at x + t*n (ld* = row stride);
//  * a launcher that gets arguments it cannot handle (an unsupported type, a shape outside its
//    contract) returns false without launching; otherwise it returns true (launch errors are
//    read by the caller through cudaGetLastError).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "base/ggml_type.h"

namespace eoq::cuda {

// One matrix of a grouped repacked mat-vec (mul_mat_vec_soa): w repacked by repack_soa,
// y[t*ldy + r] for r < n_rows.
struct SoaJob {
  const void* w;
  int64_t n_rows;
  float* y;
  int64_t ldy;
};

struct KVCodesLayer;  // below: one layer of a compressed cache on the device

struct CudaKernels {
  // ---- activations for the quantized mat-vec (quantize.cu) -------------------------------
  // xq = x rows in Q8_1 blocks (kernels/quant_dot.h block_q8_1: d = amax/127 as f16, s = f16(d*Σq),
  // 32 int8), act_row_bytes(Q8_1, n) bytes per row; n a multiple of 32.
  bool (*quantize_q8_1)(const float* x, int64_t n, int64_t n_tok, void* xq, cudaStream_t s) = nullptr;

  // ---- decode products (matvec.cu) --------------------------------------------------------
  // y[t*ldy + r] = Σ_c W[r][c] x_t[c]  (accumulate: y[..] += that), r < n_rows, t < n_tok <= 8.
  // F32/F16/BF16 weights read x (float rows, n_cols apart); quantized types (Q4_0, Q4_1, Q5_0,
  // Q5_1, Q8_0, Q2_K..Q6_K) read xq (quantize_q8_1 rows of x) and dot in integers (dp4a), as
  // llama.cpp's mmvq does. Each weight byte is read once per call (all n_tok tokens per row).
  bool (*mul_mat_vec)(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t n_rows,
                      const float* x, const void* xq, int n_tok, float* y, int64_t ldy, bool accumulate,
                      cudaStream_t s) = nullptr;

  // ---- weights to f16 (dequantize.cu) ------------------------------------------------------
  // dst[r*n_cols + c] = f16(W[r0 + r][c]) for r < n_rows (a slice of rows, for prefill tiles)
  bool (*dequantize_f16)(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t r0,
                         int64_t n_rows, void* dst_f16, cudaStream_t s) = nullptr;
  // out[t*n_cols + c] = float(W[ids[t]][c]) for t < n (the embedding rows); ids out of [0, n_rows)
  // give zero rows (the host checks ids before the step).
  bool (*get_rows)(GGMLType type, const void* w, size_t row_bytes, int64_t n_cols, int64_t n_rows,
                   const int32_t* ids, int n, float* out, cudaStream_t s) = nullptr;

  // ---- prefill products (gemm.cu) ----------------------------------------------------------
  // C[t*ldc + r] = Σ_k A[t*K + k] B[r*K + k]   (accumulate: C += that), t < M, r < N:
  // A = f16 activations [M][K], B = f16 weights [N][K], float accumulation and output. Through
  // cuBLAS (loaded at run time with dlopen; never linked) when available, else a tensor-core
  // kernel of our own. gemm_backend() names the one in use ("cublas" / "wmma").
  bool (*gemm_f16)(const void* a_f16, const void* b_f16, float* c, int64_t M, int64_t N, int64_t K,
                   int64_t ldc, bool accumulate, cudaStream_t s) = nullptr;
  const char* (*gemm_backend)() = nullptr;
  // dst[i] = f16(x[i]), i < n
  bool (*convert_f32_f16)(const float* x, void* dst_f16, int64_t n, cudaStream_t s) = nullptr;

  // ---- elementwise (norm.cu, rope.cu, swiglu.cu, add.cu) ------------------------------------------
  // out[t][i] = x[t][i] / sqrt(mean_i(x[t]²) + eps) * w[i], n_tok rows of n (out may alias x).
  bool (*rms_norm)(const float* x, const float* w, float* out, int64_t n, int64_t n_tok, float eps,
                   cudaStream_t s) = nullptr;
  // In place, x: [n_tok][n_head][head_dim]; token t at position *d_pos0 + t; rotates adjacent pairs
  // (x[2i], x[2i+1]), i < n_rot/2, by angle freq_scale * pos * theta_scale^i / ff[i] (ff: [n_rot/2]
  // or null) — the CPU reference kernels/ops.h rope_adjacent (which computes theta_scale^i by
  // repeated float multiplication; here powf or the same recurrence, within float rounding).
  bool (*rope)(float* x, int n_tok, int n_head, int head_dim, int n_rot, const int32_t* d_pos0, float theta_scale,
               float freq_scale, const float* freq_factors, cudaStream_t s) = nullptr;
  // gate[i] = silu(gate[i]) * up[i], i < n
  bool (*swiglu)(float* gate, const float* up, int64_t n, cudaStream_t s) = nullptr;
  // y[i] += x[i], i < n
  bool (*add)(float* y, const float* x, int64_t n, cudaStream_t s) = nullptr;

  // ---- Q4_0 / Q8_0 repacked at load time (matvec_soa.cu) ------------------------------------
  // dst = W in two planes (quants [n_rows][n_cols/32][16 or 32 bytes], then f16 scales
  // [n_rows][n_cols/32]); the same size as the GGUF rows; n_cols % 32 == 0, dst 16-byte aligned.
  bool (*repack_soa)(GGMLType type, const void* src, size_t row_bytes, int64_t n_cols, int64_t n_rows, void* dst,
                     cudaStream_t s) = nullptr;
  // x rows -> the q8s activation format (int8 quants [n], then per block of 32 a float scale and an
  // int32 quant sum), n % 128 == 0; q8s_row_bytes(n) = n + n/4 bytes per row.
  bool (*quantize_q8s)(const float* x, int64_t n, int64_t n_tok, void* xq, cudaStream_t s) = nullptr;
  // rms_norm (as above) whose output rows are also quantized to q8s at xq: one pass.
  bool (*rms_norm_q8s)(const float* x, const float* w, float* out, int64_t n, int64_t n_tok, float eps, void* xq,
                       cudaStream_t s) = nullptr;
  // Up to 3 repacked matrices of one type and width n_cols (n_cols % 128 == 0) against the same q8s
  // activations in one launch: y (+)= W x for each. swiglu (2 jobs, gate then up, same n_rows):
  // jobs[0].y = silu(W_gate x) * (W_up x) instead, jobs[1].y untouched.
  bool (*mul_mat_vec_soa)(GGMLType type, const SoaJob* jobs, int n_jobs, int64_t n_cols, const void* xq, int n_tok,
                          bool accumulate, bool swiglu, cudaStream_t s) = nullptr;
  // dequantize_f16 and get_rows of a repacked matrix of n_all_rows rows
  bool (*dequantize_soa_f16)(GGMLType type, const void* w, int64_t n_cols, int64_t n_all_rows, int64_t r0,
                             int64_t n_rows, void* dst_f16, cudaStream_t s) = nullptr;
  bool (*get_rows_soa)(GGMLType type, const void* w, int64_t n_cols, int64_t n_all_rows, const int32_t* ids, int n,
                       float* out, cudaStream_t s) = nullptr;
  // dst[i] = f16 of x[i] rounded to the Q8_0 grid of its block of 32 (the CPU's activation
  // rounding for the legacy formats), i < n, n % 32 == 0: the prefill GEMM's input for them.
  bool (*act_q8_grid_f16)(const float* x, int64_t n, void* dst_f16, cudaStream_t s) = nullptr;

  // ---- the f16 KV cache (kv_f16.cu, attention_decode.cu, attention_prefill.cu) -------------
  // One layer's cache: K and V each [n_head_kv][n_ctx][head_dim] f16 (head g's rows contiguous).
  // Store n_tok new tokens at positions *d_pos0 .. *d_pos0 + n_tok - 1: k, v: [n_tok][n_head_kv][head_dim]
  // float, rounded to f16 (nearest even).
  bool (*kv_store_f16)(const float* k, const float* v, int n_tok, int n_head_kv, int head_dim, int n_ctx,
                       const int32_t* d_pos0, void* cache_k, void* cache_v, cudaStream_t s) = nullptr;
  // Causal attention of n_tok queries at positions *d_pos0 + t over the cache (query t sees
  // tokens [0, *d_pos0 + t]); q, out: [n_tok][n_head][head_dim] float (q after RoPE, unscaled;
  // scores scaled by 1/sqrt(head_dim)); query head h reads KV head h / (n_head / n_head_kv).
  // Decode (n_tok small): split across the cache in n_split parts of the positions (flash-
  // decoding), all query heads of a KV group in one thread block, partial results combined with
  // their log-sum-exp; `work` holds attention_decode_work_bytes(...) bytes. head_dim in {64, 128}
  // at least (others: return false).
  bool (*attention_decode_f16)(const float* q, int n_tok, int n_head, int n_head_kv, int head_dim, int n_ctx,
                               const int32_t* d_pos0, const void* cache_k, const void* cache_v, int n_split,
                               void* work, float* out, cudaStream_t s) = nullptr;
  size_t (*attention_decode_work_bytes)(int n_tok, int n_head, int head_dim, int n_split) = nullptr;
  // Prefill (any n_tok): tensor-core flash attention over the same cache and positions. pos0 is
  // also passed on the host (prefill is never captured in a graph) to size the grid.
  bool (*attention_prefill_f16)(const float* q, int n_tok, int n_head, int n_head_kv, int head_dim, int n_ctx,
                                int pos0, const void* cache_k, const void* cache_v, float* out,
                                cudaStream_t s) = nullptr;

  // ---- the compressed KV caches (kv_codes.cu, attention_decode_codes.cu) --------------------
  // Layouts and contracts: KVCodesLayer below. Rotation Π per (layer, KV head) is the randomized
  // Hadamard of kernels/turboquant.h: y = D2 H D1 x / sqrt(d), `signs` [n_head_kv][2][head_dim]
  // float ±1 (D1 then D2) of the layer; rs = 1/sqrtf(head_dim) as the CPU computes it. Every
  // operation is the CPU reference's (same adds, same products), so rotated rows are its bits.
  // x, y: [n_tok][n_head][head_dim] float; head h uses KV head h / (n_head / n_head_kv)'s
  // rotation; inverse: x = Πᵀ y. y may alias x. head_dim in {64, 128}.
  bool (*kv_rotate)(const float* x, float* y, int n_tok, int n_head, int n_head_kv, int head_dim, const float* signs,
                    float rs, bool inverse, cudaStream_t s) = nullptr;
  // Appends n_tok tokens at positions *d_pos0 + t to one layer of a compressed cache: every row
  // (non-finite values set to 0) rotated, then stored as the layer's mode does (KVCodesLayer).
  // k, v: [n_tok][n_head_kv][head_dim] float. scratch_k/v (may be null): the f16 rotated rows
  // also go to [n_head_kv][n_ctx][head_dim] at their position (turbo prefill; q modes ignore).
  bool (*kv_append_codes)(const KVCodesLayer& L, const float* k, const float* v, int n_tok,
                          const int32_t* d_pos0, const float* signs, float rs, void* scratch_k, void* scratch_v,
                          cudaStream_t s) = nullptr;
  // scratch_k/v [n_head_kv][n_ctx][head_dim] f16 rows p_lo..p_hi-1 from the cache, rotated basis:
  // from_codes: q rows or turbo codes decoded (positions >= sinks for turbo); else the exact
  // rows (turbo sinks for p < sinks, ring slots otherwise). Host positions: prefill only.
  bool (*kv_fill_f16)(const KVCodesLayer& L, int p_lo, int p_hi, bool from_codes, void* scratch_k,
                      void* scratch_v, cudaStream_t s) = nullptr;
  // Decode attention over the codes (flash-decoding as attention_decode_f16, same work layout
  // and split semantics): qrot [n_tok][n_head][head_dim] already rotated (unscaled); out in the
  // rotated basis. Sealed turbo rows: a turbo query at position p reads rows [sinks, sinks +
  // nsealed(p+1) * block) from the codes, the rest exact (spec section 2's sealing rule).
  bool (*attention_decode_codes)(const KVCodesLayer& L, const float* qrot, int n_tok, int n_head,
                                 const int32_t* d_pos0, int n_split, void* work, float* out, cudaStream_t s) = nullptr;
};

// One layer of a compressed cache on the device (engine/cuda/kv_cache_cuda_codes.cpp allocates it).
// Token t of the sequence sits at position t; per KV head g:
//  mode q8_0 / q4_0 (every token quantized at append, llama.cpp's blocks of 32 values with an f16
//   scale and its rounding, held as two planes for 128-bit loads):
//   k_codes, v_codes  [n_head_kv][n_ctx][qbytes]  q8_0: head_dim int8; q4_0: head_dim/2 bytes, per
//                     block of 32 the block's 16 bytes as llama.cpp (value j low nibble, j+16 high)
//   k_scale, v_scale  [n_head_kv][n_ctx][head_dim/32] f16 block scales
//  mode turbo (sinks and a ring of recent tokens exact, older tokens TurboQuant codes):
//   k_sinks, v_sinks  [n_head_kv][sinks][head_dim] f16, positions < sinks
//   k_ring, v_ring    [n_head_kv][ring_slots][head_dim] f16, position p >= sinks in slot (p - sinks) % ring_slots
//   k_codes, v_codes  [n_head_kv][n_ctx - sinks][code bytes] packed bits-bit Lloyd–Max indices
//                     (kernels/turboquant.h put_bits order), written at append for every p >= sinks
//   k_scale, v_scale  [n_head_kv][n_ctx - sinks] f16 stored norms (norm correction as on the CPU)
//   k_cb, v_cb        device [2^bits] centroids then [2^bits - 1] thresholds (units of 1/sqrt(d))
//   a query at position p reads rows [sinks, sinks + nsealed * block) from the codes, nsealed =
//   m >= window + block ? (m - window) / block : 0 with m = p + 1 - sinks (the CPU's sealing rule).
struct KVCodesLayer {
  enum Mode : int { q8_0 = 0, q4_0 = 1, turbo = 2 };
  int mode = q8_0;
  int n_head_kv = 0, head_dim = 0, n_ctx = 0;
  void *k_codes = nullptr, *v_codes = nullptr;
  uint16_t *k_scale = nullptr, *v_scale = nullptr;
  uint16_t *k_sinks = nullptr, *v_sinks = nullptr, *k_ring = nullptr, *v_ring = nullptr;
  const float *k_cb = nullptr, *v_cb = nullptr;
  int sinks = 0, ring_slots = 1, block = 1, window = 0;
  int k_bits = 0, v_bits = 0;
  bool norm_correction = true;
};

// The table, built on first use from the register_* functions below (one per .cu file).
const CudaKernels& cuda_kernels();

void register_quantize(CudaKernels& t);
void register_matvec(CudaKernels& t);
void register_matvec_soa(CudaKernels& t);
void register_dequantize(CudaKernels& t);
void register_gemm(CudaKernels& t);
void register_norm(CudaKernels& t);
void register_rope(CudaKernels& t);
void register_swiglu(CudaKernels& t);
void register_add(CudaKernels& t);
void register_kv_f16(CudaKernels& t);
void register_attention_decode(CudaKernels& t);
void register_attention_prefill(CudaKernels& t);
void register_kv_codes(CudaKernels& t);
void register_attention_decode_codes(CudaKernels& t);

}  // namespace eoq::cuda
