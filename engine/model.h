// What the engine needs of a model architecture: its hyperparameters and one forward call.
// Architectures live in models/ (one file per family) and are reached only through load_model(),
// so that engine/ includes nothing from models/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace eoq {

class Backend;
class GGUFFile;
class KVCache;

// Glossary: n_embd model width; n_head / n_head_kv query and KV heads; head_dim per-head width;
// n_ff feed-forward width; n_rot dims rotated by RoPE (= head_dim for Llama).
struct ModelConfig {
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
};

// Destination of the opt-in Q/K/V capture (Model::set_capture): per layer, the post-RoPE
// queries (unscaled) as handed to KVCache::attend, and the keys (post-RoPE) and values as handed to
// KVCache::append, float32, row-major:
//   q [n_layer][n_tok][n_head][head_dim],  k and v [n_layer][n_tok][n_head_kv][head_dim].
// Position p of a forward call goes to row p; forward() fails if a position is >= n_tok.
// The buffers belong to the caller (host memory) and must outlive the capture.
struct QKVCapture {
  float* q = nullptr;
  float* k = nullptr;
  float* v = nullptr;
  int n_tok = 0;
};

// One sequence's part of a batched forward call (Model::forward_batch): n tokens at positions
// pos0.. of the sequence whose cache is kv.
struct SeqSegment {
  const int32_t* tokens = nullptr;
  int n = 0;
  int pos0 = 0;
  KVCache* kv = nullptr;
  bool all_logits = false;  // logits of every token of the segment (else of its last only)
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;

  // Runs n tokens at positions pos0.. through the model, appending their K/V to `kv` (made by
  // the model's backend). logits (host): [n][n_vocab] when all_logits, else [n_vocab] for the
  // last token only. Token ids must be valid (Error(invalid_arg) otherwise, before any compute).
  virtual void forward(const int32_t* tokens, int n, int pos0, KVCache& kv, float* logits, bool all_logits) = 0;
  // Several sequences' tokens in one step: the weight products see the tokens of every segment
  // as one batch (each matrix is read once for all of them); RoPE, the cache append and attention
  // run per segment on its own cache at its own positions. logits (host): the segments' rows in
  // order, n rows for a segment with all_logits, else 1 ([rows][n_vocab]). Each segment's rows
  // equal what forward() alone gives it. The caches must be distinct.
  virtual void forward_batch(const SeqSegment* segs, int n_seg, float* logits) = 0;
  // Scratch for up to n tokens per forward call (grows only).
  virtual void set_max_batch(int n) = 0;
  // Captures every later forward()'s Q/K/V into *cap (nullptr: off, the default).
  virtual void set_capture(const QKVCapture* cap) = 0;
  // Bytes of weights read by one decode step: every matrix once and one embedding row.
  virtual size_t weight_bytes_per_token() const = 0;
};

// The architecture's hyperparameters from GGUF metadata (Error(unsupported) for an unknown
// architecture, Error(format) for bad values).
ModelConfig read_model_config(const GGUFFile& f);
// Bytes the weights take on a backend's device (what load_model will place there).
size_t model_weight_bytes(const GGUFFile& f);
// The model of `f`'s architecture (cfg: read_model_config(f)) with its weights on `be` (checks
// every tensor's presence, shape and type first; unsupported types name the tensor). f and be
// must outlive the model.
std::unique_ptr<Model> load_model(const GGUFFile& f, const ModelConfig& cfg, Backend& be);

}  // namespace eoq
