// The compressed KV caches on the GPU: q8_0, q4_0 (every token rotated and quantized at append)
// and turbo2/3/4 (r = 0: exact f16 sinks and ring, older tokens read from per-token TurboQuant
// codes), the same modes, knobs and codes as engine/kv_cache_compressed.cpp for the same K/V.
//
// Storage (kernels/cuda/cuda_kernels.h KVCodesLayer): one arena allocated whole at creation, sized
// for n_ctx, with fixed-stride rows per (layer, K/V, KV head) indexed by position, so nothing is
// allocated or moved in a decode step (CUDA-graph safe: positions come from device memory).
// Turbo: each row's codes and norm are written by the append kernel in the same stream (the codes
// of a row depend on that row alone when r = 0, so quantizing it when it enters the ring gives the
// codes the CPU computes when it leaves); which rows a query reads from the codes follows the
// CPU's sealing rule (a block of `block` rows is sealed once `ring + block` tokens follow the
// sinks), so the ring holds ring + block + kDecodeTokens slots: the queries of a multi-token
// decode step still find the exact rows they read.
//
// Attention: the query rotated once (kv_rotate), decode over the codes (attention_decode_codes:
// flash-decoding, log-sum-exp combine), the output un-rotated once. Prefill (more than
// kDecodeTokens queries) decodes the rows it reads into an f16 scratch of [n_head_kv][n_ctx][d]
// for K and V (a fixed workspace allocated with the cache; exact rows copied) and runs the f16
// cache's tensor-core attention over it, in runs of queries that see the same sealed blocks, so
// prefilling n tokens equals n decode steps up to the f16 rounding of the decoded rows.
//
// Not on the GPU yet (refused with the reason): the eoq modes (low rank: sealing needs an
// on-device eigensolver), boundary_layers, k_bits / v_bits above 4, head_dim other than 64 / 128.
// Differences from the CPU cache (rare inputs): a row with non-finite values is zeroed and coded
// (the CPU keeps its whole block exact); a row whose norm overflows f16 stores an infinite norm
// (the CPU keeps the block exact).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fp16.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/kv_cache_cuda.h"
#include "engine/kv_cache.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/turboquant.h"

