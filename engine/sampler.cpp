#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>

#include "base/error.h"

namespace eoq {

void SamplerParams::validate() const {
  auto bad = [](const std::string& what) { fail(ErrorCode::invalid_arg, "invalid sampling parameter: " + what); };
  if (!(temperature >= 0) || !std::isfinite(temperature)) bad("temperature must be >= 0, got " + std::to_string(temperature));
  if (top_k < 0) bad("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) bad("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(min_p >= 0 && min_p <= 1)) bad("min_p must be in [0, 1], got " + std::to_string(min_p));
  if (!(repeat_penalty > 0) || !std::isfinite(repeat_penalty))
    bad("repeat_penalty must be > 0, got " + std::to_string(repeat_penalty));
  if (repeat_last_n < -1) bad("repeat_last_n must be >= -1, got " + std::to_string(repeat_last_n));
}

Sampler::Sampler(const SamplerParams& p) : p_(p) {
  p_.validate();
  seed_ = p.seed >= 0 ? (uint64_t)p.seed : (uint64_t)std::random_device{}() ^ ((uint64_t)std::random_device{}() << 32);
  seed_ &= 0x7fffffffffffffffull;  // fits the int64 seed parameter, so it can be passed back
  rng_.seed(seed_);
}

void Sampler::accept(int32_t token) {
  const size_t cap = p_.repeat_last_n < 0 ? (1u << 16) : (size_t)p_.repeat_last_n;
  if (cap == 0) return;
  history_.push_back(token);
  while (history_.size() > cap) history_.pop_front();
}

void Sampler::reset() { history_.clear(); }

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (n_vocab <= 0) fail(ErrorCode::invalid_arg, "sample: empty vocabulary");
  cand_.resize(n_vocab);
  for (int i = 0; i < n_vocab; i++) cand_[i] = {logits[i], i};

  // Repeat penalty (as llama.cpp): divide positive logits, multiply negative ones, once per
  // distinct token in the window.
  if (p_.repeat_penalty != 1.0f && !history_.empty()) {
    std::unordered_set<int32_t> seen(history_.begin(), history_.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= n_vocab) continue;
      float& l = cand_[t].first;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }

  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (p_.temperature <= 0.0f) {
    return std::min_element(cand_.begin(), cand_.end(), by_logit)->second;
  }

  // top-k: keep the k largest, sorted.
  size_t n = cand_.size();
  if (p_.top_k > 0 && (size_t)p_.top_k < n) n = (size_t)p_.top_k;
  std::partial_sort(cand_.begin(), cand_.begin() + n, cand_.end(), by_logit);
  cand_.resize(n);

  // Probabilities at temperature 1 for the top-p / min-p cut.
  const float mx = cand_[0].first;
  std::vector<double> prob(n);
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += prob[i] = std::exp((double)cand_[i].first - mx);
  for (size_t i = 0; i < n; i++) prob[i] /= sum;

  // top-p: smallest prefix with cumulative probability >= top_p.
  size_t keep = n;
  if (p_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < n; i++) {
      cum += prob[i];
      if (cum >= p_.top_p) { keep = i + 1; break; }
    }
  }
  // min-p: drop tokens with p < min_p * p_max (always keeps the top one).
  if (p_.min_p > 0.0f) {
    size_t k = 1;
    while (k < keep && prob[k] >= p_.min_p * prob[0]) k++;
    keep = k;
  }

  // Temperature, then draw.
  std::vector<double> w(keep);
  double wsum = 0;
  for (size_t i = 0; i < keep; i++) wsum += w[i] = std::exp(((double)cand_[i].first - mx) / p_.temperature);
  std::uniform_real_distribution<double> u(0.0, wsum);
  double r = u(rng_), acc = 0;
  for (size_t i = 0; i < keep; i++) {
    acc += w[i];
    if (r < acc) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace eoq
