"""eoq-run: complete a prompt from the command line, llama.cpp style (also `python -m eoq`).

    eoq-run -m model.gguf -p "Once upon a time" -n 128 --kv f16
    eoq-run --chat -p "What is the capital of France?"        (default model, fetched once)
    echo "Once upon a time" | eoq-run -n 32

The prompt comes from -p, -f FILE, or stdin when neither is given and stdin is not a terminal.
Generated text streams to stdout; load time, prompt and generation speed and the KV memory go to
stderr at the end. Errors: one line `eoq-run: error: ...` and exit status 1 (usage errors: 2;
interrupted: 130).
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import warnings

import numpy as np
from typing import List, Optional

PROG = "eoq-run"
KV_MODES = ("f16", "f32", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4", "eoq", "eoq2", "eoq3", "eoq4")


def _version() -> str:
    try:
        from . import __version__
    except Exception:  # the package failed to import (e.g. _core missing): still answer
        __version__ = "unknown"
    return f"{PROG} {__version__}"


def device_from_args(args) -> str:
    """--device, else -ngl (N > 0: cuda), else cpu. The two must agree when both are given."""
    ngl = getattr(args, "n_gpu_layers", None)
    dev = getattr(args, "device", None)
    if ngl is not None and ngl < 0:
        raise CliError(f"-ngl must be >= 0, got {ngl}")
    if dev is not None:
        if ngl is not None and (ngl > 0) != (dev.strip().lower() != "cpu"):
            raise CliError(f"-ngl {ngl} and --device {dev} disagree")
        return dev
    if ngl:
        return "cuda"
    return "cpu"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Generate text with a GGUF Llama-family model (eoq engine).",
        epilog="Without -m the default model (SmolLM2-135M-Instruct Q4_1) is used, downloaded "
               "once into the eoq cache. Text goes to stdout; timings go to stderr.")
    g = ap.add_argument_group("model and prompt")
    g.add_argument("-m", "--model", metavar="FNAME", help="GGUF model path (default: the default model)")
    g.add_argument("-p", "--prompt", metavar="TEXT", help="prompt text")
    g.add_argument("-f", "--file", metavar="FNAME", help="read the prompt from a UTF-8 file")
    g.add_argument("-e", "--escape", action="store_true",
                   help=r"process escapes (\n, \t, \r, \\, \", \', \xHH) in the prompt")
    g.add_argument("--no-escape", dest="escape", action="store_false", help="do not process escapes (default)")
    g.add_argument("--chat", action="store_true",
                   help="format the prompt as one user message with the model's chat template")
    g.add_argument("-sys", "--system", "--system-prompt", dest="system", metavar="TEXT",
                   help="system message (implies --chat)")
    g.add_argument("-cnv", "--conversation", "-i", "--interactive", dest="conversation", action="store_true",
                   help="interactive chat: read user turns from stdin (one per line; an empty line or "
                        "end of input ends), the cache kept between turns; -p is the first turn")
    g.add_argument("--no-display-prompt", dest="display_prompt", action="store_false",
                   help="do not print the prompt before the generated text")
    g.add_argument("-r", "--reverse-prompt", "--stop", dest="stop", action="append", metavar="TEXT",
                   help="stop when this text is generated (repeatable; not printed)")

    g = ap.add_argument_group("context and compute")
    g.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                   help="tokens to generate (-1: until end of sequence or a full context; default -1)")
    g.add_argument("-c", "--ctx-size", type=int, default=0, metavar="N",
                   help="context size in tokens (0: the model's; default 0)")
    g.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="compute threads (default: the CPUs available)")
    g.add_argument("-b", "--batch-size", type=int, default=512, metavar="N",
                   help="prompt tokens per forward pass (default 512)")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="where the model runs: cpu (default), cuda or cuda:N")
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=None,
                   metavar="N", help="as llama.cpp: N > 0 runs the model on the GPU (eoq places every layer "
                   "there; -ngl 99 is the usual spelling), 0 on the CPU")
    g.add_argument("--kv", default=None, metavar="MODE",
                   help="KV cache mode: " + ", ".join(KV_MODES) + " (default f16), optionally with knobs "
                        "as in the C API and eoq-perplexity: eoq2:ring=0:k_bits=3")
    g.add_argument("-fa", "--flash-attn", nargs="?", const="on", default=None, metavar="on|off|auto",
                   help="accepted as llama.cpp takes it; eoq's attention is always fused (one pass over "
                        "the cache with an online softmax)")
    g.add_argument("-ctk", "--cache-type-k", metavar="TYPE",
                   help="K cache: a mode as llama.cpp takes it (f16, q8_0, q4_0; same for K and V), or the "
                        "residual bits of a turbo/eoq mode (1-4, or e.g. turbo3)")
    g.add_argument("-ctv", "--cache-type-v", metavar="TYPE", help="V cache: as -ctk")
    g.add_argument("--kv-rank-cap", type=int, metavar="N", help="eoq: max low-rank components per block")
    g.add_argument("--kv-factor-bits", type=int, metavar="N", help="eoq: bits of the low-rank factors (4)")
    g.add_argument("--kv-truncate", action="store_true", help="eoq: plain truncation instead of eOptShrink gains")
    g.add_argument("--kv-block", type=int, metavar="N", help="tokens per sealed block")
    g.add_argument("--kv-ring", type=int, metavar="N", help="exact recent tokens kept before sealing")
    g.add_argument("--kv-sinks", type=int, metavar="N", help="exact attention-sink tokens (4)")
    g.add_argument("--kv-boundary-layers", type=int, metavar="N",
                   help="first and last N layers at higher precision (f16, or --kv-boundary-bits)")
    g.add_argument("--kv-boundary-bits", type=int, metavar="B",
                   help="turbo/eoq: residual bits of the boundary layers (0: keep them f16)")
    g.add_argument("--kv-v-rank-cap", type=int, metavar="N", help="eoq: rank cap for values (0: plain turbo)")
    g.add_argument("--kv-exact-scores", action="store_true",
                   help="turbo/eoq: score sealed keys in float, not from an int8-rounded query (AVX-512 CPUs)")
    g.add_argument("--prompt-cache", metavar="FNAME",
                   help="as llama.cpp: load the session from FNAME if it exists (its tokens are reused as "
                        "a prefix of the prompt), save it there at the end")
    g.add_argument("--stats", action="store_true", help="print KV compression statistics at the end")
    g.add_argument("--estimate", action="store_true",
                   help="print the memory the model, the KV cache (fully counted at -c tokens) and the "
                        "scratch would take, then exit without loading")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no prompt progress line (shown on a terminal for prompts longer than -b)")

    g = ap.add_argument_group("sampling (llama.cpp defaults)")
    g.add_argument("--temp", type=float, default=0.8, metavar="T", help="temperature (0: greedy; default 0.8)")
    g.add_argument("--top-k", type=int, default=40, metavar="N", help="top-k (0: off; default 40)")
    g.add_argument("--top-p", type=float, default=0.95, metavar="P", help="top-p (1: off; default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, metavar="P", help="min-p (0: off; default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, metavar="F",
                   help="repeat penalty (1: off; default 1.0)")
    g.add_argument("--repeat-last-n", type=int, default=64, metavar="N",
                   help="tokens the repeat penalty looks back at (-1: all; default 64)")
    g.add_argument("-s", "--seed", type=int, default=-1, metavar="N",
                   help="random seed (-1: random, printed to stderr; default -1)")

    ap.add_argument("--verbose", action="store_true", help="print model details at load")
    ap.add_argument("--version", action="version", version=_version())
    return ap


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "0": "\0", "?": "?"}


def process_escapes(s: str) -> str:
    r"""\n, \t, \r, \\, \', \", \a, \b, \f, \v, \0, \? and \xHH; other backslashes are kept."""
    out: List[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n in _ESCAPES:
                out.append(_ESCAPES[n])
                i += 2
                continue
            hx = s[i + 2:i + 4]
            if n == "x" and len(hx) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in hx):
                out.append(chr(int(hx, 16)))
                i += 4
                continue
        out.append(c)
        i += 1
    return "".join(out)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _read_prompt(args) -> str:
    if args.prompt is not None and args.file is not None:
        raise CliError("give the prompt with -p or -f, not both")
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CliError(f"cannot read prompt file {args.file}: {e.strerror or e}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CliError(f"prompt file {args.file} is not valid UTF-8 (byte 0x{data[e.start]:02x} "
                           f"at offset {e.start})") from None
        if text.startswith("\ufeff"):
            text = text[1:]
    elif args.prompt is not None:
        text = args.prompt
    else:
        stdin = sys.stdin
        if stdin is None or stdin.closed or stdin.isatty():
            raise CliError("no prompt: use -p TEXT or -f FILE (or pipe the prompt on stdin)")
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CliError(f"the prompt on stdin is not valid UTF-8 (offset {e.start})") from None
    if args.escape:
        text = process_escapes(text)
    return text


class _Out:
    """Writes UTF-8 to stdout whatever its encoding, flushing every piece."""

    def __init__(self):
        self.buf = getattr(sys.stdout, "buffer", None)

    def write(self, text: str) -> None:
        if not text:
            return
        if self.buf is not None:
            self.buf.write(text.encode("utf-8"))
            self.buf.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()


def _err(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    _err(f"warning: {message}")


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def stats_lines(st) -> List[str]:
    """A short human summary of Engine.compression_stats()."""
    out = [f"stats: mode {st.get('mode')}, {st.get('n_tokens', 0)} tokens, {st.get('bytes', 0)} bytes, "
           f"{float(st.get('bits_per_entry', 0)):.3f} bits per entry (whole cache, fully counted)"]
    if "f16_bytes" in st:
        out.append(f"stats: f16 cache of the same length {st['f16_bytes']} bytes, "
                   f"compression ratio {float(st.get('compression_ratio', 0)):.2f}x")
    if "params" in st:
        out.append("stats: params " + ", ".join(f"{k}={v}" for k, v in st["params"].items()))
    summ = st.get("summary") or {}
    if summ:
        out.append(f"stats: blocks sealed {summ.get('blocks_sealed', 0)}, "
                   f"sealing {float(summ.get('seal_ms_total', 0)):.1f} ms in all, "
                   f"{float(summ.get('seal_ms_per_block', 0)):.2f} ms per block")
        for kv in ("k", "v"):
            d = summ.get(kv)
            if not d:
                continue
            line = (f"stats: {kv.upper()}: sealed bits per entry {float(d.get('bits_per_entry_sealed', 0)):.3f} "
                    f"(paper convention {float(d.get('bits_per_entry_sealed_paper', 0)):.3f})")
            if "mean_rank" in d:
                line += (f", mean rank {float(d['mean_rank']):.2f} (before cap {float(d.get('mean_rank_raw', 0)):.2f})"
                         f", mean block error {float(d.get('mean_rel_err', 0)):.3f}")
            fb = {k: v for k, v in (d.get("fallbacks") or {}).items() if k != "none" and v}
            if fb:
                line += ", fallbacks " + ", ".join(f"{k}={v}" for k, v in fb.items())
            out.append(line)
    ranks = []
    for layer in st.get("layers") or []:
        hists = [h["k"]["rank_hist"] for h in layer.get("heads", []) if h.get("k", {}).get("blocks")]
        rs = [np.dot(np.arange(len(hh)), hh) / max(1, sum(hh)) for hh in hists]
        if rs:
            ranks.append(f"{layer['layer']}:{np.mean(rs):.1f}")
    if ranks:
        out.append("stats: mean K rank by layer " + " ".join(ranks))
    return out


def kv_config(args):
    """(mode, options) from --kv (a mode or a spec string such as eoq2:ring=0), -ctk/-ctv and
    the --kv-* knobs (which win over the spec's)."""
    mode = args.kv
    options = {}
    if mode is not None and ":" in mode:
        from . import _core

        try:
            mode, spec_opts = _core.parse_kv_spec(mode)
        except ValueError as e:
            raise CliError(f"--kv {args.kv!r}: {e}") from None
        default_mode, defaults = _core.parse_kv_spec(mode)
        options = {k: v for k, v in spec_opts.items() if defaults.get(k) != v}  # the knobs given
    plain = ("f16", "f32", "q8_0", "q4_0")
    types = {"k_bits": args.cache_type_k, "v_bits": args.cache_type_v}
    named = {v for v in types.values() if v in plain}
    if named:
        if args.cache_type_k != args.cache_type_v:
            raise CliError(f"-ctk/--cache-type-k {args.cache_type_k} and -ctv/--cache-type-v "
                           f"{args.cache_type_v} must name the same type for f16/q8_0/q4_0 caches "
                           "(eoq stores K and V alike; separate bits exist for turbo/eoq modes)")
        if mode is not None and mode != args.cache_type_k:
            raise CliError(f"--kv {mode} conflicts with -ctk/-ctv {args.cache_type_k}")
        mode = args.cache_type_k
    else:
        for key, val in types.items():
            if val is None:
                continue
            m = re.fullmatch(r"(turbo|eoq)?([1-8])", val)
            if not m:
                raise CliError(f"cache type {val!r} is not one of f16, q8_0, q4_0, 1-4, turboN, eoqN")
            family, digits = m.group(1), m.group(2)
            if family is not None:
                if mode is None:
                    mode = f"{family}{digits}"
                elif not mode.startswith(family):
                    raise CliError(f"--kv {mode} conflicts with cache type {val}")
            if mode is None or not mode.startswith(("turbo", "eoq")):
                raise CliError("bit counts in -ctk/-ctv need a turbo or eoq mode (--kv turbo3, --kv eoq2, ...)")
            options[key] = int(digits)
    mode = mode or "f16"
    if mode not in KV_MODES:
        raise CliError(f"--kv {mode!r} is not a KV cache mode (known: {', '.join(KV_MODES)})")
    for key, val in (("rank_cap", args.kv_rank_cap), ("factor_bits", args.kv_factor_bits),
                     ("block", args.kv_block), ("ring", args.kv_ring), ("sinks", args.kv_sinks),
                     ("boundary_layers", args.kv_boundary_layers), ("boundary_bits", args.kv_boundary_bits),
                     ("v_rank_cap", args.kv_v_rank_cap)):
        if val is not None:
            options[key] = val
    if args.kv_truncate:
        options["shrink"] = False
    if args.kv_exact_scores:
        options["exact_scores"] = True
    return mode, options


def _progress_line():
    """A progress(done, total) callback that redraws one line on stderr (a terminal only)."""
    stream = sys.stderr
    if stream is None or not stream.isatty():
        return None

    def show(done, total):
        stream.write(f"\r{PROG}: prompt {done}/{total} tokens ({100 * done // max(total, 1)}%)\x1b[K")
        stream.flush()

    return show


def _clear_progress(progress) -> None:
    if progress is not None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _estimate(args, model, kv_mode, kv_options) -> int:
    from . import Engine

    est = Engine.estimate_memory(model, n_ctx=args.ctx_size, kv=kv_mode, kv_options=kv_options,
                                 n_batch=args.batch_size, device=device_from_args(args))
    for line in estimate_lines(est):
        print(line)
    return 0


def estimate_lines(est) -> List[str]:
    out = [f"n_ctx {est['n_ctx']} (training context {est['n_ctx_train']}), KV mode {est['kv']}, on {est['device']}"]
    if est["n_ctx"] > est["n_ctx_train"]:
        out.append(f"warning: n_ctx {est['n_ctx']} exceeds the model's training context {est['n_ctx_train']}")
    out.append(f"weights  {est['weights']:>15d} bytes ({_mib(est['weights'])})" +
               (" (mapped from the file)" if est["device"] == "cpu" else ""))
    out.append(f"KV cache {est['kv_bytes']:>15d} bytes ({_mib(est['kv_bytes'])}) for {est['n_ctx']} tokens, "
               f"{est['kv_bits_per_entry']:.2f} bits per entry ({est['kv_basis']})")
    out.append(f"scratch  {est['scratch']:>15d} bytes ({_mib(est['scratch'])})")
    out.append(f"total    {est['total']:>15d} bytes ({_mib(est['total'])}); free on the device: "
               f"{est['free']} bytes ({_mib(est['free'])})" + ("" if est["fits"] else ": DOES NOT FIT"))
    return out


def _conversation(engine, args, first: Optional[str], gen_kwargs, out) -> None:
    """-cnv: user turns from stdin, replies streamed; the chat history grows and each turn reuses
    the cache (the previous turns' tokens are a prefix of the new prompt)."""
    messages = []
    if args.system is not None:
        messages.append({"role": "system", "content": args.system})
    interactive = sys.stdin is not None and sys.stdin.isatty()
    turn = first
    while True:
        if turn is None:
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = sys.stdin.readline() if sys.stdin is not None else ""
            if not line or not line.strip():
                return
            turn = line.rstrip("\n")
        messages.append({"role": "user", "content": turn})
        progress = _progress_line() if args.progress else None
        stream = engine.chat(messages, stream=True, progress=progress, **gen_kwargs)
        reply = []
        first_piece = True
        for piece in stream:
            if first_piece:
                _clear_progress(progress)
                first_piece = False
            reply.append(piece)
            out.write(piece)
        if first_piece:
            _clear_progress(progress)
        out.write("\n")
        c = stream.completion
        if args.verbose:
            _err(f"turn: {c.usage['prompt_tokens']} prompt tokens ({c.timings['prompt_cached_tokens']} reused), "
                 f"{c.usage['completion_tokens']} generated")
        messages.append({"role": "assistant", "content": "".join(reply)})
        turn = None


def run(args) -> int:
    kv_mode, kv_options = kv_config(args)
    if args.flash_attn is not None and args.flash_attn not in ("on", "off", "auto"):
        raise CliError(f"-fa/--flash-attn takes on, off or auto, got {args.flash_attn!r}")
    if args.estimate:
        from .models import default_model_path

        model = args.model if args.model is not None else str(default_model_path(download=True))
        return _estimate(args, model, kv_mode, kv_options)
    prompt = None
    if not args.conversation or args.prompt is not None or args.file is not None:
        prompt = _read_prompt(args)  # before loading: a bad prompt file fails fast

    from . import Engine
    from .models import default_model_path

    model = args.model if args.model is not None else str(default_model_path(download=True))
    n_predict = -1 if args.n_predict == -2 else args.n_predict  # llama.cpp's -2: fill the context
    if n_predict < -1:
        raise CliError(f"-n must be >= -1, got {args.n_predict}")
    seed = args.seed
    if seed == -1:
        seed = secrets.randbits(32)
    engine = Engine(model, n_ctx=args.ctx_size, n_threads=args.threads, kv=kv_mode, kv_options=kv_options,
                    n_batch=args.batch_size, verbose=args.verbose, device=device_from_args(args))
    with engine:
        if args.conversation:
            gen_kwargs = dict(max_tokens=n_predict, temperature=args.temp, top_k=args.top_k,
                              top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                              repeat_last_n=args.repeat_last_n, seed=seed, stop=args.stop)
            _conversation(engine, args, prompt, gen_kwargs, _Out())
            return 0
        chat = args.chat or args.system is not None
        if chat:
            messages = []
            if args.system is not None:
                messages.append({"role": "system", "content": args.system})
            messages.append({"role": "user", "content": prompt})
            shown = engine.apply_chat_template(messages, add_generation_prompt=True)
            source = engine.chat_tokens(messages)
        else:
            shown = prompt
            source = prompt
        if args.prompt_cache and os.path.exists(args.prompt_cache):
            try:
                engine.load_state(args.prompt_cache)
            except ValueError as e:  # another model or cache mode, or a damaged file: start empty
                _err(f"warning: prompt cache {args.prompt_cache} not used: {e}")
        progress = _progress_line() if args.progress else None
        stream = engine.generate(
            source, max_tokens=n_predict, temperature=args.temp, top_k=args.top_k,
            top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
            repeat_last_n=args.repeat_last_n, seed=seed, stop=args.stop, stream=True,
            parse_special=True, progress=progress)  # parameters are checked here, before anything is computed
        if args.seed == -1 and args.temp != 0:
            _err(f"seed = {seed}")
        out = _Out()
        if args.display_prompt and progress is None:
            out.write(shown)
        first_piece = True
        for piece in stream:
            if first_piece:  # the progress line (a terminal) is erased, then the prompt shown
                _clear_progress(progress)
                if args.display_prompt and progress is not None:
                    out.write(shown)
                first_piece = False
            out.write(piece)
        if first_piece:
            _clear_progress(progress)
            if args.display_prompt and progress is not None:
                out.write(shown)
        if sys.stdout.isatty():
            out.write("\n")
        c = stream.completion
        t = c.timings
        if args.prompt_cache:
            n = engine.save_state(args.prompt_cache)
            _err(f"prompt cache  = {args.prompt_cache}: {n} bytes, {engine.n_past} tokens "
                 f"({t['prompt_cached_tokens']} of the prompt reused)")
        kv = engine.compression_stats()
        _err(f"load time     = {t['load_ms']:10.2f} ms")
        _err(f"prompt eval   = {t['prompt_ms']:10.2f} ms / {c.usage['prompt_tokens']:5d} tokens "
             f"({t['prompt_tokens_per_s']:8.2f} tokens/s)")
        _err(f"generation    = {t['generate_ms']:10.2f} ms / {c.usage['completion_tokens']:5d} tokens "
             f"({t['tokens_per_s']:8.2f} tokens/s)")
        _err(f"KV cache      = {kv.get('mode')}: {kv.get('bytes', 0)} bytes ({_mib(kv.get('bytes', 0))}) "
             f"for {kv.get('n_tokens', 0)} tokens, {float(kv.get('bits_per_entry', 0.0)):.2f} bits per entry")
        _err(f"finish reason = {c.finish_reason}")
        if args.stats:
            for line in stats_lines(kv):
                _err(line)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: exit status 2
    warnings.showwarning = _show_warning
    try:
        return run(args)
    except KeyboardInterrupt:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (CliError, ValueError, OSError, ImportError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
