"""Reference weight kernels (_core.dequantize_row / vec_dot / quantize_row_q8_0) against the
independent gguf package's numpy implementations (gguf.quants)."""
import os
import platform
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
import eoq  # noqa: E402
from eoq import _core  # noqa: E402

QT = gguf.GGMLQuantizationType

# Types gguf.quants can quantize: random floats go through it. K-quants it can only
# dequantize: random bytes with the fp16 scale fields overwritten with finite values.
QUANTIZABLE = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16", "F32"]
# name -> (block bytes, byte offsets of the fp16 scale fields within a block)
RANDOM_BYTES = {
    "Q4_0": (18, [0]), "Q4_1": (20, [0, 2]), "Q5_0": (22, [0]), "Q5_1": (24, [0, 2]),
    "Q8_0": (34, [0]), "Q2_K": (84, [80, 82]), "Q3_K": (110, [108]),
    "Q4_K": (144, [0, 2]), "Q5_K": (176, [0, 2]), "Q6_K": (210, [208]),
}
BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32,
         "Q5_1": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
ALL_TYPES = list(BLOCK)

# Several fixed seeds plus one fresh per run (printed in the test id / failure message).
RUN_SEED = int(os.environ.get("EOQ_TEST_SEED", time.time_ns() % 2**32))
SEEDS = [0, 1, 12345, RUN_SEED]


def expect_equal(got, ref, what):
    """The reference kernels evaluate in GGML's order in float32; on x86-64 (no FMA
    contraction in the baseline ISA) they are bit-identical to gguf.quants. Elsewhere a
    compiler may fuse d*q+m, so allow float32 rounding of the terms."""
    assert got.dtype == np.float32 and got.shape == ref.shape, what
    if platform.machine() in ("x86_64", "AMD64"):
        bad = np.flatnonzero(got.view(np.uint32) != ref.astype(np.float32).view(np.uint32))
        assert bad.size == 0, f"{what}: {bad.size} mismatches, first at {bad[0]}: " \
                              f"{got[bad[0]]} vs {ref[bad[0]]}"
    else:
        scale = np.max(np.abs(ref)) if ref.size else 0.0
        np.testing.assert_allclose(got, ref, rtol=4e-7, atol=4e-7 * scale, err_msg=what)


def random_fp16(rng, n, lo=-4.0, hi=4.0):
    """n finite fp16 values as uint16 bits: moderate, with some zeros and subnormals."""
    v = rng.uniform(lo, hi, n).astype(np.float16)
    k = rng.integers(0, 8, n)
    v[k == 0] = 0
    sub = (k == 1)
    v[sub] = (rng.integers(1, 0x3ff, sub.sum()).astype(np.uint16)).view(np.float16)
    return v.view(np.uint16)


def random_blocks(rng, type_name, n_blocks):
    size, fields = RANDOM_BYTES[type_name]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in fields:
        raw[:, off:off + 2] = random_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw


def quantized_rows(rng, type_name, n):
    x = (rng.standard_normal(n) * rng.uniform(0.01, 10)).astype(np.float32)
    if type_name == "F32":
        return x.view(np.uint8).copy()
    return gguf.quants.quantize(x.reshape(1, n), QT[type_name]).reshape(-1)


def cases(rng, type_name):
    """(label, bytes, n) rows for one type: quantized from floats and/or random bytes."""
    out = []
    for n_blocks in (1, 3, 8):
        n = n_blocks * max(BLOCK[type_name], 32)
        if type_name in QUANTIZABLE:
            out.append((f"quantized n={n}", quantized_rows(rng, type_name, n), n))
        if type_name in RANDOM_BYTES:
            nb = n // BLOCK[type_name]
            out.append((f"random n={n}", random_blocks(rng, type_name, nb).reshape(-1), n))
    return out


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_dequantize_row(type_name, seed):
    rng = np.random.default_rng(seed)
    for label, data, n in cases(rng, type_name):
        ref = gguf.quants.dequantize(data, QT[type_name]).reshape(-1)
        got = _core.dequantize_row(type_name, data, n)
        expect_equal(got, ref, f"{type_name} {label} seed={seed}")
        # bytes objects work as well as uint8 arrays
        expect_equal(_core.dequantize_row(type_name, data.tobytes(), n), ref, "bytes input")


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_vec_dot(type_name, seed):
    rng = np.random.default_rng(seed + 1000)
    for label, data, n in cases(rng, type_name):
        w = gguf.quants.dequantize(data, QT[type_name]).reshape(-1).astype(np.float64)
        x = rng.standard_normal(n).astype(np.float32)
        prods = w * x.astype(np.float64)
        ref = prods.sum()
        got = _core.vec_dot(type_name, data, x)
        # float32 accumulation over n terms stays within ~sqrt(n) eps of sum|w x| in practice;
        # a wrong layout is off by O(1) of it. (The reference accumulates in double.)
        tol = 8 * np.sqrt(n) * 2.0**-24 * np.abs(prods).sum() + 1e-30
        assert abs(got - ref) <= tol, f"{type_name} {label} seed={seed}: {got} vs {ref}"


