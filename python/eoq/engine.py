"""The Python Engine: a thin, Pythonic layer over eoq._core.Engine.

The C++ core evaluates tokens (prefill and decode are the same `eval` call, GIL released) and
samples; this module owns the generation loop so that it can stream text, never split a UTF-8
character, and hold back text that may turn out to be the start of a stop string.
"""
from __future__ import annotations

import codecs
import math
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import EoqError

__all__ = ["Engine", "Sequence", "Completion", "CompletionStream", "StreamItem", "TokenLogprob", "TopLogprob"]


def _error(code: str, message: str) -> EoqError:
    e = EoqError(message)
    e.code = code
    return e


@dataclass
class TopLogprob:
    """One alternative at a generated position: token id, its text piece (invalid UTF-8 as
    U+FFFD), its raw bytes, and its log-probability (natural log)."""

    id: int
    token: str
    bytes: bytes
    logprob: float


@dataclass
class TokenLogprob:
    """The sampled token at one generated position and its log-probability, plus the
    `logprobs` most likely tokens at that position (highest first, ties by lower id).

    The distribution is the log-softmax of the model's logits after the logits processors,
    before the repeat penalty, temperature and top-k/top-p/min-p cuts (what OpenAI reports, and
    what llama-cpp-python reports): it does not depend on the sampling settings."""

    id: int
    token: str
    bytes: bytes
    logprob: float
    top_logprobs: List[TopLogprob] = field(default_factory=list)


@dataclass
class StreamItem:
    """One item of generate(stream=True, stream_items=True): a sampled token (tokens=[id],
    logprobs=[its TokenLogprob] when logprobs was asked for) and the text released with it,
    which may be "" (part of a UTF-8 character, or held back as the possible start of a stop
    string) or several tokens' worth. An item with tokens=[] carries text only (the echoed
    prompt, or the held-back text released at the end). The tokens that complete a stop string
    are reported, though their text is not (as in Completion.tokens)."""

    text: str
    tokens: List[int] = field(default_factory=list)
    logprobs: Optional[List[TokenLogprob]] = None


@dataclass
class Completion:
    """Result of Engine.generate / Engine.chat.

    text: the generated text (prompt included when echo=True; the stop string excluded).
    tokens: the generated token ids (the end-of-generation token excluded; every sampled token
        included, even the ones that completed a stop string).
    finish_reason: "stop" (end-of-generation token or stop string) or "length" (max_tokens or
        the context is full).
    usage: prompt_tokens, completion_tokens, total_tokens.
    timings: load_ms, prompt_ms, prompt_tokens_per_s, generate_ms, tokens_per_s (plus
        prompt_cached_tokens: prompt tokens reused from the previous call's cache).
    seed: the sampler's seed (the random one actually used when none was given).
    logprobs: one TokenLogprob per generated token (aligned with tokens) when generate was
        called with logprobs=N, else None.
    """

    text: str
    tokens: List[int]
    finish_reason: str
    usage: Dict[str, int] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    seed: int = 0
    logprobs: Optional[List[TokenLogprob]] = None


class CompletionStream:
    """Iterator of text pieces from Engine.generate(stream=True) (StreamItem objects instead
    with stream_items=True).

    `.completion` holds the final Completion once the iterator is exhausted (None before).
    An unfinished stream holds its sequence: a generate/reset/eval_logits call on the same
    sequence from another thread waits until the stream is exhausted or closed; the same call
    from the thread that made the stream takes the sequence over (the stream then raises
    EoqError "interrupted" on its next step). close() ends the stream and frees its sequence
    only (streams on other sequences go on).
    """

    def __init__(self, gen: Iterator[str], on_done=None):
        self._gen = gen
        self._on_done = on_done  # frees the sequence, once
        self.completion: Optional[Completion] = None

    def __iter__(self) -> "CompletionStream":
        return self

    def __next__(self) -> Union[str, "StreamItem"]:
        try:
            return next(self._gen)
        except StopIteration as stop:
            if stop.value is not None:
                self.completion = stop.value
            self._done()
            raise StopIteration from None
        except BaseException:
            self._done()
            raise

    def _done(self) -> None:
        f, self._on_done = self._on_done, None
        if f is not None:
            f()

    def close(self) -> None:
        try:
            self._gen.close()
        finally:
            self._done()

    def __del__(self) -> None:  # an abandoned stream must not hold its sequence forever
        try:
            self._done()
        except Exception:
            pass


# --- logprobs and logits processors (generate's logprobs= and logits_processor=) -----------

# A logits processor: fn(tokens, logits) called before every sampling step with the token ids so
# far (prompt + generated, a fresh list) and the float32 [n_vocab] logits of the next position
# (a writable copy). It edits logits in place and returns None, or returns a new [n_vocab]
# array. -inf bans a token (at least one token must stay finite).
LogitsProcessor = Callable[[List[int], "np.ndarray"], Optional["np.ndarray"]]


def _check_logprobs(logprobs: Any) -> Optional[int]:
    if logprobs is None:
        return None
    if not _is_int(logprobs) or logprobs < 0:
        raise _error("invalid_arg", f"logprobs must be None (off) or an integer >= 0 (the number "
                                    f"of alternatives per token), got {logprobs!r}")
    return logprobs


