"""Tokenizer tests against an independent oracle: the Hugging Face `tokenizers` package.

(a) SmolLM2 (byte-level BPE, pre "smollm"): an HF tokenizer is built from the GGUF's own vocab
    and merges with the pre-tokenizer SmolLM2 publishes (Digits(individual) + ByteLevel regex);
    ids must be identical on hard strings and on all of wikitext-2; decode(encode(x)) == x.
(b) Pre-tokenizer scanners against HF Split(Regex(pattern), "isolated") on hard and random text.
(c) SentencePiece "llama" model: a small GGUF written with gguf.GGUFWriter, checked against an
    HF BPE with byte_fallback whose merges are derived from the scores.
(d) Utf8Stream never emits part of a character; its output equals Python's decode("replace").
(e) Bad input: invalid UTF-8, unknown pre-tokenizer, inconsistent metadata.
"""
import random
import time

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers  # noqa: E402

from eoq import _core  # noqa: E402

# Patterns exactly as in ../shared/spec/engine.md section 4 (the models' tokenizer.json files).
PAT_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PAT_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PAT_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
              r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
              r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

HARD = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you?",
    "  leading and trailing  ",
    "trailing spaces   ",
    "\n\n\n",
    "a\n\nb\n \n  c",
    "\r\n\r\nline\r\n",
    "\tdef f(x):\n\t\treturn x  +  1\n\n\n    pass  \t\n",
    "if (a<b && c>=d) { x[i] = y->z; }  // comment",
    "1234567 and 12 345 6789.01 3.14159e-10",
    "I'm don't WE'LL you're they've she'd it's 'S 'T 'Re 'vE 'M 'Ll 'D",
    "'s's 'tis ''' ' s",
    "rock 'n' roll's",
    "Ünïcödé façade naïve Ærøskøbing Straße",
    "Ελληνικά κείμενα ΚΕΦΑΛΑΙΑ",
    "Русский текст, ЗАГЛАВНЫЕ и строчные",
    "العربية نص ١٢٣",
    "עברית טקסט",
    "हिन्दी पाठ ०१२३",
    "中文文本，标点符号。日本語のテキスト、カタカナ",
    "한국어 텍스트",
    "emoji 😀👍🏽🇫🇷 👨‍👩‍👧 ❤️ ok",
    "math ∑ ∫ √ ≤ ≥ ≠ ∞ ½ ² Ⅻ",
    "nbsp\u00a0here and\u3000ideographic\u2009thin",
    "e\u0301 combining a\u0308 marks \u20dd",
    "ǅungla ǈ Lt letters ʰmodifier 々",
    "long ſ 'ſ and Kelvin \u212a x'ſam",
    "𝐀𝐁𝐂 math bold 𝟎𝟏𝟐 and 𐐀𐐨 Deseret",
    "path/to/file.txt and http://example.com/a?b=c",
    "!!!???...,,,;;;:::",
    "ALLCAPS lowercase MixedCase camelCaseWord XMLHttpRequest",
    "x" * 300,
    " " * 50 + "x",
    "\x0b\x0c\x1c\x1d\x85 odd spaces",
]

SPECIAL_STRINGS = [
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "<|im_start|><|im_start|>x",
    "a <|im_end|> b",
    "<|im_star|> not special",
    "<repo_name>name<file_sep>code",
]


# ---------------------------------------------------------------------------------------------
# helpers

def _gguf_tokenizer_fields(path):
    r = gguf.GGUFReader(path)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    return tokens, types, merges


def _hf_smollm(tokens, types, merges, with_specials):
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    if with_specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == 3])
    return tok


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return _core.Tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def smol_fields(smollm2_path):
    return _gguf_tokenizer_fields(smollm2_path)


@pytest.fixture(scope="module")
def hf_plain(smol_fields):
    return _hf_smollm(*smol_fields, with_specials=False)


@pytest.fixture(scope="module")
def hf_special(smol_fields):
    return _hf_smollm(*smol_fields, with_specials=True)


