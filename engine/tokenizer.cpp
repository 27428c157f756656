// Tokenizer: vocabulary checks, special-token partition, byte-level BPE ("gpt2"),
// SentencePiece-style score merging ("llama"), pieces and decoding, Utf8Stream.
//
// Encoding pipeline (both models):
//   1. reject invalid UTF-8 (Error(invalid_utf8));
//   2. cut the text at special-token texts (leftmost, longest first) into raw fragments and
//      special ids;
//   3. "gpt2": each raw fragment is pre-tokenized (engine/pretokenize.h); each piece's bytes
//      become their byte-level tokens and are merged by merge rank (lowest first, leftmost on
//      ties), as GPT-2/HF/llama.cpp do;
//      "llama": each raw fragment (with a space prepended when add_space_prefix and it starts
//      the text or follows a special token), spaces escaped to U+2581, is split into characters
//      and adjacent pairs are merged while their concatenation is a vocabulary entry, highest
//      score first (leftmost on ties); characters that end up outside the vocabulary fall
//      back to <0xAB> byte tokens (then <unk>);
//   4. BOS/EOS as add_bos/add_eos say, when the caller asks for special tokens.
#include "engine/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "base/error.h"
#include "engine/gguf.h"
#include "engine/pretokenize.h"
#include "engine/unicode.h"

namespace eoq {

namespace {

const char kSpmSpace[] = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

// Printable form of a (possibly binary) token text for error messages.
std::string show(const std::string& s) {
  std::string r = "'";
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != 0x7F) {
      r += (char)c;
    } else {
      char buf[8];
      snprintf(buf, sizeof buf, "\\x%02X", c);
      r += buf;
    }
  }
  if (s.size() > 80) r += "...";
  return r + "'";
}

