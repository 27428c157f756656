"""Activation formats and weight × activation dot products (kernels/quant_dot.h).

(a) The scalar quantizers produce exactly the bytes of a NumPy implementation of the format
    definitions written here.
(b) The scalar vec_dot equals a float64 NumPy dot of the gguf-package-dequantized weights with the
    dequantized activations (plus, for Q8_1, the weights' minimum times the stored s instead of
    d*Σq), to float rounding.
(c) Every SIMD version gives the scalar version's quantized bytes exactly and its dot products to
    float rounding, for odd row/token counts and several block counts; within one ISA each result
    is independent of the tile it was computed in (bit for bit).
"""
import numpy as np
import pytest

from eoq import _core
from test_kernels import DQ_TYPES, assert_same_bits, misaligned, random_fp16_bits, random_row, rng

# SIMD tables this build can have; a CPU without one skips its tests with the reason.
SIMD_ISAS = ["avx2", "avx512vnni"]
WEIGHT_TYPES = list(DQ_TYPES)
ACT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K"]
ACT_BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q8_1": 32, "Q8_K": 256}


def need(isa):
    if isa not in _core.available_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")


# ---- (a) the formats, written down in NumPy ----

def np_quantize(act, x):
    """Bytes of the float32 row x in activation format act, from the format definitions."""
    x = np.asarray(x, np.float32)
    if act == "F32":
        return x.tobytes()
    if act == "F16":
        return x.astype(np.float16).tobytes()  # round to nearest even
    if act == "BF16":
        u = x.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()
    out = []
    if act in ("Q8_0", "Q8_1"):
        # d = amax/127 (fp16), q = round_half_even(x * (127/amax)); Q8_1: s = fp16(d * Σq)
        for xb in x.reshape(-1, 32):
            amax = np.float32(np.abs(xb).max())
            d = amax / np.float32(127)
            iden = np.float32(127) / amax if amax != 0 else np.float32(0)
            q = np.rint(xb * iden).astype(np.int8)
            out.append(np.float16(d).tobytes())
            if act == "Q8_1":
                out.append(np.float16(d * np.float32(int(q.astype(np.int64).sum()))).tobytes())
            out.append(q.tobytes())
        return b"".join(out)
    assert act == "Q8_K"
    # m = first element of largest |x|; iscale = -127/m; q = min(127, rint(iscale*x)); d = 1/iscale;
    # bsums = sums of 16 consecutive q
    for xb in x.reshape(-1, 256):
        m = xb[int(np.argmax(np.abs(xb)))]
        if m == 0:
            d, q = np.float32(0), np.zeros(256, np.int8)
        else:
            iscale = np.float32(-127) / m
            q = np.minimum(np.rint(xb * iscale), 127).astype(np.int8)
            d = np.float32(1) / iscale
        out += [np.float32(d).tobytes(), q.tobytes(), q.reshape(16, 16).astype(np.int64).sum(1).astype("<i2").tobytes()]
    return b"".join(out)


def np_dequantize_act(act, data, n):
    """(values float64 [n], s_excess float64 [n/32] or None): the activation row's values, and for
    Q8_1 the stored s minus d*Σq of each block."""
    buf = np.frombuffer(data, np.uint8)
    if act == "F32":
        return buf.view(np.float32).astype(np.float64), None
    if act == "F16":
        return buf.view(np.float16).astype(np.float64), None
    if act == "BF16":
        return (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64), None
    if act == "Q8_K":
        blk = buf.reshape(-1, 292)
        d = blk[:, :4].copy().view(np.float32).astype(np.float64)
        q = blk[:, 4:260].view(np.int8).astype(np.float64)
        return (d * q).reshape(-1), None
    size, qoff = (34, 2) if act == "Q8_0" else (36, 4)
    blk = buf.reshape(-1, size)
    d = blk[:, 0:2].copy().view(np.float16).astype(np.float64)
    q = blk[:, qoff:].view(np.int8).astype(np.float64)
    if act == "Q8_0":
        return (d * q).reshape(-1), None
    s = blk[:, 2:4].copy().view(np.float16).astype(np.float64)[:, 0]
    return (d * q).reshape(-1), s - d[:, 0] * q.sum(1)


