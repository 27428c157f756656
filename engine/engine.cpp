#include "engine/engine.h"

#include <chrono>
#include <new>

#include "base/error.h"
#include "engine/gguf.h"
#include "engine/state_file.h"
#include "engine/tokenizer.h"

namespace eoq {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

Engine::Engine(const EngineParams& p) {
  const auto t0 = std::chrono::steady_clock::now();
  if (p.n_ctx < 0) fail(ErrorCode::invalid_arg, "n_ctx must be >= 0, got " + std::to_string(p.n_ctx));
  if (p.n_batch <= 0) fail(ErrorCode::invalid_arg, "n_batch must be > 0, got " + std::to_string(p.n_batch));
  if (p.n_threads < 0 || p.n_threads > 1024)
    fail(ErrorCode::invalid_arg, "n_threads must be in [0, 1024], got " + std::to_string(p.n_threads));
  file_ = std::make_unique<GGUFFile>(p.model_path);
  const ModelConfig c = read_model_config(*file_);
  tokenizer_ = std::make_unique<Tokenizer>(*file_);
  if (tokenizer_->n_vocab() > c.n_vocab)
    fail(ErrorCode::format, "tokenizer has " + std::to_string(tokenizer_->n_vocab()) +
                                " tokens but token_embd.weight has " + std::to_string(c.n_vocab) + " rows");
  n_ctx_ = p.n_ctx > 0 ? p.n_ctx : c.n_ctx_train;
  n_batch_ = p.n_batch;
  if (p.n_seq < 1 || p.n_seq > 256) fail(ErrorCode::invalid_arg, "n_seq must be in [1, 256], got " + std::to_string(p.n_seq));
  const KVCacheShape shape{c.n_layer, c.n_head_kv, c.head_dim, n_ctx_, c.n_head};
  backend_ = make_backend(p.device, p.n_threads);
  // Refuse before loading what cannot fit: weights, the caches' fixed storage and the scratch
  // of the largest step (a prompt chunk plus a decode token of every other sequence; logits of
  // one row per sequence).
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  const size_t batch = (size_t)std::min(n_batch_, n_ctx_) + (size_t)p.n_seq - 1;
  const size_t scratch = batch * sizeof(float) * (2 * (size_t)c.n_embd + 2 * q_dim + 2 * kv_dim + 2 * (size_t)c.n_ff) +
                         (size_t)p.n_seq * c.n_vocab * sizeof(float);
  // (On the CPU the weights stay mapped from the file: not counted against memory.)
  const size_t weights = p.device.type == DeviceType::cpu ? 0 : model_weight_bytes(*file_);
  backend_->check_fits(weights + backend_->kv_cache_reserve_bytes(p.kv, shape) * (size_t)p.n_seq + scratch,
                       "the model with " + std::string(p.n_seq > 1 ? std::to_string(p.n_seq) + " " : "a ") + p.kv.mode +
                           " cache" + (p.n_seq > 1 ? "s" : "") + " of " + std::to_string(n_ctx_) + " tokens");
  try {
    model_ = load_model(*file_, c, *backend_);
    ContextParams cp;
    cp.n_seq = p.n_seq;
    cp.n_ctx = n_ctx_;
    cp.n_batch = n_batch_;
    cp.kv = p.kv;
    ctx_ = std::make_unique<Context>(*this, cp);
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::invalid_arg, "out of memory loading the model with a " + p.kv.mode + " cache of " +
                                     std::to_string(n_ctx_) + " tokens: lower n_ctx (-c) or n_batch (-b)");
  }
  model_id_ = state_model_id(*file_);
  load_ms_ = ms_since(t0);
}

Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return model_->config(); }
int Engine::n_vocab() const { return model_->config().n_vocab; }
int Engine::n_threads() const { return backend_->n_threads(); }

void Engine::reset() { ctx_->reset(0); }

