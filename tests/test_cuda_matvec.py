"""CUDA decode kernels (kernels/cuda/quantize.cu, matvec.cu, dequantize.cu) against NumPy, through
the _core.cuda test hooks (bindings/bind_cuda_matvec.cpp). Skipped without a usable GPU.

Weights are fresh random GGUF rows: quantized by the gguf package where it can (legacy types,
F16, BF16, F32), random bytes with small positive f16 scales for the K-quants, which gguf can only
dequantize. gguf.quants.dequantize is the oracle for the weight values.

Error bounds, as ||y - ref|| / ||ref|| over the whole output:
  * float weights (F32/F16/BF16): 2e-5. The kernel multiplies the exact weight values by the float
    activations with float32 FMAs; only the float32 accumulation rounds (a few 1e-6 for 4096 terms).
  * quantized weights: 5e-5 against x~ @ W^T, x~ = the Q8_1 activations the kernel itself produced
    (d * q): the per-block integer dots are exact, only the float scaling and accumulation round.
    And 2e-2 against the exact float x: Q8_1 rounds each activation by up to amax/254 of its
    block, about 0.6% RMS of the activations for Gaussian x, which passes into the product as
    such.
"""
import os

import numpy as np
import pytest

from eoq import _core

_cuda = getattr(_core, "cuda", None)
if _cuda is None or not hasattr(_cuda, "unavailable_reason"):
    reason = "this build has no _core.cuda"
else:
    reason = _cuda.unavailable_reason(0)
    if not reason and not hasattr(_cuda, "mul_mat_vec"):
        reason = "this build has no CUDA mat-vec hooks"
pytestmark = pytest.mark.skipif(bool(reason), reason=reason or "")

gguf = pytest.importorskip("gguf")
QT = gguf.GGMLQuantizationType

FLOAT_TYPES = ["F32", "F16", "BF16"]
LEGACY_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ALL_TYPES = FLOAT_TYPES + LEGACY_TYPES + K_TYPES
# K-quant block bytes and the offsets of their f16 scale fields (kernels/quant_blocks.h)
K_BLOCK = {"Q2_K": (84, [80, 82]), "Q3_K": (110, [108]), "Q4_K": (144, [0, 2]), "Q5_K": (176, [0, 2]),
           "Q6_K": (210, [208])}

# (n_rows, n_cols): several 16-row tiles plus a remainder, with 4096 columns (16 chunks of 256,
# split over up to 8 warps); one chunk (no split); SmolLM2's 576 (a partial last chunk) or, for
# the K-quants (256-value blocks), 1536.
SHAPES = {t: [(37, 4096), (45, 256), (61, 576)] for t in FLOAT_TYPES + LEGACY_TYPES}
SHAPES.update({t: [(37, 4096), (45, 256), (29, 1536)] for t in K_TYPES})
N_TOK = [1, 3, 8]

F32_BOUND = 2e-5
Q_TIGHT = 5e-5
Q_LOOSE = 2e-2


def random_weights(rng, type_name, n_rows, n_cols):
    """uint8 [n_rows][row_bytes] of GGUF rows of type_name."""
    if type_name in K_BLOCK:
        size, fields = K_BLOCK[type_name]
        n_blocks = n_rows * n_cols // 256
        raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
        for off in fields:
            scale = rng.uniform(0.5, 1.5, n_blocks).astype(np.float16) * np.float16(1 / 64)
            raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        return raw.reshape(n_rows, -1)
    x = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if type_name == "F32":
        return x.view(np.uint8)
    if type_name == "F16":
        return x.astype(np.float16).view(np.uint8)
    return np.ascontiguousarray(gguf.quants.quantize(x, QT[type_name]))


def weight_values(type_name, w, n_cols):
    """float32 [n_rows][n_cols], the oracle."""
    return gguf.quants.dequantize(w, QT[type_name]).reshape(w.shape[0], n_cols).astype(np.float32)