def random_activations(r, n, kind="normal"):
    """A float32 row of n values: Gaussian with a per-block magnitude spread, plus zero blocks,
    round-half ties and opposite-sign largest elements where the length allows."""
    x = r.standard_normal(n) * 10.0 ** r.uniform(-3, 3, (n + 31) // 32).repeat(32)[:n]
    x = x.astype(np.float32)
    if n >= 64:
        x[32:64] = 0  # an all-zero Q8_0 block
    if n >= 512:
        b = x[256:512]  # a Q8_K block whose scale is exactly 1: x = 127 -> iscale = -1 ... ties
        b[:] = r.integers(-250, 250, 256) / 2.0
        b[7], b[9] = 127.0, -127.0  # equal magnitudes, opposite signs: the first one is m
    if n >= 128:
        b = x[64:96]  # a Q8_0 block with amax 127: id = 1, so x.5 values are exact ties
        b[:] = r.integers(-254, 255, 32) / 2.0
        b[0] = 127.0
    return x


def lengths(block):
    return {1: [1, 7, 8, 33, 576], 32: [32, 64, 128, 576], 256: [256, 512, 1536]}[block]


@pytest.mark.parametrize("act", ACT_TYPES)
def test_scalar_quantizers_match_the_format_definitions(act):
    r = rng()
    for n in lengths(ACT_BLOCK[act]):
        for rep in range(3):
            x = random_activations(r, n)
            got = _core.k_quantize_act("scalar", act, x)
            assert len(got) == _core.act_row_bytes(act, n)
            want = np_quantize(act, x)
            if got != want:
                bad = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(want, np.uint8))
                pytest.fail(f"{act} n={n}: {bad.size} bytes differ, first at byte {bad[0]}")


def test_quantizer_ties_round_half_to_even():
    # Q8_0 block with amax 127 (scale 1): 2.5 -> 2, -3.5 -> -4, 0.5 -> 0
    x = np.zeros(32, np.float32)
    x[:4] = [127.0, 2.5, -3.5, 0.5]
    q = np.frombuffer(_core.k_quantize_act("scalar", "Q8_0", x)[2:], np.int8)
    assert list(q[:4]) == [127, 2, -4, 0]
    # Q8_K: m = -127 (first of the largest magnitudes), iscale = 1, d = 1
    x = np.zeros(256, np.float32)
    x[:5] = [1.5, -127.0, 127.0, 2.5, -0.5]
    b = _core.k_quantize_act("scalar", "Q8_K", x)
    assert np.frombuffer(b[:4], np.float32)[0] == 1.0
    assert list(np.frombuffer(b[4:9], np.int8)) == [2, -127, 127, 2, 0]


# ---- (b) scalar dot products against NumPy on gguf-dequantized weights ----

def weight_parts(type_name, data):
    """gguf-dequantized row, and the row split into its scale-field terms (each fp16 scale field
    alone, the others zeroed): Σ|part|·|a| bounds the float rounding of the dot products (the
    integer formulas may cancel large d*q and min terms)."""
    gguf = pytest.importorskip("gguf")
    qt = gguf.GGMLQuantizationType[type_name]
    deq = lambda raw: gguf.quants.dequantize(raw, qt).reshape(-1).astype(np.float64)
    w = deq(data)
    bs, size, fields = DQ_TYPES[type_name]
    if len(fields) < 2:
        return w, [w]
    parts = []
    for keep in fields:
        raw = data.reshape(-1, size).copy()
        for off in fields:
            if off != keep:
                raw[:, off:off + 2] = 0
        parts.append(deq(raw.reshape(-1)))
    return w, parts


def block_min(type_name, data):
    """Q4_1/Q5_1: the fp16 minimum m of each block (bytes 2..3)."""
    size = DQ_TYPES[type_name][1]
    return data.reshape(-1, size)[:, 2:4].copy().view(np.float16).astype(np.float64)[:, 0]


def expected_dot(type_name, wdata, act, adata, n):
    """(float64 dot, rounding scale Σ|terms|) of one weight row with one activation row."""
    w, parts = weight_parts(type_name, wdata)
    a, s_excess = np_dequantize_act(act, adata, n)
    want = float(w @ a)
    mag = float(sum(np.abs(p) @ np.abs(a) for p in parts))
    if s_excess is not None:  # Q8_1: Σ_b m_b s_b instead of m_b d_b Σq_b
        m = block_min(type_name, wdata)
        want += float(m @ s_excess)
        mag += float(np.abs(m) @ np.abs(s_excess))
    return want, mag


