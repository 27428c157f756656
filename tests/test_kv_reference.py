"""The C++ KV compressor checked against an independent NumPy reference (tests/ref_kvcompress.py,
written from ../shared/spec/kv-compression.md): Lloyd–Max codebooks, eOptShrink, block sealing on
real SmolLM2 K/V blocks (rank, gains, factor codes, residual codes and norms, reconstruction), and
attention straight from the codes, closing the loop NumPy codes ↔ NumPy dequantized ↔ C++ cache.

Each randomized test runs with two fixed seeds and one fresh seed (printed in every failure
message; EOQ_REF_SEED=<n> replays it)."""
import math
import os

import numpy as np
import pytest

import ref_kvcompress as rk
from eoq import _core
from ref_llama import RefLlama, _blas_threads

FRESH_SEED = int(os.environ.get("EOQ_REF_SEED", int.from_bytes(os.urandom(4), "little")))
SEEDS = pytest.mark.parametrize("seed", [0, 1, 2, FRESH_SEED], ids=["seed0", "seed1", "seed2", "fresh"])

# Spec section 4 (known answers that do not come from the code under test).
SPEC_CENTROIDS = {
    64: [[0.80101], [0.45212, 1.49997], [0.24375, 0.75066, 1.32934, 2.11131],
         [0.12735, 0.38472, 0.65049, 0.93189, 1.23940, 1.59085, 2.02331, 2.64637]],
    128: [[0.79944], [0.45245, 1.50519], [0.24442, 0.75333, 1.33660, 2.13147],
          [0.12787, 0.38638, 0.65362, 0.93710, 1.24777, 1.60434, 2.04593, 2.68886]],
}
SPEC_GAUSSIAN = [[0.797885], [0.452780, 1.510418], [0.245094, 0.756005, 1.343909, 2.151946],
                 [0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590]]
SPEC_MSE = {64: [0.3584, 0.1145, 0.0334, 0.00913], 128: [0.3609, 0.1160, 0.0340, 0.00932]}

N_TOK = 300
BLOCK = 256


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # 2 shared cores: a 64×64 eigh is ~100x slower with BLAS threads spinning against each other.
    with _blas_threads():
        yield


@pytest.fixture(scope="module")
def real_kv(smollm2_path, wikitext):
    """Post-RoPE q, k, v of SmolLM2-135M (NumPy reference forward, float32) for 300 wikitext
    tokens: arrays [n_layer, 300, heads, 64]."""
    e = _core.Engine(smollm2_path, n_ctx=N_TOK + 8, n_threads=2, kv="f16")
    toks = e.tokenize(wikitext[:20000])[:N_TOK]
    assert len(toks) == N_TOK
    _, kv = RefLlama.load(smollm2_path, np.float32).forward(toks, return_kv=True)
    return dict(q=np.stack(kv.q), k=np.stack(kv.k), v=np.stack(kv.v))


# ---------------------------------------------------------------------------------------------
# (a) codebooks


def test_reference_codebook_known_answers():
    """The reference itself against answers from outside the code: the spec table, the Gaussian
    limit, and d = 3 where a coordinate of a random unit vector is uniform on [−1, 1] (Archimedes),
    so Lloyd–Max is the uniform quantizer: centroids sqrt(3)(2i+1−L)/L, MSE 1/L²."""
    for d in (64, 128):
        for b in (1, 2, 3, 4):
            c, mse = rk.lloyd_max(d, b)
            np.testing.assert_allclose(c, -c[::-1], atol=1e-14)
            np.testing.assert_allclose(c[2 ** (b - 1):], SPEC_CENTROIDS[d][b - 1], atol=1e-5, err_msg=f"d={d} b={b}")
            assert abs(mse - SPEC_MSE[d][b - 1]) < 1e-4, (d, b, mse)
    for b in (1, 2, 3, 4):
        L = 2 ** b
        c, mse = rk.lloyd_max(3, b)
        np.testing.assert_allclose(c, math.sqrt(3) * (2 * np.arange(L) + 1 - L) / L, atol=1e-12)
        assert abs(mse - 1 / L**2) < 1e-12
    for b in (1, 2):
        np.testing.assert_allclose(rk.lloyd_max(1 << 16, b)[0][2 ** (b - 1):], SPEC_GAUSSIAN[b - 1], atol=2e-4)



