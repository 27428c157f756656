"""The Python Engine (eoq.Engine) end to end on SmolLM2-135M, plus a tiny random model for the
UTF-8 streaming edge cases. Generations are kept short: the test machine is slow."""
import numpy as np
import pytest

import eoq
from eoq import Completion, Engine, EoqError

CAPITAL = "The capital of France is"


@pytest.fixture(scope="module")
def eng(smollm2_path):
    with Engine(smollm2_path, n_ctx=256, n_threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def capital_greedy(eng):
    return eng.generate(CAPITAL, max_tokens=8, temperature=0)


def test_package_exports():
    for name in ("Engine", "Completion", "EoqError", "default_model_path"):
        assert name in eoq.__all__ and hasattr(eoq, name)
    assert issubclass(EoqError, ValueError)


def test_greedy_is_deterministic(eng, capital_greedy):
    c1 = capital_greedy
    c2 = eng.generate(CAPITAL, max_tokens=8, temperature=0)
    assert isinstance(c1, Completion)
    assert c1.tokens == c2.tokens and c1.text == c2.text
    assert len(c1.tokens) == 8 and c1.finish_reason == "length"
    assert "Paris" in c1.text
    n_prompt = len(eng.tokenize(CAPITAL))
    assert c1.usage == {"prompt_tokens": n_prompt, "completion_tokens": 8, "total_tokens": n_prompt + 8}
    assert c1.text == eng.detokenize(c1.tokens)
    for k in ("load_ms", "prompt_ms", "prompt_tokens_per_s", "generate_ms", "tokens_per_s"):
        assert c1.timings[k] > 0, k


def test_seed_reproducibility(eng):
    kw = dict(max_tokens=8, temperature=0.8, top_k=40, top_p=0.95)
    a = eng.generate("Once upon a time", seed=1234, **kw)
    b = eng.generate("Once upon a time", seed=1234, **kw)
    assert a.tokens == b.tokens and a.seed == b.seed == 1234
    # A random seed is reported and reproduces its own output.
    r = eng.generate("Once upon a time", **kw)
    assert isinstance(r.seed, int) and r.seed >= 0
    assert eng.generate("Once upon a time", seed=r.seed, **kw).tokens == r.tokens
    # Different seeds do not all give the same text (with 40 candidates per step).
    outs = {tuple(eng.generate("Once upon a time", seed=s, temperature=1.5, top_k=0, top_p=1.0,
                               min_p=0.0, max_tokens=4).tokens) for s in (1, 2, 3)}
    assert len(outs) > 1


def test_stream_matches_non_stream(eng, capital_greedy):
    s = eng.generate(CAPITAL, max_tokens=8, temperature=0, stream=True)
    assert s.completion is None
    pieces = list(s)
    assert len(pieces) > 1
    assert "".join(pieces) == capital_greedy.text
    assert s.completion is not None
    assert s.completion.tokens == capital_greedy.tokens
    assert s.completion.text == capital_greedy.text
    assert s.completion.finish_reason == "length"


def test_stop_strings(eng, capital_greedy):
    full = capital_greedy.text  # " Paris.\n\nThe answer is:" or similar
    assert "Paris." in full
    # A stop string spanning two tokens (" Paris" + "."): text cut before it, not included.
    c = eng.generate(CAPITAL, max_tokens=8, temperature=0, stop="ris.")
    assert c.finish_reason == "stop"
    assert c.text == full[:full.index("ris.")]
    s = eng.generate(CAPITAL, max_tokens=8, temperature=0, stop=["zzz", "ris."], stream=True)
    pieces = list(s)
    assert "".join(pieces) == c.text and s.completion.finish_reason == "stop"
    assert all("ris" not in p for p in pieces)
    # The earliest of several stop strings wins.
    c2 = eng.generate(CAPITAL, max_tokens=8, temperature=0, stop=[".", "Paris"])
    assert c2.text == full[:full.index("Paris")] and c2.finish_reason == "stop"
    # A stop string that never appears changes nothing; a held-back partial match is released.
    c3 = eng.generate(CAPITAL, max_tokens=8, temperature=0, stop=["Paris!", "answer is:x"])
    assert c3.text == full and c3.finish_reason == "length"


def test_max_tokens(eng):
    c0 = eng.generate(CAPITAL, max_tokens=0, temperature=0)
    assert c0.tokens == [] and c0.text == "" and c0.finish_reason == "length"
    c3 = eng.generate(CAPITAL, max_tokens=3, temperature=0)
    assert len(c3.tokens) == 3 and c3.finish_reason == "length"
    assert c3.usage["completion_tokens"] == 3


def test_chat_stops_at_eos(eng):
    msgs = [{"role": "user", "content": "What is the capital of Germany?"}]
    c = eng.chat(msgs, max_tokens=48, temperature=0)
    assert c.text.strip() and "Berlin" in c.text
    assert c.finish_reason == "stop"
    assert eng.eos not in c.tokens and "<|im_end|>" not in c.text
    rendered = eng.apply_chat_template(msgs)
    assert rendered.endswith("<|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n"
                             "<|im_start|>assistant\n")
    toks = eng.chat_tokens(msgs)
    assert toks[0] == eng.tokenize("<|im_start|>", add_special=False, parse_special=True)[0]
    assert c.usage["prompt_tokens"] == len(toks)


def test_echo(eng, capital_greedy):
    c = eng.generate(CAPITAL, max_tokens=8, temperature=0, echo=True)
    assert c.text == CAPITAL + capital_greedy.text
    assert c.tokens == capital_greedy.tokens


def test_token_ids_prompt(eng, capital_greedy):
    ids = eng.tokenize(CAPITAL)
    c = eng.generate(ids, max_tokens=8, temperature=0)
    assert c.tokens == capital_greedy.tokens
    with pytest.raises(EoqError) as ei:
        eng.generate([eng.n_vocab], max_tokens=1)
    assert ei.value.code == "invalid_arg"


def test_context_overflow(smollm2_path):
    with Engine(smollm2_path, n_ctx=16, n_threads=2) as e:
        assert e.n_ctx == 16
        long_prompt = "one two three four five six seven eight nine ten eleven twelve thirteen " \
                      "fourteen fifteen sixteen seventeen"
        assert len(e.tokenize(long_prompt)) >= 16
        with pytest.raises(EoqError) as ei:
            e.generate(long_prompt, max_tokens=4)
        assert ei.value.code == "context_full"
        assert e.n_past == 0  # refused before computing anything
        # Exactly n_ctx tokens: no room to generate.
        ids = e.tokenize("word " * 40)[:16]
        with pytest.raises(EoqError, match="context"):
            e.generate(ids)
        # Unlimited generation stops when the context is full.
        prompt = e.tokenize("Count: 1, 2, 3,")
        c = e.generate(prompt, max_tokens=None, temperature=0)
        assert c.finish_reason == "length"
        assert c.usage["total_tokens"] == 16
        c = e.generate(prompt, max_tokens=-1, temperature=0)
        assert c.usage["total_tokens"] == 16
        with pytest.raises(EoqError) as ei:
            e.eval_logits(e.tokenize("word " * 40)[:17])
        assert ei.value.code == "context_full"


@pytest.mark.parametrize("kw, word", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.1), "min_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(max_tokens=-5), "max_tokens"),
    (dict(max_tokens=2.0), "max_tokens"),
    (dict(max_tokens="8"), "max_tokens"),
    (dict(seed=-7), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(stop=5), "stop"),
    (dict(stop=["ok", 3]), "stop"),
])
def test_invalid_parameters(eng, kw, word):
    with pytest.raises(EoqError, match=word) as ei:
        eng.generate(CAPITAL, **kw)
    assert ei.value.code == "invalid_arg"