// GPT-2's reversible byte -> code point map: printable Latin-1 bytes stand for themselves, the
// other 68 bytes (controls, space, DEL, NBSP, soft hyphen...) take U+0100.. in byte order.
struct ByteMap {
  uint32_t byte_to_cp[256];
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = printable ? (uint32_t)b : next++;
      cp_to_byte[byte_to_cp[b]] = (uint8_t)b;
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Parses "<0xAB>" (SentencePiece byte tokens); -1 if the text is not of that form.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int h = hex(t[3]), l = hex(t[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

const char* const kEogTexts[] = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>",
                                 "</s>", "<end_of_turn>", "<|eom_id|>"};

// A merge candidate in a word: the pair (left node, right node) and its priority.
struct BpeCand {
  int32_t rank;
  int32_t left, right;  // node indices
  int32_t id_l, id_r;   // the symbol ids when queued (stale if either changed)
  bool operator>(const BpeCand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
};

struct SpmCand {
  float score;
  int32_t left, right;
  int32_t size;  // byte length of the concatenation when queued
  bool operator<(const SpmCand& o) const { return score != o.score ? score < o.score : left > o.left; }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// TokenizerVocab from GGUF metadata.

TokenizerVocab TokenizerVocab::from_gguf(const GGUFFile& f) {
  TokenizerVocab v;
  auto need_array = [&](const char* key, bool required) -> const GGUFValue* {
    const GGUFValue* x = f.find(key);
    if (!x) {
      if (required) fail(ErrorCode::format, std::string("tokenizer metadata: missing ") + key);
      return nullptr;
    }
    if (x->type != GGUFValueType::ARRAY)
      fail(ErrorCode::format, std::string("tokenizer metadata: ") + key + " is not an array");
    return x;
  };
  auto opt_id = [&](const char* key) -> int64_t {
    const GGUFValue* x = f.find(key);
    if (!x) return -1;
    if (!x->is_int()) fail(ErrorCode::format, std::string("tokenizer metadata: ") + key + " is not an integer");
    return x->i;
  };
  auto opt_bool = [&](const char* key) -> int {
    const GGUFValue* x = f.find(key);
    if (!x) return -1;
    if (!x->is_int()) fail(ErrorCode::format, std::string("tokenizer metadata: ") + key + " is not a bool");
    return x->i != 0;
  };

  v.model = f.get_str("tokenizer.ggml.model");
  v.pre = f.get_str("tokenizer.ggml.pre", "");

  const GGUFValue* toks = need_array("tokenizer.ggml.tokens", true);
  if (toks->elem_type != GGUFValueType::STRING)
    fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.tokens is not an array of strings");
  v.tokens = toks->arr_s;

  if (const GGUFValue* tt = need_array("tokenizer.ggml.token_type", false)) {
    if (tt->arr_i.size() != tt->arr_len)
      fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.token_type is not an integer array");
    v.types.reserve(tt->arr_i.size());
    for (int64_t x : tt->arr_i) v.types.push_back(x >= 0 && x <= 6 ? (int32_t)x : 0);  // unknown -> UNDEFINED
  }
  if (const GGUFValue* sc = need_array("tokenizer.ggml.scores", false)) {
    if (sc->arr_f.size() != sc->arr_len)
      fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.scores is not a float array");
    v.scores.assign(sc->arr_f.begin(), sc->arr_f.end());
  }
  if (const GGUFValue* m = need_array("tokenizer.ggml.merges", false)) {
    if (m->elem_type != GGUFValueType::STRING)
      fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.merges is not an array of strings");
    v.merges = m->arr_s;
  }
  v.bos = opt_id("tokenizer.ggml.bos_token_id");
  v.eos = opt_id("tokenizer.ggml.eos_token_id");
  v.unk = opt_id("tokenizer.ggml.unknown_token_id");
  v.eot = opt_id("tokenizer.ggml.eot_token_id");
  v.eom = opt_id("tokenizer.ggml.eom_token_id");
  v.add_bos = opt_bool("tokenizer.ggml.add_bos_token");
  v.add_eos = opt_bool("tokenizer.ggml.add_eos_token");
  v.add_space_prefix = opt_bool("tokenizer.ggml.add_space_prefix");
  return v;
}

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  bool spm = false;  // "llama" model
  std::string model, pre;
  PreTokenizerInfo pre_info;
  std::vector<std::string> text;   // id -> vocabulary string
  std::vector<TokenType> type;
  std::vector<float> score;
  std::vector<std::string> piece;  // id -> bytes for non-special rendering
  std::unordered_map<std::string_view, int32_t> to_id;  // views into `text`
  int32_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  std::vector<int32_t> eog;
  std::vector<uint8_t> is_eog;

  // Byte-level BPE: the token of each byte's printable character, and merges keyed by the pair
  // of token ids -> (rank, merged token id).
  int32_t byte_tok[256];
  struct Merge {
    int32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges;
  // SentencePiece: <0xAB> token per byte, -1 if absent.
  int32_t spm_byte_tok[256];

  // Special tokens matched before splitting, bucketed by first byte, longest first.
  std::vector<int32_t> special_by_byte[256];
  bool has_user_defined = false;

  static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

  int32_t lookup(std::string_view s) const {
    auto it = to_id.find(s);
    return it == to_id.end() ? -1 : it->second;
  }

  void build(const TokenizerVocab& v);
  void partition(const std::string& s, bool parse_special,
                 std::vector<std::pair<size_t, size_t>>& frags, std::vector<int32_t>& frag_tok) const;
  void bpe_word(const std::string& s, size_t a, size_t b, std::vector<int32_t>& out,
                std::vector<BpeCand>& heap_buf, std::vector<int32_t>& sym,
                std::vector<int32_t>& prev, std::vector<int32_t>& next, std::string& scratch) const;
  void spm_fragment(const std::string& s, std::vector<int32_t>& out) const;
};

void Tokenizer::Impl::build(const TokenizerVocab& v) {
  model = v.model;
  if (v.model == "llama") {
    spm = true;
  } else if (v.model == "gpt2") {
    spm = false;
    pre = v.pre.empty() ? "default" : v.pre;
    pre_info = pre_tokenizer_info(pre);  // throws unsupported, naming it
  } else {
    fail(ErrorCode::unsupported, "unsupported tokenizer model '" + v.model +
                                     "' (tokenizer.ggml.model); supported: gpt2, llama");
  }
  if (spm) pre = v.pre;

  const size_t n = v.tokens.size();
  if (n == 0) fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.tokens is empty");
  if (n > (size_t)INT32_MAX) fail(ErrorCode::format, "tokenizer metadata: too many tokens");
  if (!v.types.empty() && v.types.size() != n)
    fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.token_type has " + std::to_string(v.types.size()) +
                                " entries but tokenizer.ggml.tokens has " + std::to_string(n));
  if (!v.scores.empty() && v.scores.size() != n)
    fail(ErrorCode::format, "tokenizer metadata: tokenizer.ggml.scores has " + std::to_string(v.scores.size()) +
                                " entries but tokenizer.ggml.tokens has " + std::to_string(n));

  text = v.tokens;
  type.resize(n);
  score.assign(n, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const int32_t t = v.types.empty() ? 1 : v.types[i];
    type[i] = (t >= 0 && t <= 6) ? (TokenType)t : TokenType::UNDEFINED;
    if (!v.scores.empty()) score[i] = v.scores[i];
  }
  to_id.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    if (text[i].empty()) continue;  // an empty text can never be produced nor matched
    auto ins = to_id.emplace(std::string_view(text[i]), (int32_t)i);
    if (!ins.second)
      fail(ErrorCode::format, "tokenizer metadata: token " + show(text[i]) + " appears twice (ids " +
                                  std::to_string(ins.first->second) + " and " + std::to_string(i) + ")");
  }

  // Special ids: -1 absent; llama.cpp's SentencePiece defaults are <unk>=0, <s>=1, </s>=2.
  auto check_id = [&](int64_t id, const char* what) -> int32_t {
    if (id < -1 || id >= (int64_t)n)
      fail(ErrorCode::format, std::string("tokenizer metadata: ") + what + " " + std::to_string(id) +
                                  " is out of range (vocabulary has " + std::to_string(n) + " tokens)");
    return (int32_t)id;
  };
  bos = check_id(v.bos, "tokenizer.ggml.bos_token_id");
  eos = check_id(v.eos, "tokenizer.ggml.eos_token_id");
  unk = check_id(v.unk, "tokenizer.ggml.unknown_token_id");
  const int32_t eot = check_id(v.eot, "tokenizer.ggml.eot_token_id");
  const int32_t eom = check_id(v.eom, "tokenizer.ggml.eom_token_id");
  if (spm) {
    if (v.bos < 0 && n > 1) bos = 1;
    if (v.eos < 0 && n > 2) eos = 2;
    if (v.unk < 0) unk = 0;
  }

  // Flags: metadata wins; otherwise llama.cpp's defaults for the model / pre-tokenizer.
  add_bos = v.add_bos >= 0 ? v.add_bos != 0 : (spm ? true : pre_info.add_bos_default);
  add_eos = v.add_eos >= 0 ? v.add_eos != 0 : false;
  add_space_prefix = spm && (v.add_space_prefix >= 0 ? v.add_space_prefix != 0 : true);

  // End-of-generation set.
  is_eog.assign(n, 0);
  for (int32_t id : {eos, eot, eom})
    if (id >= 0) is_eog[id] = 1;
  for (const char* t : kEogTexts) {
    const int32_t id = lookup(t);
    if (id >= 0) is_eog[id] = 1;
  }
  for (size_t i = 0; i < n; ++i)
    if (is_eog[i]) eog.push_back((int32_t)i);

  // Pieces (non-special rendering).
  piece.resize(n);
  const ByteMap& bm = byte_map();
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = text[i];
    std::string& p = piece[i];
    switch (type[i]) {
      case TokenType::NORMAL:
        if (spm) {
          for (size_t k = 0; k < t.size();) {
            if (t.compare(k, 3, kSpmSpace) == 0) {
              p += ' ';
              k += 3;
            } else {
              p += t[k++];
            }
          }
        } else {
          // Byte-level text back to bytes; a character outside the table (malformed vocab) is
          // kept as its own UTF-8.
          const uint8_t* s = (const uint8_t*)t.data();
          for (size_t k = 0; k < t.size();) {
            uint32_t cp;
            const int len = unicode::decode_one(s + k, t.size() - k, &cp);
            if (len <= 0) {
              p += t[k++];
              continue;
            }
            auto it = bm.cp_to_byte.find(cp);
            if (it != bm.cp_to_byte.end()) p += (char)it->second;
            else p.append(t, k, (size_t)len);
            k += (size_t)len;
          }
        }
        break;
      case TokenType::BYTE: {
        const int b = parse_byte_token(t);
        p = b >= 0 ? std::string(1, (char)b) : t;
        break;
      }
      case TokenType::USER_DEFINED:
        p = t;
        break;
      default:  // CONTROL, UNKNOWN: only with special=true; UNUSED, UNDEFINED: never
        break;
    }
  }

  // Special tokens matched in the text: CONTROL/UNKNOWN (parse_special only) and USER_DEFINED.
  // Texts that are empty or not valid UTF-8 are skipped (they could match inside a character).
  {
    std::vector<int32_t> sp;
    for (size_t i = 0; i < n; ++i) {
      const TokenType t = type[i];
      if ((t == TokenType::CONTROL || t == TokenType::UNKNOWN || t == TokenType::USER_DEFINED) &&
          !text[i].empty() && utf8_valid(text[i])) {
        sp.push_back((int32_t)i);
        if (t == TokenType::USER_DEFINED) has_user_defined = true;
      }
    }
    std::stable_sort(sp.begin(), sp.end(),
                     [&](int32_t a, int32_t b) { return text[a].size() > text[b].size(); });
    for (int32_t id : sp) special_by_byte[(uint8_t)text[id][0]].push_back(id);
  }

  if (spm) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", b);
      spm_byte_tok[b] = lookup(name);
    }
    return;
  }

  // Byte-level BPE tables.
  for (int b = 0; b < 256; ++b) {
    std::string c;
    unicode::append_utf8(c, bm.byte_to_cp[b]);
    byte_tok[b] = lookup(c);
  }
  if (v.merges.empty()) fail(ErrorCode::format, "tokenizer metadata: gpt2 tokenizer has no tokenizer.ggml.merges");
  merges.reserve(v.merges.size() * 2);
  std::string joined;
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& m = v.merges[r];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos || sp + 1 >= m.size())
      fail(ErrorCode::format, "tokenizer metadata: merge " + std::to_string(r) + " " + show(m) +
                                  " is not two tokens separated by a space");
    const std::string_view l(m.data(), sp), rt(m.data() + sp + 1, m.size() - sp - 1);
    const int32_t a = lookup(l), b = lookup(rt);
    if (a < 0 || b < 0)
      fail(ErrorCode::format, "tokenizer metadata: merge " + std::to_string(r) + " " + show(m) + " names token " +
                                  show(std::string(a < 0 ? l : rt)) + ", which is not in the vocabulary");
    joined.assign(l);
    joined.append(rt);
    const int32_t c = lookup(joined);
    if (c < 0)
      fail(ErrorCode::format, "tokenizer metadata: merge " + std::to_string(r) + " " + show(m) +
                                  " makes " + show(joined) + ", which is not in the vocabulary");
    merges.emplace(pair_key(a, b), Merge{(int32_t)r, c});  // a repeated merge keeps its first rank
  }
}

