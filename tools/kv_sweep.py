"""Runs eoq-perplexity --kl-divergence for many KV cache modes in parallel processes and merges
their JSON into one file, with a Markdown table per context length.

    python tools/kv_sweep.py -f ../shared/data/wikitext-2-test.txt -c 512,2048 --chunks 25 \\
        --jobs 8 --threads 2 --per-job 2 -o sweep.json eoq2 eoq2:ring=0 turbo3 ...

Each job scores `--per-job` modes against its own f16 cache (the f16 pass is repeated per job:
simpler than saving reference logits, and cheap next to the compressed modes). Jobs that fail
are reported with their stderr and make the exit status non-zero; finished jobs are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def table(ctx: int, modes: dict) -> str:
    rows = ["| KV cache | bits/entry (whole cache) | sealed bits K / V | PPL | ln(PPL/PPL_f16) | mean KLD | "
            "p99 KLD | same top | mean rank K / V |", "|---|---|---|---|---|---|---|---|---|"]
    f16 = next(iter(modes.values()))["ppl_f16"] if modes else float("nan")
    rows.append(f"| f16 | 16.00 | - | {f16:.4f} | 0 | 0 | 0 | 100% | - |")
    for m, r in sorted(modes.items(), key=lambda kv: kv[1]["bits_per_entry"]):
        c = r.get("cache") or {}
        k, v = c.get("k", {}), c.get("v", {})
        sealed = (f"{k['bits_per_entry_sealed']:.3f} / {v['bits_per_entry_sealed']:.3f}"
                  if "bits_per_entry_sealed" in k else "-")
        rank = f"{k.get('mean_rank', 0):.2f} / {v.get('mean_rank', 0):.2f}" if k else "-"
        rows.append(f"| {m} | {r['bits_per_entry']:.3f} | {sealed} | {r['ppl']:.4f} | {r['ln_ratio']:+.4f} | "
                    f"{r['kld_mean']:.4f} | {r['kld_p99']:.4f} | {100 * r['same_top']:.1f}% | {rank} |")
    return f"ctx {ctx}\n" + "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modes", nargs="+", help="KV mode specs (eoq-perplexity --kv syntax)")
    ap.add_argument("-m", "--model", help="GGUF model (default: eoq-perplexity's)")
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("-c", "--ctx", default="2048", help="comma-separated context lengths")
    ap.add_argument("--chunks", type=int, default=-1)
    ap.add_argument("--jobs", type=int, default=1, help="processes at once")
    ap.add_argument("--threads", type=int, default=2, help="threads per process")
    ap.add_argument("--per-job", type=int, default=2, help="modes per process (each process adds an f16 pass)")
    ap.add_argument("-o", "--output", required=True, help="merged JSON")
    a = ap.parse_args(argv)
    if a.jobs < 1 or a.threads < 1 or a.per_job < 1:
        ap.error("--jobs, --threads and --per-job must be >= 1")
    ctxs = [int(c) for c in a.ctx.split(",")]
    work = [(c, a.modes[i:i + a.per_job]) for c in ctxs for i in range(0, len(a.modes), a.per_job)]
    tmp = tempfile.mkdtemp(prefix="kv_sweep_")
    t0 = time.perf_counter()
    done = []

    def run(item):
        i, (ctx, modes) = item
        out = os.path.join(tmp, f"{i}.json")
        cmd = [sys.executable, "-m", "eoq.perplexity", "-f", a.file, "-c", str(ctx), "--chunks", str(a.chunks),
               "-t", str(a.threads), "--kl-divergence", "--kv", ",".join(modes), "--json", out]
        if a.model:
            cmd[3:3] = ["-m", a.model]
        r = subprocess.run(cmd, capture_output=True, text=True)
        done.append(i)
        print(f"[{len(done)}/{len(work)}] ctx {ctx} {','.join(modes)}: rc {r.returncode}, "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if r.returncode != 0:
            return ctx, modes, None, r.stderr[-2000:]
        with open(out, encoding="utf-8") as fh:
            return ctx, modes, json.load(fh), ""

    merged: dict = {"file": a.file, "chunks": a.chunks, "threads": a.threads, "results": {}}
    failed = 0
    with ThreadPoolExecutor(a.jobs) as ex:
        for ctx, modes, res, err in ex.map(run, enumerate(work)):
            if res is None:
                failed += 1
                print(f"FAILED ctx {ctx} {modes}:\n{err}", file=sys.stderr)
                continue
            merged["model"] = res["model"]
            merged["results"].setdefault(str(ctx), {}).update(res["modes"])
            with open(a.output, "w", encoding="utf-8") as fh:  # keep what finished so far
                json.dump(merged, fh, indent=1)
    for ctx, modes in merged["results"].items():
        print(table(int(ctx), modes) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
