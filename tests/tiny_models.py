"""Tiny random GGUF Llama models for the engine tests.

Contract
--------
``write_tiny_llama(path, weight_type="F32", *, ...) -> TinyModel`` writes a complete, valid GGUF v3
file with architecture ``llama`` and returns a ``TinyModel`` record (path, config, tokenizer facts).

* Weights: every 2-D matrix (``token_embd``, ``blk.N.attn_q/attn_k/attn_v/attn_output``,
  ``blk.N.ffn_gate/ffn_up/ffn_down`` and ``output`` when ``tied=False``) is random with a std of
  roughly ``weight_std`` (0.05) and stored as ``weight_type``: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
  Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K.  ``types`` may override the type per tensor family, e.g.
  ``types={"ffn_down": "Q6_K", "token_embd": "Q8_0"}`` (a Q4_K_M-like mix).  Norm weights
  (``attn_norm``, ``ffn_norm``, ``output_norm``) are F32 around 1.0; ``rope_freqs.weight``
  (F32, head_dim/2 factors between 1 and 8) is written when ``rope_freqs=True``.
  Types that ``gguf.quants.quantize`` supports are quantized from Gaussian weights; the K-quants
  (which it cannot quantize) get random block bytes whose f16 ``d``/``dmin`` fields are set so that
  the dequantized tensor has mean ~0 and std ~``weight_std``.
* Shapes (GGUF order, innermost first): token_embd (n_embd, n_vocab); attn_q (n_embd, n_head*hd);
  attn_k/attn_v (n_embd, n_head_kv*hd); attn_output (n_head*hd, n_embd); ffn_gate/ffn_up
  (n_embd, n_ff); ffn_down (n_ff, n_embd); output (n_embd, n_vocab).  hd = n_embd // n_head.
  Defaults: n_embd 64 / n_ff 128, or 256 / 512 when any tensor uses a K-quant (rows of K-quants
  must be multiples of 256).  No ``output.weight`` when ``tied=True`` (the default).
* Metadata: llama.block_count, context_length (n_ctx), embedding_length, feed_forward_length,
  attention.head_count, attention.head_count_kv, attention.layer_norm_rms_epsilon (1e-5),
  rope.freq_base, rope.dimension_count (= hd), vocab_size.
* Tokenizer (``write_tiny_llama``): ``tokenizer.ggml.model = "gpt2"``, ``pre = "gpt2"``.  Token ids
  0..255 are the byte-level tokens in byte order (token i is byte i through GPT-2's bytes-to-unicode
  table), then one token per merge (``n_merges`` merges learned by byte-level BPE on a short English
  text, pre-split with the gpt2 pattern), then the CONTROL tokens ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``.  token_type: CONTROL (3) for those, NORMAL (1) otherwise.
  bos = ``<|endoftext|>``, eos = ``<|im_end|>``, add_bos_token false, ChatML chat template.
  n_vocab = number of tokens.
* ``write_tiny_llama_spm(...)`` takes the same keyword arguments and writes a SentencePiece-style
  vocabulary instead: ``tokenizer.ggml.model = "llama"``; id 0 ``<unk>`` (UNKNOWN, 2), 1 ``<s>`` and
  2 ``</s>`` (CONTROL, 3), 3..258 ``<0x00>``..``<0xFF>`` (BYTE, 6), then the single characters of the
  training text (with U+2581 ``▁`` standing for a space), then the BPE-merged pieces; scores: merged
  piece of rank r has score -r (earlier merge = higher score), single characters -1000 - index,
  specials and bytes 0.  bos 1, eos 2, unk 0, add_bos_token true, add_eos_token false,
  add_space_prefix true.  Every merged piece is the concatenation of two earlier pieces, so
  score-driven SPM merging reproduces the training segmentation.
* Deterministic: the same arguments (and ``seed``) give byte-identical files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ARCH = "llama"

TRAIN_TEXT = (
    "Once upon a time there was a little robot who lived in a quiet town by the sea. "
    "Every morning the robot walked to the harbour and watched the boats. "
    "The fishermen said hello, and the robot said hello back. "
    "One day a storm came over the water and the boats could not find the way home. "
    "The little robot climbed the old tower and turned on the light, so the boats found the harbour. "
    "The town was happy, and the robot was happy too. This is the end of the story. "
    "What is the capital of France? The capital of France is Paris. "
    "I think that the answer is yes, and that is what they wanted to know."
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GPT2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

FLOAT_TYPES = ("F32", "F16", "BF16")
SMALL_QUANTS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TYPES = FLOAT_TYPES + SMALL_QUANTS + K_QUANTS

# Byte offsets of the f16 super-block scale fields of each K-quant block (QK_K = 256 values):
#   Q2_K  84 B: scales[16] | qs[64] | d | dmin
#   Q3_K 110 B: hmask[32] | qs[64] | scales[12] | d
#   Q4_K 144 B: d | dmin | scales[12] | qs[128]
#   Q5_K 176 B: d | dmin | scales[12] | qh[32] | qs[128]
#   Q6_K 210 B: ql[128] | qh[64] | scales[16] (int8) | d
K_SCALE_OFFSETS = {
    "Q2_K": (80, 82),
    "Q3_K": (108, None),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208, None),
}

TENSOR_FAMILIES = ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output",
                   "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class TinyModel:
    path: str
    weight_type: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    n_vocab: int
    rope_base: float
    tied: bool
    tokenizer_model: str            # "gpt2" or "llama"
    tokens: list[str]
    token_types: list[int]
    merges: list[str] = field(default_factory=list)   # gpt2 only
    scores: list[float] = field(default_factory=list)  # llama (SPM) only
    bos_id: int = -1
    eos_id: int = -1
    special_ids: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)  # tensor family -> GGML type name


# ---------------------------------------------------------------------------------------------
# tokenizer construction

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_GPT2_SPLIT_ASCII = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _learn_merges(words: list[list[str]], n_merges: int, known: set[str]) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair's
    text, for determinism); a pair whose concatenation is already a known symbol is skipped."""
    words = [list(w) for w in words]
    merges: list[tuple[str, str]] = []
    known = set(known)
    while len(merges) < n_merges:
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        cands = [(c, p) for p, c in counts.items() if p[0] + p[1] not in known and c >= 2]
        if not cands:
            break
        best = min(cands, key=lambda cp: (-cp[0], cp[1]))[1]
        merges.append(best)
        known.add(best[0] + best[1])
        for i, w in enumerate(words):
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(w[j] + w[j + 1])
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
    return merges