namespace eoq {

namespace {

constexpr int kDecodeTokens = 8;  // queries per call through the decode kernel
constexpr size_t kAlign = 256;

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// What the mode and knobs resolve to (validated).
struct CodesConfig {
  int mode = cuda::KVCodesLayer::q8_0;
  int k_bits = 0, v_bits = 0, block = 1, ring = 0, sinks = 0, ring_slots = 1;
  bool norm_correction = true;
  uint64_t seed = 0;
  std::string name;
};

[[noreturn]] void refuse(const std::string& mode, const std::string& why) {
  fail(ErrorCode::invalid_arg, "KV cache mode '" + mode + "' on the GPU: " + why);
}

CodesConfig resolve(const KVCacheParams& p0, const KVCacheShape& s) {
  const KVCacheParams p = apply_kv_preset(p0);
  const std::string& m = p.mode;
  CodesConfig c;
  c.name = m;
  c.seed = p.seed;
  c.norm_correction = p.norm_correction;
  const int d = s.head_dim;
  int digit = 0;
  if (m == "q8_0" || m == "q4_0") {
    c.mode = m == "q8_0" ? cuda::KVCodesLayer::q8_0 : cuda::KVCodesLayer::q4_0;
  } else if (m.size() == 6 && m.compare(0, 5, "turbo") == 0 && m[5] >= '2' && m[5] <= '4') {
    c.mode = cuda::KVCodesLayer::turbo;
    digit = m[5] - '0';
  } else if (m == "eoq" || (m.size() == 4 && m.compare(0, 3, "eoq") == 0 && m[3] >= '2' && m[3] <= '4')) {
    refuse(m, "the eoq modes are not on the GPU yet: sealing their low-rank part needs an on-device symmetric "
              "eigensolver (Gram matrix, Jacobi sweeps, eOptShrink), which is not built; use turbo2/3/4, q8_0, "
              "q4_0 or f16 on the GPU, or device='cpu'");
  } else {
    fail(ErrorCode::invalid_arg, "unknown KV cache mode '" + m +
                                     "' (on the GPU: f16, q8_0, q4_0, turbo2, turbo3, turbo4)");
  }
  if (d != 64 && d != 128) refuse(m, "head_dim " + std::to_string(d) + " (the GPU kernels take 64 or 128)");
  if (p.boundary_layers != 0) refuse(m, "boundary_layers is not supported on the GPU yet");
  if (p.tail_bits > 0 || p.norm_bits == 8 || p.k_adapt != 0 || p.v_tail_bits > 0 || p.window != -1)
    refuse(m, "tail_bits, v_tail_bits, window, norm_bits and k_adapt (the eoq preset's format) are not on the GPU yet");
  if (p.factor_bits != -1 && (p.factor_bits < 2 || p.factor_bits > 8)) refuse(m, "factor_bits must be in 2..8 (or -1)");
  if (c.mode != cuda::KVCodesLayer::turbo) {
    if (p.k_bits != -1 || p.v_bits != -1 || p.rank_cap > 0 || p.v_rank_cap > 0 || p.boundary_bits != 0)
      refuse(m, "k_bits, v_bits, rank_cap, v_rank_cap and boundary_bits apply to turbo/eoq modes");
    return c;
  }
  if (p.k_bits != -1 && (p.k_bits < 1 || p.k_bits > 4)) refuse(m, "k_bits must be in 1..4 on the GPU (or -1)");
  if (p.v_bits != -1 && (p.v_bits < 1 || p.v_bits > 4)) refuse(m, "v_bits must be in 1..4 on the GPU (or -1)");
  if (p.rank_cap > 0 || p.v_rank_cap > 0) refuse(m, "rank_cap and v_rank_cap apply to eoq modes (turbo is r = 0)");
  if (p.block != -1 && (p.block < 1 || p.block > 65535)) refuse(m, "block must be in 1..65535 (or -1)");
  if (p.ring < -1) refuse(m, "ring must be >= 0 (or -1 for the default)");
  if (p.sinks < 0) refuse(m, "sinks must be >= 0");
  c.k_bits = p.k_bits > 0 ? p.k_bits : digit;
  c.v_bits = p.v_bits > 0 ? p.v_bits : digit;
  c.block = p.block > 0 ? p.block : (d < 128 ? 256 : 128);
  c.ring = p.ring >= 0 ? p.ring : c.block;
  // n_ctx <= sinks: the last position goes to the ring (exact either way), so the code rows exist.
  c.sinks = std::min(p.sinks, std::max(s.n_ctx - 1, 0));
  c.ring_slots = c.ring + c.block + kDecodeTokens;
  return c;
}

// Splits of the decode attention over the codes: 4x the f16 kernel's (about 24 blocks per SM
// in all and >= 64 positions per block). Its loads go straight to registers (no cp.async ring), so
// it needs more resident warps to keep enough bytes in flight; measured on the H200 (8B shape, q8_0,
// depth 8192) the f16 rule left 2 blocks per SM and ran slower than the f16 cache.
int codes_decode_splits(int n_head_kv, int len_bucket) {
  return std::min(65535, 4 * cuda::attention_decode_splits(n_head_kv, len_bucket));
}

// Byte layout of one layer's arrays (offsets into the arena) and the totals.
struct Layout {
  size_t codes[2] = {0, 0}, scale[2] = {0, 0}, sinks[2] = {0, 0}, ring[2] = {0, 0};  // per layer, K / V
  size_t code_row[2] = {0, 0};  // bytes of codes per row
  size_t layer_bytes = 0, arena = 0, scratch = 0, signs = 0, work = 0, qbuf = 0;
  int max_split = 1;
  size_t total() const { return arena + scratch + signs + work + 2 * qbuf + 256; }
};

Layout make_layout(const CodesConfig& c, const KVCacheShape& s) {
  Layout L;
  const size_t hkv = s.n_head_kv, n = s.n_ctx, d = s.head_dim;
  size_t off = 0;
  for (int kv = 0; kv < 2; kv++) {
    if (c.mode != cuda::KVCodesLayer::turbo) {
      L.code_row[kv] = c.mode == cuda::KVCodesLayer::q8_0 ? d : d / 2;
      L.codes[kv] = off;
      off = align_up(off + hkv * n * L.code_row[kv]);
      L.scale[kv] = off;
      off = align_up(off + hkv * n * (d / 32) * 2);
    } else {
      const int bits = kv == 0 ? c.k_bits : c.v_bits;
      L.code_row[kv] = d * bits / 8;
      const size_t rows = n - c.sinks;
      L.codes[kv] = off;
      off = align_up(off + hkv * rows * L.code_row[kv]);
      L.scale[kv] = off;
      off = align_up(off + hkv * rows * 2);
      L.sinks[kv] = off;
      off = align_up(off + hkv * c.sinks * d * 2);
      L.ring[kv] = off;
      off = align_up(off + hkv * c.ring_slots * d * 2);
    }
  }
  L.layer_bytes = off;
  L.arena = off * s.n_layer;
  L.scratch = 2 * align_up(hkv * n * d * 2);  // prefill: K and V f16 [n_head_kv][n_ctx][d]
  L.signs = align_up((size_t)s.n_layer * hkv * 2 * d * sizeof(float)) + align_up(64 * sizeof(float));
  const int n_head = s.n_head > 0 ? s.n_head : s.n_head_kv;
  L.max_split = codes_decode_splits(s.n_head_kv, cuda::decode_len_bucket(s.n_ctx));
  L.work = align_up((size_t)kDecodeTokens * n_head * L.max_split * (d + 2) * sizeof(float));
  L.qbuf = align_up((size_t)kDecodeTokens * n_head * d * sizeof(float));
  return L;
}

class CudaCodesKVCache final : public KVCache {
 public:
  CudaCodesKVCache(const KVCacheParams& params, const KVCacheShape& s, cuda::CudaBackendApi& be)
      : be_(be), k_(cuda::cuda_kernels()), c_(resolve(params, s)) {
    shape_ = s;
    lay_ = make_layout(c_, s);
    const int d = s.head_dim;
    n_head_ = s.n_head > 0 ? s.n_head : s.n_head_kv;
    arena_ = be.alloc(lay_.arena, "the " + c_.name + " KV cache");
    scratch_ = be.alloc(lay_.scratch, "the " + c_.name + " KV cache's prefill scratch");
    work_ = be.alloc(lay_.work, "attention partials");
    qrot_ = be.alloc(lay_.qbuf, "rotated queries");
    orot_ = be.alloc(lay_.qbuf, "rotated attention output");
    qcap_ = kDecodeTokens;
    // Rotation signs per (layer, KV head): D1 and D2 of kernels/turboquant.h's randomized
    // Hadamard, read off its matrix M = D2 H D1 / sqrt(d) (row 0 and column 0 of H are all +1;
    // the pair (D1, D2) is fixed up to a common sign, which gives the same bits).
    std::vector<float> signs((size_t)s.n_layer * s.n_head_kv * 2 * d);
    rot_.reserve((size_t)s.n_layer * s.n_head_kv);
    for (int il = 0; il < s.n_layer; il++)
      for (int g = 0; g < s.n_head_kv; g++) {
        rot_.emplace_back(d, mix_seed(c_.seed, (uint64_t)il, (uint64_t)g));
        const Rotation& r = rot_.back();
        if (!r.hadamard()) fail(ErrorCode::internal, "KV cache: the GPU needs the Hadamard rotation");
        const std::vector<float> M = r.matrix();
        float* s1 = &signs[((size_t)il * s.n_head_kv + g) * 2 * d];
        float* s2 = s1 + d;
        for (int j = 0; j < d; j++) s1[j] = M[j] > 0 ? 1.0f : -1.0f;
        for (int i = 0; i < d; i++) s2[i] = (M[(size_t)i * d] > 0 ? 1.0f : -1.0f) * s1[0];
      }
    signs_ = be.alloc(lay_.signs, "KV rotation signs");
    std::vector<float> cb(64, 0.0f);  // K then V: centroids [2^bits], thresholds [2^bits - 1]
    if (c_.mode == cuda::KVCodesLayer::turbo)
      for (int kv = 0; kv < 2; kv++) {
        const LloydMaxCodebook& book = lloyd_max_codebook(d, kv == 0 ? c_.k_bits : c_.v_bits);
        std::copy(book.centroids.begin(), book.centroids.end(), cb.begin() + 32 * kv);
        std::copy(book.thresholds.begin(), book.thresholds.end(), cb.begin() + 32 * kv + book.centroids.size());
        cent_[kv] = book.centroids;
      }
    char* sg = static_cast<char*>(signs_->data());
    cuda::check(cudaMemcpy(sg, signs.data(), signs.size() * sizeof(float), cudaMemcpyHostToDevice), "KV rotation signs");
    cb_dev_ = reinterpret_cast<float*>(sg + align_up(signs.size() * sizeof(float)));
    cuda::check(cudaMemcpy(cb_dev_, cb.data(), cb.size() * sizeof(float), cudaMemcpyHostToDevice), "KV codebooks");
    cuda::check(cudaMemset(arena_->data(), 0, lay_.arena), "KV cache arena");
    rs_ = 1.0f / std::sqrt((float)d);
  }

