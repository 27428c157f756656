// Tokenizer built from GGUF metadata (tokenizer.ggml.*).
//
//   model "gpt2"  : byte-level BPE; pre-tokenizer split rules chosen by tokenizer.ggml.pre
//                   ("smollm", "llama-bpe", "tekken", "default"/"gpt2"; unknown pre -> error
//                   naming it); merges ranked by their order in tokenizer.ggml.merges.
//   model "llama" : SentencePiece BPE (merge by score) with byte fallback (<0xAB> tokens),
//                   add_space_prefix, spaces as U+2581.
// Special tokens (token_type CONTROL or USER_DEFINED) are matched in the text before splitting
// only when the caller passes parse_special; otherwise their text is tokenized as plain text.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace eoq {

class GGUFFile;

// Token types, as stored in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  UNDEFINED = 0, NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
};

class Tokenizer {
 public:
  // Throws Error(format/unsupported) on missing or inconsistent metadata, Error(unsupported)
  // on an unknown tokenizer.ggml.model or tokenizer.ggml.pre (the message names it).
  explicit Tokenizer(const GGUFFile& file);
  ~Tokenizer();

  // Encode UTF-8 text. add_special: add BOS (and EOS) as the metadata asks
  // (tokenizer.ggml.add_bos_token / add_eos_token; defaults per model type as in llama.cpp).
  // parse_special: recognise special-token text such as "<|im_start|>" as one token.
  // Throws Error(invalid_utf8) if text is not valid UTF-8.
  std::vector<int32_t> encode(const std::string& text, bool add_special, bool parse_special) const;

  // The bytes a token stands for (byte-level BPE unmapped, SPM U+2581 -> space, <0xAB> -> byte).
  // Control tokens give "" unless special is true (then their text). Throws Error(invalid_arg)
  // for an id out of range. May be a partial UTF-8 sequence.
  std::string token_to_piece(int32_t id, bool special = false) const;

  // Concatenated pieces. For "llama" models a leading space added by add_space_prefix is
  // removed from the first piece when remove_leading_space is true.
  std::string decode(const std::vector<int32_t>& ids, bool special = false) const;

  int32_t n_vocab() const;
  int32_t bos() const;   // -1 if none
  int32_t eos() const;   // -1 if none
  bool add_bos() const;
  bool add_eos() const;
  // End of generation: eos, eot, eom ids and tokens whose text is a known end marker
  // ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>").
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const;
  const std::string& token_text(int32_t id) const;  // raw vocabulary string
  TokenType token_type(int32_t id) const;
  const std::string& model() const;  // "gpt2" or "llama"
  const std::string& pre() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Feeds token bytes, returns only complete UTF-8 characters; keeps an incomplete tail for the
// next push. Invalid sequences (not a prefix of any valid character) are replaced by U+FFFD.
class Utf8Stream {
 public:
  std::string push(const std::string& bytes);
  std::string flush();  // whatever is left, invalid tail replaced by U+FFFD

 private:
  std::string pending_;
};

// True if s is valid UTF-8 (no overlongs, no surrogates, max U+10FFFF).
bool utf8_valid(const std::string& s);

}  // namespace eoq
