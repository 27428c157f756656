#include "engine/pretokenize.h"

#include <cstdint>

#include "base/error.h"
#include "engine/unicode.h"

namespace eoq {

using namespace unicode;

PreTokenizerInfo pre_tokenizer_info(const std::string& pre) {
  PreTokenizerInfo info;
  if (pre == "gpt2" || pre == "default" || pre == "gpt-2") {
    info.type = PreType::GPT2;
  } else if (pre == "smollm") {
    info.type = PreType::SMOLLM;
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    // llama.cpp: Llama 3 family ignores merges for whole-vocab pieces and adds BOS.
    info.type = PreType::LLAMA3;
    info.ignore_merges = true;
    info.add_bos_default = true;
  } else if (pre == "dbrx" || pre == "smaug-bpe") {
    info.type = PreType::LLAMA3;  // same split rule, plain merges, no default BOS
  } else if (pre == "tekken") {
    info.type = PreType::TEKKEN;
    info.ignore_merges = true;
    info.add_bos_default = true;
  } else {
    fail(ErrorCode::unsupported,
         "unsupported tokenizer pre-tokenizer '" + pre +
             "' (tokenizer.ggml.pre); supported: gpt2, default, smollm, llama-bpe, llama3, "
             "llama-v3, dbrx, smaug-bpe, tekken");
  }
  return info;
}

namespace {

// The text of one fragment decoded once: code points, their UF_* flags and byte offsets.
// Index i is a character; off[i] its first byte, off[n] the end.
struct Decoded {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> fl;
  std::vector<size_t> off;
};

void decode_range(const std::string& text, size_t begin, size_t end, Decoded& d) {
  d.cp.clear();
  d.fl.clear();
  d.off.clear();
  d.cp.reserve(end - begin);
  d.fl.reserve(end - begin);
  d.off.reserve(end - begin + 1);
  const uint8_t* p = (const uint8_t*)text.data();
  size_t i = begin;
  while (i < end) {
    uint32_t c;
    int k;
    if (p[i] < 0x80) {
      c = p[i];
      k = 1;
    } else {
      k = decode_one(p + i, end - i, &c);
      if (k <= 0) fail(ErrorCode::invalid_utf8, "pre-tokenizer: invalid UTF-8 at byte " + std::to_string(i));
    }
    d.cp.push_back(c);
    d.fl.push_back(flags(c));
    d.off.push_back(i);
    i += (size_t)k;
  }
  d.off.push_back(end);
}

// Scanner over characters [0, end) of a Decoded text: end is "end of text" for every
// lookahead, so a sub-range can be scanned as if it were a whole string.
struct Scan {
  const uint32_t* cp;
  const uint8_t* fl;
  size_t end;

  bool has(size_t i) const { return i < end; }
  bool L(size_t i) const { return i < end && (fl[i] & UF_L); }
  bool N(size_t i) const { return i < end && (fl[i] & UF_N); }
  bool S(size_t i) const { return i < end && (fl[i] & UF_SPACE); }
  // [^\s\p{L}\p{N}]
  bool P(size_t i) const { return i < end && !(fl[i] & (UF_SPACE | UF_L | UF_N)); }
  bool CRLF(size_t i) const { return i < end && (cp[i] == '\r' || cp[i] == '\n'); }
  // [^\r\n\p{L}\p{N}]
  bool X(size_t i) const { return i < end && !(fl[i] & (UF_L | UF_N)) && cp[i] != '\r' && cp[i] != '\n'; }
  // tekken classes: U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], W = [\p{Ll}\p{Lm}\p{Lo}\p{M}]
  bool U(size_t i) const { return i < end && (fl[i] & (UF_LU_LT | UF_LM_LO | UF_M)); }
  bool W(size_t i) const { return i < end && (fl[i] & (UF_LL | UF_LM_LO | UF_M)); }