// Cuts s into raw fragments and special tokens. frags[k] is a byte range; frag_tok[k] is the
// special id it stands for, or -1 for raw text. Leftmost match wins; at one position the
// longest special text wins.
void Tokenizer::Impl::partition(const std::string& s, bool parse_special,
                                std::vector<std::pair<size_t, size_t>>& frags,
                                std::vector<int32_t>& frag_tok) const {
  frags.clear();
  frag_tok.clear();
  const size_t n = s.size();
  if (!parse_special && !has_user_defined) {
    if (n) {
      frags.emplace_back(0, n);
      frag_tok.push_back(-1);
    }
    return;
  }
  size_t start = 0, i = 0;
  while (i < n) {
    const auto& cands = special_by_byte[(uint8_t)s[i]];
    int32_t hit = -1;
    for (int32_t id : cands) {
      const TokenType t = type[id];
      if (!parse_special && t != TokenType::USER_DEFINED) continue;
      const std::string& tt = text[id];
      if (tt.size() <= n - i && std::memcmp(s.data() + i, tt.data(), tt.size()) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    if (i > start) {
      frags.emplace_back(start, i);
      frag_tok.push_back(-1);
    }
    frags.emplace_back(i, i + text[hit].size());
    frag_tok.push_back(hit);
    i += text[hit].size();
    start = i;
  }
  if (start < n) {
    frags.emplace_back(start, n);
    frag_tok.push_back(-1);
  }
}

// Byte-level BPE of one pre-tokenized piece s[a, b). Symbols start as the byte tokens and live
// in a doubly linked list over node indices; candidates sit in a min-heap by (rank, position)
// and are checked for staleness when popped.
void Tokenizer::Impl::bpe_word(const std::string& s, size_t a, size_t b, std::vector<int32_t>& out,
                               std::vector<BpeCand>& heap, std::vector<int32_t>& sym,
                               std::vector<int32_t>& prev, std::vector<int32_t>& next,
                               std::string& scratch) const {
  const int32_t n = (int32_t)(b - a);
  if (pre_info.ignore_merges && n > 1) {
    // The whole piece, in byte-level characters, may itself be a token.
    scratch.clear();
    const ByteMap& bm = byte_map();
    for (size_t k = a; k < b; ++k) unicode::append_utf8(scratch, bm.byte_to_cp[(uint8_t)s[k]]);
    const int32_t id = lookup(scratch);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  sym.resize(n);
  prev.resize(n);
  next.resize(n);
  for (int32_t k = 0; k < n; ++k) {
    sym[k] = byte_tok[(uint8_t)s[a + k]];
    prev[k] = k - 1;
    next[k] = k + 1 < n ? k + 1 : -1;
  }
  if (n > 1) {
    heap.clear();
    auto push = [&](int32_t l, int32_t r) {
      if (sym[l] < 0 || sym[r] < 0) return;
      auto it = merges.find(pair_key(sym[l], sym[r]));
      if (it == merges.end()) return;
      heap.push_back(BpeCand{it->second.rank, l, r, sym[l], sym[r]});
      std::push_heap(heap.begin(), heap.end(), std::greater<BpeCand>());
    };
    for (int32_t k = 0; k + 1 < n; ++k) push(k, k + 1);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<BpeCand>());
      const BpeCand c = heap.back();
      heap.pop_back();
      // Stale: the right node was absorbed (left's next moved on) or either symbol changed.
      if (next[c.left] != c.right || sym[c.left] != c.id_l || sym[c.right] != c.id_r) continue;
      sym[c.left] = merges.find(pair_key(c.id_l, c.id_r))->second.id;
      sym[c.right] = -2;  // dead
      next[c.left] = next[c.right];
      if (next[c.left] >= 0) prev[next[c.left]] = c.left;
      if (prev[c.left] >= 0) push(prev[c.left], c.left);
      if (next[c.left] >= 0) push(c.left, next[c.left]);
    }
  }
  // A byte whose character is not in the vocabulary (SmolLM2 lacks U+011D for byte 0x1D) is
  // dropped, as llama.cpp and Hugging Face (BPE without unk_token) both do.
  for (int32_t k = 0; k >= 0; k = next[k])
    if (sym[k] >= 0) out.push_back(sym[k]);
}

// SentencePiece-style merging of one escaped fragment s (already "▁"-escaped, prefix added).
void Tokenizer::Impl::spm_fragment(const std::string& s, std::vector<int32_t>& out) const {
  const uint8_t* p = (const uint8_t*)s.data();
  std::vector<int32_t> start, len, prev, next;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    int k = unicode::decode_one(p + i, s.size() - i, &cp);
    if (k <= 0) k = 1;  // cannot happen: the text was validated
    start.push_back((int32_t)i);
    len.push_back(k);
    i += (size_t)k;
  }
  const int32_t n = (int32_t)start.size();
  if (n == 0) return;
  prev.resize(n);
  next.resize(n);
  for (int32_t k = 0; k < n; ++k) {
    prev[k] = k - 1;
    next[k] = k + 1 < n ? k + 1 : -1;
  }
  std::priority_queue<SpmCand> heap;
  auto push = [&](int32_t l, int32_t r) {
    const int32_t size = len[l] + len[r];
    const int32_t id = lookup(std::string_view(s.data() + start[l], (size_t)size));
    if (id < 0) return;
    heap.push(SpmCand{score[id], l, r, size});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push(k, k + 1);
  while (!heap.empty()) {
    const SpmCand c = heap.top();
    heap.pop();
    if (len[c.left] == 0 || len[c.right] == 0 || next[c.left] != c.right || len[c.left] + len[c.right] != c.size)
      continue;
    len[c.left] = c.size;
    len[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.left] >= 0) prev[next[c.left]] = c.left;
    if (prev[c.left] >= 0) push(prev[c.left], c.left);
    if (next[c.left] >= 0) push(c.left, next[c.left]);
  }
  for (int32_t k = 0; k >= 0; k = next[k]) {
    const int32_t id = lookup(std::string_view(s.data() + start[k], (size_t)len[k]));
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (int32_t j = 0; j < len[k]; ++j) {  // byte fallback
      const int32_t bt = spm_byte_tok[p[start[k] + j]];
      if (bt >= 0) out.push_back(bt);
      else if (unk >= 0) out.push_back(unk);
    }
  }
}

// ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(const TokenizerVocab& vocab) : impl_(new Impl) { impl_->build(vocab); }
Tokenizer::Tokenizer(const GGUFFile& file) : Tokenizer(TokenizerVocab::from_gguf(file)) {}
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(const std::string& s, bool add_special, bool parse_special) const {
  const Impl& m = *impl_;
  const size_t bad = utf8_first_invalid(s);
  if (bad != s.size())
    fail(ErrorCode::invalid_utf8, "text is not valid UTF-8 (first bad byte at offset " + std::to_string(bad) + ")");

  std::vector<int32_t> out;
  out.reserve(s.size() / 3 + 4);
  if (add_special && m.add_bos && m.bos >= 0) out.push_back(m.bos);

  std::vector<std::pair<size_t, size_t>> frags;
  std::vector<int32_t> frag_tok;
  m.partition(s, parse_special, frags, frag_tok);

  if (m.spm) {
    bool prev_special = true;  // a space prefix goes before the text start and after specials
    std::string esc;
    for (size_t f = 0; f < frags.size(); ++f) {
      if (frag_tok[f] >= 0) {
        out.push_back(frag_tok[f]);
        prev_special = true;
        continue;
      }
      esc.clear();
      if (m.add_space_prefix && prev_special) esc += kSpmSpace;
      for (size_t k = frags[f].first; k < frags[f].second; ++k) {
        if (s[k] == ' ') esc += kSpmSpace;
        else esc += s[k];
      }
      m.spm_fragment(esc, out);
      prev_special = false;
    }
  } else {
    std::vector<std::pair<size_t, size_t>> pieces;
    std::vector<BpeCand> heap;
    std::vector<int32_t> sym, prev, next;
    std::string scratch;
    for (size_t f = 0; f < frags.size(); ++f) {
      if (frag_tok[f] >= 0) {
        out.push_back(frag_tok[f]);
        continue;
      }
      pieces.clear();
      pre_tokenize(m.pre_info.type, s, frags[f].first, frags[f].second, pieces);
      for (const auto& pc : pieces) m.bpe_word(s, pc.first, pc.second, out, heap, sym, prev, next, scratch);
    }
  }

  if (add_special && m.add_eos && m.eos >= 0) out.push_back(m.eos);
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool special) const {
  const Impl& m = *impl_;
  if (id < 0 || id >= (int32_t)m.text.size())
    fail(ErrorCode::invalid_arg, "token id " + std::to_string(id) + " is out of range [0, " +
                                     std::to_string(m.text.size()) + ")");
  const TokenType t = m.type[id];
  if (special && (t == TokenType::CONTROL || t == TokenType::UNKNOWN)) return m.text[id];
  return m.piece[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special, bool remove_leading_space) const {
  const Impl& m = *impl_;
  std::string out;
  bool strip = m.spm && m.add_space_prefix && remove_leading_space;
  for (int32_t id : ids) {
    std::string p = token_to_piece(id, special);
    const TokenType t = m.type[id];
    if (strip && t != TokenType::CONTROL && t != TokenType::UNKNOWN) {
      if (!p.empty() && p[0] == ' ') p.erase(0, 1);
      strip = false;
    }
    out += p;
  }
  return out;
}

int32_t Tokenizer::n_vocab() const { return (int32_t)impl_->text.size(); }
int32_t Tokenizer::bos() const { return impl_->bos; }
int32_t Tokenizer::eos() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
bool Tokenizer::add_space_prefix() const { return impl_->add_space_prefix; }
bool Tokenizer::is_eog(int32_t id) const {
  return id >= 0 && id < (int32_t)impl_->is_eog.size() && impl_->is_eog[id];
}
const std::vector<int32_t>& Tokenizer::eog_ids() const { return impl_->eog; }
const std::string& Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= (int32_t)impl_->text.size())
    fail(ErrorCode::invalid_arg, "token id " + std::to_string(id) + " is out of range [0, " +
                                     std::to_string(impl_->text.size()) + ")");
  return impl_->text[id];
}
TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= (int32_t)impl_->type.size())
    fail(ErrorCode::invalid_arg, "token id " + std::to_string(id) + " is out of range [0, " +
                                     std::to_string(impl_->type.size()) + ")");
  return impl_->type[id];
}
const std::string& Tokenizer::model() const { return impl_->model; }
const std::string& Tokenizer::pre() const { return impl_->pre; }

