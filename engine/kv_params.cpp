// KV cache knobs by name: the one parser behind Engine(kv_options=...), the C API's
// "mode:key=value" strings and eoq-run's flags (which build the same dict).
#include <cerrno>
#include <cstdlib>
#include <string>

#include "base/error.h"
#include "engine/kv_cache.h"

namespace eoq {

namespace {

// The "eoq" preset, chosen on SmolLM2 wikitext at 2048 and 8192 tokens (README, Results): keys
// carry the low-rank gain (3-bit residual, 3-bit factors), values are plain 2-bit TurboQuant
// (eOptShrink saves them almost nothing), no ring; row norms as bytes; the tokens not yet sealed
// as 5-bit key / 2-bit value codes with the 16 newest exact (the tail's key precision matters:
// blocks seal from it; 4-bit key tails cost 0.010 KLD at 2048).
constexpr int kEoqPresetKBits = 3, kEoqPresetVBits = 2, kEoqPresetVRankCap = 0, kEoqPresetRing = 0,
              kEoqPresetFactorBits = 3, kEoqPresetNormBits = 8, kEoqPresetTailBits = 5, kEoqPresetVTailBits = 2;

const char* const kKnown =
    "k_bits, v_bits, rank_cap, v_rank_cap, factor_bits, shrink, block, ring, sinks, boundary_layers, "
    "boundary_bits, norm_correction, norm_bits, tail_bits, v_tail_bits, window, k_adapt, exact_scores, seed";

}  // namespace

void set_kv_option(KVCacheParams& p, const std::string& key, long long value) {
  auto as_int = [&]() -> int {
    if (value < -(1LL << 30) || value > (1LL << 30))
      fail(ErrorCode::invalid_arg, "KV cache option " + key + "=" + std::to_string(value) + " is out of range");
    return (int)value;
  };
  auto as_bool = [&]() -> bool {
    if (value != 0 && value != 1)
      fail(ErrorCode::invalid_arg, "KV cache option " + key + " is true or false, not " + std::to_string(value));
    return value != 0;
  };
  if (key == "k_bits") p.k_bits = as_int();
  else if (key == "v_bits") p.v_bits = as_int();
  else if (key == "rank_cap") p.rank_cap = as_int();
  else if (key == "v_rank_cap") p.v_rank_cap = as_int();
  else if (key == "factor_bits") p.factor_bits = as_int();
  else if (key == "shrink") p.shrink = as_bool();
  else if (key == "block") p.block = as_int();
  else if (key == "ring") p.ring = as_int();
  else if (key == "sinks") p.sinks = as_int();
  else if (key == "boundary_layers") p.boundary_layers = as_int();
  else if (key == "boundary_bits") p.boundary_bits = as_int();
  else if (key == "norm_correction") p.norm_correction = as_bool();
  else if (key == "norm_bits") p.norm_bits = as_int();
  else if (key == "tail_bits") p.tail_bits = as_int();
  else if (key == "v_tail_bits") p.v_tail_bits = as_int();
  else if (key == "window") p.window = as_int();
  else if (key == "k_adapt") p.k_adapt = as_int();
  else if (key == "exact_scores") p.exact_scores = as_bool();
  else if (key == "seed") p.seed = (uint64_t)value;
  else fail(ErrorCode::invalid_arg, "unknown KV cache option '" + key + "' (known: " + kKnown + ")");
}

KVCacheParams parse_kv_spec(const std::string& spec) {
  KVCacheParams p;
  size_t at = spec.find(':');
  p.mode = spec.substr(0, at);
  while (at != std::string::npos) {
    const size_t next = spec.find(':', at + 1);
    const std::string opt = spec.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1);
    const size_t eq = opt.find('=');
    if (eq == std::string::npos || eq == 0)
      fail(ErrorCode::invalid_arg, "KV cache option '" + opt + "' in '" + spec + "' is not key=value");
    const std::string key = opt.substr(0, eq), val = opt.substr(eq + 1);
    long long v;
    if (val == "true") v = 1;
    else if (val == "false") v = 0;
    else {
      char* end = nullptr;
      errno = 0;
      v = std::strtoll(val.c_str(), &end, 10);
      if (val.empty() || *end != '\0' || errno == ERANGE)
        fail(ErrorCode::invalid_arg, "KV cache option " + key + ": '" + val + "' is not an integer, true or false");
    }
    set_kv_option(p, key, v);
    at = next;
  }
  return p;
}

KVCacheParams apply_kv_preset(const KVCacheParams& p) {
  if (p.mode != "eoq") return p;
  KVCacheParams q = p;
  if (q.k_bits == -1) q.k_bits = kEoqPresetKBits;
  if (q.v_bits == -1) q.v_bits = kEoqPresetVBits;
  if (q.v_rank_cap == -1) q.v_rank_cap = kEoqPresetVRankCap;
  if (q.ring == -1) q.ring = kEoqPresetRing;
  if (q.factor_bits == -1) q.factor_bits = kEoqPresetFactorBits;
  if (q.norm_bits == -1) q.norm_bits = kEoqPresetNormBits;
  if (q.tail_bits == -1) {  // the preset's tail (a caller's tail_bits, even 0, keeps its own)
    q.tail_bits = kEoqPresetTailBits;
    if (q.v_tail_bits == -1) q.v_tail_bits = kEoqPresetVTailBits;
  }
  return q;
}

}  // namespace eoq