def test_log_norm_codes_are_log_nearest():
    """The reference's 8-bit norm encoder picks, among the 255 values, the one nearest in the log
    domain (brute force over all codes here), ties aside; tiny norms go to the zero code."""
    rng = np.random.default_rng(7)
    for shift in (-6, 0, 3, 15):
        v = rk.log_norm_values(shift)
        x = (2.0 ** (shift - rng.uniform(0, 8.2, 2000))).astype(np.float32)
        codes = rk.log_norm_encode(x, shift)
        nz = codes != rk.LOG_NORM_ZERO
        dist = np.abs(np.log(v)[None, :] - np.log(x[nz].astype(np.float64))[:, None])
        best = dist.min(axis=1)
        got = dist[np.arange(nz.sum()), codes[nz]]
        assert np.all(got <= best + 1e-12)
        assert np.all(x[~nz] < v[254] / 2)
        inside = x >= v[254]  # within the eight octaves: ≤ 2^(1/64) − 1 plus the f16 rounding
        assert np.max(np.abs(rk.log_norm_decode(codes[inside], shift) / x[inside] - 1)) < 0.012
    assert rk.log_norm_shift(0.0) == -6 and rk.log_norm_shift(1.0) == 0 and rk.log_norm_shift(1.5) == 1
    assert rk.log_norm_shift(2.0 ** 15 + 1) is None

@pytest.mark.parametrize("d", [64, 128, 48, 96])
def test_codebook_matches_cpp(d):
    for b in (1, 2, 3, 4):
        c, mse = rk.lloyd_max(d, b)
        cc = np.asarray(_core.lloyd_max(d, b), np.float64)  # float32 centroids in the engine
        np.testing.assert_allclose(cc, c, rtol=0, atol=1e-6, err_msg=f"d={d} bits={b}")
        assert abs(_core.lloyd_max_mse(d, b) - mse) < 1e-7, (d, b)


# ---------------------------------------------------------------------------------------------
# eOptShrink (reference against the spec's synthetic oracle, then C++ against the reference)


def test_reference_eoptshrink_spiked_oracle():
    """Spec section 3.1: n = d = 128, σ = 1, spikes θσ√N, θ = 4, 2, 1.3, 0.8: rank 2 and φ close to
    Gavish–Donoho (a formula independent of both implementations)."""
    rng = np.random.default_rng(2024)
    n = d = N = 128
    ph, gd, ranks = [], [], []
    for _ in range(12):
        U = np.linalg.qr(rng.standard_normal((n, 4)))[0]
        W = np.linalg.qr(rng.standard_normal((d, 4)))[0]
        X = (U * (np.array([4, 2, 1.3, 0.8]) * math.sqrt(N))) @ W.T + rng.standard_normal((n, d))
        lam = np.linalg.eigvalsh(X.T @ X)[::-1]
        r, phi = rk.eoptshrink(lam, d, N)
        r_c, phi_c = _core.eoptshrink(lam, d, N)
        assert r_c == r and np.allclose(phi_c, phi, rtol=1e-10, atol=0)
        ranks.append(r)
        ph.append(phi[:2])
        y = np.sqrt(lam[:2]) / math.sqrt(N)
        gd.append(math.sqrt(N) * np.sqrt((y**2 - 2) ** 2 - 4) / y)
    assert all(r == 2 for r in ranks), ranks
    ph, gd = np.mean(ph, 0), np.mean(gd, 0)
    assert 41 < ph[0] < 44 and 15.5 < ph[1] < 18, ph
    np.testing.assert_allclose(ph, gd, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# (b) sealing real SmolLM2 blocks: C++ _core.seal_block against rk.seal_block

CONFIGS = [dict(bits=b, rank_cap=3, factor_bits=4, shrink=s, norm_correction=True)
           for b in (2, 3, 4) for s in (True, False)]
EXTRA_CONFIGS = [dict(bits=3, rank_cap=1, factor_bits=6, shrink=True, norm_correction=False),
                 dict(bits=2, rank_cap=8, factor_bits=3, shrink=False, norm_correction=True),
                 dict(bits=3, rank_cap=3, factor_bits=4, shrink=True, norm_correction=True, norm_bits=8),
                 dict(bits=2, rank_cap=0, factor_bits=4, shrink=True, norm_correction=True, norm_bits=8)]


def pick_blocks(seed, n_layer, n_kv):
    """(layer, kv head, first token) of the blocks to seal: a fixed spread for seed 0, random
    ones otherwise."""
    if seed == 0:
        return [(il, g, 4) for il, g in ((0, 0), (3, 1), (7, 2), (12, 0), (18, 1), (24, 2), (29, 0))]
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(n_layer)), int(rng.integers(n_kv)), int(rng.integers(0, N_TOK - BLOCK + 1)))
            for _ in range(6)]


