"""eoq-blockstudy: eoq (eOptShrink low rank + TurboQuant residual) against plain TurboQuant on
real K/V blocks of a model, at equal fully-counted bits (spec section 9, "block level").

    eoq-blockstudy -f wikitext-2-test.txt -n 2048 -o blockstudy.json
    eoq-blockstudy -m model.gguf -f text.txt --layers 0-3 --eoq-bits 2 --turbo-bits 2,3

What it does, step by step:

1. Capture. The text's first n tokens (tokenized as eoq-perplexity does) run once through the
   model from position 0 with an f16 KV cache (Engine.capture_qkv): per layer the post-RoPE
   queries q [n, n_head, d], keys k and values v [n, n_head_kv, d], float32, exactly what the
   forward pass hands to the cache.
2. Blocks, as the cache forms them. Per (layer l, KV head g), keys and values go through the
   cache's rotation Π_lg (rotation_apply, seed mix_seed(seed, l, g) as in the engine) and are
   rounded to f16 (the ring is f16; sealing reads it back). Blocks are rows [S + jB, S + (j+1)B)
   after the S sink tokens, every complete block that has at least one later position.
   Defaults for B, S, the rank cap and the seed are the engine's own (KVCacheParams, read from
   an empty cache's statistics).
3. Sealing. Each block X (B x d) is sealed with _core.seal_block at each eoq bit width
   (rank_cap = the cache's, eOptShrink) and each turbo bit width (rank_cap = 0: TurboQuant only),
   giving the reconstruction X^ and the fully counted bits per entry (codes, norms, factors,
   scales, gains, header; spec section 6).
4. Errors, all mean-square and relative (averaged over blocks, each block weighing the same):
     rel_mse    ||X^ - X||^2 / ||X||^2
     keys:   ip_rel     ||Q (K^ - K)^T||^2 / ||Q K^T||^2 with Q the real queries (rotated by Π_lg,
                        which leaves q.k unchanged) of the G query heads of KV group g at up to
                        --queries positions after the block (evenly spaced);
             score_rms  RMS of the score error q.(k^ - k)/sqrt(d) in logits (what softmax sees).
     values: out_rel    ||W (V^ - V)||^2 / ||W V||^2 with W the real attention weights of those
                        queries over the block's keys (softmax of q.k/sqrt(d) with the exact keys,
                        renormalised within the block): the error of the block's share of the
                        attention output, relative to that share. Renormalising keeps blocks that
                        get little attention from vanishing from the average.
5. Bits saved. Turbo's errors at its integer widths give log(error) as a piecewise-linear
   function of its fully counted bits; solving it for eoq's error gives the turbo bits that
   would match eoq, and bits saved = those bits - eoq's bits (> 0: eoq is better). Outside
   turbo's range the end segment is extended and the value is marked extrapolated ('*').
   The default turbo widths 2..5 bracket eoq 2..4. Bits saved is computed from the averaged
   errors at each level (head, layer, overall).

Output: Markdown on stdout (overall table, then bits saved per layer averaged over heads);
-o FILE writes JSON with everything per layer and head (and per block). Progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

KINDS = ("k", "v")
# The attention-level error per kind (see the module docstring).
ATTN_METRIC = {"k": "ip_rel", "v": "out_rel"}
METRICS = {"k": ("rel_mse", "ip_rel", "score_rms"), "v": ("rel_mse", "out_rel")}

_M64 = (1 << 64) - 1


# --- the cache's rotation seeds -----------------------------------------------------------

def _splitmix64(state: int) -> Tuple[int, int]:
    """(new state, output): kernels/ref/turboquant.cpp splitmix64 on Python ints."""
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def mix_seed(seed: int, layer: int, head: int) -> int:
    """The rotation seed of (layer, KV head), as the engine derives it from KVCacheParams.seed
    (kernels/ref/turboquant.cpp mix_seed)."""
    _, h = _splitmix64(seed & _M64)
    _, h = _splitmix64(h ^ ((layer * 0xD1B54A32D192ED03) & _M64))
    _, h = _splitmix64(h ^ ((head * 0x8CB92BA72F3D8DD7) & _M64))
    return h


def cache_defaults(head_dim: int) -> dict:
    """The engine's eoq cache parameters for this head_dim (block, sinks, rank_cap, factor_bits,
    shrink, norm_correction, seed), read from an empty cache so they follow KVCacheParams."""
    from . import _core

    p = _core.KVCacheTester({"mode": "eoq2"}, 1, 1, head_dim, 1, 1).stats()["params"]
    return {k: p[k] for k in ("block", "sinks", "rank_cap", "factor_bits", "shrink", "norm_correction", "seed")}


# --- interpolation ------------------------------------------------------------------------

def bits_for_error(bits: Sequence[float], errors: Sequence[float], target: float) -> Tuple[float, bool]:
    """The bits at which log(error), piecewise linear through the points (bits[i], errors[i]),
    reaches `target`; (nan, False) when it cannot. Returns (bits, extrapolated): outside the
    points' range the first or last segment is extended. Points need not be sorted; errors
    should fall with bits (the first segment that brackets target is used)."""
    pts = sorted((float(b), float(e)) for b, e in zip(bits, errors) if e > 0 and math.isfinite(e))
    if len(pts) < 2 or not (target > 0 and math.isfinite(target)):
        return math.nan, False
    x = [p[0] for p in pts]
    y = [math.log(p[1]) for p in pts]
    t = math.log(target)

    def on(i):  # segment i -> i+1 at t
        if y[i + 1] == y[i]:
            return math.nan
        return x[i] + (t - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i])

    for i in range(len(x) - 1):
        lo, hi = min(y[i], y[i + 1]), max(y[i], y[i + 1])
        if lo <= t <= hi:
            return on(i), False
    # Outside: extend the segment on the side of target (errors fall with bits).
    return (on(0) if t > max(y[0], y[1]) else on(len(x) - 2)), True


def bits_saved(modes: Dict[str, dict], metric: str) -> Dict[str, dict]:
    """For each eoq mode of `modes` ({mode: {"bits": .., metric: ..}}): the turbo bits that
    give eoq's `metric` (interpolated over the turbo modes) and saved = that - eoq's bits."""
    turbo = [(m["bits"], m[metric]) for name, m in modes.items() if name.startswith("turbo")]
    out = {}
    for name, m in modes.items():
        if not name.startswith("eoq"):
            continue
        tb, extra = bits_for_error([b for b, _ in turbo], [e for _, e in turbo], m[metric])
        ok = math.isfinite(tb)  # None (JSON null) where no turbo bits match
        out[name] = {"turbo_bits": tb if ok else None, "saved": tb - m["bits"] if ok else None, "extrapolated": extra}
    return out


# --- the study ----------------------------------------------------------------------------

def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def block_starts(n_tok: int, block: int, sinks: int, max_blocks: int = 0) -> List[int]:
    """First rows of the blocks studied: sinks + j*block for every complete block that ends
    before n_tok (so later queries exist); at most max_blocks (> 0) of them, the first ones."""
    starts = list(range(sinks, n_tok - block, block))  # start + block < n_tok
    return starts[:max_blocks] if max_blocks > 0 else starts


def query_positions(first: int, n_tok: int, n_queries: int) -> np.ndarray:
    """Up to n_queries positions in [first, n_tok), evenly spaced, both ends included."""
    if n_queries <= 0 or first >= n_tok:
        raise ValueError("no query positions")
    return np.unique(np.linspace(first, n_tok - 1, min(n_queries, n_tok - first)).round().astype(np.int64))


def modes_of(eoq_bits: Sequence[int], turbo_bits: Sequence[int]) -> List[Tuple[str, int, bool]]:
    """(name, residual bits, low rank on) per mode studied."""
    return [(f"turbo{b}", b, False) for b in turbo_bits] + [(f"eoq{b}", b, True) for b in eoq_bits]


def study_head(qh: np.ndarray, kh: np.ndarray, vh: np.ndarray, rot_seed: int, cfg: dict) -> dict:
    """One (layer, KV head). qh [n, G, d]: its G query heads; kh, vh [n, d]. cfg: block, sinks,
    rank_cap, factor_bits, shrink, norm_correction, eoq_bits, turbo_bits, queries, max_blocks.
    Returns {"k": {"blocks": [...], "modes": {...}, "bits_saved": {...}}, "v": {...}}."""
    from . import _core

    n, G, d = qh.shape
    B = cfg["block"]
    rot = lambda x: _core.rotation_apply(np.ascontiguousarray(x, np.float32), rot_seed)  # noqa: E731
    K, V = _f16(rot(kh)), _f16(rot(vh))
    Q = rot(qh.reshape(n * G, d)).reshape(n, G, d)
    modes = modes_of(cfg["eoq_bits"], cfg["turbo_bits"])
    out = {kind: {"blocks": []} for kind in KINDS}
    for a in block_starts(n, B, cfg["sinks"], cfg["max_blocks"]):
        pos = query_positions(a + B, n, cfg["queries"])
        Qb = Q[pos].reshape(-1, d).astype(np.float64)            # [len(pos) * G, d]
        X = {"k": K[a:a + B], "v": V[a:a + B]}                    # [B, d] float32 (f16 values)
        S = Qb @ X["k"].astype(np.float64).T                      # exact scores [m, B]
        W = _softmax_rows(S / math.sqrt(d))                       # real weights within the block
        WV = W @ X["v"].astype(np.float64)
        for kind in KINDS:
            Xk = X[kind]
            X64 = Xk.astype(np.float64)
            energy = float((X64 ** 2).sum())
            rec = {"start": a, "queries": int(len(pos)), "modes": {}}
            for name, bits, lowrank in modes:
                r = _core.seal_block(Xk, bits=bits, rank_cap=cfg["rank_cap"] if lowrank else 0,
                                     factor_bits=cfg["factor_bits"], shrink=cfg["shrink"],
                                     norm_correction=cfg["norm_correction"])
                E = np.asarray(r["recon"], np.float64) - X64
                m = {"bits": float(r["bits_per_entry"]), "bits_paper": float(r["bits_per_entry_paper"]),
                     "rank": int(r["rank"]), "rel_mse": float((E ** 2).sum() / energy) if energy > 0 else 0.0}
                if kind == "k":
                    QE = Qb @ E.T
                    m["ip_rel"] = float((QE ** 2).sum() / max((S ** 2).sum(), 1e-300))
                    m["score_rms"] = float(math.sqrt((QE ** 2).mean() / d))
                else:
                    m["out_rel"] = float(((W @ E) ** 2).sum() / max((WV ** 2).sum(), 1e-300))
                rec["modes"][name] = m
            out[kind]["blocks"].append(rec)
    for kind in KINDS:
        out[kind].update(summarize([b["modes"] for b in out[kind]["blocks"]], kind))
    return out


def summarize(mode_dicts: Sequence[Dict[str, dict]], kind: str) -> dict:
    """Means over blocks (or heads) of each mode's numbers, and the bits saved from those means.
    mode_dicts: a list of {mode: {bits, bits_paper, rank, metric...}}."""
    if not mode_dicts:
        return {"modes": {}, "bits_saved": {}}
    names = list(mode_dicts[0])
    keys = ("bits", "bits_paper", "rank") + METRICS[kind]
    modes = {name: {k: float(np.mean([md[name][k] for md in mode_dicts])) for k in keys} for name in names}
    return {"modes": modes, "bits_saved": {metric: bits_saved(modes, metric) for metric in METRICS[kind]}}


def run_study(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: dict, layers: Optional[Sequence[int]] = None,
              n_threads: int = 1, progress: Optional[Callable[[int, int, float], None]] = None) -> dict:
    """The block study on captured q [L, n, n_head, d], k and v [L, n, n_head_kv, d].
    cfg as for study_head plus "seed" (the cache's KVCacheParams.seed). Returns
    {"heads": [{"layer", "head", "k", "v"}...], "layers": [{"layer", "k", "v"}...], "overall": {"k", "v"}}
    where each "k"/"v" holds "modes" (mean numbers per mode) and "bits_saved" (per metric)."""
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError("q must be [L, n, n_head, d] and k, v [L, n, n_head_kv, d]")
    L, n, H, d = q.shape
    Hkv = k.shape[2]
    if H % Hkv:
        raise ValueError(f"n_head {H} is not a multiple of n_head_kv {Hkv}")
    G = H // Hkv
    if cfg["block"] < d:
        raise ValueError(f"block {cfg['block']} must be >= head_dim {d} (sealing needs B >= d)")
    if not block_starts(n, cfg["block"], cfg["sinks"], cfg["max_blocks"]):
        raise ValueError(f"{n} tokens hold no complete block of {cfg['block']} after {cfg['sinks']} sinks "
                         f"with a later position; capture more tokens or use a smaller --block")
    layers = list(range(L)) if layers is None else list(layers)
    for il in layers:
        if not 0 <= il < L:
            raise ValueError(f"layer {il} is out of range (the model has {L})")
    jobs = [(il, g) for il in layers for g in range(Hkv)]

    def one(job):
        il, g = job
        return study_head(q[il, :, g * G:(g + 1) * G], k[il, :, g], v[il, :, g], mix_seed(cfg["seed"], il, g), cfg)

    t0 = time.perf_counter()
    heads = []
    # seal_block and NumPy release the GIL: heads run side by side.
    with ThreadPoolExecutor(max(1, n_threads)) as ex:
        for i, ((il, g), res) in enumerate(zip(jobs, ex.map(one, jobs))):
            heads.append({"layer": il, "head": g, **res})
            if progress:
                progress(i + 1, len(jobs), time.perf_counter() - t0)
    # Layer and overall levels: means over heads (every head has the same blocks).
    by_layer = []
    for il in layers:
        hs = [h for h in heads if h["layer"] == il]
        by_layer.append({"layer": il, **{kind: summarize([h[kind]["modes"] for h in hs], kind) for kind in KINDS}})
    overall = {kind: summarize([h[kind]["modes"] for h in heads], kind) for kind in KINDS}
    return {"heads": heads, "layers": by_layer, "overall": overall}


# --- capture ------------------------------------------------------------------------------

def text_tokens(engine, text: str, n_tokens: int) -> List[int]:
    """The first n_tokens tokens of text (BOS first when the model adds one, as eoq-perplexity);
    tokenizes a growing prefix so a long file is not tokenized whole."""
    chars = max(4096, 8 * n_tokens)
    while True:
        toks = engine.tokenize(text[:chars], add_special=True, parse_special=False)
        if len(toks) > n_tokens or chars >= len(text):
            break
        chars *= 2
    if len(toks) < n_tokens:
        raise ValueError(f"the text has {len(toks)} tokens, fewer than the {n_tokens} asked for")
    return list(toks[:n_tokens])


def capture(model: str, text: str, n_tokens: int, n_threads: int = 0) -> Tuple[dict, dict]:
    """(q/k/v dict from Engine.capture_qkv, info) for the text's first n_tokens tokens."""
    from . import _core

    e = _core.Engine(model, n_ctx=n_tokens, n_threads=n_threads, kv="f16")
    toks = text_tokens(e, text, n_tokens)
    qkv = e.capture_qkv(toks)
    return qkv, {"model": model, "name": e.name, "n_tokens": n_tokens}


# --- Markdown -----------------------------------------------------------------------------

def _saved_cell(bs: dict) -> str:
    s = bs["saved"]
    return "n/a" if s is None else f"{s:+.2f}{'*' if bs['extrapolated'] else ''}"


def overall_table(overall: dict) -> List[str]:
    """Markdown rows: per kind and mode, bits, rank and errors; bits saved for eoq modes."""
    lines = ["| | mode | bits/entry (full) | bits/entry (paper) | mean rank | rel. MSE | attention error | "
             "score RMS (logits) | bits saved (MSE) | bits saved (attention) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        o = overall.get(kind)
        if not o or not o["modes"]:
            continue
        attn = ATTN_METRIC[kind]
        for name, m in o["modes"].items():
            saved = ("", "")
            if name in o["bits_saved"]["rel_mse"]:
                saved = (_saved_cell(o["bits_saved"]["rel_mse"][name]), _saved_cell(o["bits_saved"][attn][name]))
            score = f"{m['score_rms']:.4f}" if "score_rms" in m else ""
            lines.append(f"| {kind.upper()} | {name} | {m['bits']:.3f} | {m['bits_paper']:.3f} | {m['rank']:.2f} | "
                         f"{m['rel_mse']:.4g} | {m[attn]:.4g} | {score} | {saved[0]} | {saved[1]} |")
    return lines


def layer_table(layers: Sequence[dict]) -> List[str]:
    """Markdown rows: per layer, mean eoq rank and bits saved (MSE / attention) per eoq mode."""
    if not layers:
        return []
    eoq = [n for n in layers[0]["k"]["modes"] if n.startswith("eoq")]
    head = ["layer"]
    for kind in KINDS:
        head += [f"{kind.upper()} rank"] + [f"{kind.upper()} {n}" for n in eoq]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lay in layers:
        row = [str(lay["layer"])]
        for kind in KINDS:
            o = lay[kind]
            row.append(f"{np.mean([o['modes'][n]['rank'] for n in eoq]):.2f}" if eoq else "")
            for n in eoq:
                row.append(f"{_saved_cell(o['bits_saved']['rel_mse'][n])} / "
                           f"{_saved_cell(o['bits_saved'][ATTN_METRIC[kind]][n])}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(result: dict) -> str:
    """The Markdown report of a run_study result (with the "config" and "source" of main)."""
    cfg = result.get("config", {})
    src = result.get("source", {})
    out = ["## Block study: eoq against TurboQuant at equal fully-counted bits", ""]
    if src:
        out.append(f"Model {src.get('name') or src.get('model')}, {src.get('n_tokens')} tokens of "
                   f"{os.path.basename(str(src.get('text', '')))}; ")
    if cfg:
        out.append(f"blocks of {cfg['block']} rows after {cfg['sinks']} sinks ({result.get('blocks_per_head')} per "
                   f"head), rotated and f16-rounded as in the cache; eoq rank cap {cfg['rank_cap']}, factor bits "
                   f"{cfg['factor_bits']}, {'shrink' if cfg['shrink'] else 'truncate'}; up to {cfg['queries']} real "
                   f"query positions after each block.")
    out += ["", "Errors are relative mean-square: rel. MSE = ‖X̂−X‖²/‖X‖²; attention error = ‖Q(K̂−K)ᵀ‖²/‖QKᵀ‖² "
            "for keys, ‖W(V̂−V)‖²/‖WV‖² for values (W: real softmax weights within the block). Bits saved = turbo "
            "bits needed for eoq's error (log-error interpolated between turbo widths) − eoq's bits; "
            "* = extrapolated beyond turbo's range.", "", "### Overall (mean over layers, heads and blocks)", ""]
    out += overall_table(result["overall"])
    out += ["", "### Bits saved per layer (mean over heads; MSE / attention)", ""]
    out += layer_table(result["layers"])
    return "\n".join(out) + "\n"


# --- command line -------------------------------------------------------------------------

def _int_list(s: str) -> List[int]:
    """'2,3,4' or '0-3,7' -> ints."""
    out = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a list of integers like 2,3,4 or 0-3") from None
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def main(argv=None) -> int:
    from . import EoqError
    from .models import default_model_path

    ap = argparse.ArgumentParser(prog="eoq-blockstudy", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct, fetched)")
    ap.add_argument("-f", "--file", required=True, help="text file (UTF-8)")
    ap.add_argument("-n", "--tokens", type=int, default=2048, help="tokens captured from the text's start")
    ap.add_argument("-t", "--threads", type=int, default=0, help="threads (0: all CPUs)")
    ap.add_argument("--layers", type=_int_list, help="layers to study, e.g. 0-3,29 (default: all)")
    ap.add_argument("--eoq-bits", type=_int_list, default=[2, 3, 4], help="eoq residual widths (default 2,3,4)")
    ap.add_argument("--turbo-bits", type=_int_list, default=[2, 3, 4, 5],
                    help="turbo widths, the interpolation grid (default 2,3,4,5: brackets eoq 2..4)")
    ap.add_argument("--block", type=int, default=-1, help="rows per block (default: the cache's)")
    ap.add_argument("--sinks", type=int, default=-1, help="sink tokens before the first block (default: the cache's)")
    ap.add_argument("--rank-cap", type=int, default=-1, help="eoq rank cap (default: the cache's)")
    ap.add_argument("--factor-bits", type=int, default=-1, help="eoq factor bits (default: the cache's)")
    ap.add_argument("--truncate", action="store_true", help="eoq with plain truncation instead of eOptShrink gains")
    ap.add_argument("--no-norm-correction", action="store_true")
    ap.add_argument("--seed", type=int, default=-1, help="rotation seed (default: the cache's)")
    ap.add_argument("--queries", type=int, default=128, help="query positions per block (default 128)")
    ap.add_argument("--max-blocks", type=int, default=0, help="blocks per head (0: all)")
    ap.add_argument("-o", "--output", help="write the full results as JSON to this file ('-': stdout, no Markdown)")
    a = ap.parse_args(argv)
    try:
        if a.tokens < 2:
            raise ValueError("--tokens must be at least 2")
        if a.queries < 1:
            raise ValueError("--queries must be at least 1")
        if a.threads < 0 or a.max_blocks < 0:
            raise ValueError("--threads and --max-blocks must be >= 0")
        for b in a.eoq_bits + a.turbo_bits:
            if not 1 <= b <= 8:
                raise ValueError(f"bit widths must be in 1..8, got {b}")
        if len(set(a.turbo_bits)) < 2:
            raise ValueError("--turbo-bits needs at least two widths to interpolate")
        model = a.model or str(default_model_path(download=True))
        with open(a.file, encoding="utf-8", newline="") as fh:
            text = fh.read()
        threads = a.threads or os.cpu_count() or 1
        t0 = time.perf_counter()
        print(f"eoq-blockstudy: capturing q/k/v of {a.tokens} tokens ...", file=sys.stderr, flush=True)
        qkv, source = capture(model, text, a.tokens, threads)
        source["text"] = a.file
        d = qkv["k"].shape[3]
        cfg = cache_defaults(d)
        for key, val in (("block", a.block), ("sinks", a.sinks), ("rank_cap", a.rank_cap),
                         ("factor_bits", a.factor_bits), ("seed", a.seed)):
            if val >= 0:
                cfg[key] = val
        if a.truncate:
            cfg["shrink"] = False
        if a.no_norm_correction:
            cfg["norm_correction"] = False
        if cfg["block"] < 1 or cfg["rank_cap"] < 1:
            raise ValueError("--block and --rank-cap must be >= 1")
        cfg.update(eoq_bits=sorted(set(a.eoq_bits)), turbo_bits=sorted(set(a.turbo_bits)), queries=a.queries,
                   max_blocks=a.max_blocks)
        print(f"eoq-blockstudy: captured in {time.perf_counter() - t0:.0f}s; sealing ...", file=sys.stderr, flush=True)

        def progress(i, n, dt):
            print(f"\r[{i}/{n}] heads  {dt:.0f}s", end="", file=sys.stderr, flush=True)

        res = run_study(qkv["q"], qkv["k"], qkv["v"], cfg, a.layers, threads, progress)
        print(file=sys.stderr)
        res = {"tool": "eoq-blockstudy", "source": source, "config": cfg,
               "blocks_per_head": len(res["heads"][0]["k"]["blocks"]), **res,
               "elapsed_s": round(time.perf_counter() - t0, 1)}
        if a.output == "-":
            json.dump(res, sys.stdout, indent=1)
            print()
            return 0
        if a.output:
            with open(a.output, "w", encoding="utf-8") as fh:
                json.dump(res, fh, indent=1)
        print(markdown(res), end="")
        return 0
    except (EoqError, ValueError, OSError, UnicodeDecodeError) as e:
        print(f"eoq-blockstudy: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
