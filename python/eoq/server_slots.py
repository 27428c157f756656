"""eoq-server's slots: where requests run, which slot a request gets, and the bounded queue.

A slot is one KV cache that one request at a time generates on. The functions at the top
(open_backends, cached_tokens, cuts_prefix, kv_info) are the only place that knows what a slot is
made of: with sessions (Engine(n_seq=N)) one Engine and its N sequences, eng.sequence(i), whose
generations the engine batches; on an Engine without them each slot is its own eoq.Engine (so
--parallel N loads the model N times). Nothing else in the server depends on which.

Threads: the event loop only picks slots and moves items; each generation runs in a worker
thread of SlotPool.executor (one per slot) that iterates the engine's stream and hands the
items to the loop. A request that is cancelled (client gone, server stopping) sets job.cancel;
the worker stops at the next token and closes the stream, which frees the slot.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .engine import Engine


def _has_sequences() -> bool:
    """Whether this Engine can hold several sequences on one model (Engine(n_seq=...))."""
    import inspect

    return "n_seq" in inspect.signature(Engine.__init__).parameters


def open_backends(model_path: Optional[str], n_slots: int, n_ctx: int, kv: str,
                  kv_options: Optional[Dict[str, Any]], device: str, n_threads: Optional[int],
                  n_batch: int) -> Tuple[Any, List[Any]]:
    """(model, backends): `model` answers model-wide questions (tokenize, chat template,
    n_ctx, name); backends[i] is what slot i generates with (Engine.generate's signature).
    With sessions (Engine(n_seq=N)): one model, slot i is eng.sequence(i), and the engine
    decodes the slots' tokens together. Without: every slot is its own Engine (the model loaded
    N times) and model is backends[0]."""
    kw = dict(n_ctx=n_ctx, n_threads=n_threads, device=device, kv=kv, n_batch=n_batch, kv_options=kv_options)
    if _has_sequences():
        eng = Engine(model_path, n_seq=n_slots, **kw)
        return eng, [eng.sequence(i) for i in range(n_slots)]
    backends = [Engine(model_path, **kw) for _ in range(n_slots)]
    return backends[0], backends


def cached_tokens(backend: Any) -> List[int]:
    """The tokens whose K/V the backend's cache holds (what a next prompt can reuse). Read only
    between generations (the slot is idle, so no thread is changing it)."""
    core = backend.core
    if hasattr(core, "cached_tokens"):  # sessions: the sequence's own record
        return list(core.cached_tokens())
    return list(getattr(backend, "_cached", []))


def cuts_prefix(backend: Any) -> bool:
    """Whether the backend reuses the longest common prefix (cutting its cache back to it), not
    only a cache that is wholly a prefix of the prompt."""
    return hasattr(backend.core, "reuse_prefix")


def cancel_kwargs(backend: Any, cancel: threading.Event) -> Dict[str, Any]:
    """generate() arguments that stop a long prompt's evaluation soon after cancel is set
    (sessions' progress callback, called after each chunk of n_batch prompt tokens); {} where
    generate has none (the generation then stops at its first token)."""
    import inspect

    if "progress" in inspect.signature(backend.generate).parameters:
        return {"progress": lambda done, total: not cancel.is_set()}
    return {}


def kv_info(backend: Any) -> Dict[str, Any]:
    """mode, n_tokens, bytes, bits_per_entry of the backend's cache (idle slot only)."""
    return dict(backend.core.kv_info())


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int], cut: bool = False) -> int:
    """Prompt tokens a backend whose cache holds `cached` need not evaluate again for `tokens`
    (the last prompt token is always evaluated, for its logits). cut=False: the cache is reused
    only when all of it is a prefix of the prompt (the Engine without sessions); cut=True: the
    common prefix (sessions; a compressed cache may cut a little earlier, at a block edge)."""
    n = min(common_prefix(cached, tokens), len(tokens) - 1)
    if cut:
        return max(n, 0)
    return n if n == len(cached) else 0


def close_backends(model: Any, backends: Sequence[Any]) -> None:
    for b in backends:
        b.close()
    if model is not None and all(model is not b for b in backends):
        model.close()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


class ShuttingDown(Exception):
    """The server is stopping: no new work."""


@dataclass
class Slot:
    index: int
    backend: Any
    busy: bool = False
    last_used: float = 0.0
    cached: List[int] = field(default_factory=list)  # snapshot after its last generation
    kv: Dict[str, Any] = field(default_factory=dict)  # kv_info after its last generation
    n_requests: int = 0
    cut: bool = False  # the backend reuses partial prefixes (cuts_prefix)
    prompt_len: int = 0  # prompt tokens of the slot's last request