  template <class Pred>
  size_t run(size_t i, Pred pred) const {
    while (pred(i)) ++i;
    return i;
  }
  size_t runL(size_t i) const { return run(i, [this](size_t k) { return L(k); }); }
  size_t runN(size_t i) const { return run(i, [this](size_t k) { return N(k); }); }
  size_t runS(size_t i) const { return run(i, [this](size_t k) { return S(k); }); }
  size_t runP(size_t i) const { return run(i, [this](size_t k) { return P(k); }); }
  size_t runU(size_t i) const { return run(i, [this](size_t k) { return U(k); }); }
  size_t runW(size_t i) const { return run(i, [this](size_t k) { return W(k); }); }

  // 's|'t|'re|'ve|'m|'ll|'d at i (cp[i] == '\''); fold: ASCII case-insensitive, plus U+017F
  // (LATIN SMALL LETTER LONG S, whose case fold is 's', as Oniguruma's (?i) matches it).
  size_t contraction(size_t i, bool fold) const {
    if (!has(i + 1)) return i;
    auto low = [&](size_t k) -> uint32_t {
      uint32_t c = cp[k];
      if (fold) {
        if (c >= 'A' && c <= 'Z') c += 32;
        else if (c == 0x17F) c = 's';
      }
      return c;
    };
    const uint32_t c1 = low(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (!has(i + 2)) return i;
    const uint32_t c2 = low(i + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
    return i;
  }

  // \s+(?!\S)|\s+ at i (S(i) holds): the whole whitespace run if it reaches the end of the
  // text; otherwise the run minus its last character (which then leads the next piece, e.g.
  // " word"), or the single character when the run is one long.
  size_t spaces(size_t i) const {
    const size_t e = runS(i);
    if (e == end) return e;
    return e - i >= 2 ? e - 1 : e;
  }

  // \s*[\r\n]+ at i: greedy \s* backs off to the last \r or \n of the whitespace run, then
  // [\r\n]+ takes just that one (the character after it is not \r or \n). i if none.
  size_t spaces_newlines(size_t i) const {
    const size_t e = runS(i);
    for (size_t k = e; k > i; --k)
      if (cp[k - 1] == '\r' || cp[k - 1] == '\n') return k;
    return i;
  }

  // ---- GPT2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  size_t gpt2(size_t i) const {
    const uint32_t c = cp[i];
    if (c == '\'') {
      const size_t e = contraction(i, false);
      if (e > i) return e;
    }
    // " ?X+": with the optional space taken first; without it the space itself would have
    // to be a letter/number/punctuation, which it is not, so no second try is needed.
    const size_t j = c == ' ' ? i + 1 : i;
    if (L(j)) return runL(j);
    if (N(j)) return runN(j);
    if (P(j)) return runP(j);
    if (S(i)) return spaces(i);
    return i;
  }

  // ---- LLAMA3
  size_t llama3(size_t i) const {
    const uint32_t c = cp[i];
    if (c == '\'') {
      const size_t e = contraction(i, true);
      if (e > i) return e;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (X(i) && L(i + 1)) return runL(i + 1);
    if (L(i)) return runL(i);
    // \p{N}{1,3}
    if (N(i)) {
      size_t k = i + 1;
      while (k < i + 3 && N(k)) ++k;
      return k;
    }
    // ?[^\s\p{L}\p{N}]+[\r\n]*
    const size_t j = c == ' ' ? i + 1 : i;
    if (P(j)) return run(runP(j), [this](size_t k) { return CRLF(k); });
    if (S(i)) {
      const size_t e = spaces_newlines(i);
      if (e > i) return e;
      return spaces(i);
    }
    return i;
  }

  // ---- TEKKEN
  // [U]*[W]+ starting at s: U* greedy, then W+; if W+ cannot start where U* stopped, U* gives
  // back characters until the last one it gave back is in W (Lm/Lo/M are in both classes), and
  // W+ then holds just that one. s if no match.
  size_t tek_upper_lower(size_t s) const {
    const size_t u = runU(s);
    if (W(u)) return runW(u);
    for (size_t k = u; k > s; --k)
      if (W(k - 1)) return k;
    return s;
  }
  size_t tekken(size_t i) const {
    // [^\r\n\p{L}\p{N}]?[U]*[W]+   (optional prefix tried first, then without it)
    if (X(i)) {
      const size_t e = tek_upper_lower(i + 1);
      if (e > i + 1) return e;
    }
    {
      const size_t e = tek_upper_lower(i);
      if (e > i) return e;
    }
    // [^\r\n\p{L}\p{N}]?[U]+[W]*
    if (X(i) && U(i + 1)) return runW(runU(i + 1));
    if (U(i)) return runW(runU(i));
    // \p{N}
    if (N(i)) return i + 1;
    // ?[^\s\p{L}\p{N}]+[\r\n/]*
    const size_t j = cp[i] == ' ' ? i + 1 : i;
    if (P(j)) return run(runP(j), [this](size_t k) { return has(k) && (cp[k] == '\r' || cp[k] == '\n' || cp[k] == '/'); });
    if (S(i)) {
      const size_t e = spaces_newlines(i);
      if (e > i) return e;
      return spaces(i);
    }
    return i;
  }
};

// Runs one scanner over characters [a, b) of d, treating b as the end of the text, and
// appends the pieces as byte spans. Characters no alternative matches (none, for these
// patterns) would form pieces of their own, as "isolated" splitting keeps the gaps.
template <class Match>
void split_range(const Decoded& d, size_t a, size_t b, Match match,
                 std::vector<std::pair<size_t, size_t>>& out) {
  Scan sc{d.cp.data(), d.fl.data(), b};
  size_t i = a, gap = SIZE_MAX;
  while (i < b) {
    const size_t e = match(sc, i);
    if (e > i) {
      if (gap != SIZE_MAX) {
        out.emplace_back(d.off[gap], d.off[i]);
        gap = SIZE_MAX;
      }
      out.emplace_back(d.off[i], d.off[e]);
      i = e;
    } else {
      if (gap == SIZE_MAX) gap = i;
      ++i;
    }
  }
  if (gap != SIZE_MAX) out.emplace_back(d.off[gap], d.off[b]);
}

}  // namespace

void pre_tokenize(PreType type, const std::string& text, size_t begin, size_t end,
                  std::vector<std::pair<size_t, size_t>>& pieces) {
  if (begin >= end) return;
  Decoded d;
  decode_range(text, begin, end, d);
  const size_t n = d.cp.size();
  switch (type) {
    case PreType::GPT2:
      split_range(d, 0, n, [](const Scan& s, size_t i) { return s.gpt2(i); }, pieces);
      break;
    case PreType::SMOLLM: {
      // Digits first (each \p{N} alone), then GPT2 on each run between them.
      size_t a = 0;
      for (size_t i = 0; i <= n; ++i) {
        if (i == n || (d.fl[i] & UF_N)) {
          if (i > a) split_range(d, a, i, [](const Scan& s, size_t k) { return s.gpt2(k); }, pieces);
          if (i < n) pieces.emplace_back(d.off[i], d.off[i + 1]);
          a = i + 1;
        }
      }
      break;
    }
    case PreType::LLAMA3:
      split_range(d, 0, n, [](const Scan& s, size_t i) { return s.llama3(i); }, pieces);
      break;
    case PreType::TEKKEN:
      split_range(d, 0, n, [](const Scan& s, size_t i) { return s.tekken(i); }, pieces);
      break;
  }
}

std::vector<std::string> pre_tokenize(const std::string& pre, const std::string& text) {
  const PreTokenizerInfo info = pre_tokenizer_info(pre);
  const size_t bad = utf8_first_invalid(text);
  if (bad != text.size())
    fail(ErrorCode::invalid_utf8, "text is not valid UTF-8 (first bad byte at offset " + std::to_string(bad) + ")");
  std::vector<std::pair<size_t, size_t>> spans;
  pre_tokenize(info.type, text, 0, text.size(), spans);
  std::vector<std::string> out;
  out.reserve(spans.size());
  for (const auto& s : spans) out.emplace_back(text, s.first, s.second - s.first);
  return out;
}

}  // namespace eoq
