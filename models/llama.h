// The Llama family (GGUF architecture "llama": Llama 2/3/3.1/3.2, Mistral/Ministral, SmolLM2).
// Config from GGUF metadata, weights named after the GGUF tensors, and the forward pass: one
// function over the backend's ops, for every device.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/model.h"

namespace eoq {

using LlamaConfig = ModelConfig;
LlamaConfig llama_config_from_gguf(const GGUFFile& f);

struct LlamaLayer {
  Tensor attn_norm;    // F32 [n_embd]
  Tensor attn_q;       // [n_embd] -> [n_head * head_dim]
  Tensor attn_k;       // [n_embd] -> [n_head_kv * head_dim]
  Tensor attn_v;       // [n_embd] -> [n_head_kv * head_dim]
  Tensor attn_output;  // [n_head * head_dim] -> [n_embd]
  Tensor ffn_norm;     // F32 [n_embd]
  Tensor ffn_gate;     // [n_embd] -> [n_ff]
  Tensor ffn_up;       // [n_embd] -> [n_ff]
  Tensor ffn_down;     // [n_ff] -> [n_embd]
};

class LlamaModel final : public Model {
 public:
  // cfg: llama_config_from_gguf(f), read once by the caller
  LlamaModel(const GGUFFile& f, const LlamaConfig& cfg, Backend& be);

  const LlamaConfig& config() const override { return cfg_; }
  void forward(const int32_t* tokens, int n, int pos0, KVCache& kv, float* logits, bool all_logits) override;
  void forward_batch(const SeqSegment* segs, int n_seg, float* logits) override;
  void set_max_batch(int n_batch) override;
  void set_capture(const QKVCapture* cap) override { capture_ = cap; }
  size_t weight_bytes_per_token() const override { return bytes_per_token_; }

 private:
  Backend& be_;
  LlamaConfig cfg_;
  Tensor token_embd_;    // [n_vocab rows][n_embd]
  Tensor output_norm_;   // F32 [n_embd]
  Tensor output_;        // [n_vocab rows][n_embd] (token_embd when tied)
  Tensor rope_freqs_;    // F32 [n_rot/2] (rope_freqs.weight), or empty
  std::vector<LlamaLayer> layers_;
  std::vector<float> norms_;  // F32 norm vectors (converted from any float type at load)
  std::unique_ptr<Buffer> norms_buf_;  // their copy on the device (CPU: unused, views of norms_)
  size_t bytes_per_token_ = 0;
  const QKVCapture* capture_ = nullptr;
  const KVCache* last_kv_ = nullptr;  // the cache of the last forward call (captured steps read it)
  uint64_t last_kv_serial_ = 0;

  std::vector<int32_t> batch_tokens_;  // forward_batch: the segments' tokens, concatenated

  // Copies layer il's q_, k_, v_ (n tokens at positions pos0..) into capture_.
  void capture_layer(int il, int pos0, int n);

  // Scratch activations on the device, [max_batch rows][...]; logits_ [n_vocab, max_batch rows
  // once all_logits was asked for, else 1 row].
  int max_batch_ = 0;
  std::vector<std::unique_ptr<Buffer>> bufs_;
  Tensor x_, xn_, q_, k_, v_, att_, gate_, up_, logits_;
  int logits_rows_ = 0;
};

}  // namespace eoq
