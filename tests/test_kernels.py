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


def test_bad_arguments_raise():
    with pytest.raises(_core.EoqError):
        _core.k_dot_f32("avx9000", np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(_core.EoqError):
        _core.k_dot_f32("scalar", np.zeros(3, np.float32), np.zeros(4, np.float32))
