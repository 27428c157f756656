"""eoq-server: an OpenAI-compatible HTTP server (Starlette on uvicorn, the `eoq[server]` extra).

Routes: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics (Prometheus text),
and llama.cpp's /completion, /tokenize, /detokenize. Requests take a slot (server_slots: the
free slot whose cache shares the longest prefix, else a bounded FIFO queue, else 503); the
generation runs in that slot's worker thread and its tokens come back to the event loop, which
only parses, schedules and writes. Template rendering and tokenizing run in the loop's default
executor. A client that goes away (checked while waiting for a slot, while generating and
while streaming) cancels its generation, which frees the slot at the next token. SIGTERM/SIGINT:
the queue is refused, running generations stop at their next token, open responses end, the
process exits 0.

Request bodies are checked in server_api (errors in OpenAI's JSON shape: 400/401/404/413/503,
500 for a fault of ours); the server never dies on a request.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

from . import server_api as api
from ._core import EoqError
from .server_api import ApiError, bad
from .server_slots import (Job, QueueFull, ShuttingDown, SlotPool, close_backends, open_backends)

PROG = "eoq-server"
log = logging.getLogger("eoq.server")


class ClientGone(Exception):
    """The client disconnected before its answer was written."""


# --- metrics --------------------------------------------------------------------------------

class Metrics:
    """Counters for /metrics (thread-safe: workers add generated tokens)."""

    WINDOW_S = 10.0  # eoq_tokens_per_second: generated tokens over the last WINDOW_S seconds

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Dict[tuple, int] = {}
        self.prompt_tokens = 0
        self.prompt_cached_tokens = 0
        self.generated_tokens = 0
        self.prompt_seconds = 0.0
        self.generate_seconds = 0.0
        self._recent: deque = deque()  # (monotonic time, n tokens)

    def request(self, route: str, status: int) -> None:
        with self._lock:
            k = (route, status)
            self.requests[k] = self.requests.get(k, 0) + 1

    def tokens(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += n
            self._recent.append((now, n))
            self._trim(now)

    def completion(self, c) -> None:
        with self._lock:
            self.prompt_tokens += c.usage.get("prompt_tokens", 0)
            self.prompt_cached_tokens += int(c.timings.get("prompt_cached_tokens", 0))
            self.prompt_seconds += c.timings.get("prompt_ms", 0.0) / 1e3
            self.generate_seconds += c.timings.get("generate_ms", 0.0) / 1e3

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / self.WINDOW_S


# --- the server state -----------------------------------------------------------------------

class State:
    def __init__(self, args: argparse.Namespace, model: Any, backends: List[Any]):
        self.args = args
        self.model = model
        self.backends = backends
        self.metrics = Metrics()
        self.pool = SlotPool(backends, max_queue=args.queue, on_tokens=self.metrics.tokens)
        self.model_id = args.alias or os.path.basename(model.model_path)
        self.model_names = {self.model_id, os.path.basename(model.model_path), model.model_path,
                            os.path.splitext(os.path.basename(model.model_path))[0]}
        self.created = int(time.time())
        self.api_key = args.api_key
        self.max_body = args.max_body
        self.grammar = None
        self.started = time.monotonic()

    def json_grammar(self):
        if self.grammar is None:
            from .server_grammar import JsonGrammar

            self.grammar = JsonGrammar(self.model)
        return self.grammar

    def check_model(self, body: Dict[str, Any]) -> None:
        m = body.get("model")
        if m is None or m == "":
            return
        if not isinstance(m, str):
            raise bad("'model' must be a string", param="model")
        if m not in self.model_names:
            raise ApiError(404, f"the model {m!r} does not exist (this server serves {self.model_id!r})",
                           param="model", code="model_not_found")


# --- running a generation -------------------------------------------------------------------

async def _watch_disconnect(receive) -> None:
    """Returns when the client has disconnected (the body has been read already)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _race_disconnect(receive, coro):
    """coro's result, or ClientGone (coro cancelled) when the client disconnects first."""
    task = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_watch_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watch.cancel()
        raise
    if task in done:
        watch.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    raise ClientGone()


