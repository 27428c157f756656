"""eoq-server's request side: OpenAI-shaped errors, body reading with a size bound, and the
checks that turn a JSON body into Engine.generate arguments (all before a slot is taken, so a
bad request is a 400 and never reaches a worker).

Sampling defaults are the engine's (llama.cpp's: temperature 0.8, top_k 40, top_p 0.95, min_p
0.05) for what a request leaves out. OpenAI fields with no engine counterpart are refused with a
400 when they ask for something (n > 1, non-zero presence/frequency penalties, tools), and
accepted when they hold their neutral value, since front ends send the defaults.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

from ._core import EoqError
from .engine import _check_max_tokens, _check_sampling, _check_stop

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for top_logprobs


class ApiError(Exception):
    """An HTTP error in OpenAI's JSON shape: {"error": {message, type, param, code}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error",
             500: "server_error"}

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_eoq_error(e: EoqError) -> ApiError:
    code = getattr(e, "code", "internal")
    if code == "context_full":
        return ApiError(400, str(e), code="context_length_exceeded")
    if code in ("invalid_arg", "invalid_utf8"):
        return ApiError(400, str(e), code="invalid_value")
    return ApiError(500, str(e), code=code)


async def read_json(receive_stream, content_length: Optional[str], limit: int) -> Dict[str, Any]:
    """The body as a JSON object; 413 past limit bytes (checked on Content-Length first, then
    while reading, so a lying or absent header does not help), 400 when it is not a JSON
    object."""
    if content_length is not None:
        try:
            n = int(content_length)
        except ValueError:
            raise bad("invalid Content-Length header") from None
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes exceeds the limit of {limit} bytes",
                           code="request_too_large")
    body = bytearray()
    async for chunk in receive_stream:
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
    if not body:
        raise bad("the request body is empty: a JSON object is expected")
    try:
        obj = json.loads(bytes(body))
    except (ValueError, RecursionError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise bad(f"the request body must be a JSON object, got {type(obj).__name__}")
    return obj


# --- field helpers ------------------------------------------------------------------------

def _num(body: Dict[str, Any], key: str, default: Any) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise bad(f"'{key}' must be a number, got {v!r}", param=key)
    return v


def _int(body: Dict[str, Any], key: str, default: Any) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise bad(f"'{key}' must be an integer, got {v!r}", param=key)
    return v


def get_bool(body: Dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{key}' must be true or false, got {v!r}", param=key)
    return v


def _neutral(body: Dict[str, Any], key: str, neutral: Any, why: str) -> None:
    v = body.get(key)
    if v is not None and v != neutral:
        raise bad(f"'{key}' = {v!r} is not supported: {why}", param=key)


def sampling_args(body: Dict[str, Any], max_key: Tuple[str, ...], max_default: Optional[int]) -> Dict[str, Any]:
    """Engine.generate keyword arguments for the sampling fields, checked as the engine checks
    them (the same functions), with the failing field named."""
    max_tokens = max_default
    for k in max_key:
        if body.get(k) is not None:
            max_tokens = _int(body, k, None)
            if max_tokens < -1:
                raise bad(f"'{k}' must be >= 0 (or -1 for no limit), got {max_tokens}", param=k)
            break
    out = {
        "temperature": _num(body, "temperature", 0.8),
        "top_k": _int(body, "top_k", 40),
        "top_p": _num(body, "top_p", 0.95),
        "min_p": _num(body, "min_p", 0.05),
        "repeat_penalty": _num(body, "repeat_penalty", 1.0),
        "repeat_last_n": _int(body, "repeat_last_n", 64),
        "seed": _int(body, "seed", None),
        "max_tokens": max_tokens,
    }
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise bad(f"'stop' must be a string or a list of strings, got {stop!r}", param="stop")
    out["stop"] = stop
    for key, check in (("temperature", lambda: _check_sampling(out["temperature"], out["top_k"], out["top_p"],
                                                              out["min_p"], out["repeat_penalty"],
                                                              out["repeat_last_n"], out["seed"])),
                       ("max_tokens", lambda: _check_max_tokens(out["max_tokens"])),
                       ("stop", lambda: _check_stop(out["stop"]))):
        try:
            check()
        except EoqError as e:
            msg = str(e)
            param = next((p for p in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                                      "repeat_last_n", "seed") if msg.startswith(p)), key)
            raise bad(msg, param=param) from None
    _neutral(body, "n", 1, "one choice per request")
    _neutral(body, "best_of", 1, "one choice per request")
    _neutral(body, "presence_penalty", 0, "use repeat_penalty")
    _neutral(body, "frequency_penalty", 0, "use repeat_penalty")
    _neutral(body, "logit_bias", {}, "use a logits processor through the Python API")
    return out


def chat_messages(body: Dict[str, Any]) -> List[Dict[str, str]]:
    """messages as [{role, content}] with text content (a list of text parts is joined)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise bad(f"messages[{i}].role must be a non-empty string", param="messages")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = []
            for p in content:
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                    parts.append(p["text"])
                else:
                    kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                    raise bad(f"messages[{i}].content: only text parts are supported, got {kind!r}",
                              param="messages")
            content = "".join(parts)
        elif not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string or a list of text parts", param="messages")
        out.append({"role": role, "content": content})
    if body.get("tools") or body.get("functions"):
        raise bad("tools/functions are not supported by this server", param="tools")
    return out


def chat_logprobs(body: Dict[str, Any]) -> Optional[int]:
    """None (off) or the number of alternatives (top_logprobs) per token."""
    on = get_bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", None)
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad(f"'top_logprobs' must be in [0, {MAX_TOP_LOGPROBS}], got {top}", param="top_logprobs")
    if top is not None and not on:
        raise bad("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if on else None


def completion_logprobs(body: Dict[str, Any], key: str = "logprobs") -> Optional[int]:
    n = _int(body, key, None)
    if n is None:
        return None
    if not 0 <= n <= MAX_TOP_LOGPROBS:
        raise bad(f"'{key}' must be in [0, {MAX_TOP_LOGPROBS}], got {n}", param=key)
    return n


def response_format(body: Dict[str, Any]) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """(constrained, schema): response_format text -> (False, None); json_object -> (True,
    None: any JSON object); json_schema -> (True, its schema)."""
    rf = body.get("response_format")
    if rf is None:
        return False, None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise bad("'response_format' must be an object with a 'type'", param="response_format")
    t = rf["type"]
    if t == "text":
        return False, None
    if t == "json_object":
        return True, None
    if t == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise bad("response_format json_schema needs a 'json_schema' object", param="response_format")
        schema = js.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise bad("response_format json_schema.schema must be an object", param="response_format")
        return True, schema if isinstance(schema, dict) else {}
    raise bad(f"response_format type {t!r} is not one of text, json_object, json_schema",
              param="response_format")


def logprob_value(x: float) -> float:
    """JSON has no -inf: a banned token reports -9999.0 (as OpenAI does)."""
    return x if math.isfinite(x) else -9999.0
