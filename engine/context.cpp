#include "engine/context.h"

#include <algorithm>
#include <new>

#include "base/error.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"

namespace eoq {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

// One eval() call: the tokens of one sequence, advanced chunk by chunk.
struct Context::Request {
  int seq = 0;
  const std::vector<int32_t>* tokens = nullptr;
  int done = 0;         // tokens evaluated so far
  bool all_logits = false;
  bool has_progress = false;
  bool held = false;     // a chunk finished: waits for its thread to run the progress callback
  bool finished = false;
  std::exception_ptr error;
  int remaining() const { return (int)tokens->size() - done; }
};

Context::Context(Engine& engine, const ContextParams& p) : engine_(engine) {
  const ModelConfig& c = engine.config();
  if (p.n_seq < 1 || p.n_seq > 256) fail(ErrorCode::invalid_arg, "n_seq must be in [1, 256], got " + std::to_string(p.n_seq));
  if (p.n_ctx < 0) fail(ErrorCode::invalid_arg, "n_ctx must be >= 0, got " + std::to_string(p.n_ctx));
  if (p.n_batch <= 0) fail(ErrorCode::invalid_arg, "n_batch must be > 0, got " + std::to_string(p.n_batch));
  n_ctx_ = p.n_ctx > 0 ? p.n_ctx : c.n_ctx_train;
  n_batch_ = p.n_batch;
  kv_params_ = p.kv;
  const KVCacheShape shape{c.n_layer, c.n_head_kv, c.head_dim, n_ctx_, c.n_head};
  Backend& be = engine.backend();
  be.check_fits(be.kv_cache_reserve_bytes(p.kv, shape) * (size_t)p.n_seq,
                std::to_string(p.n_seq) + " " + p.kv.mode + " cache(s) of " + std::to_string(n_ctx_) + " tokens");
  try {
    for (int i = 0; i < p.n_seq; i++) {
      auto s = std::make_unique<Sequence>();
      s->index_ = i;
      s->kv_ = be.make_kv_cache(p.kv, shape);
      s->logits_.assign(c.n_vocab, 0.0f);
      seqs_.push_back(std::move(s));
    }
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::invalid_arg, "out of memory making " + std::to_string(p.n_seq) + " " + p.kv.mode + " caches of " +
                                     std::to_string(n_ctx_) + " tokens: lower n_ctx (-c) or n_seq");
  }
  // The largest step: a prefill chunk plus one decode token of every other sequence.
  std::lock_guard<std::mutex> g(engine_.compute_mutex());
  engine_.model_->set_max_batch(std::min(n_batch_, n_ctx_) + p.n_seq - 1);
}

Context::~Context() = default;

Sequence& Context::seq(int i) {
  if (i < 0 || i >= (int)seqs_.size())
    fail(ErrorCode::invalid_arg, "sequence " + std::to_string(i) + " is out of range [0, " + std::to_string(seqs_.size()) + ")");
  return *seqs_[i];
}

void Context::wait_idle(Sequence& s, std::unique_lock<std::mutex>& lock) {
  cv_.wait(lock, [&] { return !s.busy_; });
}

void Context::reset(int i) {
  Sequence& s = seq(i);
  std::unique_lock<std::mutex> lock(mu_);
  wait_idle(s, lock);
  s.kv_->clear();
  s.tokens_.clear();
}

// Under mu_, the sequence idle.
int Context::truncate_locked(Sequence& s, int n) {
  if (n < 0 || n > (int)s.tokens_.size())
    fail(ErrorCode::invalid_arg, "truncate: sequence " + std::to_string(s.index_) + " holds " +
                                     std::to_string(s.tokens_.size()) + " tokens, cannot keep " + std::to_string(n));
  const int kept = s.kv_->truncate(n);
  s.tokens_.resize(kept);
  return kept;
}

int Context::truncate(int i, int n) {
  Sequence& s = seq(i);
  std::unique_lock<std::mutex> lock(mu_);
  wait_idle(s, lock);
  return truncate_locked(s, n);
}

int Context::reuse_prefix(int i, const std::vector<int32_t>& tokens) {
  Sequence& s = seq(i);
  std::unique_lock<std::mutex> lock(mu_);
  wait_idle(s, lock);  // the prefix and the cut under one lock
  const size_t m = std::min(s.tokens_.size(), tokens.size());
  int common = 0;
  while ((size_t)common < m && s.tokens_[common] == tokens[common]) common++;
  // Never the whole prompt: its last token is evaluated again for its logits.
  if (common >= (int)tokens.size()) common = (int)tokens.size() - 1;
  return truncate_locked(s, std::max(common, 0));
}

void Context::set_active(int i, bool active) {
  Sequence& s = seq(i);
  std::lock_guard<std::mutex> g(mu_);
  s.active_ = active;
  cv_.notify_all();
}

