// Token sampling, in llama.cpp's default order: repeat penalty over the last n tokens, then
// top-k, top-p, min-p, temperature, and a draw from the remaining distribution.
// temperature == 0 is greedy (argmax after the penalty).
#pragma once
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

namespace eoq {

struct SamplerParams {
  float temperature = 0.8f;  // >= 0; 0 = greedy
  int top_k = 40;            // >= 0; 0 = off
  float top_p = 0.95f;       // (0, 1]; 1 = off
  float min_p = 0.05f;       // [0, 1]; 0 = off
  float repeat_penalty = 1.0f;  // > 0; 1 = off
  int repeat_last_n = 64;    // >= -1; -1 = whole history kept by the sampler (up to 1<<16)
  int64_t seed = -1;         // < 0: random seed (read it back with Sampler::seed())

  // Throws Error(invalid_arg) naming the bad parameter.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);

  // Picks a token from logits[0..n_vocab). Does not record it: call accept().
  int32_t sample(const float* logits, int n_vocab);
  void accept(int32_t token);  // remember for the repeat penalty
  void reset();                // forget history (keeps the RNG state)
  uint64_t seed() const { return seed_; }
  const SamplerParams& params() const { return p_; }

 private:
  SamplerParams p_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::deque<int32_t> history_;
  std::vector<std::pair<float, int32_t>> cand_;  // scratch: (logit or prob, token)
};

}  // namespace eoq
