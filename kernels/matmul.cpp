#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "engine/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/quant_dot.h"

namespace eoq {

namespace {

// Rows per vec_dot call: about kTileBytes of weights, so that they stay in L1/L2 while the
// kernel runs the tokens through them (a multiple of 4, the micro-tiles' row counts divide it).
constexpr size_t kTileBytes = 24 * 1024;
constexpr int64_t kMaxTileRows = 64;
// Tokens per work item in prefill: the activations of one item stay in L2.
constexpr int64_t kTokenBlock = 128;

int64_t tile_rows(size_t row_bytes) {
  const int64_t r = (int64_t)(kTileBytes / std::max<size_t>(row_bytes, 1));
  return std::max<int64_t>(4, std::min<int64_t>(kMaxTileRows, r / 4 * 4));
}

}  // namespace

void matmul(const WeightView& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool, int64_t ldy) {
  if (ldy == 0) ldy = w.n_rows;
  if (n_tok <= 0 || w.n_rows <= 0) return;
  const CpuKernels& k = cpu_kernels();
  const GGMLType act = vec_dot_type(w.type);

  // 1. Each token's activations in the weight type's vec_dot_type, once per call (F32 weights
  //    read x as is). The buffer belongs to the calling thread and only grows.
  const void* a = x;
  size_t a_stride = (size_t)w.n_cols * sizeof(float);
  if (act != GGMLType::F32) {
    a_stride = act_row_bytes(act, w.n_cols);
    thread_local std::vector<uint8_t> abuf;
    if (abuf.size() < a_stride * (size_t)n_tok) abuf.resize(a_stride * (size_t)n_tok);
    uint8_t* ab = abuf.data();
    auto quantize = [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; t++) k.quantize_act(act, x + t * w.n_cols, ab + (size_t)t * a_stride, w.n_cols);
    };
    // One token (decode) is far cheaper than a fork-join; several are spread over the pool.
    if (n_tok == 1) quantize(0, 1, 0);
    else pool.parallel_for(n_tok, quantize);
    a = ab;
  }

  // 2. Work items of (a row tile, a block of tokens), handed out through an atomic counter rather
  //    than split evenly up front, so that a thread the OS pauses (a busy machine) does not hold
  //    up the others. Each item runs its tokens through its rows, which stay in cache. Results do
  //    not depend on which thread takes an item (kernels.h: each y is independent of the tiling).
  const int64_t rt = tile_rows(w.row_bytes);
  const int64_t n_rt = (w.n_rows + rt - 1) / rt, n_tb = (n_tok + kTokenBlock - 1) / kTokenBlock;
  const int64_t n_items = n_rt * n_tb;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t, int) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n_items;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t r = (i % n_rt) * rt, t = (i / n_rt) * kTokenBlock;
      k.vec_dot(w.type, w.n_cols, w.data + (size_t)r * w.row_bytes, w.row_bytes, (int)std::min(rt, w.n_rows - r),
                static_cast<const uint8_t*>(a) + (size_t)t * a_stride, a_stride, (int)std::min(kTokenBlock, n_tok - t),
                y + t * ldy + r, ldy);
    }
  };
  pool.parallel_for(std::min<int64_t>(pool.size(), n_items), work);
}

}  // namespace eoq
