// Tokenizer built from GGUF metadata (tokenizer.ggml.*).
//
//   model "gpt2"  : byte-level BPE; pre-tokenizer split rules chosen by tokenizer.ggml.pre
//                   ("smollm", "llama-bpe", "tekken", "default"/"gpt2"; unknown pre -> error
//                   naming it); merges ranked by their order in tokenizer.ggml.merges.
//   model "llama" : SentencePiece BPE (merge by score) with byte fallback (<0xAB> tokens),
//                   add_space_prefix, spaces as U+2581.
// Special tokens are matched in the text before splitting, leftmost-longest first: CONTROL and
// UNKNOWN tokens only when the caller passes parse_special (otherwise their text is tokenized
// as plain text); USER_DEFINED tokens always, as llama.cpp and Hugging Face both do (they are
// ordinary added words, not control markers).
//
// Defaults as llama.cpp sets them (the GGUF flags override):
//   add_bos: "llama" true; "gpt2" false, except pre llama-bpe/llama3/llama-v3/tekken: true.
//   add_eos: false.  add_space_prefix ("llama" only): true.
// Missing tokenizer.ggml.pre means "default" (the GPT-2 split rule).
// decode() concatenates pieces; it does not apply llama.cpp's clean_spaces heuristics.
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

// The tokenizer metadata as plain data (what tokenizer.ggml.* holds), so the tokenizer can be
// built and tested without a file. Optional flags use -1 for "absent: model default".
struct TokenizerVocab {
  std::string model;                // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;                  // tokenizer.ggml.pre; "" = absent ("default")
  std::vector<std::string> tokens;  // id -> text (byte-level or U+2581-escaped)
  std::vector<int32_t> types;       // TokenType per id; empty = all NORMAL
  std::vector<float> scores;        // per id; empty = all 0 (used by "llama")
  std::vector<std::string> merges;  // "left right", rank = index (used by "gpt2")
  int64_t bos = -1, eos = -1, unk = -1, eot = -1, eom = -1;  // -1 = absent
  int add_bos = -1, add_eos = -1, add_space_prefix = -1;      // -1 = absent, else 0/1

  // Reads tokenizer.ggml.*; throws Error(format) for a missing vocabulary or a key of the
  // wrong type. Consistency is checked by the Tokenizer constructor.
  static TokenizerVocab from_gguf(const GGUFFile& file);
};

class Tokenizer {
 public:
  // Throws Error(format/unsupported) on missing or inconsistent metadata, Error(unsupported)
  // on an unknown tokenizer.ggml.model or tokenizer.ggml.pre (the message names it).
  explicit Tokenizer(const GGUFFile& file);
  // Same checks, from plain data: Error(format) for merges naming unknown tokens, token_type or
  // scores arrays of the wrong length, special ids out of range, duplicate token texts.
  explicit Tokenizer(const TokenizerVocab& vocab);
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

  // Concatenated pieces. For "llama" models with add_space_prefix, one leading space is
  // removed from the first token that is not CONTROL/UNKNOWN when remove_leading_space is true
  // (undoing the space that encode() prepends). Throws Error(invalid_arg) for an id out of range.
  std::string decode(const std::vector<int32_t>& ids, bool special = false,
                     bool remove_leading_space = true) const;

  int32_t n_vocab() const;
  int32_t bos() const;   // -1 if none
  int32_t eos() const;   // -1 if none
  bool add_bos() const;
  bool add_eos() const;
  bool add_space_prefix() const;  // "llama" models only; false for "gpt2"
  // End of generation: eos, eot, eom ids and tokens whose text is a known end marker
  // ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>",
  // "<|eom_id|>"). eog_ids() is sorted.
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
