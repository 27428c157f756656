"""eoq-report: a short Markdown report (with PNG plots beside it) from the project's result files.

    eoq-report --run-stats -f wikitext-2-test.txt --blockstudy bs.json --needle needle.json \\
               --kld kld.json -o docs/report/report.md

Sections, each written when its input is given and replaced by a note when it is not:

* Ranks per layer and KV head: the eOptShrink ranks a compressed cache chose, from
  Engine.compression_stats() (spec section 8). --stats FILE reads that JSON; --run-stats
  computes it by running the first -n tokens of -f through a --stats-kv cache (default eoq2)
  and saves it as stats.json beside the report.
* Bits per entry against KL divergence per KV mode: --kld FILE, the per-mode results of
  eoq.perplexity.kl_divergence: {mode: {bits_per_entry, kld_mean, ...}} (also accepted wrapped
  as {"results": {...}} or as a list of such dicts with a "mode" key); eoq-perplexity --json
  ({"modes": {...}}) and tools/kv_sweep.py ({"results": {ctx: {mode: ...}}}) files as they are.
* Needle retrieval accuracy: --needle FILE, eoq-needle's `-o json` records, a list of
  {mode, ctx, depth, correct} (extra keys ignored).
* Block study: --blockstudy FILE, the JSON of eoq-blockstudy -o.

Plots need matplotlib (pip install 'eoq[plots]'); without it the tables are written and the
report says that the plots were skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import blockstudy as bs

DEFAULT_OUTPUT = os.path.join("docs", "report", "report.md")
PLOTS_SKIPPED = "Plots skipped: matplotlib is not installed (pip install 'eoq[plots]')."


def _pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# --- inputs -------------------------------------------------------------------------------

def load_json(path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def kld_rows(data: Any) -> List[Tuple[str, dict]]:
    """(mode, result) pairs from the accepted KL-divergence layouts (see the module docstring);
    each result must hold bits_per_entry and kld_mean."""
    if isinstance(data, dict) and isinstance(data.get("modes"), dict):  # eoq-perplexity --json
        data = data["modes"]
    elif isinstance(data, dict) and isinstance(data.get("results"), (dict, list)):
        data = data["results"]
        if isinstance(data, dict) and data and all(str(k).isdigit() for k in data):  # tools/kv_sweep.py: by context
            data = {(f"{m} @{ctx}" if len(data) > 1 else m): r for ctx, modes in data.items() for m, r in modes.items()}
    if isinstance(data, dict):
        rows = list(data.items())
    elif isinstance(data, list):
        rows = []
        for r in data:
            if not isinstance(r, dict) or "mode" not in r:
                raise ValueError("KL-divergence input: list items must be dicts with a 'mode' key")
            rows.append((str(r["mode"]), r))
    else:
        raise ValueError("KL-divergence input must be {mode: {...}}, {'results': ...} or a list of dicts")
    for mode, r in rows:
        if not isinstance(r, dict) or "bits_per_entry" not in r or "kld_mean" not in r:
            raise ValueError(f"KL-divergence input: mode {mode!r} needs bits_per_entry and kld_mean")
    return rows


def needle_records(data: Any) -> List[dict]:
    """Validated needle records {mode, ctx, depth, correct}; also accepts {"records": [...]}."""
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        raise ValueError("needle input must be a list of {mode, ctx, depth, correct} records")
    for i, r in enumerate(data):
        if not isinstance(r, dict) or any(k not in r for k in ("mode", "ctx", "depth", "correct")):
            raise ValueError(f"needle record {i} lacks one of mode, ctx, depth, correct: {r!r}")
    return data


def compute_stats(model: str, text: str, n_tokens: int, kv: str = "eoq2", kv_options: Optional[dict] = None,
                  n_threads: int = 0) -> dict:
    """Engine.compression_stats() after the text's first n_tokens ran through a `kv` cache."""
    from . import _core

    e = _core.Engine(model, n_ctx=n_tokens, n_threads=n_threads, kv=kv, kv_options=kv_options or {})
    e.eval(bs.text_tokens(e, text, n_tokens))
    st = json.loads(e.compression_stats_json())
    st["source"] = {"model": model, "name": e.name, "n_tokens": n_tokens}
    return st


# --- sections -----------------------------------------------------------------------------

