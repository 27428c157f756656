// State files: one sequence (its tokens, last logits and KV cache) saved to disk and loaded back
// (Context::save_state / load_state). The file is untrusted input, validated as strictly as a
// GGUF file: every field bounds-checked, a checksum over the whole file checked before anything
// is parsed, the model and the cache configuration matched; any failure is one Error(format)
// (or io / unsupported) and leaves the sequence empty, never a crash.
//
// Layout, version 1 (little-endian):
//   "EOQSTATE"                  magic, 8 bytes
//   u32 version = 1, u32 flags = 0
//   u64 model id                a hash of the model's shape, tensor names/types/shapes and the
//                               first bytes of every tensor (a different model or finetune differs)
//   u32 len, bytes              the cache configuration: mode and every knob, canonical text
//   u32 n_tokens, i32[n_tokens] the tokens held, in order
//   u32 n_logits, f32[n_logits] the logits of the last token (n_vocab; 0 when no token is held)
//   u64 len, bytes              the cache's own payload (KVCache::save_payload): exact caches their
//                               rows, a compressed cache its blocks as its serializer writes them
//   u64 checksum                of every byte before it
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace eoq {

class GGUFFile;
struct KVCacheParams;

constexpr uint32_t kStateVersion = 1;

// The hash that ties a state file to its model (see above).
uint64_t state_model_id(const GGUFFile& f);
// "mode=eoq2:k_bits=-1:..." with every knob of p: equal strings, equal cache configurations.
std::string canonical_kv_params(const KVCacheParams& p);
// The checksum of the container: a 64-bit multiply-xor hash over 8-byte words (integrity against
// truncation and corruption, not authentication).
uint64_t state_checksum(const uint8_t* data, size_t n);

}  // namespace eoq