bool Context::eval(int i, const std::vector<int32_t>& tokens, bool all_logits, const ProgressFn& progress) {
  Sequence& s = seq(i);
  const int n = (int)tokens.size();
  if (n == 0) return true;
  const int n_vocab = engine_.n_vocab();
  for (int32_t t : tokens)
    if (t < 0 || t >= n_vocab) fail(ErrorCode::invalid_arg, "token id " + std::to_string(t) + " is out of range");
  Request r;
  r.seq = i;
  r.tokens = &tokens;
  r.all_logits = all_logits;
  r.has_progress = (bool)progress;
  std::unique_lock<std::mutex> lock(mu_);
  wait_idle(s, lock);  // two threads on one sequence: one after the other
  if ((int64_t)s.tokens_.size() + n > n_ctx_)
    fail(ErrorCode::context_full, "context is full: " + std::to_string(s.tokens_.size()) + " cached + " +
                                      std::to_string(n) + " new tokens > n_ctx " + std::to_string(n_ctx_));
  s.busy_ = true;
  s.late_ = false;
  if (all_logits) s.all_logits_.assign((size_t)n * n_vocab, 0.0f);
  pending_.push_back(&r);
  cv_.notify_all();
  bool completed = true;
  // Whatever ends this call (done, stopped, an error) must leave the queue and free the sequence.
  auto leave = [&] {
    pending_.erase(std::remove(pending_.begin(), pending_.end(), &r), pending_.end());
    s.busy_ = false;
    cv_.notify_all();
  };
  try {
    while (!r.finished) {
      if (r.held) {
        // This thread's own callback, outside the lock (it may take the GIL, check signals).
        const int done = r.done;
        lock.unlock();
        bool go = true;
        try {
          go = progress(done, n);
        } catch (...) {
          lock.lock();
          throw;
        }
        lock.lock();
        r.held = false;
        if (!go) {
          completed = false;
          break;
        }
        cv_.notify_all();
        continue;
      }
      if (!stepping_) lead(lock);
      else cv_.wait(lock);
    }
  } catch (...) {
    leave();
    throw;
  }
  leave();
  if (r.error) std::rethrow_exception(r.error);
  return completed;
}

// Under the lock, with no step running: gathers, runs one step (the lock released meanwhile),
// records what it did and hands the leader role back.
void Context::lead(std::unique_lock<std::mutex>& lock) {
  stepping_ = true;
  // Gather window: wait (a quarter of the last step, at most 5 ms) for the active sequences that
  // have not queued their next token yet: a generation loop samples between its steps.
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::microseconds((int64_t)(std::min(5.0, last_step_ms_ / 4) * 1000));
  // A sequence that let a window pass (its consumer is slow) is not waited for again until it
  // queues a request: one stalled stream must not tax every step of the others.
  auto missing = [&] {
    for (const auto& s : seqs_)
      if (s->active_ && !s->busy_ && !s->late_) return true;
    return false;
  };
  bool timed_out = false;
  while (missing() && !timed_out) timed_out = cv_.wait_until(lock, deadline) == std::cv_status::timeout;
  if (timed_out)
    for (const auto& s : seqs_)
      if (s->active_ && !s->busy_) s->late_ = true;
  // The step: every decode request's token, prefill chunks (whole, at multiples of n_batch from
  // the request's start) while the budget of n_batch prefill tokens lasts, at least one.
  std::vector<Request*> reqs;
  std::vector<int> chunk;
  std::vector<SeqSegment> segs;
  int prefill = 0;
  for (Request* r : pending_) {
    if (r->held || r->finished) continue;
    const int m = std::min(n_batch_, r->remaining());
    const bool decode = r->remaining() == 1 && r->tokens->size() == 1;
    if (!decode && prefill > 0 && prefill + m > n_batch_) continue;
    if (!decode) prefill += m;
    Sequence& s = *seqs_[r->seq];
    SeqSegment g;
    g.tokens = r->tokens->data() + r->done;
    g.n = m;
    g.pos0 = (int)s.tokens_.size();
    g.kv = s.kv_.get();
    g.all_logits = r->all_logits;
    reqs.push_back(r);
    chunk.push_back(m);
    segs.push_back(g);
  }
  if (!reqs.empty()) {
    lock.unlock();
    std::exception_ptr err;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      run_step(segs, reqs, chunk);
    } catch (...) {
      err = std::current_exception();
    }
    const double ms = ms_since(t0);
    lock.lock();
    last_step_ms_ = ms;
    for (size_t k = 0; k < reqs.size(); k++) {
      Request* r = reqs[k];
      Sequence& s = *seqs_[r->seq];
      if (err) {  // a step that failed part way leaves its caches unknown: emptied
        r->error = err;
        r->finished = true;
        s.kv_->clear();
        s.tokens_.clear();
        continue;
      }
      s.tokens_.insert(s.tokens_.end(), r->tokens->begin() + r->done, r->tokens->begin() + r->done + chunk[k]);
      r->done += chunk[k];
      if (r->remaining() == 0) r->finished = true;
      else if (r->has_progress) r->held = true;
    }
  }
  stepping_ = false;
  cv_.notify_all();
  // Nothing to run (every queued request waits for its thread's progress callback): sleep until
  // one of them is re-armed instead of spinning.
  if (reqs.empty()) cv_.wait(lock);
}