def gpt2_vocab(n_merges: int = 48, text: str = TRAIN_TEXT):
    """(tokens, token_types, merges, special_ids) for the byte-level BPE vocabulary."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    words = [[b2u[b] for b in piece.encode("utf-8")] for piece in _GPT2_SPLIT_ASCII.findall(text)]
    merges = _learn_merges(words, n_merges, set(tokens))
    tokens += [a + b for a, b in merges]
    types = [1] * len(tokens)
    special_ids = {}
    for s in GPT2_SPECIALS:
        special_ids[s] = len(tokens)
        tokens.append(s)
        types.append(3)
    return tokens, types, [f"{a} {b}" for a, b in merges], special_ids


def spm_vocab(n_merges: int = 48, text: str = TRAIN_TEXT):
    """(tokens, token_types, scores) for the SentencePiece-style vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    norm = ("▁" + text.replace(" ", "▁"))
    # words: each starts at a "▁"
    words = [list(m) for m in re.findall(r"▁[^▁]*", norm)]
    chars = sorted(set(norm))
    for i, c in enumerate(chars):
        tokens.append(c)
        types.append(1)
        scores.append(-1000.0 - i)
    merges = _learn_merges(words, n_merges, set(chars))
    for r, (a, b) in enumerate(merges):
        tokens.append(a + b)
        types.append(1)
        scores.append(-float(r))
    return tokens, types, scores


# ---------------------------------------------------------------------------------------------
# weights

def _type_name(t) -> str:
    name = t.name if isinstance(t, QT) else str(t).upper()
    if name not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported weight type {t!r}; supported: {', '.join(SUPPORTED_TYPES)}")
    return name