class Report:
    """Collects Markdown lines and PNG files for one report folder."""

    def __init__(self, out_md: Path, plots: bool = True):
        self.md = out_md
        self.dir = out_md.parent
        self.plt = _pyplot() if plots else None
        self.lines: List[str] = []
        self.pngs: List[str] = []
        self.notes: List[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.add(f"*{text}*", "")

    def figure(self, fig, name: str, caption: str) -> None:
        path = self.dir / name
        if not fig.get_constrained_layout():
            fig.tight_layout()
        fig.savefig(path, dpi=110)
        self.plt.close(fig)
        self.pngs.append(str(path))
        self.add(f"![{caption}]({name})", "")


def _mean_rank(hist: Sequence[int]) -> float:
    n = sum(hist)
    return sum(i * c for i, c in enumerate(hist)) / n if n else math.nan


def _fmt(x: float, spec: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def section_ranks(rep: Report, stats: Optional[dict]) -> None:
    rep.add("## eOptShrink ranks per layer and KV head", "")
    if stats is None:
        rep.note("Skipped: no compression statistics given (--stats FILE or --run-stats).")
        return
    layers = stats.get("layers")
    if not layers:
        rep.note(f"Skipped: the statistics are for mode {stats.get('mode')!r}, which keeps no ranks "
                 f"(an eoq cache is needed).")
        return
    src = stats.get("source", {})
    p = stats.get("params", {})
    summ = stats.get("summary", {})
    n_head = len(layers[0]["heads"])
    rank = {kind: np.full((len(layers), n_head), np.nan) for kind in bs.KINDS}
    raw = {kind: np.full((len(layers), n_head), np.nan) for kind in bs.KINDS}
    for il, lay in enumerate(layers):
        for g, h in enumerate(lay["heads"]):
            for kind in bs.KINDS:
                rank[kind][il, g] = _mean_rank(h[kind]["rank_hist"])
                raw[kind][il, g] = _mean_rank(h[kind]["rank_hist_raw"])
    what = f"{src.get('n_tokens', stats.get('n_tokens'))} tokens through a {stats.get('mode')} cache"
    if src:
        what += f" ({src.get('name') or src.get('model')})"
    rep.add(f"{what}; block {p.get('block')}, rank cap {p.get('rank_cap')}. Whole-cache bits per entry "
            f"{_fmt(stats.get('bits_per_entry'))}, compression ratio {_fmt(stats.get('compression_ratio'))} "
            f"against f16. Mean rank after the cap (before it): keys "
            f"{_fmt(summ.get('k', {}).get('mean_rank'))} ({_fmt(summ.get('k', {}).get('mean_rank_raw'))}), values "
            f"{_fmt(summ.get('v', {}).get('mean_rank'))} ({_fmt(summ.get('v', {}).get('mean_rank_raw'))}).", "")
    head = ["layer"] + [f"{kind.upper()} h{g}" for kind in bs.KINDS for g in range(n_head)]
    rep.add("Mean rank per sealed block, after the cap (before it); – where the layer sealed no block.", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head))
    for il in range(len(layers)):
        cells = [str(layers[il].get("layer", il))]
        for kind in bs.KINDS:
            cells += [f"{_fmt(rank[kind][il, g])} ({_fmt(raw[kind][il, g])})" for g in range(n_head)]
        rep.add("| " + " | ".join(cells) + " |")
    rep.add("")
    if rep.plt:
        plt = rep.plt
        fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.2 * n_head, 1.2 + 0.22 * len(layers)), squeeze=False,
                                 constrained_layout=True)
        vmax = np.nanmax([np.nanmax(raw[k]) if np.isfinite(raw[k]).any() else 1 for k in bs.KINDS])
        for ax, kind in zip(axes[0], bs.KINDS):
            im = ax.imshow(rank[kind], aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="upper")
            ax.set_title({"k": "keys", "v": "values"}[kind])
            ax.set_xlabel("KV head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(n_head))
        fig.colorbar(im, ax=list(axes[0]), label="mean rank")
        rep.figure(fig, "ranks.png", "mean eOptShrink rank per layer and KV head")


def section_kld(rep: Report, kld: Optional[Any]) -> None:
    rep.add("## Bits per entry against KL divergence", "")
    if kld is None:
        rep.note("Skipped: no KL-divergence results given (--kld FILE, from eoq-perplexity --kl-divergence "
                 "--json FILE or tools/kv_sweep.py -o FILE).")
        return
    rows = sorted(kld_rows(kld), key=lambda mr: mr[1]["bits_per_entry"])
    rep.add("Against an f16 cache on the same text: whole-cache bits per entry, mean KL(f16 ‖ mode) of the "
            "next-token distribution, share of positions with the same top token, perplexity.", "",
            "| KV cache | bits/entry | mean KLD | p99 KLD | same top | PPL |", "|---|---|---|---|---|---|")
    for mode, r in rows:
        same = r.get("same_top")
        rep.add(f"| {mode} | {r['bits_per_entry']:.2f} | {r['kld_mean']:.4f} | {_fmt(r.get('kld_p99'), '.4f')} | "
                f"{'–' if same is None else f'{100 * same:.1f}%'} | {_fmt(r.get('ppl'), '.4f')} |")
    rep.add("")
    if rep.plt:
        plt = rep.plt
        fig, ax = plt.subplots(figsize=(6, 4))
        families = OrderedDict()
        for mode, r in rows:  # one line per family: eoq2, eoq3:ring=0 -> "eoq"
            fam = "".join(c for c in mode.split(":")[0] if not c.isdigit()) or mode
            families.setdefault(fam, []).append((mode, r))
        for fam, pts in families.items():
            x = [r["bits_per_entry"] for _, r in pts]
            y = [max(r["kld_mean"], 1e-6) for _, r in pts]
            ax.plot(x, y, "o", label=fam)  # points: the knob settings of a family are no curve
            for (mode, _), xi, yi in zip(pts, x, y):
                ax.annotate(mode.replace("eoq2:", "").replace(":", " "), (xi, yi), textcoords="offset points",
                            xytext=(4, 2), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("bits per entry (whole cache, fully counted)")
        ax.set_ylabel("mean KL divergence vs f16")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        rep.figure(fig, "kld.png", "bits per entry against mean KL divergence")


def section_needle(rep: Report, records: Optional[Any]) -> None:
    rep.add("## Needle retrieval", "")
    if records is None:
        rep.note("Skipped: no needle results given (--needle FILE, from eoq-needle -o json).")
        return
    recs = needle_records(records)
    if not recs:
        rep.note("Skipped: the needle input holds no records.")
        return
    depths = sorted({float(r["depth"]) for r in recs})
    keys = list(OrderedDict.fromkeys((str(r["mode"]), int(r["ctx"])) for r in recs))
    head = ["KV cache", "ctx"] + [f"depth {d:g}" for d in depths] + ["accuracy"]
    rep.add("Correct answers / questions by needle depth (fraction of the filler).", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head))
    acc = {}
    for mode, ctx in keys:
        sel = [r for r in recs if str(r["mode"]) == mode and int(r["ctx"]) == ctx]
        cells = [mode, str(ctx)]
        for d in depths:
            c = [bool(r["correct"]) for r in sel if float(r["depth"]) == d]
            cells.append(f"{sum(c)}/{len(c)}" if c else "–")
        acc[(mode, ctx)] = sum(bool(r["correct"]) for r in sel) / len(sel)
        cells.append(f"{100 * acc[(mode, ctx)]:.0f}%")
        rep.add("| " + " | ".join(cells) + " |")
    rep.add("")
    if rep.plt:
        plt = rep.plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode in OrderedDict.fromkeys(m for m, _ in keys):
            ctxs = sorted(c for m, c in keys if m == mode)
            ax.plot(ctxs, [100 * acc[(mode, c)] for c in ctxs], "o-", label=mode)
        ctx_all = sorted({c for _, c in keys})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ctx_all)
        ax.set_xticklabels([str(c) for c in ctx_all])
        ax.minorticks_off()
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-5, 105)
        ax.grid(True, alpha=0.3)
        ax.legend()
        rep.figure(fig, "needle.png", "needle accuracy by context and KV mode")