# ---------------------------------------------------------------------------------------------
# (a) SmolLM2 against HF

def test_smollm2_metadata(smol, smol_fields):
    tokens, types, _ = smol_fields
    assert smol.model == "gpt2" and smol.pre == "smollm"
    assert smol.n_vocab == len(tokens) == 49152
    assert smol.bos == 1 and smol.eos == 2
    assert smol.add_bos is False  # tokenizer.ggml.add_bos_token = false in this file
    # EOG: eos <|im_end|> and <|endoftext|> (by text).
    assert smol.eog_ids == [0, 2]
    assert smol.is_eog(2) and smol.is_eog(0) and not smol.is_eog(1) and not smol.is_eog(-5)
    assert smol.token_text(2) == b"<|im_end|>"
    assert smol.token_text(100) == tokens[100].encode()


@pytest.mark.parametrize("text", HARD)
def test_smollm2_hard_strings(smol, hf_plain, smol_fields, text):
    want = hf_plain.encode(text, add_special_tokens=False).ids
    assert smol.encode(text, add_special=False) == want
    assert smol.encode(text) == want  # add_bos_token is false: nothing added
    # Bytes whose byte-level character is missing from the vocabulary (SmolLM2 lacks a few
    # control bytes, e.g. 0x1D) are dropped by HF and llama.cpp alike: no round trip for those.
    if not set(text.encode("utf-8")) & _missing_bytes(smol_fields[0]):
        assert smol.decode(want) == text.encode("utf-8")


def _missing_bytes(tokens):
    # GPT-2 byte -> character table, written out independently of eoq.
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    vocab = set(tokens)
    return {b for b in range(256) if table[b] not in vocab}


def test_smollm2_missing_bytes_are_dropped(smol, smol_fields, hf_plain):
    missing = _missing_bytes(smol_fields[0])
    assert 0x1D in missing
    text = "a\x1db"
    assert smol.encode(text) == hf_plain.encode(text, add_special_tokens=False).ids
    assert smol.decode(smol.encode(text)) == b"ab"


@pytest.mark.parametrize("text", SPECIAL_STRINGS + HARD[:8])
def test_smollm2_special_tokens(smol, hf_plain, hf_special, text):
    # parse_special=True: control tokens are single ids, as HF's added special tokens.
    assert smol.encode(text, add_special=False, parse_special=True) == \
        hf_special.encode(text, add_special_tokens=False).ids
    # parse_special=False: their text is ordinary text.
    assert smol.encode(text, add_special=False, parse_special=False) == \
        hf_plain.encode(text, add_special_tokens=False).ids


def test_smollm2_special_rendering(smol):
    ids = smol.encode("<|im_start|>hi<|im_end|>", add_special=False, parse_special=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert smol.token_to_piece(1) == b""
    assert smol.token_to_piece(1, special=True) == b"<|im_start|>"
    assert smol.decode(ids) == b"hi"
    assert smol.decode(ids, special=True) == b"<|im_start|>hi<|im_end|>"


def test_smollm2_wikitext_identical(smol, hf_plain, wikitext):
    # Whole file at once.
    want = hf_plain.encode(wikitext, add_special_tokens=False).ids
    got = smol.encode(wikitext, add_special=False)
    if got != want:
        i = next(k for k in range(min(len(got), len(want))) if got[k] != want[k])
        pytest.fail(f"first difference at token {i}: got {got[i-3:i+3]} want {want[i-3:i+3]}")
    # Line by line and paragraph by paragraph (different text ends for the lookahead).
    lines = wikitext.split("\n")
    want_lines = [e.ids for e in hf_plain.encode_batch(lines, add_special_tokens=False)]
    assert [smol.encode(s, add_special=False) for s in lines] == want_lines
    paras = wikitext.split("\n \n")
    want_paras = [e.ids for e in hf_plain.encode_batch(paras, add_special_tokens=False)]
    assert [smol.encode(s, add_special=False) for s in paras] == want_paras


def test_smollm2_wikitext_round_trip_and_speed(smol, wikitext):
    smol.encode(wikitext[:10000])  # warm up (category tables)
    t0 = time.perf_counter()
    ids = smol.encode(wikitext, add_special=False)
    dt = time.perf_counter() - t0
    assert smol.decode(ids) == wikitext.encode("utf-8")
    assert b"".join(smol.token_to_piece(i) for i in ids[:5000]) == smol.decode(ids[:5000])
    print(f"wikitext-2 test: {len(wikitext.encode())} bytes -> {len(ids)} tokens in {dt:.3f} s")
    assert dt < 2.0, f"encoding wikitext-2 took {dt:.2f} s"


# ---------------------------------------------------------------------------------------------
# (b) pre-tokenizer scanners against HF Split(Regex(...), "isolated")

def _hf_split(pattern):
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


HF_PRE = {
    "gpt2": lambda: _hf_split(PAT_GPT2),
    "llama-bpe": lambda: _hf_split(PAT_LLAMA3),
    "tekken": lambda: _hf_split(PAT_TEKKEN),
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               _hf_split(PAT_GPT2)]),
}