def _check_processors(processors: Any) -> List[LogitsProcessor]:
    if processors is None:
        return []
    if callable(processors):
        return [processors]
    try:
        fns = list(processors)
    except TypeError:
        raise _error("invalid_arg", f"logits_processor must be a callable or a list of callables, "
                                    f"got {processors!r}") from None
    for f in fns:
        if not callable(f):
            raise _error("invalid_arg", f"logits_processor must be a callable or a list of "
                                        f"callables, got {f!r} in the list")
    return fns


def _apply_processors(fns: List[LogitsProcessor], tokens: List[int], logits):
    """logits after every processor in order (shape and finiteness checked)."""
    for f in fns:
        out = f(list(tokens), logits)
        if out is not None:
            out = np.ascontiguousarray(out, dtype=np.float32)
            if out.shape != logits.shape:
                raise _error("invalid_arg", f"a logits processor returned shape {out.shape}, "
                                            f"expected {logits.shape}")
            logits = out
    if not np.isfinite(logits).any():
        raise _error("invalid_arg", "the logits processors left no token allowed (all logits -inf or nan)")
    return logits


def _piece(core, token: int):
    raw = core.token_to_piece(token)
    return raw.decode("utf-8", errors="replace"), raw


def _token_logprob(core, logits, token: int, n_top: int) -> TokenLogprob:
    """The sampled token's log-softmax (float64 accumulation) and the n_top most likely tokens,
    highest first with ties broken by the lower id (the order the greedy sampler uses)."""
    x = logits.astype(np.float64)
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    text, raw = _piece(core, token)
    top: List[TopLogprob] = []
    if n_top > 0:
        n_top = min(n_top, x.shape[0])
        idx = np.argpartition(-x, n_top - 1)[:n_top] if n_top < x.shape[0] else np.arange(x.shape[0])
        # The partition may cut among equal logits: widen to every token tied with the cut.
        cut = x[idx].min()
        if cut == -math.inf:  # fewer allowed tokens than n_top: the banned ones by lowest id
            idx = np.concatenate([np.nonzero(x > cut)[0], np.nonzero(x == cut)[0][:n_top]])
        else:
            idx = np.nonzero(x >= cut)[0]
        order = sorted(idx.tolist(), key=lambda i: (-x[i], i))[:n_top]
        for i in order:
            t, r = _piece(core, i)
            top.append(TopLogprob(id=int(i), token=t, bytes=r, logprob=float(x[i] - lse)))
    return TokenLogprob(id=int(token), token=text, bytes=raw, logprob=float(x[token] - lse),
                        top_logprobs=top)


# --- parameter checks (clear messages before anything reaches C++) -------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_float(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _error("invalid_arg", f"{name} must be a number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise _error("invalid_arg", f"{name} must be finite, got {x}")
    return x