  void begin(int pos0, int n) override {
    KVCache::begin(pos0, n);
    n_ = pos0 + n;
  }

  void append(int il, int pos0, int n, const Tensor& k, const Tensor& v) override {
    check_layer(il);
    const cuda::KVCodesLayer L = layer(il);
    void *sk = nullptr, *sv = nullptr;
    if (L.mode == cuda::KVCodesLayer::turbo && n > kDecodeTokens) {
      // The batch's queries read exact rows that its own appends may overwrite in the ring:
      // copy them to the prefill scratch first (the append kernel adds the batch's rows).
      sk = scratch_k();
      sv = scratch_v();
      cuda::launched(k_.kv_fill_f16(L, 0, std::min(c_.sinks, pos0), false, sk, sv, be_.stream()), "kv_fill_f16");
      cuda::launched(k_.kv_fill_f16(L, std::max(c_.sinks, sealed_end(pos0)), pos0, false, sk, sv, be_.stream()),
                     "kv_fill_f16");
    }
    cuda::launched(k_.kv_append_codes(L, static_cast<const float*>(k.data), static_cast<const float*>(v.data), n,
                                      be_.step_pos0_device(), signs(il), rs_, sk, sv, be_.stream()),
                   "kv_append_codes");
  }

  void attend(int il, int pos0, int n, int n_head, const Tensor& q, Tensor& out) override {
    check_layer(il);
    const KVCacheShape& s = shape_;
    const int d = s.head_dim;
    if (n_head > n_head_ || n_head % s.n_head_kv != 0) fail(ErrorCode::internal, "KV cache: query heads do not match its shape");
    if (n > qcap_) grow_qbuf(n);
    float* qr = static_cast<float*>(qrot_->data());
    float* orr = static_cast<float*>(orot_->data());
    cuda::launched(k_.kv_rotate(static_cast<const float*>(q.data), qr, n, n_head, s.n_head_kv, d, signs(il), rs_, false,
                                be_.stream()),
                   "kv_rotate");
    const cuda::KVCodesLayer L = layer(il);
    if (n <= kDecodeTokens) {
      const int n_split = std::min(codes_decode_splits(s.n_head_kv, cuda::decode_len_bucket(pos0 + n)), lay_.max_split);
      cuda::launched(k_.attention_decode_codes(L, qr, n, n_head, be_.step_pos0_device(), n_split, work_->data(), orr,
                                               be_.stream()),
                     "attention_decode_codes");
    } else if (L.mode != cuda::KVCodesLayer::turbo) {
      cuda::launched(k_.kv_fill_f16(L, 0, pos0 + n, true, scratch_k(), scratch_v(), be_.stream()), "kv_fill_f16");
      cuda::launched(k_.attention_prefill_f16(qr, n, n_head, s.n_head_kv, d, s.n_ctx, pos0, scratch_k(), scratch_v(), orr,
                                              be_.stream()),
                     "attention_prefill_f16");
    } else {
      // Runs of queries that see the same sealed blocks; the scratch holds the exact rows of the
      // batch and of the ring before it (append), sealed rows are decoded into it as runs need them.
      int filled = c_.sinks;  // rows [sinks, filled) hold decoded codes
      for (int p = pos0; p < pos0 + n;) {
        const int se = sealed_end(p);
        int e = p + 1;
        while (e < pos0 + n && sealed_end(e) == se) e++;
        if (se > filled) {
          cuda::launched(k_.kv_fill_f16(L, filled, se, true, scratch_k(), scratch_v(), be_.stream()), "kv_fill_f16");
          filled = se;
        }
        const size_t off = (size_t)(p - pos0) * n_head * d;
        cuda::launched(k_.attention_prefill_f16(qr + off, e - p, n_head, s.n_head_kv, d, s.n_ctx, p, scratch_k(),
                                                scratch_v(), orr + off, be_.stream()),
                       "attention_prefill_f16");
        p = e;
      }
    }
    cuda::launched(k_.kv_rotate(orr, out.f32(), n, n_head, s.n_head_kv, d, signs(il), rs_, true, be_.stream()),
                   "kv_rotate");
  }

