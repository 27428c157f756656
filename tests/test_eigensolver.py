"""The production eigensolver of block sealing (engine/eoptshrink.cpp: Householder reduction to
tridiagonal form + implicit-shift QL, in double) against numpy.linalg.eigh, and seal_block with it
against the slow Jacobi reference (EOQ_SEAL_EIGH=jacobi switches seal_block to eigh_jacobi at run
time, so the "before" values come from the same build, never from hard-coded numbers)."""
import math

import numpy as np
import pytest

from eoq import _core

needs_hook = pytest.mark.skipif(not hasattr(_core, "eigh_tridiag"),
                                reason="_core.eigh_tridiag is not bound in this build")

SIZES = [1, 2, 3, 63, 64, 128, 256]


def tridiag(G, nvec=-1):
    w, V, ok = _core.eigh_tridiag(np.ascontiguousarray(G, dtype=np.float64), nvec)
    return np.asarray(w), np.asarray(V), ok


def random_orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def spd(rng, n):
    a = rng.standard_normal((n + 7, n))
    return a.T @ a + 1e-3 * np.eye(n)


def lowrank_gram(rng, n):
    """XᵀX of a key-like block: a few strong directions plus weak noise (wide spectrum)."""
    rows = max(2 * n, 8)
    k = min(4, n)
    X = rng.standard_normal((rows, k)) @ (rng.standard_normal((k, n)) * np.array([30.0, 10.0, 3.0, 1.0])[:k, None])
    X += 0.01 * rng.standard_normal((rows, n))
    return X.T @ X


def repeated(rng, n):
    """Eigenvalues in a few groups of equal values (including an exact zero group)."""
    vals = np.array([7.0, 7.0, 7.0, 2.0, 2.0, 0.0, 0.0, -1.5])
    lam = np.resize(vals, n)
    Q = random_orthogonal(rng, n)
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def indefinite(rng, n):
    A = rng.standard_normal((n, n))
    return A + A.T