def section_blockstudy(rep: Report, study: Optional[dict]) -> None:
    rep.add("## Block study: eoq against TurboQuant on real K/V blocks", "")
    if study is None:
        rep.note("Skipped: no block-study results given (--blockstudy FILE, from eoq-blockstudy -o).")
        return
    if "overall" not in study or "layers" not in study:
        raise ValueError("block-study input lacks 'overall' or 'layers' (not eoq-blockstudy JSON?)")
    md = bs.markdown(study).split("\n")
    rep.add(*md[2:])  # without its own title
    if rep.plt:
        plt = rep.plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, kind in zip(axes, bs.KINDS):
            modes = study["overall"][kind]["modes"]
            for metric, style in (("rel_mse", "-"), (bs.ATTN_METRIC[kind], "--")):
                for fam, marker in (("turbo", "o"), ("eoq", "s")):
                    pts = sorted((m["bits"], m[metric]) for n, m in modes.items() if n.startswith(fam))
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker + style, label=f"{fam} {metric}")
            ax.set_yscale("log")
            ax.set_xlabel("bits per entry (fully counted)")
            ax.set_ylabel("relative mean-square error")
            ax.set_title({"k": "keys", "v": "values"}[kind])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        rep.figure(fig, "blockstudy_error.png", "block error against bits, eoq and turbo")
        layers = study["layers"]
        eoq = [n for n in study["overall"]["k"]["modes"] if n.startswith("eoq")]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
        for ax, kind in zip(axes, bs.KINDS):
            x = [lay["layer"] for lay in layers]
            for n in eoq:
                for metric, style in (("rel_mse", "-"), (bs.ATTN_METRIC[kind], "--")):
                    y = [lay[kind]["bits_saved"][metric][n]["saved"] for lay in layers]
                    ax.plot(x, [math.nan if v is None else v for v in y], style, marker=".", label=f"{n} {metric}")
            ax.axhline(0, color="gray", lw=0.8)
            ax.set_xlabel("layer")
            ax.set_title({"k": "keys", "v": "values"}[kind])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("bits saved vs turbo")
        rep.figure(fig, "blockstudy_layers.png", "bits saved per layer")