def _check_sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed) -> int:
    t = _check_float("temperature", temperature)
    if t < 0:
        raise _error("invalid_arg", f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not _is_int(top_k) or top_k < 0:
        raise _error("invalid_arg", f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    p = _check_float("top_p", top_p)
    if not 0.0 < p <= 1.0:
        raise _error("invalid_arg", f"top_p must be in (0, 1], got {top_p}")
    mp = _check_float("min_p", min_p)
    if not 0.0 <= mp <= 1.0:
        raise _error("invalid_arg", f"min_p must be in [0, 1], got {min_p}")
    rp = _check_float("repeat_penalty", repeat_penalty)
    if rp <= 0:
        raise _error("invalid_arg", f"repeat_penalty must be > 0 (1 = off), got {repeat_penalty}")
    if not _is_int(repeat_last_n) or repeat_last_n < -1:
        raise _error("invalid_arg",
                     f"repeat_last_n must be an integer >= -1 (-1 = all), got {repeat_last_n!r}")
    if seed is None:
        return -1
    if not _is_int(seed) or seed < -1 or seed >= 2**63:
        raise _error("invalid_arg", f"seed must be None, -1 (random) or an integer in [0, 2**63), "
                                    f"got {seed!r}")
    return seed


def _check_max_tokens(max_tokens: Any) -> Optional[int]:
    if max_tokens is None:
        return None
    if not _is_int(max_tokens) or max_tokens < -1:
        raise _error("invalid_arg",
                     f"max_tokens must be an integer >= 0, or -1/None for no limit, got {max_tokens!r}")
    return None if max_tokens == -1 else max_tokens


def _check_stop(stop: Any) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    try:
        stops = list(stop)
    except TypeError:
        raise _error("invalid_arg", f"stop must be a string or a list of strings, got {stop!r}") from None
    for s in stops:
        if not isinstance(s, str):
            raise _error("invalid_arg", f"stop must be a string or a list of strings, got {s!r}")
    return [s for s in stops if s]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _split_stop(text: str, stops: Sequence[str], final: bool = False):
    """(release, keep, hit): text up to the earliest stop string (hit=True, the rest dropped);
    otherwise everything but a suffix that may still grow into a stop string (all if final)."""
    if stops:
        cut = -1
        for s in stops:
            i = text.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            return text[:cut], "", True
    if final or not stops:
        return text, "", False
    h = _held_back(text, stops)
    return text[:len(text) - h], text[len(text) - h:], False


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_device(device: str) -> str:
    """The device string, after a one-line error where CUDA is asked for and cannot run here.
    For CUDA, points the backend's run-time cuBLAS loader at the pip wheel's library when the
    `nvidia-cublas` package is installed and EOQ_CUBLAS is unset."""
    d = device.strip().lower()
    if d == "cpu":
        return d
    if d == "cuda" or d == "gpu" or d.startswith("cuda:"):
        index = 0
        if d.startswith("cuda:"):
            try:
                index = int(d[5:])
            except ValueError:
                raise _error("invalid_arg", f"device {device!r} is not one of cpu, cuda, cuda:N") from None
        reason = _core.cuda.unavailable_reason(index)
        if reason:
            raise _error("unsupported", f"device {device!r} is not available: {reason}")
        if not os.environ.get("EOQ_CUBLAS"):
            lib = _pip_cublas()
            if lib:
                os.environ["EOQ_CUBLAS"] = lib
        return d
    raise _error("invalid_arg", f"device {device!r} is not one of cpu, cuda, cuda:N")


def _pip_cublas() -> Optional[str]:
    """libcublas from an installed nvidia-cublas wheel (as PyTorch installs it), or None."""
    import glob
    import site

    roots = list(sys.path) + site.getsitepackages() if hasattr(site, "getsitepackages") else list(sys.path)
    for root in roots:
        for pat in ("nvidia/cublas/lib/libcublas.so*", "nvidia/cu13/lib/libcublas.so*", "nvidia/cu12/lib/libcublas.so*"):
            hits = sorted(p for p in glob.glob(os.path.join(root, pat)) if "Lt" not in os.path.basename(p))
            if hits:
                return hits[-1]
    return None


class _SeqState:
    """Python-side state of one sequence, shared by the Engine (sequence 0) and its Sequence
    objects: the lock of its eval/sample steps, the epoch that stale streams check, and who holds
    it (an unfinished stream, by the thread that made it)."""

    def __init__(self):
        self.lock = threading.RLock()  # one eval/sample at a time (compute runs without the GIL)
        self.cond = threading.Condition(threading.Lock())  # guards holder; waits for it
        self.holder: Optional[int] = None  # the thread whose stream holds the sequence
        self.epoch = 0  # bumped whenever the sequence is taken over; stale streams notice

    def acquire(self) -> int:
        """Takes the sequence for a call of this thread: waits while another thread's stream
        holds it (serialized), takes it over from this thread's own unfinished stream. Returns
        the new epoch."""
        me = threading.get_ident()
        with self.cond:
            while self.holder is not None and self.holder != me:
                self.cond.wait()
            self.holder = me
            self.epoch += 1
            return self.epoch

    def release(self, epoch: int) -> None:
        with self.cond:
            if self.epoch == epoch and self.holder is not None:
                self.holder = None
                self.cond.notify_all()


def _kv_cache_bytes(mode: str, options: Dict[str, Any], n_layer: int, n_kv: int, d: int, n_ctx: int):
    """(bytes of one cache holding n_ctx tokens, basis) for estimate_memory."""
    import numpy as np

    if mode in ("f16", "f32"):
        return 2 * n_layer * n_kv * n_ctx * d * (2 if mode == "f16" else 4), "exact, allocated up front"
    params = dict(options, mode=mode)
    probe = _core.KVCacheTester(params, 1, 1, d, 8, 1)
    p = probe.stats().get("params", {})
    if mode in ("q8_0", "q4_0"):
        n = 64
        t = _core.KVCacheTester(params, n_layer, n_kv, d, n, 1)
        rng = np.random.default_rng(0)
        for il in range(n_layer):
            t.append(il, rng.standard_normal((n, n_kv, d), dtype=np.float32),
                     rng.standard_normal((n, n_kv, d), dtype=np.float32))
        return t.bytes * n_ctx // n, "per-token blocks"
    block, ring, sinks = int(p["block"]), int(p["ring"]), int(p["sinks"])
    cap = max(int(p.get("rank_cap", 0)), int(p.get("v_rank_cap", 0)))
    n1 = sinks + ring + block  # one block sealed
    n2 = n1 + block            # two
    t = _core.KVCacheTester(params, n_layer, n_kv, d, n2, 1)
    rng = np.random.default_rng(0)
    r = min(d, cap + 2)

    def rows(n):  # strong rank-r structure plus noise: every block reaches the rank cap
        basis = rng.standard_normal((n_kv, r, d)).astype(np.float32)
        coef = 8.0 * rng.standard_normal((n, n_kv, r)).astype(np.float32)
        return (np.einsum("tgr,grd->tgd", coef, basis) + rng.standard_normal((n, n_kv, d))).astype(np.float32)

    b = []
    for n in (n1, block):
        for il in range(n_layer):
            t.append(il, rows(n), rows(n))
        b.append(t.bytes)
    per_block = b[1] - b[0]
    exact_rows = sinks + ring
    per_exact = (b[0] - per_block) / exact_rows if exact_rows else 0.0
    rr = n_ctx - sinks
    sealed = (rr - ring) // block if rr >= ring + block else 0
    n_exact = n_ctx - sealed * block
    return int(sealed * per_block + n_exact * per_exact), "upper bound: every block at the rank cap"


def _estimate_memory(model_path, n_ctx, kv, kv_options, n_batch, n_seq, device) -> Dict[str, Any]:
    if not _is_int(n_ctx) or n_ctx < 0:
        raise _error("invalid_arg", f"n_ctx must be an integer >= 0 (0 = the model's), got {n_ctx!r}")
    if not _is_int(n_seq) or not 1 <= n_seq <= 256:
        raise _error("invalid_arg", f"n_seq must be an integer in [1, 256], got {n_seq!r}")
    if not _is_int(n_batch) or n_batch < 1:
        raise _error("invalid_arg", f"n_batch must be an integer >= 1, got {n_batch!r}")
    path = Path(os.fspath(model_path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    device = _check_device(device) if device != "cpu" else "cpu"
    f = _core.GGUFFile(str(path))
    md = f.metadata
    a = md.get("general.architecture", "")
    if a != "llama":
        raise _error("unsupported", f"architecture {a!r} is not supported (eoq runs 'llama')")
    get = lambda k, dflt=None: md.get(f"{a}.{k}", dflt)  # noqa: E731
    n_embd, n_layer, n_head = int(get("embedding_length")), int(get("block_count")), int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", n_head))
    d = int(get("attention.key_length", n_embd // n_head))
    n_ff, n_ctx_train = int(get("feed_forward_length")), int(get("context_length"))
    tensors = f.tensors
    n_vocab = next(int(t["shape"][1]) for t in tensors if t["name"] == "token_embd.weight") \
        if any("shape" in t for t in tensors) else 0
    weights = sum(int(t["nbytes"]) for t in tensors)
    ctx = n_ctx or n_ctx_train
    kv_bytes, basis = _kv_cache_bytes(kv, dict(kv_options), n_layer, n_kv, d, ctx)
    kv_bytes *= n_seq
    q_dim, kv_dim = n_head * d, n_kv * d
    batch = min(n_batch, ctx) + n_seq - 1
    scratch = batch * 4 * (2 * n_embd + 2 * q_dim + 2 * kv_dim + 2 * n_ff) + n_seq * n_vocab * 4
    on_cpu = device == "cpu"
    if on_cpu:
        try:
            free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 0
    else:
        free = int(_core.cuda.free_memory(device)) if hasattr(_core.cuda, "free_memory") else 0
    total = (0 if on_cpu else weights) + kv_bytes + scratch  # CPU weights stay mapped from the file
    entries = 2 * n_layer * n_kv * d * ctx * n_seq
    return {"weights": weights, "kv_bytes": kv_bytes, "scratch": scratch, "total": total, "free": free,
            "fits": free == 0 or total <= free, "n_ctx": ctx, "n_ctx_train": n_ctx_train, "kv": kv,
            "kv_basis": basis, "kv_bits_per_entry": kv_bytes * 8 / entries if entries else 0.0,
            "device": device, "n_seq": n_seq}


class Engine:
    """A loaded GGUF model with its KV cache(s).

    Engine(model_path=None, n_ctx=0, n_threads=None, device="cpu", kv="f16", n_batch=512,
           verbose=False, prefix_cache=True, kv_options=None, n_seq=1)

    n_seq: sequences held at once, each with its own cache of n_ctx tokens (eng.sequence(i),
    0 <= i < n_seq). Generations on different sequences running in different threads are
    decoded together: one forward step per token for all of them (each weight matrix read once),
    long prompts cut into chunks of n_batch tokens that interleave with the others' steps. The
    Engine's own generate/chat/reset/eval_logits/compression_stats act on sequence 0.

    model_path None: the default model (SmolLM2-135M-Instruct, fetched once, see eoq.models).
    n_ctx 0: the model's training context. n_threads None: the CPUs this process may use.
    device: "cpu", "cuda" or "cuda:N" (the weights, the cache and the compute on that GPU; the
    GPU holds the f16, q8_0, q4_0 and turbo caches for now). Where CUDA cannot run, a one-line EoqError says why.
    prefix_cache: a prompt reuses the longest common prefix with what its sequence holds and
    evaluates only the rest (exact caches cut anywhere; compressed caches at their last kept
    block boundary, giving the same codes as a fresh run); False: every call starts empty.
    kv: the KV cache mode (f16, f32, q8_0, q4_0, turbo2/3/4, eoq2/3/4, eoq: the measured preset); kv_options: its knobs
    (k_bits, v_bits, rank_cap, v_rank_cap, factor_bits, shrink, block, ring, sinks,
    boundary_layers, boundary_bits, norm_correction, norm_bits, tail_bits, v_tail_bits, window, k_adapt,
    exact_scores, seed), see ../shared/spec/kv-compression.md and README (KV cache modes).
    """

    def __init__(self, model_path: Union[str, os.PathLike, None] = None, n_ctx: int = 0,
                 n_threads: Optional[int] = None, device: str = "cpu", kv: str = "f16",
                 n_batch: int = 512, verbose: bool = False, prefix_cache: bool = True,
                 kv_options: Optional[Dict[str, Any]] = None, n_seq: int = 1):
        self._core = None
        self._st = _SeqState()  # sequence 0's
        self._seqs: Dict[int, "Sequence"] = {}
        if not isinstance(device, str):
            raise _error("invalid_arg", f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
        device = _check_device(device)
        if not _is_int(n_ctx) or n_ctx < 0:
            raise _error("invalid_arg", f"n_ctx must be an integer >= 0 (0 = the model's), got {n_ctx!r}")
        if n_threads is None:
            n_threads = _default_threads()
        if not _is_int(n_threads) or n_threads < 1:
            raise _error("invalid_arg", f"n_threads must be an integer >= 1, got {n_threads!r}")
        if not _is_int(n_batch) or n_batch < 1:
            raise _error("invalid_arg", f"n_batch must be an integer >= 1, got {n_batch!r}")
        if not _is_int(n_seq) or not 1 <= n_seq <= 256:
            raise _error("invalid_arg", f"n_seq must be an integer in [1, 256], got {n_seq!r}")
        if not isinstance(kv, str):
            raise _error("invalid_arg", f"kv must be a string such as 'f16', got {kv!r}")
        if kv_options is not None and not isinstance(kv_options, dict):
            raise _error("invalid_arg", f"kv_options must be a dict, got {kv_options!r}")
        if model_path is None:
            from .models import default_model_path

            model_path = default_model_path(download=True)
        path = Path(os.fspath(model_path)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model file not found: {path}")
        if path.is_dir():
            raise IsADirectoryError(f"model path is a folder, not a GGUF file: {path}")
        self.model_path = str(path)
        self.kv = kv
        self.verbose = bool(verbose)
        self.prefix_cache = bool(prefix_cache)
        t0 = time.perf_counter()
        self.kv_options = dict(kv_options or {})
        self._core = _core.Engine(self.model_path, n_ctx=n_ctx, n_threads=n_threads, kv=kv,
                                  n_batch=n_batch, kv_options=self.kv_options, device=device,
                                  n_seq=n_seq)
        self.device = self._core.device
        self.load_ms = (time.perf_counter() - t0) * 1e3
        if self._core.n_ctx > self._core.n_ctx_train:
            import warnings

            warnings.warn(f"n_ctx {self._core.n_ctx} exceeds the model's training context "
                          f"{self._core.n_ctx_train}: positions past it are outside what the model learned",
                          RuntimeWarning, stacklevel=2)
        if self.verbose:
            info = self._core.kv_info()
            print(f"eoq: loaded {self.name or path.name} ({self.arch}) in {self.load_ms:.0f} ms: "
                  f"n_ctx={self.n_ctx}, n_vocab={self.n_vocab}, on {self._core.backend}, "
                  f"kv={info.get('mode')}", file=sys.stderr)

    # --- lifetime -------------------------------------------------------------------------

    # Sequence 0's state (a Sequence object has its own): see _SeqState.
    _lock = property(lambda self: self._st.lock)
    _epoch = property(lambda self: self._st.epoch)

    def sequence(self, i: int) -> "Sequence":
        """Sequence i (0 <= i < n_seq): generate/chat/reset/tokenize/eval_logits/... on its own
        cache, with the same signatures as the Engine's. sequence(0) is the Engine's own."""
        if not _is_int(i) or not 0 <= i < self.core.n_seq:
            raise _error("invalid_arg", f"sequence index must be an integer in [0, {self.core.n_seq}), got {i!r}")
        seq = self._seqs.get(i)
        if seq is None:
            seq = self._seqs[i] = Sequence(self, i)
        return seq

    n_seq = property(lambda self: self.core.n_seq, doc="Sequences held at once (Engine(n_seq=...)).")

    @staticmethod
    def estimate_memory(model_path: Union[str, os.PathLike], n_ctx: int = 0, kv: str = "f16",
                        kv_options: Optional[Dict[str, Any]] = None, n_batch: int = 512,
                        n_seq: int = 1, device: str = "cpu") -> Dict[str, Any]:
        """Bytes the model would take, before loading it (only the file's header is read):
        weights, the KV cache(s) fully counted at n_ctx tokens, the scratch of the largest step,
        and their total against the device's memory ('fits', 'free'). f16/f32 caches: what Engine
        allocates; q8_0/q4_0: a fixed size per token; turbo/eoq: measured by sealing two blocks of
        every stream of the model's shape with rows whose rank reaches the rank cap, an upper
        bound (real blocks often keep fewer components). 'kv_basis' says which applies."""
        return _estimate_memory(model_path, n_ctx, kv, kv_options or {}, n_batch, n_seq, device)

    def close(self) -> None:
        """Free the model and the caches. The Engine and its sequences cannot be used afterwards."""
        states = [self._st] + [s._st for s in self._seqs.values()]
        for st in states:
            st.lock.acquire()  # waits for steps running in other threads
        try:
            for st in states:
                st.epoch += 1
            self._core = None
            self._seqs = {}
        finally:
            for st in reversed(states):
                st.lock.release()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def core(self):
        """The underlying eoq._core.Engine."""
        if self._core is None:
            raise _error("invalid_arg", "this Engine has been closed")
        return self._core

    def __repr__(self) -> str:
        if self._core is None:
            return "<eoq.Engine (closed)>"
        return f"<eoq.Engine {Path(self.model_path).name} n_ctx={self.n_ctx} kv={self.kv!r}>"

    # --- model facts ----------------------------------------------------------------------

    n_ctx = property(lambda self: self.core.n_ctx, doc="Context size (tokens) of the cache.")
    n_ctx_train = property(lambda self: self.core.n_ctx_train, doc="The model's training context.")
    n_vocab = property(lambda self: self.core.n_vocab)
    n_threads = property(lambda self: self.core.n_threads)
    backend = property(lambda self: self.core.backend,
                       doc="Where the model runs, e.g. 'cpu (avx512vnni, 2 threads)' or 'cuda:0 (NVIDIA H200, ...)'.")
    weight_bytes_per_token = property(lambda self: self.core.weight_bytes_per_token,
                                      doc="Weight bytes one decode step reads (every matrix once, one embedding row).")
    n_past = property(lambda self: self.core.n_past, doc="Tokens currently in the cache.")
    bos = property(lambda self: self.core.bos)
    eos = property(lambda self: self.core.eos)
    arch = property(lambda self: self.core.arch)
    name = property(lambda self: self.core.name)
    chat_template = property(lambda self: self.core.chat_template)

    def metadata(self, key: str) -> Any:
        """A GGUF metadata value (str, int, float, bool or list), or None when absent."""
        return self.core.metadata(key)

    # --- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        """Token ids of text. add_special: BOS when the model wants one. parse_special: treat
        special-token texts such as <|im_start|> as the special tokens."""
        if not isinstance(text, str):
            raise _error("invalid_arg", f"text must be a str, got {type(text).__name__}")
        return list(self.core.tokenize(text, add_special=bool(add_special),
                                       parse_special=bool(parse_special)))

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of token ids (invalid UTF-8 replaced by U+FFFD)."""
        ids = self._check_tokens(ids, "ids", allow_empty=True)
        return self.core.detokenize(ids, special=bool(special)).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.core.token_text(token).decode("utf-8", errors="replace")

    def _check_tokens(self, ids: Any, what: str, allow_empty: bool = False) -> List[int]:
        try:
            ids = list(ids)
        except TypeError:
            raise _error("invalid_arg", f"{what} must be a list of token ids") from None
        n_vocab = self.core.n_vocab
        for t in ids:
            if not _is_int(t) and not (hasattr(t, "__index__") and not isinstance(t, (bool, float))):
                raise _error("invalid_arg", f"{what} must contain integers, got {t!r}")
            if not 0 <= int(t) < n_vocab:
                raise _error("invalid_arg", f"token id {int(t)} is out of range [0, {n_vocab})")
        if not ids and not allow_empty:
            raise _error("invalid_arg", f"{what} is empty: nothing to evaluate")
        return [int(t) for t in ids]

    # --- cache + logits -------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache (waits while another thread's stream holds the sequence)."""
        epoch = self._st.acquire()
        try:
            with self._lock:
                self.core.reset()
        finally:
            self._st.release(epoch)

    @property
    def logits(self):
        """Logits (np.float32 [n_vocab]) of the last evaluated position."""
        with self._lock:
            return self.core.logits()

    def eval_logits(self, tokens: Sequence[int]):
        """Logits (np.float32 [n, n_vocab]) of every position of tokens, evaluated from an empty
        cache (row i predicts token i+1): the input to perplexity and KL divergence."""
        tokens = self._check_tokens(tokens, "tokens")
        if len(tokens) > self.core.n_ctx:
            raise _error("context_full", f"{len(tokens)} tokens do not fit in the context "
                                         f"of {self.core.n_ctx}")
        epoch = self._st.acquire()
        try:
            with self._lock:
                self.core.reset()
                self.core.eval(tokens, all_logits=True)
                return self.core.all_logits()
        finally:
            self._st.release(epoch)

    def save_state(self, path: Union[str, os.PathLike]) -> int:
        """Save this sequence (tokens, last logits, KV cache) to a state file; returns its size
        in bytes. A versioned, checksummed format tied to the model and the cache configuration
        (engine/state_file.h). f16/f32 caches today; compressed caches raise EoqError
        "unsupported" until their serializer lands."""
        epoch = self._st.acquire()
        try:
            with self._lock:
                return int(self.core.save_state(os.fspath(path)))
        finally:
            self._st.release(epoch)

    def load_state(self, path: Union[str, os.PathLike]) -> None:
        """Replace this sequence's contents with a state file written by save_state for the same
        model and cache configuration. The file is validated first (an EoqError "format"/"io" for
        a bad one, which leaves the sequence empty); generation then continues from it, a later
        prompt reusing its tokens as a prefix."""
        epoch = self._st.acquire()
        try:
            with self._lock:
                self.core.load_state(os.fspath(path))
        finally:
            self._st.release(epoch)

    def compression_stats(self) -> Dict[str, Any]:
        """KV cache statistics as plain data: mode, n_tokens, bytes, bits_per_entry, and for the
        compressed modes per layer/head/K-V ranks, gains, block errors, bytes by kind, sealing
        time, and whole-cache summaries (spec section 8)."""
        with self._lock:
            return json.loads(self.core.compression_stats_json())

    # --- chat -----------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Dict[str, Any]],
                            add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render the model's chat template (GGUF tokenizer.chat_template; ChatML if it has
        none) in a Jinja2 sandbox. Raises eoq.chat.ChatTemplateError (a ValueError)."""
        from .chat import render_chat_template  # jinja2 is imported only when needed

        return render_chat_template(self.core.chat_template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    bos_token=self._special_text(self.core.bos),
                                    eos_token=self._special_text(self.core.eos), **extra)

    def _special_text(self, token: int) -> str:
        if token is None or token < 0 or token >= self.core.n_vocab:
            return ""
        return self.token_text(token)

    def chat_tokens(self, messages: Sequence[Dict[str, Any]], **extra: Any) -> List[int]:
        """Prompt tokens for messages: the rendered template, special tokens parsed, and a BOS
        only when the model wants one and the template did not already write it."""
        text = self.apply_chat_template(messages, add_generation_prompt=True, **extra)
        bos_text = self._special_text(self.core.bos)
        add_bos = bool(self.core.add_bos) and not (bos_text and text.startswith(bos_text))
        return self.tokenize(text, add_special=add_bos, parse_special=True)

    def chat(self, messages: Sequence[Dict[str, Any]], **generate_kwargs: Any):
        """generate() on the chat-formatted messages; returns what generate returns."""
        for k in ("add_special", "parse_special"):
            if k in generate_kwargs:
                raise TypeError(f"chat() does not take {k}: the template decides")
        return self.generate(self.chat_tokens(messages), **generate_kwargs)

    # --- generation -----------------------------------------------------------------------

    def generate(self, prompt: Union[str, Sequence[int]], max_tokens: Optional[int] = 128,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                 stream: bool = False, add_special: bool = True, parse_special: bool = False,
                 echo: bool = False, progress=None, logprobs: Optional[int] = None,
                 logits_processor: Union[LogitsProcessor, Sequence[LogitsProcessor], None] = None,
                 stream_items: bool = False) -> Union[Completion, CompletionStream]:
        """Complete prompt (text, or token ids used as given).

        max_tokens -1/None: until an end-of-generation token or the context is full.
        temperature 0: greedy. seed None/-1: random (reported in Completion.seed).
        stop: string(s) that end the generation; they are not included in the text.
        stream=True: returns a CompletionStream of text pieces (never a split UTF-8 character;
        text that may begin a stop string is held back until it is known not to); its
        .completion is set when it is exhausted.
        progress: progress(done, total) after each chunk of n_batch prompt tokens of a prompt
        longer than one chunk; returning False stops there (EoqError "cancelled"). Ctrl-C
        stops a long prompt within one chunk too; either way the sequence keeps the chunks done.
        logprobs None: off; N >= 0: Completion.logprobs gets each generated token's
        log-probability and its N most likely alternatives (see TokenLogprob).
        logits_processor: a callable or a list of them, applied in order to the logits before
        every sampling step (see LogitsProcessor), e.g. to ban tokens or to constrain output.
        stream_items=True (with stream=True): the stream yields a StreamItem per sampled token
        (its id, logprobs and the text released with it) instead of text pieces.
        """
        seed = _check_sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        max_tokens = _check_max_tokens(max_tokens)
        stops = _check_stop(stop)
        n_logprobs = _check_logprobs(logprobs)
        processors = _check_processors(logits_processor)
        core = self.core
        if isinstance(prompt, str):
            prompt_text: Optional[str] = prompt
            tokens = self.tokenize(prompt, add_special=add_special, parse_special=parse_special)
            if not tokens:
                raise _error("invalid_arg", "the prompt is empty (and the model adds no BOS token)")
        elif isinstance(prompt, (bytes, bytearray)):
            raise _error("invalid_arg", "prompt must be a str or a list of token ids, not bytes")
        else:
            prompt_text = None
            tokens = self._check_tokens(prompt, "prompt")
        if len(tokens) >= core.n_ctx:
            raise _error("context_full",
                         f"the prompt has {len(tokens)} tokens: it does not fit in the context of "
                         f"{core.n_ctx} tokens with room to generate (use a larger n_ctx)")
        sampler = _core.Sampler(temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                                min_p=float(min_p), repeat_penalty=float(repeat_penalty),
                                repeat_last_n=repeat_last_n, seed=seed)
        st, core_seq = self._st, core
        epoch = st.acquire()  # serialized with other threads' calls on this sequence

        def done():
            with st.cond:
                current = st.epoch == epoch  # not taken over by a later call of this thread
            if current:
                core_seq.set_active(False)
            st.release(epoch)

        core.set_active(True)  # the scheduler waits briefly for this sequence's next token
        gen = self._run(epoch, tokens, prompt_text, max_tokens, sampler, repeat_last_n,
                        stops, echo, progress, n_logprobs, processors, bool(stream and stream_items))
        stream_obj = CompletionStream(gen, on_done=done)
        if stream:
            return stream_obj
        for _ in stream_obj:
            pass
        assert stream_obj.completion is not None
        return stream_obj.completion

    def _run(self, epoch: int, prompt: List[int], prompt_text: Optional[str],
             max_tokens: Optional[int], sampler, repeat_last_n: int, stops: List[str],
             echo: bool, progress=None, n_logprobs: Optional[int] = None,
             processors: Sequence[LogitsProcessor] = (), items: bool = False):
        """The generation loop (a generator: yields text pieces, or StreamItems when items is
        set, and returns the Completion). Time the caller spends between pieces is not counted
        in the timings."""
        core = self.core
        lock = self._lock

        def check_epoch():
            if self._epoch != epoch or self._core is not core:
                raise _error("invalid_arg", "this generation stream was interrupted by a later "
                                            "call on the same Engine (generate/reset/eval_logits/close)")

        with lock:
            check_epoch()
            # Prompt: evaluate only what the cache does not already hold (the longest common
            # prefix, cut where the cache can cut: Context::reuse_prefix).
            if self.prefix_cache:
                n_reuse = core.reuse_prefix(prompt)
            else:
                core.reset()
                n_reuse = 0
            t0 = time.perf_counter()
            # In chunks of n_batch; Ctrl-C (KeyboardInterrupt) or progress returning False stop
            # it after a chunk, the sequence then holding the chunks done.
            if not core.eval(prompt[n_reuse:], progress=progress):
                raise _error("cancelled", f"the prompt was stopped by the progress callback after "
                                          f"{core.n_past} of {len(prompt)} tokens")
            prompt_s = time.perf_counter() - t0
            logits = core.logits()
            # Like llama.cpp, the repeat penalty also sees the prompt.
            history = prompt if repeat_last_n < 0 else prompt[len(prompt) - repeat_last_n:] \
                if repeat_last_n > 0 else []
            for t in history:
                sampler.accept(t)

        n_ctx = core.n_ctx
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out_tokens: List[int] = []
        out_logprobs: Optional[List[TokenLogprob]] = [] if n_logprobs is not None else None
        text_parts: List[str] = []
        pending = ""  # decoded text not yet released: it may be the start of a stop string
        finish = "length"
        gen_s = 0.0
        t_gen = time.perf_counter()

        if echo:
            head = prompt_text if prompt_text is not None else \
                core.detokenize(prompt, special=True).decode("utf-8", errors="replace")
            if head:
                text_parts.append(head)
                gen_s += time.perf_counter() - t_gen
                yield StreamItem(head) if items else head
                t_gen = time.perf_counter()

        stop_hit = False
        to_eval = None  # the last sampled token, evaluated after its text was handed out
        while max_tokens is None or len(out_tokens) < max_tokens:
            with lock:
                check_epoch()
                if to_eval is not None:
                    core.eval([to_eval])
                    logits = core.logits()
                if processors:
                    logits = _apply_processors(processors, prompt + out_tokens, logits)
                tok = int(sampler.sample(logits))
                sampler.accept(tok)
                if core.is_eog(tok):
                    finish = "stop"
                    break
                out_tokens.append(tok)
                lp = None
                if out_logprobs is not None:
                    lp = _token_logprob(core, logits, tok, n_logprobs)
                    out_logprobs.append(lp)
                pending += decoder.decode(core.token_to_piece(tok))
            release, pending, hit = _split_stop(pending, stops)
            if release:
                text_parts.append(release)
            if release or items:
                gen_s += time.perf_counter() - t_gen
                yield StreamItem(release, [tok], None if lp is None else [lp]) if items else release
                t_gen = time.perf_counter()
            if hit:
                finish, stop_hit = "stop", True
                break
            if len(prompt) + len(out_tokens) >= n_ctx:
                break  # the context is full: this token cannot be evaluated
            to_eval = tok

        if not stop_hit:
            # Bytes of an unfinished character become U+FFFD; release what was held back.
            pending += decoder.decode(b"", final=True)
            release, pending, hit = _split_stop(pending, stops, final=True)
            if hit:
                finish = "stop"
            if release:
                text_parts.append(release)
                gen_s += time.perf_counter() - t_gen
                yield StreamItem(release) if items else release
                t_gen = time.perf_counter()
        gen_s += time.perf_counter() - t_gen

        n_gen = len(out_tokens)
        n_eval = len(prompt) - n_reuse
        timings = {
            "load_ms": self.load_ms,
            "prompt_ms": prompt_s * 1e3,
            "prompt_tokens_per_s": n_eval / prompt_s if prompt_s > 0 else 0.0,
            "prompt_cached_tokens": n_reuse,
            "generate_ms": gen_s * 1e3,
            "tokens_per_s": n_gen / gen_s if gen_s > 0 and n_gen else 0.0,
        }
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n_gen,
                 "total_tokens": len(prompt) + n_gen}
        return Completion(text="".join(text_parts), tokens=out_tokens, finish_reason=finish,
                          usage=usage, timings=timings, seed=int(sampler.seed),
                          logprobs=out_logprobs)


class Sequence(Engine):
    """One sequence of an Engine (Engine.sequence(i)): the Engine's generate, chat, reset,
    tokenize, eval_logits, compression_stats, ... with the same signatures, on this sequence's
    own cache. A view: it loads nothing, shares the Engine's model, and is unusable once the
    Engine is closed. Threads generating on different sequences are batched together."""

    def __init__(self, engine: Engine, index: int):  # not Engine.__init__: nothing is loaded
        self._engine = engine
        self.index = index
        self._core_seq = engine.core.sequence(index)
        self._st = engine._st if index == 0 else _SeqState()
        self._seqs = {}
        for k in ("model_path", "kv", "verbose", "prefix_cache", "kv_options", "device", "load_ms"):
            setattr(self, k, getattr(engine, k))

    @property
    def _core(self):
        return None if self._engine._core is None else self._core_seq

    def sequence(self, i: int) -> "Sequence":
        return self._engine.sequence(i)

    def close(self) -> None:
        """A sequence is closed with its Engine (Engine.close)."""

    def __repr__(self) -> str:
        if self._engine._core is None:
            return f"<eoq.Sequence {self.index} (engine closed)>"
        return f"<eoq.Sequence {self.index} of {Path(self.model_path).name} n_past={self.n_past}>"
