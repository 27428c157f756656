"""Independent NumPy reference of the GGUF `llama` forward pass (the oracle the engine is tested
against).  It shares no code with eoq: weights come from gguf.GGUFReader and are dequantized by
gguf.quants.dequantize.

Precision: weights are dequantized once to float32 (exactly the values the GGUF encodes).  The
arithmetic runs in ``dtype`` (default float64: activations, matmuls, RoPE, softmax all in float64,
weights upcast per matmul).  ``dtype=np.float32`` runs everything in float32 (BLAS sgemm), which
is ~5x faster on the real model and what the SmolLM2 tests use.

Conventions (spec/engine.md section 4):
* GGUF 2-D weight [ne0, ne1] = ne1 rows of ne0 values -> numpy (rows=out, cols=in); y = x @ W.T.
* RoPE "normal" mode: rotate adjacent pairs (x[2i], x[2i+1]) of each head by
  theta_i = pos * base^(-2i/n_rot) / freq_factor[i]  (freq_factor from rope_freqs.weight, else 1);
  only the first n_rot = rope.dimension_count dims of a head rotate.
* GQA: query head h reads kv head h // (n_head / n_head_kv).
* RMSNorm: x / sqrt(mean(x^2) + eps) * w.  FFN: down(silu(gate(x)) * up(x)).
* No output.weight: the output layer is token_embd (tied).

Activation quantization (``act_quant=True``): llama.cpp (and eoq) convert the input of every
weight product to the weight type's "vec_dot_type" and take integer block dot products.  With
act_quant the reference does the same in NumPy, from the format definitions: the float32 input
rows are quantized (F16/BF16 weights: inputs rounded to half / bfloat16; Q4_0/Q5_0/Q8_0: Q8_0
blocks; Q4_1/Q5_1: Q8_1 blocks, whose fp16 sum field s replaces d*Σq in the weights' minimum
term; K-quants: Q8_K blocks; F32: unchanged) and dequantized exactly, then multiplied by the
dequantized weights.  What remains between engine and reference is float summation order, plus
the rare element whose x*scale sits so close to a rounding boundary that a last-ulp difference
upstream rounds it the other way (one quantum, amax/127 of its block).  Without act_quant (the
default) activations stay exact floats (used by the KV-cache and perplexity tests).

API:
    m = RefLlama.load(path, dtype=np.float64)         # cached per (path, mtime, size, dtype)
    m = RefLlama.load(path, np.float32, act_quant=True)  # llama.cpp's activation quantization
    logits = m.forward(tokens)                        # [n, n_vocab] float32, positions 0..n-1
    logits, kv = m.forward(tokens, return_kv=True)    # kv: RefKV (per-layer post-RoPE q, k, v)
    logits = m.forward(tokens, pos0=7)                # same tokens placed at positions 7..7+n-1
    m.last_uncertain                                  # after forward (act_quant): bool [n], rows
                                                      # downstream of a near-tie rounding
    cache = m.new_cache(); m.forward(a, cache=cache); m.forward(b, cache=cache)  # incremental
    ids = m.greedy(tokens, n)                         # n greedily generated ids (KV-cached)
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import numpy as np
import gguf


@dataclass
class RefConfig:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int          # key length per head
    head_dim_v: int        # value length per head
    n_rot: int             # rope.dimension_count
    n_vocab: int
    n_ctx: int
    rope_base: float
    norm_eps: float


@dataclass
class RefKV:
    """Per-layer attention tensors of one forward call (positions pos0..pos0+n-1):
    q[l]: [n, n_head, head_dim]    post-RoPE queries
    k[l]: [n, n_head_kv, head_dim] post-RoPE keys
    v[l]: [n, n_head_kv, head_dim_v] values."""
    q: list = field(default_factory=list)
    k: list = field(default_factory=list)
    v: list = field(default_factory=list)


@dataclass
class RefCache:
    """Incremental KV cache for forward(..., cache=...): k[l] [n_past, n_head_kv, head_dim]."""
    k: list
    v: list
    n_past: int = 0


_CACHE: dict = {}


def _find_openblas_threads():
    """(get, set) for the OpenBLAS bundled with numpy, or None.  Small-batch matmuls are far
    faster single-threaded here (2 shared cores: spinning BLAS threads lose to contention)."""
    try:
        import ctypes
        import glob
        libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        for path in glob.glob(os.path.join(libdir, "*openblas*")):
            lib = ctypes.CDLL(path)
            for pre, suf in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                             ("openblas", "")):
                get = getattr(lib, f"{pre}_get_num_threads{suf}", None)
                put = getattr(lib, f"{pre}_set_num_threads{suf}", None)
                if get is not None and put is not None:
                    return get, put
    except OSError:
        pass
    return None


_BLAS = _find_openblas_threads()
_REF_THREADS = int(os.environ.get("EOQ_REF_BLAS_THREADS", "1"))


class _blas_threads:
    """Context manager: run the reference with EOQ_REF_BLAS_THREADS (default 1) BLAS threads."""

    def __enter__(self):
        self.old = None
        if _BLAS is not None and _REF_THREADS > 0:
            self.old = _BLAS[0]()
            _BLAS[1](_REF_THREADS)

    def __exit__(self, *exc):
        if self.old is not None:
            _BLAS[1](self.old)


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


# --- activation formats (vec_dot_type), from their definitions -------------------------------

VEC_DOT_TYPE = {"F32": "F32", "F16": "F16", "BF16": "BF16",
                "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1",
                "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K"}


# Size of the float differences (relative, about one float32 ulp) that a float32 implementation
# may carry into a quantizer: a rounding decision closer than this to its boundary may go either
# way there (quant units: 127 * NEAR_TIE, the largest |x*scale| being 127).
NEAR_TIE = 1e-7


def _ambiguous(rnd, lo, hi) -> np.ndarray:
    """True where rounding with `rnd` gives different results at the two ends of [lo, hi]."""
    return rnd(lo) != rnd(hi)


def _f16(z):
    return np.asarray(z, np.float64).astype(np.float16)


def _near_f16(y) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return _ambiguous(_f16, y * (1 - NEAR_TIE), y * (1 + NEAR_TIE))


def quantize_q8(x: np.ndarray, block: int):
    """Q8_0 / Q8_1 blocks of float32 rows x [..., n]: (q int8 [..., nb, block], d float32 [..., nb]
    before fp16 rounding, near [..., nb]: a rounding of the block is within NEAR_TIE of its
    boundary).  amax = max|x|, d = amax/127, q = round_half_even(x * (127/amax))."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(x.shape[:-1] + (x.shape[-1] // block, block))
    amax = np.abs(xb).max(axis=-1)
    d = amax / np.float32(127)
    iden = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    v = xb * iden[..., None]
    q = np.clip(np.rint(v), -128, 127).astype(np.int8)
    tol = 127 * NEAR_TIE  # in quant units: a relative error NEAR_TIE moves |v| <= 127 by this much
    near = _ambiguous(np.rint, v - tol, v + tol).any(axis=-1) | _near_f16(d)
    return q, d, near