def weight_lengths(type_name):
    bs = DQ_TYPES[type_name][0]
    return {1: [1, 8, 13, 64, 576], 32: [32, 64, 160, 544, 576], 256: [256, 512, 1536]}[bs]


@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
def test_scalar_vec_dot_matches_numpy(type_name):
    r = rng()
    act = _core.vec_dot_type(type_name)
    for n in weight_lengths(type_name):
        for rep in range(4):
            wdata = random_row(r, type_name, n)
            adata = _core.k_quantize_act("scalar", act, random_activations(r, n))
            got = _core.k_vec_dot("scalar", type_name, wdata, 1, adata, 1, n)
            assert got.shape == (1, 1)
            want, mag = expected_dot(type_name, wdata, act, adata, n)
            # a few float32 roundings per block, accumulated over the row
            assert abs(float(got[0, 0]) - want) <= 4e-6 * mag + 1e-30, (n, rep, float(got[0, 0]), want, mag)


def test_vec_dot_types():
    want = {"F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0",
            "Q4_1": "Q8_1", "Q5_1": "Q8_1", "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K",
            "Q6_K": "Q8_K"}
    assert {t: _core.vec_dot_type(t) for t in WEIGHT_TYPES} == want
    assert [_core.act_row_bytes(t, 256) for t in ACT_TYPES] == [1024, 512, 512, 272, 288, 292]


def test_bad_arguments_raise():
    with pytest.raises(_core.EoqError, match="not supported|no dot product"):
        _core.vec_dot_type("IQ2_XS")
    with pytest.raises(_core.EoqError, match="not an activation format"):
        _core.act_row_bytes("Q4_0", 32)
    for isa in ["scalar"] + [i for i in SIMD_ISAS if i in _core.available_isas()]:
        with pytest.raises(_core.EoqError, match="block size"):
            _core.k_quantize_act(isa, "Q8_0", np.zeros(48, np.float32))
        with pytest.raises(_core.EoqError, match="block size"):
            _core.k_quantize_act(isa, "Q8_K", np.zeros(128, np.float32))
        with pytest.raises(_core.EoqError, match="rows of"):
            _core.k_vec_dot(isa, "Q4_0", bytes(18), 1, bytes(33), 1, 32)


# ---- (c) SIMD kernels against the scalar reference ----

@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("act", ACT_TYPES)
def test_simd_quantizers_give_the_reference_bytes(isa, act):
    need(isa)
    r = rng()
    for n in lengths(ACT_BLOCK[act]):
        for rep in range(4):
            x = random_activations(r, n)
            want = _core.k_quantize_act("scalar", act, x)
            assert _core.k_quantize_act(isa, act, x) == want, (act, n)
            assert _core.k_quantize_act(isa, act, misaligned(x.view(np.uint8)).view(np.float32)) == want