  void clear() override { n_ = 0; }
  int n_tokens() const override { return n_; }
  std::string mode() const override { return c_.name; }

  // Bytes held for the tokens cached now (what a decode step reads): the q rows, or the turbo
  // sinks, ring rows and sealed rows' codes and norms; allocated_bytes() is the arena.
  size_t bytes() const override {
    const KVCacheShape& s = shape_;
    const size_t heads = (size_t)s.n_layer * s.n_head_kv, d = s.head_dim, N = n_;
    if (c_.mode != cuda::KVCodesLayer::turbo) return heads * N * 2 * (lay_.code_row[0] + d / 32 * 2);
    size_t per_head = 0;
    const size_t sinks = std::min<size_t>(N, c_.sinks);
    const size_t sealed = N > (size_t)c_.sinks ? (size_t)(sealed_end((int)N - 1) - c_.sinks) : 0;
    const size_t ring = N - sinks - sealed;
    for (int kv = 0; kv < 2; kv++) per_head += (sinks + ring) * d * 2 + sealed * (lay_.code_row[kv] + 2);
    return heads * per_head;
  }
  double bits_per_entry() const override {
    const double entries = 2.0 * shape_.n_layer * shape_.n_head_kv * shape_.head_dim * n_;
    if (entries == 0) return c_.mode == cuda::KVCodesLayer::q8_0 ? 8.5 : c_.mode == cuda::KVCodesLayer::q4_0 ? 4.5 : 16.0;
    return bytes() * 8.0 / entries;
  }
  std::string stats_json() const override {
    std::ostringstream o;
    o << "{\"mode\": \"" << c_.name << "\", \"device\": \"cuda\", \"n_tokens\": " << n_ << ", \"bytes\": " << bytes()
      << ", \"bits_per_entry\": " << bits_per_entry() << ", \"allocated_bytes\": " << lay_.arena
      << ", \"scratch_bytes\": " << lay_.scratch << ", \"params\": {\"head_dim\": " << shape_.head_dim
      << ", \"seed\": " << c_.seed;
    if (c_.mode == cuda::KVCodesLayer::turbo)
      o << ", \"k_bits\": " << c_.k_bits << ", \"v_bits\": " << c_.v_bits << ", \"block\": " << c_.block
        << ", \"ring\": " << c_.ring << ", \"sinks\": " << c_.sinks
        << ", \"norm_correction\": " << (c_.norm_correction ? "true" : "false");
    o << "}}";
    return o.str();
  }