def test_vec_dot_empty_and_float64_x():
    assert _core.vec_dot("Q8_0", b"", np.zeros(0, np.float32)) == 0.0
    x = np.arange(32, dtype=np.float64)  # converted to float32
    data = np.arange(32, dtype=np.float32).view(np.uint8)
    assert _core.vec_dot("F32", data, x) == float(np.dot(np.arange(32.0), np.arange(32.0)))


def test_f16_bf16_exhaustive():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for t in ("F16", "BF16"):
        got = _core.dequantize_row(t, bits.view(np.uint8), 65536)
        ref = gguf.quants.dequantize(bits.view(np.uint8), QT[t]).reshape(-1).astype(np.float32)
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan), t
        assert np.array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32)), t


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_quantize_row_q8_0(seed):
    rng = np.random.default_rng(seed + 2000)
    blocks = []
    for _ in range(64):
        scale = 10.0 ** rng.uniform(-6, 4)
        blocks.append((rng.standard_normal(32) * scale).astype(np.float32))
    blocks.append(np.zeros(32, np.float32))  # d = 0
    # exact ties: amax 127 gives d = 1, id = 1, so k + 0.5 must round half away from zero
    tie = np.array([127.0] + [k + 0.5 for k in range(-15, 16)], np.float32)
    blocks.append(tie)
    x = np.concatenate(blocks)
    got = _core.quantize_row_q8_0(x)
    ref = gguf.quants.quantize(x.reshape(-1, 32), QT.Q8_0).reshape(-1)
    assert got.dtype == np.uint8 and got.shape == ref.shape
    # Both sides compute d = amax/127 and q = round_half_away(x * (1/d)) in float32 with the
    # same operations, so the bytes are expected to be identical. (If a platform ever
    # evaluated x*id differently, a tie could flip one q by 1: that would show up here.)
    mism = np.flatnonzero(got != ref)
    assert mism.size == 0, f"seed={seed}: {mism.size} bytes differ, first at {mism[0]}"
    q = got[-32:].view(np.int8)  # tie block: q for k + 0.5 is k+1 for k >= 0 and k for k < 0
    assert q[0] == 127
    assert list(q[1:]) == [(k + 1 if k >= 0 else k) for k in range(-15, 16)]
    # round trip through the dequantizer
    back = _core.dequantize_row("Q8_0", got, x.size)
    np.testing.assert_array_equal(back, gguf.quants.dequantize(ref, QT.Q8_0).reshape(-1))


def test_bad_arguments():
    with pytest.raises(eoq.EoqError) as ei:
        _core.dequantize_row("Q8_0", bytes(33), 32)
    assert ei.value.code == "invalid_arg" and "34 bytes, got 33" in str(ei.value)
    with pytest.raises(eoq.EoqError, match="block size 32"):
        _core.dequantize_row("Q4_0", bytes(18), 16)
    with pytest.raises(eoq.EoqError, match="block size"):
        _core.dequantize_row("F32", bytes(4), -1)
    with pytest.raises(eoq.EoqError, match="unknown GGML type name 'Q9_9'"):
        _core.dequantize_row("Q9_9", bytes(4), 1)
    with pytest.raises(eoq.EoqError) as ei:
        _core.dequantize_row("IQ2_XS", bytes(74), 256)
    assert ei.value.code == "unsupported"
    with pytest.raises(eoq.EoqError, match="bytes, got"):
        _core.vec_dot("Q6_K", bytes(209), np.zeros(256, np.float32))
    with pytest.raises(eoq.EoqError, match="1-D"):
        _core.vec_dot("F32", bytes(16), np.zeros((2, 2), np.float32))
    with pytest.raises(eoq.EoqError, match="contiguous"):
        _core.dequantize_row("F32", np.zeros(16, np.uint8)[::2], 2)
    with pytest.raises(eoq.EoqError, match="multiple of 32"):
        _core.quantize_row_q8_0(np.zeros(31, np.float32))


def test_seed_reported():
    # The fresh seed of this run, for reproducing a failure: EOQ_TEST_SEED=<seed> pytest ...
    print(f"test_quants RUN_SEED={RUN_SEED}")
