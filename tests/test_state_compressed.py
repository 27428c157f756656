"""State files of the compressed KV caches (issue 14 item 3; engine/kv_cache_compressed.cpp, the
serializer block at its end): a sequence saved and loaded back continues bit for bit as the
uninterrupted run, with equal statistics, for q8_0, q4_0, turbo3, eoq2 and the `eoq` preset
(tail codes, 8-bit norms) at lengths that seal blocks (block=16); an eoq state is much smaller
than an f16 one; and the payload is untrusted: flipped bytes, truncations and rewritten counts
(re-sealed with a valid checksum, so they reach the payload parser) never crash and give one
EoqError(format) with the sequence left empty, where a rewritten field makes the payload invalid."""
import random
import struct

import numpy as np
import pytest

from eoq import Engine, EoqError
from test_state import reseal

TEXT = ("In the spring of that year the river rose higher than anyone in the valley could remember, "
        "and the families who lived along its banks carried what they could up the hill to the old "
        "church, where the priest opened the doors and lit the stoves. ") * 4

N_CTX = 256
N_VOCAB = 49152
# SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64.
N_LAYER, N_HKV, D = 30, 3, 64

CASES = [
    ("q8_0", {}),
    ("q4_0", {}),
    ("turbo3", {"block": 16, "boundary_layers": 1}),  # f16 boundary layers: sinks + ring only
    ("eoq2", {"block": 16, "boundary_layers": 1, "boundary_bits": 4}),
    ("eoq", {"block": 16}),  # the preset: ring 0, tail codes 5/2 bits, window 16, 8-bit norms
    # k_adapt: key blocks at k_bits − 1 where that meets the error target (1-bit keys here).
    ("eoq2-k_adapt", {"block": 16, "k_adapt": 300}),
]


def _strip_ms(x):
    """Statistics without the seal timings (blocks sealed after the load are timed anew)."""
    if isinstance(x, dict):
        return {k: _strip_ms(v) for k, v in x.items() if "ms" not in k}
    if isinstance(x, list):
        return [_strip_ms(v) for v in x]
    return x


def _payload_at(body: bytes) -> int:
    """Offset of the cache payload's first byte in a state file (engine/state_file.h layout)."""
    kv_len = struct.unpack_from("<I", body, 24)[0]
    tok_at = 28 + kv_len
    n_tok = struct.unpack_from("<I", body, tok_at)[0]
    logit_at = tok_at + 4 + 4 * n_tok
    n_logits = struct.unpack_from("<I", body, logit_at)[0]
    return logit_at + 4 + 4 * n_logits + 8


@pytest.fixture(scope="module")
def toks(smollm2_path):
    with Engine(smollm2_path, n_ctx=N_CTX, n_threads=2) as e:
        t = e.tokenize(TEXT)
    assert len(t) >= 110
    return t[:110]


@pytest.mark.parametrize("mode,opts", CASES, ids=[c[0] for c in CASES])
def test_compressed_round_trip_bit_exact(smollm2_path, toks, tmp_path, mode, opts):
    n_save = 75  # sinks 4 + several blocks of 16 sealed, a partial ring / tail
    mode = mode.split("-")[0]
    with Engine(smollm2_path, n_ctx=N_CTX, n_threads=2, kv=mode, kv_options=opts) as e:
        e.core.eval(toks[:n_save])
        st0 = e.compression_stats()
        if "k_adapt" in opts:  # the case this tests: some blocks really are at k_bits − 1
            assert st0["summary"]["k"]["mean_bits"] < 2, st0["summary"]["k"]
        if mode not in ("q8_0", "q4_0"):
            assert st0["summary"]["blocks_sealed"] > 0
        e.save_state(tmp_path / "s")
        e.core.eval(toks[n_save:], all_logits=True)  # crosses further seals
        ref = e.core.all_logits().copy()
        st_ref = e.compression_stats()
        e.reset()
        e.load_state(tmp_path / "s")
        assert e.n_past == n_save
        st1 = e.compression_stats()
        assert st1 == st0  # incl. per-block stats, bytes and seal timings (saved as they were)
        e.core.eval(toks[n_save:], all_logits=True)
        assert np.array_equal(e.core.all_logits(), ref)
        assert _strip_ms(e.compression_stats()) == _strip_ms(st_ref)
        # A second save of the loaded cache writes the same payload (nothing lost or added).
        e.reset()
        e.load_state(tmp_path / "s")
        e.save_state(tmp_path / "s2")
        assert (tmp_path / "s2").read_bytes() == (tmp_path / "s").read_bytes()


