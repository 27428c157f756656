// The compressed KV caches (../shared/spec/kv-compression.md sections 2, 5–8):
//   q8_0, q4_0   every token quantized at append into llama.cpp-style 32-value blocks with an f16
//                scale, in the rotated basis;
//   turbo2/3/4   sinks and a ring of recent tokens exact (f16), older tokens sealed in blocks of
//                TurboQuant codes (r = 0);
//   eoq2/3/4     the same, with an eOptShrink low-rank part per sealed block (engine/eoptshrink.h).
// Everything is stored in a per-(layer, KV head) rotated basis (kernels/turboquant.h Rotation):
// keys and values are rotated on append, queries once per step, the output un-rotated once per
// step. Attention reads the codes directly (scores through the factors and per-coordinate
// codebook look-ups, values through Ĉᵀw and weighted codebook sums) with an online softmax over
// sinks, blocks and ring; K and V are never rebuilt. The inner loops are kernels.h entries
// (scores_codes / values_codes straight from the packed codes, scores_f16 / values_f16 for exact
// rows, softmax_exp, max_f32), scalar references in kernels/ref/vec.cpp, AVX2 versions in
// kernels/cpu/avx2_codes.cpp, AVX-512 ones in kernels/cpu/avx512_codes.cpp.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/eoptshrink.h"
#include "base/error.h"
#include "engine/kv_cache.h"
#include "base/thread_pool.h"
#include "base/fp16.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "kernels/turboquant.h"