class Job:
    """One generation: its cancel flag, and the queue of items the worker hands to the loop.
    Items: ("item", StreamItem), then ("done", Completion or None if cancelled) or
    ("error", exception)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.cancel = threading.Event()
        self.items: asyncio.Queue = asyncio.Queue()
        self.slot: Optional[Slot] = None

    def emit(self, kind: str, value: Any) -> None:  # worker thread -> event loop
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening
            pass


class SlotPool:
    """Free slots, the bounded FIFO of waiting requests, and the worker threads.

    acquire(tokens) picks, among the free slots, the one whose conversation tokens continue
    (see _score), else the least recently used one; or waits in the queue (FIFO) when none is
    free; or raises QueueFull when max_queue requests already wait.
    """

    def __init__(self, backends: Sequence[Any], max_queue: int,
                 on_tokens: Optional[Callable[[int], None]] = None):
        self.slots = [Slot(i, b) for i, b in enumerate(backends)]
        for s in self.slots:
            s.kv = kv_info(s.backend)
            s.cut = cuts_prefix(s.backend)
        self.max_queue = max_queue
        self.waiters: Deque[Tuple[asyncio.Future, List[int]]] = collections.deque()
        self.executor = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="eoq-slot")
        self.jobs: set = set()
        self.closing = False
        self.on_tokens = on_tokens

    # --- choosing a slot (event loop only) ----------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.waiters)

    @property
    def n_busy(self) -> int:
        return sum(s.busy for s in self.slots)

    def _score(self, slot: Slot, tokens: Sequence[int]) -> Tuple[int, float]:
        # A request that continues the slot's conversation (it reuses at least all of the
        # slot's last prompt: a chat's next turn, or the same prompt again) goes there, the
        # longest reuse first. Anything else takes the least recently used slot: a new chat
        # that shares only the system prompt with another must not cut that one's history
        # (the engine still reuses the shared prefix in whichever slot it lands).
        n = reusable_prefix(slot.cached, tokens, slot.cut)
        continues = bool(slot.cached) and n > 0 and n >= min(slot.prompt_len, len(tokens) - 1)
        return (n if continues else 0, -slot.last_used)

    def _best_free(self, tokens: Sequence[int]) -> Optional[Slot]:
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        return max(free, key=lambda s: self._score(s, tokens))

    async def acquire(self, tokens: Sequence[int]) -> Slot:
        if self.closing:
            raise ShuttingDown()
        slot = self._best_free(tokens) if not self.waiters else None
        if slot is not None:
            slot.busy = True
            slot.prompt_len = len(tokens)
            return slot
        if len(self.waiters) >= self.max_queue:
            raise QueueFull()
        fut = asyncio.get_running_loop().create_future()
        entry = (fut, list(tokens))
        self.waiters.append(entry)
        try:
            return await fut
        except BaseException:
            if entry in self.waiters:
                self.waiters.remove(entry)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # handed a slot just as we were cancelled
            raise

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
        while self.waiters:
            fut, tokens = self.waiters.popleft()
            if not fut.done():
                slot.busy = True
                slot.prompt_len = len(tokens)
                fut.set_result(slot)
                return

    # --- running (worker threads) -------------------------------------------------------

    def start(self, slot: Slot, job: Job, start_stream: Callable[[Any, Dict[str, Any]], Any]) -> None:
        """Run start_stream(backend, extra_kwargs) (which returns an eoq CompletionStream of
        StreamItems, passing extra_kwargs on to generate) in a worker thread, emitting its items
        to job."""
        job.slot = slot
        slot.n_requests += 1
        self.jobs.add(job)
        self.executor.submit(self._work, slot, job, start_stream)

    def _work(self, slot: Slot, job: Job, start_stream: Callable[[Any, Dict[str, Any]], Any]) -> None:
        stream = None
        final: Tuple[str, Any] = ("done", None)
        try:
            if not job.cancel.is_set():
                stream = start_stream(slot.backend, cancel_kwargs(slot.backend, job.cancel))
                for item in stream:
                    if item.tokens and self.on_tokens is not None:
                        self.on_tokens(len(item.tokens))
                    job.emit("item", item)
                    if job.cancel.is_set():
                        break
                final = ("done", None if job.cancel.is_set() else stream.completion)
        except BaseException as e:  # reported to the request; the server goes on
            # A prompt stopped because the job was cancelled is no error: nobody is waiting.
            final = ("done", None) if job.cancel.is_set() else ("error", e)
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass
            try:
                slot.cached = cached_tokens(slot.backend)
                slot.kv = kv_info(slot.backend)
            except Exception:
                slot.cached = []
            self._finish(slot, job, final)

    def _finish(self, slot: Slot, job: Job, final: Tuple[str, Any]) -> None:
        """On the loop, in one step: free the slot, then hand the request its last item. A
        client that sends its next request as soon as its answer ends must find the slot free
        (else a one-slot server with a full queue would answer it 503)."""
        def on_loop() -> None:
            self.jobs.discard(job)
            self.release(slot)
            job.items.put_nowait(final)

        try:
            job.loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening
            pass

    def cancel_all(self) -> None:
        """Stop: refuse new work, wake the queue with ShuttingDown, cancel running jobs."""
        self.closing = True
        while self.waiters:
            fut, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ShuttingDown())
        for job in list(self.jobs):
            job.cancel.set()

    def shutdown(self) -> None:
        self.cancel_all()
        self.executor.shutdown(wait=True)