def test_eoq_state_is_small(smollm2_path, toks, tmp_path):
    sizes = {}
    for mode, opts in (("f16", {}), ("eoq", {"block": 32})):
        with Engine(smollm2_path, n_ctx=N_CTX, n_threads=2, kv=mode, kv_options=opts) as e:
            e.core.eval((toks * 3)[:240])
            sizes[mode] = e.save_state(tmp_path / mode)
            body = (tmp_path / mode).read_bytes()[:-8]
            sizes[mode + "_payload"] = len(body) - _payload_at(body)
            sizes[mode + "_bytes"] = e.compression_stats()["bytes"]
    # f16 payload: 240 tokens × 30 layers × 3 heads × 64 × 2 (K, V) × 2 bytes.
    assert sizes["f16_payload"] >= 240 * N_LAYER * N_HKV * D * 4
    assert sizes["eoq_payload"] < 0.3 * sizes["f16_payload"], sizes
    # Compressed stays compressed: the payload is the held bytes plus small per-block statistics.
    assert sizes["eoq_payload"] < 1.3 * sizes["eoq_bytes"] + 64 * 1024, sizes


class _Walker:
    """Walks a compressed payload by its documented layout (kv_cache_compressed.cpp, state files)
    and records the offsets of its structural fields: (offset, struct format, name)."""

    def __init__(self, body, at, n, q=None, sinks=4, ring=16, block=16, window=16, tail_bits=(0, 0),
                 exact_layers=()):
        self.b, self.at, self.fields = body, at, []
        self.f("<I", "magic"), self.f("<I", "version"), self.f("<I", "head_dim"), self.f("<I", "n_layer")
        self.f("<I", "n_head_kv"), self.f("<I", "block")
        assert self.f("<I", "n_tokens") == n
        ns = min(n, sinks)
        nu = n - ns
        for il in range(N_LAYER):
            exact = il in exact_layers
            nb = 0 if exact or q else ((nu - ring) // block if nu >= ring + block else 0)
            for _ in range(N_HKV):
                for kv in range(2):
                    self.f("<q", "nonfinite")
                    if q and not exact:
                        self.at += n * (D // 32) * (18 if q == "q4_0" else 34)
                        continue
                    self.at += 2 * ns * D
                    for _ in range(nb):
                        kind = self.f("<B", "kind")
                        rank = self.f("<B", "rank")
                        bits = self.f("<B", "bits")
                        fb = self.f("<B", "factor_bits")
                        self.f("<b", "norm_shift")
                        form = self.f("<B", "norm_form")
                        if kind == 1:
                            self.at += 2 * block * D
                        else:
                            self.at += (block * rank * fb + 7) // 8 + (rank * D * fb + 7) // 8
                            self.at += 6 * rank + block * ((D * bits + 7) // 8) + (block if form else 2 * block)
                        self.f("<i", "rank_raw"), self.f("<i", "stat_rank")
                        self.at += 12
                        self.f("<B", "fallback")
                        ng = self.f("<H", "gains")
                        self.at += 4 * ng
                    unsealed = nu - nb * block
                    self.at += unsealed
                    tb = tail_bits[kv]
                    if tb and nb > 0 and not exact:
                        tail_base = self.f("<q", "tail_base")
                        ring_base = self.f("<q", "ring_base")
                        self.at += (nu - tail_base) * ((D * tb + 7) // 8 + 2) + 2 * D * (nu - ring_base)
                    else:
                        self.at += 2 * D * unsealed
        assert self.at == len(body), (self.at, len(body))

    def f(self, fmt, name):
        v = struct.unpack_from(fmt, self.b, self.at)[0]
        self.fields.append((self.at, fmt, name, v))
        self.at += struct.calcsize(fmt)
        return v


FUZZ = [
    ("eoq", {"block": 16}, dict(ring=0, tail_bits=(5, 2))),
    ("eoq2", {"block": 16, "boundary_layers": 1, "boundary_bits": 4}, dict()),
    ("turbo3", {"block": 16, "boundary_layers": 1}, dict(exact_layers=(0, N_LAYER - 1))),
    ("q4_0", {}, dict(q="q4_0")),
]


@pytest.mark.parametrize("mode,opts,layout", FUZZ, ids=[c[0] for c in FUZZ])
def test_fuzz_compressed_payloads(smollm2_path, toks, tmp_path, mode, opts, layout):
    n = 60
    rng = random.Random(sum(map(ord, mode)) * 7919)
    with Engine(smollm2_path, n_ctx=N_CTX, n_threads=2, kv=mode, kv_options=opts) as e:
        e.core.eval(toks[:n])
        e.save_state(tmp_path / "good")
        body = (tmp_path / "good").read_bytes()[:-8]
        pay = _payload_at(body)
        w = _Walker(body, pay, n, **layout)  # also checks the documented layout against the bytes
        pay_len_at = pay - 8

        def with_payload(p):
            b = bytearray(body[:pay_len_at]) + struct.pack("<Q", len(p)) + p
            return reseal(bytes(b))

        payload = body[pay:]
        must_fail = []
        for cut in sorted({1, 10, 27, 28, 29, len(payload) // 3, len(payload) // 2, len(payload) - 1}):
            must_fail.append(with_payload(payload[:cut]))  # truncated, size field consistent
        must_fail.append(with_payload(payload + b"\0"))  # trailing bytes
        # Structural fields rewritten: every value here is out of its allowed set.
        picks = w.fields[:7] + rng.sample(w.fields[7:], min(60, len(w.fields) - 7))
        for off, fmt, name, v in picks:
            bad_values = {
                "magic": [0], "version": [2], "head_dim": [D + 1], "n_layer": [0], "n_head_kv": [7],
                "block": [17, 0], "n_tokens": [n + 1, 0xFFFFFFFF], "nonfinite": [-1, -(1 << 62)],
                "kind": [2, 255], "rank": [v + 9, 255], "bits": [0, 9, 255], "factor_bits": [v + 1, 0],
                "norm_form": [2], "rank_raw": [-1, 1 << 30], "stat_rank": [v + 1], "fallback": [5, 255],
                "gains": [0xFFFF], "tail_base": [-1, 1 << 40, 10**6], "ring_base": [-5, 1 << 50],
                "norm_shift": [100],
            }[name]
            for bv in bad_values:
                p = bytearray(payload)
                struct.pack_into(fmt, p, off - pay, bv)
                if bytes(p) != payload:
                    must_fail.append(with_payload(bytes(p)))
        # Random byte flips anywhere in the payload (codes are any bits: some flips are valid data,
        # which must load; the rest must be refused) and NaN values in f16 arrays.
        may_fail = []
        for _ in range(40):
            p = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
            may_fail.append(with_payload(bytes(p)))
        if not layout.get("q"):
            p = bytearray(payload)  # a NaN in the first sink row of layer 0, head 0, K
            struct.pack_into("<H", p, 28 + 8, 0x7E00)
            must_fail.append(with_payload(bytes(p)))
        else:
            p = bytearray(payload)  # an inf q block scale
            struct.pack_into("<H", p, 28 + 8, 0x7C00)
            must_fail.append(with_payload(bytes(p)))
        refused = 0
        for k, c in enumerate(must_fail + may_fail):
            path = tmp_path / f"f{k}"
            path.write_bytes(c)
            e.core.eval([1, 2, 3])
            try:
                e.load_state(path)
            except EoqError as ex:
                assert ex.code == "format", (k, str(ex))
                assert "state" in str(ex)
                assert e.n_past == 0 and e.compression_stats()["n_tokens"] == 0
                refused += 1
                continue
            assert k >= len(must_fail), (k, "a forged payload was accepted")
            assert e.n_past == n
            e.core.eval(toks[n:n + 2])  # a flipped code or norm byte: still runs
        assert refused >= len(must_fail)
        e.load_state(tmp_path / "good")  # and the good file still loads
        assert e.n_past == n
