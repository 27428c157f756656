#!/usr/bin/env python3
"""Writes a random-weight GGUF file with the Llama architecture, for speed runs.

    python tools/gen_llama_gguf.py --shape llama3.1-8b --type q4_0 -o /tmp/l8b-q4_0.gguf
    python tools/gen_llama_gguf.py --shape llama3.2-1b --type q4_k_m -o /tmp/l1b-q4_k_m.gguf
    python tools/gen_llama_gguf.py --shape tiny --type f16 --layers 1 -o /tmp/tiny.gguf

Shapes (--shape; --layers / --vocab / --ctx override):
  llama3.1-8b  32 layers, n_embd 4096, 32 heads / 8 KV heads (head_dim 128), n_ff 14336,
               vocab 128256, context 131072, rope base 500000, rope_freqs.weight (llama3
               scaling: factor 8, low_freq_factor 1, high_freq_factor 4, original context 8192),
               rms eps 1e-5, separate output.weight.
  llama3.2-1b  16 layers, n_embd 2048, 32 heads / 8 KV heads (head_dim 64), n_ff 8192,
               vocab 128256, context 131072, rope base 500000, rope_freqs.weight (llama3
               scaling with Llama 3.2's factor 32), tied output (no output.weight).
  tiny         2 layers, n_embd 256, 4 heads / 2 KV heads (head_dim 64), n_ff 512, vocab 1024,
               context 2048, rope_freqs.weight as 3.1's, separate output.weight.

Weight types (--type): q4_0, q8_0, f16: every matrix (token_embd and output included) has that
type. q4_k_m: a Q4_K_M-like mix: Q6_K for attn_v, ffn_down and output, Q4_K for every other
matrix and for token_embd (when the output is tied, token_embd *is* the output matrix and is
Q6_K, as llama.cpp's Q4_K_M does). Norm vectors are F32 (1 + 0.02 * noise).

Nothing is quantized: the quant blocks are random bytes whose scale fields are then set so the
dequantized weights have mean ~0 and std ~--std (0.02), which keeps RMSNorm'd activations
bounded through any number of layers:
  Q4_0  x = d * (q - 8):            d f16, random sign, |d| = std / 4.64 * (0.75..1.25)
  Q8_0  x = d * q:                  d f16, random sign, |d| = std / 73.9 * (0.75..1.25)
  Q4_K  x = d*sc*q - dmin*m:        sc = m in 16..31 (6-bit packed), dmin = 7.5 * d, so
                                    x = d * sc * (q - 7.5); d > 0 with a 0.75..1.25 jitter
  Q6_K  x = d * s * (q - 32):       s = +-(8..15) (int8, random sign), d > 0 with a jitter
  F16   a 65536-entry table of N(0, std) values indexed by random 16-bit numbers.
The scale of each block is picked by the random low byte of its own d field, from a table made
from --seed. The data is made in 16 MiB chunks by a thread pool (chunk contents depend only on
--seed, the tensor and the chunk index: the file is byte-identical for any --threads) and
streamed to the file, so memory stays at a few chunks per thread.

Tokenizer: a gpt2-style byte-level BPE ("llama-bpe" pre-tokenizer, as Llama 3) of exactly
`vocab` tokens: ids 0..255 the byte tokens (GPT-2's bytes-to-unicode table, in byte order),
then merged tokens, each made by one merge (letters/digits/punctuation, breadth first: all
2-character tokens, then 3-character ones, ...), then 256 CONTROL tokens in Llama 3's order
(<|begin_of_text|> = bos, <|end_of_text|> = eos, <|eot_id|> = eot, reserved ones; 16 when the
vocabulary is under 1024 tokens). add_bos_token true; a Llama 3 chat template.

Prints the file size and the weight bytes read per decoded token: every matrix once (with a
tied output, token_embd as the output matrix) plus one row of token_embd (F32 norm vectors
listed apart). Writes nothing but the output file. Needs numpy and gguf (>= 0.10).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

# ---------------------------------------------------------------------------------------------
# shapes and types


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx: int
    rope_base: float
    rope_factor: float | None  # llama3 rope scaling factor (rope_freqs.weight), None: none
    tied: bool
    rms_eps: float = 1e-5
    name: str = ""


SHAPES = {
    "llama3.1-8b": Shape(32, 4096, 32, 8, 128, 14336, 128256, 131072, 500000.0, 8.0, False,
                         name="Llama-3.1-8B (random weights)"),
    "llama3.2-1b": Shape(16, 2048, 32, 8, 64, 8192, 128256, 131072, 500000.0, 32.0, True,
                         name="Llama-3.2-1B (random weights)"),
    "tiny": Shape(2, 256, 4, 2, 64, 512, 1024, 2048, 500000.0, 8.0, False,
                  name="tiny Llama (random weights)"),
}

FAMILIES = ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output",
            "ffn_gate", "ffn_up", "ffn_down")

FILE_TYPES = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "f16": gguf.LlamaFileType.MOSTLY_F16, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}


def family_types(wtype: str, tied: bool) -> dict[str, QT]:
    """GGML type of each matrix family for --type."""
    if wtype == "q4_k_m":
        t = {f: QT.Q4_K for f in FAMILIES}
        t["attn_v"] = t["ffn_down"] = t["output"] = QT.Q6_K
        if tied:  # token_embd doubles as the output matrix: llama.cpp gives it the output's type
            t["token_embd"] = QT.Q6_K
        return t
    one = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0, "f16": QT.F16}[wtype]
    return {f: one for f in FAMILIES}


def llama3_rope_factors(head_dim: int, base: float, factor: float, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0, original_ctx: int = 8192) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py writes it for rope_type llama3:
    one divisor per frequency pair (1 for short wavelengths, `factor` for long ones, smooth
    between)."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wavelen = original_ctx / low_freq_factor
    high_wavelen = original_ctx / high_freq_factor
    out = []
    for f in freqs.astype(np.float64):
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# tokenizer

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Llama 3's first special tokens (ids 128000..); the rest are <|reserved_special_token_N|>.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", None, None, "<|finetune_right_pad_id|>",
                   None, "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                   "<|python_tag|>"]


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


def n_specials(n_vocab: int) -> int:
    return 256 if n_vocab >= 1024 else 16


def min_vocab() -> int:
    return 256 + 16 + 1


def build_vocab(n_vocab: int):
    """(tokens, token_types, merges, ids) of a byte-level BPE vocabulary of exactly n_vocab
    tokens; ids maps bos/eos/eot to token ids."""
    if n_vocab < min_vocab():
        raise ValueError(f"vocab must be >= {min_vocab()}, got {n_vocab}")
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    n_special = n_specials(n_vocab)
    n_merges = n_vocab - 256 - n_special
    # right-hand characters, most common English first; words may start with a space (Ġ)
    alpha = list("etaoinshrdlcumwfgypbvkjxqz") + list("ETAOINSHRDLCUMWFGYPBVKJXQZ") \
        + list("0123456789") + list(".,'-")
    known = set(tokens)
    merges: list[str] = []
    level = [b2u[ord(" ")]] + alpha  # the left-hand symbols of the next level
    while len(merges) < n_merges:
        nxt = []
        for left in level:
            for right in alpha:
                s = left + right
                if s in known:
                    continue
                known.add(s)
                tokens.append(s)
                merges.append(f"{left} {right}")
                nxt.append(s)
                if len(merges) == n_merges:
                    break
            if len(merges) == n_merges:
                break
        level = nxt
    types = [1] * len(tokens)
    first = len(tokens)
    reserved = 0
    for i in range(n_special):
        name = LLAMA3_SPECIALS[i] if i < len(LLAMA3_SPECIALS) else None
        if name is None:
            name = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
        tokens.append(name)
        types.append(3)
    assert len(tokens) == n_vocab and len(set(tokens)) == n_vocab
    ids = {"bos": first, "eos": first + 1, "eot": first + 9}
    return tokens, types, merges, ids


# ---------------------------------------------------------------------------------------------
# random quant blocks

CHUNK_BYTES = 1 << 24  # per generation task; fixed, so the output does not depend on --threads


def _block(qt: QT) -> tuple[int, int]:
    return gguf.GGML_QUANT_SIZES[qt]  # (values per block, bytes per block)


def _scale_table(rng: np.random.Generator, rms: float, signed: bool, mant_bits: int = 10) -> np.ndarray:
    """256 f16 scales (as uint16) with root mean square `rms`, a 0.75..1.25 jitter and (signed)
    alternating signs; mantissas rounded to mant_bits bits."""
    mag = rng.uniform(0.75, 1.25, 256)
    mag *= rms / np.sqrt(np.mean(mag * mag))
    m, e = np.frexp(mag)
    mag = np.ldexp(np.round(m * (1 << mant_bits)) / (1 << mant_bits), e)
    if signed:
        mag = np.where(np.arange(256) & 1, -mag, mag)
    return mag.astype(np.float16).view(np.uint16)


class BlockMaker:
    """Per-type scale tables (from the seed) and the in-place block fixers."""

    # mean square of the integer factor multiplying the block scale d
    _MS_Q4_0 = np.mean((np.arange(16) - 8.0) ** 2)                     # 21.5
    _MS_Q8_0 = np.mean(np.arange(-128, 128, dtype=np.float64) ** 2)     # 5461.5
    _MS_Q4_K = np.mean(np.arange(16, 32.0) ** 2) * np.mean((np.arange(16) - 7.5) ** 2)
    _MS_Q6_K = np.mean(np.arange(8, 16.0) ** 2) * np.mean((np.arange(64) - 32.0) ** 2)

    def __init__(self, seed: int, std: float):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CA1E]))
        self.std = std
        self.d_q4_0 = _scale_table(rng, std / math.sqrt(self._MS_Q4_0), signed=True)
        self.d_q8_0 = _scale_table(rng, std / math.sqrt(self._MS_Q8_0), signed=True)
        # Q4_K: d with 6 mantissa bits, so dmin = 7.5 * d is exact in f16
        self.d_q4_k = _scale_table(rng, std / math.sqrt(self._MS_Q4_K), signed=False, mant_bits=6)
        self.dmin_q4_k = (self.d_q4_k.view(np.float16).astype(np.float32) * 7.5).astype(np.float16).view(np.uint16)
        self.d_q6_k = _scale_table(rng, std / math.sqrt(self._MS_Q6_K), signed=False)
        z = rng.standard_normal(65536)
        z = (z - z.mean()) / z.std()
        self.f16_table = (z * std).astype(np.float16)

    def fix(self, qt: QT, raw: np.ndarray) -> np.ndarray:
        """raw: random bytes, a whole number of blocks (F16: of values). Returns the chunk to
        write (in place where possible)."""
        if qt == QT.F16:
            return self.f16_table[raw.view(np.uint16)]
        _, bpb = _block(qt)
        b = raw.reshape(-1, bpb)
        u = b.view(np.uint16)  # every block size here is even and the buffer is 8-aligned
        if qt == QT.Q4_0 or qt == QT.Q8_0:
            tab = self.d_q4_0 if qt == QT.Q4_0 else self.d_q8_0
            u[:, 0] = tab[u[:, 0] & 0xFF]
        elif qt == QT.Q4_K:
            idx = u[:, 0] & 0xFF
            u[:, 0] = self.d_q4_k[idx]
            u[:, 1] = self.dmin_q4_k[idx]
            # 12 scale bytes at 4..15: sc_j = m_j in 16..31 (see scale_min_k4 in kernels/ref/quants.cpp)
            sc = (b[:, 4:12] & 15) + 16
            lo, hi = sc[:, :4], sc[:, 4:]
            top = lo | ((hi >> 4) << 6)
            b[:, 4:8] = top              # sc 0..3 + top bits of sc 4..7
            b[:, 8:12] = top             # m 0..3 + top bits of m 4..7 (m = sc)
            b[:, 12:16] = (hi & 15) | ((hi & 15) << 4)
        elif qt == QT.Q6_K:
            s = b[:, 192:208]
            mag = (s & 7) + 8
            b[:, 192:208] = np.where(s & 0x80, 256 - mag.astype(np.int16), mag).astype(np.uint8)
            u[:, 104] = self.d_q6_k[u[:, 104] & 0xFF]
        else:
            raise ValueError(f"no block maker for {qt.name}")
        return raw


# ---------------------------------------------------------------------------------------------
# tensors


@dataclass
class TensorSpec:
    name: str
    kind: str          # "matrix", "norm", "const"
    qt: QT
    shape: tuple       # numpy order: (rows, cols) / (n,)
    nbytes: int
    const: np.ndarray | None = None


def tensor_specs(s: Shape, types: dict[str, QT]) -> list[TensorSpec]:
    q_dim, kv_dim = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    specs: list[TensorSpec] = []

    def mat(name, fam, rows, cols):
        qt = types[fam]
        blk, bpb = _block(qt)
        if cols % blk:
            raise ValueError(f"{name}: rows of {cols} values are not a multiple of the {qt.name} "
                             f"block size {blk}")
        specs.append(TensorSpec(name, "matrix", qt, (rows, cols), rows * (cols // blk) * bpb))

    def norm(name, n):
        specs.append(TensorSpec(name, "norm", QT.F32, (n,), 4 * n))

    mat("token_embd.weight", "token_embd", s.n_vocab, s.n_embd)
    if s.rope_factor is not None:
        rf = llama3_rope_factors(s.head_dim, s.rope_base, s.rope_factor)
        specs.append(TensorSpec("rope_freqs.weight", "const", QT.F32, rf.shape, rf.nbytes, rf))
    for i in range(s.n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", s.n_embd)
        mat(p + "attn_q.weight", "attn_q", q_dim, s.n_embd)
        mat(p + "attn_k.weight", "attn_k", kv_dim, s.n_embd)
        mat(p + "attn_v.weight", "attn_v", kv_dim, s.n_embd)
        mat(p + "attn_output.weight", "attn_output", s.n_embd, q_dim)
        norm(p + "ffn_norm.weight", s.n_embd)
        mat(p + "ffn_gate.weight", "ffn_gate", s.n_ff, s.n_embd)
        mat(p + "ffn_up.weight", "ffn_up", s.n_ff, s.n_embd)
        mat(p + "ffn_down.weight", "ffn_down", s.n_embd, s.n_ff)
    norm("output_norm.weight", s.n_embd)
    if not s.tied:
        mat("output.weight", "output", s.n_vocab, s.n_embd)
    return specs


def bytes_per_token(specs: list[TensorSpec], tied: bool) -> tuple[int, int]:
    """(matrix bytes read per decoded token, F32 norm/rope bytes): every matrix once (token_embd
    in full only when it is the tied output) plus one token_embd row."""
    by = {t.name: t for t in specs}
    emb = by["token_embd.weight"]
    row = emb.nbytes // emb.shape[0]
    mats = sum(t.nbytes for t in specs if t.kind == "matrix" and (tied or t.name != "token_embd.weight"))
    other = sum(t.nbytes for t in specs if t.kind != "matrix")
    return mats + row, other


def _chunk_tasks(specs: list[TensorSpec]):
    """(tensor index, chunk index, type, random bytes) for every matrix chunk, in file order."""
    for ti, t in enumerate(specs):
        if t.kind != "matrix":
            continue
        if t.qt == QT.F16:
            step = CHUNK_BYTES  # values are 2 bytes; the random 16-bit indexes are as many bytes
        else:
            step = (CHUNK_BYTES // _block(t.qt)[1]) * _block(t.qt)[1]
        for ci, off in enumerate(range(0, t.nbytes, step)):
            yield ti, ci, t.qt, min(step, t.nbytes - off)


def _make_chunk(seed: int, maker: BlockMaker, task) -> np.ndarray:
    ti, ci, qt, nbytes = task
    bitgen = np.random.PCG64(np.random.SeedSequence([seed, ti, ci]))
    raw = bitgen.random_raw((nbytes + 7) // 8).view(np.uint8)[:nbytes]
    return maker.fix(qt, raw)


class _Streamed:
    """What GGUFWriter.write_tensor_data needs of an array (nbytes, tofile): the tensor's bytes,
    written chunk by chunk as the thread pool makes them."""

    def __init__(self, nbytes: int, chunks):
        self.nbytes = nbytes
        self._chunks = chunks

    def tofile(self, fp) -> None:
        n = 0
        for c in self._chunks:
            fp.write(memoryview(np.ascontiguousarray(c).view(np.uint8)))
            n += c.nbytes
        assert n == self.nbytes, (n, self.nbytes)


def generate(path: str, s: Shape, wtype: str, seed: int = 0, std: float = 0.02,
             threads: int | None = None) -> dict:
    types = family_types(wtype, s.tied)
    specs = tensor_specs(s, types)
    tokens, ttypes, merges, ids = build_vocab(s.n_vocab)
    maker = BlockMaker(seed, std)
    norm_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E0E]))

    w = gguf.GGUFWriter(path, "llama")
    w.add_name(s.name or "random llama")
    w.add_file_type(int(FILE_TYPES[wtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    if s.head_dim != s.n_embd // s.n_head:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_rope_freq_base(float(s.rope_base))
    w.add_rope_dimension_count(s.head_dim)
    w.add_vocab_size(s.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["bos"])
    w.add_eos_token_id(ids["eos"])
    w.add_eot_token_id(ids["eot"])
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA3_CHAT_TEMPLATE)

    for t in specs:
        if t.qt in (QT.F32, QT.F16):
            dt = np.float32 if t.qt == QT.F32 else np.float16
            w.add_tensor_info(t.name, t.shape, np.dtype(dt), t.nbytes)
        else:  # byte shape (rows, row bytes), as add_tensor takes raw uint8 blocks
            rows, cols = t.shape
            w.add_tensor_info(t.name, (rows, t.nbytes // rows), np.dtype(np.uint8), t.nbytes, raw_dtype=t.qt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    threads = max(1, threads or os.cpu_count() or 1)
    tasks = _chunk_tasks(specs)
    window = 2 * threads + 2  # chunks in flight (memory: window * 16 MiB, F16 twice)
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()

        def fill():
            while len(pending) < window:
                task = next(tasks, None)
                if task is None:
                    return
                pending.append((task[0], pool.submit(_make_chunk, seed, maker, task)))

        def chunks_of(ti):
            while True:
                fill()
                if not pending or pending[0][0] != ti:
                    return
                yield pending.popleft()[1].result()

        fill()
        for ti, t in enumerate(specs):
            if t.kind == "matrix":
                w.write_tensor_data(_Streamed(t.nbytes, chunks_of(ti)))
            elif t.kind == "norm":
                w.write_tensor_data((1.0 + 0.02 * norm_rng.standard_normal(t.shape[0])).astype(np.float32))
            else:
                w.write_tensor_data(t.const)
        assert not pending
    w.close()

    per_tok, other = bytes_per_token(specs, s.tied)
    return dict(path=path, file_bytes=os.path.getsize(path), bytes_per_token=per_tok,
                norm_bytes=other, n_tensors=len(specs),
                n_params=sum(math.prod(t.shape) for t in specs),
                types=sorted({t.qt.name for t in specs}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=
                                 "See the module docstring (tools/gen_llama_gguf.py) for the block layouts.")
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--type", dest="wtype", choices=list(FILE_TYPES), required=True)
    ap.add_argument("-o", "--output", required=True, help="the GGUF file to write")
    ap.add_argument("--layers", type=int, help="override the number of layers")
    ap.add_argument("--vocab", type=int, help=f"override the vocabulary size (>= {min_vocab()})")
    ap.add_argument("--ctx", type=int, help="override llama.context_length")
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0); same seed, same bytes")
    ap.add_argument("--std", type=float, default=0.02, help="std of the weights (default 0.02)")
    ap.add_argument("--threads", type=int, default=0, help="worker threads (default: all CPUs)")
    a = ap.parse_args(argv)

    s = SHAPES[a.shape]
    if a.layers is not None:
        if a.layers < 1:
            ap.error("--layers must be >= 1")
        s = replace(s, n_layer=a.layers)
    if a.vocab is not None:
        if a.vocab < min_vocab():
            ap.error(f"--vocab must be >= {min_vocab()}")
        s = replace(s, n_vocab=a.vocab)
    if a.ctx is not None:
        if a.ctx < 1:
            ap.error("--ctx must be >= 1")
        s = replace(s, n_ctx=a.ctx)
    if not (a.std > 0 and math.isfinite(a.std)):
        ap.error("--std must be positive")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # -> the clean-up below
    t0 = time.perf_counter()
    try:
        r = generate(a.output, s, a.wtype, seed=a.seed, std=a.std, threads=a.threads or None)
    except BaseException as e:
        if os.path.exists(a.output):  # no half-written file left behind
            os.remove(a.output)
        if isinstance(e, ValueError):
            print(f"gen_llama_gguf: {e}", file=sys.stderr)
            return 2
        raise
    dt = time.perf_counter() - t0
    gb = 1e9
    print(f"wrote {r['path']}: {a.shape} ({s.n_layer} layers, vocab {s.n_vocab}), --type {a.wtype} "
          f"({'/'.join(r['types'])}), {r['n_tensors']} tensors, {r['n_params'] / 1e9:.3f} B params")
    print(f"file size: {r['file_bytes']} bytes ({r['file_bytes'] / gb:.3f} GB, "
          f"{r['file_bytes'] / 2**30:.3f} GiB)")
    print(f"weight bytes per token: {r['bytes_per_token']} ({r['bytes_per_token'] / gb:.4f} GB; "
          f"every matrix once + one token_embd row; F32 norms add {r['norm_bytes']})")
    print(f"time: {dt:.1f} s ({r['file_bytes'] / gb / max(dt, 1e-9):.2f} GB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
