#include "engine/state_file.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "base/error.h"
#include "engine/context.h"
#include "engine/engine.h"
#include "engine/gguf.h"

namespace eoq {

namespace {

constexpr char kMagic[8] = {'E', 'O', 'Q', 'S', 'T', 'A', 'T', 'E'};

void put_u32(std::vector<uint8_t>& o, uint32_t v) {
  for (int i = 0; i < 4; i++) o.push_back((uint8_t)(v >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& o, uint64_t v) {
  for (int i = 0; i < 8; i++) o.push_back((uint8_t)(v >> (8 * i)));
}
void put_bytes(std::vector<uint8_t>& o, const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  o.insert(o.end(), b, b + n);
}

// Bounds-checked reads over the file's bytes: every failure names the field.
struct Reader {
  const uint8_t* p;
  size_t n, at = 0;
  void need(size_t k, const char* what) const {
    if (k > n - at) fail(ErrorCode::format, std::string("state file: truncated at ") + what);
  }
  uint32_t u32(const char* what) {
    need(4, what);
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[at + i] << (8 * i);
    at += 4;
    return v;
  }
  uint64_t u64(const char* what) {
    need(8, what);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[at + i] << (8 * i);
    at += 8;
    return v;
  }
  const uint8_t* bytes(size_t k, const char* what) {
    need(k, what);
    const uint8_t* r = p + at;
    at += k;
    return r;
  }
};

uint64_t mix(uint64_t h, uint64_t w) {
  h ^= w;
  h *= 0x100000001b3ULL;
  return h ^ (h >> 29);
}

}  // namespace

uint64_t state_checksum(const uint8_t* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    h = mix(h, w);
  }
  uint64_t tail = 0;
  for (size_t k = 0; i + k < n; k++) tail |= (uint64_t)data[i + k] << (8 * k);
  return mix(mix(h, tail), (uint64_t)n);
}

uint64_t state_model_id(const GGUFFile& f) {
  std::vector<uint8_t> buf;
  for (const GGUFTensor& t : f.tensors()) {
    put_bytes(buf, t.name.data(), t.name.size());
    put_u32(buf, (uint32_t)t.type);
    for (int64_t e : t.ne) put_u64(buf, (uint64_t)e);
    put_bytes(buf, t.data, std::min<size_t>(t.nbytes, 64));
  }
  const std::string name = f.get_str("general.name", "");
  put_bytes(buf, name.data(), name.size());
  return state_checksum(buf.data(), buf.size());
}

std::string canonical_kv_params(const KVCacheParams& p) {
  return "mode=" + p.mode + ":k_bits=" + std::to_string(p.k_bits) + ":v_bits=" + std::to_string(p.v_bits) +
         ":rank_cap=" + std::to_string(p.rank_cap) + ":v_rank_cap=" + std::to_string(p.v_rank_cap) +
         ":factor_bits=" + std::to_string(p.factor_bits) + ":shrink=" + std::to_string(p.shrink) +
         ":block=" + std::to_string(p.block) + ":ring=" + std::to_string(p.ring) + ":sinks=" + std::to_string(p.sinks) +
         ":boundary_layers=" + std::to_string(p.boundary_layers) + ":boundary_bits=" + std::to_string(p.boundary_bits) +
         ":norm_correction=" + std::to_string(p.norm_correction) + ":norm_bits=" + std::to_string(p.norm_bits) +
         ":tail_bits=" + std::to_string(p.tail_bits) + ":v_tail_bits=" + std::to_string(p.v_tail_bits) +
         ":window=" + std::to_string(p.window) + ":k_adapt=" + std::to_string(p.k_adapt) +
         ":exact_scores=" + std::to_string(p.exact_scores) +
         ":seed=" + std::to_string(p.seed);
}

size_t Context::save_state(int i, const std::string& path) {
  Sequence& s = seq(i);
  std::vector<uint8_t> out;
  {
    std::unique_lock<std::mutex> lock(mu_);
    wait_idle(s, lock);
    s.busy_ = true;  // nobody evaluates on it while it is written out
  }
  struct Free {
    Context& c;
    Sequence& s;
    ~Free() {
      std::lock_guard<std::mutex> g(c.mu_);
      s.busy_ = false;
      c.cv_.notify_all();
    }
  } free_{*this, s};
  put_bytes(out, kMagic, 8);
  put_u32(out, kStateVersion);
  put_u32(out, 0);
  put_u64(out, engine_.model_id());
  const std::string kv = canonical_kv_params(kv_params_);
  put_u32(out, (uint32_t)kv.size());
  put_bytes(out, kv.data(), kv.size());
  put_u32(out, (uint32_t)s.tokens_.size());
  put_bytes(out, s.tokens_.data(), s.tokens_.size() * sizeof(int32_t));
  const size_t n_logits = s.tokens_.empty() ? 0 : s.logits_.size();
  put_u32(out, (uint32_t)n_logits);
  put_bytes(out, s.logits_.data(), n_logits * sizeof(float));
  // The payload is written in place after its size field (patched once known): no second copy.
  const size_t size_at = out.size();
  put_u64(out, 0);
  out.reserve(out.size() + s.kv_->bytes() + 16);
  s.kv_->save_payload(out);
  const uint64_t pay = out.size() - size_at - 8;
  for (int k = 0; k < 8; k++) out[size_at + k] = (uint8_t)(pay >> (8 * k));
  put_u64(out, state_checksum(out.data(), out.size()));
  // Written to a temporary name and renamed: a crash mid-write never leaves a half file at path.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail(ErrorCode::io, "state file: cannot write " + tmp);
    f.write(reinterpret_cast<const char*>(out.data()), (std::streamsize)out.size());
    if (!f) fail(ErrorCode::io, "state file: writing " + tmp + " failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(ErrorCode::io, "state file: cannot rename " + tmp + " to " + path);
  return out.size();
}

void Context::load_state(int i, const std::string& path) {
  Sequence& s = seq(i);
  {
    std::unique_lock<std::mutex> lock(mu_);
    wait_idle(s, lock);
    s.busy_ = true;
  }
  struct Free {
    Context& c;
    Sequence& s;
    bool ok = false;
    ~Free() {
      std::lock_guard<std::mutex> g(c.mu_);
      if (!ok) {  // anything failed: the sequence is left empty, not half loaded
        s.kv_->clear();
        s.tokens_.clear();
      }
      s.busy_ = false;
      c.cv_.notify_all();
    }
  } free_{*this, s};
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) fail(ErrorCode::io, "state file: cannot open " + path);
  const std::streamoff size = f.tellg();
  const int n_vocab = engine_.n_vocab();
  // Upper bound of a valid file for this context: header, every token, the logits and a payload
  // of at most twice an f32 cache of n_ctx tokens.
  const KVCacheShape& sh = s.kv_->shape();
  const uint64_t limit = 4096 + (uint64_t)n_ctx_ * 4 + (uint64_t)n_vocab * 4 +
                         4 * (uint64_t)sh.n_layer * sh.n_head_kv * sh.head_dim * (uint64_t)n_ctx_ * 4;
  if (size < 0 || (uint64_t)size > limit)
    fail(ErrorCode::format, "state file: " + path + " has " + std::to_string((long long)size) +
                                " bytes, more than a state of this context can hold");
  std::vector<uint8_t> data((size_t)size);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(data.data()), size);
  if (!f) fail(ErrorCode::io, "state file: cannot read " + path);
  if (data.size() < 8 + 8 || std::memcmp(data.data(), kMagic, 8) != 0)
    fail(ErrorCode::format, "state file: " + path + " is not an eoq state file (bad magic)");
  Reader r{data.data(), data.size() - 8};
  r.at = 8;
  const uint32_t version = r.u32("version");
  if (version != kStateVersion)
    fail(ErrorCode::format, "state file: version " + std::to_string(version) + " is not supported (this build reads " +
                                std::to_string(kStateVersion) + ")");
  {
    Reader tail{data.data(), data.size()};
    tail.at = data.size() - 8;
    if (tail.u64("checksum") != state_checksum(data.data(), data.size() - 8))
      fail(ErrorCode::format, "state file: checksum mismatch (the file is corrupt or truncated)");
  }
  if (r.u32("flags") != 0) fail(ErrorCode::format, "state file: unknown flags");
  if (r.u64("model id") != engine_.model_id())
    fail(ErrorCode::format, "state file: it was saved with a different model");
  const uint32_t kv_len = r.u32("cache configuration");
  if (kv_len > 4096) fail(ErrorCode::format, "state file: the cache configuration is too long");
  const uint8_t* kvb = r.bytes(kv_len, "cache configuration");
  const std::string kv(reinterpret_cast<const char*>(kvb), kv_len), want = canonical_kv_params(kv_params_);
  if (kv != want)
    fail(ErrorCode::format, "state file: saved with cache '" + kv + "', this context has '" + want + "'");
  const uint32_t n_tok = r.u32("token count");
  if (n_tok > (uint32_t)n_ctx_)
    fail(ErrorCode::format, "state file: " + std::to_string(n_tok) + " tokens do not fit n_ctx " + std::to_string(n_ctx_));
  const uint8_t* tb = r.bytes((size_t)n_tok * 4, "tokens");
  std::vector<int32_t> tokens(n_tok);
  std::memcpy(tokens.data(), tb, (size_t)n_tok * 4);
  for (int32_t t : tokens)
    if (t < 0 || t >= n_vocab) fail(ErrorCode::format, "state file: token id " + std::to_string(t) + " is out of range");
  const uint32_t n_logits = r.u32("logits count");
  if (n_logits != (n_tok ? (uint32_t)n_vocab : 0u))
    fail(ErrorCode::format, "state file: " + std::to_string(n_logits) + " logits, expected " +
                                std::to_string(n_tok ? n_vocab : 0));
  const uint8_t* lb = r.bytes((size_t)n_logits * 4, "logits");
  std::vector<float> logits(n_vocab, 0.0f);
  std::memcpy(logits.data(), lb, (size_t)n_logits * 4);
  for (uint32_t k = 0; k < n_logits; k++)
    if (std::isnan(logits[k])) fail(ErrorCode::format, "state file: a logit is NaN");
  const uint64_t pay = r.u64("payload size");
  const uint8_t* pb = r.bytes((size_t)std::min<uint64_t>(pay, std::numeric_limits<size_t>::max()), "payload");
  if (r.at != r.n) fail(ErrorCode::format, "state file: bytes after the payload");
  s.kv_->load_payload(pb, (size_t)pay, (int)n_tok);
  if (s.kv_->n_tokens() != (int)n_tok) fail(ErrorCode::format, "state file: the cache payload holds another token count");
  s.tokens_ = std::move(tokens);
  s.logits_ = std::move(logits);
  free_.ok = true;
}

}  // namespace eoq