def quantize_q8_K(x: np.ndarray):
    """Q8_K blocks of float32 rows x [..., n]: (q int8 [..., nb, 256], d float32 [..., nb], near).
    m = the first element of largest magnitude; iscale = -127/m, q = min(127,
    round_half_even(iscale * x)), d = 1/iscale; all-zero blocks get d = 0, q = 0."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(x.shape[:-1] + (x.shape[-1] // 256, 256))
    m = np.take_along_axis(xb, np.abs(xb).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    nz = m != 0
    iscale = np.divide(np.float32(-127), m, out=np.zeros_like(m), where=nz)
    v = xb * iscale[..., None]
    q = np.clip(np.rint(v), -128, 127).astype(np.int8)
    d = np.divide(np.float32(1), iscale, out=np.zeros_like(m), where=nz)
    tol = 127 * NEAR_TIE
    return q, d, _ambiguous(np.rint, v - tol, v + tol).any(axis=-1)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest-even bfloat16, returned as float32 (finite inputs)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.view(np.float32)


def quantize_activations(x: np.ndarray, act: str):
    """x [n, in] (any float dtype, taken as float32) in activation format `act`, dequantized:
    (values float64 [n, in], s_excess float64 [n, nb] or None, near bool [n]).  For Q8_1,
    s_excess is s - d*Σq per block (the fp16 sum field minus the sum of the dequantized values),
    which the weights' per-block minimum multiplies.  near[t]: some rounding of row t was within
    NEAR_TIE of its boundary, so another correct float32 implementation may round it the other
    way (one quantum, or one fp16/bf16 ulp)."""
    x32 = np.asarray(x, np.float32)
    x64 = x32.astype(np.float64)
    lo, hi = x64 * (1 - NEAR_TIE), x64 * (1 + NEAR_TIE)
    if act == "F32":
        return x64, None, np.zeros(len(x32), bool)
    if act == "F16":
        return _f16(x32).astype(np.float64), None, _ambiguous(_f16, lo, hi).any(axis=-1)
    if act == "BF16":
        return to_bf16(x32).astype(np.float64), None, _ambiguous(to_bf16, lo, hi).any(axis=-1)
    if act == "Q8_K":
        q, d, near = quantize_q8_K(x32)
        return (q * d[..., None].astype(np.float64)).reshape(x32.shape), None, near.any(axis=-1)
    q, d, near = quantize_q8(x32, 32)
    d16 = d.astype(np.float16).astype(np.float64)                   # stored scale
    vals = (q * d16[..., None]).reshape(x32.shape)
    if act == "Q8_0":
        return vals, None, near.any(axis=-1)
    qsum = q.astype(np.int64).sum(axis=-1)
    s32 = d * qsum.astype(np.float32)                                # float32 product
    near |= _near_f16(s32)
    return vals, s32.astype(np.float16).astype(np.float64) - d16 * qsum, near.any(axis=-1)


def block_mins(t) -> np.ndarray:
    """Per-block minimum m [rows, nb] (fp16 at bytes 2..3 of every block) of a Q4_1/Q5_1 tensor."""
    size = {"Q4_1": 20, "Q5_1": 24}[t.tensor_type.name]
    raw = np.asarray(t.data, np.uint8).reshape(-1, size)
    rows = int(np.prod([int(s) for s in list(t.shape)[1:]]))
    return raw[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(rows, -1)


def dequantize_tensor(t) -> np.ndarray:
    """A GGUF tensor as float32 numpy, shape reversed from GGUF order (rows, cols)."""
    shape = tuple(int(s) for s in reversed(list(t.shape)))
    w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return np.ascontiguousarray(w.reshape(shape), dtype=np.float32)


class RefLlama:
    def __init__(self, path, dtype=np.float64, act_quant=False):
        self.path = str(path)
        self.dtype = np.dtype(dtype)
        self.act_quant = bool(act_quant)
        r = gguf.GGUFReader(self.path)
        arch = _field(r, "general.architecture", "llama")
        self.arch = arch

        def kv(key, default=None):
            return _field(r, f"{arch}.{key}", default)

        self.tensors = {t.name: dequantize_tensor(t) for t in r.tensors}
        self.tensor_types = {t.name: t.tensor_type.name for t in r.tensors}
        self.mins = {t.name: block_mins(t) for t in r.tensors if t.tensor_type.name in ("Q4_1", "Q5_1")}
        n_embd = int(kv("embedding_length"))
        n_head = int(kv("attention.head_count"))
        n_head_kv = int(kv("attention.head_count_kv", n_head))
        head_dim = int(kv("attention.key_length", n_embd // n_head))
        head_dim_v = int(kv("attention.value_length", head_dim))
        emb = self.tensors["token_embd.weight"]
        self.cfg = RefConfig(
            arch=arch,
            n_layer=int(kv("block_count")),
            n_embd=n_embd,
            n_ff=int(kv("feed_forward_length")),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=head_dim_v,
            n_rot=int(kv("rope.dimension_count", head_dim)),
            n_vocab=emb.shape[0],
            n_ctx=int(kv("context_length", 2048)),
            rope_base=float(kv("rope.freq_base", 10000.0)),
            norm_eps=float(kv("attention.layer_norm_rms_epsilon", 1e-5)),
        )
        c = self.cfg
        assert emb.shape == (c.n_vocab, c.n_embd), emb.shape
        assert c.n_head % c.n_head_kv == 0
        self.tied = "output.weight" not in self.tensors
        self.output_name = "token_embd.weight" if self.tied else "output.weight"
        self.output = self.tensors[self.output_name]
        self.rope_factors = self.tensors.get("rope_freqs.weight")
        if self.rope_factors is not None:
            assert self.rope_factors.shape == (c.n_rot // 2,), self.rope_factors.shape
        self.tokens = _field(r, "tokenizer.ggml.tokens", [])
        self.merges = _field(r, "tokenizer.ggml.merges", [])
        self.bos_id = _field(r, "tokenizer.ggml.bos_token_id")
        self.eos_id = _field(r, "tokenizer.ggml.eos_token_id")
        # inverse frequencies of the rotated pairs, float64: base^(-2i/n_rot) / factor_i
        i = np.arange(c.n_rot // 2, dtype=np.float64)
        self.inv_freq = c.rope_base ** (-2.0 * i / c.n_rot)
        if self.rope_factors is not None:
            self.inv_freq = self.inv_freq / self.rope_factors.astype(np.float64)

    @classmethod
    def load(cls, path, dtype=np.float64, act_quant=False) -> "RefLlama":
        """Cached constructor: one instance per (path, mtime, size, dtype, act_quant)."""
        st = os.stat(path)
        base = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        key = base + (np.dtype(dtype).str, bool(act_quant))
        m = _CACHE.get(key)
        if m is None:
            other = next((v for k, v in _CACHE.items() if k[:3] == base), None)
            m = _CACHE[key] = (other.with_dtype(dtype, act_quant) if other is not None
                               else cls(path, dtype, act_quant))
        return m

    def with_dtype(self, dtype, act_quant=None) -> "RefLlama":
        """A view of this model computing in another dtype (and, if given, with or without
        activation quantization); weights shared, not copied."""
        m = copy.copy(self)
        m.dtype = np.dtype(dtype)
        if act_quant is not None:
            m.act_quant = bool(act_quant)
        return m

    # --- building blocks -------------------------------------------------------------------

    def w(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def _mm(self, x: np.ndarray, name: str) -> np.ndarray:
        """x [n, in] @ W[out, in].T in self.dtype for the weight tensor `name`; with act_quant, x
        first goes through the weight type's activation format (module docstring)."""
        w = self.tensors[name]
        if not self.act_quant:
            return x @ w.T.astype(self.dtype, copy=False)
        vals, s_excess, near = quantize_activations(x, VEC_DOT_TYPE[self.tensor_types[name]])
        self._near |= near
        y = vals.astype(self.dtype) @ w.T.astype(self.dtype, copy=False)
        if s_excess is not None:  # Q8_1: the weights' minimum m meets s, not d*Σq
            y = y + (s_excess @ self.mins[name].T).astype(self.dtype)
        return y

    def rms_norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        eps = self.dtype.type(self.cfg.norm_eps)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(self.dtype)

    def rope(self, x: np.ndarray, positions) -> np.ndarray:
        """x [n, heads, head_dim]; rotates (x[2i], x[2i+1]) for 2i < n_rot by pos*inv_freq[i]."""
        pos = np.asarray(positions, dtype=np.float64)
        ang = pos[:, None] * self.inv_freq[None, :]                       # [n, n_rot/2] float64
        cos = np.cos(ang).astype(self.dtype)[:, None, :]
        sin = np.sin(ang).astype(self.dtype)[:, None, :]
        out = x.copy()
        nr = self.cfg.n_rot
        a, b = x[..., 0:nr:2], x[..., 1:nr:2]
        out[..., 0:nr:2] = a * cos - b * sin
        out[..., 1:nr:2] = a * sin + b * cos
        return out

    @staticmethod
    def _silu(x):
        return x / (1.0 + np.exp(-x))

    def new_cache(self) -> RefCache:
        c = self.cfg
        return RefCache(k=[np.zeros((0, c.n_head_kv, c.head_dim), self.dtype) for _ in range(c.n_layer)],
                        v=[np.zeros((0, c.n_head_kv, c.head_dim_v), self.dtype) for _ in range(c.n_layer)])

    # --- forward ---------------------------------------------------------------------------

    def forward(self, tokens, *, return_kv: bool = False, pos0: int = 0, cache: RefCache | None = None,
                return_hidden: bool = False):
        """Logits [n, n_vocab] float32 for `tokens` at positions p..p+n-1, each attending causally
        to itself, the earlier tokens of this call and (if given) the cache; p = cache.n_past if a
        cache is given, else pos0.  The cache is extended in place.  With return_kv the result is
        (logits, RefKV); with return_hidden, the final-normed hidden states [n, n_embd] are added
        as the last tuple element."""
        with _blas_threads():
            return self._forward(tokens, return_kv, pos0, cache, return_hidden)

    def _forward(self, tokens, return_kv, pos0, cache, return_hidden):
        c = self.cfg
        dt = self.dtype
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        assert n > 0 and tokens.min() >= 0 and tokens.max() < c.n_vocab
        p = cache.n_past if cache is not None else pos0
        positions = np.arange(p, p + n)
        n_past = cache.n_past if cache is not None else 0
        group = c.n_head // c.n_head_kv
        scale = dt.type(1.0 / np.sqrt(c.head_dim))
        # causal mask over [past | new]: query i (absolute index n_past+i) sees keys j <= n_past+i
        kj = np.arange(n_past + n)
        mask = kj[None, :] > (n_past + np.arange(n))[:, None]             # [n, n_past+n] True = hidden
        kvout = RefKV()
        self._near = np.zeros(n, bool)

        h = self.tensors["token_embd.weight"][tokens].astype(dt)           # [n, n_embd]
        for l in range(c.n_layer):
            pre = f"blk.{l}."
            x = self.rms_norm(h, self.w(pre + "attn_norm.weight"))
            q = self._mm(x, pre + "attn_q.weight").reshape(n, c.n_head, c.head_dim)
            k = self._mm(x, pre + "attn_k.weight").reshape(n, c.n_head_kv, c.head_dim)
            v = self._mm(x, pre + "attn_v.weight").reshape(n, c.n_head_kv, c.head_dim_v)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            if return_kv:
                kvout.q.append(q)
                kvout.k.append(k)
                kvout.v.append(v)
            if cache is not None:
                K = np.concatenate([cache.k[l], k], axis=0)
                V = np.concatenate([cache.v[l], v], axis=0)
                cache.k[l], cache.v[l] = K, V
            else:
                K, V = k, v
            qg = q.reshape(n, c.n_head_kv, group, c.head_dim)              # head h -> kv h // group
            s = np.einsum("ikgd,jkd->kgij", qg, K) * scale                 # [kv, group, n, m]
            s = np.where(mask, -np.inf, s)
            s = s - s.max(axis=-1, keepdims=True)
            e = np.exp(s)
            a = e / e.sum(axis=-1, keepdims=True)
            o = np.einsum("kgij,jkd->ikgd", a, V).reshape(n, c.n_head * c.head_dim_v)
            h = h + self._mm(o, pre + "attn_output.weight")
            x = self.rms_norm(h, self.w(pre + "ffn_norm.weight"))
            g = self._mm(x, pre + "ffn_gate.weight")
            u = self._mm(x, pre + "ffn_up.weight")
            h = h + self._mm(self._silu(g) * u, pre + "ffn_down.weight")
        if cache is not None:
            cache.n_past += n
        hn = self.rms_norm(h, self.w("output_norm.weight"))
        logits = self._mm(hn, self.output_name).astype(np.float32)
        # Row t depends on the quantizations of rows <= t (attention), so an ambiguous rounding
        # in row t makes rows t.. uncertain at the level of one quantum.
        self.last_uncertain = np.logical_or.accumulate(self._near)
        out = [logits]
        if return_kv:
            out.append(kvout)
        if return_hidden:
            out.append(hn)
        return out[0] if len(out) == 1 else tuple(out)

    def greedy(self, tokens, n: int) -> list[int]:
        """n greedily chosen next ids after `tokens` (argmax; ties -> lowest id), KV-cached."""
        cache = self.new_cache()
        logits = self.forward(list(tokens), cache=cache)
        out = []
        for _ in range(n):
            t = int(np.argmax(logits[-1]))
            out.append(t)
            if len(out) == n:
                break
            logits = self.forward([t], cache=cache)
        return out
