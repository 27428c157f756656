"""eoq-perplexity: perplexity of a model over a text file, scored as llama.cpp's
llama-perplexity does, so the numbers are comparable: the text is tokenized once, cut into
chunks of n_ctx tokens (the first token of each chunk replaced by BOS when the model adds one),
every chunk is evaluated from an empty cache, and only the second half of each chunk is scored
(each scored token then has at least n_ctx/2 tokens of context).

    eoq-perplexity -m model.gguf -f wiki.test.raw -c 512 --chunks 100 --kv f16
    eoq-perplexity -f wiki.test.raw -c 2048 --chunks 4 --kv eoq2,turbo2,q4_0 --kl-divergence

With --kl-divergence every listed mode is compared, position by position, with an f16 cache run
in the same process on the same chunks (the reference is computed once per chunk): mean, median,
99th percentile and max KL(f16 || mode), the share of positions with the same top token, and
ln(PPL(mode)/PPL(f16)).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def chunks_of(engine, text: str, n_ctx: int, n_chunks: int = -1):
    """The token chunks llama-perplexity would score."""
    # As llama-perplexity: BOS first when the model's metadata asks for it, specials as plain text.
    tokens = engine.tokenize(text, add_special=True, parse_special=False)
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    n = available if n_chunks is None or n_chunks < 0 else min(n_chunks, available)
    out = []
    for i in range(n):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if engine.add_bos and engine.bos >= 0:
            chunk[0] = engine.bos
        out.append(chunk)
    return out


def scored_logprobs(engine, chunk: list[int]) -> np.ndarray:
    """log-softmax [n_ctx/2 - 1, n_vocab] of the positions that predict the second half."""
    engine.reset()
    engine.eval(chunk, all_logits=True)
    first = len(chunk) // 2
    return log_softmax(engine.all_logits()[first:-1]).astype(np.float32)


def nll_of(lp: np.ndarray, chunk: list[int]) -> np.ndarray:
    targets = np.asarray(chunk[len(chunk) // 2 + 1:])
    return -lp[np.arange(len(targets)), targets].astype(np.float64)


def perplexity(engine, text: str, n_ctx: int, n_chunks: int = -1, progress=None):
    """Returns (ppl, stderr of ln ppl, n_scored). engine is an eoq._core.Engine."""
    nll = []
    chunks = chunks_of(engine, text, n_ctx, n_chunks)
    for i, chunk in enumerate(chunks):
        nll.append(nll_of(scored_logprobs(engine, chunk), chunk))
        if progress:
            progress(i + 1, len(chunks), math.exp(np.concatenate(nll).mean()))
    allv = np.concatenate(nll)
    return math.exp(allv.mean()), allv.std() / math.sqrt(len(allv)), len(allv)


def kl_stats(ref_lp: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """KL(ref || other) per position, natural log."""
    p = np.exp(ref_lp.astype(np.float64))
    return (p * (ref_lp.astype(np.float64) - lp.astype(np.float64))).sum(axis=-1)


def kl_divergence(make_engine, modes, text, n_ctx, n_chunks=-1, progress=None, on_chunk=None):
    """For each mode: dict(ppl, ppl_f16, ln_ratio, kld_mean, kld_median, kld_p99, kld_max,
    same_top, bits_per_entry, bytes). make_engine(mode) -> eoq._core.Engine. on_chunk(results,
    chunks done) after every chunk, with the results over the chunks so far."""
    base = make_engine("f16")
    chunks = chunks_of(base, text, n_ctx, n_chunks)
    engines = {m: make_engine(m) for m in modes}
    acc = {m: dict(kld=[], nll=[], same=[], bpe=[], bytes=[], stats={}) for m in modes}
    base_nll = []
    for i, chunk in enumerate(chunks):
        ref = scored_logprobs(base, chunk)
        base_nll.append(nll_of(ref, chunk))
        for m, e in engines.items():
            lp = scored_logprobs(e, chunk)
            a = acc[m]
            a["kld"].append(kl_stats(ref, lp))
            a["nll"].append(nll_of(lp, chunk))
            a["same"].append(np.argmax(lp, 1) == np.argmax(ref, 1))
            info = e.kv_info()
            a["bpe"].append(info["bits_per_entry"])
            a["bytes"].append(info["bytes"])
            a["stats"] = cache_summary(e)
        if progress:
            progress(i + 1, len(chunks))
        if on_chunk:
            on_chunk(summarize(acc, base_nll), i + 1)
    return summarize(acc, base_nll)


def summarize(acc, base_nll):
    bn = np.concatenate(base_nll)
    out = {}
    for m, a in acc.items():
        kld = np.concatenate(a["kld"])
        nll = np.concatenate(a["nll"])
        out[m] = dict(ppl=math.exp(nll.mean()), ppl_f16=math.exp(bn.mean()), ln_ratio=nll.mean() - bn.mean(),
                      kld_mean=float(kld.mean()), kld_median=float(np.median(kld)),
                      kld_p99=float(np.percentile(kld, 99)), kld_max=float(kld.max()),
                      same_top=float(np.concatenate(a["same"]).mean()),
                      bits_per_entry=float(np.mean(a["bpe"])), bytes=int(np.mean(a["bytes"])), scored=len(nll),
                      cache=a["stats"])
    return out


def cache_summary(engine) -> dict:
    """What the cache reports at the end of a chunk (compressed modes): sealed bits per entry of
    K and V (fully counted and the paper's convention), mean eOptShrink rank per layer, sealing
    time per block. Empty for exact caches."""
    st = json.loads(engine.compression_stats_json())
    summ = st.get("summary")
    if not summ:
        return {}
    out = dict(params=st.get("params", {}), seal_ms_per_block=summ.get("seal_ms_per_block", 0.0))
    for kv in ("k", "v"):
        d = summ.get(kv, {})
        out[kv] = {key: d.get(key) for key in ("bits_per_entry_sealed", "bits_per_entry_sealed_paper", "mean_rank",
                                               "mean_rank_raw", "mean_rel_err") if key in d}
        ranks = []
        for layer in st.get("layers", []):
            hist = [0] * 64
            for h in layer.get("heads", []):
                for r, c in enumerate(h.get(kv, {}).get("rank_hist", [])):
                    hist[r] += c
            n = sum(hist)
            ranks.append(sum(r * c for r, c in enumerate(hist)) / n if n else None)
        out[kv]["mean_rank_by_layer"] = ranks
    return out


def parse_mode(spec: str):
    """'eoq2:ring=0:shrink=false' -> ('eoq2', {'ring': 0, 'shrink': False})."""
    mode, *opts = spec.split(":")
    options = {}
    for o in opts:
        key, sep, val = o.partition("=")
        if not sep:
            raise ValueError(f"KV option {o!r} in {spec!r} is not key=value")
        low = val.lower()
        options[key] = True if low == "true" else False if low == "false" else int(val)
    return mode, options


def main(argv=None) -> int:
    from . import EoqError, _core
    from .models import default_model_path

    ap = argparse.ArgumentParser(prog="eoq-perplexity", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct, fetched)")
    ap.add_argument("-f", "--file", required=True, help="text file (UTF-8)")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=-1, help="number of chunks (-1: all)")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--kv", default="f16",
                    help="KV cache mode with optional :key=value knobs (e.g. eoq2:ring=0:shrink=false), "
                         "or a comma-separated list of them with --kl-divergence")
    ap.add_argument("--kl-divergence", action="store_true", help="compare each --kv mode with an f16 cache")
    ap.add_argument("--json", metavar="FILE", help="with --kl-divergence: also write the results (and each mode's "
                                                    "compression statistics) to FILE as JSON")
    a = ap.parse_args(argv)
    try:
        if a.ctx_size < 8:
            raise ValueError("--ctx-size must be at least 8")
        model = a.model or str(default_model_path(download=True))
        # newline="": keep CRLF as it is; llama-perplexity reads the file's raw bytes.
        with open(a.file, encoding="utf-8", newline="") as fh:
            text = fh.read()

        from .engine import _check_device

        device = _check_device(a.device)

        def make(spec):
            mode, options = parse_mode(spec)
            return _core.Engine(model, n_ctx=a.ctx_size, n_threads=a.threads, kv=mode, n_batch=a.batch_size,
                                kv_options=options, device=device)

        t0 = time.perf_counter()
        modes = [m.strip() for m in a.kv.split(",") if m.strip()]
        if a.kl_divergence:
            def progress(i, n):
                print(f"\r[{i}/{n}] chunks  {time.perf_counter() - t0:.0f}s", end="", file=sys.stderr, flush=True)

            def save(res, done):  # after every chunk, so that a long run leaves its results so far
                if a.json:
                    with open(a.json, "w", encoding="utf-8") as fh:
                        json.dump(dict(model=model, file=a.file, ctx=a.ctx_size, chunks=a.chunks, chunks_done=done,
                                       modes=res), fh, indent=1)

            res = kl_divergence(make, modes, text, a.ctx_size, a.chunks, progress, save)
            print(file=sys.stderr)
            print(f"model {model}, ctx {a.ctx_size}, scored tokens {next(iter(res.values()))['scored']}")
            print("| KV cache | bits/entry | PPL | ln(PPL/PPL_f16) | mean KLD | median KLD | p99 KLD | max KLD | same top |")
            print("|---|---|---|---|---|---|---|---|---|")
            f16ppl = next(iter(res.values()))["ppl_f16"]
            print(f"| f16 | 16.00 | {f16ppl:.4f} | 0 | 0 | 0 | 0 | 0 | 100% |")
            for m, r in res.items():
                print(f"| {m} | {r['bits_per_entry']:.2f} | {r['ppl']:.4f} | {r['ln_ratio']:+.4f} | {r['kld_mean']:.4f} | "
                      f"{r['kld_median']:.4f} | {r['kld_p99']:.4f} | {r['kld_max']:.3f} | {100 * r['same_top']:.1f}% |")
            return 0
        if len(modes) != 1:
            raise ValueError("several --kv modes need --kl-divergence")
        if a.json:
            raise ValueError("--json needs --kl-divergence")
        engine = make(modes[0])

        def progress(i, n, ppl):
            dt = time.perf_counter() - t0
            print(f"\r[{i}/{n}] ppl {ppl:.4f}  {dt:.0f}s, {i * a.ctx_size / dt:.0f} tokens/s", end="", file=sys.stderr,
                  flush=True)

        ppl, se, n = perplexity(engine, text, a.ctx_size, a.chunks, progress)
        print(file=sys.stderr)
        print(f"model {model}\nkv {modes[0]}  ctx {a.ctx_size}  scored tokens {n}\n"
              f"PPL = {ppl:.4f} +/- {ppl * se:.4f}")
        return 0
    except (EoqError, ValueError, OSError, UnicodeDecodeError) as e:
        print(f"eoq-perplexity: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
