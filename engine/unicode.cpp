#include "engine/unicode.h"

#include <algorithm>
#include <vector>

namespace eoq {
namespace unicode {

namespace {
#include "engine/unicode_data.inc"

uint8_t flags_of_cat(uint8_t c) {
  switch (c) {
    case UCAT_LU: case UCAT_LT: return UF_L | UF_LU_LT;
    case UCAT_LL: return UF_L | UF_LL;
    case UCAT_LM: case UCAT_LO: return UF_L | UF_LM_LO;
    case UCAT_M: return UF_M;
    case UCAT_N: return UF_N;
    default: return 0;
  }
}

// Category of a code point by binary search over the generated ranges.
uint8_t search_cat(uint32_t cp) {
  const UCatRange* b = kCatRanges;
  const UCatRange* e = kCatRanges + sizeof(kCatRanges) / sizeof(kCatRanges[0]);
  const UCatRange* it = std::upper_bound(b, e, cp, [](uint32_t v, const UCatRange& r) { return v < r.first; });
  if (it == b) return 0;
  --it;
  return cp <= it->last ? it->cat : 0;
}

bool search_space(uint32_t cp) {
  for (const UCatRange& r : kWhiteSpace)
    if (cp >= r.first && cp <= r.last) return true;
  return false;
}

// Flat tables for the Basic Multilingual Plane (64 KiB each), built once on first use; the
// scanners ask for every code point of the text, so the BMP path must be a single load.
struct BmpTables {
  std::vector<uint8_t> cat, flg;
  BmpTables() : cat(0x10000), flg(0x10000) {
    for (uint32_t cp = 0; cp < 0x10000; ++cp) {
      cat[cp] = search_cat(cp);
      flg[cp] = flags_of_cat(cat[cp]) | (search_space(cp) ? UF_SPACE : 0);
    }
  }
};
const BmpTables& bmp() {
  static const BmpTables t;  // thread-safe initialisation (C++11 magic statics)
  return t;
}
}  // namespace

UCat category(uint32_t cp) {
  if (cp < 0x10000) return (UCat)bmp().cat[cp];
  if (cp > 0x10FFFF) return UCAT_OTHER;
  return (UCat)search_cat(cp);
}

uint8_t flags(uint32_t cp) {
  if (cp < 0x10000) return bmp().flg[cp];
  if (cp > 0x10FFFF) return 0;
  return flags_of_cat(search_cat(cp));  // no whitespace outside the BMP
}

const char* unicode_version() { return kUnicodeVersion; }

int decode_one(const uint8_t* s, size_t n, uint32_t* cp) {
  if (n == 0) return 0;
  const uint8_t b0 = s[0];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  uint32_t v;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2; v = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3; v = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;       // no overlongs
    else if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4; v = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;       // no overlongs
    else if (b0 == 0xF4) hi = 0x8F;  // max U+10FFFF
  } else {
    return -1;  // continuation byte, C0/C1 or F5..FF: never valid as a lead
  }
  for (int i = 1; i < len; ++i) {
    if ((size_t)i >= n) return 0;  // valid so far, truncated
    const uint8_t b = s[i];
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return -i;  // lead plus the i-1 good continuation bytes
    v = (v << 6) | (b & 0x3F);
  }
  *cp = v;
  return len;
}

size_t utf8_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back((char)cp);
  } else if (cp < 0x800) {
    out.push_back((char)(0xC0 | (cp >> 6)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back((char)(0xE0 | (cp >> 12)));
    out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  } else {
    out.push_back((char)(0xF0 | (cp >> 18)));
    out.push_back((char)(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  }
}

}  // namespace unicode

size_t utf8_first_invalid(const std::string& s) {
  const uint8_t* p = (const uint8_t*)s.data();
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {  // ASCII fast path
      ++i;
      continue;
    }
    uint32_t cp;
    const int k = unicode::decode_one(p + i, n - i, &cp);
    if (k <= 0) return i;
    i += (size_t)k;
  }
  return n;
}

bool utf8_valid(const std::string& s) { return utf8_first_invalid(s) == s.size(); }

}  // namespace eoq