  // Layer il decoded on the host and un-rotated with the CPU's Rotation: k, v [n][n_head_kv][d]
  // (the rows a decode step at position n - 1 reads: sealed rows from the codes, others exact).
  void dequantized(int il, std::vector<float>& kout, std::vector<float>& vout) const {
    check_layer(il);
    const KVCacheShape& s = shape_;
    const int d = s.head_dim, hkv = s.n_head_kv, N = n_;
    cuda::check(cudaStreamSynchronize(be_.stream()), "cudaStreamSynchronize");
    std::vector<uint8_t> raw(lay_.layer_bytes);
    cuda::check(cudaMemcpy(raw.data(), static_cast<const char*>(arena_->data()) + (size_t)il * lay_.layer_bytes,
                           raw.size(), cudaMemcpyDeviceToHost),
                "KV cache to host");
    kout.assign((size_t)N * hkv * d, 0.0f);
    vout.assign((size_t)N * hkv * d, 0.0f);
    std::vector<float> row(d), tmp(d);
    const int se = N > 0 ? sealed_end(N - 1) : 0;
    for (int kv = 0; kv < 2; kv++)
      for (int g = 0; g < hkv; g++)
        for (int p = 0; p < N; p++) {
          decode_host(raw.data(), kv, g, p, se, row.data());
          rot_[(size_t)il * hkv + g].apply_t(row.data(), tmp.data());
          std::copy(tmp.begin(), tmp.end(), &(kv == 0 ? kout : vout)[((size_t)p * hkv + g) * d]);
        }
  }
  size_t allocated_bytes() const { return lay_.total(); }

