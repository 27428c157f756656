"""eoq-bench: prompt-processing and generation speed at chosen context depths and KV cache modes,
measured the way llama.cpp's llama-bench measures them, printed as a Markdown table (or JSON).

    eoq-bench -m model.gguf -p 512 -n 128 -d 0,2048,7680 --kv f16,q8_0,eoq2 -t 2 -r 3
    eoq-bench --kv f16,q4_0,eoq2:ring=0 -d 0,2048 --llama-bench /path/to/llama-bench

Method (as llama-bench): random token ids (seeded, any id of the vocabulary; the first token of
an empty cache is BOS when the model adds one). A row "pp512 @ d2048" fills the cache with 2048
tokens (untimed, in batches of -b), then times one eval of 512 tokens (batched); "tg128 @ d2048"
fills the cache the same way, then times 128 single-token evals. Before the timed runs one
warm-up prompt run and one warm-up token run are made; the cache is cleared and refilled before
every repetition. t/s is the mean +/- standard deviation over the -r repetitions (llama-bench's
convention); JSON adds the median and the samples.

Every (KV mode, threads, depth) configuration runs in its own fresh subprocess, so the peak
resident memory of a row (the child's ru_maxrss: model, Python, KV cache and scratch together)
belongs to that configuration alone. "KV MiB" is the memory the cache holds for the tokens
cached at the end of the test (kv_info()["bytes"], depth + p or depth + n tokens).

With --llama-bench PATH, llama.cpp's llama-bench runs in the same invocation, right after eoq
for the same configuration (so a noisy machine affects both alike), for the modes it has (f16,
q8_0, q4_0 as -ctk/-ctv, flash attention on, the same -p/-n/-d/-t/-r/-b), also one process per
configuration. Its rows get its t/s, its KV MiB (its allocated cache size, from its verbose
log, scaled to the same number of cached tokens), its peak RSS, and the ratio
median(eoq t/s) / median(llama.cpp t/s). --llama-bench-args passes extra options to it (e.g.
"--poll 0": its worker threads then sleep instead of spinning between graph nodes, which matters
on a machine whose cores are shared with other work).

Progress goes to stderr, the table to stdout. Usage errors: exit status 2; other errors: one line
`eoq-bench: error: ...` and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from .perplexity import parse_mode

PROG = "eoq-bench"
KV_MODES = ("f16", "f32", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4", "eoq", "eoq2", "eoq3", "eoq4")
LLAMA_KV_TYPES = ("f16", "q8_0", "q4_0")  # eoq modes that llama.cpp's cache has too
MIB = 1024.0 * 1024.0


class BenchError(Exception):
    """A runtime failure reported as one line, exit status 1."""


# ----------------------------------------------------------------------------------------------
# arguments


def _int_list(lo: int):
    def parse(s: str) -> List[int]:
        out = []
        for part in s.split(","):
            part = part.strip()
            try:
                v = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r} is not an integer") from None
            if v < lo:
                raise argparse.ArgumentTypeError(f"{v} is below {lo}")
            out.append(v)
        if not out:
            raise argparse.ArgumentTypeError("empty list")
        return out
    return parse


def _kv_list(s: str) -> List[str]:
    specs = [m.strip() for m in s.split(",") if m.strip()]
    if not specs:
        raise argparse.ArgumentTypeError("empty list")
    for spec in specs:
        try:
            mode, _ = parse_mode(spec)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if mode not in KV_MODES:
            raise argparse.ArgumentTypeError(f"unknown KV mode {mode!r} (modes: {', '.join(KV_MODES)})")
    return specs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="Lists are comma-separated; every combination of --kv, -t and -d is one configuration "
               "(one subprocess), giving a pp row and a tg row.")
    ap.add_argument("-m", "--model", metavar="FNAME", help="GGUF model (default: SmolLM2-135M-Instruct, fetched)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N",
                    help="prompt tokens of the pp test (0: no pp test; default 512)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, metavar="N",
                    help="generated tokens of the tg test (0: no tg test; default 128)")
    ap.add_argument("-d", "--n-depth", type=_int_list(0), default=[0], metavar="LIST",
                    help="context depths (tokens already in the cache), e.g. 0,2048,7680 (default 0)")
    ap.add_argument("--kv", type=_kv_list, default=["f16"], metavar="LIST",
                    help="KV cache modes, each with optional :key=value knobs (e.g. eoq2:ring=0); "
                         "modes: " + ", ".join(KV_MODES) + " (default f16)")
    ap.add_argument("-t", "--threads", type=_int_list(1), default=[os.cpu_count() or 1], metavar="LIST",
                    help=f"thread counts (default {os.cpu_count() or 1})")
    ap.add_argument("-r", "--repetitions", type=int, default=3, metavar="N", help="repetitions per test (default 3)")
    ap.add_argument("-b", "--batch-size", type=int, default=512, metavar="N",
                    help="tokens per forward pass for the pp test and the depth fill (default 512)")
    ap.add_argument("--device", default="cpu", metavar="DEV",
                    help="cpu (default), cuda or cuda:N; on a GPU the table adds the decode roofline: "
                         "weight and cache bytes read per token over the measured copy bandwidth")
    ap.add_argument("-o", "--output", choices=("md", "json"), default="md", help="output format (default md)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the random token ids (default 1234)")
    ap.add_argument("--llama-bench", metavar="PATH",
                    help="also run llama.cpp's llama-bench binary for the modes it has (f16, q8_0, q4_0)")
    ap.add_argument("--llama-bench-args", metavar="ARGS", default="",
                    help="extra arguments for llama-bench, one string (e.g. \"--poll 0\")")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration, JSON in/out
    return ap


def _check_args(ap: argparse.ArgumentParser, a) -> None:
    if a.n_prompt < 0:
        ap.error(f"-p: {a.n_prompt} is below 0")
    if a.n_gen < 0:
        ap.error(f"-n: {a.n_gen} is below 0")
    if a.n_prompt == 0 and a.n_gen == 0:
        ap.error("-p and -n are both 0: nothing to measure")
    if a.repetitions < 1:
        ap.error(f"-r: {a.repetitions} is below 1")
    if a.batch_size < 1:
        ap.error(f"-b: {a.batch_size} is below 1")


# ----------------------------------------------------------------------------------------------
# the worker: one configuration, in a fresh process


def _vm_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def worker(cfg: dict) -> dict:
    """Runs the pp and tg tests of one configuration; returns the measurements (JSON-able)."""
    import numpy as np

    from . import _core

    rss_before_load = _vm_kib("VmRSS")
    mode, options = parse_mode(cfg["kv"])
    p, n, d, reps, nb = cfg["n_prompt"], cfg["n_gen"], cfg["n_depth"], cfg["reps"], cfg["n_batch"]
    n_ctx = d + max(p, n, 1)
    device = cfg.get("device", "cpu")
    if device != "cpu":
        from .engine import _check_device

        device = _check_device(device)
    eng = _core.Engine(cfg["model"], n_ctx=n_ctx, n_threads=cfg["threads"], kv=mode, n_batch=nb,
                       kv_options=options, device=device)
    rss_after_load = _vm_kib("VmRSS")
    n_vocab = eng.n_vocab
    bos = eng.bos if (eng.add_bos and eng.bos >= 0) else -1
    rng = np.random.default_rng(cfg["seed"])

    def rand_tokens(k: int, first_bos: bool) -> List[int]:
        toks = rng.integers(0, n_vocab, size=k).tolist()
        if first_bos and k and bos >= 0:
            toks[0] = bos
        return toks

    def fill() -> None:
        eng.reset()
        if d:
            toks = rand_tokens(d, True)
            for i in range(0, d, nb):
                eng.eval(toks[i:i + nb])

    out: Dict[str, object] = dict(n_ctx=n_ctx, load_ms=eng.load_ms, n_vocab=n_vocab, backend=eng.backend,
                                  weight_bytes_per_token=int(eng.weight_bytes_per_token))
    if device != "cpu":  # the roofline's bandwidth, measured on this GPU (bytes read + written)
        out["copy_bandwidth_bps"] = float(_core.cuda.copy_bandwidth(int(device.partition(":")[2] or 0)))
    # warm-up, as llama-bench: one prompt run and one token run from an empty cache
    if p:
        eng.reset()
        eng.eval(rand_tokens(p, True))
    if n:
        eng.reset()
        eng.eval(rand_tokens(1, True))

    for test, k in (("pp", p), ("tg", n)):
        if not k:
            continue
        samples = []
        for _ in range(reps):
            fill()
            if test == "pp":
                toks = rand_tokens(p, d == 0)
                t0 = time.perf_counter()
                eng.eval(toks)
                samples.append(time.perf_counter() - t0)
            else:
                toks = rand_tokens(n, d == 0)
                t0 = time.perf_counter()
                for tok in toks:
                    eng.eval([tok])
                samples.append(time.perf_counter() - t0)
        info = eng.kv_info()
        out[test] = dict(samples_s=samples, kv_bytes=int(info["bytes"]), n_tokens=int(info["n_tokens"]),
                         bits_per_entry=float(info["bits_per_entry"]))
    out["rss_before_load_kib"] = rss_before_load
    out["rss_after_load_kib"] = rss_after_load
    out["vm_hwm_kib"] = _vm_kib("VmHWM")
    return out


def _worker_main(cfg_json: str) -> int:
    try:
        res = worker(json.loads(cfg_json))
    except Exception as e:  # the parent reports it as one line
        print(json.dumps({"error": str(e) or type(e).__name__}))
        return 1
    print(json.dumps(res))
    return 0


# ----------------------------------------------------------------------------------------------
# running children with their own peak RSS


def run_measured(cmd: List[str], env=None):
    """Runs cmd; returns (returncode, stdout, stderr, peak RSS in bytes of that child alone)."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)
        try:
            _, status, ru = os.wait4(proc.pid, 0)  # the child's own rusage: its ru_maxrss alone
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return (proc.returncode, fo.read().decode("utf-8", "replace"), fe.read().decode("utf-8", "replace"),
                ru.ru_maxrss * 1024)


