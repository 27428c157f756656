// Pre-tokenizers for byte-level BPE: split text into the pieces that BPE merges within.
//
// Each split rule is the regex published in the models' tokenizer.json (table in
// ../shared/spec/engine.md section 4), applied as Hugging Face's Split(..., "isolated") does:
// leftmost match at each position, alternatives tried in order, greedy quantifiers with
// backtracking. No regex engine is used: every pattern is a hand-written scanner over code
// points and category flags (engine/unicode.h), with the backtracking worked out per pattern
// in pretokenize.cpp.
//
//   GPT2   ("gpt2", "default", "gpt-2"):
//            's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   SMOLLM ("smollm"): every \p{N} character is first cut out as a piece of its own, then each
//            remaining run is split by the GPT2 rule as a separate text (so `(?!\S)` sees the
//            end of the run, not the digit after it).
//   LLAMA3 ("llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe"):
//            (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   TEKKEN ("tekken"): the Ministral/Mistral-Nemo rule with upper/lower-case letter runs.
//
// The text must be valid UTF-8 (the tokenizer checks before calling).
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace eoq {

enum class PreType { GPT2, SMOLLM, LLAMA3, TEKKEN };

// What tokenizer.ggml.pre implies, as llama.cpp sets it for the same names.
struct PreTokenizerInfo {
  PreType type = PreType::GPT2;
  bool ignore_merges = false;    // a piece that is itself a vocabulary entry is emitted whole
  bool add_bos_default = false;  // BOS unless tokenizer.ggml.add_bos_token says otherwise
};

// Looks up a tokenizer.ggml.pre name. Throws Error(unsupported) naming an unknown pre
// (e.g. "qwen2", "deepseek-llm": their patterns are not implemented).
PreTokenizerInfo pre_tokenizer_info(const std::string& pre);

// Splits text[begin, end) (byte offsets on character boundaries) and appends each piece as a
// [first, last) pair of byte offsets into text, in order; the pieces tile the range exactly.
void pre_tokenize(PreType type, const std::string& text, size_t begin, size_t end,
                  std::vector<std::pair<size_t, size_t>>& pieces);

// Convenience for tests: the pieces as strings. Throws Error(invalid_utf8) on invalid text.
std::vector<std::string> pre_tokenize(const std::string& pre, const std::string& text);

}  // namespace eoq