def rank_deficient_gram(rng, n):
    """Fewer rows than columns (a block shorter than head_dim): n − rows zero eigenvalues."""
    X = rng.standard_normal((max(1, n // 3), n))
    return X.T @ X


def tridiagonal_input(rng, n):
    """Already tridiagonal (every Householder step is the identity)."""
    A = np.diag(rng.standard_normal(n))
    if n > 1:
        e = rng.standard_normal(n - 1)
        A += np.diag(e, 1) + np.diag(e, -1)
    return A


KINDS = {
    "spd": spd,
    "lowrank": lowrank_gram,
    "repeated": repeated,
    "indefinite": indefinite,
    "rank_deficient": rank_deficient_gram,
    "tridiagonal": tridiagonal_input,
}


def check_decomposition(A, w, V, ok, tol=1e-10):
    n = A.shape[0]
    assert ok
    assert w.shape == (n,) and V.shape == (n, n)
    assert np.all(np.diff(w) <= 0), "eigenvalues must be sorted descending"
    ref = np.linalg.eigvalsh(A)[::-1]
    scale = max(np.abs(ref).max(), np.finfo(float).tiny)
    np.testing.assert_allclose(w, ref, rtol=0, atol=tol * scale)
    np.testing.assert_allclose(V.T @ V, np.eye(n), rtol=0, atol=tol)
    np.testing.assert_allclose(A @ V, V * w, rtol=0, atol=tol * scale)


# ---------------------------------------------------------------------------------------------
# the solver against NumPy


@needs_hook
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n", SIZES)
def test_matches_numpy(kind, n):
    rng = np.random.default_rng(1000 * n + len(kind))
    A = KINDS[kind](rng, n)
    w, V, ok = tridiag(A)
    check_decomposition(A, w, V, ok)
    # Also relative to each eigenvalue where the spectrum is well conditioned (SPD Gram).
    if kind == "spd":
        ref = np.linalg.eigvalsh(A)[::-1]
        np.testing.assert_allclose(w, ref, rtol=1e-10 * max(1.0, ref[0] / ref[-1]) ** 0.5)


@needs_hook
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n", SIZES)
def test_partial_vectors_match_full(kind, n):
    """The two-phase form seal_block uses (all eigenvalues, then single eigenvectors rebuilt from
    the recorded rotations) gives the same eigenvalues bit for bit and the same vectors."""
    rng = np.random.default_rng(7 * n + len(kind))
    A = KINDS[kind](rng, n)
    w, V, ok = tridiag(A)
    for nvec in sorted({0, min(3, n), n}):
        w2, V2, ok2 = tridiag(A, nvec)
        assert ok2
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_allclose(V2[:, :nvec], V[:, :nvec], rtol=0, atol=1e-12 * n)
        assert not V2[:, nvec:].any()
    check_decomposition(A, *tridiag(A, n))


@needs_hook
@pytest.mark.parametrize("n", SIZES)
def test_zero_and_scaled_identity(n):
    w, V, ok = tridiag(np.zeros((n, n)))
    assert ok and not w.any()
    np.testing.assert_array_equal(V, np.eye(n))
    w, V, ok = tridiag(3.5 * np.eye(n))
    assert ok
    np.testing.assert_array_equal(w, np.full(n, 3.5))
    np.testing.assert_array_equal(V, np.eye(n))
    w, V, ok = tridiag(np.zeros((n, n)), n)
    assert ok and not w.any()
    np.testing.assert_array_equal(V, np.eye(n))


@needs_hook
def test_small_cases_exact():
    w, V, ok = tridiag(np.array([[-2.5]]))
    assert ok and w[0] == -2.5 and V[0, 0] == 1.0
    w, V, ok = tridiag(np.array([[2.0, 1.0], [1.0, 2.0]]))
    assert ok
    np.testing.assert_allclose(w, [3.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(np.abs(V), np.full((2, 2), math.sqrt(0.5)), rtol=1e-15)


@needs_hook
@pytest.mark.parametrize("scale", [1e-150, 1e-20, 1.0, 1e20, 1e150])
def test_extreme_scales(scale):
    """The matrix is scaled by a power of two before the reduction: no overflow or underflow."""
    A = lowrank_gram(np.random.default_rng(5), 64)
    A = A / np.abs(A).max() * scale
    w, V, ok = tridiag(A)
    check_decomposition(A, w, V, ok)


@needs_hook
def test_only_symmetric_part_is_used():
    rng = np.random.default_rng(11)
    S = spd(rng, 64)
    K = rng.standard_normal((64, 64)) * 1e-3
    w, V, ok = tridiag(S + (K - K.T))  # antisymmetric part ignored, as eigh_jacobi does
    check_decomposition(S, w, V, ok)


@needs_hook
def test_deterministic():
    A = lowrank_gram(np.random.default_rng(12), 128)
    w1, V1, _ = tridiag(A)
    w2, V2, _ = tridiag(A)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(V1, V2)


@needs_hook
def test_non_finite_input_reports_failure():
    A = np.eye(4)
    A[1, 2] = A[2, 1] = np.nan
    w, V, ok = tridiag(A)
    assert not ok and np.isnan(w).all()
    A[1, 2] = A[2, 1] = np.inf
    assert not tridiag(A)[2]


@needs_hook
@pytest.mark.parametrize("n", [5, 64, 128])
def test_agrees_with_jacobi_reference(n):
    A = lowrank_gram(np.random.default_rng(13 + n), n)
    w, V, _ = tridiag(A)
    wj, Vj = _core.eigh_jacobi(A)
    np.testing.assert_allclose(w, wj, rtol=0, atol=1e-12 * wj[0])
    # Well separated leading eigenvalues: the same vectors up to sign.
    for k in range(min(3, n)):
        assert abs(abs(V[:, k] @ Vj[:, k]) - 1) < 1e-10


# ---------------------------------------------------------------------------------------------
# seal_block: the new solver against the Jacobi reference path on fixed blocks


def spiked(rng, n, d, thetas, noise=1.0):
    N = max(n, d)
    U = np.linalg.qr(rng.standard_normal((n, len(thetas))))[0]
    W = np.linalg.qr(rng.standard_normal((d, len(thetas))))[0]
    return (U * (np.asarray(thetas) * math.sqrt(N))) @ W.T + noise * rng.standard_normal((n, d))


def fixed_blocks():
    rng = np.random.default_rng(2024)
    blocks = []
    for n, d in [(256, 64), (128, 64), (128, 128), (64, 64), (32, 64), (256, 128)]:
        X = spiked(rng, n, d, [12.0, 5.0, 3.0, 1.5, 0.5]) * 0.1
        blocks.append((f"spiked{n}x{d}", X.astype(np.float32)))
    # Keys with an outlier channel and a slow drift along the token axis.
    X = rng.standard_normal((128, 64))
    X[:, 5] += 20.0
    X += np.linspace(0, 3, 128)[:, None] * rng.standard_normal(64)
    blocks.append(("outlier", X.astype(np.float32)))
    blocks.append(("noise", rng.standard_normal((128, 64)).astype(np.float32)))
    row = rng.standard_normal(64).astype(np.float32)
    blocks.append(("repeated_rows", np.tile(row, (128, 1))))
    blocks.append(("zero", np.zeros((128, 64), np.float32)))
    return blocks


SEAL_PARAMS = [dict(bits=2, rank_cap=3), dict(bits=3, rank_cap=8, factor_bits=6),
               dict(bits=2, rank_cap=4, shrink=False), dict(bits=4, rank_cap=64, factor_bits=8)]


def seal_both(monkeypatch, X, **kw):
    monkeypatch.setenv("EOQ_SEAL_EIGH", "jacobi")
    ref = _core.seal_block(X, **kw)
    monkeypatch.delenv("EOQ_SEAL_EIGH")
    new = _core.seal_block(X, **kw)
    return ref, new


def assert_same_seal(ref, new, X):
    for key in ("kind", "rank", "rank_raw", "fallback"):
        assert new[key] == ref[key], (key, new[key], ref[key])
    for key in ("sigma", "phi", "gains"):
        np.testing.assert_allclose(new[key], ref[key], rtol=1e-8, atol=0, err_msg=key)
    scale = max(float(np.abs(X).max()), 1e-30)
    for key in ("lowrank", "recon"):
        np.testing.assert_allclose(new[key], ref[key], rtol=0, atol=1e-5 * scale, err_msg=key)
    assert new["rel_err"] == pytest.approx(ref["rel_err"], rel=1e-6, abs=1e-9)
    assert new["lowrank_energy"] == pytest.approx(ref["lowrank_energy"], rel=1e-8, abs=1e-12)
    assert new["bytes"] == ref["bytes"]


@pytest.mark.parametrize("params", SEAL_PARAMS, ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
@pytest.mark.parametrize("name,X", fixed_blocks(), ids=[b[0] for b in fixed_blocks()])
def test_seal_block_unchanged_against_jacobi(monkeypatch, name, X, params):
    ref, new = seal_both(monkeypatch, X, **params)
    assert_same_seal(ref, new, X)
    if name.startswith("spiked") and X.shape[0] >= X.shape[1]:
        assert new["rank"] > 0  # the blocks exercise the low-rank path


def test_jacobi_switch_takes_effect(monkeypatch):
    """Guards the comparison above against comparing the new solver with itself: the two
    solvers round differently, so some σ differs in its last bits on these blocks."""
    differs = False
    for _, X in fixed_blocks()[:6]:
        ref, new = seal_both(monkeypatch, X, bits=2, rank_cap=8)
        differs |= list(ref["sigma"]) != list(new["sigma"])
    assert differs


def test_engine_sealing_unchanged_against_jacobi(monkeypatch, smollm2_path, wikitext):
    """Real K/V blocks of the test model: per-block ranks, gains and errors and the final logits
    are the same with the Jacobi reference and with the new solver."""
    import eoq

    def run():
        with eoq.Engine(smollm2_path, n_ctx=512, kv="eoq2", n_threads=2,
                        kv_options=dict(block=64, ring=64)) as e:
            toks = e.tokenize(wikitext)[:200]
            logits = np.array(e.eval_logits(toks), dtype=np.float64)
            return logits, e.compression_stats()

    monkeypatch.setenv("EOQ_SEAL_EIGH", "jacobi")
    logits_ref, st_ref = run()
    monkeypatch.delenv("EOQ_SEAL_EIGH")
    logits_new, st_new = run()
    assert st_new["summary"]["blocks_sealed"] == st_ref["summary"]["blocks_sealed"] > 0
    n_ranked = 0
    for lr, ln in zip(st_ref["layers"], st_new["layers"]):
        for hr, hn in zip(lr["heads"], ln["heads"]):
            for kv in ("k", "v"):
                a, b = hr[kv], hn[kv]
                assert b["rank_hist"] == a["rank_hist"] and b["rank_hist_raw"] == a["rank_hist_raw"]
                assert len(b["gains"]) == len(a["gains"])
                for ga, gb in zip(a["gains"], b["gains"]):
                    np.testing.assert_allclose(gb, ga, rtol=1e-5)
                    n_ranked += len(ga) > 0
                np.testing.assert_allclose(b["rel_err"], a["rel_err"], rtol=1e-4, atol=1e-7)
    assert n_ranked > 0
    np.testing.assert_allclose(logits_new, logits_ref, rtol=0, atol=1e-3 * np.abs(logits_ref).max())