 private:
  void check_layer(int il) const {
    if (il < 0 || il >= shape_.n_layer) fail(ErrorCode::internal, "KV cache: layer out of range");
  }
  // First position a query at position p reads exact after the sinks (turbo; 0 for q modes).
  int sealed_end(int p) const {
    if (c_.mode != cuda::KVCodesLayer::turbo) return 0;
    const int m = p + 1 - c_.sinks;
    const int ns = m >= c_.ring + c_.block ? (m - c_.ring) / c_.block : 0;
    return c_.sinks + ns * c_.block;
  }
  const float* signs(int il) const {
    return static_cast<const float*>(signs_->data()) + (size_t)il * shape_.n_head_kv * 2 * shape_.head_dim;
  }
  void* scratch_k() const { return scratch_->data(); }
  void* scratch_v() const { return static_cast<char*>(scratch_->data()) + lay_.scratch / 2; }
  // More queries than the buffers hold: prefill only (never inside a captured step).
  void grow_qbuf(int n) {
    const size_t bytes = align_up((size_t)n * n_head_ * shape_.head_dim * sizeof(float));
    be_.sync();
    qrot_ = be_.alloc(bytes, "rotated queries");
    orot_ = be_.alloc(bytes, "rotated attention output");
    qcap_ = n;
  }
  cuda::KVCodesLayer layer(int il) const {
    cuda::KVCodesLayer L;
    char* base = static_cast<char*>(arena_->data()) + (size_t)il * lay_.layer_bytes;
    L.mode = c_.mode;
    L.n_head_kv = shape_.n_head_kv;
    L.head_dim = shape_.head_dim;
    L.n_ctx = shape_.n_ctx;
    L.k_codes = base + lay_.codes[0];
    L.v_codes = base + lay_.codes[1];
    L.k_scale = reinterpret_cast<uint16_t*>(base + lay_.scale[0]);
    L.v_scale = reinterpret_cast<uint16_t*>(base + lay_.scale[1]);
    if (c_.mode == cuda::KVCodesLayer::turbo) {
      L.k_sinks = reinterpret_cast<uint16_t*>(base + lay_.sinks[0]);
      L.v_sinks = reinterpret_cast<uint16_t*>(base + lay_.sinks[1]);
      L.k_ring = reinterpret_cast<uint16_t*>(base + lay_.ring[0]);
      L.v_ring = reinterpret_cast<uint16_t*>(base + lay_.ring[1]);
      L.k_cb = cb_dev_;
      L.v_cb = cb_dev_ + 32;
      L.sinks = c_.sinks;
      L.ring_slots = c_.ring_slots;
      L.block = c_.block;
      L.window = c_.ring;
      L.k_bits = c_.k_bits;
      L.v_bits = c_.v_bits;
      L.norm_correction = c_.norm_correction;
    }
    return L;
  }
  // Row p of K (kv 0) or V of head g from a host copy of the layer, rotated basis, as the CPU decodes.
  void decode_host(const uint8_t* raw, int kv, int g, int p, int sealed_end_, float* row) const {
    const int d = shape_.head_dim;
    const size_t n = shape_.n_ctx;
    auto f16 = [](const uint8_t* b) {
      uint16_t h;
      std::memcpy(&h, b, 2);
      return fp16_to_fp32(h);
    };
    if (c_.mode != cuda::KVCodesLayer::turbo) {
      const uint8_t* q = raw + lay_.codes[kv] + ((size_t)g * n + p) * lay_.code_row[kv];
      const uint8_t* sc = raw + lay_.scale[kv] + ((size_t)g * n + p) * (d / 32) * 2;
      for (int b = 0; b < d / 32; b++) {
        const float s = f16(sc + 2 * b);
        for (int i = 0; i < 32; i++) {
          int v;
          if (c_.mode == cuda::KVCodesLayer::q8_0) v = (int8_t)q[b * 32 + i];
          else v = (int)(i < 16 ? q[b * 16 + i] & 0xf : q[b * 16 + i - 16] >> 4) - 8;
          row[b * 32 + i] = s * (float)v;
        }
      }
      return;
    }
    if (p < c_.sinks || p >= sealed_end_) {
      const uint8_t* src = p < c_.sinks ? raw + lay_.sinks[kv] + ((size_t)g * c_.sinks + p) * d * 2
                                        : raw + lay_.ring[kv] + ((size_t)g * c_.ring_slots + (p - c_.sinks) % c_.ring_slots) * d * 2;
      for (int j = 0; j < d; j++) row[j] = f16(src + 2 * j);
      return;
    }
    const size_t prow = (size_t)g * (n - c_.sinks) + (p - c_.sinks);
    const uint8_t* codes = raw + lay_.codes[kv] + prow * lay_.code_row[kv];
    const float s = f16(raw + lay_.scale[kv] + prow * 2) / std::sqrt((float)d);
    const int bits = kv == 0 ? c_.k_bits : c_.v_bits;
    for (int j = 0; j < d; j++) row[j] = s * cent_[kv][get_bits(codes, j, bits)];
  }