async def _in_thread(fn: Callable, *a):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *a)


async def start_job(state: State, receive, tokens: List[int], gen_kwargs: Dict[str, Any],
                    make_processor: Optional[Callable[[], Any]] = None) -> Job:
    """Take a slot (waiting in the queue; 503 past it) and start the generation on it."""
    try:
        slot = await _race_disconnect(receive, state.pool.acquire(tokens))
    except QueueFull:
        raise ApiError(503, f"the server is busy: all {len(state.pool.slots)} slots are generating and "
                            f"{state.pool.max_queue} requests are waiting; retry later",
                       code="server_overloaded") from None
    except ShuttingDown:
        raise ApiError(503, "the server is shutting down", code="server_shutting_down") from None
    job = Job(asyncio.get_running_loop())

    def start_stream(backend, extra):
        kw = dict(gen_kwargs, **extra)
        if make_processor is not None:
            kw["logits_processor"] = make_processor()
        return backend.generate(tokens, stream=True, stream_items=True, **kw)

    state.pool.start(slot, job, start_stream)
    return job


async def job_events(state: State, job: Job) -> AsyncIterator[tuple]:
    """("item", StreamItem) ... then ("done", Completion) — or ends without "done" when the job
    was cancelled. A worker error is raised here (EoqError -> ApiError)."""
    try:
        while True:
            kind, value = await job.items.get()
            if kind == "item":
                yield kind, value
            elif kind == "done":
                if value is not None:
                    state.metrics.completion(value)
                    yield kind, value
                elif state.pool.closing:  # cancelled by SIGTERM, not by the client
                    raise ApiError(503, "the server is shutting down", code="server_shutting_down")
                return
            else:
                if isinstance(value, ApiError):
                    raise value
                if isinstance(value, EoqError):
                    raise api.from_eoq_error(value)
                if isinstance(value, ValueError):  # a grammar or template problem of the request
                    raise bad(str(value))
                log.error("generation failed: %r", value)
                raise ApiError(500, f"internal error: {type(value).__name__}: {value}")
    finally:
        job.cancel.set()  # no-op when finished; stops the worker when the consumer went away


async def collect(state: State, receive, job: Job):
    """(items, completion) of a job, cancelling it if the client disconnects first."""
    async def run():
        items = []
        completion = None
        async for kind, v in job_events(state, job):
            if kind == "item":
                items.append(v)
            else:
                completion = v
        return items, completion

    try:
        items, completion = await _race_disconnect(receive, run())
    finally:
        job.cancel.set()
    if completion is None:
        raise ApiError(503, "the generation was cancelled (server shutting down)", code="server_shutting_down")
    return items, completion


# --- responses ------------------------------------------------------------------------------

def json_response(obj: Any, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(obj, ensure_ascii=False, allow_nan=False), status_code=status,
                    media_type="application/json")


def error_response(e: ApiError):
    return json_response(e.body(), e.status)


class SSEResponse:
    """A text/event-stream response fed by an async iterator of already formatted event bytes.
    Watches for the client's disconnect while streaming (and cancels the feed then, whose
    finally blocks cancel the generation)."""

    def __init__(self, events: AsyncIterator[bytes], on_end: Optional[Callable[[], None]] = None):
        self.events = events
        self.on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})

        async def pump():
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await _race_disconnect(receive, pump())
        except (ClientGone, OSError):
            pass
        finally:
            await self.events.aclose()
            if self.on_end is not None:
                self.on_end()


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, allow_nan=False).encode() + b"\n\n"


def _chat_logprobs_content(lps) -> List[Dict[str, Any]]:
    return [{"token": lp.token, "logprob": api.logprob_value(lp.logprob), "bytes": list(lp.bytes),
             "top_logprobs": [{"token": t.token, "logprob": api.logprob_value(t.logprob),
                               "bytes": list(t.bytes)} for t in lp.top_logprobs]} for lp in lps]


def _usage(c) -> Dict[str, Any]:
    u = dict(c.usage)
    u["prompt_tokens_details"] = {"cached_tokens": int(c.timings.get("prompt_cached_tokens", 0))}
    return u


