"""The CUDA prefill product (kernels/cuda/gemm.cu) against NumPy float64: C = A · B^T with f16 A
[M][K] and B [N][K], f32 output, through both backends (cuBLAS only where it loads), plus the
f32 -> f16 conversion.

Error bounds. Each product of two f16 values is exact in f32 (11 + 11 significant bits), so the
only error is the f32 accumulation of K terms, judged against the exact product of the
f16-rounded inputs:
  * per element, the classic dot-product bound |c - ref| <= γ_K Σ_k |a_k b_k| with γ_K ≈ K·u
    (u = 2^-24), taken as 4·K·u to allow the tensor cores' truncating additions (2u per step)
    and any split of K;
  * in norm, ||c - ref|| / ||ref|| <= 2e-6·sqrt(K): random-sign rounding errors grow like
    u·sqrt(K/2) ≈ 4e-8·sqrt(K); the 50x margin covers truncation and blocked orders, while a
    wrong index or a missing k tile gives errors of 1e-3 and more.
"""

import os

import numpy as np
import pytest

from eoq import _core

reason = _core.cuda.unavailable_reason(0)
pytestmark = pytest.mark.skipif(bool(reason), reason=reason or "")

U32 = 2.0**-24  # float32 unit roundoff


@pytest.fixture(params=["wmma", "cublas"])
def backend(request):
    if request.param == "cublas":
        why = _core.cuda.cublas_unavailable_reason()
        if why:
            pytest.skip(f"cuBLAS cannot be loaded here: {why}")
    return request.param


def f16_inputs(rng, M, N, K):
    a = rng.standard_normal((M, K), dtype=np.float32).astype(np.float16)
    b = rng.standard_normal((N, K), dtype=np.float32).astype(np.float16)
    return a, b


def check_product(c, a, b, c0=None):
    """c [M][N] against c0 + a @ b.T computed in float64 from the f16 values."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    K = a.shape[1]
    ref = a64 @ b64.T
    abs_sum = np.abs(a64) @ np.abs(b64).T  # Σ_k |a_k b_k|, the dot products' error scale
    bound = 4 * K * U32 * abs_sum
    if c0 is not None:
        ref = ref + c0.astype(np.float64)
        bound = bound + 2 * U32 * (np.abs(c0) + abs_sum)  # the final f32 addition of c0
    assert np.all(np.isfinite(c))
    err = np.abs(c.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"element {worst}: error {err[worst]:.3g} > bound {bound[worst]:.3g}"
    rel = np.linalg.norm(c - ref) / np.linalg.norm(ref)
    assert rel <= 2e-6 * np.sqrt(K), f"normalized error {rel:.3g}"


@pytest.mark.parametrize("K", [64, 576, 4096])
@pytest.mark.parametrize("N", [96, 577, 4096])
@pytest.mark.parametrize("M", [1, 7, 64, 512])
def test_gemm_shapes(backend, M, N, K):
    rng = np.random.default_rng(1000003 * M + 1009 * N + K)
    a, b = f16_inputs(rng, M, N, K)
    c = _core.cuda.gemm_f16(a, b, backend=backend)
    assert c.shape == (M, N) and c.dtype == np.float32
    check_product(c, a, b)


@pytest.mark.parametrize("M,N,K", [(1, 96, 64), (7, 577, 576), (64, 4096, 64), (300, 577, 4096)])
def test_gemm_accumulate_and_ldc(backend, M, N, K):
    rng = np.random.default_rng(7 * M + N + K)
    a, b = f16_inputs(rng, M, N, K)
    ldc = N + 5  # odd row stride: columns N..ldc-1 must stay as they were
    c0 = rng.standard_normal((M, ldc), dtype=np.float32)
    c = _core.cuda.gemm_f16(a, b, c0, accumulate=True, backend=backend, ldc=ldc)
    assert c.shape == (M, ldc)
    check_product(c[:, :N], a, b, c0[:, :N])
    assert np.array_equal(c[:, N:], c0[:, N:])
    # Without accumulate, C is not read (it starts as NaN bits) and the padding stays untouched.
    c = _core.cuda.gemm_f16(a, b, backend=backend, ldc=ldc)
    check_product(c[:, :N], a, b)
    assert np.all(c[:, N:].view(np.uint32) == 0xFFFFFFFF)


def test_gemm_automatic_choice():
    name = _core.cuda.gemm_backend()
    assert name in ("cublas", "wmma")
    if os.environ.get("EOQ_GEMM") == "wmma":
        assert name == "wmma"
    elif _core.cuda.cublas_unavailable_reason() == "":
        assert name == "cublas"
    rng = np.random.default_rng(5)
    a, b = f16_inputs(rng, 100, 300, 320)
    check_product(_core.cuda.gemm_f16(a, b), a, b)
    assert _core.cuda.gemm_backend() == name  # a successful call keeps the choice


def test_gemm_k_not_multiple_of_32():
    rng = np.random.default_rng(6)
    a, b = f16_inputs(rng, 9, 40, 48)
    with pytest.raises(_core.EoqError, match="refused"):
        _core.cuda.gemm_f16(a, b, backend="wmma")
    if _core.cuda.cublas_unavailable_reason() == "":
        check_product(_core.cuda.gemm_f16(a, b, backend="cublas"), a, b)


def test_gemm_bad_arguments():
    a = np.zeros((4, 64), np.float16)
    with pytest.raises(_core.EoqError):
        _core.cuda.gemm_f16(a, np.zeros((8, 32), np.float16))  # K differs
    with pytest.raises(_core.EoqError):
        _core.cuda.gemm_f16(a, np.zeros((8, 64), np.float16), backend="tpu")
    with pytest.raises(_core.EoqError):
        _core.cuda.gemm_f16(a.astype(np.float32), np.zeros((8, 64), np.float16))


def test_convert_f32_f16():
    rng = np.random.default_rng(8)
    n = 4099  # four at a time, then a tail of 3
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(100)
    x[:8] = [0.0, -0.0, 65504.0, 65519.0, 65520.0, -1e6, 3e-8, -6e-5]  # max, rounding to inf, subnormals
    got = _core.cuda.convert_f32_f16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    # NumPy rounds float32 to float16 to nearest even, as __float2half_rn: the bits must agree.
    with np.errstate(over="ignore"):  # the values beyond the f16 range become inf on purpose
        want = x.astype(np.float16)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