TILE_SHAPES = [(1, 1), (2, 1), (3, 1), (5, 1), (11, 1), (1, 2), (3, 3), (2, 4), (5, 5), (9, 6), (8, 7), (7, 9), (4, 13)]


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
def test_simd_vec_dot_matches_scalar(isa, type_name):
    need(isa)
    r = rng()
    act = _core.vec_dot_type(type_name)
    for n in weight_lengths(type_name):
        for nr, nt in TILE_SHAPES:
            w = [random_row(r, type_name, n) for _ in range(nr)]
            a = [_core.k_quantize_act("scalar", act, random_activations(r, n)) for _ in range(nt)]
            wb, ab = np.concatenate(w), np.frombuffer(b"".join(a), np.uint8)
            want = _core.k_vec_dot("scalar", type_name, wb, nr, ab, nt, n)
            got = _core.k_vec_dot(isa, type_name, misaligned(wb), nr, misaligned(ab), nt, n)
            assert got.shape == (nt, nr)
            for t in range(nt):
                for i in range(nr):
                    _, mag = expected_dot(type_name, w[i], act, a[t], n)
                    assert abs(float(got[t, i]) - float(want[t, i])) <= 4e-6 * mag + 1e-30, (n, nr, nt, t, i)
            if isa != "avx2" and "avx2" in _core.available_isas():  # VNNI: the AVX2 table's bits
                ref2 = _core.k_vec_dot("avx2", type_name, wb, nr, ab, nt, n)
                np.testing.assert_array_equal(got.view(np.uint32), ref2.view(np.uint32))
            # the tile does not matter: each entry equals the 1 x 1 call bit for bit
            for t, i in [(0, 0), (nt - 1, nr - 1), (nt // 2, nr // 2)]:
                one = _core.k_vec_dot(isa, type_name, w[i], 1, a[t], 1, n)
                assert one.view(np.uint32)[0, 0] == got.view(np.uint32)[t, i], (n, nr, nt, t, i)


# ---- (d) the AVX512-VNNI K-quant kernels (kernels/cpu/avx512vnni_dot.cpp) ----
#
# Q4_K, Q5_K and Q6_K run a whole super-block per row in four zmm (vpmaddubsw + vpdpwssd with the
# sub-block scales in integers), two rows per float accumulator register; the file claims the
# AVX2 table's bits for every nr, nt and alignment. Q2_K/Q3_K compute the reference's integers
# with AVX-512 and its float steps in its order: the scalar table's bits, which the AVX2 table
# (the scalar reference for these two) also has.

K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
K_ROW_COUNTS = [1, 2, 3, 4, 5, 7, 13, 33]


def extreme_row(r, type_name, n):
    """A row whose quant and scale bytes are all 0x00, 0xff, 0x80 or 0x7f (the largest 4/5/6-bit
    quants, 6-bit scales and mins 63, Q6_K scales -128 and 127), with finite fp16 scale fields."""
    bs, size, fields = DQ_TYPES[type_name]
    nb = n // bs
    raw = r.choice(np.array([0x00, 0xFF, 0x80, 0x7F], np.uint8), (nb, size))
    raw[r.random((nb, size)) < 0.5] = 0xFF
    for off in fields:
        raw[:, off:off + 2] = random_fp16_bits(r, nb).view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


def extreme_act(r, n):
    """A Q8_K row of quants ±127 (and some -128: the kernels take any int8), consistent bsums."""
    out = []
    for _ in range(n // 256):
        q = r.choice(np.array([127, -127, -128, 127], np.int8), 256)
        d = np.float32(r.uniform(0.5, 2.0) * 10.0 ** r.uniform(-3, 3))
        out += [d.tobytes(), q.tobytes(), q.reshape(16, 16).astype(np.int64).sum(1).astype("<i2").tobytes()]
    return b"".join(out)


def check_k_call(isa, type_name, w, a, n):
    nr, nt = len(w), len(a)
    wb, ab = np.concatenate(w), np.frombuffer(b"".join(a), np.uint8)
    want = _core.k_vec_dot("scalar", type_name, wb, nr, ab, nt, n)
    got = _core.k_vec_dot(isa, type_name, misaligned(wb), nr, misaligned(ab), nt, n)
    assert got.shape == (nt, nr)
    if "avx2" in _core.available_isas():  # the AVX2 table's bits
        ref2 = _core.k_vec_dot("avx2", type_name, wb, nr, ab, nt, n)
        assert_same_bits(got, ref2, f"{isa} vs avx2 {type_name} n={n} nr={nr} nt={nt}")
    for t in range(nt):
        for i in range(nr):
            _, mag = expected_dot(type_name, w[i], "Q8_K", a[t], n)
            assert abs(float(got[t, i]) - float(want[t, i])) <= 4e-6 * mag + 1e-30, (type_name, n, nr, nt, t, i)
    # each entry is the 1 x 1 call's bits (the tile, the pairing of an odd row, the token group
    # do not matter)
    for t in range(nt):
        for i in sorted({0, nr // 2, nr - 1}):
            one = _core.k_vec_dot(isa, type_name, misaligned(w[i]), 1, misaligned(np.frombuffer(a[t], np.uint8)), 1, n)
            assert one.view(np.uint32)[0, 0] == got.view(np.uint32)[t, i], (type_name, n, nr, nt, t, i)


@pytest.mark.parametrize("type_name", K_QUANTS)
def test_vnni_k_quants_match_avx2_bits_and_scalar(type_name):
    need("avx512vnni")
    r = rng()
    for n in [256, 768, 2048]:
        for nr in K_ROW_COUNTS:
            for nt in [1, 2, 3, 4, 5, 8, 11]:  # 8 and 11: the 8-token groups of prompt batches
                w = [random_row(r, type_name, n) for _ in range(nr)]
                a = [_core.k_quantize_act("scalar", "Q8_K", random_activations(r, n)) for _ in range(nt)]
                check_k_call("avx512vnni", type_name, w, a, n)


@pytest.mark.parametrize("type_name", K_QUANTS)
def test_vnni_k_quants_extreme_integers(type_name):
    # the largest quants, scales and mins against ±127/-128 activations: the int16 pair sums and
    # int32 block sums must stay exact (no saturation) on every path
    need("avx512vnni")
    r = rng()
    for n in [256, 1024]:
        for nr, nt in [(1, 1), (4, 1), (7, 1), (5, 3), (9, 5), (3, 8), (4, 10)]:
            w = [extreme_row(r, type_name, n) for _ in range(nr)]
            a = [extreme_act(r, n) for _ in range(nt)]
            check_k_call("avx512vnni", type_name, w, a, n)


# ---- (e) the AVX512-VNNI legacy tiles ----
#
# Four Q4_0/Q4_1/Q8_0 rows x up to four tokens per block step (one token: decode); the offset
# term -offset Σ a per group of four quants (Q4_0: 8; Q8_0, whose weights are loaded as q + 128:
# 128) is computed once per call and token and accumulated into by vpdpbusd. Extreme quants
# (weights 0x00/0xff/0x80/0x7f, activations ±127 and -128) keep every integer exact; rows
# 4..13 and tokens 1..9 reach decode, every token-group size and the rows left to the AVX2
# tiles.

LEGACY_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def extreme_legacy_act(r, act, n):
    """A Q8_0 / Q8_1 row of quants ±127 and -128 with finite fp16 d (and s)."""
    out = []
    for _ in range(n // 32):
        q = r.choice(np.array([127, -127, -128, 127], np.int8), 32)
        out.append(random_fp16_bits(r, 2 if act == "Q8_1" else 1).tobytes())
        out.append(q.tobytes())
    return b"".join(out)


@pytest.mark.parametrize("type_name", LEGACY_TYPES)
def test_vnni_legacy_tiles_extreme_integers(type_name):
    need("avx512vnni")
    r = rng()
    act = _core.vec_dot_type(type_name)
    for n in [32, 2048]:
        for nr, nt in [(4, 1), (9, 1), (4, 2), (5, 4), (8, 5), (13, 9)]:
            w = [extreme_row(r, type_name, n) for _ in range(nr)]
            a = [extreme_legacy_act(r, act, n) for _ in range(nt)]
            if type_name == "Q8_0":
                # activations in the quantizers' range -127..127: the sign trick of ggml's
                # kernels and the AVX2 tile (|w| times a·sign(w)) wraps a -128 activation of a
                # negative weight; weights of -128 are kept (exact on every path)
                for k, x in enumerate(a):
                    blk = np.frombuffer(x, np.uint8).reshape(-1, 34).copy()
                    blk[:, 2:][blk[:, 2:] == 0x80] = 0x81
                    a[k] = blk.tobytes()
            wb, ab = np.concatenate(w), np.frombuffer(b"".join(a), np.uint8)
            want = _core.k_vec_dot("scalar", type_name, wb, nr, ab, nt, n)
            got = _core.k_vec_dot("avx512vnni", type_name, misaligned(wb), nr, misaligned(ab), nt, n)
            if "avx2" in _core.available_isas():  # the AVX2 table's bits
                ref2 = _core.k_vec_dot("avx2", type_name, wb, nr, ab, nt, n)
                assert_same_bits(got, ref2, f"avx512vnni vs avx2 {type_name} n={n} nr={nr} nt={nt}")
            for t in range(nt):
                for i in range(nr):
                    _, mag = expected_dot(type_name, w[i], act, a[t], n)
                    assert abs(float(got[t, i]) - float(want[t, i])) <= 4e-6 * mag + 1e-30, (type_name, n, nr, nt, t, i)
                one = _core.k_vec_dot("avx512vnni", type_name, w[nr - 1], 1, a[t], 1, n)
                assert one.view(np.uint32)[0, 0] == got.view(np.uint32)[t, nr - 1], (type_name, n, nr, nt, t)