def test_invalid_prompts(eng):
    with pytest.raises(EoqError, match="empty"):
        eng.generate("")  # SmolLM2 adds no BOS: nothing to evaluate
    with pytest.raises(EoqError, match="empty"):
        eng.generate([])
    with pytest.raises(EoqError):
        eng.generate(b"bytes")


def test_engine_arguments(smollm2_path, tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        Engine(smollm2_path, device="cuda")
    with pytest.raises(FileNotFoundError):
        Engine(tmp_path / "missing.gguf")
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(open(smollm2_path, "rb").read(4096))
    with pytest.raises(EoqError):
        Engine(bad)
    with pytest.raises(EoqError, match="n_threads"):
        Engine(smollm2_path, n_threads=0)
    with pytest.raises(EoqError, match="n_ctx"):
        Engine(smollm2_path, n_ctx=-1)


def test_tokenize_detokenize(eng):
    text = "Hello, world! Café ☕ 123"
    ids = eng.tokenize(text)
    assert all(isinstance(i, int) for i in ids)
    assert eng.detokenize(ids) == text
    sp = eng.tokenize("<|im_start|>user", add_special=False, parse_special=True)
    assert sp[0] == 1 and len(sp) == 2
    assert len(eng.tokenize("<|im_start|>user", add_special=False, parse_special=False)) > 2
    assert eng.detokenize(sp, special=True) == "<|im_start|>user"


def test_eval_logits_and_logits(eng):
    ids = eng.tokenize(CAPITAL + " Paris.")
    all_l = eng.eval_logits(ids)
    assert all_l.shape == (len(ids), eng.n_vocab) and all_l.dtype == np.float32
    assert np.allclose(all_l[-1], eng.logits, atol=1e-4)
    # Row i predicts token i+1: " Paris" after "... is".
    paris = eng.tokenize(" Paris", add_special=False)[0]
    assert int(np.argmax(all_l[len(ids) - 3])) == paris
    # Logits of a prefix evaluated alone equal the same rows of the longer evaluation.
    part = eng.eval_logits(ids[:3])
    assert np.allclose(part, all_l[:3], atol=1e-3)


def test_prefix_reuse_gives_the_same_result(eng):
    base = eng.tokenize("The capital of Italy is Rome. The capital of Spain is")
    eng.generate(base, max_tokens=2, temperature=0)  # cache holds base + 1 generated token
    longer = base + eng.tokenize(" Madrid. The capital of Germany is", add_special=False)
    c_reused = eng.generate(longer, max_tokens=6, temperature=0)
    assert c_reused.timings["prompt_cached_tokens"] >= len(base)  # + the matching generated token
    eng.reset()
    c_fresh = eng.generate(longer, max_tokens=6, temperature=0)
    assert c_fresh.timings["prompt_cached_tokens"] == 0
    assert c_reused.tokens == c_fresh.tokens
    # An unrelated prompt starts from an empty cache.
    c = eng.generate("Hello", max_tokens=1, temperature=0)
    assert c.timings["prompt_cached_tokens"] == 0


def test_stream_invalidated_by_later_call(eng):
    s = eng.generate(CAPITAL, max_tokens=8, temperature=0, stream=True)
    first = next(s)
    assert first
    eng.generate("Hello", max_tokens=1, temperature=0)
    with pytest.raises(EoqError, match="interrupted"):
        list(s)


def test_multibyte_stream_never_splits_characters(eng):
    # SmolLM2 writes emoji as 3 tokens (f0 9f | 92 | xx): none of those pieces is valid UTF-8.
    s = eng.generate("Here are some emoji: 😀 🎉 🚀", max_tokens=12, temperature=0, stream=True)
    pieces = list(s)
    toks = s.completion.tokens
    raw = [eng.core.token_to_piece(t) for t in toks]

    def valid(b):
        try:
            b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    assert any(not valid(b) for b in raw), "the test needs tokens that split a character"
    full = b"".join(raw).decode("utf-8", errors="replace")
    assert "".join(pieces) == full == s.completion.text
    assert any(ord(ch) > 0xFFFF for ch in full)  # an emoji made it through whole
    for p in pieces:
        assert p and "\ufffd" not in p
        p.encode("utf-8")  # no lone surrogates


def test_utf8_stream_on_random_bytes(tmp_path):
    # A random tiny model emits arbitrary byte tokens (0..255): incomplete and invalid sequences.
    from tiny_models import write_tiny_llama

    m = write_tiny_llama(tmp_path / "tiny.gguf")
    with Engine(m.path if hasattr(m, "path") else tmp_path / "tiny.gguf", n_ctx=128, n_threads=1) as e:
        s = e.generate("Once upon a time", max_tokens=100, temperature=2.0, top_k=0, top_p=1.0,
                       min_p=0.0, seed=7, stream=True)
        pieces = list(s)
        c = s.completion
        raw = b"".join(e.core.token_to_piece(t) for t in c.tokens)
        assert "".join(pieces) == raw.decode("utf-8", errors="replace") == c.text
        assert any(b >= 0x80 for b in raw)
        for p in pieces:
            p.encode("utf-8")


def test_compression_stats_metadata_and_close(smollm2_path):
    e = Engine(smollm2_path, n_ctx=64, n_threads=1)
    e.generate("Hi", max_tokens=2, temperature=0)
    st = e.compression_stats()
    assert st["mode"] == "f16" and st["n_tokens"] > 0 and st["bytes"] > 0
    assert st["bits_per_entry"] == pytest.approx(16.0)
    assert e.metadata("general.architecture") == "llama"
    assert e.metadata("llama.context_length") == 8192
    assert e.metadata("no.such.key") is None
    assert e.n_vocab == 49152 and e.n_ctx == 64
    e.close()
    with pytest.raises(ValueError, match="closed"):
        e.generate("Hi", max_tokens=1)
    e.close()  # idempotent
    with Engine(smollm2_path, n_ctx=32, n_threads=1) as e2:
        assert e2.generate("Hi", max_tokens=1, temperature=0).tokens
    with pytest.raises(ValueError, match="closed"):
        e2.tokenize("x")


def test_default_model(smollm2_path, tmp_path, monkeypatch):
    from eoq.models import DEFAULT_MODEL_FILE

    (tmp_path / DEFAULT_MODEL_FILE).symlink_to(__import__("os").path.abspath(smollm2_path))
    monkeypatch.setenv("EOQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("EOQ_PYPI_URL", "http://127.0.0.1:9/none")  # must not be needed
    with Engine(n_ctx=32, n_threads=1) as e:
        assert e.model_path.endswith(DEFAULT_MODEL_FILE)
        assert e.n_vocab == 49152


def test_allocation_that_cannot_succeed_is_a_clear_error(tmp_path):
    # A cache larger than the machine's memory is refused before loading (not std::bad_alloc).
    from tiny_models import write_tiny_llama
    from eoq import EoqError, _core

    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, "F32")
    with pytest.raises(EoqError, match=r"needs \d+ bytes .* of memory"):
        _core.Engine(str(path), n_ctx=2_000_000_000, kv="f32")
