"""Every SIMD kernel against its scalar reference on fresh random inputs."""
import numpy as np
import pytest

from eoq import _core

SIMD = [isa for isa in _core.available_isas() if isa != "scalar"]
LENGTHS = [1, 7, 8, 31, 64, 100, 576, 1536]


def rng():
    seed = np.random.SeedSequence().entropy
    print("seed", seed)
    return np.random.default_rng(seed)


def test_the_machine_has_a_simd_table():
    # This CI machine has AVX2; if the dispatcher stopped finding it the SIMD tests would be empty.
    assert "avx2" in _core.available_isas()


@pytest.mark.parametrize("isa", SIMD)
@pytest.mark.parametrize("n", LENGTHS)
def test_dot_and_axpy_match_scalar(isa, n):
    r = rng()
    a = r.standard_normal(n).astype(np.float32)
    b = r.standard_normal(n).astype(np.float32)
    h = r.standard_normal(n).astype(np.float16)
    exact = float(np.dot(a.astype(np.float64), b))
    bound = 1e-5 * float(np.abs(a).astype(np.float64) @ np.abs(b)) + 1e-6
    for k in ("scalar", isa):
        assert abs(_core.k_dot_f32(k, a, b) - exact) <= bound
        exact16 = float(np.dot(h.astype(np.float64), b))
        assert abs(_core.k_dot_f16_f32(k, h.view(np.uint16), b) - exact16) <= bound * 2
    alpha = float(r.standard_normal())
    want = b + np.float32(alpha) * a
    np.testing.assert_allclose(_core.k_axpy_f32(isa, alpha, a, b), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_core.k_axpy_f32("scalar", alpha, a, b), want, rtol=1e-5, atol=1e-6)
    want16 = b + np.float32(alpha) * h.astype(np.float32)
    np.testing.assert_allclose(_core.k_axpy_f16(isa, alpha, h.view(np.uint16), b), want16, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_core.k_axpy_f16("scalar", alpha, h.view(np.uint16), b), want16, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", LENGTHS)
def test_f16_accumulator_kernels(n):
    """y = f16(fma(alpha, x, y)) and y = f16(y * alpha): SIMD and scalar give the same bits, and
    both equal the float64 oracle rounded to float32 then f16 (within one f16 ulp, for the
    double rounding of the oracle)."""
    r = rng()
    x = (r.standard_normal(n) * 3).astype(np.float16)
    y = (r.standard_normal(n) * 3).astype(np.float16)
    alpha = float(np.float32(r.uniform(0.01, 1.0)))
    want = (np.float64(alpha) * x.astype(np.float64) + y.astype(np.float64)).astype(np.float32).astype(np.float16)
    want_s = (y.astype(np.float32) * np.float32(alpha)).astype(np.float16)
    outs = {}
    for k in _core.available_isas():
        got = _core.k_axpy_f16_acc16(k, alpha, x.view(np.uint16), y.view(np.uint16)).view(np.float16)
        ulp = np.abs(got.view(np.int16).astype(np.int32) - want.view(np.int16).astype(np.int32))
        assert ulp.max() <= 1 and np.mean(ulp == 0) > 0.99, k
        sc = _core.k_scale_f16(k, alpha, y.view(np.uint16)).view(np.float16)
        np.testing.assert_array_equal(sc, want_s)  # a product of f16 and f32 rounds once to f32
        outs[k] = got
    for k in SIMD:
        np.testing.assert_array_equal(outs[k], outs["scalar"])


@pytest.mark.parametrize("n", LENGTHS + [2048])
def test_swiglu_and_f16_dot_match_scalar(n):
    """swiglu (ggml's vectorised expf in the SIMD table) within a few ulp of the std::exp
    reference, over the range where exp(-x) under- and overflows too; the f16 dot in ggml's
    summation order against the double-sum reference."""
    r = rng()
    g = (r.standard_normal(n) * 4).astype(np.float32)
    g[: n // 8] = r.uniform(-120, 120, n // 8)  # exp(-x) beyond float range: 0, inf, denormals
    u = r.standard_normal(n).astype(np.float32)
    want = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64))) * u
    a = (r.standard_normal(n) * 2).astype(np.float16)
    b = (r.standard_normal(n) * 2).astype(np.float16)
    exact = float(a.astype(np.float64) @ b.astype(np.float64))
    for k in _core.available_isas():
        got = _core.k_swiglu(k, g, u)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-35)  # ~0 where exp(-x) overflows
        bound = 1e-6 * float(np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))) + 1e-30
        assert abs(_core.k_dot_f16_f16(k, a.view(np.uint16), b.view(np.uint16)) - exact) <= bound, k