// ---------------------------------------------------------------------------------------------
// Utf8Stream: emit complete characters, keep a valid-but-incomplete tail, replace each maximal
// ill-formed subpart with U+FFFD (the same output as Python's bytes.decode("utf-8", "replace")
// on the concatenated input).

namespace {
const char kReplacement[] = "\xEF\xBF\xBD";

// Appends the decodable prefix of buf to out; returns how many bytes were consumed. With
// final=false a truncated character at the end is left unconsumed.
size_t drain_utf8(const std::string& buf, std::string& out, bool final) {
  const uint8_t* p = (const uint8_t*)buf.data();
  const size_t n = buf.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      out += (char)p[i++];
      continue;
    }
    uint32_t cp;
    const int k = unicode::decode_one(p + i, n - i, &cp);
    if (k > 0) {
      out.append(buf, i, (size_t)k);
      i += (size_t)k;
    } else if (k < 0) {
      out += kReplacement;
      i += (size_t)(-k);
    } else {  // truncated
      if (!final) break;
      out += kReplacement;
      i = n;
    }
  }
  return i;
}
}  // namespace

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  std::string out;
  const size_t used = drain_utf8(pending_, out, false);
  pending_.erase(0, used);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  drain_utf8(pending_, out, true);
  pending_.clear();
  return out;
}

}  // namespace eoq