def recover_factor_codes(L_cpp, ref):
    """The binding exposes the C++ low-rank part as stored, L = Ĉ B̂, not its codes.  With the
    reference's scales, solve for the codes the C++ side must hold (least squares, rounded) and
    rebuild L from them: if L is reproduced to float32 rounding, these are its codes (up to the
    component order and a joint sign flip of a (column, row) pair, which L cannot show)."""
    Ch, _ = rk.factors64(ref)
    L = np.asarray(L_cpp, np.float64)
    Bq = np.rint(np.linalg.lstsq(Ch, L, rcond=None)[0] / ref["B_scales"][:, None])
    Bh = Bq * ref["B_scales"][:, None]
    Cq = np.rint(np.linalg.lstsq(Bh.T, L.T, rcond=None)[0].T / ref["C_scales"][None, :])
    _, _, L_rec = rk.lowrank_from_codes(Cq.astype(np.int64), ref["C_scales"], Bq.astype(np.int64), ref["B_scales"])
    reproduced = np.max(np.abs(L_rec - L_cpp)) <= 1e-6 * max(np.max(np.abs(L_cpp)), 1e-30)
    return Cq.astype(np.int64), Bq.astype(np.int64), reproduced


@SEEDS
def test_seal_block_matches_reference_on_real_kv(real_kv, seed):
    rng = np.random.default_rng(seed + 17)
    d = real_kv["k"].shape[-1]
    rot_seed = 77 if seed == 0 else int(rng.integers(1 << 62))
    R = _core.rotation_matrix(d, rot_seed)
    tally = dict(fac_same=0, fac_all=0, res_same=0, res_all=0, norm_same=0, norm_all=0, seals=0)
    worst = dict(gain=0.0, recon=0.0, res_block=1.0)
    for il, g, t0 in pick_blocks(seed, real_kv["k"].shape[0], real_kv["k"].shape[2]):
        for name in ("k", "v"):
            # Rotated exactly as the cache does at append (both sides get the same float32 rows).
            X = rk.rotate_rows(real_kv[name][il, t0:t0 + BLOCK, g], R)
            assert np.array_equal(X, _core.rotation_apply(real_kv[name][il, t0:t0 + BLOCK, g], rot_seed))
            configs = CONFIGS + (EXTRA_CONFIGS if name == "k" else [])
            for cfg in configs:
                where = f"seed={seed} layer={il} head={g} t0={t0} {name} {cfg}"
                c = _core.seal_block(X, **cfg)
                r = rk.seal_block(X, **cfg)
                tally["seals"] += 1
                assert c["kind"] == r["kind"] == "compressed" and c["fallback"] == r["fallback"] == "none", where
                assert c["rank_raw"] == r["rank_raw"] and c["rank"] == r["rank"], (where, c["rank"], r["rank"])
                if r["rank"]:
                    np.testing.assert_allclose(c["sigma"], r["sigma"], rtol=1e-9, err_msg=where)
                    np.testing.assert_allclose(c["phi"], r["phi"], rtol=1e-6, err_msg=where)
                    np.testing.assert_allclose(c["gains"], r["gains"], rtol=1e-5, err_msg=where)
                    worst["gain"] = max(worst["gain"], float(np.max(np.abs(np.array(c["gains"]) / r["gains"] - 1))))
                    if not cfg["shrink"]:
                        assert np.all(np.array(c["gains"]) == 1.0), where
                    Cq, Bq, reproduced = recover_factor_codes(c["lowrank"], r)
                    assert reproduced, f"{where}: the C++ low-rank part is not Ĉ B̂ with the reference's scales"
                    tally["fac_same"] += int(np.sum(Cq == r["C_codes"]) + np.sum(Bq == r["B_codes"]))
                    tally["fac_all"] += Cq.size + Bq.size
                same = np.mean(c["codes"] == r["codes"])
                worst["res_block"] = min(worst["res_block"], same)
                assert same >= 0.99, (where, same)
                tally["res_same"] += int(np.sum(c["codes"] == r["codes"]))
                tally["res_all"] += c["codes"].size
                cn = np.asarray(c["norms"], np.float32)
                tally["norm_same"] += int(np.sum(cn == r["norms"]))
                tally["norm_all"] += cn.size
                np.testing.assert_allclose(cn, r["norms"], rtol=2e-3, err_msg=where)  # one f16 step at most
                if cfg.get("norm_bits") == 8:  # the log-domain bytes, one exponent per block
                    assert c["norm_shift"] == r["norm_shift"], where
                    assert np.mean(np.asarray(c["norm_codes"]) == r["norm_codes"]) >= 0.99, where
                    assert np.array_equal(rk.log_norm_decode(c["norm_codes"], c["norm_shift"]), cn), where
                # Reconstructions and the reported error.
                xn = np.linalg.norm(X)
                dr = np.linalg.norm(c["recon"] - r["recon"]) / xn
                worst["recon"] = max(worst["recon"], dr)
                assert dr < 1e-3, (where, dr)
                assert abs(c["rel_err"] - r["rel_err"]) < 1e-4, where
                np.testing.assert_array_equal(rk.decode(r, np.float32), r["recon"])  # decode = what was sealed
                np.testing.assert_allclose(rk.decode(r), r["recon"], rtol=0, atol=1e-5 * np.max(np.abs(X)))
    fac = tally["fac_same"] / max(tally["fac_all"], 1)
    res = tally["res_same"] / tally["res_all"]
    nrm = tally["norm_same"] / tally["norm_all"]
    print(f"seed={seed}: {tally['seals']} seals; factor codes identical {fac:.5f} ({tally['fac_all']}), residual "
          f"codes {res:.5f} (worst block {worst['res_block']:.5f}), norms {nrm:.5f}; max gain rel diff "
          f"{worst['gain']:.1e}; max recon diff {worst['recon']:.1e}")
    assert tally["fac_all"] > 0, f"seed={seed}: no low-rank component on real blocks"
    assert fac >= 0.995, (seed, fac)
    assert res >= 0.99 and nrm >= 0.99, (seed, res, nrm)


