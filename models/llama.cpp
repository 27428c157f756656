#include "models/llama.h"

#include <cmath>
#include <cstring>

#include "base/error.h"
#include "engine/gguf.h"
#include "engine/kv_cache.h"
#include "kernels/quants.h"

namespace eoq {

namespace {

int positive_int(const GGUFFile& f, const std::string& key, int64_t max) {
  const int64_t v = f.get_int(key);
  if (v <= 0 || v > max) fail(ErrorCode::format, "GGUF: " + key + " = " + std::to_string(v) + " is out of range");
  return (int)v;
}

std::string shape_str(const GGUFTensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.n_dims; i++) s += (i ? ", " : "") + std::to_string(t.ne[i]);
  return s + "]";
}

// A 2-D weight with ne = [n_cols, n_rows]; checks shape and type.
const GGUFTensor& weight_tensor(const GGUFFile& f, const std::string& name, int64_t n_cols, int64_t n_rows) {
  const GGUFTensor& t = f.tensor(name);
  if (t.n_dims != 2 || t.ne[0] != n_cols || t.ne[1] != n_rows)
    fail(ErrorCode::format, "tensor '" + name + "' has shape " + shape_str(t) + ", expected [" +
                                std::to_string(n_cols) + ", " + std::to_string(n_rows) + "]");
  f.require_supported(t);
  return t;
}

}  // namespace

LlamaConfig llama_config_from_gguf(const GGUFFile& f) {
  LlamaConfig c;
  c.arch = f.get_str("general.architecture");
  if (c.arch != "llama")
    fail(ErrorCode::unsupported, "architecture '" + c.arch + "' is not supported (eoq runs 'llama')");
  const std::string a = c.arch + ".";
  c.n_embd = positive_int(f, a + "embedding_length", 1 << 16);
  c.n_layer = positive_int(f, a + "block_count", 1024);
  c.n_head = positive_int(f, a + "attention.head_count", 1024);
  c.n_head_kv = f.has(a + "attention.head_count_kv") ? positive_int(f, a + "attention.head_count_kv", 1024) : c.n_head;
  c.n_ff = positive_int(f, a + "feed_forward_length", 1 << 20);
  c.n_ctx_train = positive_int(f, a + "context_length", 1 << 24);
  if (c.n_head % c.n_head_kv != 0)
    fail(ErrorCode::format, "head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
                                std::to_string(c.n_head_kv));
  c.head_dim = f.has(a + "attention.key_length") ? positive_int(f, a + "attention.key_length", 4096)
                                                 : c.n_embd / c.n_head;
  if (f.has(a + "attention.value_length") && f.get_int(a + "attention.value_length") != c.head_dim)
    fail(ErrorCode::unsupported, "attention.value_length != key_length is not supported");
  if (c.head_dim <= 0 || c.head_dim % 2) fail(ErrorCode::format, "head_dim must be even and positive");
  c.n_rot = f.has(a + "rope.dimension_count") ? positive_int(f, a + "rope.dimension_count", 4096) : c.head_dim;
  if (c.n_rot > c.head_dim || c.n_rot % 2) fail(ErrorCode::format, "rope.dimension_count is invalid");
  c.rms_eps = (float)f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5);
  if (!(c.rms_eps > 0 && c.rms_eps < 1)) fail(ErrorCode::format, "layer_norm_rms_epsilon is out of range");
  c.rope_base = (float)f.get_float(a + "rope.freq_base", 10000.0);
  if (!(c.rope_base > 1)) fail(ErrorCode::format, "rope.freq_base is out of range");
  const std::string scaling = f.get_str(a + "rope.scaling.type", "none");
  if (scaling == "linear") {
    const double factor = f.get_float(a + "rope.scaling.factor", 1.0);
    if (!(factor > 0)) fail(ErrorCode::format, "rope.scaling.factor is out of range");
    c.rope_scale = (float)(1.0 / factor);
  } else if (scaling != "none" && scaling != "llama3") {
    fail(ErrorCode::unsupported, "rope.scaling.type '" + scaling + "' is not supported");
  }
  c.n_vocab = (int)f.tensor("token_embd.weight").ne[1];

  // Frequencies base^(-2i/n_rot) by ggml's float recurrence (kernels/ops.h rope_adjacent);
  // rope_freqs.weight (Llama 3.1+) divides them per frequency.
  c.rope_theta_scale = std::pow(c.rope_base, -2.0f / (float)c.n_rot);
  const GGUFTensor* rf = f.find_tensor("rope_freqs.weight");
  if (rf) {
    if (rf->n_elements() != c.n_rot / 2) fail(ErrorCode::format, "rope_freqs.weight has the wrong length");
    f.require_supported(*rf);
    c.rope_freq_factors.resize(c.n_rot / 2);
    dequantize_row_ref(rf->type, rf->data, c.rope_freq_factors.data(), c.n_rot / 2);
  }
  return c;
}

