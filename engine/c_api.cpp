// The C API (include/eoq.h) over eoq::Engine. No exception crosses this boundary.
#include "eoq.h"

#include <cstring>
#include <new>
#include <string>

#include "engine/engine.h"
#include "base/error.h"
#include "engine/tokenizer.h"

struct eoq_model {
  std::unique_ptr<eoq::Engine> engine;
};

namespace {

thread_local std::string g_last_error;

eoq_status set_error(eoq_status s, const std::string& msg) {
  g_last_error = msg;
  return s;
}

// Runs f, mapping exceptions to status codes and messages.
template <typename F>
eoq_status guarded(F&& f) {
  try {
    g_last_error.clear();
    return f();
  } catch (const eoq::Error& e) {
    return set_error((eoq_status)(int)e.code(), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(EOQ_ERR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return set_error(EOQ_ERR_INTERNAL, e.what());
  } catch (...) {
    return set_error(EOQ_ERR_INTERNAL, "unknown error");
  }
}

}  // namespace

extern "C" {

const char* eoq_version(void) { return "0.1.0"; }
const char* eoq_last_error(void) { return g_last_error.c_str(); }

eoq_params eoq_default_params(void) { return eoq_params{0, 0, 512, "f16", "cpu"}; }

eoq_sampling eoq_default_sampling(void) {
  const eoq::SamplerParams p;
  return eoq_sampling{p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n, -1};
}

eoq_status eoq_model_load(const char* path, const eoq_params* params, eoq_model** out) {
  return guarded([&] {
    if (!path || !out) return set_error(EOQ_ERR_INVALID_ARG, "eoq_model_load: path and out must not be NULL");
    *out = nullptr;
    const eoq_params p = params ? *params : eoq_default_params();
    eoq::EngineParams ep;
    ep.model_path = path;
    ep.n_ctx = p.n_ctx;
    ep.n_threads = p.n_threads;
    ep.n_batch = p.n_batch;
    ep.kv = eoq::parse_kv_spec(p.kv ? p.kv : "f16");
    ep.device = eoq::parse_device(p.device ? p.device : "cpu");
    auto m = std::make_unique<eoq_model>();
    m->engine = std::make_unique<eoq::Engine>(ep);
    *out = m.release();
    return EOQ_OK;
  });
}

void eoq_model_free(eoq_model* model) { delete model; }

eoq_status eoq_tokenize(eoq_model* model, const char* text, int add_special, int parse_special, int32_t* tokens,
                        int32_t capacity, int32_t* n_tokens) {
  return guarded([&] {
    if (!model || !text || !n_tokens || capacity < 0 || (capacity > 0 && !tokens))
      return set_error(EOQ_ERR_INVALID_ARG, "eoq_tokenize: invalid arguments");
    const std::vector<int32_t> ids = model->engine->tokenizer().encode(text, add_special != 0, parse_special != 0);
    *n_tokens = (int32_t)ids.size();
    if ((int64_t)ids.size() > capacity)
      return set_error(EOQ_ERR_BUFFER, "eoq_tokenize: " + std::to_string(ids.size()) + " tokens do not fit a buffer of " +
                                           std::to_string(capacity));
    std::memcpy(tokens, ids.data(), ids.size() * sizeof(int32_t));
    return EOQ_OK;
  });
}

eoq_status eoq_generate(eoq_model* model, const char* prompt, int32_t max_tokens, const eoq_sampling* sampling,
                        eoq_token_callback callback, void* user_data, int32_t* n_generated) {
  return guarded([&] {
    if (n_generated) *n_generated = 0;
    if (!model || !prompt) return set_error(EOQ_ERR_INVALID_ARG, "eoq_generate: model and prompt must not be NULL");
    const eoq_sampling s = sampling ? *sampling : eoq_default_sampling();
    eoq::SamplerParams sp;
    sp.temperature = s.temperature;
    sp.top_k = s.top_k;
    sp.top_p = s.top_p;
    sp.min_p = s.min_p;
    sp.repeat_penalty = s.repeat_penalty;
    sp.repeat_last_n = s.repeat_last_n;
    sp.seed = s.seed;
    eoq::Sampler sampler(sp);
    eoq::Engine& e = *model->engine;
    const std::vector<int32_t> ids = e.tokenizer().encode(prompt, true, true);
    eoq::Utf8Stream utf8;
    const eoq::GenerateResult r = e.generate(ids, max_tokens, sampler, [&](int32_t tok, const std::string& bytes) {
      const std::string text = utf8.push(bytes);
      return callback ? callback(user_data, tok, text.c_str(), text.size()) != 0 : true;
    });
    const std::string tail = utf8.flush();
    if (!tail.empty() && callback) callback(user_data, -1, tail.c_str(), tail.size());
    if (n_generated) *n_generated = (int32_t)r.tokens.size();
    return EOQ_OK;
  });
}

}  // extern "C"
