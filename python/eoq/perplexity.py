"""eoq-perplexity: perplexity of a model over a text file, scored as llama.cpp's
llama-perplexity does, so the numbers are comparable: the text is tokenized once, cut into
chunks of n_ctx tokens (the first token of each chunk replaced by BOS when the model adds one),
every chunk is evaluated from an empty cache, and only the second half of each chunk is scored
(each scored token then has at least n_ctx/2 tokens of context).

    eoq-perplexity -m model.gguf -f wiki.test.raw -c 512 --chunks 100 [--kv f16]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def chunk_nll(engine, tokens: list[int]) -> np.ndarray:
    """Negative log-likelihoods of the second half of one chunk (len(tokens)//2 - 1 values...)."""
    engine.reset()
    engine.eval(tokens, all_logits=True)
    logits = engine.all_logits()
    first = len(tokens) // 2
    lp = log_softmax(logits[first:-1])
    targets = np.asarray(tokens[first + 1:])
    return -lp[np.arange(len(targets)), targets]


def perplexity(engine, text: str, n_ctx: int, n_chunks: int = -1, progress=None):
    """Returns (ppl, stderr of ln ppl, n_scored). engine is an eoq._core.Engine."""
    tokens = engine.tokenize(text, add_special=False, parse_special=False)
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    n = available if n_chunks is None or n_chunks < 0 else min(n_chunks, available)
    nll = []
    for i in range(n):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if engine.add_bos and engine.bos >= 0:
            chunk[0] = engine.bos
        nll.append(chunk_nll(engine, chunk))
        if progress:
            allv = np.concatenate(nll)
            progress(i + 1, n, math.exp(allv.mean()))
    allv = np.concatenate(nll)
    return math.exp(allv.mean()), allv.std() / math.sqrt(len(allv)), len(allv)


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
    ap.add_argument("--kv", default="f16", help="KV cache mode")
    a = ap.parse_args(argv)
    try:
        if a.ctx_size < 8:
            raise ValueError("--ctx-size must be at least 8")
        model = a.model or str(default_model_path(download=True))
        with open(a.file, encoding="utf-8") as fh:
            text = fh.read()
        engine = _core.Engine(model, n_ctx=a.ctx_size, n_threads=a.threads, kv=a.kv, n_batch=a.batch_size)
        t0 = time.perf_counter()

        def progress(i, n, ppl):
            dt = time.perf_counter() - t0
            print(f"\r[{i}/{n}] ppl {ppl:.4f}  {dt:.0f}s, {i * a.ctx_size / dt:.0f} tokens/s", end="", file=sys.stderr,
                  flush=True)

        ppl, se, n = perplexity(engine, text, a.ctx_size, a.chunks, progress)
        print(file=sys.stderr)
        print(f"model {model}\nkv {a.kv}  ctx {a.ctx_size}  scored tokens {n}\n"
              f"PPL = {ppl:.4f} +/- {ppl * se:.4f}")
        return 0
    except (EoqError, ValueError, OSError, UnicodeDecodeError) as e:
        print(f"eoq-perplexity: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
