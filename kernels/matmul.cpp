#include "kernels/matmul.h"

#include <algorithm>
#include <vector>

#include "engine/thread_pool.h"
#include "kernels/kernels.h"

namespace eoq {

void matmul(const WeightView& w, const float* x, int64_t n_tok, float* y, ThreadPool& pool, int64_t ldy) {
  if (ldy == 0) ldy = w.n_rows;
  const CpuKernels& k = cpu_kernels();
  // Tile: dequantize kTile rows once, then dot them against every token. Keeps X traffic
  // at n_rows/kTile passes and the tile (kTile × n_cols floats) in L1/L2.
  constexpr int64_t kTile = 16;
  pool.parallel_for(
      w.n_rows,
      [&](int64_t r0, int64_t r1, int) {
        thread_local std::vector<float> buf;
        buf.resize((size_t)(kTile * w.n_cols));
        for (int64_t rt = r0; rt < r1; rt += kTile) {
          const int64_t nr = std::min(kTile, r1 - rt);
          for (int64_t r = 0; r < nr; r++)
            k.dequantize_row(w.type, w.data + (size_t)(rt + r) * w.row_bytes, buf.data() + r * w.n_cols, w.n_cols);
          for (int64_t t = 0; t < n_tok; t++) {
            const float* xt = x + t * w.n_cols;
            float* yt = y + t * ldy + rt;
            for (int64_t r = 0; r < nr; r++) yt[r] = k.dot_f32(buf.data() + r * w.n_cols, xt, w.n_cols);
          }
        }
      },
      kTile);
}

}  // namespace eoq
