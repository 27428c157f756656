"""Independent NumPy reference of the compressed KV cache (../shared/spec/kv-compression.md,
sections 3, 3.1, 4, 5): Lloyd–Max codebooks for the rotated-coordinate law, eOptShrink from the
eigenvalues, sealing one block (low-rank factors + TurboQuant residual), decoding, and attention
straight from the codes.  Written from the spec; it imports nothing from eoq.

Where the spec leaves a choice open, this file follows the choices the C++ engine made
(engine/eoptshrink.cpp, kernels/ref/turboquant.cpp, engine/kv_cache_compressed.cpp) so that the
two can be compared code for code.  Each such choice is marked "ENGINE CHOICE" below.  The
arithmetic is mirrored where it decides a code (float32 vs float64, rounding modes), so that on the
same float32 input both sides pick the same codes except where a value sits within rounding of a
decision boundary.

API
    centroids, mse = lloyd_max(d, bits)              # ascending, units of 1/sqrt(d), float64
    rank, phi = eoptshrink(lam, p, N)                # lam descending
    blk = seal_block(X, bits=2, rank_cap=3, factor_bits=4, shrink=True, norm_correction=True, R=None)
    Xh  = decode(blk, dtype=np.float64)              # reconstruction from the stored codes
    o   = attention(q, K, V)                         # plain softmax attention, float64
    o   = attention_from_codes(q, cache, R=None, n_vis=None)   # section 5, from the codes
    cache = build_cache(k, v, R, ...)                # one (layer, KV head) stream, as the engine keeps it
    K, V = dequantize_cache(cache, R)                # explicit reconstruction (original basis)
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# ---------------------------------------------------------------------------------------------
# Section 4: Lloyd–Max codebook for one coordinate of a random unit vector in R^d.
#
# t = one coordinate of a uniform unit vector: (t + 1)/2 ~ Beta((d−1)/2, (d−1)/2), i.e. t has
# density ∝ (1 − t²)^((d−3)/2) on [−1, 1].  In the scaled variable x = t·sqrt(d) (the units the
# codebook is kept in) the density is ∝ (1 − x²/d)^((d−3)/2) on [−sqrt(d), sqrt(d)].  The law is
# symmetric, so only the m = 2^(b−1) positive centroids are solved for; cell integrals use
# composite Gauss–Legendre in x (the normaliser cancels in the centroid condition).  Lloyd
# iterations get close, then Newton on c = Lloyd(c) (finite-difference Jacobian, m <= 8 unknowns)
# converges to ~1e-14.

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(40)
_GL_PANELS = 8


def _coord_density(x, d):
    u = np.clip(1.0 - x * x / d, 0.0, None)
    if d == 3:
        return np.ones_like(x)
    with np.errstate(divide="ignore"):
        return np.where(u > 0, np.exp(0.5 * (d - 3) * np.log(np.where(u > 0, u, 1.0))), 0.0)


def _cell_integrals(lo, hi, d, powers=(0, 1)):
    """∫ x^k f(x) dx over the cells [lo_i, hi_i] for each k in powers (composite Gauss–Legendre)."""
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    frac = np.linspace(0.0, 1.0, _GL_PANELS + 1)
    edges = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
    a, b = edges[:, :-1], edges[:, 1:]
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    x = mid[..., None] + half[..., None] * _GL_NODES
    f = _coord_density(x, d) * _GL_WEIGHTS
    return [np.sum(np.sum(f * x**k, axis=-1) * half, axis=-1) for k in powers]


def _lloyd_step(c, d):
    sd = math.sqrt(d)
    t = np.concatenate([[0.0], 0.5 * (c[:-1] + c[1:]), [sd]])
    mass, mom = _cell_integrals(t[:-1], t[1:], d)
    return mom / mass


@lru_cache(maxsize=None)
def _lloyd_max_cached(d, bits):
    if d < 3:
        raise ValueError("lloyd_max: d >= 3 (at d = 2 the coordinate density is singular)")
    m = 1 << (bits - 1)
    sd = math.sqrt(d)
    c = np.minimum(3.0, sd) * (np.arange(m) + 0.5) / m
    for _ in range(60):
        c = _lloyd_step(c, d)
    for _ in range(60):  # Newton on F(c) = Lloyd(c) − c
        F = _lloyd_step(c, d) - c
        if np.max(np.abs(F)) < 1e-15:
            break
        J = np.empty((m, m))
        for j in range(m):
            h = 1e-7 * max(1.0, abs(c[j]))
            cp = c.copy()
            cp[j] += h
            J[:, j] = (_lloyd_step(cp, d) - cp - F) / h
        step = np.linalg.solve(J, -F)
        cn = c + step
        if np.all(np.diff(cn) > 0) and cn[0] > 0 and cn[-1] < sd:
            c = cn
        else:  # keep ordered: fall back to plain Lloyd steps
            for _ in range(50):
                c = _lloyd_step(c, d)
    # MSE per scaled coordinate: Σ_cells ∫ (x − c_i)² f / ∫ f (both halves alike).
    t = np.concatenate([[0.0], 0.5 * (c[:-1] + c[1:]), [sd]])
    m0, m1, m2 = _cell_integrals(t[:-1], t[1:], d, powers=(0, 1, 2))
    mse = float(np.sum(m2 - 2 * c * m1 + c * c * m0) / np.sum(m0))
    full = np.concatenate([-c[::-1], c])
    full.setflags(write=False)
    return full, mse


def lloyd_max(d: int, bits: int):
    """(centroids [2^bits] ascending, units of 1/sqrt(d), float64; MSE per scaled coordinate)."""
    return _lloyd_max_cached(int(d), int(bits))


def codebook_f32(d: int, bits: int):
    """ENGINE CHOICE: centroids are kept as float32 and the thresholds are the float32 midpoints
    0.5f·(c_i + c_{i+1}); a coordinate is coded as #(thresholds <= x) (upper bound: a value
    exactly on a threshold goes to the upper cell)."""
    c = lloyd_max(d, bits)[0].astype(np.float32)
    thr = (c[:-1] + c[1:]) * np.float32(0.5)
    return c, thr


# ---------------------------------------------------------------------------------------------
# Section 3.1: eOptShrink from the eigenvalues (λ descending, p = d, N = B, β = p/N).


def eoptshrink(lam, p: int, N: int, return_info: bool = False):
    """(rank, φ[rank]) from the eigenvalues of XᵀX.  φ_i = 0 marks an invalid estimate.

    ENGINE CHOICES beyond the spec: p < 4 or N < p gives rank 0; so does a degenerate spectrum
    whose bulk-edge estimate is not > 1e-12·λ[1] (no noise bulk: zeros, repeated rows, exact
    low rank); T <= 0 or non-finite gives φ = 0."""
    lam = np.asarray(lam, np.float64)
    info = dict(k=0, edge=0.0, degenerate=False)
    res = (0, np.zeros(0))
    if p < 4 or N < p:
        return (res + (info,)) if return_info else res
    L = lambda i: lam[i - 1]  # 1-based
    c = min(1.0 / 2.01, 1.0 / math.log(math.log(p)))
    k = int(math.floor(p**c))
    info["k"] = k
    if k < 1 or 2 * k + 1 > p:
        return (res + (info,)) if return_info else res
    den = 2.0 ** (2.0 / 3.0) - 1.0
    edge = L(k + 1) + (L(k + 1) - L(2 * k + 1)) / den
    info["edge"] = edge
    if not (edge > 1e-12 * abs(L(1))) or not math.isfinite(edge):
        info["degenerate"] = True
        return (res + (info,)) if return_info else res
    r = int(np.sum(lam[:p] / edge - 1.0 > p ** (-1.0 / 3.0)))
    r = min(r, p - 2 * k - 1)
    if r <= 0:
        return (res + (info,)) if return_info else res
    beta = p / N
    a, b = L(r + k + 1), L(r + 2 * k + 1)
    j = np.arange(1, k + 1)
    imputed = a + (1.0 - (j / k) ** (2.0 / 3.0)) * (a - b) / den
    noise = np.concatenate([imputed, lam[r + k: p]])  # λ[r+k+1 .. p], 1-based
    phi = np.zeros(r)
    for i in range(r):
        z = lam[i]
        inv = 1.0 / (noise - z)
        m1, m1d = inv.mean(), (inv * inv).mean()
        m2 = -(1 - beta) / z + beta * m1
        m2d = (1 - beta) / z**2 + beta * m1d
        T = z * m1 * m2
        Td = m1 * m2 + z * m1d * m2 + z * m1 * m2d
        if not (T > 0) or not math.isfinite(T) or not math.isfinite(Td) or Td == 0:
            continue
        dh = 1.0 / math.sqrt(T)
        a1, a2 = m1 / (dh * dh * Td), m2 / (dh * dh * Td)
        if a1 > 0 and a2 > 0:
            ph = dh * math.sqrt(a1 * a2)
            if math.isfinite(ph):
                phi[i] = ph
    return ((r, phi, info)) if return_info else (r, phi)


# ---------------------------------------------------------------------------------------------
# Rotation.  Π itself comes from the engine (_core.rotation_matrix; tested separately).  To feed
# both implementations the very same float32 rows, rotate_rows mirrors how the engine applies a
# randomized Hadamard Π in float32: y = D2 · FWHT(D1 · x) · (1/sqrt(d)), butterflies in float32
# (each output is the same sequence of float additions whatever the loop order).  D1, D2 are read
# back from Π (first row and column of H are all ones).  Dense Π (d not a power of two): float64
# product rounded to float32, as the engine does.


def _hadamard_signs(R):
    R = np.asarray(R, np.float64)
    d = R.shape[0]
    if d & (d - 1) or d < 2:
        return None
    s1 = np.sign(R[0, :])
    s2 = np.sign(R[:, 0]) * np.sign(R[0, 0])
    H = _fwht_f32(np.eye(d, dtype=np.float32)).astype(np.float64)
    if not np.allclose(s2[:, None] * H * s1[None, :] / math.sqrt(d), R, atol=1e-6):
        return None
    return s1.astype(np.float32), s2.astype(np.float32)


def _fwht_f32(x):
    y = np.array(x, dtype=np.float32, copy=True)
    n, d = y.shape
    h = 1
    while h < d:
        y = y.reshape(n, d // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = np.stack([a + b, a - b], axis=2).reshape(n, d)
        h *= 2
    return y


def rotate_rows(X, R, transpose: bool = False):
    """Rows of X [n, d] through Π (or Πᵀ), float32 as the engine computes it."""
    X = np.asarray(X, np.float32)
    signs = _hadamard_signs(R)
    d = X.shape[1]
    if signs is None:
        R64 = np.asarray(R, np.float64)
        return (X.astype(np.float64) @ (R64 if transpose else R64.T)).astype(np.float32)
    s1, s2 = signs
    s = np.float32(1.0) / np.sqrt(np.float32(d))
    if transpose:
        return (s1 * _fwht_f32(s2 * X)) * s
    return (s2 * _fwht_f32(s1 * X)) * s


def f16(x):
    """float32 → f16 → float32, round to nearest even (ENGINE CHOICE: exact rows, norms and
    scales are stored as IEEE half; values beyond ±65504 are clamped for the exact rows)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def _round_half_away(v):
    """std::lround: round half away from zero (ENGINE CHOICE for the factor quantizer)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


# ---------------------------------------------------------------------------------------------
# Section 3: sealing one block.


def _quantize_factor(x, qmax):
    """ENGINE CHOICE: symmetric quantizer, levels −qmax..qmax (qmax = 2^(b−1) − 1), one scale
    amax/qmax, rounded double → float32 → f16; codes chosen against the rounded scale (x/s in
    double, round half away from zero, clamped).  A non-finite scale fails (→ rank 0)."""
    x = np.asarray(x, np.float64)
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    s = float(f16(np.float32(amax / qmax)))
    if not math.isfinite(s):
        return None, None
    if s == 0.0:
        return s, np.zeros(x.shape, np.int64)
    q = np.clip(_round_half_away(x / s), -qmax, qmax).astype(np.int64)
    return s, q


def _turbo_encode_rows(R, bits, norm_correction):
    """Section 4 row codec (no rotation here: rows are already in the rotated basis).
    ENGINE CHOICES: ρ = ‖r‖ in double; the scaled coordinate r_j·(sqrt(d)/ρ) is formed in double
    and rounded to float32 before the threshold search; with norm correction the stored norm is
    ρ/‖ĉ‖, ‖ĉ‖² = Σ c[code_j]²/d over the float32 centroids (double sum); the norm is stored as
    f16 through float32.  A zero (or non-finite-norm) row stores norm 0 and codes 0."""
    n, d = R.shape
    cent, thr = codebook_f32(d, bits)
    R64 = R.astype(np.float64)
    rho = np.sqrt(np.sum(R64 * R64, axis=1))
    ok = (rho > 0) & np.isfinite(rho)
    sc = np.where(ok, math.sqrt(d) / np.where(ok, rho, 1.0), 0.0)
    v = (R64 * sc[:, None]).astype(np.float32)
    codes = np.searchsorted(thr, v, side="right").astype(np.int64)
    codes[~ok] = 0
    c2 = np.sum(cent.astype(np.float64)[codes] ** 2, axis=1)
    stored = rho.copy()
    if norm_correction:
        good = c2 > 0
        stored[good] = rho[good] / np.sqrt(c2[good] / d)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = f16(stored.astype(np.float32))
    norms[~ok] = 0.0
    return codes, norms


# 8-bit log-domain norms (ENGINE CHOICE, kernels/turboquant.h): code c in 0..254 is the f16 of
# 2^(shift − c/32) built from bits, mantissa table M[c & 31] = f16 bits of 2^(−k/32) (double →
# float32 → f16) plus (shift − c>>5) in the exponent field; 255 is 0; shift in [−6, 15].
LOG_NORM_ZERO, LOG_NORM_MIN_SHIFT, LOG_NORM_MAX_SHIFT = 255, -6, 15


def log_norm_mantissa():
    return np.array([np.float16(np.float32(2.0 ** (-k / 32))).view(np.uint16) for k in range(32)], np.int64)


def log_norm_values(shift):
    """Decoded f16 values (as float64) of codes 0..254 for one shift."""
    c = np.arange(255)
    bits = (log_norm_mantissa()[c & 31] + (shift - (c >> 5)) * 1024).astype(np.uint16)
    return bits.view(np.float16).astype(np.float64)


def log_norm_shift(max_norm):
    """The smallest shift >= −6 with 2^shift >= max_norm; None above 2^15 (f16 norms kept)."""
    if not (max_norm <= 2.0 ** LOG_NORM_MAX_SHIFT):
        return None
    e = LOG_NORM_MIN_SHIFT
    while 2.0 ** e < max_norm:
        e += 1
    return e


def log_norm_encode(x, shift):
    """Nearest code in the log domain: codes c, c+1 split at sqrt(v_c v_{c+1}) (compared as x²
    against the product in float64); below half the smallest value: 255 (zero)."""
    v = log_norm_values(shift)
    x = np.asarray(x, np.float64)
    codes = np.zeros(x.shape, np.int64)
    x2 = x * x
    split = v[:-1] * v[1:]  # decreasing
    for i, q in enumerate(x2.ravel()):
        codes.flat[i] = LOG_NORM_ZERO if 4 * q < v[254] ** 2 else int(np.argmax(np.append(q >= split, True)))
    return codes


def log_norm_decode(codes, shift):
    v = np.append(log_norm_values(shift), 0.0)
    return v[np.asarray(codes, np.int64)].astype(np.float32)


def _residual_decode_f32(codes, norms, bits, d):
    """ENGINE CHOICE (float32 decode): s = ρ_f16 / sqrt(float(d)) in float32, x̂_j = s·c[code_j]."""
    cent, _ = codebook_f32(d, bits)
    s = np.asarray(norms, np.float32) / np.sqrt(np.float32(d))
    return s[:, None] * cent[codes]


def lowrank_from_codes(Cq, Cs, Bq, Bs):
    """Dequantized factors Ĉ = s_c·q, B̂ = s_b·q (float32) and L = Ĉ B̂ summed in float32 over
    the components in stored order (what the engine forms, without fused multiply-add)."""
    coef = Cs.astype(np.float32)[None, :] * Cq.astype(np.float32)
    basis = Bs.astype(np.float32)[:, None] * Bq.astype(np.float32)
    n, r = coef.shape
    L = np.zeros((n, basis.shape[1]), np.float32)
    for c in range(r):
        L = L + np.outer(coef[:, c], basis[c]).astype(np.float32)
    return coef, basis, L


def seal_block(X, bits=2, rank_cap=3, factor_bits=4, shrink=True, norm_correction=True, R=None, norm_bits=16):
    """Seal X [n, d] (the rotated basis; or the original basis with R given, rotated here as the
    cache does at append).  Returns a dict:
      kind ("compressed" | "exact"), fallback, n, d, bits, factor_bits,
      rank, rank_raw, sigma, phi, gains (per stored component, stored order),
      C_codes [n, r] and C_scales [r] (per column), B_codes [r, d] and B_scales [r] (per row),
      codes [n, d] residual Lloyd–Max indices, norms [n] (stored, f16 values; with norm_bits 8 the
      decoded log-domain values, their bytes in norm_codes and the exponent in norm_shift),
      lowrank, residual, recon [n, d] float32 (as the engine forms them), rel_err, X (sealed input).

    ENGINE CHOICES:
      * G = XᵀX in float64; eigen-decomposition of G (here np.linalg.eigh, sorted descending);
        p = min(n, d), N = max(n, d).
      * Of the eOptShrink rank, only components with φ > 0 and λ > 0 are kept, ordered by φ
        descending (stable), then cut to rank_cap (so with the cap the largest φ are kept and the
        stored order is by φ, in both shrink and truncate modes).
      * Sign: the basis row is flipped so its largest-magnitude entry (first one on ties) is
        positive; C = X·Bmᵀ·g in double from the float32 X.
      * The gains are stored (f16) for statistics only; the factors already include them.
      * Fallbacks: non-finite input → exact f16 copy with the non-finite entries set to 0;
        all-zero block → r = 0 ("turbo_zero"); degenerate spectrum or a factor scale that
        overflows f16 → r = 0 ("turbo_degenerate"); a residual norm that overflows f16 →
        exact f16 copy ("exact_overflow").
    """
    X = np.asarray(X, np.float32)
    if R is not None:
        X = rotate_rows(X, R)
    n, d = X.shape
    out = dict(kind="compressed", fallback="none", n=n, d=d, bits=bits, factor_bits=factor_bits,
               rank=0, rank_raw=0, sigma=[], phi=[], gains=[], X=X,
               C_codes=np.zeros((n, 0), np.int64), C_scales=np.zeros(0), B_codes=np.zeros((0, d), np.int64),
               B_scales=np.zeros(0))

    def exact(fallback):
        Xe = np.where(np.isfinite(X), X, 0.0).astype(np.float32)
        Xe = f16(np.clip(Xe, -65504.0, 65504.0))
        out.update(kind="exact", fallback=fallback, rank=0, sigma=[], phi=[], gains=[],
                   C_codes=np.zeros((n, 0), np.int64), C_scales=np.zeros(0),
                   B_codes=np.zeros((0, d), np.int64), B_scales=np.zeros(0),
                   codes=np.zeros((n, d), np.int64), norms=np.zeros(n, np.float32),
                   lowrank=np.zeros((n, d), np.float32), residual=np.zeros((n, d), np.float32), recon=Xe)
        fin = np.isfinite(X)
        X64 = np.where(fin, X, 0).astype(np.float64)
        xn2 = float(np.sum(X64 * X64))
        out["rel_err"] = math.sqrt(float(np.sum(((X64 - Xe) * fin) ** 2)) / xn2) if xn2 > 0 else 0.0
        return out

    if not np.all(np.isfinite(X)):
        return exact("exact_nonfinite")
    X64 = X.astype(np.float64)
    xnorm2 = float(np.sum(X64 * X64))
    r = 0
    comps = []
    if xnorm2 == 0:
        out["fallback"] = "turbo_zero"
    elif rank_cap > 0:
        G = X64.T @ X64
        w, V = np.linalg.eigh(G)
        w, V = w[::-1].copy(), V[:, ::-1].copy()
        pp, NN = min(n, d), max(n, d)
        rank_raw, phi, info = eoptshrink(w[:pp], pp, NN, return_info=True)
        out["rank_raw"] = rank_raw
        if info["degenerate"]:
            out["fallback"] = "turbo_degenerate"
        keep = [i for i in range(rank_raw) if phi[i] > 0 and w[i] > 0]
        keep.sort(key=lambda i: -phi[i])  # Python's sort is stable
        keep = keep[:rank_cap]
        for i in keep:
            sigma = math.sqrt(w[i])
            g = phi[i] / sigma if shrink else 1.0
            v = V[:, i]
            jmax = int(np.argmax(np.abs(v)))
            b = -v if v[jmax] < 0 else v.copy()
            comps.append(dict(sigma=sigma, phi=float(phi[i]), gain=g, basis=b, coef=(X64 @ b) * g))
        r = len(comps)

    lowrank = np.zeros((n, d), np.float32)
    if r > 0:
        qmax = (1 << (factor_bits - 1)) - 1
        Cq, Cs, Bq, Bs = [], [], [], []
        ok = True
        for c in comps:
            s1, q1 = _quantize_factor(c["coef"], qmax)
            s2, q2 = _quantize_factor(c["basis"], qmax)
            if s1 is None or s2 is None:
                ok = False
                break
            Cs.append(s1), Cq.append(q1), Bs.append(s2), Bq.append(q2)
        if not ok:
            r, comps = 0, []
            out["fallback"] = "turbo_degenerate"
        else:
            Cq = np.stack(Cq, axis=1)
            Bq = np.stack(Bq, axis=0)
            Cs, Bs = np.asarray(Cs), np.asarray(Bs)
            _, _, lowrank = lowrank_from_codes(Cq, Cs, Bq, Bs)
            out.update(C_codes=Cq, C_scales=Cs, B_codes=Bq, B_scales=Bs)
    out.update(rank=r, sigma=[c["sigma"] for c in comps], phi=[c["phi"] for c in comps],
               gains=[c["gain"] for c in comps])

    # Closed loop: the residual is taken against the low-rank part as stored (float32).
    Rres = X - lowrank
    codes, norms = _turbo_encode_rows(Rres, bits, norm_correction)
    if not np.all(np.isfinite(norms)):
        return exact("exact_overflow")
    if norm_bits == 8:
        shift = log_norm_shift(float(np.max(norms)) if n else 0.0)
        if shift is not None:
            nc = log_norm_encode(norms, shift)
            norms = log_norm_decode(nc, shift)
            out.update(norm_codes=nc, norm_shift=shift)
    residual = _residual_decode_f32(codes, norms, bits, d)
    recon = residual + lowrank
    out.update(codes=codes, norms=norms, lowrank=lowrank, residual=residual, recon=recon,
               rel_err=math.sqrt(float(np.sum((X64 - recon) ** 2)) / xnorm2) if xnorm2 > 0 else 0.0)
    return out


def decode(blk, dtype=np.float64):
    """Reconstruction from what the block stores.  float64: the exact value of the stored codes
    (Ĉ B̂ + ρ c/sqrt(d) with no intermediate rounding); float32: as the engine forms it."""
    n, d = blk["n"], blk["d"]
    if blk["kind"] == "exact":
        return np.asarray(blk["recon"], dtype)
    if dtype == np.float32:
        L = np.zeros((n, d), np.float32)
        if blk["rank"]:
            L = lowrank_from_codes(blk["C_codes"], blk["C_scales"], blk["B_codes"], blk["B_scales"])[2]
        return _residual_decode_f32(blk["codes"], blk["norms"], blk["bits"], d) + L
    Ch, Bh = factors64(blk)
    cent = lloyd_max(d, blk["bits"])[0].astype(np.float32).astype(np.float64)
    res = np.asarray(blk["norms"], np.float64)[:, None] * cent[blk["codes"]] / math.sqrt(d)
    return Ch @ Bh + res


def factors64(blk):
    """(Ĉ [n, r], B̂ [r, d]) in float64 from the codes and scales."""
    Ch = np.asarray(blk["C_codes"], np.float64) * np.asarray(blk["C_scales"], np.float64)[None, :]
    Bh = np.asarray(blk["B_codes"], np.float64) * np.asarray(blk["B_scales"], np.float64)[:, None]
    return Ch, Bh


# ---------------------------------------------------------------------------------------------
# Section 5: attention straight from the codes.


def attention(q, K, V):
    """Plain softmax attention in float64: q [G, d] (unscaled), K, V [m, d] → [G, d]."""
    q = np.atleast_2d(np.asarray(q, np.float64))
    K = np.asarray(K, np.float64)
    V = np.asarray(V, np.float64)
    s = q @ K.T / math.sqrt(q.shape[1])
    s -= s.max(axis=1, keepdims=True)
    w = np.exp(s)
    return (w @ V) / w.sum(axis=1, keepdims=True)


def attention_from_codes(q, cache, R=None, n_vis=None):
    """Attention of the query heads q [G, d] (post-RoPE, unscaled; original basis if R is given,
    else already rotated) over one KV head's cache {sinks_k, sinks_v, blocks: [(K blk, V blk)],
    ring_k, ring_v}, seeing the first n_vis tokens (default all).  Float64, online softmax over
    segments (sinks, each block, ring), never rebuilding K or V of a sealed block:
        score(t) = Ĉ_K[t]·(B̂_K q̃) + ρ_t Σ_j q̃_j c[code_tj]/sqrt(d)
        o += B̂_Vᵀ (Ĉ_Vᵀ w) + Σ_t (w_t ρ_t) c[code_t]/sqrt(d)
    with q̃ = Π q / sqrt(d).  Output in the original basis if R is given (Πᵀ o / Σw)."""
    q = np.atleast_2d(np.asarray(q, np.float64))
    G, d = q.shape
    qt = q @ np.asarray(R, np.float64).T if R is not None else q.copy()
    qt /= math.sqrt(d)
    acc = np.zeros((G, d))
    mx = np.full(G, -np.inf)
    tot = np.zeros(G)
    left = n_vis if n_vis is not None else 1 << 62

    def absorb(sc):
        nonlocal acc, mx, tot
        bm = sc.max(axis=1)
        grow = bm > mx
        f = np.where(grow, np.exp(np.where(grow, mx - bm, 0.0)), 1.0)
        acc *= f[:, None]
        tot *= f
        mx = np.maximum(mx, bm)
        w = np.exp(sc - mx[:, None])
        tot += w.sum(axis=1)
        return w

    def exact_segment(Kr, Vr):
        nonlocal left
        m = min(len(Kr), left)
        if m <= 0:
            return
        w = absorb(qt @ np.asarray(Kr[:m], np.float64).T)
        acc[:] += w @ np.asarray(Vr[:m], np.float64)
        left -= m

    exact_segment(cache["sinks_k"], cache["sinks_v"])
    for kb, vb in cache["blocks"]:
        m = min(kb["n"], left)
        if m <= 0:
            break
        if kb["kind"] == "exact":
            sc = qt @ np.asarray(kb["recon"][:m], np.float64).T
        else:
            sc = np.zeros((G, m))
            if kb["rank"] > 0:
                Ck, Bk = factors64(kb)
                sc += (Ck[:m] @ (Bk @ qt.T)).T          # r·d once, then r per token
            ck = lloyd_max(d, kb["bits"])[0].astype(np.float32).astype(np.float64)
            rho = np.asarray(kb["norms"][:m], np.float64)
            look = ck[kb["codes"][:m]]                  # [m, d] codebook values of the codes
            sc += rho[None, :] * (qt @ look.T) / math.sqrt(d)
        w = absorb(sc)
        if vb["kind"] == "exact":
            acc += w @ np.asarray(vb["recon"][:m], np.float64)
        else:
            if vb["rank"] > 0:
                Cv, Bv = factors64(vb)
                acc += (w @ Cv[:m]) @ Bv                # a = Ĉᵀw, then B̂ᵀ a
            cv = lloyd_max(d, vb["bits"])[0].astype(np.float32).astype(np.float64)
            rho = np.asarray(vb["norms"][:m], np.float64)
            acc += ((w * rho[None, :]) @ cv[vb["codes"][:m]]) / math.sqrt(d)
        left -= m
    exact_segment(cache["ring_k"], cache["ring_v"])
    o = acc / tot[:, None]
    return o @ np.asarray(R, np.float64) if R is not None else o


# ---------------------------------------------------------------------------------------------
# Section 2: one (layer, KV head) stream as the engine keeps it (for cross-checks).


def _splitmix64(state):
    M = (1 << 64) - 1
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return state, z ^ (z >> 31)


def cache_rotation_seed(seed: int, layer: int, head: int) -> int:
    """ENGINE CHOICE: the per-(layer, KV head) rotation seed, splitmix64-mixed from the cache
    seed: h = sm(seed); h = sm(h ^ layer·0xd1b54a32d192ed03); return sm(h ^ head·0x8cb92ba72f3d8dd7)."""
    M = (1 << 64) - 1
    _, h = _splitmix64(seed & M)
    _, h = _splitmix64(h ^ ((layer * 0xD1B54A32D192ED03) & M))
    _, h = _splitmix64(h ^ ((head * 0x8CB92BA72F3D8DD7) & M))
    return h


def build_cache(k, v, R, *, k_bits=2, v_bits=2, rank_cap=3, factor_bits=4, shrink=True,
                norm_correction=True, block=256, ring=256, sinks=4, norm_bits=16, tail_bits=0, window=16,
                v_tail_bits=None, k_adapt=0):
    """k, v [n, d] of one KV head in arrival order (original basis).  ENGINE CHOICES: rows are
    rotated in float32 and stored as f16 (sinks: the first `sinks` positions; the rest in the
    ring); whenever the ring holds ring + block tokens its oldest `block` tokens are sealed, from
    their f16 values.  The final layout does not depend on how the tokens were chunked.
    tail_bits > 0: every token after the sinks is also coded (TurboQuant of its f16 row, tail_bits;
    values v_tail_bits when given; f16 norm); blocks seal from those codes, decoded; once a block
    is sealed, of the unsealed tokens the last `window` read exact (f16), older ones as their
    decoded codes (before the first seal all of them exact) — what ring_k/ring_v hold here.  k_adapt > 0: a key block is sealed with k_bits − 1 when its relative
    error stays at most k_adapt/1000, else with k_bits."""
    n = len(k)
    kr, vr = f16(rotate_rows(k, R)), f16(rotate_rows(v, R))
    S = min(sinks, n)
    cache = dict(sinks_k=kr[:S], sinks_v=vr[:S], blocks=[])
    d = kr.shape[1]
    if tail_bits:
        src = []
        for x, tb in ((kr, tail_bits), (vr, v_tail_bits or tail_bits)):
            codes, norms = _turbo_encode_rows(np.asarray(x[S:], np.float32), tb, norm_correction)
            src.append(np.concatenate([x[:S], _residual_decode_f32(codes, norms, tb, d)]).astype(np.float32))
        ks, vs = src
    else:
        ks, vs = kr, vr

    def seal_k(X):  # k_adapt: one bit less when that meets the relative-error target
        if k_adapt and k_bits > 1:
            blk = seal_block(X, k_bits - 1, rank_cap, factor_bits, shrink, norm_correction, norm_bits=norm_bits)
            if blk["rel_err"] <= k_adapt / 1000:
                return blk
        return seal_block(X, k_bits, rank_cap, factor_bits, shrink, norm_correction, norm_bits=norm_bits)

    pos = S
    while n - pos >= ring + block:
        cache["blocks"].append((
            seal_k(ks[pos:pos + block]),
            seal_block(vs[pos:pos + block], v_bits, rank_cap, factor_bits, shrink, norm_correction, norm_bits=norm_bits)))
        pos += block
    if tail_bits and cache["blocks"]:
        ex = max(pos, n - window)
        cache["ring_k"] = np.concatenate([ks[pos:ex], kr[ex:]])
        cache["ring_v"] = np.concatenate([vs[pos:ex], vr[ex:]])
    else:
        cache["ring_k"], cache["ring_v"] = kr[pos:], vr[pos:]
    return cache


def dequantize_cache(cache, R=None, dtype=np.float64):
    """(K, V) [n, d] of a build_cache stream, explicitly decoded; original basis if R is given."""
    parts_k = [np.asarray(cache["sinks_k"], dtype)]
    parts_v = [np.asarray(cache["sinks_v"], dtype)]
    for kb, vb in cache["blocks"]:
        parts_k.append(decode(kb, dtype))
        parts_v.append(decode(vb, dtype))
    parts_k.append(np.asarray(cache["ring_k"], dtype))
    parts_v.append(np.asarray(cache["ring_v"], dtype))
    K, V = np.concatenate(parts_k), np.concatenate(parts_v)
    if R is not None:
        R64 = np.asarray(R, np.float64)
        K, V = K @ R64, V @ R64
    return K, V
