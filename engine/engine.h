// The Engine: one loaded model on a backend (CPU or CUDA), its tokenizer, and its own context
// of n_seq sequences (engine/context.h; more contexts may share the model). prefill/decode are
// the same call (eval) on n tokens; generate() is the sampling loop used by the C API (Python
// runs its own loop over eval/sample so it can stream and match stop strings). The Engine's
// eval/reset/kv/n_past/logits/generate act on sequence 0 of its context.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/context.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace eoq {

class GGUFFile;
class Tokenizer;

struct EngineParams {
  std::string model_path;
  int n_ctx = 0;      // 0: the model's training context
  int n_threads = 0;  // 0: all hardware threads
  int n_batch = 512;  // prompt tokens per forward call
  int n_seq = 1;      // sequences of the Engine's own context, each with its own cache
  Device device;      // where the weights, the cache and the compute live
  KVCacheParams kv;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens (the EOG token not included)
  std::string finish_reason;    // "stop" (end-of-generation token or callback) / "length"
  double prompt_ms = 0, generate_ms = 0;
};

class Engine {
 public:
  explicit Engine(const EngineParams& p);  // throws eoq::Error
  ~Engine();

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelConfig& config() const;
  Backend& backend() { return *backend_; }
  const Model& model() const { return *model_; }
  const GGUFFile& file() const { return *file_; }
  KVCache& kv() { return ctx_->seq(0).kv(); }
  Context& context() { return *ctx_; }
  int n_ctx() const { return n_ctx_; }
  int n_past() const { return ctx_->seq(0).n_past(); }
  int n_vocab() const;
  int n_threads() const;
  double load_ms() const { return load_ms_; }
  uint64_t model_id() const { return model_id_; }  // state files: engine/state_file.h

  // Evaluates tokens at positions n_past.. (in chunks of n_batch) and advances n_past.
  // Throws Error(context_full) before computing anything if they do not fit.
  // progress: see Context::eval (returns false when it stopped the evaluation).
  bool eval(const std::vector<int32_t>& tokens, bool all_logits = false, const ProgressFn& progress = nullptr);
  const std::vector<float>& logits() const { return ctx_->seq(0).logits(); }          // [n_vocab], last token
  const std::vector<float>& all_logits() const { return ctx_->seq(0).all_logits(); }  // [n][n_vocab], last eval
  void reset();  // empty the cache

  // Runs tokens from position 0 (in chunks of n_batch) through the model with a temporary KV
  // cache configured by `cache` (default f16, the reference; f32 for exactness tests) and
  // copies each layer's post-RoPE q, k and v into `out` (layout in models/llama.h; out.n_tok
  // must equal tokens.size()). The engine's own cache, n_past and logits are left as they were.
  // Throws Error(invalid_arg) for empty input, a size mismatch, null buffers, a bad token id or
  // bad cache params, Error(context_full) when tokens exceed n_ctx.
  void capture_qkv(const std::vector<int32_t>& tokens, const QKVCapture& out,
                   const KVCacheParams& cache = KVCacheParams());

  // Evaluates the prompt on sequence 0 (reusing the longest common prefix with what it holds:
  // the same numbers as from an empty cache), then samples up to max_tokens (< 0: until the
  // context is full). on_token(token, bytes) is called for each generated token; returning false
  // stops. The loop itself: generate(Context&, ...) below.
  GenerateResult generate(const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                          const std::function<bool(int32_t, const std::string&)>& on_token);

  // Forward calls of every context on this model take turns on it (the model's scratch).
  std::mutex& compute_mutex() { return compute_mu_; }

 private:
  friend class Context;  // runs the model's forward steps
  // Destroyed in reverse: the cache and the model hold the backend's buffers.
  std::unique_ptr<GGUFFile> file_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Model> model_;
  std::mutex compute_mu_;
  std::unique_ptr<Context> ctx_;  // before the model in destruction: its caches
  int n_ctx_ = 0, n_batch_ = 512;
  uint64_t model_id_ = 0;
  double load_ms_ = 0;
};

// The C++ sampling loop on sequence i of ctx (Engine::generate on sequence 0): prefix reuse,
// prompt, then up to max_tokens sampled tokens. The sequence is marked active meanwhile, so that
// loops on other sequences in other threads batch their steps with it.
GenerateResult generate(Context& ctx, int i, const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                        const std::function<bool(int32_t, const std::string&)>& on_token);

}  // namespace eoq
