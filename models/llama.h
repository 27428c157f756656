// The Llama family (GGUF architecture "llama": Llama 2/3/3.1/3.2, Mistral/Ministral, SmolLM2).
// Config from GGUF metadata, weights named after the GGUF tensors, and the forward pass.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/matmul.h"

namespace eoq {

class GGUFFile;
class KVCache;
class ThreadPool;

// Glossary: n_embd model width; n_head / n_head_kv query and KV heads; head_dim per-head width;
// n_ff feed-forward width; n_rot dims rotated by RoPE (= head_dim for Llama).
struct LlamaConfig {
  std::string arch;      // general.architecture ("llama")
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_rot = 0;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  float rope_scale = 1.0f;          // linear scaling: position multiplier (1 / factor)
  float rope_theta_scale = 1.0f;    // base^(-2/n_rot) in float, as ggml computes it
  std::vector<float> rope_freq_factors;  // [n_rot/2] from rope_freqs.weight (Llama 3.1+), or empty

  static LlamaConfig from_gguf(const GGUFFile& f);
};

// Destination of the opt-in Q/K/V capture (LlamaModel::set_capture): per layer, the post-RoPE
// queries (unscaled) as handed to KVCache::attend, and the keys (post-RoPE) and values as handed to
// KVCache::append, float32, row-major:
//   q [n_layer][n_tok][n_head][head_dim],  k and v [n_layer][n_tok][n_head_kv][head_dim].
// Position p of a forward call goes to row p; forward() fails if a position is >= n_tok.
// The buffers belong to the caller and must outlive the capture.
struct QKVCapture {
  float* q = nullptr;
  float* k = nullptr;
  float* v = nullptr;
  int n_tok = 0;
};

struct LlamaLayer {
  const float* attn_norm;  // [n_embd]
  WeightView attn_q;       // [n_embd] -> [n_head * head_dim]
  WeightView attn_k;       // [n_embd] -> [n_head_kv * head_dim]
  WeightView attn_v;       // [n_embd] -> [n_head_kv * head_dim]
  WeightView attn_output;  // [n_head * head_dim] -> [n_embd]
  const float* ffn_norm;   // [n_embd]
  WeightView ffn_gate;     // [n_embd] -> [n_ff]
  WeightView ffn_up;       // [n_embd] -> [n_ff]
  WeightView ffn_down;     // [n_ff] -> [n_embd]
};

class LlamaModel {
 public:
  // Checks every tensor's presence, shape and type (unsupported types name the tensor).
  explicit LlamaModel(const GGUFFile& f);

  const LlamaConfig& config() const { return cfg_; }

  // Runs n tokens at positions pos0.. through the model, appending their K/V to `kv`.
  // logits: [n][n_vocab] when all_logits, else [n_vocab] for the last token only.
  // n must be <= the scratch capacity given by max_batch.
  void forward(const int32_t* tokens, int n, int pos0, KVCache& kv, ThreadPool& pool, float* logits,
               bool all_logits);

  void set_max_batch(int n_batch);

  // Captures every later forward()'s Q/K/V into *cap (nullptr: off, the default). When off, the
  // forward pass pays one pointer test per layer.
  void set_capture(const QKVCapture* cap) { capture_ = cap; }

 private:
  LlamaConfig cfg_;
  WeightView token_embd_;    // [n_vocab rows][n_embd]
  const float* output_norm_; // [n_embd]
  WeightView output_;        // [n_vocab rows][n_embd] (token_embd when tied)
  std::vector<LlamaLayer> layers_;
  std::vector<float> owned_;  // F16/BF16 norm vectors converted to f32 at load
  const QKVCapture* capture_ = nullptr;

  // Copies layer il's q_, k_, v_ (n tokens at positions pos0..) into capture_.
  void capture_layer(int il, int pos0, int n) const;

  // Scratch activations, [max_batch][...]
  int max_batch_ = 0;
  std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, tmp_;
};

}  // namespace eoq