# Atoms the random strings are drawn from: letters of many scripts and cases (Lu Ll Lt Lm Lo),
# marks (Mn Mc Me), numbers (Nd Nl No), punctuation and symbols, every kind of whitespace the
# patterns distinguish, apostrophes and contraction-like pieces, astral characters.
ATOMS = (
    list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("0123456789")
    + list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~")
    + [" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0b", "\x0c", "\x85",
       "\u00a0", "\u3000", "\u2009", "\u2028", "\x1c", "\x1f"]
    + ["'", "'", "'s", "'S", "'t", "'re", "'RE", "'ve", "'Ve", "'m", "'ll", "'LL", "'d", "'D", "ſ", "\u2019"]
    + list("éÉüÜßøÆçñ") + list("αβγΔΣΩ") + list("жЖщЩя") + list("مرحبا") + list("שלום")
    + list("हिन्दीक") + list("中文字日本") + list("ひらがなカタ") + list("한국어")
    + ["\u01c5", "\u01c8", "\u1f88", "\u02b0", "\u02c6", "\u3005", "\u0640"]       # Lt, Lm
    + ["\u0301", "\u0308", "\u093f", "\u0903", "\u20dd", "\u0489"]                 # Mn, Mc, Me
    + ["\u00b2", "\u00bd", "\u2164", "\u0663", "\u0967", "\u2460", "\u3007"]       # No, Nl, Nd
    + ["€", "©", "™", "∑", "≤", "→", "★", "♪", "—", "…", "«", "»", "¿", "¡", "·"]
    + ["😀", "👍", "🏽", "\u200d", "🇫", "🇷", "\ufe0f", "𝐀", "𝐚", "𝟎", "𐐀", "𐐨", "𠀀"]
)


def _random_strings(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 24)
        out.append("".join(rng.choice(ATOMS) for _ in range(k)))
    return out


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe", "tekken"])
def test_pre_tokenizer_hard(pre):
    hf = HF_PRE[pre]()
    for text in HARD + SPECIAL_STRINGS:
        want = [p for p, _ in hf.pre_tokenize_str(text)]
        assert _core.pre_tokenize(pre, text) == want, repr(text)


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe", "tekken"])
def test_pre_tokenizer_random(pre):
    hf = HF_PRE[pre]()
    bad = []
    seed = {"gpt2": 1, "smollm": 2, "llama-bpe": 3, "tekken": 4}[pre]
    for text in _random_strings(4000, seed=seed):
        want = [p for p, _ in hf.pre_tokenize_str(text)]
        got = _core.pre_tokenize(pre, text)
        if got != want:
            bad.append((text, got, want))
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