def q8_1_reference(x):
    """The CPU's Q8_1 formula (kernels/quant_dot.h) in NumPy: per block of 32, d = amax / 127 as f16,
    q = round half to even of x * (127 / amax), s = f16(d * sum q) with d in float32."""
    b = np.asarray(x, np.float32).reshape(-1, 32)
    amax = np.max(np.abs(b), axis=1)
    d = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.clip(np.rint(b * inv[:, None]), -128, 127).astype(np.int8)
    s = d * q.astype(np.int32).sum(axis=1).astype(np.float32)
    out = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2),
                          s.astype(np.float16).view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)
    return out.reshape(x.shape[0], -1)


def q8_1_values(xq, n):
    """float64 [n_tok][n]: d * q of Q8_1 rows."""
    blocks = xq.reshape(-1, 36)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
    q = blocks[:, 4:].view(np.int8).astype(np.float64)
    return (d * q).reshape(xq.shape[0], n)


def rel_err(y, ref):
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def activations(rng, n_tok, n_cols):
    return (rng.standard_normal((n_tok, n_cols)) * rng.uniform(0.1, 3.0)).astype(np.float32)


# ---- quantize_q8_1 ------------------------------------------------------------------------------


def test_quantize_q8_1_matches_cpu_formula():
    rng = np.random.default_rng(1)
    x = activations(rng, 3, 4096)
    x[0, :32] = 0.0                                      # amax = 0: d = s = 0, q = 0
    x[1, :32] = np.arange(32, dtype=np.float32) - 16.5   # exact halves at id = 127 / 16.5
    x[1, 32:64] = 0.0
    x[1, 32] = 127.0                                     # id = 1: the other values round as they are
    x[1, 33:40] = [0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5]   # ties go to even
    got = _cuda.quantize_q8_1(x)
    ref = q8_1_reference(x)
    assert got.dtype == np.uint8 and got.shape == ref.shape == (3, 4096 // 32 * 36)
    bad = np.argwhere(got != ref)
    assert bad.size == 0, f"{len(bad)} bytes differ, first at {bad[0]}: {got[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"


# ---- mul_mat_vec --------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tok", N_TOK)
@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_mul_mat_vec(type_name, n_tok):
    rng = np.random.default_rng([ALL_TYPES.index(type_name), n_tok])
    for n_rows, n_cols in SHAPES[type_name]:
        w = random_weights(rng, type_name, n_rows, n_cols)
        wv = weight_values(type_name, w, n_cols).astype(np.float64)
        x = activations(rng, n_tok, n_cols)
        y = _cuda.mul_mat_vec(int(QT[type_name]), w, n_cols, x)
        assert y.dtype == np.float32 and y.shape == (n_tok, n_rows)
        ref = x.astype(np.float64) @ wv.T
        what = f"{type_name} {n_rows}x{n_cols} n_tok={n_tok}"
        if type_name in FLOAT_TYPES:
            assert rel_err(y, ref) < F32_BOUND, f"{what}: {rel_err(y, ref):.3g}"
        else:
            ref_q = q8_1_values(_cuda.quantize_q8_1(x), n_cols) @ wv.T
            assert rel_err(y, ref_q) < Q_TIGHT, f"{what}: {rel_err(y, ref_q):.3g} against the Q8_1 activations"
            assert rel_err(y, ref) < Q_LOOSE, f"{what}: {rel_err(y, ref):.3g} against the float activations"


@pytest.mark.parametrize("type_name", ["F16", "Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_mul_mat_vec_accumulate(type_name):
    rng = np.random.default_rng(7)
    n_rows, n_cols, n_tok = 53, 1024, 3
    w = random_weights(rng, type_name, n_rows, n_cols)
    wv = weight_values(type_name, w, n_cols).astype(np.float64)
    x = activations(rng, n_tok, n_cols)
    y0 = rng.standard_normal((n_tok, n_rows)).astype(np.float32) * 10
    xv = x.astype(np.float64) if type_name == "F16" else q8_1_values(_cuda.quantize_q8_1(x), n_cols)
    ref = xv @ wv.T
    y = _cuda.mul_mat_vec(int(QT[type_name]), w, n_cols, x, y0, True)
    assert rel_err(y - y0, ref) < 1e-4
    y = _cuda.mul_mat_vec(int(QT[type_name]), w, n_cols, x, y0, False)  # overwrite: y0 ignored
    assert rel_err(y, ref) < (F32_BOUND if type_name == "F16" else Q_TIGHT)


def test_mul_mat_vec_many_rows():
    """A tall matrix: thousands of CTAs of one warp each (no column split)."""
    rng = np.random.default_rng(11)
    for type_name in ["Q4_0", "Q6_K"]:
        n_rows, n_cols = 20000, 256
        w = random_weights(rng, type_name, n_rows, n_cols)
        wv = weight_values(type_name, w, n_cols).astype(np.float64)
        x = activations(rng, 1, n_cols)
        y = _cuda.mul_mat_vec(int(QT[type_name]), w, n_cols, x)
        ref_q = q8_1_values(_cuda.quantize_q8_1(x), n_cols) @ wv.T
        assert rel_err(y, ref_q) < Q_TIGHT, type_name


def test_mul_mat_vec_refuses():
    rng = np.random.default_rng(3)
    w = random_weights(rng, "Q4_0", 8, 576)
    with pytest.raises(Exception):  # K-quant rows need a multiple of 256 values
        _cuda.mul_mat_vec(int(QT.Q4_K), np.zeros((8, 2 * 144), np.uint8), 576, np.zeros((1, 576), np.float32))
    with pytest.raises(Exception):  # at most 8 tokens
        _cuda.mul_mat_vec(int(QT.Q4_0), w, 576, np.zeros((9, 576), np.float32))


# ---- dequantize_f16, get_rows -------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_dequantize_f16(type_name):
    rng = np.random.default_rng([100, ALL_TYPES.index(type_name)])
    n_cols = 4096 + 512  # two CTAs per row for the quantized types, the second partial
    n_rows = 9
    w = random_weights(rng, type_name, n_rows, n_cols)
    ref = weight_values(type_name, w, n_cols).astype(np.float16)
    got = _cuda.dequantize_f16(int(QT[type_name]), w, n_cols, 2, 5)
    assert got.dtype == np.float16 and got.shape == (5, n_cols)
    bad = np.argwhere(got.view(np.uint16) != ref[2:7].view(np.uint16))
    assert bad.size == 0, f"{len(bad)} values differ, first at {bad[0]}: {got[tuple(bad[0])]} vs {ref[2:7][tuple(bad[0])]}"


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_get_rows(type_name):
    rng = np.random.default_rng([200, ALL_TYPES.index(type_name)])
    n_rows, n_cols = 11, 1536
    w = random_weights(rng, type_name, n_rows, n_cols)
    ref = weight_values(type_name, w, n_cols)
    ids = np.array([3, 0, 10, -1, 7, 11, 3], np.int32)  # -1 and 11 are out of range: zero rows
    got = _cuda.get_rows(int(QT[type_name]), w, n_cols, ids)
    assert got.dtype == np.float32 and got.shape == (len(ids), n_cols)
    for i, r in enumerate(ids):
        want = ref[r] if 0 <= r < n_rows else np.zeros(n_cols, np.float32)
        assert np.array_equal(got[i].view(np.uint32), want.view(np.uint32)), f"row {i} (id {r})"


# ---- speed (EOQ_CUDA_BENCH=1 only) --------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("EOQ_CUDA_BENCH"), reason="set EOQ_CUDA_BENCH=1 to time the mat-vec")
def test_bench_mul_mat_vec():
    """Prints GB/s of weight bytes read per call for the Llama-3-8B decode shapes."""
    shapes = [(4096, 4096), (14336, 4096), (4096, 14336), (128256, 4096), (1536, 576), (49152, 576)]
    lines = []
    for type_name in ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "Q4_1", "Q5_0", "F16", "BF16"]:
        for n_rows, n_cols in shapes:
            if type_name in K_TYPES and n_cols % 256:
                continue
            qt = QT[type_name]
            bs, ts = gguf.GGML_QUANT_SIZES[qt]
            nbytes = n_rows * n_cols // bs * ts
            for n_tok in [1, 8]:
                t = _cuda.mul_mat_vec_time(int(qt), n_rows, n_cols, n_tok, 50)
                lines.append(f"{type_name:5} {n_rows:6}x{n_cols:<5} n_tok={n_tok}  {nbytes / 1e6:8.1f} MB"
                             f"  {t * 1e6:8.1f} us  {nbytes / t / 1e9:7.0f} GB/s")
    print("\n" + "\n".join(lines))
