// The C API (include/eoq.h) over eoq::Engine. No exception crosses this boundary.
#include "eoq.h"

#include <cstring>
#include <new>
#include <string>

#include "engine/engine.h"
#include "base/error.h"
#include "engine/tokenizer.h"

struct eoq_seq {
  eoq::Context* ctx;
  int index;
};

struct eoq_model {
  std::unique_ptr<eoq::Engine> engine;
};

struct eoq_context {
  std::unique_ptr<eoq::Context> ctx;
  std::vector<eoq_seq> seqs;  // the handles eoq_context_seq gives out
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

namespace {

// The sampling loop on sequence i of ctx, with the callback's UTF-8 contract (eoq.h).
eoq_status generate_on(eoq::Context& ctx, int i, const char* prompt, int32_t max_tokens, const eoq_sampling* sampling,
                       eoq_token_callback callback, void* user_data, int32_t* n_generated) {
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
  const std::vector<int32_t> ids = ctx.engine().tokenizer().encode(prompt, true, true);
  eoq::Utf8Stream utf8;
  const eoq::GenerateResult r = eoq::generate(ctx, i, ids, max_tokens, sampler, [&](int32_t tok, const std::string& bytes) {
    const std::string text = utf8.push(bytes);
    return callback ? callback(user_data, tok, text.c_str(), text.size()) != 0 : true;
  });
  const std::string tail = utf8.flush();
  if (!tail.empty() && callback) callback(user_data, -1, tail.c_str(), tail.size());
  if (n_generated) *n_generated = (int32_t)r.tokens.size();
  return EOQ_OK;
}

}  // namespace

eoq_status eoq_generate(eoq_model* model, const char* prompt, int32_t max_tokens, const eoq_sampling* sampling,
                        eoq_token_callback callback, void* user_data, int32_t* n_generated) {
  return guarded([&] {
    if (n_generated) *n_generated = 0;
    if (!model || !prompt) return set_error(EOQ_ERR_INVALID_ARG, "eoq_generate: model and prompt must not be NULL");
    // As before sessions: every call starts from an empty cache.
    model->engine->reset();
    return generate_on(model->engine->context(), 0, prompt, max_tokens, sampling, callback, user_data, n_generated);
  });
}

eoq_status eoq_context_new(eoq_model* model, int32_t n_seq, const eoq_params* params, eoq_context** out) {
  return guarded([&] {
    if (!model || !out) return set_error(EOQ_ERR_INVALID_ARG, "eoq_context_new: model and out must not be NULL");
    *out = nullptr;
    eoq::Engine& e = *model->engine;
    eoq::ContextParams cp;
    cp.n_seq = n_seq;
    cp.n_ctx = params ? params->n_ctx : e.n_ctx();
    cp.n_batch = params ? params->n_batch : e.context().n_batch();
    cp.kv = params ? eoq::parse_kv_spec(params->kv ? params->kv : "f16") : e.context().kv_params();
    auto c = std::make_unique<eoq_context>();
    c->ctx = std::make_unique<eoq::Context>(e, cp);
    for (int i = 0; i < n_seq; i++) c->seqs.push_back(eoq_seq{c->ctx.get(), i});
    *out = c.release();
    return EOQ_OK;
  });
}

void eoq_context_free(eoq_context* ctx) { delete ctx; }

eoq_status eoq_context_seq(eoq_context* ctx, int32_t i, eoq_seq** out) {
  return guarded([&] {
    if (!ctx || !out) return set_error(EOQ_ERR_INVALID_ARG, "eoq_context_seq: ctx and out must not be NULL");
    *out = nullptr;
    ctx->ctx->seq(i);  // range check
    *out = &ctx->seqs[i];
    return EOQ_OK;
  });
}

eoq_status eoq_seq_eval(eoq_seq* seq, const int32_t* tokens, int32_t n, eoq_abort_callback abort, void* user_data) {
  return guarded([&] {
    if (!seq || n < 0 || (n > 0 && !tokens)) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_eval: invalid arguments");
    eoq::ProgressFn progress;
    if (abort) progress = [&](int done, int total) { return abort(user_data, done, total) == 0; };
    if (!seq->ctx->eval(seq->index, std::vector<int32_t>(tokens, tokens + n), false, progress))
      return set_error(EOQ_ERR_ABORTED, "eoq_seq_eval: stopped by the abort callback after " +
                                            std::to_string(seq->ctx->seq(seq->index).n_past()) + " tokens held");
    return EOQ_OK;
  });
}

eoq_status eoq_context_decode(eoq_context* ctx, int32_t n, eoq_seq* const* seqs, const int32_t* tokens) {
  return guarded([&] {
    if (!ctx || n < 0 || (n > 0 && (!seqs || !tokens)))
      return set_error(EOQ_ERR_INVALID_ARG, "eoq_context_decode: invalid arguments");
    std::vector<int> idx;
    std::vector<std::vector<int32_t>> toks;
    for (int32_t k = 0; k < n; k++) {
      if (!seqs[k] || seqs[k]->ctx != ctx->ctx.get())
        return set_error(EOQ_ERR_INVALID_ARG, "eoq_context_decode: sequence " + std::to_string(k) + " is not of this context");
      idx.push_back(seqs[k]->index);
      toks.push_back({tokens[k]});
    }
    ctx->ctx->eval_batch(idx, toks);
    return EOQ_OK;
  });
}

eoq_status eoq_seq_logits(eoq_seq* seq, const float** logits, int32_t* n_vocab) {
  return guarded([&] {
    if (!seq || !logits) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_logits: seq and logits must not be NULL");
    const std::vector<float>& l = seq->ctx->seq(seq->index).logits();
    *logits = l.data();
    if (n_vocab) *n_vocab = (int32_t)l.size();
    return EOQ_OK;
  });
}

eoq_status eoq_seq_n_past(eoq_seq* seq, int32_t* n_past) {
  return guarded([&] {
    if (!seq || !n_past) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_n_past: seq and n_past must not be NULL");
    *n_past = seq->ctx->seq(seq->index).n_past();
    return EOQ_OK;
  });
}

eoq_status eoq_seq_reset(eoq_seq* seq) {
  return guarded([&] {
    if (!seq) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_reset: seq must not be NULL");
    seq->ctx->reset(seq->index);
    return EOQ_OK;
  });
}

eoq_status eoq_seq_truncate(eoq_seq* seq, int32_t n, int32_t* n_kept) {
  return guarded([&] {
    if (!seq) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_truncate: seq must not be NULL");
    const int kept = seq->ctx->truncate(seq->index, n);
    if (n_kept) *n_kept = kept;
    return EOQ_OK;
  });
}

eoq_status eoq_seq_save_state(eoq_seq* seq, const char* path, size_t* n_bytes) {
  return guarded([&] {
    if (!seq || !path) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_save_state: seq and path must not be NULL");
    const size_t n = seq->ctx->save_state(seq->index, path);
    if (n_bytes) *n_bytes = n;
    return EOQ_OK;
  });
}

eoq_status eoq_seq_load_state(eoq_seq* seq, const char* path) {
  return guarded([&] {
    if (!seq || !path) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_load_state: seq and path must not be NULL");
    seq->ctx->load_state(seq->index, path);
    return EOQ_OK;
  });
}

eoq_status eoq_seq_generate(eoq_seq* seq, const char* prompt, int32_t max_tokens, const eoq_sampling* sampling,
                            eoq_token_callback callback, void* user_data, int32_t* n_generated) {
  return guarded([&] {
    if (n_generated) *n_generated = 0;
    if (!seq || !prompt) return set_error(EOQ_ERR_INVALID_ARG, "eoq_seq_generate: seq and prompt must not be NULL");
    return generate_on(*seq->ctx, seq->index, prompt, max_tokens, sampling, callback, user_data, n_generated);
  });
}

}  // extern "C"