def test_pre_tokenizer_aliases_and_unknown():
    s = "Hello WORLD'S 12345"
    assert _core.pre_tokenize("llama3", s) == _core.pre_tokenize("llama-bpe", s)
    assert _core.pre_tokenize("llama-v3", s) == _core.pre_tokenize("llama-bpe", s)
    assert _core.pre_tokenize("default", s) == _core.pre_tokenize("gpt2", s)
    for name in ["qwen2", "deepseek-llm", "no-such-pre"]:
        with pytest.raises(_core.EoqError) as ei:
            _core.pre_tokenize(name, s)
        assert ei.value.code == "unsupported" and name in str(ei.value)


# ---------------------------------------------------------------------------------------------
# (c) SentencePiece-style "llama" model
#
# llama.cpp (and SentencePiece BPE) merge the adjacent pair whose concatenation is a vocabulary
# piece with the highest score; HF's BPE merges the pair with the lowest rank in its merge list.
# They agree when (1) every multi-character piece has exactly one split into two pieces of the
# vocabulary, (2) the merge list is ordered by the score of the merged piece, (3) scores are
# distinct, and (4) every character of every piece is itself a piece. Real SPM vocabularies
# break (1) and (3) in places (e.g. "abc" = "ab"+"c" = "a"+"bc"), where HF's converter order and
# score order can pick different pairs; that divergence is real and not tested here. The
# vocabulary below is built from an explicit merge list and asserts (1)-(4).

SP = "\u2581"
SPM_CHARS = list(SP + "abcdehlnorstwxyéü中文") + ["\n"]
SPM_MERGES = [  # in priority order (first = highest score)
    (SP, "t"), ("h", "e"), (SP + "t", "he"), ("l", "l"), ("he", "ll"), ("o", SP),
    ("hell", "o"), (SP, "hello"), ("o", "r"), ("w", "or"), ("l", "d"), ("wor", "ld"),
    (SP, "world"), ("c", "a"), ("ca", "t"), (SP, "cat"), ("s", SP), ("a", "a"), ("aa", "aa"),
    ("中", "文"), (SP, "中文"), ("d", "é"), ("dé", "t"), (SP, SP), (SP + SP, SP + SP),
    ("n", "e"), ("x", "y"), ("ü", "b"), ("\n", "\n"),
]


def _spm_vocab():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    pieces = list(SPM_CHARS)
    for a, b in SPM_MERGES:
        assert a in pieces and b in pieces, (a, b)
        assert a + b not in pieces, a + b
        pieces.append(a + b)
    ps = set(pieces)
    for p in pieces:  # (1) and (4)
        splits = [(p[:k], p[k:]) for k in range(1, len(p)) if p[:k] in ps and p[k:] in ps]
        assert len(splits) == (0 if len(p) == 1 else 1), (p, splits)
        assert all(c in ps for c in p)
    n_merges = len(SPM_MERGES)
    for i, p in enumerate(pieces):
        tokens.append(p)
        # merged pieces: -1, -2, ... by priority; single characters below all of them (3)
        scores.append(-1.0 - (i - len(SPM_CHARS)) if i >= len(SPM_CHARS) else -1000.0 - i)
        types.append(1)
    assert len(set(scores[259 + len(SPM_CHARS):])) == n_merges
    return tokens, scores, types


def _write_gguf(path, model, tokens, types=None, scores=None, merges=None, pre=None, **kv):
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if types is not None:
        w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    for k, v in kv.items():
        getattr(w, "add_" + k)(v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    tokens, scores, types = _spm_vocab()
    return _write_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", "llama", tokens, types, scores,
                       bos_token_id=1, eos_token_id=2, unk_token_id=0)


@pytest.fixture(scope="module")
def hf_spm():
    tokens, scores, types = _spm_vocab()
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=list(SPM_MERGES), unk_token="<unk>",
                                          byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])
    tok.add_special_tokens([AddedToken("<s>", special=True, normalized=False),
                            AddedToken("</s>", special=True, normalized=False)])
    return tok


SPM_STRINGS = [
    "hello world", "the cat", "the cats", "hello", " hello", "  hello  world  ", "aaaaaaa",
    "中文 text", "détail", "xy ne übung", "Ωmega ☃ and 😀", "tab\there", "line\n\nbreak", "\n",
    "HELLO", "a", "",
]