def test_seal_fallbacks_match_reference():
    """The fallback rules the spec leaves open (zero block, no noise bulk, non-finite input,
    overflowing norms) give the same kind, rank and reconstruction on both sides."""
    rng = np.random.default_rng(31)
    n, d = 96, 32
    X = rng.standard_normal((n, d)).astype(np.float32)
    nan = X.copy()
    nan[4, 9] = np.nan
    cases = {"zero": np.zeros((n, d), np.float32), "repeated": np.tile(X[0], (n, 1)), "nan": nan,
             "overflow": X * np.float32(1e6), "plain": X}
    for name, Y in cases.items():
        c = _core.seal_block(Y, bits=2, rank_cap=3)
        r = rk.seal_block(Y, bits=2, rank_cap=3)
        assert (c["kind"], c["fallback"], c["rank"]) == (r["kind"], r["fallback"], r["rank"]), name
        np.testing.assert_array_equal(c["recon"], r["recon"], err_msg=name)
        assert abs(c["rel_err"] - r["rel_err"]) < 1e-6, name


def test_seal_reference_on_real_kv_pays_and_differs_by_mode(real_kv):
    """The reference is not trivially equal to the C++ by construction: shrink and truncate store
    different factors, and the low-rank stage helps keys the way the spec's prototype found."""
    R = _core.rotation_matrix(64, 5)
    X = rk.rotate_rows(real_kv["k"][10, 4:4 + BLOCK, 1], R)
    s = rk.seal_block(X, 2, 3, 4, True, True)
    t = rk.seal_block(X, 2, 3, 4, False, True)
    z = rk.seal_block(X, 2, 0, 4, True, True)
    assert s["rank"] >= 1 and np.all(np.array(s["gains"]) < 1) and not np.array_equal(s["C_codes"], t["C_codes"])
    assert s["rel_err"] < 0.8 * z["rel_err"] and t["rel_err"] < 0.8 * z["rel_err"]


# ---------------------------------------------------------------------------------------------
# (c) attention from the codes


