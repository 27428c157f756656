"""JSON-schema constrained output for eoq-server (response_format json_schema / json_object),
through llguidance (PyPI, optional: part of the eoq[server] extra) on the GGUF vocabulary.

llguidance needs each token's bytes and a tokenize function; both come from the loaded model
(token_to_piece with special=True; control tokens, whose plain piece is empty, are marked with a
leading 0xff byte as llguidance expects, so the grammar never emits them as text). The matcher
then runs as an eoq logits processor: before each sampling step it consumes the tokens sampled
since its last call and bans (-inf) every token the grammar does not allow; once the JSON value
is complete only the end-of-generation tokens stay allowed.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Dict, List, Optional

import numpy as np


class GrammarUnavailable(Exception):
    """llguidance is not installed."""


class GrammarError(ValueError):
    """The schema cannot be compiled (a bad request)."""


class _GgufTokenizer:
    """What llguidance.TokenizerWrapper reads: tokens (bytes per id), eos/bos ids, special ids,
    and a call that tokenizes a str."""

    def __init__(self, model: Any):
        core = model.core
        n = core.n_vocab
        self.tokens: List[bytes] = []
        self.special_token_ids: List[int] = []
        for i in range(n):
            plain = core.token_to_piece(i)
            full = core.token_to_piece(i, special=True)
            if not plain and full:  # a control token such as <|im_end|>
                self.tokens.append(b"\xff" + full)
                self.special_token_ids.append(i)
            else:
                self.tokens.append(plain)
        self.eos_token_ids = [i for i in range(n) if core.is_eog(i)] or [core.eos]
        self.eos_token_id = core.eos if core.eos in self.eos_token_ids else self.eos_token_ids[0]
        self.bos_token_id = core.bos if 0 <= core.bos < n else None
        self._core = core

    def __call__(self, s: str) -> List[int]:
        if isinstance(s, (bytes, bytearray)):
            raise TypeError("str only")  # TokenizerWrapper probes for bytes support
        return list(self._core.tokenize(s, add_special=False, parse_special=False))


class JsonGrammar:
    """Compiles schemas for one model (the tokenizer table is built once, on first use)."""

    def __init__(self, model: Any):
        self._model = model
        self._lock = threading.Lock()
        self._tok = None

    def _tokenizer(self):
        with self._lock:
            if self._tok is None:
                try:
                    import llguidance
                except ImportError:
                    raise GrammarUnavailable(
                        "response_format json_schema needs llguidance (pip install 'eoq[server]')") from None
                gt = _GgufTokenizer(self._model)
                self._tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(gt),
                                                   eos_token=gt.eos_token_ids)
            return self._tok

    def processor(self, schema: Optional[Dict[str, Any]]) -> "JsonProcessor":
        """A fresh logits processor for one generation. schema None: any JSON object."""
        import llguidance

        tok = self._tokenizer()
        if schema is None:
            schema = {"type": "object"}
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as e:
            raise GrammarError(f"response_format json_schema: {e}") from None
        bad, msgs = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tok)
        if bad:
            raise GrammarError(f"response_format json_schema is not usable: {msgs[0] if msgs else 'invalid'}")
        matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"response_format json_schema is not usable: {matcher.get_error()}")
        return JsonProcessor(matcher, tok.vocab_size)


class JsonProcessor:
    """An eoq logits processor (see eoq.engine.LogitsProcessor) for one generation."""

    def __init__(self, matcher: Any, vocab_size: int):
        self._m = matcher
        self._n_prompt: Optional[int] = None
        self._seen = 0
        self._mask = np.full(((vocab_size + 31) // 32,), -1, dtype=np.int32)

    def __call__(self, tokens: List[int], logits: np.ndarray) -> None:
        if self._n_prompt is None:
            self._n_prompt = len(tokens)  # the first call sees the prompt alone
            self._seen = len(tokens)
        for t in tokens[self._seen:]:
            self._m.consume_token(int(t))
        self._seen = len(tokens)
        if self._m.is_error():
            raise GrammarError(f"json_schema: {self._m.get_error()}")
        self._m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        n = logits.shape[0]
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[:n].astype(bool)
        if bits.shape[0] < n:
            bits = np.concatenate([bits, np.zeros(n - bits.shape[0], dtype=bool)])
        logits[~bits] = -np.inf