def test_spm_against_hf(spm_path, hf_spm):
    t = _core.Tokenizer(spm_path)
    assert t.model == "llama" and t.add_bos and not t.add_eos and t.add_space_prefix
    assert t.bos == 1 and t.eos == 2 and t.eog_ids == [2]
    for text in SPM_STRINGS:
        want = hf_spm.encode(text, add_special_tokens=False).ids if text else []
        assert t.encode(text, add_special=False) == want, repr(text)
        assert t.encode(text) == [1] + want
        # decode undoes the space prefix; unknown characters come back from their byte tokens
        assert t.decode(want) == text.encode("utf-8"), repr(text)
        assert t.decode([1] + want) == text.encode("utf-8")


def test_spm_byte_fallback_and_specials(spm_path, hf_spm):
    t = _core.Tokenizer(spm_path)
    ids = t.encode("Ω", add_special=False)  # U+03A9 = CE A9, not a piece
    assert [t.token_text(i) for i in ids] == [SP.encode(), b"<0xCE>", b"<0xA9>"]
    assert t.token_to_piece(ids[1]) == b"\xce"
    text = "hello</s>world<s>the"
    want = hf_spm.encode(text, add_special_tokens=False).ids
    assert t.encode(text, add_special=False, parse_special=True) == want
    assert t.decode(want, special=True) == b"hello</s> world<s> the"


