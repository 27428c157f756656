#!/usr/bin/env python3
"""Load test for eoq-server (or any OpenAI-compatible server): N concurrent streaming clients.

    python tools/load_server.py --url http://127.0.0.1:8080 -N 1,4,8 --requests 16 --max-tokens 64
    python tools/load_server.py --spawn -m model.gguf --parallel 4 -N 1,4,8   # starts eoq-server itself

Each client sends streaming /v1/chat/completions requests one after another (distinct prompts,
temperature 0; a request may end early at the end-of-generation token) until --requests have been
sent in all. Reported per concurrency level N: aggregate generated tokens/s (completion tokens
from the final usage chunks over the wall time of the level), time to first token (request sent
-> first content chunk) and per-token latency (the gaps between content chunks; eoq sends one
chunk per token unless text is held back for a stop string or a split UTF-8 character) as
p50/p99 (nearest rank), and the requests that failed.
Only loopback addresses are allowed as targets; every loop is bounded by --requests and --timeout.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import List, Optional

TOPICS = ["the sea", "a lighthouse", "winter", "a library", "trains", "the moon", "a garden", "rivers",
          "mountains", "a city at night", "bees", "a clock", "the desert", "rain", "a bridge", "stars"]


def percentile(xs: List[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of xs."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def check_loopback(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"load_server: {url} is not a loopback address; this tool only loads local servers")


def one_request(client, model: str, i: int, max_tokens: int, out: dict) -> None:
    msgs = [{"role": "user", "content": f"Write a short poem about {TOPICS[i % len(TOPICS)]} (#{i})."}]
    t0 = time.perf_counter()
    first = None
    last = None
    gaps = []
    n_tokens = 0
    try:
        stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        for ch in stream:
            now = time.perf_counter()
            if ch.choices and ch.choices[0].delta.content:
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
            if ch.usage is not None:
                n_tokens = ch.usage.completion_tokens
        out.update(ok=True, ttft=None if first is None else first - t0, gaps=gaps, tokens=n_tokens)
    except Exception as e:  # counted as a failure
        out.update(ok=False, error=repr(e))


def run_level(url: str, api_key: str, model: str, n_clients: int, n_requests: int, max_tokens: int,
              timeout: float) -> dict:
    import openai

    results: List[dict] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def client_loop():
        c = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key, max_retries=0, timeout=timeout)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            out: dict = {}
            one_request(c, model, i, max_tokens, out)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * n_requests)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.get("ok")]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": n_clients, "requests": len(results), "failed": len(results) - len(ok),
            "errors": sorted({r.get("error", "") for r in results if not r.get("ok")})[:3],
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "ttft_p50_ms": percentile(ttft, 50) * 1e3, "ttft_p99_ms": percentile(ttft, 99) * 1e3,
            "tpot_p50_ms": percentile(gaps, 50) * 1e3, "tpot_p99_ms": percentile(gaps, 99) * 1e3}


def spawn(args) -> tuple:
    """Start eoq-server on a free loopback port; (process, url)."""
    cmd = [sys.executable, "-m", "eoq.server", "--host", "127.0.0.1", "--port", "0",
           "--parallel", str(args.parallel), "-c", str(args.ctx_size), "--queue", str(max(64, 2 * max(args.N)))]
    if args.model:
        cmd += ["-m", args.model]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    if args.kv:
        cmd += ["--kv", args.kv]
    if args.device:
        cmd += ["--device", args.device]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"load_server: eoq-server exited with {proc.wait()}")
        sys.stderr.write(line)
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain
            return proc, m.group(1)
    proc.kill()
    raise SystemExit("load_server: eoq-server did not start")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback only)")
    ap.add_argument("--api-key", default=os.environ.get("EOQ_API_KEY", "none"))
    ap.add_argument("--model", dest="model_id", default="", help="model id to send (default: the server's first)")
    ap.add_argument("-N", default="1,4,8", help="concurrency levels, comma-separated (default 1,4,8)")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (default 16)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default 64)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request at most")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    g = ap.add_argument_group("--spawn: start eoq-server here")
    g.add_argument("--spawn", action="store_true")
    g.add_argument("-m", "--model-path", dest="model", help="GGUF model (default: the default model)")
    g.add_argument("--parallel", type=int, default=4)
    g.add_argument("-c", "--ctx-size", type=int, default=1024)
    g.add_argument("-t", "--threads", type=int, default=None)
    g.add_argument("--kv", default=None)
    g.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    args.N = [int(x) for x in str(args.N).split(",") if x.strip()]
    if not args.N or min(args.N) < 1 or args.requests < 1:
        raise SystemExit("load_server: -N levels and --requests must be >= 1")
    proc = None
    if args.spawn:
        proc, args.url = spawn(args)
    check_loopback(args.url)
    try:
        import openai

        model = args.model_id or openai.OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key,
                                               max_retries=0).models.list().data[0].id
        rows = []
        for n in args.N:
            r = run_level(args.url, args.api_key, model, n, args.requests, args.max_tokens, args.timeout)
            rows.append(r)
            print(f"N={n}: {r['tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} ms, "
                  f"p99 {r['ttft_p99_ms']:.0f} ms, per-token p50 {r['tpot_p50_ms']:.1f} ms, "
                  f"p99 {r['tpot_p99_ms']:.1f} ms, {r['failed']} failed", file=sys.stderr, flush=True)
        print(f"\nmodel {model}, {args.requests} requests per level, max_tokens {args.max_tokens}\n")
        print("| clients | requests | failed | tokens | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | "
              "per-token p50 ms | per-token p99 ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
                  f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} | {r['tpot_p99_ms']:.1f} |")
        for r in rows:
            for e in r["errors"]:
                print(f"N={r['clients']} error: {e}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": model, "levels": rows}, indent=2))
        return 1 if any(r["failed"] for r in rows) else 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
