"""The q8s decode products (repacked Q4_0 / Q8_0 / Q6_K, Q4_K as it is) (kernels/cuda/matvec_soa.cu) against NumPy: the
activations quantized as the kernel's q8s format specifies (the CPU's Q8_0 rounding), the dots
in float64 over the dequantized weights; the fused RMSNorm + quantization and the fused SwiGLU;
and the repacked layout's f16 dequantization (prefill tiles) bit for bit."""
import numpy as np
import pytest

from eoq import _core

gguf = pytest.importorskip("gguf")
REASON = _core.cuda.unavailable_reason(0)
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"no usable GPU: {REASON}")
QT = {"Q4_0": gguf.GGMLQuantizationType.Q4_0, "Q8_0": gguf.GGMLQuantizationType.Q8_0,
      "Q4_K": gguf.GGMLQuantizationType.Q4_K, "Q6_K": gguf.GGMLQuantizationType.Q6_K}


def weights(rng, name, n_rows, n_cols):
    if name in ("Q4_K", "Q6_K"):  # gguf cannot quantize K-quants: valid random super-blocks
        from test_cuda_matvec import random_weights

        q = random_weights(rng, name, n_rows, n_cols)
    else:
        w = (rng.standard_normal((n_rows, n_cols)) * 0.05).astype(np.float32)
        q = gguf.quants.quantize(w, QT[name])
    return q, gguf.quants.dequantize(q, QT[name]).reshape(n_rows, n_cols).astype(np.float64)


def q8s_values(x):
    """x [n_tok][n] -> the dequantized q8s activations (d_a * q_a), float64."""
    b = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
    with np.errstate(divide="ignore"):
        idv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(b * idv), -128, 127)
    return (q * d).reshape(x.shape)


def nerr(a, b):
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("n_rows,n_cols", [(96, 4096), (577, 256), (1536, 768)])
@pytest.mark.parametrize("n_tok", [1, 3, 8])
def test_mul_mat_vec_soa(name, n_rows, n_cols, n_tok):
    rng = np.random.default_rng([n_rows, n_cols, n_tok])
    q, wf = weights(rng, name, n_rows, n_cols)
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
    got = _core.cuda.mul_mat_vec_soa(int(QT[name]), q, n_cols, x)
    ref = q8s_values(x) @ wf.T
    # exact integer block sums; float32 per-block products and sums: ~1e-6 of the norm
    assert nerr(got, ref) < 2e-5
    assert nerr(got, x.astype(np.float64) @ wf.T) < 2e-2  # and close to the unrounded product


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_fused_rms_norm_and_swiglu(name):
    rng = np.random.default_rng(7)
    n_rows, n_cols, n_tok = 300, 512, 2
    qg, wg = weights(rng, name, n_rows, n_cols)
    qu, wu = weights(rng, name, n_rows, n_cols)
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32) * 3
    nw = (1 + 0.1 * rng.standard_normal(n_cols)).astype(np.float32)
    got = _core.cuda.mul_mat_vec_soa(int(QT[name]), qg, n_cols, x, w2=qu, norm_w=nw, eps=1e-5)
    # the kernel's float32 arithmetic (squares summed in double), so the quantization sees the same values
    ss = (x * x).astype(np.float64).sum(1, keepdims=True)
    mean = (ss / n_cols).astype(np.float32)
    scale = np.float32(1) / np.sqrt(mean + np.float32(1e-5))
    xn = (x * scale) * nw
    xa = q8s_values(xn)
    g, u = xa @ wg.T, xa @ wu.T
    ref = g / (1 + np.exp(-g)) * u
    assert nerr(got, ref) < 1e-4


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q6_K"])
def test_dequantize_soa_bits(name):
    rng = np.random.default_rng(3)
    q, wf = weights(rng, name, 40, 512)
    got = _core.cuda.dequantize_soa(int(QT[name]), q, 512, 5, 30)
    want = wf[5:35].astype(np.float32).astype(np.float16).astype(np.float32)
    if name == "Q6_K":  # d·sc·q: the float product's order may differ from gguf's by an ulp
        np.testing.assert_allclose(got, want, rtol=2 ** -10, atol=0)
    else:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