ModelConfig read_model_config(const GGUFFile& f) {
  // One family today; a second architecture adds its branch here.
  return llama_config_from_gguf(f);
}

size_t model_weight_bytes(const GGUFFile& f) {
  size_t n = 0;
  for (const GGUFTensor& t : f.tensors()) n += t.nbytes;
  return n;
}

std::unique_ptr<Model> load_model(const GGUFFile& f, const ModelConfig& cfg, Backend& be) {
  return std::make_unique<LlamaModel>(f, cfg, be);
}

LlamaModel::LlamaModel(const GGUFFile& f, const LlamaConfig& cfg, Backend& be) : be_(be), cfg_(cfg) {
  const LlamaConfig& c = cfg_;
  const int64_t q_dim = (int64_t)c.n_head * c.head_dim, kv_dim = (int64_t)c.n_head_kv * c.head_dim;
  // Every tensor is checked before any is placed on the device.
  auto check_norm = [&](const std::string& name) {
    const GGUFTensor& t = f.tensor(name);
    if (t.n_elements() != c.n_embd) fail(ErrorCode::format, "tensor '" + name + "' has shape " + shape_str(t));
    f.require_supported(t);
  };
  check_norm("output_norm.weight");
  weight_tensor(f, "token_embd.weight", c.n_embd, c.n_vocab);
  const bool tied = f.find_tensor("output.weight") == nullptr;
  if (!tied) weight_tensor(f, "output.weight", c.n_embd, c.n_vocab);
  for (int il = 0; il < c.n_layer; il++) {
    const std::string p = "blk." + std::to_string(il) + ".";
    check_norm(p + "attn_norm.weight");
    check_norm(p + "ffn_norm.weight");
    weight_tensor(f, p + "attn_q.weight", c.n_embd, q_dim);
    weight_tensor(f, p + "attn_k.weight", c.n_embd, kv_dim);
    weight_tensor(f, p + "attn_v.weight", c.n_embd, kv_dim);
    weight_tensor(f, p + "attn_output.weight", q_dim, c.n_embd);
    weight_tensor(f, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    weight_tensor(f, p + "ffn_up.weight", c.n_embd, c.n_ff);
    weight_tensor(f, p + "ffn_down.weight", c.n_ff, c.n_embd);
  }

  // Norm vectors: any float type, converted to f32 once (sized first: the views must not move).
  norms_.resize((size_t)(2 * c.n_layer + 1) * c.n_embd);
  size_t used = 0;
  auto norm = [&](const std::string& name) {
    const GGUFTensor& t = f.tensor(name);
    float* dst = norms_.data() + used;
    used += c.n_embd;
    dequantize_row_ref(t.type, t.data, dst, c.n_embd);
    return be_.load_weight(GGMLType::F32, c.n_embd, 1, (size_t)c.n_embd * sizeof(float), dst);
  };
  auto weight = [&](const std::string& name, int64_t n_cols, int64_t n_rows) {
    const GGUFTensor& t = weight_tensor(f, name, n_cols, n_rows);
    bytes_per_token_ += t.nbytes;
    return be_.load_weight(t.type, n_cols, n_rows, t.row_bytes(), t.data);
  };

  {
    const GGUFTensor& te = f.tensor("token_embd.weight");
    token_embd_ = be_.load_weight(te.type, c.n_embd, c.n_vocab, te.row_bytes(), te.data);
    bytes_per_token_ += te.row_bytes();  // one row per token
  }
  output_norm_ = norm("output_norm.weight");
  if (tied) {
    output_ = token_embd_;
    bytes_per_token_ += f.tensor("token_embd.weight").nbytes;
  } else {
    output_ = weight("output.weight", c.n_embd, c.n_vocab);
  }
  if (!c.rope_freq_factors.empty())
    rope_freqs_ = be_.load_weight(GGMLType::F32, (int64_t)c.rope_freq_factors.size(), 1,
                                  c.rope_freq_factors.size() * sizeof(float), c.rope_freq_factors.data());
  layers_.resize(c.n_layer);
  for (int il = 0; il < c.n_layer; il++) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LlamaLayer& L = layers_[il];
    L.attn_norm = norm(p + "attn_norm.weight");
    L.attn_q = weight(p + "attn_q.weight", c.n_embd, q_dim);
    L.attn_k = weight(p + "attn_k.weight", c.n_embd, kv_dim);
    L.attn_v = weight(p + "attn_v.weight", c.n_embd, kv_dim);
    L.attn_output = weight(p + "attn_output.weight", q_dim, c.n_embd);
    L.ffn_norm = norm(p + "ffn_norm.weight");
    L.ffn_gate = weight(p + "ffn_gate.weight", c.n_embd, c.n_ff);
    L.ffn_up = weight(p + "ffn_up.weight", c.n_embd, c.n_ff);
    L.ffn_down = weight(p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
  set_max_batch(1);
}

void LlamaModel::set_max_batch(int n) {
  if (n <= max_batch_) return;
  const LlamaConfig& c = cfg_;
  const int64_t q_dim = (int64_t)c.n_head * c.head_dim, kv_dim = (int64_t)c.n_head_kv * c.head_dim;
  max_batch_ = n;
  bufs_.clear();
  bufs_.resize(9);
  x_ = be_.alloc_f32(c.n_embd, n, "activations", &bufs_[0]);
  xn_ = be_.alloc_f32(c.n_embd, n, "activations", &bufs_[1]);
  q_ = be_.alloc_f32(q_dim, n, "activations", &bufs_[2]);
  att_ = be_.alloc_f32(q_dim, n, "activations", &bufs_[3]);
  k_ = be_.alloc_f32(kv_dim, n, "activations", &bufs_[4]);
  v_ = be_.alloc_f32(kv_dim, n, "activations", &bufs_[5]);
  gate_ = be_.alloc_f32(c.n_ff, n, "activations", &bufs_[6]);
  up_ = be_.alloc_f32(c.n_ff, n, "activations", &bufs_[7]);
  // Logits live in the caller's host array on the CPU; elsewhere on the device, one row until
  // every row is asked for.
  logits_rows_ = 0;
  be_.forget_steps();
}

void LlamaModel::capture_layer(int il, int pos0, int n) {
  const LlamaConfig& c = cfg_;
  if (pos0 < 0 || pos0 + n > capture_->n_tok)
    fail(ErrorCode::invalid_arg, "Q/K/V capture: positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + n - 1) +
                                     " do not fit its " + std::to_string(capture_->n_tok) + " rows");
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  // Rows of one layer are contiguous in both the scratch tensors and the capture: [n][heads*hd].
  const size_t q_off = ((size_t)il * capture_->n_tok + pos0) * q_dim;
  const size_t kv_off = ((size_t)il * capture_->n_tok + pos0) * kv_dim;
  be_.to_host(q_.rows(0, n), capture_->q + q_off);
  be_.to_host(k_.rows(0, n), capture_->k + kv_off);
  be_.to_host(v_.rows(0, n), capture_->v + kv_off);
}

void LlamaModel::forward(const int32_t* tokens, int n, int pos0, KVCache& kv, float* logits, bool all_logits) {
  const LlamaConfig& c = cfg_;
  if (n <= 0) return;
  for (int t = 0; t < n; t++)
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
      fail(ErrorCode::invalid_arg, "token id " + std::to_string(tokens[t]) + " is out of range");
  if (n > max_batch_) set_max_batch(n);
  const int n_out = all_logits ? n : 1;  // logits rows: every token, or the last
  Tensor lg;
  if (be_.device().type == DeviceType::cpu) {
    lg = host_tensor(logits, c.n_vocab, n_out);
  } else {
    if (logits_rows_ < n_out) {
      logits_rows_ = all_logits ? max_batch_ : 1;
      logits_ = be_.alloc_f32(c.n_vocab, logits_rows_, "logits", &bufs_[8]);
      be_.forget_steps();
    }
    lg = logits_.rows(0, n_out);
  }
  if (&kv != last_kv_ || kv.serial() != last_kv_serial_) {  // a captured step reads this cache
    last_kv_ = &kv;
    last_kv_serial_ = kv.serial();
    be_.forget_steps();
  }
  kv.begin(pos0, n);
  const RopeParams rope{c.head_dim, c.n_rot, c.rope_theta_scale, c.rope_scale,
                        rope_freqs_.data ? &rope_freqs_ : nullptr};

  // The step's ops are issued once per step shape where the backend can replay them (a CUDA
  // graph of a decode step): nothing below reads device data on the host, except the capture.
  if (be_.begin_step(tokens, n, pos0, /*replayable=*/capture_ == nullptr)) {
    Tensor x = x_.rows(0, n), xn = xn_.rows(0, n), q = q_.rows(0, n), k = k_.rows(0, n), v = v_.rows(0, n),
           att = att_.rows(0, n), gate = gate_.rows(0, n), up = up_.rows(0, n);
    be_.get_rows(token_embd_, be_.step_tokens(), x);  // x = token_embd[tokens]   [n][n_embd]

    for (int il = 0; il < c.n_layer; il++) {
      const LlamaLayer& L = layers_[il];
      // Attention block: xn = norm(x); q,k,v = xn W; rope(q, k); att = attention; x += att Wo
      be_.rms_norm(x, L.attn_norm, c.rms_eps, xn);
      const Projection qkv[3] = {{&L.attn_q, &q}, {&L.attn_k, &k}, {&L.attn_v, &v}};
      be_.matmul(qkv, 3, xn);
      be_.rope(q, c.n_head, rope, pos0);
      be_.rope(k, c.n_head_kv, rope, pos0);
      if (capture_) capture_layer(il, pos0, n);
      kv.append(il, pos0, n, k, v);
      kv.attend(il, pos0, n, c.n_head, q, att);
      const Projection wo{&L.attn_output, &x, /*add_to_y=*/true};
      be_.matmul(&wo, 1, att);

      // Feed-forward block: x += down(silu(gate(xn)) * up(xn)), xn = norm(x)
      be_.rms_norm(x, L.ffn_norm, c.rms_eps, xn);
      be_.matmul_swiglu(L.ffn_gate, L.ffn_up, xn, gate, up);  // gate = silu(xn W_gate) * (xn W_up)
      const Projection down{&L.ffn_down, &x, /*add_to_y=*/true};
      be_.matmul(&down, 1, gate);
    }

    // Output: only the rows asked for.
    Tensor xo = x.rows(n - n_out, n_out), xno = xn.rows(0, n_out);
    be_.rms_norm(xo, output_norm_, c.rms_eps, xno);
    const Projection out{&output_, &lg};
    be_.matmul(&out, 1, xno);
  }
  be_.end_step();
  be_.to_host(lg, logits);
}

void LlamaModel::forward_batch(const SeqSegment* segs, int n_seg, float* logits) {
  const LlamaConfig& c = cfg_;
  if (n_seg <= 0) return;
  if (n_seg == 1) {  // one sequence: the plain step (a CUDA graph may replay it)
    forward(segs[0].tokens, segs[0].n, segs[0].pos0, *segs[0].kv, logits, segs[0].all_logits);
    return;
  }
  int n = 0, n_out = 0;
  for (int s = 0; s < n_seg; s++) {
    const SeqSegment& g = segs[s];
    if (g.n <= 0 || !g.tokens || !g.kv) fail(ErrorCode::internal, "forward_batch: an empty segment");
    for (int j = 0; j < s; j++)
      if (segs[j].kv == g.kv) fail(ErrorCode::internal, "forward_batch: two segments share one cache");
    for (int t = 0; t < g.n; t++)
      if (g.tokens[t] < 0 || g.tokens[t] >= c.n_vocab)
        fail(ErrorCode::invalid_arg, "token id " + std::to_string(g.tokens[t]) + " is out of range");
    n += g.n;
    n_out += g.all_logits ? g.n : 1;
  }
  if (!be_.segmented_steps()) {
    // The backend's kernels read one staged position per step: one step per sequence.
    size_t row = 0;
    for (int s = 0; s < n_seg; s++) {
      const SeqSegment& g = segs[s];
      forward(g.tokens, g.n, g.pos0, *g.kv, logits + row * c.n_vocab, g.all_logits);
      row += g.all_logits ? g.n : 1;
    }
    return;
  }
  if (capture_) fail(ErrorCode::internal, "forward_batch: the Q/K/V capture takes one sequence");
  if (n > max_batch_) set_max_batch(n);
  batch_tokens_.clear();
  for (int s = 0; s < n_seg; s++) batch_tokens_.insert(batch_tokens_.end(), segs[s].tokens, segs[s].tokens + segs[s].n);
  Tensor lg;
  if (be_.device().type == DeviceType::cpu) {
    lg = host_tensor(logits, c.n_vocab, n_out);
  } else {
    if (logits_rows_ < n_out) {
      logits_rows_ = max_batch_;
      logits_ = be_.alloc_f32(c.n_vocab, logits_rows_, "logits", &bufs_[8]);
      be_.forget_steps();
    }
    lg = logits_.rows(0, n_out);
  }
  for (int s = 0; s < n_seg; s++) segs[s].kv->begin(segs[s].pos0, segs[s].n);  // all checked before compute
  last_kv_ = nullptr;  // a later single-sequence step must not replay against a stale cache
  const RopeParams rope{c.head_dim, c.n_rot, c.rope_theta_scale, c.rope_scale,
                        rope_freqs_.data ? &rope_freqs_ : nullptr};

  // Never replayed: the segments' positions and caches change from step to step.
  be_.begin_step(batch_tokens_.data(), n, segs[0].pos0, /*replayable=*/false);
  Tensor x = x_.rows(0, n), xn = xn_.rows(0, n), q = q_.rows(0, n), k = k_.rows(0, n), v = v_.rows(0, n),
         att = att_.rows(0, n), gate = gate_.rows(0, n), up = up_.rows(0, n);
  be_.get_rows(token_embd_, be_.step_tokens(), x);  // x = token_embd[tokens]   [n][n_embd]
  for (int il = 0; il < c.n_layer; il++) {
    const LlamaLayer& L = layers_[il];
    // The same ops as forward(), the products over all n rows; per segment (rows r0..r0+g.n):
    // RoPE at its positions, its cache's append and attention.
    be_.rms_norm(x, L.attn_norm, c.rms_eps, xn);
    const Projection qkv[3] = {{&L.attn_q, &q}, {&L.attn_k, &k}, {&L.attn_v, &v}};
    be_.matmul(qkv, 3, xn);
    for (int s = 0, r0 = 0; s < n_seg; r0 += segs[s].n, s++) {
      const SeqSegment& g = segs[s];
      Tensor qs = q.rows(r0, g.n), ks = k.rows(r0, g.n), vs = v.rows(r0, g.n), as = att.rows(r0, g.n);
      be_.rope(qs, c.n_head, rope, g.pos0);
      be_.rope(ks, c.n_head_kv, rope, g.pos0);
      g.kv->append(il, g.pos0, g.n, ks, vs);
      g.kv->attend(il, g.pos0, g.n, c.n_head, qs, as);
    }
    const Projection wo{&L.attn_output, &x, /*add_to_y=*/true};
    be_.matmul(&wo, 1, att);
    be_.rms_norm(x, L.ffn_norm, c.rms_eps, xn);
    be_.matmul_swiglu(L.ffn_gate, L.ffn_up, xn, gate, up);
    const Projection down{&L.ffn_down, &x, /*add_to_y=*/true};
    be_.matmul(&down, 1, gate);
  }
  // Output rows: each segment's last token (or all of its tokens), normed into xn's front rows.
  for (int s = 0, r0 = 0, o = 0; s < n_seg; r0 += segs[s].n, s++) {
    const SeqSegment& g = segs[s];
    const int m = g.all_logits ? g.n : 1;
    Tensor xo = x.rows(r0 + g.n - m, m), xno = xn.rows(o, m);
    be_.rms_norm(xo, output_norm_, c.rms_eps, xno);
    o += m;
  }
  const Projection out{&output_, &lg};
  be_.matmul(&out, 1, xn.rows(0, n_out));
  be_.end_step();
  be_.to_host(lg, logits);
}

}  // namespace eoq
