#include "models/llama.h"

#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/kv_cache.h"
#include "engine/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
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
WeightView weight(const GGUFFile& f, const std::string& name, int64_t n_cols, int64_t n_rows) {
  const GGUFTensor& t = f.tensor(name);
  if (t.n_dims != 2 || t.ne[0] != n_cols || t.ne[1] != n_rows)
    fail(ErrorCode::format, "tensor '" + name + "' has shape " + shape_str(t) + ", expected [" +
                                std::to_string(n_cols) + ", " + std::to_string(n_rows) + "]");
  f.require_supported(t);
  return WeightView{t.type, n_cols, n_rows, t.row_bytes(), t.data};
}

}  // namespace

LlamaConfig LlamaConfig::from_gguf(const GGUFFile& f) {
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

LlamaModel::LlamaModel(const GGUFFile& f) : cfg_(LlamaConfig::from_gguf(f)) {
  const LlamaConfig& c = cfg_;
  const int64_t q_dim = (int64_t)c.n_head * c.head_dim, kv_dim = (int64_t)c.n_head_kv * c.head_dim;
  // Norm vectors: any float type, converted to f32 once. Count first so owned_ never moves.
  auto norm_count = [&](const std::string& name) {
    const GGUFTensor& t = f.tensor(name);
    if (t.n_elements() != c.n_embd) fail(ErrorCode::format, "tensor '" + name + "' has shape " + shape_str(t));
    f.require_supported(t);
  };
  norm_count("output_norm.weight");
  for (int il = 0; il < c.n_layer; il++) {
    norm_count("blk." + std::to_string(il) + ".attn_norm.weight");
    norm_count("blk." + std::to_string(il) + ".ffn_norm.weight");
  }
  owned_.resize((size_t)(2 * c.n_layer + 1) * c.n_embd);
  size_t used = 0;
  auto norm = [&](const std::string& name) -> const float* {
    const GGUFTensor& t = f.tensor(name);
    float* dst = owned_.data() + used;
    used += c.n_embd;
    dequantize_row_ref(t.type, t.data, dst, c.n_embd);
    return dst;
  };

  token_embd_ = weight(f, "token_embd.weight", c.n_embd, c.n_vocab);
  output_norm_ = norm("output_norm.weight");
  output_ = f.find_tensor("output.weight") ? weight(f, "output.weight", c.n_embd, c.n_vocab) : token_embd_;
  layers_.resize(c.n_layer);
  for (int il = 0; il < c.n_layer; il++) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LlamaLayer& L = layers_[il];
    L.attn_norm = norm(p + "attn_norm.weight");
    L.attn_q = weight(f, p + "attn_q.weight", c.n_embd, q_dim);
    L.attn_k = weight(f, p + "attn_k.weight", c.n_embd, kv_dim);
    L.attn_v = weight(f, p + "attn_v.weight", c.n_embd, kv_dim);
    L.attn_output = weight(f, p + "attn_output.weight", q_dim, c.n_embd);
    L.ffn_norm = norm(p + "ffn_norm.weight");
    L.ffn_gate = weight(f, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    L.ffn_up = weight(f, p + "ffn_up.weight", c.n_embd, c.n_ff);
    L.ffn_down = weight(f, p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
  set_max_batch(1);
}

void LlamaModel::set_max_batch(int n) {
  if (n <= max_batch_) return;
  const LlamaConfig& c = cfg_;
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  max_batch_ = n;
  x_.resize((size_t)n * c.n_embd);
  xn_.resize((size_t)n * c.n_embd);
  tmp_.resize((size_t)n * c.n_embd);
  q_.resize((size_t)n * q_dim);
  att_.resize((size_t)n * q_dim);
  k_.resize((size_t)n * kv_dim);
  v_.resize((size_t)n * kv_dim);
  gate_.resize((size_t)n * c.n_ff);
  up_.resize((size_t)n * c.n_ff);
}

void LlamaModel::capture_layer(int il, int pos0, int n) const {
  const LlamaConfig& c = cfg_;
  if (pos0 < 0 || pos0 + n > capture_->n_tok)
    fail(ErrorCode::invalid_arg, "Q/K/V capture: positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + n - 1) +
                                     " do not fit its " + std::to_string(capture_->n_tok) + " rows");
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  // Rows of one layer are contiguous in both the scratch buffers and the capture: [n][heads*hd].
  const size_t q_off = ((size_t)il * capture_->n_tok + pos0) * q_dim;
  const size_t kv_off = ((size_t)il * capture_->n_tok + pos0) * kv_dim;
  std::memcpy(capture_->q + q_off, q_.data(), (size_t)n * q_dim * sizeof(float));
  std::memcpy(capture_->k + kv_off, k_.data(), (size_t)n * kv_dim * sizeof(float));
  std::memcpy(capture_->v + kv_off, v_.data(), (size_t)n * kv_dim * sizeof(float));
}

void LlamaModel::forward(const int32_t* tokens, int n, int pos0, KVCache& kv, ThreadPool& pool, float* logits,
                         bool all_logits) {
  const LlamaConfig& c = cfg_;
  if (n <= 0) return;
  if (n > max_batch_) set_max_batch(n);
  const int E = c.n_embd;
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  const CpuKernels& kern = cpu_kernels();

  // x = token_embd[tokens]   [n][E]
  for (int t = 0; t < n; t++) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
      fail(ErrorCode::invalid_arg, "token id " + std::to_string(tokens[t]) + " is out of range");
    kern.dequantize_row(token_embd_.type, token_embd_.data + (size_t)tokens[t] * token_embd_.row_bytes,
                        x_.data() + (size_t)t * E, E);
  }

  for (int il = 0; il < c.n_layer; il++) {
    const LlamaLayer& L = layers_[il];
    // Attention block: xn = norm(x); q,k,v = xn W; rope(q, k); att = attention; x += att Wo
    for (int t = 0; t < n; t++) rms_norm(&x_[(size_t)t * E], L.attn_norm, &xn_[(size_t)t * E], E, c.rms_eps);
    const MatmulJob qkv[3] = {{&L.attn_q, q_.data()}, {&L.attn_k, k_.data()}, {&L.attn_v, v_.data()}};
    matmul_group(qkv, 3, xn_.data(), n, pool);
    for (int t = 0; t < n; t++) {
      const float* ff = c.rope_freq_factors.empty() ? nullptr : c.rope_freq_factors.data();
      rope_adjacent(&q_[t * q_dim], c.n_head, c.head_dim, c.n_rot, pos0 + t, c.rope_theta_scale, c.rope_scale, ff);
      rope_adjacent(&k_[t * kv_dim], c.n_head_kv, c.head_dim, c.n_rot, pos0 + t, c.rope_theta_scale, c.rope_scale, ff);
    }
    if (capture_) capture_layer(il, pos0, n);
    kv.append(il, pos0, n, k_.data(), v_.data(), pool);
    kv.attend(il, pos0, n, c.n_head, q_.data(), att_.data(), pool);
    matmul(L.attn_output, att_.data(), n, tmp_.data(), pool);
    for (size_t i = 0; i < (size_t)n * E; i++) x_[i] += tmp_[i];

    // Feed-forward block: x += down(silu(gate(xn)) * up(xn)), xn = norm(x)
    for (int t = 0; t < n; t++) rms_norm(&x_[(size_t)t * E], L.ffn_norm, &xn_[(size_t)t * E], E, c.rms_eps);
    const MatmulJob gate_up[2] = {{&L.ffn_gate, gate_.data()}, {&L.ffn_up, up_.data()}};
    matmul_group(gate_up, 2, xn_.data(), n, pool);
    for (int t = 0; t < n; t++)
      cpu_kernels().swiglu(&gate_[(size_t)t * c.n_ff], &up_[(size_t)t * c.n_ff], c.n_ff);
    matmul(L.ffn_down, gate_.data(), n, tmp_.data(), pool);
    for (size_t i = 0; i < (size_t)n * E; i++) x_[i] += tmp_[i];
  }

  // Output: only the rows asked for.
  const int first = all_logits ? 0 : n - 1;
  const int n_out = n - first;
  for (int t = first; t < n; t++)
    rms_norm(&x_[(size_t)t * E], output_norm_, &xn_[(size_t)(t - first) * E], E, c.rms_eps);
  matmul(output_, xn_.data(), n_out, logits, pool);
}

}  // namespace eoq