def _timings(c) -> Dict[str, Any]:
    t = c.timings
    return {"prompt_n": c.usage.get("prompt_tokens", 0), "cache_n": int(t.get("prompt_cached_tokens", 0)),
            "prompt_ms": t.get("prompt_ms", 0.0), "prompt_per_second": t.get("prompt_tokens_per_s", 0.0),
            "predicted_n": c.usage.get("completion_tokens", 0), "predicted_ms": t.get("generate_ms", 0.0),
            "predicted_per_second": t.get("tokens_per_s", 0.0)}


# --- the app --------------------------------------------------------------------------------

def build_app(state: State):
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def endpoint(route_name: str, needs_body: bool = True):
        """Wraps a handler: auth, body, errors -> OpenAI JSON, request metrics."""
        def wrap(handler):
            async def asgi(request: Request):
                status = 200
                try:
                    if state.api_key is not None and route_name != "/health":
                        auth = request.headers.get("authorization", "")
                        key = auth[7:].strip() if auth[:7].lower() == "bearer " else \
                            request.headers.get("x-api-key", "")
                        if not key:
                            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'",
                                           code="invalid_api_key")
                        if not hmac.compare_digest(key.encode(), state.api_key.encode()):
                            raise ApiError(401, "incorrect API key", code="invalid_api_key")
                    body = None
                    if needs_body:
                        body = await api.read_json(request.stream(), request.headers.get("content-length"),
                                                   state.max_body)
                    resp = await handler(request, body)
                    status = getattr(resp, "status_code", 200)
                    return resp
                except ApiError as e:
                    status = e.status
                    return error_response(e)
                except ClientGone:
                    status = 499  # nginx's "client closed request"; nobody reads the answer
                    from starlette.responses import Response

                    return Response(b"", status_code=499)
                except EoqError as e:
                    ae = api.from_eoq_error(e)
                    status = ae.status
                    return error_response(ae)
                except Exception as e:  # never let a request take the server down
                    log.exception("request failed")
                    status = 500
                    return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))
                finally:
                    state.metrics.request(route_name, status)
            return asgi
        return wrap

    # --- prompt building (in the executor: templates and tokenizers can be slow) --------

    async def prompt_tokens(build: Callable[[], List[int]]) -> List[int]:
        try:
            tokens = await _in_thread(build)
        except EoqError as e:
            raise api.from_eoq_error(e) from None
        except ValueError as e:  # a chat template error (ChatTemplateError) is the request's
            raise bad(f"cannot build the prompt: {e}") from None
        if not tokens:
            raise bad("the prompt is empty", param="prompt")
        n_ctx = state.model.n_ctx
        if len(tokens) >= n_ctx:
            raise ApiError(400, f"the prompt has {len(tokens)} tokens: it does not fit in the context of "
                                f"{n_ctx} tokens with room to generate", param="messages",
                           code="context_length_exceeded")
        return tokens

    def processor_factory(body: Dict[str, Any]):
        constrained, schema = api.response_format(body)
        if not constrained:
            return None
        from .server_grammar import GrammarError, GrammarUnavailable

        g = state.json_grammar()
        try:
            g.processor(schema)  # compile once here so that a bad schema is a 400 before a slot
        except GrammarUnavailable as e:
            raise bad(str(e), param="response_format") from None
        except GrammarError as e:
            raise bad(str(e), param="response_format") from None
        return lambda: g.processor(schema)

    # --- /v1/chat/completions -----------------------------------------------------------

    @endpoint("/v1/chat/completions")
    async def chat_completions(request: Request, body: Dict[str, Any]):
        state.check_model(body)
        messages = api.chat_messages(body)
        kw = api.sampling_args(body, ("max_completion_tokens", "max_tokens"), None)
        kw["logprobs"] = api.chat_logprobs(body)
        stream = api.get_bool(body, "stream", False)
        so = body.get("stream_options") or {}
        include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
        make_proc = await _in_thread(processor_factory, body)
        tokens = await prompt_tokens(lambda: state.model.chat_tokens(messages))
        job = await start_job(state, request.receive, tokens, kw, make_proc)
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        head = {"id": cid, "created": created, "model": state.model_id,
                "system_fingerprint": "eoq"}
        want_lp = kw["logprobs"] is not None
        if not stream:
            items, c = await collect(state, request.receive, job)
            choice = {"index": 0, "message": {"role": "assistant", "content": c.text},
                      "logprobs": {"content": _chat_logprobs_content(c.logprobs)} if want_lp else None,
                      "finish_reason": c.finish_reason}
            return json_response({**head, "object": "chat.completion", "choices": [choice],
                                  "usage": _usage(c), "timings": _timings(c)})

        async def events():
            base = {**head, "object": "chat.completion.chunk"}
            yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
            try:
                async for kind, v in job_events(state, job):
                    if kind == "item":
                        if not v.text and not (want_lp and v.logprobs):
                            continue
                        lp = {"content": _chat_logprobs_content(v.logprobs)} if want_lp and v.logprobs else None
                        yield sse({**base, "choices": [{"index": 0, "delta": {"content": v.text},
                                                        "logprobs": lp, "finish_reason": None}]})
                    else:
                        yield sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                        "finish_reason": v.finish_reason}],
                                   "usage": _usage(v), "timings": _timings(v)})
                        if include_usage:
                            yield sse({**base, "choices": [], "usage": _usage(v)})
            except ApiError as e:
                yield sse(e.body())
            yield b"data: [DONE]\n\n"

        return SSEResponse(events(), on_end=job.cancel.set)

    # --- /v1/completions ----------------------------------------------------------------

    def completion_prompt(body: Dict[str, Any], key: str = "prompt"):
        p = body.get(key)
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            if not p:
                raise bad(f"'{key}' is empty", param=key)
            return lambda: state.model.tokenize(p, add_special=True, parse_special=False)
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            n = state.model.n_vocab
            for t in p:
                if not 0 <= t < n:
                    raise bad(f"token id {t} in '{key}' is out of range [0, {n})", param=key)
            return lambda: list(p)
        raise bad(f"'{key}' must be a string, a list of token ids, or a list of one of those", param=key)

    def legacy_logprobs(lps, text_start: int) -> Dict[str, Any]:
        offsets, pos = [], text_start
        for lp in lps:
            offsets.append(pos)
            pos += len(lp.token)
        return {"tokens": [lp.token for lp in lps],
                "token_logprobs": [api.logprob_value(lp.logprob) for lp in lps],
                "top_logprobs": [{t.token: api.logprob_value(t.logprob) for t in lp.top_logprobs}
                                 for lp in lps],
                "text_offset": offsets}

    @endpoint("/v1/completions")
    async def completions(request: Request, body: Dict[str, Any]):
        state.check_model(body)
        build = completion_prompt(body)
        if body.get("suffix"):
            raise bad("'suffix' is not supported", param="suffix")
        kw = api.sampling_args(body, ("max_tokens",), 16)  # OpenAI's default for completions
        kw["logprobs"] = api.completion_logprobs(body)
        kw["echo"] = api.get_bool(body, "echo", False)
        stream = api.get_bool(body, "stream", False)
        so = body.get("stream_options") or {}
        include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
        make_proc = await _in_thread(processor_factory, body)
        tokens = await prompt_tokens(build)
        job = await start_job(state, request.receive, tokens, kw, make_proc)
        cid = "cmpl-" + uuid.uuid4().hex
        head = {"id": cid, "created": int(time.time()), "model": state.model_id,
                "object": "text_completion", "system_fingerprint": "eoq"}
        want_lp = kw["logprobs"] is not None
        if not stream:
            items, c = await collect(state, request.receive, job)
            echo_len = len(items[0].text) if kw["echo"] and items and not items[0].tokens else 0
            choice = {"index": 0, "text": c.text, "finish_reason": c.finish_reason,
                      "logprobs": legacy_logprobs(c.logprobs, echo_len) if want_lp else None}
            return json_response({**head, "choices": [choice], "usage": _usage(c), "timings": _timings(c)})

        async def events():
            pos = 0
            try:
                async for kind, v in job_events(state, job):
                    if kind == "item":
                        if not v.text and not (want_lp and v.logprobs):
                            continue
                        lp = legacy_logprobs(v.logprobs, pos) if want_lp and v.logprobs else None
                        pos += len(v.text)
                        yield sse({**head, "choices": [{"index": 0, "text": v.text, "logprobs": lp,
                                                        "finish_reason": None}]})
                    else:
                        yield sse({**head, "choices": [{"index": 0, "text": "", "logprobs": None,
                                                        "finish_reason": v.finish_reason}],
                                   "usage": _usage(v), "timings": _timings(v)})
                        if include_usage:
                            yield sse({**head, "choices": [], "usage": _usage(v)})
            except ApiError as e:
                yield sse(e.body())
            yield b"data: [DONE]\n\n"

        return SSEResponse(events(), on_end=job.cancel.set)

    # --- llama.cpp's /completion, /tokenize, /detokenize --------------------------------

    @endpoint("/completion")
    async def llama_completion(request: Request, body: Dict[str, Any]):
        build = completion_prompt(body)
        if body.get("grammar"):
            raise bad("'grammar' (GBNF) is not supported; use 'json_schema'", param="grammar")
        kw = api.sampling_args(body, ("n_predict", "max_tokens"), None)
        kw["logprobs"] = api.completion_logprobs(body, "n_probs")
        stream = api.get_bool(body, "stream", False)
        make_proc = None
        if body.get("json_schema") is not None:
            make_proc = await _in_thread(processor_factory, {"response_format": {
                "type": "json_schema", "json_schema": {"schema": body["json_schema"]}}})
        tokens = await prompt_tokens(build)
        job = await start_job(state, request.receive, tokens, kw, make_proc)
        slot_id = job.slot.index
        want_lp = kw["logprobs"] is not None

        def probs(lps):
            return [{"id": lp.id, "token": lp.token, "logprob": api.logprob_value(lp.logprob),
                     "bytes": list(lp.bytes),
                     "top_logprobs": [{"id": t.id, "token": t.token, "logprob": api.logprob_value(t.logprob),
                                       "bytes": list(t.bytes)} for t in lp.top_logprobs]} for lp in lps]

        def final(c) -> Dict[str, Any]:
            stops = kw["stop"] if isinstance(kw["stop"], list) else [kw["stop"]] if kw["stop"] else []
            word = ""
            if c.finish_reason == "stop" and stops:
                full = state.model.detokenize(c.tokens)
                word = next((s for s in stops if s and s in full), "")
            out = {"content": c.text, "id_slot": slot_id, "stop": True, "model": state.model_id,
                   "tokens_predicted": c.usage["completion_tokens"], "tokens_evaluated": c.usage["prompt_tokens"],
                   "tokens_cached": int(c.timings.get("prompt_cached_tokens", 0)),
                   "stop_type": "limit" if c.finish_reason == "length" else ("word" if word else "eos"),
                   "stopping_word": word, "truncated": False, "timings": _timings(c)}
            if want_lp:
                out["completion_probabilities"] = probs(c.logprobs)
            return out

        if not stream:
            _, c = await collect(state, request.receive, job)
            return json_response(final(c))

        async def events():
            try:
                async for kind, v in job_events(state, job):
                    if kind == "item":
                        if v.text or (want_lp and v.logprobs):
                            ev = {"content": v.text, "stop": False, "id_slot": slot_id}
                            if want_lp and v.logprobs:
                                ev["completion_probabilities"] = probs(v.logprobs)
                            yield sse(ev)
                    else:
                        ev = final(v)
                        ev["content"] = ""
                        ev.pop("completion_probabilities", None)
                        yield sse(ev)
            except ApiError as e:
                yield sse(e.body())

        return SSEResponse(events(), on_end=job.cancel.set)

    @endpoint("/tokenize")
    async def tokenize(request: Request, body: Dict[str, Any]):
        content = body.get("content")
        if not isinstance(content, str):
            raise bad("'content' must be a string", param="content")
        add_special = api.get_bool(body, "add_special", False)
        parse_special = api.get_bool(body, "parse_special", True)
        with_pieces = api.get_bool(body, "with_pieces", False)
        m = state.model

        def run():
            ids = m.tokenize(content, add_special=add_special, parse_special=parse_special)
            if not with_pieces:
                return ids
            out = []
            for t in ids:
                raw = m.core.token_to_piece(t, special=True)
                try:
                    piece: Any = raw.decode("utf-8")
                except UnicodeDecodeError:
                    piece = list(raw)  # part of a character: its bytes, as llama.cpp does
                out.append({"id": t, "piece": piece})
            return out

        return json_response({"tokens": await _in_thread(run)})

    @endpoint("/detokenize")
    async def detokenize(request: Request, body: Dict[str, Any]):
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise bad("'tokens' must be a list of token ids", param="tokens")
        n = state.model.n_vocab
        for t in toks:
            if not 0 <= t < n:
                raise bad(f"token id {t} is out of range [0, {n})", param="tokens")
        text = await _in_thread(lambda: state.model.detokenize(toks, special=True))
        return json_response({"content": text})

    # --- models, health, metrics --------------------------------------------------------

    def model_card() -> Dict[str, Any]:
        m = state.model
        return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "eoq",
                "meta": {"n_ctx": m.n_ctx, "n_ctx_train": m.n_ctx_train, "n_vocab": m.n_vocab,
                         "kv": m.kv, "slots": len(state.pool.slots), "arch": m.arch, "name": m.name}}

    @endpoint("/v1/models", needs_body=False)
    async def models(request: Request, body):
        return json_response({"object": "list", "data": [model_card()]})

    @endpoint("/v1/models/{model}", needs_body=False)
    async def model_one(request: Request, body):
        name = request.path_params["model"]
        if name not in state.model_names:
            raise ApiError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return json_response(model_card())

    @endpoint("/health", needs_body=False)
    async def health(request: Request, body):
        p = state.pool
        if p.closing:
            return json_response({"status": "shutting down"}, 503)
        return json_response({"status": "ok", "slots_idle": len(p.slots) - p.n_busy,
                              "slots_processing": p.n_busy, "queue": p.queue_depth})

    @endpoint("/metrics", needs_body=False)
    async def metrics(request: Request, body):
        return PlainTextResponse(render_metrics(state), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/completion", llama_completion, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_one, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]

    async def http_error(request, exc: HTTPException):
        status = exc.status_code
        if status == 404:
            e = ApiError(404, f"unknown route {request.method} {request.url.path}", code="not_found")
        elif status == 405:
            e = ApiError(405, f"method {request.method} is not allowed on {request.url.path}",
                         code="method_not_allowed")
        else:
            e = ApiError(status, str(exc.detail))
        state.metrics.request("other", status)
        return error_response(e)

    async def server_error(request, exc: Exception):
        log.exception("unhandled error")
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}"))

    middleware = []
    if state.args.cors:
        # Browser front ends on another origin (a web UI served elsewhere) need CORS; the
        # preflight is answered here, before the key check (browsers send no key with it).
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=state.args.cors, allow_methods=["GET", "POST"],
                                     allow_headers=["authorization", "content-type", "x-api-key"]))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def render_metrics(state: State) -> str:
    """Prometheus text exposition (version 0.0.4)."""
    m, p = state.metrics, state.pool
    lines: List[str] = []

    def metric(name: str, kind: str, help_: str, samples):
        lines.append(f"# HELP eoq_{name} {help_}")
        lines.append(f"# TYPE eoq_{name} {kind}")
        for labels, v in samples:
            lab = "{" + ",".join(f'{k}="{val}"' for k, val in labels.items()) + "}" if labels else ""
            lines.append(f"eoq_{name}{lab} {float(v):.9g}")

    with m._lock:
        reqs = sorted(m.requests.items())
        counters = (m.prompt_tokens, m.prompt_cached_tokens, m.generated_tokens, m.prompt_seconds,
                    m.generate_seconds)
    metric("requests_total", "counter", "HTTP requests by route and status.",
           [({"route": r, "status": str(s)}, n) for (r, s), n in reqs])
    metric("prompt_tokens_total", "counter", "Prompt tokens of finished generations.", [({}, counters[0])])
    metric("prompt_cached_tokens_total", "counter", "Prompt tokens reused from a slot's cache.",
           [({}, counters[1])])
    metric("generated_tokens_total", "counter", "Tokens generated.", [({}, counters[2])])
    metric("prompt_seconds_total", "counter", "Seconds spent evaluating prompts.", [({}, counters[3])])
    metric("generate_seconds_total", "counter", "Seconds spent generating.", [({}, counters[4])])
    metric("tokens_per_second", "gauge", f"Tokens generated per second over the last {m.WINDOW_S:g} s, all slots.",
           [({}, m.tokens_per_second())])
    metric("queue_depth", "gauge", "Requests waiting for a slot.", [({}, p.queue_depth)])
    metric("queue_capacity", "gauge", "Requests that may wait before 503.", [({}, p.max_queue)])
    metric("slots", "gauge", "Slots (KV caches).", [({}, len(p.slots))])
    metric("slots_busy", "gauge", "Slots generating.", [({}, p.n_busy)])
    metric("slot_requests_total", "counter", "Requests run per slot.",
           [({"slot": str(s.index)}, s.n_requests) for s in p.slots])
    metric("kv_bytes", "gauge", "KV cache bytes per slot (after its last generation).",
           [({"slot": str(s.index), "mode": str(s.kv.get("mode", ""))}, s.kv.get("bytes", 0)) for s in p.slots])
    metric("kv_tokens", "gauge", "Tokens in each slot's KV cache (after its last generation).",
           [({"slot": str(s.index)}, s.kv.get("n_tokens", 0)) for s in p.slots])
    metric("kv_bits_per_entry", "gauge", "KV cache bits per stored K/V entry per slot.",
           [({"slot": str(s.index)}, s.kv.get("bits_per_entry", 0.0)) for s in p.slots])
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .cli import KV_MODES

    ap = argparse.ArgumentParser(
        prog=PROG, description="An OpenAI-compatible HTTP server for a GGUF model (eoq engine): "
                               "/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics, "
                               "and llama.cpp's /completion, /tokenize, /detokenize.",
        epilog="Without -m the default model (SmolLM2-135M-Instruct Q4_1) is used. --parallel N keeps N "
               "slots (KV caches): N sequences of one loaded model where the engine has sessions "
               "(Engine(n_seq=...)); on an engine without them each slot loads its own copy of the model "
               "(N times the weight memory).")
    g = ap.add_argument_group("model and cache")
    g.add_argument("-m", "--model", metavar="FNAME", help="GGUF model path (default: the default model)")
    g.add_argument("-a", "--alias", metavar="NAME", help="model id the API reports (default: the file name)")
    g.add_argument("-c", "--ctx-size", type=int, default=4096, metavar="N",
                   help="context size per slot in tokens (default 4096; 0: the model's training context)")
    g.add_argument("-np", "--parallel", type=int, default=1, metavar="N",
                   help="slots: requests generated at the same time (default 1; sequences of one model "
                        "with sessions, else one model copy per slot)")
    g.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="compute threads (of each slot's engine without sessions; default: the CPUs "
                        "this process may use)")
    g.add_argument("-b", "--batch-size", type=int, default=512, metavar="N", help="prompt batch (default 512)")
    g.add_argument("--device", default=None, metavar="DEV", help="cpu (default), cuda or cuda:N")
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=None,
                   metavar="N", help="as llama.cpp: N > 0 runs the model on the GPU")
    g.add_argument("--kv", default=None, metavar="MODE", help="KV cache mode: " + ", ".join(KV_MODES) + " (default f16)")
    g.add_argument("-ctk", "--cache-type-k", metavar="TYPE", help="K cache type, as eoq-run")
    g.add_argument("-ctv", "--cache-type-v", metavar="TYPE", help="V cache type, as eoq-run")
    g.add_argument("--kv-rank-cap", type=int, metavar="N", help="eoq: max low-rank components per block")
    g.add_argument("--kv-factor-bits", type=int, metavar="N", help="eoq: bits of the low-rank factors")
    g.add_argument("--kv-truncate", action="store_true", help="eoq: plain truncation instead of eOptShrink gains")
    g.add_argument("--kv-block", type=int, metavar="N", help="tokens per sealed block")
    g.add_argument("--kv-ring", type=int, metavar="N", help="exact recent tokens kept before sealing")
    g.add_argument("--kv-sinks", type=int, metavar="N", help="exact attention-sink tokens")
    g.add_argument("--kv-boundary-layers", type=int, metavar="N", help="first/last N layers at higher precision")
    g.add_argument("--kv-boundary-bits", type=int, metavar="B", help="turbo/eoq: residual bits of boundary layers")
    g.add_argument("--kv-v-rank-cap", type=int, metavar="N", help="eoq: rank cap for values")
    g.add_argument("--kv-exact-scores", action="store_true", help="turbo/eoq: score sealed keys in float")
    g = ap.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port, printed)")
    g.add_argument("--api-key", default=os.environ.get("EOQ_API_KEY") or None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                        "(default: $EOQ_API_KEY, else no key)")
    g.add_argument("--queue", type=int, default=None, metavar="N",
                   help="requests that may wait for a slot before the server answers 503 (default 4 per slot)")
    g.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (e.g. http://localhost:3000; '*' for any) to call "
                        "the API; repeatable (default: none)")
    g.add_argument("--max-body", type=int, default=8 << 20, metavar="BYTES",
                   help="largest request body accepted (default 8 MiB; larger: 413)")
    g.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="S",
                   help="seconds to let open responses end after SIGTERM (default 5)")
    g.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as e:
        print(f"{PROG}: the server needs the eoq[server] extra (pip install 'eoq[server]'): {e}", file=sys.stderr)
        return 2
    from .cli import CliError, device_from_args, kv_config

    try:
        for name in ("parallel",):
            if getattr(args, name) < 1:
                raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.queue is None:
            args.queue = 4 * args.parallel
        if args.queue < 0:
            raise CliError(f"--queue must be >= 0, got {args.queue}")
        if args.max_body < 1:
            raise CliError(f"--max-body must be >= 1, got {args.max_body}")
        if not 0 <= args.port < 65536:
            raise CliError(f"--port must be in [0, 65535], got {args.port}")
        device = device_from_args(args)
        kv_mode, kv_options = kv_config(args)
    except CliError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        model, backends = open_backends(args.model, args.parallel, args.ctx_size, kv_mode, kv_options,
                                        device, args.threads, args.batch_size)
    except (EoqError, OSError, ValueError) as e:
        print(f"{PROG}: cannot load the model: {e}", file=sys.stderr)
        return 1
    state = State(args, model, backends)
    try:
        return serve(state)
    finally:
        state.pool.shutdown()
        close_backends(model, backends)


def serve(state: State) -> int:
    import uvicorn

    args = state.args
    app = build_app(state)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"{PROG}: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    sock.listen(2048)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="off",
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=False)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Stop the queue and the running generations first, so that open streams end now
            # (uvicorn then waits for them, up to --shutdown-timeout).
            # Not uvicorn's own handle_exit: that one re-raises the signal after the shutdown,
            # so SIGTERM would end the process with -15 instead of a clean exit 0.
            loop = getattr(self, "_eoq_loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(state.pool.cancel_all)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl+C: do not wait for open responses
            self.should_exit = True

        async def serve(self, sockets=None):
            self._eoq_loop = asyncio.get_running_loop()
            await super().serve(sockets=sockets)

    server = Server(config)
    m = state.model
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"{PROG}: {state.model_id} ({m.backend}, n_ctx {m.n_ctx}, kv {m.kv}, {len(state.backends)} slot(s)) "
          f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    print(f"{PROG}: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