def _random_kquant(rng: np.random.Generator, rows: int, cols: int, tname: str, std: float) -> np.ndarray:
    """Random K-quant block bytes (rows, cols/256*block_bytes) whose dequantized values have mean
    ~0 and std ~std. Dequantized value = d * A + dmin * B, with A and B fixed by the other bytes;
    we measure A (d=1, dmin=0) and B (d=0, dmin=1), choose dmin/d to cancel the mean, then scale
    d (with a per-block jitter in [0.5, 1.5]) to the target std."""
    qt = QT[tname]
    block, nbytes = gguf.GGML_QUANT_SIZES[qt]
    assert cols % block == 0, f"{tname} rows need a multiple of {block} values, got {cols}"
    nb = cols // block
    raw = rng.integers(0, 256, size=(rows, nb, nbytes), dtype=np.uint8)
    d_off, m_off = K_SCALE_OFFSETS[tname]

    def put(arr, off, val):
        arr[:, :, off:off + 2] = np.ascontiguousarray(
            np.broadcast_to(np.asarray(val, dtype=np.float16), (rows, nb))).view(np.uint8).reshape(rows, nb, 2)

    def deq(arr):
        return gguf.quants.dequantize(arr.reshape(rows, nb * nbytes), qt).astype(np.float64)

    put(raw, d_off, 1.0)
    if m_off is not None:
        put(raw, m_off, 0.0)
    a = deq(raw)
    ratio = 0.0
    if m_off is not None:
        put(raw, d_off, 0.0)
        put(raw, m_off, 1.0)
        b = deq(raw)
        ratio = -a.mean() / b.mean() if b.mean() != 0 else 0.0
        a = a + ratio * b
    base = std / max(a.std(), 1e-12)
    jitter = rng.uniform(0.5, 1.5, size=(rows, nb))
    put(raw, d_off, base * jitter)
    if m_off is not None:
        put(raw, m_off, base * ratio * jitter)
    return raw.reshape(rows, nb * nbytes)


def make_weight(rng: np.random.Generator, rows: int, cols: int, tname: str, std: float):
    """(numpy array, raw_dtype or None) for GGUFWriter.add_tensor; logical shape (rows, cols),
    i.e. GGUF shape (cols, rows)."""
    if tname in K_QUANTS:
        return _random_kquant(rng, rows, cols, tname, std), QT[tname]
    w = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
    if tname == "F32":
        return w, None
    if tname == "F16":
        return w.astype(np.float16), None
    return gguf.quants.quantize(w, QT[tname]), QT[tname]


def _rope_factors(n: int) -> np.ndarray:
    """Llama-3.1-like per-frequency divisors: 1 for the fastest quarter, 8 for the slowest
    quarter, a smooth ramp between."""
    f = np.ones(n, dtype=np.float32)
    lo, hi = n // 4, n - n // 4
    f[hi:] = 8.0
    if hi > lo:
        f[lo:hi] = np.geomspace(1.0, 8.0, hi - lo + 2)[1:-1]
    return f


# ---------------------------------------------------------------------------------------------
# writers