Context::StepStats Context::step_stats() {
  std::lock_guard<std::mutex> g(mu_);
  return stats_;
}

// Called without mu_ by the one thread that holds the leader role (stepping_).
void Context::run_step(const std::vector<SeqSegment>& segs, const std::vector<Request*>& reqs, const std::vector<int>& chunk) {
  const size_t nv = (size_t)engine_.n_vocab();
  size_t rows = 0;
  for (const SeqSegment& g : segs) rows += g.all_logits ? g.n : 1;
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.steps++;
    stats_.segments += (int64_t)segs.size();
    stats_.max_segments = std::max(stats_.max_segments, (int)segs.size());
    for (const SeqSegment& sg : segs) stats_.tokens += sg.n;
  }
  if (step_logits_.size() < rows * nv) step_logits_.resize(rows * nv);
  {
    std::lock_guard<std::mutex> g(engine_.compute_mutex());
    engine_.model_->forward_batch(segs.data(), (int)segs.size(), step_logits_.data());
  }
  // Each sequence's logits: its last row; with all_logits, every row at its request's offset.
  // (Only this step's sequences are touched; their threads wait for the step.)
  size_t row = 0;
  for (size_t k = 0; k < segs.size(); k++) {
    Sequence& s = *seqs_[reqs[k]->seq];
    const size_t m = segs[k].all_logits ? (size_t)chunk[k] : 1;
    const float* src = step_logits_.data() + row * nv;
    if (segs[k].all_logits) std::copy(src, src + m * nv, s.all_logits_.begin() + (size_t)reqs[k]->done * nv);
    std::copy(src + (m - 1) * nv, src + m * nv, s.logits_.begin());
    row += m;
  }
}

void Context::eval_batch(const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& tokens) {
  if (seqs.size() != tokens.size()) fail(ErrorCode::invalid_arg, "eval_batch: one token list per sequence");
  const int n_vocab = engine_.n_vocab();
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<SeqSegment> segs;
  std::vector<Request> rq(seqs.size());
  std::vector<Request*> reqs;
  std::vector<int> chunk;
  for (size_t k = 0; k < seqs.size(); k++) {
    Sequence& s = seq(seqs[k]);
    for (size_t j = 0; j < k; j++)
      if (seqs[j] == seqs[k]) fail(ErrorCode::invalid_arg, "eval_batch: sequence " + std::to_string(seqs[k]) + " appears twice");
    const int n = (int)tokens[k].size();
    if (n < 1 || n > n_batch_)
      fail(ErrorCode::invalid_arg, "eval_batch: each sequence takes 1.." + std::to_string(n_batch_) + " tokens, got " + std::to_string(n));
    for (int32_t t : tokens[k])
      if (t < 0 || t >= n_vocab) fail(ErrorCode::invalid_arg, "token id " + std::to_string(t) + " is out of range");
    if (s.busy_) fail(ErrorCode::invalid_arg, "eval_batch: sequence " + std::to_string(seqs[k]) + " is in use by another call");
    if ((int64_t)s.tokens_.size() + n > n_ctx_)
      fail(ErrorCode::context_full, "context is full: sequence " + std::to_string(seqs[k]) + " holds " +
                                        std::to_string(s.tokens_.size()) + " tokens + " + std::to_string(n) + " > n_ctx " +
                                        std::to_string(n_ctx_));
    rq[k].seq = seqs[k];
    rq[k].tokens = &tokens[k];
    reqs.push_back(&rq[k]);
    chunk.push_back(n);
    SeqSegment g;
    g.tokens = tokens[k].data();
    g.n = n;
    g.pos0 = (int)s.tokens_.size();
    g.kv = s.kv_.get();
    segs.push_back(g);
  }
  if (segs.empty()) return;
  // Run as the leader (after any step in flight), the sequences marked busy meanwhile.
  cv_.wait(lock, [&] { return !stepping_; });
  for (int i : seqs)
    if (seqs_[i]->busy_) fail(ErrorCode::invalid_arg, "eval_batch: sequence " + std::to_string(i) + " is in use by another call");
  stepping_ = true;
  for (int i : seqs) seqs_[i]->busy_ = true;
  lock.unlock();
  std::exception_ptr err;
  try {
    run_step(segs, reqs, chunk);
  } catch (...) {
    err = std::current_exception();
  }
  lock.lock();
  for (size_t k = 0; k < seqs.size(); k++) {
    Sequence& s = *seqs_[seqs[k]];
    if (!err) {
      s.tokens_.insert(s.tokens_.end(), tokens[k].begin(), tokens[k].end());
    } else {  // a step that failed part way leaves its caches unknown: emptied
      s.kv_->clear();
      s.tokens_.clear();
    }
    s.busy_ = false;
  }
  stepping_ = false;
  cv_.notify_all();
  if (err) std::rethrow_exception(err);
}

}  // namespace eoq
