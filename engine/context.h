// A context: N sequences over one loaded model, each with its own KV cache (any mode), and the
// scheduler that runs their tokens together.
//
// Scheduler (leader/follower batching). A thread that evaluates tokens on a sequence (eval)
// queues a request and waits. Whenever no step is running, one waiting thread becomes the
// leader: it waits a short gather window for the other *active* sequences (those inside a
// generation loop, set_active) to queue their next token, then runs ONE forward step over every
// queued request: one token for each decode request, one chunk of up to n_batch tokens for each
// prefill request while the step's prefill budget (n_batch tokens) lasts (at least one chunk per
// step, so a long prefill advances and the decode tokens of the others ride along with each of
// its chunks). The products of a step read each weight matrix once for all of its tokens
// (Model::forward_batch); attention runs per sequence on its own cache. After the step the
// leader hands the role back and every waiter re-checks its request, so threads that stream on
// different sequences make progress together, one batched step at a time.
//
// Chunks start at fixed offsets of a request (multiples of n_batch), whatever else shares the
// step, so a sequence's numbers do not depend on its neighbours: the outputs of N sequences run
// together equal N sequential runs bit for bit (the products' values do not depend on the batch
// size: kernels/matmul.h).
//
// Two threads on one sequence are serialized: a second eval waits until the first is done.
// Several contexts may share one model (Engine): their steps take turns on its compute lock.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"

namespace eoq {

class Engine;

// Called on the evaluating thread after each full prefill chunk: (tokens done, tokens asked
// for). Returning false stops the evaluation there (eval returns false); an exception thrown by
// it stops it too and propagates. Either way the sequence holds the tokens of the chunks done.
using ProgressFn = std::function<bool(int done, int total)>;

struct ContextParams {
  int n_seq = 1;    // sequences
  int n_ctx = 0;    // tokens per sequence (0: the model's training context)
  int n_batch = 512;  // prompt tokens per chunk (and the step's prefill budget)
  KVCacheParams kv;   // every sequence's cache mode
};

// One sequence: its cache, the tokens it holds (in order), the logits of its last evaluation.
class Sequence {
 public:
  int index() const { return index_; }
  KVCache& kv() { return *kv_; }
  const KVCache& kv() const { return *kv_; }
  int n_past() const { return (int)tokens_.size(); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const std::vector<float>& logits() const { return logits_; }          // [n_vocab], last token
  const std::vector<float>& all_logits() const { return all_logits_; }  // [n][n_vocab], last eval

 private:
  friend class Context;
  int index_ = 0;
  std::unique_ptr<KVCache> kv_;
  std::vector<int32_t> tokens_;
  std::vector<float> logits_, all_logits_;
  bool active_ = false;  // inside a generation loop: the gather window waits for it
  bool busy_ = false;    // a request of it is queued or running
  bool late_ = false;    // active, but missed the last gather window: not waited for until it queues
};

class Context {
 public:
  // Caches of p.kv.mode for each sequence on the engine's backend. engine must outlive it.
  // Throws Error(invalid_arg) for bad params or caches that cannot be allocated.
  Context(Engine& engine, const ContextParams& p);
  ~Context();

  Engine& engine() { return engine_; }
  int n_seq() const { return (int)seqs_.size(); }
  int n_ctx() const { return n_ctx_; }
  int n_batch() const { return n_batch_; }
  const KVCacheParams& kv_params() const { return kv_params_; }
  Sequence& seq(int i);  // Error(invalid_arg) out of range

  // Evaluates tokens on sequence i at positions n_past.. (blocking; thread-safe, batched with
  // other threads' requests as described above). Throws Error(context_full) before computing
  // anything when they do not fit, Error(invalid_arg) for a bad id. Returns false when progress
  // asked to stop (the tokens of the chunks done are kept), true when all were evaluated.
  bool eval(int i, const std::vector<int32_t>& tokens, bool all_logits = false, const ProgressFn& progress = nullptr);

  // One explicit step for a caller that drives several sequences from one thread (the C API):
  // evaluates tokens[k] on sequence seqs[k] for every k together (each at most n_batch tokens;
  // distinct sequences). Logits land in each sequence as eval() leaves them.
  void eval_batch(const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& tokens);

  void reset(int i);              // empty sequence i's cache
  // Keeps the first n tokens of sequence i (n <= n_past), through KVCache::truncate; returns the
  // tokens kept, which a compressed cache may make fewer than n (its last kept block boundary).
  int truncate(int i, int n);
  // Longest common prefix of `tokens` with what sequence i holds, kept (truncate), never all of
  // `tokens` (the last one is evaluated again so that its logits exist). Returns the count kept.
  int reuse_prefix(int i, const std::vector<int32_t>& tokens);
  // Marks sequence i as inside a generation loop (the leader waits briefly for its next token).
  void set_active(int i, bool active);

  // State files (engine/state_file.h): sequence i's tokens, last logits and cache to path
  // (returns the bytes written; Error(unsupported) for a cache without a serializer), and back.
  // load_state validates the whole file first; any failure leaves the sequence empty.
  size_t save_state(int i, const std::string& path);
  void load_state(int i, const std::string& path);

  // What the scheduler did: forward steps run, tokens and sequence-segments in them.
  struct StepStats {
    int64_t steps = 0, tokens = 0, segments = 0;
    int max_segments = 0;  // most sequences in one step
  };
  StepStats step_stats();

 private:
  struct Request;
  void lead(std::unique_lock<std::mutex>& lock);
  void run_step(const std::vector<SeqSegment>& segs, const std::vector<Request*>& reqs, const std::vector<int>& chunk);
  void wait_idle(Sequence& s, std::unique_lock<std::mutex>& lock);
  int truncate_locked(Sequence& s, int n);

  Engine& engine_;
  int n_ctx_ = 0, n_batch_ = 512;
  KVCacheParams kv_params_;
  std::vector<std::unique_ptr<Sequence>> seqs_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Request*> pending_;  // queued requests, FIFO
  bool stepping_ = false;          // a leader is running a step
  double last_step_ms_ = 0;
  StepStats stats_;
  std::vector<float> step_logits_;  // the step's logits rows (host)
};

}  // namespace eoq