def random_cache_params(rng, seed):
    if seed == 0:
        return dict(mode="eoq2", block=64, ring=32, sinks=4)
    if seed == 1:
        return dict(mode="eoq3", block=96, ring=16, sinks=2, k_bits=4, v_bits=2, shrink=False, seed=1234)
    if seed == 2:  # the eoq preset's format: 8-bit norms, 4-bit tail codes, an exact window
        return dict(mode="eoq2", block=64, ring=0, sinks=4, k_bits=3, norm_bits=8, tail_bits=5, v_tail_bits=2, window=16,
                    k_adapt=200)
    p = dict(mode=str(rng.choice(["eoq2", "eoq3", "eoq4", "turbo2", "turbo3"])), block=int(rng.choice([64, 80, 128])),
             ring=int(rng.integers(0, 40)), sinks=int(rng.integers(0, 7)), seed=int(rng.integers(1 << 62)))
    if p["mode"].startswith("eoq"):
        p.update(shrink=bool(rng.integers(2)), rank_cap=int(rng.integers(1, 5)), k_bits=int(rng.integers(2, 5)))
    if seed > 2:  # the eoq preset's parts: 8-bit norms, tail codes with an exact window
        p.update(norm_bits=int(rng.choice([8, 16])), tail_bits=int(rng.choice([0, 3, 4])), window=int(rng.integers(0, 24)),
                 k_adapt=int(rng.choice([0, 150, 250])))
    return p


def ref_cache_args(p, d):
    bits = int(p["mode"][-1])
    eoq = p["mode"].startswith("eoq")
    return dict(k_bits=p.get("k_bits", bits), v_bits=p.get("v_bits", bits),
                rank_cap=(p.get("rank_cap", 3 if d <= 64 else 4) if eoq else 0), factor_bits=p.get("factor_bits", 4),
                shrink=p.get("shrink", True), norm_correction=p.get("norm_correction", True),
                block=p["block"], ring=p["ring"], sinks=p["sinks"], norm_bits=p.get("norm_bits", 16),
                tail_bits=p.get("tail_bits", 0), window=p.get("window", 16), v_tail_bits=p.get("v_tail_bits"),
                k_adapt=p.get("k_adapt", 0))


@SEEDS
def test_attention_from_codes_equals_attention_over_reconstruction(real_kv, seed):
    """Section 5 in the reference: scores through the factors and codebook sums, values through
    Ĉᵀw and weighted codebook sums, online softmax; equal (float64) to plain softmax attention
    over the explicitly reconstructed K and V, for any visible prefix."""
    rng = np.random.default_rng(seed + 101)
    n_layer, n, n_kv, d = real_kv["k"].shape
    group = real_kv["q"].shape[2] // n_kv
    il, g = (5, 1) if seed == 0 else (int(rng.integers(n_layer)), int(rng.integers(n_kv)))
    p = random_cache_params(rng, seed)
    R = _core.rotation_matrix(d, int(rng.integers(1 << 62)))
    cache = rk.build_cache(real_kv["k"][il, :, g], real_kv["v"][il, :, g], R, **ref_cache_args(p, d))
    assert len(cache["blocks"]) >= 1, p
    K, V = rk.dequantize_cache(cache, R)
    Kr, Vr = rk.dequantize_cache(cache)  # rotated basis
    assert K.shape == (n, d)
    S, B = len(cache["sinks_k"]), p["block"]
    n_vis_list = sorted({min(x, n) for x in (1, max(S, 1), S + B // 2, S + B, S + B + 7,
                                              S + len(cache["blocks"]) * B + 1, n - 1, n)})
    worst = 0.0
    for n_vis in n_vis_list:
        pos = n_vis - 1
        qs = np.concatenate([real_kv["q"][il, pos, g * group:(g + 1) * group],
                             3.0 * rng.standard_normal((2, d))]).astype(np.float32)
        want = rk.attention(qs, K[:n_vis], V[:n_vis])
        got = rk.attention_from_codes(qs, cache, R, n_vis=n_vis)
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        worst = max(worst, err)
        assert err < 1e-12, (f"seed={seed} layer={il} head={g} {p} n_vis={n_vis}", err)
        # ...and in the rotated basis (queries already rotated).
        qt = qs.astype(np.float64) @ np.asarray(R, np.float64).T
        got_r = rk.attention_from_codes(qt, cache, None, n_vis=n_vis)
        np.testing.assert_allclose(got_r, rk.attention(qt, Kr[:n_vis], Vr[:n_vis]), rtol=0, atol=1e-12 * np.max(np.abs(want)))
    # Negative control: a 1% change of one block's stored key norms is far above that tolerance.
    kb = cache["blocks"][0][0]
    saved = kb["norms"]
    kb["norms"] = saved * np.float32(1.01)
    try:
        qs = real_kv["q"][il, n - 1, g * group:(g + 1) * group]
        moved = np.max(np.abs(rk.attention_from_codes(qs, cache, R) - rk.attention(qs, K, V))) / np.max(np.abs(V))
        assert moved > 1e-7, moved
    finally:
        kb["norms"] = saved
    print(f"seed={seed} layer={il} head={g} {p}: worst rel diff {worst:.1e} over n_vis {n_vis_list}")


