#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/quant_dot.h"

namespace eoq {

namespace {

// Rows per vec_dot call (a multiple of 4: the micro-tiles' row counts divide it).
//
// Decode (one token): the weights stream once; each item (vec_dot call) also prepares the
// token's activation row for its rows (the VNNI kernels' per-block offsets and scales), so items
// hold up to kDecodeTileBytes of rows, but no fewer than kDecodeMinBytes and otherwise small
// enough for kDecodeItemsPerThread items per thread (the threads then finish together). One
// 2048x8192 matrix at 2 threads, 24 -> 64 KiB: Q8_0 +7-10%, Q4_0 +0-8%, Q4_K +0-2%.
//
// Prompt batches: the kernel walks the item's tokens in groups of four (outer) and its rows in
// micro-tiles (inner), copying each token group's activations into its own layout once per
// call. That copy, and the activation stream, are paid once per group for all the item's rows,
// so an item needs many rows: with 24 KiB of rows (4 rows of an 8192-column Q4_0 matrix, the 1B
// model's ffn_down) the copy cost as much as the products and the 128-token activation panel
// (1.1 MB) was re-read from L3 for every 4 rows (measured, one thread: 55 GMAC/s there against
// 78 at 2048 columns; 85 with the rows below). So an item holds about kPanelBytes of rows, which
// stay in L2 (1-2 MiB per core on current x86) while its token groups pass, and kTokenBlock
// tokens; rows are cut smaller only when a matrix would otherwise give the pool too few items.
constexpr size_t kDecodeTileBytes = 64 * 1024, kDecodeMinBytes = 24 * 1024;
constexpr int64_t kDecodeMaxRows = 256, kDecodeItemsPerThread = 8;
constexpr size_t kPanelBytes = 256 * 1024;
constexpr int64_t kPanelMaxRows = 256, kPanelMinRows = 16;
constexpr int64_t kTokenBlock = 64;
constexpr int64_t kItemsPerThread = 4;  // at least this many prompt items per thread, if rows allow

int64_t round4(int64_t r, int64_t lo, int64_t hi) { return std::max<int64_t>(lo, std::min<int64_t>(hi, r / 4 * 4)); }

int64_t tile_rows(const WeightView& w, int64_t n_tok, int n_threads) {
  const int64_t rb = (int64_t)std::max<size_t>(w.row_bytes, 1);
  if (n_tok == 1) {
    const int64_t most = round4((int64_t)kDecodeTileBytes / rb, 4, kDecodeMaxRows);
    const int64_t least = round4((int64_t)kDecodeMinBytes / rb, 4, most);
    return std::max(least, std::min(most, round4(w.n_rows / (kDecodeItemsPerThread * n_threads), 4, most)));
  }
  int64_t r = round4((int64_t)kPanelBytes / rb, 4, kPanelMaxRows);
  const int64_t n_tb = (n_tok + kTokenBlock - 1) / kTokenBlock;
  const int64_t want_tiles = (kItemsPerThread * n_threads + n_tb - 1) / n_tb;  // row tiles for enough items
  if (want_tiles > 1) r = std::min(r, round4((w.n_rows + want_tiles - 1) / want_tiles + 3, kPanelMinRows, kPanelMaxRows));
  return std::max<int64_t>(4, r);
}

}  // namespace

void matmul(const WeightView& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool, int64_t ldy) {
  const MatmulJob job{&w, y, ldy};
  matmul_group(&job, 1, x, n_tok, pool);
}

void matmul_group(const MatmulJob* jobs, int n_jobs, const float* x, int64_t n_tok, ThreadPool& pool) {
  if (n_tok <= 0 || n_jobs <= 0) return;
  const CpuKernels& k = cpu_kernels();
  constexpr int kMaxJobs = 8;
  if (n_jobs > kMaxJobs) {
    for (int j = 0; j < n_jobs; j += kMaxJobs) matmul_group(jobs + j, std::min(kMaxJobs, n_jobs - j), x, n_tok, pool);
    return;
  }

  // 1. Each token's activations in each job's vec_dot_type, once per call and type (F32 weights
  //    read x as is). The buffers belong to the calling thread and only grow.
  struct Act {
    const void* a;
    size_t stride;
  } acts[kMaxJobs];
  thread_local std::vector<uint8_t> abuf[kMaxJobs];
  for (int j = 0; j < n_jobs; j++) {
    const WeightView& w = *jobs[j].w;
    const GGMLType act = vec_dot_type(w.type);
    acts[j] = {x, (size_t)w.n_cols * sizeof(float)};
    if (act == GGMLType::F32) continue;
    int same = -1;  // an earlier job with the same activation format
    for (int i = 0; i < j && same < 0; i++)
      if (vec_dot_type(jobs[i].w->type) == act && jobs[i].w->n_cols == w.n_cols) same = i;
    if (same >= 0) {
      acts[j] = acts[same];
      continue;
    }
    const size_t stride = act_row_bytes(act, w.n_cols);
    if (abuf[j].size() < stride * (size_t)n_tok) abuf[j].resize(stride * (size_t)n_tok);
    uint8_t* ab = abuf[j].data();
    auto quantize = [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; t++) k.quantize_act(act, x + t * w.n_cols, ab + (size_t)t * stride, w.n_cols);
    };
    // One token (decode) is far cheaper than a fork-join; several are spread over the pool.
    if (n_tok == 1) quantize(0, 1, 0);
    else pool.parallel_for(n_tok, quantize);
    acts[j] = {ab, stride};
  }

  // 2. Work items of (a row tile, a block of tokens) of every job, handed out through an atomic
  //    counter rather than split evenly up front, so that a thread the OS pauses (a busy machine)
  //    does not hold up the others, and the matrices of a group cost one fork-join. Each item
  //    runs its tokens through its rows, which stay in cache. Results do not depend on which
  //    thread takes an item (kernels.h: each y is independent of the tiling).
  int64_t first[kMaxJobs + 1], rts[kMaxJobs], n_rts[kMaxJobs];
  first[0] = 0;
  const int64_t n_tb = (n_tok + kTokenBlock - 1) / kTokenBlock;
  for (int j = 0; j < n_jobs; j++) {
    rts[j] = tile_rows(*jobs[j].w, n_tok, pool.size());
    n_rts[j] = (jobs[j].w->n_rows + rts[j] - 1) / rts[j];
    first[j + 1] = first[j] + n_rts[j] * n_tb;
  }
  const int64_t n_items = first[n_jobs];
  if (n_items == 0) return;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t, int) {
    int j = 0;
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n_items;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      while (i >= first[j + 1]) j++;
      const WeightView& w = *jobs[j].w;
      const int64_t ldy = jobs[j].ldy ? jobs[j].ldy : w.n_rows, li = i - first[j];
      const int64_t r = (li % n_rts[j]) * rts[j], t = (li / n_rts[j]) * kTokenBlock;
      k.vec_dot(w.type, w.n_cols, w.data + (size_t)r * w.row_bytes, w.row_bytes, (int)std::min(rts[j], w.n_rows - r),
                static_cast<const uint8_t*>(acts[j].a) + (size_t)t * acts[j].stride, acts[j].stride,
                (int)std::min(kTokenBlock, n_tok - t), jobs[j].y + t * ldy + r, ldy);
    }
  };
  pool.parallel_for(std::min<int64_t>(pool.size(), n_items), work);
}

}  // namespace eoq
