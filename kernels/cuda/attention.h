// Host-side helpers for the f16-cache attention launchers (CudaKernels::attention_decode_f16 and
// attention_prefill_f16, kernels/cuda/cuda_kernels.h). Plain C++ header: the CUDA backend (g++ with
// the CUDA runtime headers) includes it; defined in kernels/cuda/attention_decode.cu.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

namespace eoq::cuda {

// The n_split to pass to attention_decode_f16 for a decode step whose sequences hold at most
// len_bucket cached positions (the backend's context-length bucket: one captured graph per bucket).
//  * the grid (n_tok, n_split, n_head_kv) wants about 6 blocks per SM: the decode kernel keeps 2 or
//    3 blocks resident per SM (64 KB of shared memory, ~128 threads each), so 6 * n_sm blocks are
//    2 or 3 full waves of equal-length blocks (on 132 SMs with 8 KV heads: n_split = 99, 792 blocks);
//  * each block should stream at least 256 positions, so that its fixed costs (query loads, the
//    warp and block merges, the partial it writes, the combine's reads) stay small against its
//    K/V traffic; short contexts therefore use fewer splits (len_bucket 4096: 16 splits).
// n_sm <= 0: the multiprocessor count of the current device (132 on the H200 if it cannot be read).
// Always >= 1.
int attention_decode_splits(int n_head_kv, int len_bucket, int n_sm = 0);

// The decode attention's second pass (shared by the f16 and the compressed caches): for each of
// n_rows = n_tok * n_head rows, out[row][0..head_dim) = Σ_s 2^(m_s - M) acc_s / Σ_s 2^(m_s - M) sum_s
// over the row's non-empty partials (log2-domain maxima), work as attention_decode_work_bytes
// lays it out: acc [n_rows][n_split][head_dim], then (max, sum) [n_rows][n_split][2].
// head_dim % 4 == 0 and head_dim / 4 dividing 256; 16-byte aligned pointers.
bool attention_decode_combine(const void* work, int64_t n_rows, int n_split, int head_dim, float* out, cudaStream_t s);

}  // namespace eoq::cuda