def _write(path, weight_type, tokenizer, *, n_layer=2, n_embd=None, n_head=4, n_head_kv=2,
           n_ff=None, n_ctx=256, rope_base=10000.0, rope_freqs=False, tied=True, seed=0,
           vocab="bytes", n_merges=48, types=None, weight_std=0.05, norm_eps=1e-5) -> TinyModel:
    if vocab != "bytes":
        raise ValueError(f"unknown vocab {vocab!r} (only 'bytes')")
    wt = _type_name(weight_type)
    fam_types = {f: wt for f in TENSOR_FAMILIES}
    for k, v in (types or {}).items():
        if k not in fam_types:
            raise ValueError(f"unknown tensor family {k!r}; known: {TENSOR_FAMILIES}")
        fam_types[k] = _type_name(v)
    any_k = any(t in K_QUANTS for t in fam_types.values())
    if n_embd is None:
        n_embd = 256 if any_k else 64
    if n_ff is None:
        n_ff = 512 if any_k else 128
    assert n_embd % n_head == 0 and n_head % n_head_kv == 0
    hd = n_embd // n_head
    assert hd % 2 == 0

    special_ids: dict[str, int] = {}
    merges: list[str] = []
    scores: list[float] = []
    if tokenizer == "gpt2":
        tokens, ttypes, merges, special_ids = gpt2_vocab(n_merges)
        bos, eos = special_ids["<|endoftext|>"], special_ids["<|im_end|>"]
    else:
        tokens, ttypes, scores = spm_vocab(n_merges)
        special_ids = {"<unk>": 0, "<s>": 1, "</s>": 2}
        bos, eos = 1, 2
    n_vocab = len(tokens)

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_name("tiny-random-llama")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(norm_eps)
    w.add_rope_freq_base(float(rope_base))
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model(tokenizer)
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if tokenizer == "gpt2":
        w.add_tokenizer_pre("gpt2")
        w.add_token_merges(merges)
        w.add_add_bos_token(False)
        w.add_chat_template(CHATML_TEMPLATE)
    else:
        w.add_tokenizer_pre("default")
        w.add_token_scores(scores)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(True)

    def add_matrix(name, family, rows, cols):
        arr, raw = make_weight(rng, rows, cols, fam_types[family], weight_std)
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)

    def add_norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    add_matrix("token_embd.weight", "token_embd", n_vocab, n_embd)
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", _rope_factors(hd // 2))
    for i in range(n_layer):
        p = f"blk.{i}."
        add_norm(p + "attn_norm.weight", n_embd)
        add_matrix(p + "attn_q.weight", "attn_q", n_head * hd, n_embd)
        add_matrix(p + "attn_k.weight", "attn_k", n_head_kv * hd, n_embd)
        add_matrix(p + "attn_v.weight", "attn_v", n_head_kv * hd, n_embd)
        add_matrix(p + "attn_output.weight", "attn_output", n_embd, n_head * hd)
        add_norm(p + "ffn_norm.weight", n_embd)
        add_matrix(p + "ffn_gate.weight", "ffn_gate", n_ff, n_embd)
        add_matrix(p + "ffn_up.weight", "ffn_up", n_ff, n_embd)
        add_matrix(p + "ffn_down.weight", "ffn_down", n_embd, n_ff)
    add_norm("output_norm.weight", n_embd)
    if not tied:
        add_matrix("output.weight", "output", n_vocab, n_embd)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    return TinyModel(path=str(path), weight_type=wt, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                     n_head_kv=n_head_kv, head_dim=hd, n_ff=n_ff, n_ctx=n_ctx, n_vocab=n_vocab,
                     rope_base=float(rope_base), tied=tied, tokenizer_model=tokenizer,
                     tokens=tokens, token_types=ttypes, merges=merges, scores=scores, bos_id=bos,
                     eos_id=eos, special_ids=special_ids, types=fam_types)


def write_tiny_llama(path, weight_type="F32", *, n_layer=2, n_embd=None, n_head=4, n_head_kv=2,
                     n_ff=None, n_ctx=256, rope_base=10000.0, rope_freqs=False, tied=True, seed=0,
                     vocab="bytes", **kw) -> TinyModel:
    """Tiny random llama GGUF with a byte-level BPE (gpt2) tokenizer; see the module docstring.
    Extra keywords: n_merges=48, types=None (per-family type overrides), weight_std=0.05,
    norm_eps=1e-5."""
    return _write(Path(path), weight_type, "gpt2", n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                  n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=n_ctx, rope_base=rope_base,
                  rope_freqs=rope_freqs, tied=tied, seed=seed, vocab=vocab, **kw)


def write_tiny_llama_spm(path, weight_type="F32", *, n_layer=2, n_embd=None, n_head=4, n_head_kv=2,
                         n_ff=None, n_ctx=256, rope_base=10000.0, rope_freqs=False, tied=True,
                         seed=0, vocab="bytes", **kw) -> TinyModel:
    """Tiny random llama GGUF with a SentencePiece-style (llama) tokenizer, add_bos_token true;
    see the module docstring."""
    return _write(Path(path), weight_type, "llama", n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                  n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=n_ctx, rope_base=rope_base,
                  rope_freqs=rope_freqs, tied=tied, seed=seed, vocab=vocab, **kw)
