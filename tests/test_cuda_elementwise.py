"""The CUDA elementwise kernels (kernels/cuda/norm.cu, rope.cu, swiglu.cu, add.cu) against
NumPy float64 references of the CPU scalar code (kernels/ref/ops.cpp, kernels/ref/vec.cpp).
Bounds are per element, in float32 ulps of the result (1 ulp <= 2^-23 relative), stated per op."""

import numpy as np
import pytest

from eoq import _core

reason = _core.cuda.unavailable_reason(0)
pytestmark = pytest.mark.skipif(bool(reason), reason=reason or "")

SIZES = [577, 4096, 14336]


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("n_tok", [1, 3])
@pytest.mark.parametrize("n", SIZES)
def test_rms_norm(n, n_tok, in_place):
    rng = np.random.default_rng(n + n_tok)
    x = rng.standard_normal((n_tok, n), dtype=np.float32) * np.float32(3)
    w = rng.standard_normal(n, dtype=np.float32)
    eps = 1e-5
    got = _core.cuda.rms_norm(x, w, eps, in_place=in_place)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True) + eps) * w
    # The sum of squares in double (as the CPU), then float roundings: the mean, + eps, sqrt,
    # 1/., and two products: at most ~2.5 ulp relative; 1e-6 is ~8 ulp.
    assert np.all(np.abs(got - ref) <= 1e-6 * np.abs(ref))


def rope_ref(x, n_rot, pos0, theta_scale, freq_scale, ff):
    """kernels/ref/ops.cpp rope_adjacent for token t at pos0 + t: the angles by the same float32
    recurrence (θ_0 = pos, θ_{i+1} = θ_i * theta_scale, then / ff[i] and * freq_scale, each
    rounded to float32), cos, sin and the rotation in float64."""
    out = x.astype(np.float64)
    ts, fs = np.float32(theta_scale), np.float32(freq_scale)
    for t in range(x.shape[0]):
        theta = np.float32(pos0 + t)
        for i in range(n_rot // 2):
            angle = float(fs * (theta / ff[i] if ff is not None else theta))
            c, s = np.cos(angle), np.sin(angle)
            x0, x1 = out[t, :, 2 * i].copy(), out[t, :, 2 * i + 1].copy()
            out[t, :, 2 * i] = x0 * c - x1 * s
            out[t, :, 2 * i + 1] = x0 * s + x1 * c
            theta = np.float32(theta * ts)
    return out


@pytest.mark.parametrize("freq_scale", [1.0, 0.25])
@pytest.mark.parametrize("with_ff", [False, True])
@pytest.mark.parametrize("pos0", [0, 4097, 131072 - 8])
@pytest.mark.parametrize("n_tok,n_head,head_dim,n_rot", [(1, 32, 128, 128), (7, 8, 128, 64), (3, 5, 64, 64),
                                                         (2, 4, 96, 32)])
def test_rope(n_tok, n_head, head_dim, n_rot, pos0, with_ff, freq_scale):
    rng = np.random.default_rng(n_tok * 1000 + pos0 + n_rot)
    x = rng.standard_normal((n_tok, n_head, head_dim), dtype=np.float32)
    theta_scale = np.float32(500000.0 ** (-2.0 / n_rot))
    ff = rng.uniform(1.0, 32.0, n_rot // 2).astype(np.float32) if with_ff else None
    got = _core.cuda.rope(x, n_rot, pos0, float(theta_scale), freq_scale, ff)
    ref = rope_ref(x, n_rot, pos0, theta_scale, freq_scale, ff)
    # The kernel's angles are the reference's bit for bit (same float32 recurrence, IEEE * and /),
    # so the angle's own float error, which grows with the position, is common to both and the
    # bound need not grow with pos0. Left: sincosf (CUDA: <= 2 ulp at any argument) and the
    # float products and fma, < 4e-7 of max|x| in all; bound 2e-6 of max|x|.
    assert np.max(np.abs(got - ref)) <= 2e-6 * np.max(np.abs(x))
    assert np.array_equal(got[..., n_rot:], x[..., n_rot:])  # dims >= n_rot untouched


def test_rope_refuses_bad_n_rot():
    x = np.zeros((1, 2, 64), np.float32)
    for n_rot in (63, 66):  # odd; more than head_dim
        with pytest.raises(_core.EoqError):
            _core.cuda.rope(x, n_rot, 0, 0.5, 1.0, None)


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", SIZES)
def test_swiglu(n, offset):
    rng = np.random.default_rng(n + 10 * offset)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(4)
    g[:4] = [-100.0, -80.0, 30.0, 100.0]  # exp(-g) overflows float at -100: silu = -0, as on the CPU
    u = rng.standard_normal(n, dtype=np.float32)
    got = _core.cuda.swiglu(g, u, offset=offset)
    g64 = g.astype(np.float64)
    ref = g64 / (1.0 + np.exp(-g64)) * u
    # expf (<= 2 ulp), 1 + e, the division and the product: <= ~3.5 ulp relative, bound ~8 ulp;
    # the absolute 1e-37 only admits the overflow case (true value ~4e-42, kernel -0).
    assert np.all(np.abs(got - ref) <= 1e-6 * np.abs(ref) + 1e-37)


@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("n", SIZES)
def test_add(n, offset):
    rng = np.random.default_rng(n + 100 * offset)
    y = rng.standard_normal(n, dtype=np.float32)
    x = rng.standard_normal(n, dtype=np.float32)
    got = _core.cuda.add(y, x, offset=offset)
    assert np.array_equal(got, y + x)  # one float32 addition per element: exact agreement
