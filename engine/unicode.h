// UTF-8 coding and the few Unicode character classes the pre-tokenizer patterns use.
//
// Categories come from engine/unicode_data.inc, generated from Python's unicodedata by
// tools/gen_unicode_tables.py. Whitespace is the Unicode White_Space property, which is what
// `\s` means in the Oniguruma regexes of Hugging Face tokenizers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace eoq {
namespace unicode {

// One category code per code point (the generator's numbering).
enum UCat : uint8_t {
  UCAT_OTHER = 0,  // anything that is not a letter, mark or number (punctuation, symbols, spaces...)
  UCAT_LU = 1, UCAT_LL = 2, UCAT_LT = 3, UCAT_LM = 4, UCAT_LO = 5,
  UCAT_M = 6,  // Mn, Mc, Me
  UCAT_N = 7,  // Nd, Nl, No
};

// Flag bits derived from the category, cheap to test in the scanners.
enum : uint8_t {
  UF_L = 1 << 0,      // \p{L}
  UF_N = 1 << 1,      // \p{N}
  UF_M = 1 << 2,      // \p{M}
  UF_SPACE = 1 << 3,  // \s (White_Space)
  UF_LU_LT = 1 << 4,  // Lu or Lt
  UF_LL = 1 << 5,     // Ll
  UF_LM_LO = 1 << 6,  // Lm or Lo
};

struct UCatRange {
  uint32_t first, last;
  uint8_t cat;
};

UCat category(uint32_t cp);
uint8_t flags(uint32_t cp);  // UF_* bits; 0 for code points above U+10FFFF
inline bool is_letter(uint32_t cp) { return flags(cp) & UF_L; }
inline bool is_number(uint32_t cp) { return flags(cp) & UF_N; }
inline bool is_mark(uint32_t cp) { return flags(cp) & UF_M; }
inline bool is_space(uint32_t cp) { return flags(cp) & UF_SPACE; }
const char* unicode_version();  // of the generated tables, e.g. "14.0.0"

// Decodes one character at s[0..n). Returns:
//   > 0  its length in bytes, *cp set;
//   0    s is a proper prefix of a valid character (more bytes needed), or n == 0;
//   < 0  invalid: -(length of the maximal ill-formed subpart), i.e. how many bytes one U+FFFD
//        replaces under the Unicode "maximal subpart" practice (what Python's errors="replace"
//        does). Overlongs, surrogates and values above U+10FFFF are invalid.
int decode_one(const uint8_t* s, size_t n, uint32_t* cp);

void append_utf8(std::string& out, uint32_t cp);  // cp must be a valid scalar value
size_t utf8_len(uint32_t cp);

}  // namespace unicode

// True if s is valid UTF-8 (no overlongs, no surrogates, max U+10FFFF). Also in tokenizer.h.
bool utf8_valid(const std::string& s);
// Index of the first invalid byte, or s.size() if none (for error messages).
size_t utf8_first_invalid(const std::string& s);

}  // namespace eoq