def _byte_chars():
    """GPT-2 bytes -> characters, in byte order (written independently of eoq)."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


@pytest.mark.parametrize("pre,pattern,ignore_merges,default_bos", [
    ("llama-bpe", PAT_LLAMA3, True, True),
    ("dbrx", PAT_LLAMA3, False, False),
    ("tekken", PAT_TEKKEN, True, True),
    ("gpt2", PAT_GPT2, False, False),
])
def test_bpe_ignore_merges_and_bos_default(tmp_path, pre, pattern, ignore_merges, default_bos):
    # Every byte has its character token; "Hello" and "abc" are tokens no merge produces, so
    # they appear only where ignore_merges (Llama 3, Tekken) takes a whole piece from the vocab.
    G = "\u0120"
    merges = [("b", "c"), ("a", "b"), (G, "w"), ("o", "r"), (G + "w", "or"), ("l", "d"),
              (G + "wor", "ld"), ("l", "l"), ("e", "ll")]
    tokens = ["<|begin_of_text|>", "<|end_of_text|>"] + _byte_chars()
    for a, b in merges:
        tokens.append(a + b)
    tokens += ["Hello", "abc"]
    types = [3, 3] + [1] * (len(tokens) - 2)
    path = _write_gguf(tmp_path / "bpe.gguf", "gpt2", tokens, types,
                       merges=[f"{a} {b}" for a, b in merges], pre=pre, bos_token_id=0, eos_token_id=1)
    t = _core.Tokenizer(path)
    assert t.add_bos is default_bos
    hf = tokenizers.Tokenizer(models.BPE(vocab={x: i for i, x in enumerate(tokens)}, merges=merges,
                                         ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        _hf_split(pattern), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    for text in ["Hello world", "Hello", "HelloHello abc abcabc", "hello world's Hellow", "ab bc abc",
                 "ÀÉ 😀 Hello\n\nworld"]:
        want = hf.encode(text, add_special_tokens=False).ids
        assert t.encode(text, add_special=False) == want, text
        assert t.encode(text) == ([0] if default_bos else []) + want
        assert t.decode(want) == text.encode()
    assert (t.encode("Hello", add_special=False) == [tokens.index("Hello")]) is ignore_merges
    # The GGUF flag overrides the default.
    path2 = _write_gguf(tmp_path / "bpe2.gguf", "gpt2", tokens, types,
                        merges=[f"{a} {b}" for a, b in merges], pre=pre, bos_token_id=0,
                        add_bos_token=not default_bos)
    assert _core.Tokenizer(path2).add_bos is (not default_bos)


# ---------------------------------------------------------------------------------------------
# (d) Utf8Stream

def test_utf8_stream_token_by_token(smol):
    text = "emoji 😀👍🏽🇫🇷 👨‍👩‍👧 中文文本，日本語のテキスト 한국어 ∑∫ ok"
    ids = smol.encode(text, add_special=False)
    assert any(not _valid(smol.token_to_piece(i)) for i in ids), "test needs split characters"
    s = _core.Utf8Stream()
    acc = ""
    for i in ids:
        out = s.push(smol.token_to_piece(i))
        assert "\ufffd" not in out
        acc += out
        assert text.startswith(acc)
    acc += s.flush()
    assert acc == text


def _valid(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_utf8_stream_matches_python_replace():
    rng = random.Random(7)
    pool = [b"a", b"\xc3\xa9", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80", b"\x80", b"\xff", b"\xc0\xaf",
            b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f", b"\xe4", b"\xc3"]
    for _ in range(2000):
        data = b"".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        s = _core.Utf8Stream()
        out, k = "", 0
        while k < len(data):
            step = rng.randint(1, 4)
            out += s.push(data[k:k + step])
            k += step
        out += s.flush()
        assert out == data.decode("utf-8", "replace"), data
        assert _core.utf8_valid(data) == _valid(data), data


# ---------------------------------------------------------------------------------------------
# (e) bad input

def test_invalid_utf8_raises(smol):
    for bad in [b"abc\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"ok \xe4\xb8"]:
        with pytest.raises(_core.EoqError) as ei:
            smol.encode(bad)
        assert ei.value.code == "invalid_utf8"
    with pytest.raises(_core.EoqError) as ei:
        smol.encode("lone \ud800 surrogate")
    assert ei.value.code == "invalid_utf8"
    assert smol.encode(b"bytes are fine") == smol.encode("bytes are fine")
    with pytest.raises(_core.EoqError) as ei:
        smol.token_to_piece(smol.n_vocab)
    assert ei.value.code == "invalid_arg"


def _tiny_bpe():
    tokens = ["<|endoftext|>", "a", "b", "c", "ab", "abc", "\u0120", "\u0120a"]
    merges = ["a b", "ab c", "\u0120 a"]
    return tokens, [3, 1, 1, 1, 1, 1, 1, 1], merges


def test_bad_metadata(tmp_path):
    tokens, types, merges = _tiny_bpe()
    ok = _write_gguf(tmp_path / "ok.gguf", "gpt2", tokens, types, merges=merges, pre="gpt2")
    t = _core.Tokenizer(ok)
    # pieces "abc", " ab", " a": "\u0120ab" is not a token, so " ab" stays "\u0120" + "ab"
    assert t.encode("abc ab a") == [5, 6, 4, 7]
    cases = {
        "unknown_pre": (dict(pre="qwen2"), "unsupported", "qwen2"),
        "unknown_model": (dict(model="wordpiece"), "unsupported", "wordpiece"),
        "merge_unknown": (dict(merges=merges + ["a zz"]), "format", "zz"),
        "merge_result": (dict(merges=merges + ["b c"]), "format", "bc"),
        "merge_syntax": (dict(merges=merges + ["abc"]), "format", "merge 3"),
        "types_len": (dict(types=types[:-1]), "format", "token_type"),
        "bos_range": (dict(bos_token_id=99), "format", "bos_token_id"),
        "duplicate": (dict(tokens=tokens + ["ab"], types=types + [1]), "format", "twice"),
    }
    for name, (over, code, needle) in cases.items():
        args = dict(model="gpt2", tokens=tokens, types=types, merges=merges, pre="gpt2")
        args.update(over)
        p = _write_gguf(tmp_path / f"{name}.gguf", args.pop("model"), args.pop("tokens"), **args)
        with pytest.raises(_core.EoqError) as ei:
            _core.Tokenizer(p)
        assert ei.value.code == code, (name, str(ei.value))
        assert needle in str(ei.value), (name, str(ei.value))