def test_bad_arguments_raise():
    with pytest.raises(_core.EoqError):
        _core.k_dot_f32("avx9000", np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(_core.EoqError):
        _core.k_dot_f32("scalar", np.zeros(3, np.float32), np.zeros(4, np.float32))


# ---- dequantize_row: every SIMD table against the scalar reference, and the scalar one
# against the independent gguf package ----

# name -> (values per block, bytes per block, byte offsets of the fp16 scale fields)
DQ_TYPES = {
    "F32": (1, 4, []), "F16": (1, 2, []), "BF16": (1, 2, []),
    "Q4_0": (32, 18, [0]), "Q4_1": (32, 20, [0, 2]), "Q5_0": (32, 22, [0]), "Q5_1": (32, 24, [0, 2]),
    "Q8_0": (32, 34, [0]),
    "Q2_K": (256, 84, [80, 82]), "Q3_K": (256, 110, [108]), "Q4_K": (256, 144, [0, 2]),
    "Q5_K": (256, 176, [0, 2]), "Q6_K": (256, 210, [208]),
}
# Whole blocks for the quantized types; for the plain float types (block of 1) lengths that
# hit the 8-wide main loop, its tail, and both.
DQ_BLOCKS = {1: [1, 2, 5], 32: [1, 2, 5, 17], 256: [1, 2, 5]}
DQ_FLOAT_LENGTHS = [1, 2, 5, 8, 13, 64, 1029]


def random_fp16_bits(r, n):
    """n finite fp16 bit patterns of moderate size, with zeros, negatives and subnormals."""
    v = (r.uniform(-4.0, 4.0, n) * 2.0 ** r.integers(-12, 3, n)).astype(np.float16)
    k = r.integers(0, 8, n)
    v[k == 0] = 0
    sub = k == 1
    v[sub] = r.integers(1, 0x400, int(sub.sum())).astype(np.uint16).view(np.float16)
    v[k == 2] = -v[k == 2]
    return v.view(np.uint16)


def random_row(r, type_name, n):
    """One row of n values of type_name as raw bytes (a uint8 array), all values finite."""
    bs, size, fields = DQ_TYPES[type_name]
    if type_name == "F32":
        return (r.standard_normal(n) * 10.0 ** r.uniform(-3, 3, n)).astype(np.float32).view(np.uint8)
    if type_name == "F16":
        return random_fp16_bits(r, n).view(np.uint8)
    if type_name == "BF16":
        f = (r.standard_normal(n) * 10.0 ** r.uniform(-3, 3, n)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    nb = n // bs
    raw = r.integers(0, 256, (nb, size), dtype=np.uint8)
    for off in fields:
        raw[:, off:off + 2] = random_fp16_bits(r, nb).view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


def misaligned(data):
    """The same bytes at an odd address (rows in a GGUF file need not be aligned)."""
    buf = np.zeros(data.size + 1, np.uint8)
    buf[1:] = data
    return buf[1:]


def assert_same_bits(got, want, what):
    assert got.dtype == np.float32 and got.shape == want.shape, what
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{what}: {bad.size} of {got.size} differ, first at {bad[0]}: " \
                          f"{got[bad[0]]!r} vs {want[bad[0]]!r}"


def dq_lengths(type_name):
    bs = DQ_TYPES[type_name][0]
    return DQ_FLOAT_LENGTHS if bs == 1 else [k * bs for k in DQ_BLOCKS[bs]]


@pytest.mark.parametrize("type_name", list(DQ_TYPES))
def test_dequantize_row_simd_matches_scalar_and_gguf(type_name):
    # Bit-exact everywhere, no ulp allowance: the SIMD kernels use FMA for d*q+m / d*q-m, but
    # there d*q is always exact in float32 (see kernels/cpu/avx2_quants.cpp), so the result
    # rounds as the reference's mul-then-add; and the reference equals gguf.quants on x86-64.
    gguf = pytest.importorskip("gguf")
    qt = gguf.GGMLQuantizationType[type_name]
    r = rng()
    for n in dq_lengths(type_name):
        for rep in range(3):
            data = random_row(r, type_name, n)
            assert data.size == DQ_TYPES[type_name][1] * n // DQ_TYPES[type_name][0]
            want = _core.k_dequantize_row("scalar", type_name, data, n)
            assert np.isfinite(want).all()
            oracle = gguf.quants.dequantize(data, qt).reshape(-1).astype(np.float32)
            assert_same_bits(want, oracle, f"scalar vs gguf {type_name} n={n}")
            for isa in SIMD:
                what = f"{isa} vs scalar {type_name} n={n}"
                assert_same_bits(_core.k_dequantize_row(isa, type_name, data, n), want, what)
                assert_same_bits(_core.k_dequantize_row(isa, type_name, misaligned(data), n), want,
                                 what + " (misaligned)")
                assert_same_bits(_core.k_dequantize_row(isa, type_name, data.tobytes(), n), want,
                                 what + " (bytes)")


@pytest.mark.parametrize("isa", SIMD)
def test_dequantize_row_f16_bf16_every_bit_pattern(isa):
    # All 65536 patterns, inf and NaN included: the SIMD kernels keep NaN payloads exactly
    # as the reference does (F16C alone would quiet signalling NaNs).
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    r = rng()
    bits = np.concatenate([bits, r.permutation(bits)[:1001]])  # plus a shuffled, odd-length tail
    for t in ("F16", "BF16"):
        want = _core.k_dequantize_row("scalar", t, bits.view(np.uint8), bits.size)
        assert_same_bits(_core.k_dequantize_row(isa, t, bits.view(np.uint8), bits.size), want, t)
        assert_same_bits(_core.k_dequantize_row(isa, t, misaligned(bits.view(np.uint8)), bits.size), want,
                         t + " misaligned")


@pytest.mark.parametrize("isa", SIMD)
def test_dequantize_row_extreme_scales(isa):
    # Largest finite, smallest subnormal and negative fp16 scales with every quant value:
    # still bit-exact (products may overflow to inf identically).
    r = rng()
    for type_name, (bs, size, fields) in DQ_TYPES.items():
        if not fields:
            continue
        nb = 4
        raw = r.integers(0, 256, (nb, size), dtype=np.uint8)
        for off in fields:
            vals = np.array([65504.0, -65504.0, 2.0 ** -24, -0.0], np.float16)
            raw[:, off:off + 2] = r.permutation(vals).view(np.uint8).reshape(nb, 2)
        data = raw.reshape(-1)
        want = _core.k_dequantize_row("scalar", type_name, data, nb * bs)
        assert_same_bits(_core.k_dequantize_row(isa, type_name, data, nb * bs), want, type_name)


def test_k_dequantize_row_bad_arguments():
    for isa in ["scalar"] + SIMD:
        with pytest.raises(_core.EoqError, match="34 bytes, got 33"):
            _core.k_dequantize_row(isa, "Q8_0", bytes(33), 32)
        with pytest.raises(_core.EoqError, match="block size"):
            _core.k_dequantize_row(isa, "Q4_K", bytes(144), 128)
        with pytest.raises(_core.EoqError, match="unknown GGML type"):
            _core.k_dequantize_row(isa, "Q9_9", bytes(4), 1)
        with pytest.raises(_core.EoqError, match="not supported"):
            _core.k_dequantize_row(isa, "IQ2_XS", bytes(74), 256)
        with pytest.raises(_core.EoqError, match="contiguous"):
            _core.k_dequantize_row(isa, "F32", np.zeros(16, np.uint8)[::2], 2)
    assert _core.k_dequantize_row("scalar", "Q6_K", b"", 0).shape == (0,)


# ---- attention kernels over one KV head: f16 rows and packed TurboQuant codes, nq query
# vectors at once (kernels.h scores_* / values_*). SIMD against the scalar reference, and the
# reference against NumPy on explicitly decoded rows. ----

ATT_D = [8, 16, 24, 48, 64, 100, 128]
ATT_M = [1, 7, 8, 9, 33, 256]
ATT_NQ = [1, 2, 3, 4, 5, 9]


def unpack_codes(codes, d, bits):
    """Little-endian bit fields: field j of a row is bits [j*bits, (j+1)*bits) (kernels/turboquant.h)."""
    bitsarr = np.unpackbits(codes, axis=1, bitorder="little")[:, : d * bits].reshape(codes.shape[0], d, bits)
    return (bitsarr.astype(np.int64) << np.arange(bits)).sum(axis=2)


def att_bound(terms_abs):
    # float32 sums of the same products in another order: a few ulp of the absolute sum.
    return 2e-6 * terms_abs + 1e-7


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
@pytest.mark.parametrize("d", ATT_D)
def test_attention_f16_kernels(isa, d):
    r = rng()
    for m in ATT_M:
        nq = int(r.choice(ATT_NQ))
        rows = (r.standard_normal((m, d)) * 3).astype(np.float16)
        q = r.standard_normal((nq, d)).astype(np.float32)
        rf = rows.astype(np.float64)
        want = q.astype(np.float64) @ rf.T
        got = _core.k_scores_f16(isa, rows.view(np.uint16), q)
        assert got.shape == (nq, m)
        assert np.all(np.abs(got - want) <= att_bound(np.abs(q) @ np.abs(rf).T)), (m, nq)
        w = r.random((nq, m)).astype(np.float32)
        acc = r.standard_normal((nq, d)).astype(np.float32)
        want = acc + w.astype(np.float64) @ rf
        got = _core.k_values_f16(isa, rows.view(np.uint16), w, acc)
        assert got.shape == (nq, d)
        assert np.all(np.abs(got - want) <= att_bound(np.abs(acc) + w @ np.abs(rf))), (m, nq)
        if isa != "scalar":  # both within the rounding bound of the exact sum, so within twice it of each other
            ref = _core.k_values_f16("scalar", rows.view(np.uint16), w, acc)
            assert np.all(np.abs(got - ref) <= 2 * att_bound(np.abs(acc) + w @ np.abs(rf))), (m, nq)


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_attention_code_kernels(isa, bits):
    # Rows are ρ_t · centroids[codes], ρ_t = scale · f16 norm (the sealed blocks' form).
    r = rng()
    for d in ATT_D:
        for m in ATT_M:
            nq = int(r.choice(ATT_NQ))
            rb = (d * bits + 7) // 8
            codes = r.integers(0, 256, (m, rb), dtype=np.uint8)
            cent = np.sort(r.standard_normal(2 ** bits)).astype(np.float32)
            norms = (r.random(m) * 4 + 0.01).astype(np.float16)
            scale = float(np.float32(1 / np.sqrt(d)))
            rho = norms.astype(np.float64) * scale
            rows = rho[:, None] * cent[unpack_codes(codes, d, bits)].astype(np.float64)  # [m, d]
            q = r.standard_normal((nq, d)).astype(np.float32)
            want = q.astype(np.float64) @ rows.T
            got = _core.k_scores_codes(isa, codes, d, bits, cent, q, norms.view(np.uint16), scale)
            assert got.shape == (nq, m)
            assert np.all(np.abs(got - want) <= att_bound(np.abs(q) @ np.abs(rows).T)), (d, m, nq)
            w = r.random((nq, m)).astype(np.float32)
            acc = r.standard_normal((nq, d)).astype(np.float32)
            want = acc + w.astype(np.float64) @ rows
            got = _core.k_values_codes(isa, codes, d, bits, cent, w, acc, norms.view(np.uint16), scale)
            assert got.shape == (nq, d)
            assert np.all(np.abs(got - want) <= att_bound(np.abs(acc) + w @ np.abs(rows))), (d, m, nq)
            if isa != "scalar":
                ref_s = _core.k_scores_codes("scalar", codes, d, bits, cent, q, norms.view(np.uint16), scale)
                np.testing.assert_allclose(_core.k_scores_codes(isa, codes, d, bits, cent, q, norms.view(np.uint16),
                                                                scale), ref_s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
def test_values_f32_chain_is_axpy_in_order(isa):
    # The tiled f16 attention's value sums: the bits of one axpy_f32 per row, rows in order.
    r = rng()
    for d in (1, 7, 8, 24, 64, 100, 128, 200):
        for m in (0, 1, 5, 64):
            v = r.standard_normal((m, d)).astype(np.float32)
            w = r.random(m).astype(np.float32)
            acc = r.standard_normal(d).astype(np.float32)
            want = acc.copy()
            for j in range(m):
                want = _core.k_axpy_f32(isa, float(w[j]), v[j], want)
            got = _core.k_values_f32_chain(isa, v.reshape(m, d), w, acc)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("isa", SIMD)
def test_scores_f32t_chain_same_bits_as_scalar(isa):
    # out[t] = fma chain over j of q[j]·kt[j][t]: every ISA rounds each step once, in j order.
    r = rng()
    for d in (1, 8, 64, 100):
        for m in (1, 7, 16, 33, 64, 100):
            kt = r.standard_normal((d, m)).astype(np.float32)
            q = r.standard_normal(d).astype(np.float32)
            want = _core.k_scores_f32t_chain("scalar", kt, q)
            np.testing.assert_array_equal(_core.k_scores_f32t_chain(isa, kt, q).view(np.uint32), want.view(np.uint32))


def cpu_has(flag):
    try:
        return f" {flag}" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def round_q8(x):
    """kernels.h scores_codes_q8's rounding: int8 round_half_even(x * (127 / max|x|)) in float32,
    and the scale max|x| / 127."""
    amax = np.float32(np.abs(x).max())
    return np.rint(x * (np.float32(127) / amax)).astype(np.int64), amax / np.float32(127)


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_scores_codes_q8_within_its_bound(isa, bits):
    # Whatever an ISA does (integers or float), each score is within the contract's bound of the
    # exact one: ρ_t (½ s_q Σ|c| + ½ s_c Σ|q| + ¾ s_q s_c d), plus float rounding.
    r = rng()
    for d in ATT_D:
        for m in ATT_M:
            nq = int(r.choice(ATT_NQ))
            codes = r.integers(0, 256, (m, (d * bits + 7) // 8), dtype=np.uint8)
            cent = np.sort(r.standard_normal(2 ** bits)).astype(np.float32)
            norms = (r.random(m) * 4 + 0.01).astype(np.float16)
            scale = float(np.float32(1 / np.sqrt(d)))
            rho = norms.astype(np.float64) * scale
            c = cent[unpack_codes(codes, d, bits)].astype(np.float64)  # [m, d]
            q = r.standard_normal((nq, d)).astype(np.float32)
            want = (q.astype(np.float64) @ c.T) * rho
            sq = np.abs(q).max(1, keepdims=True) / 127
            sc = np.abs(cent).max() / 127
            bound = rho * (0.5 * sq * np.abs(c).sum(1) + 0.5 * sc * np.abs(q).sum(1, keepdims=True) + 0.75 * sq * sc * d)
            got = _core.k_scores_codes_q8(isa, codes, d, bits, cent, q, norms.view(np.uint16), scale)
            assert got.shape == (nq, m)
            assert np.all(np.abs(got - want) <= bound + att_bound(np.abs(q) @ np.abs(c).T * rho)), (d, m, nq)


@pytest.mark.skipif(not ("avx512vnni" in _core.available_isas() and cpu_has("avx512vbmi")),
                    reason="the integer scores need AVX512-VBMI and VNNI")
def test_scores_codes_q8_avx512_is_the_integer_scheme():
    # The AVX-512 kernel computes (float)(Σ q8·c8) · (s_q s_c) · ρ_t exactly as specified (the
    # integer sum is exact, then two float products), for every shape it takes (codes of <= 3
    # bits in rows of <= 32 bytes, d a multiple of 16), tails of 1..7 rows and > 4 query vectors;
    # other shapes are the exact scores_codes.
    r = rng()
    for bits in (1, 2, 3, 4):
        for d in (16, 32, 48, 64, 80, 128, 256):
            rb = (d * bits + 7) // 8
            for m in (1, 3, 4, 5, 8, 9, 15, 16, 17, 64, 259):
                nq = int(r.choice([1, 3, 6]))
                codes = r.integers(0, 256, (m, rb), dtype=np.uint8)
                cent = np.sort(r.standard_normal(2 ** bits)).astype(np.float32)
                norms = (r.random(m) * 4 + 0.01).astype(np.float16)
                scale = np.float32(1 / np.sqrt(d))
                q = r.standard_normal((nq, d)).astype(np.float32)
                got = _core.k_scores_codes_q8("avx512vnni", codes, d, bits, cent, q, norms.view(np.uint16), scale)
                if bits > 3 or rb > 32 or d % 16:
                    exact = _core.k_scores_codes("avx512vnni", codes, d, bits, cent, q, norms.view(np.uint16), scale)
                    np.testing.assert_array_equal(got, exact)
                    continue
                c8, sc = round_q8(cent)
                rho = scale * norms.astype(np.float32)
                k = unpack_codes(codes, d, bits)
                for h in range(nq):
                    q8, sq = round_q8(q[h])
                    isum = (c8[k] * q8).sum(1)
                    want = isum.astype(np.float32) * np.float32(sq * sc) * rho
                    np.testing.assert_allclose(got[h], want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("isa", SIMD)
def test_attention_code_kernels_read_only_their_rows(isa):
    # The SIMD kernels read codes 4 bytes at a time; the last row must not read past the array
    # (a view ending exactly at a page would fault) and rows after m must not matter.
    r = rng()
    for bits in (1, 2, 3, 4, 5):
        d = 64
        rb = d * bits // 8
        codes = r.integers(0, 256, (10, rb), dtype=np.uint8)
        cent = np.linspace(-2, 2, 2 ** bits).astype(np.float32)
        q = r.standard_normal((3, d)).astype(np.float32)
        want = _core.k_scores_codes("scalar", codes[:5], d, bits, cent, q)
        junk = codes.copy()
        junk[5:] = 255 - junk[5:]
        np.testing.assert_allclose(_core.k_scores_codes(isa, junk[:5], d, bits, cent, q), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(_core.k_scores_codes_q8(isa, junk[:5], d, bits, cent, q),
                                      _core.k_scores_codes_q8(isa, codes[:5], d, bits, cent, q))


def _guarded_codes(data):
    """data copied to the end of a page that is followed by an inaccessible page, so that any
    read past its end faults."""
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(base + page, page, 0) == 0  # PROT_NONE
    arr = np.frombuffer(buf, np.uint8, count=data.size, offset=page - data.size).reshape(data.shape)
    arr[...] = data
    return buf, arr


@pytest.mark.parametrize("isa", SIMD)
def test_attention_code_kernels_never_read_past_the_codes(isa):
    # Every row length from 1 byte up, the codes ending exactly at an inaccessible page: a read
    # past the end would crash the test process.
    r = rng()
    for bits in (1, 2, 3, 4, 5):
        for d in (8, 16, 32, 64, 128):
            rb = (d * bits + 7) // 8
            for m in (1, 2, 3, 5, 17):
                codes = r.integers(0, 256, (m, rb), dtype=np.uint8)
                cent = np.linspace(-2, 2, 2 ** bits).astype(np.float32)
                q = r.standard_normal((3, d)).astype(np.float32)
                w = r.random((3, m)).astype(np.float32)
                acc = np.zeros((3, d), np.float32)
                buf, guarded = _guarded_codes(codes)
                np.testing.assert_allclose(_core.k_scores_codes(isa, guarded, d, bits, cent, q),
                                           _core.k_scores_codes("scalar", codes, d, bits, cent, q), rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(_core.k_scores_codes_q8(isa, guarded, d, bits, cent, q),
                                              _core.k_scores_codes_q8(isa, codes, d, bits, cent, q))
                np.testing.assert_allclose(_core.k_values_codes(isa, guarded, d, bits, cent, w, acc),
                                           _core.k_values_codes("scalar", codes, d, bits, cent, w, acc), rtol=1e-5,
                                           atol=1e-5)
                del guarded
                buf.close()


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
def test_decode_codes(isa):
    # Against NumPy's bit unpacking, every length from 0 and every field width; the stream ends
    # at an inaccessible page, so a read past its last byte would crash.
    r = rng()
    for bits in range(1, 9):
        for n in list(range(0, 40)) + [255, 256, 257, 511, 512, 513, 1000, 1024]:
            nb = (n * bits + 7) // 8
            codes = r.integers(0, 256, (1, max(nb, 1)), dtype=np.uint8)
            tab = r.standard_normal(2 ** bits).astype(np.float32)
            want = tab[unpack_codes(codes, n, bits)[0]] if n else np.zeros(0, np.float32)
            buf, guarded = _guarded_codes(codes[:, :nb] if nb else codes)
            got = _core.k_decode_codes(isa, guarded.reshape(-1), n, bits, tab)
            np.testing.assert_array_equal(got, want)
            del guarded
            buf.close()
    with pytest.raises(_core.EoqError):
        _core.k_decode_codes(isa, np.zeros(3, np.uint8), 7, 4, np.zeros(16, np.float32))  # 7 fields take 4 bytes


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
def test_decode_log_norms(isa):
    # Against the NumPy reference's decoding (tests/ref_kvcompress.py, from the format's
    # definition), every code and shift, lengths around the 32-row SIMD step; bit-exact.
    import ref_kvcompress as rk
    r = rng()
    for shift in range(rk.LOG_NORM_MIN_SHIFT, rk.LOG_NORM_MAX_SHIFT + 1):
        for n in (0, 1, 31, 32, 33, 255, 256, 300):
            codes = r.integers(0, 256, n, dtype=np.uint8)
            codes[: min(n, 2)] = [255, 0][: min(n, 2)]
            want = rk.log_norm_decode(codes, shift).astype(np.float16).view(np.uint16)
            np.testing.assert_array_equal(_core.k_decode_log_norms(isa, codes, shift), want)
    # the values are 2^(shift - c/32) to f16 precision, strictly falling with c
    v = rk.log_norm_values(0)
    np.testing.assert_allclose(v, 2.0 ** (-np.arange(255) / 32), rtol=2 ** -11)
    assert np.all(np.diff(v) < 0)
    with pytest.raises(_core.EoqError):
        _core.k_decode_log_norms(isa, np.zeros(4, np.uint8), 16)


def test_attention_kernels_bad_arguments():
    with pytest.raises(_core.EoqError):
        _core.k_scores_codes("scalar", np.zeros((3, 16), np.uint8), 64, 3, np.zeros(8, np.float32),
                             np.zeros((1, 64), np.float32))  # 64 3-bit codes take 24 bytes
    with pytest.raises(_core.EoqError):
        _core.k_scores_codes("scalar", np.zeros((3, 16), np.uint8), 64, 2, np.zeros(8, np.float32),
                             np.zeros((1, 64), np.float32))  # 2 bits: 4 centroids
    with pytest.raises(_core.EoqError):
        _core.k_values_f16("scalar", np.zeros((3, 8), np.uint16), np.zeros((2, 4), np.float32),
                           np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
def test_softmax_exp(isa):
    r = rng()
    for n in [1, 7, 8, 15, 16, 17, 100, 1000]:
        x = (r.standard_normal(n) * 20).astype(np.float32)
        x[r.integers(0, n)] = -200.0  # underflows to (nearly) 0
        mx = float(x.max()) + float(r.random())
        want = np.exp((x - np.float32(mx)).astype(np.float64))  # the difference rounds to float first
        got, s = _core.k_softmax_exp(isa, x, mx)
        # a few ulp of the float result; values below 2^-126 may flush to 0
        np.testing.assert_allclose(got, want, rtol=4e-7, atol=2.0 ** -125)
        assert abs(s - want.sum()) <= 1e-6 * want.sum() + 2.0 ** -120
    got, s = _core.k_softmax_exp(isa, np.array([0.0, -np.inf, -87.5, -1e30], np.float32), 0.0)
    assert got[0] == 1.0 and np.all(got[1:] < 2.0 ** -125) and s == 1.0


@pytest.mark.parametrize("isa", ["scalar"] + SIMD)
def test_max_f32(isa):
    r = rng()
    assert _core.k_max_f32(isa, np.zeros(0, np.float32)) == -np.inf
    for n in [1, 7, 8, 15, 16, 17, 33, 1000]:
        x = (r.standard_normal(n) * 10).astype(np.float32)
        assert _core.k_max_f32(isa, x) == x.max()
        x[r.integers(0, n)] = -np.inf
        assert _core.k_max_f32(isa, x) == x.max()


@pytest.mark.parametrize("mode", ["turbo2", "eoq2", "turbo4", "q8_0"])
def test_attention_split_across_threads(mode):
    # A decode step has few (query, KV head) items, so the compressed cache splits each KV head's
    # tokens into parts with their own online-softmax state, merged at the end (more threads,
    # more parts). Parts cut through sinks, blocks and the ring: the results must equal the
    # one-thread pass and attention over the explicitly dequantized cache.
    r = rng()
    d, hkv, nh, n = 32, 2, 6, 300
    k = (r.standard_normal((n, hkv, d)) + 2 * r.standard_normal((1, hkv, d))).astype(np.float32)
    v = r.standard_normal((n, hkv, d)).astype(np.float32)
    params = dict(mode=mode, block=32, ring=32, sinks=3, exact_scores=True)
    caches = [_core.KVCacheTester(params, 1, hkv, d, n, n_threads=nt) for nt in (1, 2, 3, 5)]
    # the default int8 scores (kernels.h scores_codes_q8) do not depend on the split either
    fast = [_core.KVCacheTester(dict(params, exact_scores=False), 1, hkv, d, n, n_threads=nt) for nt in (1, 2, 5)]
    for c in fast:
        c.append(0, k[:200], v[:200])
        c.append(0, k[200:], v[200:])
    for c in caches:
        c.append(0, k[:200], v[:200])
        c.append(0, k[200:], v[200:])
    K, V = caches[0].dequantized(0)
    for pos in (n - 1, 150, 40):
        q = r.standard_normal((1, nh, d)).astype(np.float32)
        outs = [c.attend(0, pos, q) for c in caches]
        ref = np.zeros((nh, d))
        for h in range(nh):
            kk, vv = K[: pos + 1, h // (nh // hkv)].astype(np.float64), V[: pos + 1, h // (nh // hkv)].astype(np.float64)
            s = kk @ q[0, h].astype(np.float64) / np.sqrt(d)
            w = np.exp(s - s.max())
            ref[h] = w @ vv / w.sum()
        scale = np.abs(ref).max()
        for o in outs:
            assert np.abs(o[0] - ref).max() / scale < 2e-5
            assert np.abs(o - outs[0]).max() / scale < 1e-5
        fo = [c.attend(0, pos, q) for c in fast]
        for o in fo:
            assert np.abs(o - fo[0]).max() / scale < 1e-5