namespace eoq {

namespace {

constexpr int QK = 32;  // values per q8_0 / q4_0 block

enum class Family { qblock, turbo, eoq };

// q4_0 as llama.cpp lays it out, per 32 values: f16 scale d, then 16 bytes; byte j holds value
// j in its low nibble and value j + 16 in its high nibble, each as q in 0..15 with x ≈ (q − 8)·d.
// d = m / −8 for the value m of largest magnitude (so m maps to q = 0 exactly), and
// q = min(15, trunc(x/d + 8.5)).
void quantize_row_q4_0(const float* x, uint8_t* dst, int n) {
  for (int b = 0; b < n / QK; b++) {
    const float* xb = x + b * QK;
    float amax = 0, m = 0;
    for (int j = 0; j < QK; j++)
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        m = xb[j];
      }
    const float d = m / -8.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    uint8_t* o = dst + b * 18;
    const uint16_t dh = fp32_to_fp16(d);
    std::memcpy(o, &dh, 2);
    for (int j = 0; j < QK / 2; j++) {
      const int q0 = std::min(15, (int)(xb[j] * id + 8.5f));
      const int q1 = std::min(15, (int)(xb[j + QK / 2] * id + 8.5f));
      o[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

// Signed integer value i (0..31) of a q block row and its block scale.
struct QRowView {
  bool q4;
  int bytes_per_block() const { return q4 ? 18 : 34; }
  float scale(const uint8_t* blk) const {
    uint16_t h;
    std::memcpy(&h, blk, 2);
    return fp16_to_fp32(h);
  }
  int value(const uint8_t* blk, int i) const {
    if (!q4) return (int8_t)blk[2 + i];
    const uint8_t byte = blk[2 + (i & 15)];
    return (int)((i < 16 ? byte & 0xf : byte >> 4)) - 8;
  }
};

// Per sealed block, what the statistics need.
struct BlockStat {
  int rank_raw = 0, rank = 0;
  float rel_err = 0, ms = 0, lowrank_energy = 0;
  SealFallback fallback = SealFallback::none;
  std::vector<float> gains;
};

// One of K or V of one (layer, KV head). Token order: sinks, then blocks, then ring (or, in
// q modes, all tokens in qrows).
struct Stream {
  std::vector<uint16_t> sinks;  // [n_sinks][d] f16
  std::vector<SealedBlock> blocks;
  std::vector<BlockStat> bstats;
  std::vector<uint16_t> ring;     // [ring_n][d] f16
  std::vector<uint8_t> ring_bad;  // [ring_n] 1 if the token had non-finite values (zeroed)
  std::vector<uint8_t> qrows;     // q modes: [n][row_bytes]
  // Tail codes (tail_bits > 0): tokens after the sinks, from index tail_base on (indices count
  // after the sinks), as TurboQuant codes [rows][tail code bytes] and f16 norms: every token not
  // sealed, and those of the blocks the latest append sealed (its earlier queries read them as
  // tail). `ring` then holds exact rows from index ring_base on only: the window of the latest
  // append's queries (and of the next one). `sealed` = tokens in blocks.
  std::vector<uint8_t> tcodes;
  std::vector<uint16_t> tnorms;
  int64_t tail_base = 0, ring_base = 0, sealed = 0;
  bool coded = false;  // tail codes kept (from the first seal on; before it the tail is f16 rows)
  // Exact f16 rows of the blocks sealed by the latest append(), [recent_n][d], from block
  // recent_first on: a batch's queries attend to them as the decode step at their position
  // would (where those blocks were not sealed yet). Dropped at the next append().
  std::vector<uint16_t> recent;
  size_t recent_first = 0;
  int64_t nonfinite = 0;          // non-finite input values replaced by 0
  void clear() { *this = Stream(); }
};

struct HeadStore {
  Rotation rot;
  bool tail = false;  // its layer keeps unsealed tokens as tail codes
  Stream s[2];        // 0 = K, 1 = V
};

std::string jnum(double x) {
  if (!std::isfinite(x)) return "null";
  std::ostringstream o;
  o.precision(9);
  o << x;
  return o.str();
}

template <typename T>
std::string jarr(const std::vector<T>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); i++) s += (i ? ", " : "") + jnum((double)v[i]);
  return s + "]";
}

class CompressedKVCache final : public HostKVCache {
 public:
  CompressedKVCache(const KVCacheParams& p, const KVCacheShape& s) : p_(p) {
    shape_ = s;
    const int d = s.head_dim;
    const std::string& m = p.mode;
    int digit = 0;
    if (m == "q8_0" || m == "q4_0") {
      fam_ = Family::qblock;
      q4_ = m == "q4_0";
    } else if (m.size() == 6 && m.compare(0, 5, "turbo") == 0 && m[5] >= '2' && m[5] <= '4') {
      fam_ = Family::turbo;
      digit = m[5] - '0';
    } else if (m.size() == 4 && m.compare(0, 3, "eoq") == 0 && m[3] >= '2' && m[3] <= '4') {
      fam_ = Family::eoq;
      digit = m[3] - '0';
    } else if (m == "eoq") {  // the default operating point: eoq2 with kv_params.cpp's preset knobs
      fam_ = Family::eoq;
      digit = 2;
    } else {
      fail(ErrorCode::invalid_arg, "unknown KV cache mode '" + m +
                                       "' (known: f16, f32, q8_0, q4_0, turbo2, turbo3, turbo4, eoq, eoq2, eoq3, eoq4)");
    }
    auto bad = [&](const std::string& what) { fail(ErrorCode::invalid_arg, "KV cache mode " + m + ": " + what); };
    if (p.k_bits != -1 && (p.k_bits < 1 || p.k_bits > 8)) bad("k_bits must be in 1..8 (or -1 for the mode's default)");
    if (p.v_bits != -1 && (p.v_bits < 1 || p.v_bits > 8)) bad("v_bits must be in 1..8 (or -1 for the mode's default)");
    if (p.rank_cap < -1) bad("rank_cap must be >= 0 (or -1 for the default)");
    if (p.factor_bits != -1 && (p.factor_bits < 2 || p.factor_bits > 8)) bad("factor_bits must be in 2..8 (or -1: 4)");
    if (p.block != -1 && (p.block < 1 || p.block > 65535)) bad("block must be in 1..65535 (or -1)");
    if (p.ring < -1) bad("ring must be >= 0 (or -1 for the default)");
    if (p.sinks < 0) bad("sinks must be >= 0");
    if (p.boundary_layers < 0) bad("boundary_layers must be >= 0");
    if (p.boundary_bits < 0 || p.boundary_bits > 8) bad("boundary_bits must be in 0..8 (0: f16)");
    if (p.v_rank_cap < -1) bad("v_rank_cap must be >= 0 (or -1: rank_cap)");
    if (p.norm_bits != -1 && p.norm_bits != 8 && p.norm_bits != 16) bad("norm_bits must be 8 or 16 (or -1: 16)");
    if (p.tail_bits != -1 && (p.tail_bits < 0 || p.tail_bits > 8)) bad("tail_bits must be in 0..8 (0: f16; or -1)");
    if (p.v_tail_bits != -1 && (p.v_tail_bits < 1 || p.v_tail_bits > 8)) bad("v_tail_bits must be in 1..8 (or -1: tail_bits)");
    if (p.v_tail_bits > 0 && p.tail_bits <= 0) bad("v_tail_bits needs tail_bits > 0");
    if (p.window < -1) bad("window must be >= 0 (or -1 for the default)");
    if (p.k_adapt < 0 || p.k_adapt > 1000) bad("k_adapt must be in 0..1000 (a relative error in 1/1000; 0: off)");
    if (fam_ == Family::qblock) {
      if (d % QK != 0) bad("head_dim " + std::to_string(d) + " is not a multiple of 32");
      if (p.k_bits != -1 || p.v_bits != -1 || p.rank_cap > 0 || p.v_rank_cap > 0 || p.boundary_bits != 0 ||
          p.norm_bits != -1 || p.tail_bits > 0 || p.v_tail_bits != -1 || p.window != -1 || p.k_adapt != 0)
        bad("k_bits, v_bits, rank_cap, v_rank_cap, boundary_bits, norm_bits, tail_bits, v_tail_bits, window and "
            "k_adapt apply to turbo/eoq modes");
      row_bytes_ = (size_t)(d / QK) * (q4_ ? 18 : 34);
    } else {
      if (d < 2) bad("head_dim must be >= 2");
      if (fam_ == Family::turbo && (p.rank_cap > 0 || p.v_rank_cap > 0))
        bad("rank_cap and v_rank_cap apply to eoq modes (turbo is r = 0)");
      if (fam_ == Family::eoq && d > 256) bad("head_dim > 256 is not supported by the Jacobi eigensolver");
      if (p.rank_cap > d || p.v_rank_cap > d) bad("rank_cap and v_rank_cap must be <= head_dim");
    }
    k_bits_ = p.k_bits > 0 ? p.k_bits : digit;
    v_bits_ = p.v_bits > 0 ? p.v_bits : digit;
    rank_cap_[0] = fam_ == Family::eoq ? (p.rank_cap >= 0 ? p.rank_cap : (d <= 64 ? 3 : 4)) : 0;
    rank_cap_[1] = fam_ == Family::eoq && p.v_rank_cap >= 0 ? p.v_rank_cap : rank_cap_[0];
    block_ = p.block > 0 ? p.block : (d < 128 ? 256 : 128);
    ring_ = p.ring >= 0 ? p.ring : block_;
    sinks_ = p.sinks;
    norm_bits_ = p.norm_bits > 0 ? p.norm_bits : 16;
    factor_bits_ = p.factor_bits > 0 ? p.factor_bits : 4;
    tail_bits_[0] = p.tail_bits > 0 ? p.tail_bits : 0;
    tail_bits_[1] = tail_bits_[0] > 0 && p.v_tail_bits > 0 ? p.v_tail_bits : tail_bits_[0];
    window_ = p.window >= 0 ? p.window : 16;
    for (int kv = 0; kv < 2; kv++)
      if (tail_bits_[kv] > 0) tail_codec_[kv] = TurboRowCodec(d, tail_bits_[kv]);
    if (fam_ != Family::qblock) {  // build the codebooks now, not inside an attention step
      // k_adapt seals some key blocks with k_bits − 1: attention reads those through cb_ as well.
      const int k_adapt_bits = p.k_adapt > 0 ? k_bits_ - 1 : 0;
      for (int b : {k_bits_, v_bits_, p.boundary_bits, tail_bits_[0], tail_bits_[1], k_adapt_bits})
        if (b > 0) cb_[b] = &lloyd_max_codebook(d, b);
    }
    heads_.resize((size_t)s.n_layer * s.n_head_kv);
    for (int il = 0; il < s.n_layer; il++)
      for (int g = 0; g < s.n_head_kv; g++) {
        head(il, g).rot = Rotation(d, mix_seed(p.seed, (uint64_t)il, (uint64_t)g));
        head(il, g).tail = tail_layer(il);
      }
    n_.assign(s.n_layer, 0);
    last_pos0_.assign(s.n_layer, 0);
  }

  std::string mode() const override { return p_.mode; }
  int n_tokens() const override { return n_.empty() ? 0 : n_[0]; }
  int truncate(int n) override;  // defined at the end of this file (prefix reuse)
  // State files: defined at the end of this file (the serializer block).
  void save_payload(std::vector<uint8_t>& out) const override;
  void load_payload(const uint8_t* data, size_t size, int n_tokens) override;

  void clear() override {
    for (auto& h : heads_) {
      h.s[0].clear();
      h.s[1].clear();
    }
    n_.assign(shape_.n_layer, 0);
    last_pos0_.assign(shape_.n_layer, 0);
  }

  bool boundary_layer(int il) const {
    return il < p_.boundary_layers || il >= shape_.n_layer - p_.boundary_layers;
  }
  // Boundary layers kept f16 (boundary_bits 0) are exact; otherwise they are sealed with more bits.
  bool exact_layer(int il) const { return boundary_layer(il) && p_.boundary_bits == 0; }
  // Layers whose unsealed tokens are kept as tail codes (exact layers keep every token f16).
  bool tail_layer(int il) const { return tail_bits_[0] > 0 && fam_ != Family::qblock && !exact_layer(il); }

  void append_rows(int il, int pos0, int n, const float* k, const float* v, ThreadPool& pool) override {
    const KVCacheShape& s = shape_;
    if (il < 0 || il >= s.n_layer) fail(ErrorCode::internal, "KV cache: layer out of range");
    if (pos0 != n_[il] || n < 0 || pos0 + n > s.n_ctx)
      fail(ErrorCode::internal, "KV cache: out-of-order or overflowing append");
    const int d = s.head_dim;
    const bool exact = exact_layer(il);
    const bool tail = tail_layer(il);
    // One work item per (KV head, K or V) stream: streams share nothing but the read-only
    // rotation, so sealing runs in parallel.
    pool.parallel_for(2 * s.n_head_kv, [&](int64_t i0, int64_t i1, int) {
    std::vector<float> row(d);
    for (int64_t item = i0; item < i1; item++) {
      const int g = (int)(item / 2), kv = (int)(item % 2);
      HeadStore& hs = head(il, g);
      {
        Stream& st = hs.s[kv];
        const float* src = kv == 0 ? k : v;
        std::vector<uint16_t>().swap(st.recent);  // free: only a batch that seals refills it
        st.recent_first = st.blocks.size();
        const TurboRowCodec& tcodec = tail_codec_[kv];
        const size_t tcb = tail ? tcodec.code_bytes() : 0;
        if (tail && st.coded) {  // drop what no query of this append (nor the dequantized view) reads
          const int64_t n_u = st.sealed + (int64_t)st.ring_bad.size();
          const int64_t ring_base = std::max(st.sealed, n_u - window_);
          st.ring.erase(st.ring.begin(), st.ring.begin() + (size_t)(ring_base - st.ring_base) * d);
          st.ring_base = ring_base;
          st.tcodes.erase(st.tcodes.begin(), st.tcodes.begin() + (size_t)(st.sealed - st.tail_base) * tcb);
          st.tnorms.erase(st.tnorms.begin(), st.tnorms.begin() + (size_t)(st.sealed - st.tail_base));
          st.tail_base = st.sealed;
        }
        for (int t = 0; t < n; t++) {
          const float* x = src + ((size_t)t * s.n_head_kv + g) * d;
          bool badrow = false;
          for (int i = 0; i < d; i++) {
            row[i] = x[i];
            if (!std::isfinite(row[i])) {  // never let NaN/inf reach attention
              row[i] = 0;
              badrow = true;
              st.nonfinite++;
            }
          }
          hs.rot.apply(row.data(), row.data());
          const int pos = pos0 + t;
          if (fam_ == Family::qblock && !exact) {
            const size_t off = st.qrows.size();
            st.qrows.resize(off + row_bytes_);
            if (q4_) quantize_row_q4_0(row.data(), st.qrows.data() + off, d);
            else quantize_row_q8_0_ref(row.data(), st.qrows.data() + off, d);
          } else {
            std::vector<uint16_t>& dst = pos < sinks_ ? st.sinks : st.ring;
            dst.resize(dst.size() + d);
            to_f16_row(row.data(), dst.data() + dst.size() - d, d);
            if (pos >= sinks_) st.ring_bad.push_back(badrow ? 1 : 0);
            if (pos >= sinks_ && tail && st.coded) code_tail_row(st, kv, st.ring.data() + st.ring.size() - d);
          }
          if (fam_ != Family::qblock && !exact)
            while ((int)st.ring_bad.size() >= ring_ + block_) tail ? seal_oldest_tail(st, kv, il) : seal_oldest(st, kv, il);
        }
      }
    }
    });
    n_[il] = pos0 + n;
    last_pos0_[il] = pos0;
  }

  // Work items are (query token, KV head): all G query heads of a KV head share one pass over
  // its data. Threads take items round-robin (a later query sees more tokens, so contiguous
  // ranges would leave the first thread idle). With few items (a decode step has n_head_kv of
  // them, 3 for SmolLM2, on 2+ threads), each item's visible tokens are also split into P parts
  // of equal length, each with its own online-softmax state (max, normaliser, accumulator),
  // merged at the end; so every thread is busy whatever n_head_kv is. Results equal the
  // one-pass ones up to float rounding.
  void attend_rows(int il, int pos0, int n, int n_head, const float* q, float* out, ThreadPool& pool) override {
    const KVCacheShape& s = shape_;
    if (n_head % s.n_head_kv != 0) fail(ErrorCode::internal, "KV cache: n_head is not a multiple of n_head_kv");
    const int G = n_head / s.n_head_kv, d = s.head_dim, hkv = s.n_head_kv;
    const uint64_t call = n > 1 ? next_call_id() : 0;
    const int64_t items = (int64_t)n * hkv;
    const int nt = pool.size();
    const int P = parts_per_item(items, nt, pos0 + n);
    if (P == 1) {
      pool.parallel_for(nt, [&](int64_t b, int64_t e, int) {
        thread_local Scratch w;
        for (int64_t k = b; k < e; k++) {
          for (int64_t item = k; item < items; item += nt) {
            const int t = (int)(item / hkv), g = (int)(item % hkv);
            const size_t off = ((size_t)t * n_head + (size_t)g * G) * d;
            const HeadStore& hs = head(il, g);
            begin_group(w, hs, G, q + off);
            attend_range(w, hs, G, 0, pos0 + t + 1, pos0 + t, sealed_at(il, pos0 + t), call);
            finish_group(w, hs, G, out + off);
          }
        }
      });
      return;
    }
    const size_t stride = (size_t)G * (d + 2);  // one part's state: mx[G], sum[G], acc[G][d]
    thread_local std::vector<float> parts_tl;  // the caller's; workers write through `parts`
    parts_tl.resize((size_t)items * P * stride);
    float* const parts = parts_tl.data();
    // Parts are taken from a shared counter rather than dealt out in advance: parts differ in
    // cost (the one holding the exact ring and partial block is slower per token).
    std::atomic<int64_t> next{0};
    pool.parallel_for(nt, [&](int64_t b, int64_t e, int) {
      thread_local Scratch w;
      for (int64_t k = b; k < e; k++) {
        for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < items * P;
             i = next.fetch_add(1, std::memory_order_relaxed)) {
          const int64_t item = i / P;
          const int p = (int)(i % P), t = (int)(item / hkv), g = (int)(item % hkv);
          const int n_vis = pos0 + t + 1;
          const HeadStore& hs = head(il, g);
          begin_group(w, hs, G, q + ((size_t)t * n_head + (size_t)g * G) * d);
          attend_range(w, hs, G, (int)((int64_t)n_vis * p / P), (int)((int64_t)n_vis * (p + 1) / P), pos0 + t,
                       sealed_at(il, pos0 + t), call);
          float* st = &parts[(size_t)i * stride];
          std::copy(w.mx.begin(), w.mx.end(), st);
          std::copy(w.sum.begin(), w.sum.end(), st + G);
          std::copy(w.acc.begin(), w.acc.end(), st + 2 * G);
        }
      }
    });
    std::vector<float> acc(d);
    for (int64_t item = 0; item < items; item++) {  // merge the parts, normalise, un-rotate
      const int t = (int)(item / hkv), g = (int)(item % hkv);
      const HeadStore& hs = head(il, g);
      for (int h = 0; h < G; h++) {
        const float* st0 = &parts[(size_t)item * P * stride];
        float mx = -std::numeric_limits<float>::infinity();
        for (int p = 0; p < P; p++) mx = std::max(mx, st0[p * stride + h]);
        std::fill(acc.begin(), acc.end(), 0.0f);
        float sum = 0;
        for (int p = 0; p < P; p++) {
          const float* st = st0 + p * stride;
          if (!(st[G + h] > 0)) continue;  // an empty part
          const float f = std::exp(st[h] - mx);
          sum += f * st[G + h];
          cpu_kernels().axpy_f32(f, st + 2 * G + (size_t)h * d, acc.data(), d);
        }
        const float inv = sum > 0 ? 1.0f / sum : 0.0f;
        for (int j = 0; j < d; j++) acc[j] *= inv;
        hs.rot.apply_t(acc.data(), out + ((size_t)t * n_head + (size_t)g * G + h) * d);
      }
    }
  }

  size_t bytes() const override {
    size_t b = 0;
    for (const auto& h : heads_)
      for (int kv = 0; kv < 2; kv++) b += stream_bytes(h.s[kv], kv, h.tail).total();
    return b;
  }

  double bits_per_entry() const override {
    const double entries = 2.0 * shape_.n_layer * shape_.n_head_kv * shape_.head_dim * n_tokens();
    if (entries == 0) return fam_ == Family::qblock ? (q4_ ? 4.5 : 8.5) : 16.0;
    return bytes() * 8.0 / entries;
  }

  std::string stats_json() const override;

  // Everything the cache holds for layer il, decoded and un-rotated: k, v [n][n_head_kv][d].
  void dequantized(int il, std::vector<float>& kout, std::vector<float>& vout) const {
    const KVCacheShape& s = shape_;
    const int d = s.head_dim, n = n_[il];
    kout.assign((size_t)n * s.n_head_kv * d, 0.0f);
    vout.assign((size_t)n * s.n_head_kv * d, 0.0f);
    std::vector<float> rows, tmp(d);
    for (int g = 0; g < s.n_head_kv; g++) {
      const HeadStore& hs = head(il, g);
      for (int kv = 0; kv < 2; kv++) {
        decode_stream(hs.s[kv], kv, hs.tail, rows);
        if ((int)(rows.size() / d) != n) fail(ErrorCode::internal, "KV cache: token count mismatch");
        std::vector<float>& o = kv == 0 ? kout : vout;
        for (int t = 0; t < n; t++) {
          hs.rot.apply_t(&rows[(size_t)t * d], tmp.data());
          std::copy(tmp.begin(), tmp.end(), &o[((size_t)t * s.n_head_kv + g) * d]);
        }
      }
    }
  }

 private:
  struct Bytes {
    size_t codes = 0, factors = 0, norms = 0, exact = 0, header = 0, qblocks = 0;
    size_t tail = 0;  // tail codes and their f16 norms (tail_bits > 0)
    size_t total() const { return codes + factors + norms + exact + header + qblocks + tail; }
  };

  // x[0..d) (finite) -> f16, saturated to ±65504 (no infinities in the exact rows), through the
  // kernels' F16 converter (clamped in place)
  static void to_f16_row(float* x, uint16_t* out, int d) {
    for (int i = 0; i < d; i++) x[i] = std::min(std::max(x[i], -65504.0f), 65504.0f);
    cpu_kernels().quantize_act(GGMLType::F16, x, out, d);
  }

  HeadStore& head(int il, int g) { return heads_[(size_t)il * shape_.n_head_kv + g]; }
  const HeadStore& head(int il, int g) const { return heads_[(size_t)il * shape_.n_head_kv + g]; }

  Bytes stream_bytes(const Stream& st, int kv, bool tail) const {
    Bytes b;
    b.exact = 2 * (st.sinks.size() + st.ring.size());
    b.qblocks = st.qrows.size();
    if (tail && st.coded) {  // tail codes: what stays between appends
      const int d = shape_.head_dim;
      const int64_t unsealed = (int64_t)st.ring_bad.size();
      b.exact = 2 * (st.sinks.size() + (size_t)std::min<int64_t>(window_, unsealed) * d);
      b.tail = (size_t)unsealed * (tail_codec_[kv].code_bytes() + 2);
    }
    for (const SealedBlock& blk : st.blocks) {
      b.header += SealedBlock::kHeaderBytes;
      b.codes += blk.codes.size();
      b.norms += 2 * blk.norms.size() + blk.norm_codes.size();
      b.factors += blk.coef_codes.size() + blk.basis_codes.size() +
                   2 * (blk.coef_scale.size() + blk.basis_scale.size() + blk.gains.size());
      b.exact += 2 * blk.exact_f16.size();
    }
    return b;
  }

  // f16 tail: the oldest block_ ring rows are sealed and move to `recent` for this append's
  // queries.
  void seal_oldest(Stream& st, int kv, int il) {
    const int d = shape_.head_dim;
    std::vector<float> X((size_t)block_ * d);
    cpu_kernels().dequantize_row(GGMLType::F16, st.ring.data(), X.data(), (int64_t)X.size());
    seal_rows(st, kv, il, X.data());
    st.recent.insert(st.recent.end(), st.ring.begin(), st.ring.begin() + (size_t)block_ * d);
    st.ring.erase(st.ring.begin(), st.ring.begin() + (size_t)block_ * d);
    st.ring_bad.erase(st.ring_bad.begin(), st.ring_bad.begin() + block_);
    st.sealed += block_;
  }

  // Appends the tail code of one f16 row (codes are taken from the f16 rows, so they can be made
  // later from the rows alone: the first seal codes the tail it finds).
  void code_tail_row(Stream& st, int kv, const uint16_t* row16) const {
    const int d = shape_.head_dim;
    thread_local std::vector<float> x;
    x.resize(d);
    for (int j = 0; j < d; j++) x[j] = fp16_to_fp32(row16[j]);
    const TurboRowCodec& tcodec = tail_codec_[kv];
    const size_t tcb = tcodec.code_bytes();
    st.tcodes.resize(st.tcodes.size() + tcb, 0);
    st.tnorms.push_back(tcodec.encode(x.data(), st.tcodes.data() + st.tcodes.size() - tcb, p_.norm_correction));
  }

  // Tail codes: the oldest block_ unsealed tokens are sealed from their decoded codes (what the
  // cache kept); their codes and exact rows stay until the next append. Until the first seal the
  // tail is f16 rows only (short contexts stay exact); the first seal codes them all.
  void seal_oldest_tail(Stream& st, int kv, int il) {
    const int d = shape_.head_dim;
    if (!st.coded) {
      st.tcodes.clear();
      st.tnorms.clear();
      st.tail_base = st.sealed;
      for (size_t u = (size_t)(st.sealed - st.ring_base); u < st.ring.size() / d; u++)
        code_tail_row(st, kv, st.ring.data() + u * d);
      st.coded = true;
    }
    const TurboRowCodec& tcodec = tail_codec_[kv];
    const size_t tcb = tcodec.code_bytes();
    std::vector<float> X((size_t)block_ * d);
    const int64_t first = st.sealed - st.tail_base;
    for (int t = 0; t < block_; t++)
      tcodec.decode(st.tcodes.data() + (size_t)(first + t) * tcb, st.tnorms[(size_t)(first + t)], &X[(size_t)t * d]);
    seal_rows(st, kv, il, X.data());
    st.ring_bad.erase(st.ring_bad.begin(), st.ring_bad.begin() + block_);
    st.sealed += block_;
  }

  // Seals X [block_][d] (the stream's oldest unsealed tokens) as its next block.
  void seal_rows(Stream& st, int kv, int il, const float* X) {
    const int d = shape_.head_dim;
    bool had_bad = false;
    for (int t = 0; t < block_; t++) had_bad |= st.ring_bad[t] != 0;
    SealParams sp;
    sp.bits = boundary_layer(il) ? p_.boundary_bits : kv == 0 ? k_bits_ : v_bits_;
    sp.rank_cap = rank_cap_[kv];
    sp.factor_bits = factor_bits_;
    sp.shrink = p_.shrink;
    sp.norm_correction = p_.norm_correction;
    sp.norm_bits = norm_bits_;
    // Tokens whose non-finite values were zeroed at append: the block keeps an exact copy
    // (spec: degenerate blocks fall back to exact f16) and the stats count it.
    sp.nonfinite_input = had_bad;
    const auto t0 = std::chrono::steady_clock::now();
    st.blocks.emplace_back();
    SealInfo info;
    // k_adapt: keys first sealed with one bit less, kept if that meets the relative-error target
    // (blocks the low-rank part explains well), otherwise sealed again at k_bits.
    const bool adapt = kv == 0 && p_.k_adapt > 0 && sp.bits > 1 && !boundary_layer(il);
    if (adapt) {
      sp.bits--;
      seal_block(X, block_, d, sp, st.blocks.back(), info);
      sp.bits++;
    }
    if (!adapt || info.rel_err > p_.k_adapt / 1000.0) seal_block(X, block_, d, sp, st.blocks.back(), info);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    BlockStat bs;
    bs.rank_raw = info.rank_raw;
    bs.rank = info.rank;
    bs.rel_err = (float)info.rel_err;
    bs.ms = (float)ms;
    bs.lowrank_energy = (float)info.lowrank_energy;
    bs.fallback = info.fallback;
    for (double gn : info.gains) bs.gains.push_back((float)gn);
    st.bstats.push_back(std::move(bs));
    (void)d;
  }

  // All rows of a stream, decoded, in token order, rotated basis.
  // With tail codes: the unsealed tokens as the next decode step's query would read them but
  // for the newest, which it adds (the last window_ exact, older ones from their codes).
  void decode_stream(const Stream& st, int kv, bool tail, std::vector<float>& rows) const {
    const int d = shape_.head_dim;
    rows.clear();
    for (uint16_t h : st.sinks) rows.push_back(fp16_to_fp32(h));
    std::vector<float> buf;
    for (const SealedBlock& blk : st.blocks) {
      buf.resize((size_t)blk.n * d);
      blk.dequantize(buf.data());
      rows.insert(rows.end(), buf.begin(), buf.end());
    }
    if (tail && st.coded) {
      const int64_t n_u = st.sealed + (int64_t)st.ring_bad.size();
      const TurboRowCodec& tcodec = tail_codec_[kv];
      const size_t tcb = tcodec.code_bytes();
      buf.resize(d);
      for (int64_t u = st.sealed; u < n_u; u++) {
        if (u >= n_u - window_) {
          for (int j = 0; j < d; j++) rows.push_back(fp16_to_fp32(st.ring[(size_t)(u - st.ring_base) * d + j]));
        } else {
          tcodec.decode(st.tcodes.data() + (size_t)(u - st.tail_base) * tcb, st.tnorms[(size_t)(u - st.tail_base)], buf.data());
          rows.insert(rows.end(), buf.begin(), buf.end());
        }
      }
      return;
    }
    for (uint16_t h : st.ring) rows.push_back(fp16_to_fp32(h));
    if (!st.qrows.empty()) {
      const size_t nrow = st.qrows.size() / row_bytes_;
      const size_t off = rows.size();
      rows.resize(off + nrow * d);
      for (size_t t = 0; t < nrow; t++) decode_qrow(st.qrows.data() + t * row_bytes_, &rows[off + t * d]);
    }
  }

  // Online-softmax state of the G query heads of one KV group for one query, and scratch.
  struct Scratch {
    std::vector<float> qt, acc, mx, sum, sc, basis;
    std::vector<uint16_t> nrm;  // a block's 8-bit norms decoded to f16
  };

  // A new id per attend() call with several queries: per-thread caches of decoded factors are
  // valid within one call (blocks only change in append()). A decode step (one query) uses
  // each block's factors once and passes 0: no cache.
  static uint64_t next_call_id() {
    static std::atomic<uint64_t> id{0};
    return ++id;
  }

  // Parts per (query, KV head) item: 1 when there are enough items to feed every thread,
  // otherwise enough parts for about 4 per thread (a multiple of the thread count in all),
  // each at least 32 tokens long.
  static int parts_per_item(int64_t items, int n_threads, int max_tokens) {
    if (n_threads <= 1 || items >= 4 * (int64_t)n_threads) return 1;
    int64_t P = (4 * (int64_t)n_threads + items - 1) / items;
    while ((items * P) % n_threads) P++;
    return (int)std::max<int64_t>(1, std::min<int64_t>(P, max_tokens / 32));
  }

  // The decoded low-rank factors of a sealed block, coefficients transposed, coefT[r][n], then
  // basis[r][d]: decoded once per block per thread and attend() call, not once per query token
  // (prefill has hundreds). The cache is dropped when it outgrows kFactorCacheFloats (and at
  // the next call).
  const float* factors_of(const SealedBlock& blk, uint64_t call) const {
    if (call == 0) {  // decoded into a scratch row that lives until the next call
      thread_local std::vector<float> one;
      const size_t nr = (size_t)blk.n * blk.rank;
      one.resize(nr + (size_t)blk.rank * blk.d);
      blk.factors_transposed(one.data(), one.data() + nr);
      return one.data();
    }
    struct Cache {
      uint64_t call = 0;
      size_t floats = 0;
      std::unordered_map<const SealedBlock*, std::vector<float>> map;
    };
    constexpr size_t kFactorCacheFloats = (size_t)1 << 20;
    thread_local Cache c;
    if (c.call != call || c.floats > kFactorCacheFloats) {
      c.map.clear();
      c.call = call;
      c.floats = 0;
    }
    std::vector<float>& v = c.map[&blk];
    if (v.empty()) {
      const size_t nr = (size_t)blk.n * blk.rank;
      v.resize(nr + (size_t)blk.rank * blk.d);
      blk.factors_transposed(v.data(), v.data() + nr);
      c.floats += v.size();
    }
    return v.data();
  }

  // q̃ = Π q / sqrt(d) for the G query heads of KV head hs (q [G][d]); empty softmax states.
  void begin_group(Scratch& w, const HeadStore& hs, int G, const float* q) const {
    const int d = shape_.head_dim;
    w.qt.resize((size_t)G * d);
    w.acc.assign((size_t)G * d, 0.0f);
    w.mx.assign(G, -std::numeric_limits<float>::infinity());
    w.sum.assign(G, 0.0f);
    const float scale = 1.0f / std::sqrt((float)d);
    for (int h = 0; h < G; h++) {
      float* qt = &w.qt[(size_t)h * d];
      hs.rot.apply(q + (size_t)h * d, qt);
      for (int j = 0; j < d; j++) qt[j] *= scale;
    }
  }

  // out [G][d] = Πᵀ acc / Σw.
  void finish_group(Scratch& w, const HeadStore& hs, int G, float* out) const {
    const int d = shape_.head_dim;
    for (int h = 0; h < G; h++) {
      float* acc = &w.acc[(size_t)h * d];
      const float inv = w.sum[h] > 0 ? 1.0f / w.sum[h] : 0.0f;
      for (int j = 0; j < d; j++) acc[j] *= inv;
      hs.rot.apply_t(acc, out + (size_t)h * d);
    }
  }

  // Scores sc[h*m + t] of m tokens are in; fold them into the running max / normaliser and turn
  // them into weights exp(score − max).
  static void absorb(Scratch& w, int G, int m, int d) {
    const CpuKernels& kern = cpu_kernels();
    for (int h = 0; h < G; h++) {
      float* sc = &w.sc[(size_t)h * m];
      const float bm = kern.max_f32(sc, m);
      if (bm > w.mx[h]) {
        const float f = std::exp(w.mx[h] - bm);  // 0 on the first segment (mx = -inf)
        for (int i = 0; i < d; i++) w.acc[(size_t)h * d + i] *= f;
        w.sum[h] *= f;
        w.mx[h] = bm;
      }
      w.sum[h] += kern.softmax_exp(sc, m, w.mx[h]);
    }
  }

  // m exact f16 rows (K rows kr, V rows vr).
  void exact_segment(Scratch& w, int G, int m, const uint16_t* kr, const uint16_t* vr) const {
    const int d = shape_.head_dim;
    const CpuKernels& kern = cpu_kernels();
    w.sc.resize((size_t)G * m);
    kern.scores_f16(kr, m, d, w.qt.data(), G, w.sc.data());
    absorb(w, G, m, d);
    kern.values_f16(vr, m, d, w.sc.data(), G, w.acc.data());
  }

  // Scores of tokens [a, a + m) of a sealed K block into w.sc: the codebook dot straight from the
  // packed codes (kernels.h scores_codes_q8, or scores_codes with exact_scores), times
  // ρ_t / sqrt(d), plus Ĉ_K[t] · (B̂_K q̃).
  void block_scores(Scratch& w, int G, const SealedBlock& kb, int a, int m, uint64_t call) const {
    const int d = shape_.head_dim;
    const CpuKernels& kern = cpu_kernels();
    w.sc.resize((size_t)G * m);
    if (kb.kind == SealedBlock::exact) {
      kern.scores_f16(&kb.exact_f16[(size_t)a * d], m, d, w.qt.data(), G, w.sc.data());
      return;
    }
    const LloydMaxCodebook& cb = *cb_[kb.bits];
    const auto scan = p_.exact_scores ? kern.scores_codes : kern.scores_codes_q8;
    w.nrm.resize(m);
    scan(kb.codes.data() + (size_t)a * kb.code_bytes(), m, d, kb.bits, cb.centroids.data(), kb.norms_f16(a, m, w.nrm.data()),
         1.0f / std::sqrt((float)d), w.qt.data(), G, w.sc.data());
    const int r = kb.rank;
    if (r == 0) return;
    const float* coefT = factors_of(kb, call);  // kq = B̂ q̃, r·d once per block and head
    const float* basis = coefT + (size_t)kb.n * r;
    for (int h = 0; h < G; h++)
      for (int i = 0; i < r; i++) {
        const float kq = kern.dot_f32(basis + (size_t)i * d, &w.qt[(size_t)h * d], d);
        kern.axpy_f32(kq, coefT + (size_t)i * kb.n + a, &w.sc[(size_t)h * m], m);
      }
  }

  // Adds the weighted values of tokens [a, a + m) of a sealed V block (weights in w.sc):
  // acc += B̂ᵀ (Ĉᵀ w) + Σ_t (w_t ρ_t / sqrt(d)) · centroids[codes_t] (kernels.h values_codes).
  void block_values(Scratch& w, int G, const SealedBlock& vb, int a, int m, uint64_t call) const {
    const int d = shape_.head_dim;
    const CpuKernels& kern = cpu_kernels();
    if (vb.kind == SealedBlock::exact) {
      kern.values_f16(&vb.exact_f16[(size_t)a * d], m, d, w.sc.data(), G, w.acc.data());
      return;
    }
    const int r = vb.rank;
    if (r > 0) {  // a = Ĉᵀ w, then acc += B̂ᵀ a
      const float* coefT = factors_of(vb, call);
      const float* basis = coefT + (size_t)vb.n * r;
      for (int h = 0; h < G; h++)
        for (int i = 0; i < r; i++) {
          const float ai = kern.dot_f32(&w.sc[(size_t)h * m], coefT + (size_t)i * vb.n + a, m);
          kern.axpy_f32(ai, basis + (size_t)i * d, &w.acc[(size_t)h * d], d);
        }
    }
    const LloydMaxCodebook& cb = *cb_[vb.bits];
    w.nrm.resize(m);
    kern.values_codes(vb.codes.data() + (size_t)a * vb.code_bytes(), m, d, vb.bits, cb.centroids.data(),
                      vb.norms_f16(a, m, w.nrm.data()), 1.0f / std::sqrt((float)d), w.sc.data(), G, w.acc.data());
  }

  // m tokens of tail codes (K codes kc / norms kn, V codes vc / norms vn; tail_bits each).
  void tail_segment(Scratch& w, int G, int m, const uint8_t* kc, const uint16_t* kn, const uint8_t* vc,
                    const uint16_t* vn) const {
    const int d = shape_.head_dim;
    const CpuKernels& kern = cpu_kernels();
    const float scale = 1.0f / std::sqrt((float)d);
    w.sc.resize((size_t)G * m);
    (p_.exact_scores ? kern.scores_codes : kern.scores_codes_q8)(kc, m, d, tail_bits_[0], cb_[tail_bits_[0]]->centroids.data(),
                                                                 kn, scale, w.qt.data(), G, w.sc.data());
    absorb(w, G, m, d);
    kern.values_codes(vc, m, d, tail_bits_[1], cb_[tail_bits_[1]]->centroids.data(), vn, scale, w.sc.data(), G,
                      w.acc.data());
  }

  // One q8_0 / q4_0 row decoded into row[d] (on the fly, one token at a time; nothing kept).
  void decode_qrow(const uint8_t* r, float* row) const {
    const QRowView qv{q4_};
    const int bpb = qv.bytes_per_block();
    for (int b = 0; b < shape_.head_dim / QK; b++) {
      const uint8_t* blk = r + (size_t)b * bpb;
      const float sc = qv.scale(blk);
      for (int i = 0; i < QK; i++) row[b * QK + i] = sc * (float)qv.value(blk, i);
    }
  }

  // m rows of q8_0 / q4_0 codes (K rows kr, V rows vr).
  void qblock_segment(Scratch& w, int G, int m, const uint8_t* kr, const uint8_t* vr) const {
    const int d = shape_.head_dim;
    const CpuKernels& kern = cpu_kernels();
    w.sc.resize((size_t)G * m);
    w.basis.resize(d);  // scratch row
    for (int t = 0; t < m; t++) {
      decode_qrow(kr + (size_t)t * row_bytes_, w.basis.data());
      for (int h = 0; h < G; h++) w.sc[(size_t)h * m + t] = kern.dot_f32(w.basis.data(), &w.qt[(size_t)h * d], d);
    }
    absorb(w, G, m, d);
    for (int t = 0; t < m; t++) {
      decode_qrow(vr + (size_t)t * row_bytes_, w.basis.data());
      for (int h = 0; h < G; h++) kern.axpy_f32(w.sc[(size_t)h * m + t], w.basis.data(), &w.acc[(size_t)h * d], d);
    }
  }

  // Blocks sealed when the decode step of the token at position pos attends: the ring then
  // holds ring_..ring_+block_-1 tokens after the sinks (append() seals at ring_ + block_).
  // Queries before layer il's latest append see every block sealed.
  int sealed_at(int il, int pos) const {
    if (pos < last_pos0_[il]) return std::numeric_limits<int>::max();
    const int m = pos + 1 - sinks_;
    return m >= ring_ + block_ ? (m - ring_) / block_ : 0;
  }

  // A sealed block's arrays, requested while the previous block is being scanned: they are
  // separate heap blocks of a few KiB, too short for the hardware prefetcher to get going, and
  // at long contexts they come from DRAM (the weights pass through the caches between steps).
  static void prefetch_block(const SealedBlock& b) {
    auto lines = [](const void* p, size_t bytes) {
      for (size_t o = 0; o < std::min<size_t>(bytes, 16384); o += 64) __builtin_prefetch((const char*)p + o);
    };
    lines(b.codes.data(), b.codes.size());
    lines(b.norms.data(), 2 * b.norms.size());
    lines(b.coef_codes.data(), b.coef_codes.size());
    lines(b.basis_codes.data(), b.basis_codes.size());
  }

  // Folds cached tokens [lo, hi) of KV head hs (token order: sinks, blocks, ring; or q rows)
  // into the online-softmax state w of its G query heads. Blocks from index n_sealed on are
  // read from their exact rows while those are still held (Stream::recent), so that a query of
  // a batch sees what its own decode step would.
  //
  // Tail codes (hs.tail): the blocks from n_sealed on are still tail for the query at position
  // qpos, read as its decode step would: the window_ newest tokens (qpos's own included) exact,
  // older ones from their codes. (A query before the latest append, n_sealed = max, sees every
  // block sealed and exact rows only where they are still held.)
  void attend_range(Scratch& w, const HeadStore& hs, int G, int lo, int hi, int qpos, int n_sealed,
                    uint64_t call) const {
    const int d = shape_.head_dim;
    const Stream& K = hs.s[0];
    const Stream& V = hs.s[1];
    if (lo >= hi) return;
    if (!K.qrows.empty()) {
      const int nq = (int)(K.qrows.size() / row_bytes_);
      hi = std::min(hi, nq);
      if (lo < hi)
        qblock_segment(w, G, hi - lo, K.qrows.data() + (size_t)lo * row_bytes_, V.qrows.data() + (size_t)lo * row_bytes_);
      return;
    }
    int a = 0, b = 0;
    // [a, b): the part of segment [start, start + len) inside [lo, hi), relative to start.
    auto clip = [&](int start, int len) {
      a = std::max(lo, start) - start;
      b = std::min(hi, start + len) - start;
      return a < b;
    };
    const int ns = (int)(K.sinks.size() / d);
    if (clip(0, ns)) exact_segment(w, G, b - a, K.sinks.data() + (size_t)a * d, V.sinks.data() + (size_t)a * d);
    int start = ns;
    // Sealed blocks [i0, i1) overlap [lo, hi). Their arrays are separate heap blocks, requested
    // kPrefetchBlocks ahead of the scan (at 7680 tokens the codes come from DRAM).
    constexpr size_t kPrefetchBlocks = 2;
    const size_t nb = K.blocks.size();
    size_t i0 = 0, i1 = 0;
    for (int e = start; i1 < nb && e < hi; e += K.blocks[i1++].n)
      if (e + K.blocks[i1].n <= lo) i0 = i1 + 1, start = e + K.blocks[i1].n;
    for (size_t i = i0; i < std::min(i1, i0 + kPrefetchBlocks); i++) {
      prefetch_block(K.blocks[i]);
      prefetch_block(V.blocks[i]);
    }
    const size_t nb_read = hs.tail ? std::min(nb, (size_t)std::max(n_sealed, 0)) : nb;  // as sealed blocks
    for (size_t i = i0; i < nb_read && start < hi; i++) {
      if (i + kPrefetchBlocks < i1) {
        prefetch_block(K.blocks[i + kPrefetchBlocks]);
        prefetch_block(V.blocks[i + kPrefetchBlocks]);
      }
      if (clip(start, K.blocks[i].n)) {
        if ((int)i >= n_sealed && i >= K.recent_first &&
            (i - K.recent_first + 1) * (size_t)block_ * d <= K.recent.size()) {
          const size_t off = ((i - K.recent_first) * (size_t)block_ + a) * d;
          exact_segment(w, G, b - a, K.recent.data() + off, V.recent.data() + off);
          start += K.blocks[i].n;
          continue;
        }
        block_scores(w, G, K.blocks[i], a, b - a, call);
        absorb(w, G, b - a, d);
        block_values(w, G, V.blocks[i], a, b - a, call);
      }
      start += K.blocks[i].n;
    }
    if (hs.tail) {
      // Tokens [start, end) are tail for this query (token index u = position − sinks).
      const int ns_tok = ns;
      start = ns_tok + (int)nb_read * block_;
      const int end = ns_tok + (int)(K.sealed + (int64_t)K.ring_bad.size());
      // Before the first seal (of the stream, or at this query's step) the tail is read exact.
      const int ex = !K.coded || n_sealed == 0
                         ? start
                         : (int)std::max<int64_t>({(int64_t)start, (int64_t)qpos - window_ + 1, ns_tok + K.ring_base});
      if (clip(start, std::min(ex, end) - start)) {
        const size_t r0 = (size_t)(start + a - ns_tok - K.tail_base);
        tail_segment(w, G, b - a, K.tcodes.data() + r0 * tail_codec_[0].code_bytes(), K.tnorms.data() + r0,
                     V.tcodes.data() + r0 * tail_codec_[1].code_bytes(), V.tnorms.data() + r0);
      }
      if (ex < end && clip(ex, end - ex)) {
        const size_t r0 = (size_t)(ex + a - ns_tok - K.ring_base);
        exact_segment(w, G, b - a, K.ring.data() + r0 * d, V.ring.data() + r0 * d);
      }
      return;
    }
    const int nr = (int)K.ring_bad.size();
    if (clip(start, nr)) exact_segment(w, G, b - a, K.ring.data() + (size_t)a * d, V.ring.data() + (size_t)a * d);
  }

  KVCacheParams p_;
  Family fam_ = Family::turbo;
  bool q4_ = false;
  size_t row_bytes_ = 0;
  int k_bits_ = 0, v_bits_ = 0, block_ = 0, ring_ = 0, sinks_ = 0;
  int norm_bits_ = 16, window_ = 16, factor_bits_ = 4;
  int tail_bits_[2] = {0, 0};    // K, V (0: the f16 tail)
  TurboRowCodec tail_codec_[2];  // tail_bits_ > 0
  int rank_cap_[2] = {0, 0};  // K, V
  const LloydMaxCodebook* cb_[9] = {};  // residual codebooks by bits (those in use: K, V, boundary)
  std::vector<HeadStore> heads_;  // [n_layer][n_head_kv]
  std::vector<int> n_;            // tokens per layer
  std::vector<int> last_pos0_;    // per layer: first position of the latest append()
};

std::string CompressedKVCache::stats_json() const {
  const KVCacheShape& s = shape_;
  const int d = s.head_dim;
  const int N = n_tokens();
  std::ostringstream o;
  const size_t total = bytes();
  const double f16_bytes = 2.0 * 2.0 * s.n_layer * s.n_head_kv * d * N;
  o << "{\"mode\": \"" << p_.mode << "\", \"n_tokens\": " << N << ", \"bytes\": " << total
    << ", \"bits_per_entry\": " << jnum(bits_per_entry()) << ", \"f16_bytes\": " << jnum(f16_bytes)
    << ", \"compression_ratio\": " << jnum(total > 0 ? f16_bytes / total : 0.0);
  o << ", \"params\": {\"k_bits\": " << k_bits_ << ", \"v_bits\": " << v_bits_ << ", \"rank_cap\": " << rank_cap_[0]
    << ", \"v_rank_cap\": " << rank_cap_[1]
    << ", \"factor_bits\": " << factor_bits_ << ", \"shrink\": " << (p_.shrink ? "true" : "false")
    << ", \"block\": " << block_ << ", \"ring\": " << ring_ << ", \"sinks\": " << sinks_
    << ", \"boundary_layers\": " << p_.boundary_layers
    << ", \"boundary_bits\": " << p_.boundary_bits << ", \"norm_correction\": " << (p_.norm_correction ? "true" : "false")
    << ", \"norm_bits\": " << norm_bits_ << ", \"tail_bits\": " << tail_bits_[0] << ", \"v_tail_bits\": " << tail_bits_[1]
    << ", \"window\": " << window_ << ", \"k_adapt\": " << p_.k_adapt
    << ", \"exact_scores\": " << (p_.exact_scores ? "true" : "false")
    << ", \"seed\": " << p_.seed << ", \"head_dim\": " << d << "}";

  // Summary accumulators per K (0) and V (1).
  struct Sum {
    int64_t blocks = 0, tokens_sealed = 0, nonfinite = 0, rank_sum = 0, rank_raw_sum = 0, bits_sum = 0, compressed = 0;
    double ms = 0, rel_err_sum = 0, sealed_bits = 0, sealed_paper_bits = 0;
    int64_t fallbacks[5] = {0, 0, 0, 0, 0};
    Bytes by;
  } sum[2];
  std::ostringstream layers;
  layers << "[";
  for (int il = 0; il < s.n_layer; il++) {
    layers << (il ? ", " : "") << "{\"layer\": " << il << ", \"exact_layer\": " << (exact_layer(il) ? "true" : "false")
           << ", \"heads\": [";
    for (int g = 0; g < s.n_head_kv; g++) {
      layers << (g ? ", " : "") << "{\"head\": " << g;
      for (int kv = 0; kv < 2; kv++) {
        const Stream& st = head(il, g).s[kv];
        Sum& S = sum[kv];
        const Bytes by = stream_bytes(st, kv, head(il, g).tail);
        S.by.codes += by.codes;
        S.by.factors += by.factors;
        S.by.norms += by.norms;
        S.by.exact += by.exact;
        S.by.header += by.header;
        S.by.qblocks += by.qblocks;
        S.by.tail += by.tail;
        S.nonfinite += st.nonfinite;
        std::vector<int> hist_raw, hist, bits_hist(9, 0);  // bits_hist: compressed blocks by residual bits
        std::vector<float> rel, ms, energy;
        std::vector<std::vector<float>> gains;
        int64_t fb[5] = {0, 0, 0, 0, 0};
        double bits_full = 0, bits_paper = 0, ms_sum = 0;
        int64_t sealed = 0;
        for (size_t b = 0; b < st.blocks.size(); b++) {
          const SealedBlock& blk = st.blocks[b];
          const BlockStat& bs = st.bstats[b];
          if ((int)hist_raw.size() <= bs.rank_raw) hist_raw.resize(bs.rank_raw + 1, 0);
          if ((int)hist.size() <= bs.rank) hist.resize(bs.rank + 1, 0);
          hist_raw[bs.rank_raw]++;
          if (blk.kind == SealedBlock::compressed) {
            bits_hist[blk.bits]++;
            S.bits_sum += blk.bits;
            S.compressed++;
          }
          hist[bs.rank]++;
          rel.push_back(bs.rel_err);
          ms.push_back(bs.ms);
          energy.push_back(bs.lowrank_energy);
          gains.push_back(bs.gains);
          fb[(int)bs.fallback]++;
          sealed += blk.n;
          ms_sum += bs.ms;
          const double nd = (double)blk.n * d;
          bits_full += blk.bytes() * 8.0;
          bits_paper += blk.kind == SealedBlock::exact ? 16.0 * nd
                                                        : blk.bits * nd + (double)blk.rank * (blk.n + d) * blk.factor_bits;
          S.rank_sum += bs.rank;
          S.rank_raw_sum += bs.rank_raw;
          S.rel_err_sum += bs.rel_err;
        }
        S.blocks += st.blocks.size();
        S.tokens_sealed += sealed;
        S.ms += ms_sum;
        S.sealed_bits += bits_full;
        S.sealed_paper_bits += bits_paper;
        for (int i = 0; i < 5; i++) S.fallbacks[i] += fb[i];
        const double sealed_entries = (double)sealed * d;
        layers << ", \"" << (kv == 0 ? "k" : "v") << "\": {\"tokens_sealed\": " << sealed << ", \"blocks\": " << st.blocks.size()
               << ", \"rank_hist_raw\": " << jarr(hist_raw) << ", \"rank_hist\": " << jarr(hist)
               << ", \"bits_hist\": " << jarr(bits_hist) << ", \"gains\": [";
        for (size_t b = 0; b < gains.size(); b++) layers << (b ? ", " : "") << jarr(gains[b]);
        layers << "], \"rel_err\": " << jarr(rel) << ", \"lowrank_energy\": " << jarr(energy) << ", \"seal_ms\": " << jarr(ms)
               << ", \"seal_ms_total\": " << jnum(ms_sum)
               << ", \"bits_per_entry_sealed\": " << jnum(sealed ? bits_full / sealed_entries : 0.0)
               << ", \"bits_per_entry_sealed_paper\": " << jnum(sealed ? bits_paper / sealed_entries : 0.0)
               << ", \"bits_per_entry\": " << jnum(st.sinks.size() + st.ring.size() + st.qrows.size() + sealed
                                                      ? by.total() * 8.0 / ((double)n_[il] * d) : 0.0)
               << ", \"bytes\": {\"codes\": " << by.codes << ", \"factors\": " << by.factors << ", \"norms\": " << by.norms
               << ", \"exact\": " << by.exact << ", \"headers\": " << by.header << ", \"qblocks\": " << by.qblocks
               << ", \"tail\": " << by.tail << "}"
               << ", \"fallbacks\": {";
        for (int i = 0; i < 5; i++) layers << (i ? ", " : "") << "\"" << seal_fallback_name((SealFallback)i) << "\": " << fb[i];
        layers << "}, \"nonfinite_inputs\": " << st.nonfinite << "}";
      }
      layers << "}";
    }
    layers << "]}";
  }
  layers << "]";

  o << ", \"summary\": {";
  const double ms_all = sum[0].ms + sum[1].ms;
  const int64_t blocks_all = sum[0].blocks + sum[1].blocks;
  o << "\"blocks_sealed\": " << blocks_all << ", \"tokens_sealed\": " << (sum[0].tokens_sealed + sum[1].tokens_sealed) / 2
    << ", \"seal_ms_total\": " << jnum(ms_all) << ", \"seal_ms_per_block\": " << jnum(blocks_all ? ms_all / blocks_all : 0.0);
  for (int kv = 0; kv < 2; kv++) {
    const Sum& S = sum[kv];
    const double ent = (double)S.tokens_sealed * d;
    o << ", \"" << (kv == 0 ? "k" : "v") << "\": {\"blocks\": " << S.blocks << ", \"tokens_sealed\": " << S.tokens_sealed
      << ", \"mean_rank\": " << jnum(S.blocks ? (double)S.rank_sum / S.blocks : 0.0)
      << ", \"mean_rank_raw\": " << jnum(S.blocks ? (double)S.rank_raw_sum / S.blocks : 0.0)
      << ", \"mean_rel_err\": " << jnum(S.blocks ? S.rel_err_sum / S.blocks : 0.0)
      << ", \"mean_bits\": " << jnum(S.compressed ? (double)S.bits_sum / S.compressed : 0.0)
      << ", \"bits_per_entry_sealed\": " << jnum(ent > 0 ? S.sealed_bits / ent : 0.0)
      << ", \"bits_per_entry_sealed_paper\": " << jnum(ent > 0 ? S.sealed_paper_bits / ent : 0.0)
      << ", \"seal_ms\": " << jnum(S.ms) << ", \"nonfinite_inputs\": " << S.nonfinite
      << ", \"bytes\": {\"codes\": " << S.by.codes << ", \"factors\": " << S.by.factors << ", \"norms\": " << S.by.norms
      << ", \"exact\": " << S.by.exact << ", \"headers\": " << S.by.header << ", \"qblocks\": " << S.by.qblocks
      << ", \"tail\": " << S.by.tail
      << "}, \"fallbacks\": {";
    for (int i = 0; i < 5; i++) o << (i ? ", " : "") << "\"" << seal_fallback_name((SealFallback)i) << "\": " << S.fallbacks[i];
    o << "}}";
  }
  o << "}, \"layers\": " << layers.str() << "}";
  return o.str();
}

}  // namespace

std::unique_ptr<HostKVCache> make_compressed_kv_cache(const KVCacheParams& params, const KVCacheShape& shape) {
  return std::make_unique<CompressedKVCache>(apply_kv_preset(params), shape);
}

// Test hook (bindings/bind_kv.cpp): what a compressed cache holds for layer il, decoded and
// un-rotated, k and v [n_tokens][n_head_kv][head_dim]. Throws for the exact caches.
void compressed_kv_dequantized(const KVCache& cache, int il, std::vector<float>& k, std::vector<float>& v) {
  const auto* c = dynamic_cast<const CompressedKVCache*>(&cache);
  if (!c) fail(ErrorCode::invalid_arg, "dequantized(): mode '" + cache.mode() + "' is not a compressed cache");
  if (il < 0 || il >= cache.shape().n_layer) fail(ErrorCode::invalid_arg, "dequantized(): layer out of range");
  c->dequantized(il, k, v);
}

// ---- prefix reuse (KVCache::truncate) --------------------------------------------------------
namespace {

// Keeps the longest prefix m <= n whose state equals a fresh run over m tokens. Sealed blocks
// cannot be unsealed, so a fresh run's state at m is reachable only when it holds no exact row
// that is sealed here: m in the sinks, or m leaves every block sealed now sealed and the rest in
// the ring (sealed_count(m) == the blocks held), or (ring 0) m on a block boundary, the ring
// empty. q8_0/q4_0 rows and f16 boundary layers are independent per token: cut anywhere.
int CompressedKVCache::truncate(int n) {
  check_truncate(n);
  const int N = n_tokens();
  if (n == N) return n;
  const int d = shape_.head_dim;
  // Blocks a fresh run over m tokens has sealed (append seals at ring_ + block_ ring rows).
  auto sealed_count = [&](int m) {
    const int r = m - sinks_;
    return r >= ring_ + block_ ? (r - ring_) / block_ : 0;
  };
  int keep = n;
  if (fam_ != Family::qblock) {
    size_t held = 0;  // blocks sealed in the sealing layers (all streams seal alike)
    for (int il = 0; il < shape_.n_layer && held == 0; il++)
      if (!exact_layer(il)) held = head(il, 0).s[0].blocks.size();
    // Tail codes are per token, but a fresh run at m holds the window's exact rows, which
    // are here only from ring_base on.
    bool window_held = true;
    for (int il = 0; il < shape_.n_layer; il++)
      if (head(il, 0).tail) {
        const Stream& st = head(il, 0).s[0];
        const int64_t m_u = (int64_t)n - sinks_;
        if (!st.coded || sealed_count(n) == 0) window_held = st.ring_base == 0;  // the tail all exact at m
        else window_held = m_u <= st.sealed || m_u - std::min<int64_t>(window_, m_u - st.sealed) >= st.ring_base;
        break;
      }
    if (n > sinks_ && ((size_t)sealed_count(n) != held || !window_held)) {
      if (ring_ == 0) keep = sinks_ + ((n - sinks_) / block_) * block_;
      else keep = sinks_;  // every shorter state needs exact rows of a block sealed here
      if (ring_ == 0 && !window_held && (size_t)sealed_count(keep) > held) keep = sinks_;
    }
  }
  for (int il = 0; il < shape_.n_layer; il++) {
    const bool exact = exact_layer(il);
    for (int g = 0; g < shape_.n_head_kv; g++)
      for (Stream& st : head(il, g).s) {
        std::vector<uint16_t>().swap(st.recent);
        st.recent_first = st.blocks.size();
        if (fam_ == Family::qblock && !exact) {
          st.qrows.resize((size_t)keep * row_bytes_);
          continue;
        }
        const int ns = std::min(keep, sinks_);
        st.sinks.resize((size_t)ns * d);
        size_t nb = exact ? 0 : (size_t)sealed_count(keep);
        if (keep <= sinks_) nb = 0;
        st.blocks.resize(std::min(nb, st.blocks.size()));
        st.bstats.resize(st.blocks.size());
        st.recent_first = st.blocks.size();
        const int nr = std::max(0, keep - sinks_ - (int)st.blocks.size() * block_);  // ring rows kept
        st.sealed = (int64_t)st.blocks.size() * block_;
        st.ring_bad.resize((size_t)nr);
        if (!head(il, g).tail) {
          st.ring.resize((size_t)nr * d);
          continue;
        }
        const int kv = &st == &head(il, g).s[0] ? 0 : 1;
        const int64_t keep_u = st.sealed + nr;
        if (st.blocks.empty()) {  // as before the first seal: the tail f16 rows only
          st.coded = false;
          st.tcodes.clear();
          st.tnorms.clear();
          st.tail_base = st.ring_base = 0;
          st.ring.resize((size_t)nr * d);
        } else if (nr == 0) {  // nothing unsealed: no tail rows or codes needed
          st.ring.clear();
          st.tcodes.clear();
          st.tnorms.clear();
          st.tail_base = st.ring_base = st.sealed;
        } else {  // cut inside the unsealed tokens (their codes and window rows are all held)
          st.tcodes.resize((size_t)(keep_u - st.tail_base) * tail_codec_[kv].code_bytes());
          st.tnorms.resize((size_t)(keep_u - st.tail_base));
          st.ring.resize((size_t)std::max<int64_t>(0, keep_u - st.ring_base) * d);
        }
      }
  }
  n_.assign(shape_.n_layer, keep);
  last_pos0_.assign(shape_.n_layer, keep);
  return keep;
}

}  // namespace

// ---- state files (KVCache::save_payload / load_payload) ---------------------------------------
// The payload of a compressed cache, little-endian, compressed data as held (codes, factors,
// norms; no decoding). The cache is saved as it stands between steps: `recent` (the exact rows of
// the blocks the latest append sealed, read only by that append's own queries) is not saved, and
// after load the cache is as after an empty append (last_pos0_ = n): later appends, attention,
// dequantized(), stats_json() and bytes() then equal those of the saved cache. Tail-code layers
// are saved as the next append trims them: codes of the unsealed tokens only (tail_base =
// sealed) and exact rows of the window only (ring_base = max(sealed, n_u − window)), not the f16
// rows a long prefill leaves until then; so truncate() after load keeps what the saved cache's
// would after its next append (a valid prefix, possibly shorter than right after the prefill).
//   u32 magic "EQKC", u32 version 1, u32 head_dim, n_layer, n_head_kv, block, u32 n_tokens
//   per layer, per KV head, K then V, a stream:
//     i64 nonfinite
//     q8_0/q4_0 (non-exact layers): qrows [n][row_bytes]
//     otherwise: sinks f16 [min(n, sinks)][d]; then the sealed blocks, as many as the token count
//       implies (sealing layers: sealed_count(n); exact layers: none), each:
//         u8 kind, rank, bits, factor_bits, i8 norm_shift, u8 norm form (0 f16, 1 8-bit codes),
//         coef_codes, basis_codes, f16 coef_scale[rank], basis_scale[rank], gains[rank],
//         codes [n][code_bytes], norms f16 [n] or norm_codes [n]   (compressed blocks)
//         exact_f16 [n][d]                                        (exact blocks)
//         block stat: i32 rank_raw, rank, f32 rel_err, ms, lowrank_energy, u8 fallback,
//           u16 gains count, f32 gains
//       ring_bad u8 [unsealed]; then without tail codes ring f16 [unsealed][d]; with them
//       (layers with tail codes, from the first seal on) i64 tail_base (= sealed), ring_base
//       (= max(sealed, n_u − window)), tail codes [n_u − tail_base][code bytes], tnorms f16
//       [n_u − tail_base], ring f16 [n_u − ring_base][d].
// Every count and size is implied by, or checked against, the cache's own knobs and shape and
// the token count before anything is allocated; sizes are further checked against the bytes left.
namespace {

constexpr uint32_t kStateMagic = 0x434b5145;  // "EQKC"
constexpr uint32_t kStateVersion = 1;

struct PayloadWriter {
  std::vector<uint8_t>& out;
  template <typename T>
  void put(T x) {
    const size_t o = out.size();
    out.resize(o + sizeof(T));
    std::memcpy(out.data() + o, &x, sizeof(T));
  }
  template <typename T>
  void vec(const std::vector<T>& v) {
    const size_t o = out.size();
    out.resize(o + v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(out.data() + o, v.data(), v.size() * sizeof(T));
  }
};

[[noreturn]] void state_bad(const std::string& what) {
  fail(ErrorCode::format, "state: the compressed cache payload is invalid: " + what);
}

struct PayloadReader {
  const uint8_t* p;
  size_t n, at = 0;
  template <typename T>
  T get(const char* what) {
    if (n - at < sizeof(T)) state_bad(std::string("truncated at ") + what);
    T x;
    std::memcpy(&x, p + at, sizeof(T));
    at += sizeof(T);
    return x;
  }
  // count elements of T into v; the size is checked against the bytes left before allocating.
  template <typename T>
  void vec(std::vector<T>& v, size_t count, const char* what) {
    if (count > (n - at) / sizeof(T)) state_bad(std::string("truncated at ") + what);
    v.resize(count);
    if (count) std::memcpy(v.data(), p + at, count * sizeof(T));
    at += count * sizeof(T);
  }
};

bool f16_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool f16_nonfinite(uint16_t h) { return (h & 0x7c00) == 0x7c00; }

void check_finite_f16(const std::vector<uint16_t>& v, const char* what) {
  for (uint16_t h : v)
    if (f16_nonfinite(h)) state_bad(std::string("a non-finite f16 value in ") + what);
}

}  // namespace

void CompressedKVCache::save_payload(std::vector<uint8_t>& out) const {
  const KVCacheShape& s = shape_;
  const int n = n_tokens();
  for (int il = 0; il < s.n_layer; il++)
    if (n_[il] != n) fail(ErrorCode::internal, "state: the cache's layers hold different token counts (mid-step)");
  PayloadWriter w{out};
  w.put<uint32_t>(kStateMagic);
  w.put<uint32_t>(kStateVersion);
  w.put<uint32_t>((uint32_t)s.head_dim);
  w.put<uint32_t>((uint32_t)s.n_layer);
  w.put<uint32_t>((uint32_t)s.n_head_kv);
  w.put<uint32_t>((uint32_t)block_);
  w.put<uint32_t>((uint32_t)n);
  for (int il = 0; il < s.n_layer; il++)
    for (int g = 0; g < s.n_head_kv; g++) {
      const HeadStore& hs = head(il, g);
      for (int kv = 0; kv < 2; kv++) {
        const Stream& st = hs.s[kv];
        w.put<int64_t>(st.nonfinite);
        if (fam_ == Family::qblock && !exact_layer(il)) {
          w.vec(st.qrows);
          continue;
        }
        w.vec(st.sinks);
        for (size_t b = 0; b < st.blocks.size(); b++) {
          const SealedBlock& blk = st.blocks[b];
          w.put<uint8_t>((uint8_t)blk.kind);
          w.put<uint8_t>((uint8_t)blk.rank);
          w.put<uint8_t>((uint8_t)blk.bits);
          w.put<uint8_t>((uint8_t)blk.factor_bits);
          w.put<int8_t>((int8_t)blk.norm_shift);
          w.put<uint8_t>(blk.norm_codes.empty() ? 0 : 1);
          if (blk.kind == SealedBlock::exact) {
            w.vec(blk.exact_f16);
          } else {
            w.vec(blk.coef_codes);
            w.vec(blk.basis_codes);
            w.vec(blk.coef_scale);
            w.vec(blk.basis_scale);
            w.vec(blk.gains);
            w.vec(blk.codes);
            if (blk.norm_codes.empty()) w.vec(blk.norms);
            else w.vec(blk.norm_codes);
          }
          const BlockStat& bs = st.bstats[b];
          w.put<int32_t>(bs.rank_raw);
          w.put<int32_t>(bs.rank);
          w.put<float>(bs.rel_err);
          w.put<float>(bs.ms);
          w.put<float>(bs.lowrank_energy);
          w.put<uint8_t>((uint8_t)bs.fallback);
          w.put<uint16_t>((uint16_t)bs.gains.size());
          w.vec(bs.gains);
        }
        w.vec(st.ring_bad);
        if (hs.tail && st.coded) {  // as the next append would trim them (append_rows)
          const int d = s.head_dim;
          const int64_t n_u = st.sealed + (int64_t)st.ring_bad.size();
          const int64_t ring_base = std::max(st.sealed, n_u - window_);
          const size_t tcb = tail_codec_[kv].code_bytes();
          if (st.tail_base > st.sealed || ring_base < st.ring_base || st.tnorms.size() != (size_t)(n_u - st.tail_base) ||
              st.ring.size() != (size_t)(n_u - st.ring_base) * d)
            fail(ErrorCode::internal, "state: a tail stream's codes and rows do not cover its unsealed tokens");
          w.put<int64_t>(st.sealed);  // tail_base
          w.put<int64_t>(ring_base);
          const size_t c0 = (size_t)(st.sealed - st.tail_base);
          out.insert(out.end(), st.tcodes.begin() + c0 * tcb, st.tcodes.end());
          const uint8_t* nb = reinterpret_cast<const uint8_t*>(st.tnorms.data() + c0);
          out.insert(out.end(), nb, nb + 2 * (st.tnorms.size() - c0));
          const uint8_t* rb = reinterpret_cast<const uint8_t*>(st.ring.data() + (size_t)(ring_base - st.ring_base) * d);
          out.insert(out.end(), rb, rb + 2 * ((size_t)(n_u - ring_base) * d));
          continue;
        }
        w.vec(st.ring);
      }
    }
}

void CompressedKVCache::load_payload(const uint8_t* data, size_t size, int n) {
  clear();
  try {
    const KVCacheShape& s = shape_;
    const int d = s.head_dim;
    if (n < 0 || n > s.n_ctx)
      state_bad(std::to_string(n) + " tokens for a cache of " + std::to_string(s.n_ctx));
    if (size > 0 && !data) state_bad("no data");
    PayloadReader r{data, size};
    if (r.get<uint32_t>("magic") != kStateMagic) state_bad("bad magic");
    if (r.get<uint32_t>("version") != kStateVersion) state_bad("unknown version");
    if (r.get<uint32_t>("head_dim") != (uint32_t)d || r.get<uint32_t>("n_layer") != (uint32_t)s.n_layer ||
        r.get<uint32_t>("n_head_kv") != (uint32_t)s.n_head_kv || r.get<uint32_t>("block") != (uint32_t)block_)
      state_bad("written for another cache shape or block size");
    if (r.get<uint32_t>("token count") != (uint32_t)n) state_bad("it holds another token count");
    const int ns = std::min(n, sinks_);
    const int64_t n_u = (int64_t)n - ns;  // tokens after the sinks
    const QRowView qv{q4_};
    for (int il = 0; il < s.n_layer; il++) {
      const bool exact = exact_layer(il);
      // Blocks held between steps: those a run over n tokens sealed (append seals at ring_ + block_).
      const int64_t nb = exact || fam_ == Family::qblock ? 0 : (n_u >= ring_ + block_ ? (n_u - ring_) / block_ : 0);
      for (int g = 0; g < s.n_head_kv; g++) {
        HeadStore& hs = head(il, g);
        for (int kv = 0; kv < 2; kv++) {
          Stream& st = hs.s[kv];
          st.nonfinite = r.get<int64_t>("nonfinite count");
          // A statistic only (truncate keeps it: it counts every value replaced, not the held ones).
          if (st.nonfinite < 0) state_bad("nonfinite count out of range");
          if (fam_ == Family::qblock && !exact) {
            r.vec(st.qrows, (size_t)n * row_bytes_, "q rows");
            for (size_t t = 0; t < (size_t)n * (d / QK); t++) {
              uint16_t h;
              std::memcpy(&h, st.qrows.data() + t * qv.bytes_per_block(), 2);
              if (f16_nonfinite(h)) state_bad("a non-finite q block scale");
            }
            continue;
          }
          r.vec(st.sinks, (size_t)ns * d, "sinks");
          check_finite_f16(st.sinks, "the sinks");
          // Every block takes at least its 6-byte header and 23 bytes of statistics: a payload
          // too short for nb of them fails here, before nb blocks are allocated.
          if ((size_t)nb > (r.n - r.at) / 29) state_bad("truncated at the sealed blocks");
          st.blocks.resize((size_t)nb);
          st.bstats.resize((size_t)nb);
          for (int64_t b = 0; b < nb; b++) {
            SealedBlock& blk = st.blocks[(size_t)b];
            const int kind = r.get<uint8_t>("block kind");
            if (kind != SealedBlock::compressed && kind != SealedBlock::exact) state_bad("unknown block kind");
            blk.kind = (SealedBlock::Kind)kind;
            blk.n = block_;
            blk.d = d;
            blk.rank = r.get<uint8_t>("block rank");
            blk.bits = r.get<uint8_t>("block bits");
            blk.factor_bits = r.get<uint8_t>("block factor bits");
            blk.norm_shift = r.get<int8_t>("norm shift");
            const int norm_form = r.get<uint8_t>("norm form");
            // The residual bits this block may have: boundary layers boundary_bits; keys with
            // k_adapt k_bits or k_bits − 1; otherwise k_bits / v_bits.
            const int want = boundary_layer(il) ? p_.boundary_bits : kv == 0 ? k_bits_ : v_bits_;
            const bool adapt = kv == 0 && p_.k_adapt > 0 && want > 1 && !boundary_layer(il);
            if (!(blk.bits == want || (adapt && blk.bits == want - 1))) state_bad("block bits not allowed by the mode");
            if (blk.factor_bits != factor_bits_) state_bad("block factor bits differ from the cache's");
            if (norm_form > 1) state_bad("unknown norm form");
            if (blk.kind == SealedBlock::exact) {
              if (blk.rank != 0 || blk.norm_shift != 0 || norm_form != 0) state_bad("an exact block with codes");
              r.vec(blk.exact_f16, (size_t)block_ * d, "exact block");
              check_finite_f16(blk.exact_f16, "an exact block");
            } else {
              if (blk.rank > rank_cap_[kv]) state_bad("block rank above the rank cap");
              const int rk = blk.rank;
              r.vec(blk.coef_codes, packed_bytes((int64_t)block_ * rk, blk.factor_bits), "coefficient codes");
              r.vec(blk.basis_codes, packed_bytes((int64_t)rk * d, blk.factor_bits), "basis codes");
              r.vec(blk.coef_scale, (size_t)rk, "coefficient scales");
              r.vec(blk.basis_scale, (size_t)rk, "basis scales");
              r.vec(blk.gains, (size_t)rk, "gains");
              check_finite_f16(blk.coef_scale, "factor scales");
              check_finite_f16(blk.basis_scale, "factor scales");
              check_finite_f16(blk.gains, "gains");
              r.vec(blk.codes, (size_t)block_ * blk.code_bytes(), "residual codes");
              if (norm_form == 0) {
                if (blk.norm_shift != 0) state_bad("a norm shift with f16 norms");
                r.vec(blk.norms, (size_t)block_, "norms");
                check_finite_f16(blk.norms, "norms");
              } else {
                if (norm_bits_ != 8) state_bad("8-bit norms in a cache with norm_bits 16");
                if (blk.norm_shift < kLogNormMinShift || blk.norm_shift > kLogNormMaxShift) state_bad("norm shift out of range");
                r.vec(blk.norm_codes, (size_t)block_, "norm codes");
              }
            }
            BlockStat& bs = st.bstats[(size_t)b];
            bs.rank_raw = r.get<int32_t>("stat rank_raw");
            bs.rank = r.get<int32_t>("stat rank");
            bs.rel_err = r.get<float>("stat rel_err");
            bs.ms = r.get<float>("stat ms");
            bs.lowrank_energy = r.get<float>("stat energy");
            const int fb = r.get<uint8_t>("stat fallback");
            if (bs.rank_raw < 0 || bs.rank_raw > d || bs.rank != blk.rank || fb > (int)SealFallback::exact_overflow)
              state_bad("block statistics out of range");
            bs.fallback = (SealFallback)fb;
            const int ng = r.get<uint16_t>("stat gains count");
            if (ng > d) state_bad("block statistics out of range");
            r.vec(bs.gains, (size_t)ng, "stat gains");
          }
          st.sealed = nb * block_;
          const int64_t unsealed = n_u - st.sealed;
          if (unsealed < 0) state_bad("more sealed tokens than tokens");
          r.vec(st.ring_bad, (size_t)unsealed, "ring flags");
          for (uint8_t f : st.ring_bad)
            if (f > 1) state_bad("a ring flag other than 0 or 1");
          st.recent_first = st.blocks.size();
          st.coded = hs.tail && nb > 0;  // tail codes are made at the first seal
          st.tail_base = st.ring_base = st.coded ? st.sealed : 0;
          if (st.coded) {
            // As after an empty append: codes of the unsealed tokens (tail_base = sealed), exact
            // rows of the window (ring_base = max(sealed, n_u − window)).
            st.tail_base = r.get<int64_t>("tail base");
            st.ring_base = r.get<int64_t>("ring base");
            if (st.tail_base != st.sealed) state_bad("tail base is not the sealed token count");
            if (st.ring_base != std::max(st.sealed, n_u - window_)) state_bad("ring base is not where the window starts");
            const size_t tcb = tail_codec_[kv].code_bytes();
            r.vec(st.tcodes, (size_t)(n_u - st.tail_base) * tcb, "tail codes");
            r.vec(st.tnorms, (size_t)(n_u - st.tail_base), "tail norms");
            for (uint16_t h : st.tnorms)  // an encoded norm may overflow to inf, never NaN
              if (f16_nan(h)) state_bad("a NaN tail norm");
            r.vec(st.ring, (size_t)(n_u - st.ring_base) * d, "ring rows");
          } else {
            r.vec(st.ring, (size_t)unsealed * d, "ring rows");
          }
          check_finite_f16(st.ring, "the ring");
        }
        // K and V of a head were sealed alike: same block count (implied) and tail bounds.
        if (hs.s[0].tail_base != hs.s[1].tail_base || hs.s[0].ring_base != hs.s[1].ring_base)
          state_bad("K and V tail bounds differ");
      }
    }
    if (r.at != r.n) state_bad("bytes after the last stream");
    n_.assign(s.n_layer, n);
    last_pos0_.assign(s.n_layer, n);  // as after an empty append (no `recent` rows)
  } catch (...) {
    clear();
    throw;
  }
}

}  // namespace eoq