def write_report(out_md, *, stats: Optional[dict] = None, kld: Optional[Any] = None,
                 needle: Optional[Any] = None, blockstudy: Optional[dict] = None, plots: bool = True,
                 inputs: Optional[Dict[str, str]] = None) -> dict:
    """Writes the Markdown report to out_md (folders created) and its PNGs beside it. Inputs are
    the loaded JSON data (None: that section is replaced by a note). Returns
    {"path", "pngs", "notes", "plots"}; plots is False when matplotlib is missing or plots=False."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    rep = Report(out_md, plots)
    rep.add("# eoq KV-cache compression report", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} by eoq-report.", "")
    if inputs:
        rep.add("Inputs: " + ", ".join(f"{k} `{v}`" for k, v in inputs.items()) + ".", "")
    if plots and rep.plt is None:
        rep.note(PLOTS_SKIPPED)
    section_ranks(rep, stats)
    section_kld(rep, kld)
    section_needle(rep, needle)
    section_blockstudy(rep, blockstudy)
    out_md.write_text("\n".join(rep.lines).rstrip() + "\n", encoding="utf-8")
    return {"path": str(out_md), "pngs": rep.pngs, "notes": rep.notes, "plots": rep.plt is not None}


def main(argv=None) -> int:
    from . import EoqError

    ap = argparse.ArgumentParser(prog="eoq-report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help=f"Markdown file (default {DEFAULT_OUTPUT})")
    ap.add_argument("--stats", help="JSON of Engine.compression_stats()")
    ap.add_argument("--run-stats", action="store_true", help="compute the statistics: run -f through --stats-kv")
    ap.add_argument("-m", "--model", help="GGUF model for --run-stats (default: SmolLM2-135M-Instruct)")
    ap.add_argument("-f", "--file", help="text file for --run-stats")
    ap.add_argument("-n", "--tokens", type=int, default=2048, help="tokens for --run-stats (default 2048)")
    ap.add_argument("--stats-kv", default="eoq2", help="KV mode[:key=value...] for --run-stats (default eoq2)")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--kld", help="JSON of per-mode KL-divergence results")
    ap.add_argument("--needle", help="JSON records of eoq-needle -o json")
    ap.add_argument("--blockstudy", help="JSON of eoq-blockstudy -o")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    a = ap.parse_args(argv)
    try:
        if a.stats and a.run_stats:
            raise ValueError("give --stats FILE or --run-stats, not both")
        inputs = {}
        out = Path(a.output)
        stats = None
        if a.stats:
            stats = load_json(a.stats)
            inputs["stats"] = a.stats
        elif a.run_stats:
            from .models import default_model_path
            from .perplexity import parse_mode

            if not a.file:
                raise ValueError("--run-stats needs -f TEXT")
            if a.tokens < 1:
                raise ValueError("--tokens must be >= 1")
            model = a.model or str(default_model_path(download=True))
            with open(a.file, encoding="utf-8", newline="") as fh:
                text = fh.read()
            mode, options = parse_mode(a.stats_kv)
            print(f"eoq-report: running {a.tokens} tokens through a {a.stats_kv} cache ...", file=sys.stderr,
                  flush=True)
            stats = compute_stats(model, text, a.tokens, mode, options, a.threads)
            stats["source"]["text"] = a.file
            out.parent.mkdir(parents=True, exist_ok=True)
            saved = out.parent / "stats.json"
            saved.write_text(json.dumps(stats), encoding="utf-8")
            inputs["stats"] = f"{saved} (computed from {a.file})"
        kld = load_json(a.kld) if a.kld else None
        needle = load_json(a.needle) if a.needle else None
        study = load_json(a.blockstudy) if a.blockstudy else None
        for key in ("kld", "needle", "blockstudy"):
            if getattr(a, key):
                inputs[key] = getattr(a, key)
        res = write_report(out, stats=stats, kld=kld, needle=needle, blockstudy=study, plots=not a.no_plots,
                           inputs=inputs)
        print(f"eoq-report: wrote {res['path']}" + (f" and {len(res['pngs'])} plots" if res["pngs"] else ""),
              file=sys.stderr)
        for n in res["notes"]:
            print(f"eoq-report: {n}", file=sys.stderr)
        return 0
    except (EoqError, ValueError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        print(f"eoq-report: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