bool Engine::eval(const std::vector<int32_t>& tokens, bool all_logits, const ProgressFn& progress) {
  return ctx_->eval(0, tokens, all_logits, progress);
}

void Engine::capture_qkv(const std::vector<int32_t>& tokens, const QKVCapture& out, const KVCacheParams& cache_params) {
  const int n = (int)tokens.size();
  if (n == 0) fail(ErrorCode::invalid_arg, "capture_qkv: no tokens");
  if (out.n_tok != n || !out.q || !out.k || !out.v)
    fail(ErrorCode::invalid_arg, "capture_qkv: the capture buffers must hold exactly the " + std::to_string(n) + " tokens");
  if (n > n_ctx_)
    fail(ErrorCode::context_full, "capture_qkv: " + std::to_string(n) + " tokens > n_ctx " + std::to_string(n_ctx_));
  const ModelConfig& c = model_->config();
  for (int32_t t : tokens)
    if (t < 0 || t >= c.n_vocab) fail(ErrorCode::invalid_arg, "token id " + std::to_string(t) + " is out of range");
  // A cache of its own: independent of the engine's mode and state.
  auto cache = backend_->make_kv_cache(cache_params, KVCacheShape{c.n_layer, c.n_head_kv, c.head_dim, n, c.n_head});
  std::vector<float> last_logits(c.n_vocab);
  // The capture must be switched off again whatever happens (forward may throw).
  struct Guard {
    Model& m;
    ~Guard() { m.set_capture(nullptr); }
  } guard{*model_};
  std::lock_guard<std::mutex> compute(compute_mu_);
  model_->set_capture(&out);
  for (int i = 0; i < n; i += n_batch_) {
    const int m = std::min(n_batch_, n - i);
    model_->forward(tokens.data() + i, m, i, *cache, last_logits.data(), false);
  }
}

GenerateResult Engine::generate(const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                                const std::function<bool(int32_t, const std::string&)>& on_token) {
  return eoq::generate(*ctx_, 0, prompt, max_tokens, sampler, on_token);
}

GenerateResult generate(Context& ctx, int i, const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                        const std::function<bool(int32_t, const std::string&)>& on_token) {
  GenerateResult r;
  if (prompt.empty()) fail(ErrorCode::invalid_arg, "the prompt is empty");
  if ((int)prompt.size() >= ctx.n_ctx())
    fail(ErrorCode::context_full, "the prompt has " + std::to_string(prompt.size()) +
                                      " tokens, which does not fit a context of " + std::to_string(ctx.n_ctx()));
  Sequence& s = ctx.seq(i);
  const Tokenizer& tok = ctx.engine().tokenizer();
  struct Active {  // off again whatever happens
    Context& c;
    int i;
    ~Active() { c.set_active(i, false); }
  } active{ctx, i};
  ctx.set_active(i, true);
  auto t0 = std::chrono::steady_clock::now();
  const int kept = ctx.reuse_prefix(i, prompt);
  ctx.eval(i, std::vector<int32_t>(prompt.begin() + kept, prompt.end()));
  for (int32_t t : prompt) sampler.accept(t);
  r.prompt_ms = ms_since(t0);
  t0 = std::chrono::steady_clock::now();
  r.finish_reason = "length";
  for (int k = 0; max_tokens < 0 || k < max_tokens; k++) {
    const int32_t t = sampler.sample(s.logits().data(), (int)s.logits().size());
    sampler.accept(t);
    if (tok.is_eog(t)) {
      r.finish_reason = "stop";
      break;
    }
    r.tokens.push_back(t);
    if (on_token && !on_token(t, tok.token_to_piece(t))) {
      r.finish_reason = "stop";
      break;
    }
    if (s.n_past() >= ctx.n_ctx()) break;  // "length": no room for this token's K/V
    if (max_tokens >= 0 && k + 1 >= max_tokens) break;
    ctx.eval(i, {t});
  }
  r.generate_ms = ms_since(t0);
  return r;
}

}  // namespace eoq