  cuda::CudaBackendApi& be_;
  const cuda::CudaKernels& k_;
  CodesConfig c_;
  Layout lay_;
  int n_head_ = 0, qcap_ = 0, n_ = 0;
  float rs_ = 1.0f;
  std::vector<Rotation> rot_;  // [n_layer][n_head_kv], the CPU's (host decode for tests)
  std::vector<float> cent_[2];
  std::unique_ptr<Buffer> arena_, scratch_, work_, qrot_, orot_, signs_;
  float* cb_dev_ = nullptr;
};

}  // namespace

std::unique_ptr<KVCache> make_cuda_codes_kv_cache(const KVCacheParams& params, const KVCacheShape& shape,
                                                  cuda::CudaBackendApi& be) {
  if (shape.n_layer <= 0 || shape.n_head_kv <= 0 || shape.head_dim <= 0 || shape.n_ctx <= 0)
    fail(ErrorCode::invalid_arg, "KV cache: invalid shape");
  return std::make_unique<CudaCodesKVCache>(params, shape, be);
}

size_t cuda_codes_kv_cache_bytes(const KVCacheParams& params, const KVCacheShape& shape) {
  return make_layout(resolve(params, shape), shape).total();
}

void cuda_kv_dequantized(const KVCache& cache, int il, std::vector<float>& k, std::vector<float>& v) {
  const auto* c = dynamic_cast<const CudaCodesKVCache*>(&cache);
  if (!c) fail(ErrorCode::invalid_arg, "dequantized(): mode '" + cache.mode() + "' is not a compressed GPU cache");
  c->dequantized(il, k, v);
}

}  // namespace eoq