@SEEDS
def test_cpp_cache_attention_matches_reference(real_kv, seed):
    """Closing the loop on the same real K/V stream (one layer, all KV heads, GQA 9:3):
    (1) C++ attend() = reference softmax attention over the C++ dequantized cache (float32 rounding);
    (2) the C++ dequantized cache = the reference cache (rk.build_cache with the engine's per-head
        rotation), i.e. both sides sealed the same blocks into the same codes;
    (3) C++ attend() = rk.attention_from_codes over the reference codes."""
    rng = np.random.default_rng(seed + 303)
    n_layer, n, n_kv, d = real_kv["k"].shape
    nh = real_kv["q"].shape[2]
    group = nh // n_kv
    il = 5 if seed == 0 else int(rng.integers(n_layer))
    p = random_cache_params(rng, seed)
    slot = 1  # the tester's layer index (enters the rotation seed)
    k, v, q = real_kv["k"][il], real_kv["v"][il], real_kv["q"][il]
    # float scores: the identities below are exact up to float32 rounding (the default int8
    # scores are checked against the compression error in test_kv_compressed.py)
    c = _core.KVCacheTester(dict(p, exact_scores=True), 2, n_kv, d, n)
    cut = 137 if seed == 0 else int(rng.integers(1, n))
    c.append(slot, k[:cut], v[:cut])
    c.append(slot, k[cut:], v[cut:])
    # An empty append: every query below is now before the latest append, so it sees the final
    # state with every block sealed (the latest append's own queries would see the blocks it
    # sealed after their position exact: test_kv_compressed.py checks that).
    c.append(slot, k[:0], v[:0])
    Kc, Vc = c.dequantized(slot)
    queries = [(n - 12, 12), (p["sinks"] + p["block"] // 2, 3), (max(p["sinks"] - 1, 0), 1)]
    outs = {pos0: c.attend(slot, pos0, q[pos0:pos0 + m]) for pos0, m in queries}
    where = f"seed={seed} layer={il} {p}"
    worst = dict(deq=0.0, cpp_vs_deq=0.0, cpp_vs_codes=0.0)
    for g in range(n_kv):
        R = _core.rotation_matrix(d, rk.cache_rotation_seed(p.get("seed", 0x5EED), slot, g))
        cache = rk.build_cache(k[:, g], v[:, g], R, **ref_cache_args(p, d))
        assert len(cache["blocks"]) >= 1, where
        K, V = rk.dequantize_cache(cache, R)
        for A, B_ in ((K, Kc[:, g]), (V, Vc[:, g])):
            diff = np.max(np.abs(A - B_), axis=1) / np.max(np.abs(B_))
            worst["deq"] = max(worst["deq"], float(diff.max()))
            # float32 un-rotation on the C++ side; a differing code would show as ~1e-2
            assert np.mean(diff < 1e-5) >= 0.99 and diff.max() < 0.2, (where, g, diff.max())
        for pos0, m in queries:
            for t in range(m):
                pos = pos0 + t
                qs = q[pos, g * group:(g + 1) * group]
                o = outs[pos0][t, g * group:(g + 1) * group]
                ref_deq = rk.attention(qs, Kc[:pos + 1, g], Vc[:pos + 1, g])
                scale = np.max(np.abs(ref_deq))
                e1 = np.max(np.abs(o - ref_deq)) / scale
                e2 = np.max(np.abs(o - rk.attention_from_codes(qs, cache, R, n_vis=pos + 1))) / scale
                worst["cpp_vs_deq"] = max(worst["cpp_vs_deq"], e1)
                worst["cpp_vs_codes"] = max(worst["cpp_vs_codes"], e2)
                assert e1 < 2e-5, (where, g, pos, e1)
                assert e2 < 1e-4, (where, g, pos, e2)
    print(f"{where}: " + ", ".join(f"{a} {b:.1e}" for a, b in worst.items()))