def _summary(ts: List[float]) -> dict:
    return dict(samples_ts=ts, avg_ts=statistics.fmean(ts), stddev_ts=statistics.stdev(ts) if len(ts) > 1 else 0.0,
                median_ts=statistics.median(ts))


def run_eoq_config(model: str, kv: str, threads: int, depth: int, a) -> dict:
    cfg = dict(model=model, kv=kv, threads=threads, n_depth=depth, n_prompt=a.n_prompt, n_gen=a.n_gen,
               reps=a.repetitions, n_batch=a.batch_size, seed=a.seed, device=a.device)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    rc, out, err, peak = run_measured([sys.executable, "-m", "eoq.bench", "--worker", json.dumps(cfg)], env=env)
    res = None
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except ValueError:
                pass
            break
    if res is None or "error" in res or rc != 0:
        msg = (res or {}).get("error") or (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        raise BenchError(f"kv {kv}, {threads} threads, depth {depth}: {msg}")
    res["peak_rss_bytes"] = peak
    return res


# ----------------------------------------------------------------------------------------------
# llama.cpp's llama-bench


def parse_llama_bench_json(text: str) -> List[dict]:
    """llama-bench `-o json` (a JSON array; `-o jsonl` lines are accepted too) -> one dict per test:
    test ('pp', 'tg' or 'pg'), n_prompt, n_gen, n_depth, n_threads, type_k, type_v, flash_attn,
    avg_ts, stddev_ts, median_ts, samples_ts, build_commit, build_number, model_filename, model_type,
    model_size, n_batch."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        data = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("llama-bench JSON: expected an array of tests")
    rows = []
    for t in data:
        if not isinstance(t, dict):
            raise ValueError("llama-bench JSON: a test is not an object")
        try:
            np_, ng, nd = int(t["n_prompt"]), int(t["n_gen"]), int(t.get("n_depth", 0))
            samples = [float(x) for x in t.get("samples_ts") or []] or [float(t["avg_ts"])]
            row = dict(
                test="pp" if ng == 0 else "tg" if np_ == 0 else "pg",
                n_prompt=np_, n_gen=ng, n_depth=nd, n_threads=int(t["n_threads"]),
                type_k=str(t.get("type_k", "f16")), type_v=str(t.get("type_v", "f16")),
                flash_attn=t.get("flash_attn"),
                avg_ts=float(t["avg_ts"]), stddev_ts=float(t.get("stddev_ts", 0.0)),
                median_ts=statistics.median(samples), samples_ts=samples,
                build_commit=t.get("build_commit"), build_number=t.get("build_number"),
                model_filename=t.get("model_filename"), model_type=t.get("model_type"),
                model_size=t.get("model_size"), n_batch=t.get("n_batch"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"llama-bench JSON: malformed test ({e})") from None
        rows.append(row)
    return rows


_KV_SIZE_RE = re.compile(r"llama_kv_cache: size =\s*([0-9.]+) MiB \(\s*(\d+) cells")


def parse_llama_kv_sizes(log: str) -> List[tuple]:
    """(MiB, cells) of every KV cache llama.cpp allocated, from its verbose log, in order."""
    return [(float(m.group(1)), int(m.group(2))) for m in _KV_SIZE_RE.finditer(log)]


def run_llama_config(path: str, model: str, kv_type: str, threads: int, depth: int, a) -> dict:
    cmd = [path, "-m", model, "-p", str(a.n_prompt), "-n", str(a.n_gen), "-d", str(depth), "-t", str(threads),
           "-r", str(a.repetitions), "-b", str(a.batch_size), "-ctk", kv_type, "-ctv", kv_type, "-fa", "1",
           "-o", "json", "-v"] + shlex.split(a.llama_bench_args)
    rc, out, err, peak = run_measured(cmd)
    if rc != 0:
        tail = [ln for ln in err.strip().splitlines() if ln.strip()]
        raise BenchError(f"llama-bench failed (exit status {rc}) for {kv_type}, {threads} threads, depth {depth}: "
                         f"{tail[-1] if tail else 'no message'}")
    try:
        tests = parse_llama_bench_json(out)
    except ValueError as e:
        raise BenchError(str(e)) from None
    sizes = parse_llama_kv_sizes(err)
    res = {"peak_rss_bytes": peak}
    # llama-bench creates one context per test, pp tests before tg tests: pair them with the sizes
    for i, t in enumerate(tests):
        if i < len(sizes):
            mib, cells = sizes[i]
            ntok = depth + (t["n_prompt"] if t["test"] == "pp" else t["n_gen"])
            t["kv_alloc_bytes"] = int(mib * MIB)
            t["kv_cells"] = cells
            t["kv_bytes"] = int(mib * MIB * min(ntok, cells) / cells) if cells else None
        res[t["test"]] = t
    return res


# ----------------------------------------------------------------------------------------------
# output


def _test_name(test: str, k: int, depth: int) -> str:
    return f"{test}{k}" + (f" @ d{depth}" if depth else "")


def _fmt_ts(r: dict) -> str:
    return f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"


def _mib(b) -> str:
    if b is None:
        return "-"
    return f"{b / MIB:.2f}" if b >= 0.1 * MIB or b == 0 else f"{b / MIB:.4f}"


def roofline_ts(weight_bytes: int, kv_bytes_per_pos: float, depth: int, n_gen: int, bandwidth: float) -> float:
    """Decode's bandwidth bound (../shared/spec/gpu.md section 3): every weight byte and the whole
    cache read once per token; over n_gen tokens from depth d the mean cache length is
    d + (n_gen + 1) / 2 positions."""
    return bandwidth / (weight_bytes + (depth + (n_gen + 1) / 2) * kv_bytes_per_pos)


def markdown(rows: List[dict], with_llama: bool) -> str:
    cols = ["model", "kv", "threads", "test", "t/s", "KV MiB", "peak RSS MiB"]
    roof = any(r.get("roofline_ts") for r in rows)
    if roof:
        cols = ["model", "kv", "device", "test", "t/s", "roofline t/s", "% of roofline", "KV MiB"]
    if with_llama:
        cols += ["llama.cpp t/s", "llama.cpp KV MiB", "llama.cpp peak RSS MiB", "eoq/llama.cpp"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c not in ("model", "kv", "test") else "---"
                                                         for c in cols) + "|"]
    for r in rows:
        cells = [r["model"], r["kv"], str(r["threads"]), r["test"], _fmt_ts(r), _mib(r["kv_bytes"]),
                 _mib(r["peak_rss_bytes"])]
        if roof:
            rt = r.get("roofline_ts")
            cells = [r["model"], r["kv"], r["device"], r["test"], _fmt_ts(r), f"{rt:.1f}" if rt else "-",
                     f"{100 * r['median_ts'] / rt:.0f}%" if rt else "-", _mib(r["kv_bytes"])]
        if with_llama:
            ll = r.get("llama")
            if ll:
                cells += [_fmt_ts(ll), _mib(ll.get("kv_bytes")), _mib(ll.get("peak_rss_bytes")), f"{r['ratio']:.2f}"]
            else:
                cells += ["-", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rows_of(model_label: str, kv: str, threads: int, depth: int, a, eres: dict, lres: Optional[dict]) -> List[dict]:
    rows = []
    for test, k in (("pp", a.n_prompt), ("tg", a.n_gen)):
        if not k:
            continue
        e = eres[test]
        ts = [k / s for s in e["samples_s"]]
        row = dict(model=model_label, kv=kv, threads=threads, test=_test_name(test, k, depth), n_prompt=k if
                   test == "pp" else 0, n_gen=k if test == "tg" else 0, n_depth=depth, **_summary(ts),
                   kv_bytes=e["kv_bytes"], kv_tokens=e["n_tokens"], bits_per_entry=e["bits_per_entry"],
                   peak_rss_bytes=eres["peak_rss_bytes"], rss_after_load_bytes=(eres.get("rss_after_load_kib") or 0) * 1024,
                   rss_python_bytes=(eres.get("rss_before_load_kib") or 0) * 1024, device=a.device,
                   backend=eres.get("backend"))
        if test == "tg" and eres.get("copy_bandwidth_bps") and e["n_tokens"]:
            per_pos = e["kv_bytes"] / e["n_tokens"]
            row["roofline_ts"] = roofline_ts(eres["weight_bytes_per_token"], per_pos, depth, k,
                                             eres["copy_bandwidth_bps"])
            row["copy_bandwidth_bps"] = eres["copy_bandwidth_bps"]
        if lres is not None:
            ll = lres.get(test)
            if ll:
                ll = dict(ll, peak_rss_bytes=lres["peak_rss_bytes"])
                row["llama"] = ll
                row["ratio"] = row["median_ts"] / ll["median_ts"] if ll["median_ts"] > 0 else math.nan
            else:
                row["llama"] = None
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return _worker_main(argv[1])
    ap = build_parser()
    a = ap.parse_args(argv)  # usage errors: exit status 2
    _check_args(ap, a)
    try:
        shlex.split(a.llama_bench_args)
    except ValueError as e:
        ap.error(f"--llama-bench-args: {e}")
    if a.llama_bench_args and not a.llama_bench:
        ap.error("--llama-bench-args needs --llama-bench")
    if a.llama_bench and not (os.path.isfile(a.llama_bench) and os.access(a.llama_bench, os.X_OK)):
        ap.error(f"--llama-bench: {a.llama_bench!r} is not an executable file")
    try:
        if a.model:
            if not os.path.isfile(a.model):
                raise BenchError(f"model file {a.model!r} not found")
            model = a.model
        else:
            from .models import default_model_path

            model = str(default_model_path(download=True))
        label = os.path.basename(model)
        if label.lower().endswith(".gguf"):
            label = label[:-5]
        configs = [(kv, t, d) for kv in a.kv for t in a.threads for d in a.n_depth]
        rows: List[dict] = []
        llama_cache: Dict[tuple, dict] = {}
        llama_build = None
        t_start = time.perf_counter()
        for i, (kv, t, d) in enumerate(configs):
            _err(f"[{i + 1}/{len(configs)}] eoq kv {kv}, {t} threads, depth {d} ...")
            eres = run_eoq_config(model, kv, t, d, a)
            lres = None
            base = parse_mode(kv)[0]
            if a.llama_bench and base in LLAMA_KV_TYPES:
                key = (base, t, d)
                if key not in llama_cache:
                    _err(f"[{i + 1}/{len(configs)}] llama.cpp -ctk/-ctv {base}, {t} threads, depth {d} ...")
                    llama_cache[key] = run_llama_config(a.llama_bench, model, base, t, d, a)
                lres = llama_cache[key]
                for tt in ("pp", "tg"):
                    if lres.get(tt) and lres[tt].get("build_commit"):
                        llama_build = (lres[tt]["build_commit"], lres[tt]["build_number"])
            new = _rows_of(label, kv, t, d, a, eres, lres)
            for r in new:
                msg = f"    {r['test']:>16}: eoq {r['median_ts']:8.2f} t/s"
                if r.get("llama"):
                    msg += f", llama.cpp {r['llama']['median_ts']:8.2f} t/s, ratio {r['ratio']:.2f}"
                _err(msg)
            rows.extend(new)
        _err(f"done in {time.perf_counter() - t_start:.0f}s")
        from . import __version__

        if a.output == "json":
            print(json.dumps(dict(model=model, eoq_version=__version__,
                                  llama_cpp_build=None if llama_build is None else
                                  dict(commit=llama_build[0], number=llama_build[1]),
                                  rows=rows), indent=2))
        else:
            print(markdown(rows, bool(a.llama_bench)))
            print()
            foot = f"eoq {__version__}"
            py = [r["rss_python_bytes"] for r in rows if r.get("rss_python_bytes")]
            if py:
                foot += (f" (its peak RSS includes the Python interpreter: {min(py) / MIB:.0f} MiB before the "
                         f"model is loaded)")
            if llama_build:
                foot += f"; llama.cpp build: {llama_build[0]} ({llama_build[1]})"
            bw = [r["copy_bandwidth_bps"] for r in rows if r.get("copy_bandwidth_bps")]
            if bw:
                foot += (f"; {rows[0].get('backend')}; roofline bandwidth {statistics.median(bw) / 1e12:.2f} TB/s "
                         f"(device-to-device copy, bytes read + written)")
            print(foot)
        return 0
    except BenchError as e:
        _err(f"{PROG}: error: {e}")
        return 1
    except Exception as e:
        from . import EoqError

        if isinstance(e, (OSError, EoqError, ValueError)):
            _err(f"{PROG}: error: {e}")
            return 1
        raise
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
