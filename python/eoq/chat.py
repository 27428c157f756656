"""Chat templates: render a GGUF `tokenizer.chat_template` (Jinja2) into a prompt string.

The template comes from a model file, i.e. from an untrusted source, so it is rendered in Jinja2's
ImmutableSandboxedEnvironment (no access to dunder attributes, no mutation of lists/dicts) with
three extra guards: an unsafe attribute access fails at once instead of rendering as empty, string
and list repetition (`'a' * n`) and powers are capped, and the rendered text has a size limit.

The environment mirrors what Hugging Face `apply_chat_template` gives templates, since that is
what template authors test against: trim_blocks, lstrip_blocks, the loopcontrols extension,
`raise_exception(msg)`, `strftime_now(fmt)`, and a `tojson` filter that does not HTML-escape.
"""
from __future__ import annotations

import datetime as _dt
import json
import operator
import warnings
from functools import lru_cache
from typing import Any, Iterable, Mapping

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplateError", "CHATML_TEMPLATE", "render_chat_template"]

# ChatML, used when a model carries no template (many base models): the format of SmolLM2,
# Qwen and others. Without BOS: a model that wants one gets it from the tokenizer.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Limits on what a template may build (a hostile template could otherwise ask for gigabytes).
MAX_OUTPUT_CHARS = 16 * 1024 * 1024
MAX_REPEAT_ITEMS = 1024 * 1024
MAX_POW_EXPONENT = 4096


class ChatTemplateError(ValueError):
    """The chat template is invalid, raised an error, or tried something the sandbox forbids."""


class _TemplateRaised(jinja2.TemplateError):
    """raise_exception() called by the template itself (e.g. 'roles must alternate')."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes <, >, & and ' which would corrupt prompts.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # The stock sandbox returns an Undefined that only fails when used further, so
        # `{{ x.__class__ }}` would silently render as ''. Refuse outright.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > MAX_REPEAT_ITEMS:
                        raise SecurityError("sequence repetition too large")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_POW_EXPONENT:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = _Env(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _check_messages(messages: Any) -> list:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = list(messages)
    for i, m in enumerate(out):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ChatTemplateError(
                f"messages[{i}] must be a dict with 'role' and 'content' keys, got {m!r:.80}")
    return out


def render_chat_template(template: str | None, messages: Any, add_generation_prompt: bool = True,
                         bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """Render `template` (a GGUF tokenizer.chat_template) for `messages`.

    `bos_token`/`eos_token` are the token texts (templates often write `{{ bos_token }}`).
    `extra` is passed to the template as variables (e.g. tools=..., date_string=...).
    An empty or missing template falls back to ChatML with a warning.
    Raises ChatTemplateError for syntax errors, sandbox violations and template-raised errors.
    """
    msgs = _check_messages(messages)
    if not template:
        warnings.warn("the model has no chat template (tokenizer.chat_template); using ChatML",
                      stacklevel=3)
        template = CHATML_TEMPLATE
    try:
        tmpl = _compile(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template syntax error (line {e.lineno}): {e.message}") from None
    variables = dict(extra)
    variables.update(messages=msgs, add_generation_prompt=bool(add_generation_prompt),
                     bos_token=bos_token, eos_token=eos_token)
    try:
        text = tmpl.render(**variables)
    except _TemplateRaised as e:
        raise ChatTemplateError(f"chat template raised an error: {e}") from None
    except SecurityError as e:
        raise ChatTemplateError(f"chat template blocked by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
            ZeroDivisionError, RecursionError) as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    if len(text) > MAX_OUTPUT_CHARS:
        raise ChatTemplateError("chat template output is too large")
    return text
