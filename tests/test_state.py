"""State files (issue 14 item 3): a sequence saved and loaded back continues exactly; the file is
untrusted input (bad model, cache, n_ctx, corruption, truncation, fields rewritten with a valid
checksum) and always gives one EoqError, leaving the sequence empty."""
import random
import struct

import numpy as np
import pytest

from eoq import Engine, EoqError

TEXT = "The history of the city begins with a small settlement on the river, which grew " * 4


def checksum(data: bytes) -> int:
    """The container's checksum (engine/state_file.cpp state_checksum), to re-seal rewritten files."""
    M = (1 << 64) - 1

    def mix(h, w):
        h ^= w
        h = (h * 0x100000001B3) & M
        return h ^ (h >> 29)

    h = 0xCBF29CE484222325
    n8 = len(data) // 8 * 8
    for (w,) in struct.iter_unpack("<Q", data[:n8]):
        h = mix(h, w)
    tail = int.from_bytes(data[n8:], "little")
    return mix(mix(h, tail), len(data))


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<Q", checksum(body))


@pytest.fixture(scope="module")
def saved(smollm2_path, tmp_path_factory):
    """An f16 sequence after a prompt and 6 generated tokens, saved; and the uninterrupted run."""
    path = tmp_path_factory.mktemp("state") / "seq.eoqstate"
    with Engine(smollm2_path, n_ctx=512, n_threads=2) as e:
        prompt = e.tokenize(TEXT)
        first = e.generate(prompt, max_tokens=6, temperature=0)
        held = e.core.cached_tokens()
        logits = e.logits.copy()
        n = e.save_state(path)
        kv_bytes = e.compression_stats()["bytes"]
        cont = e.generate(held + [first.tokens[-1]], max_tokens=8, temperature=0)
    return dict(path=path, n=n, held=held, logits=logits, kv_bytes=kv_bytes, first=first, cont=cont)


def test_round_trip_continues_exactly(smollm2_path, saved):
    assert saved["path"].stat().st_size == saved["n"]
    # The file is the cache plus tokens, logits and a small header (logits: n_vocab floats).
    assert saved["n"] <= saved["kv_bytes"] * 1.05 + 49152 * 4
    with Engine(smollm2_path, n_ctx=512, n_threads=2, n_seq=2) as e:
        s = e.sequence(1)
        s.load_state(saved["path"])
        assert s.n_past == len(saved["held"]) and s.core.cached_tokens() == saved["held"]
        assert np.array_equal(s.logits, saved["logits"])
        c = s.generate(saved["held"] + [saved["first"].tokens[-1]], max_tokens=8, temperature=0)
        assert c.timings["prompt_cached_tokens"] == len(saved["held"])
        assert c.tokens == saved["cont"].tokens
        # A different n_ctx is fine as long as the tokens fit; sequence 0 of the Engine too.
        e.load_state(saved["path"])
        assert e.n_past == len(saved["held"])


def test_f32_round_trip_bit_exact(smollm2_path, tmp_path):
    with Engine(smollm2_path, n_ctx=128, n_threads=2, kv="f32") as e:
        toks = e.tokenize(TEXT)[:40]
        e.core.eval(toks[:30])
        e.save_state(tmp_path / "a")
        e.core.eval(toks[30:], all_logits=True)
        ref = e.core.all_logits()
        e.reset()
        e.load_state(tmp_path / "a")
        e.core.eval(toks[30:], all_logits=True)
        assert np.array_equal(e.core.all_logits(), ref)
        e.reset()
        assert e.save_state(tmp_path / "empty") > 0
        e.load_state(tmp_path / "empty")
        assert e.n_past == 0


def _expect_bad(e, path, match, code="format"):
    e.core.eval([1, 2, 3])  # something held: a failed load must empty it
    with pytest.raises(EoqError, match=match) as ei:
        e.load_state(path)
    assert ei.value.code == code
    assert e.n_past == 0


def test_wrong_model_cache_or_context(smollm2_path, saved, tmp_path):
    from tiny_models import write_tiny_llama

    with Engine(smollm2_path, n_ctx=512, n_threads=2, kv="f32") as e:
        _expect_bad(e, saved["path"], "saved with cache 'mode=f16")
    with Engine(smollm2_path, n_ctx=512, n_threads=2, kv_options={"seed": 7}) as e:
        _expect_bad(e, saved["path"], "seed=7")  # every knob is part of the configuration
    with Engine(smollm2_path, n_ctx=16, n_threads=2) as e:
        _expect_bad(e, saved["path"], "do not fit n_ctx|more than a state")
    m = write_tiny_llama(tmp_path / "tiny.gguf")
    with Engine(m.path if hasattr(m, "path") else tmp_path / "tiny.gguf", n_ctx=256, n_threads=1) as e:
        _expect_bad(e, saved["path"], "different model|more than a state")
    with Engine(smollm2_path, n_ctx=512, n_threads=2) as e:
        _expect_bad(e, tmp_path / "missing", "cannot open", code="io")
        (tmp_path / "junk").write_bytes(b"not a state file at all")
        _expect_bad(e, tmp_path / "junk", "bad magic")
        (tmp_path / "empty").write_bytes(b"")
        _expect_bad(e, tmp_path / "empty", "bad magic")
    with Engine(smollm2_path, n_ctx=512, n_threads=2, kv="eoq") as e:  # (compressed states: test_state_compressed.py)
        _expect_bad(e, saved["path"], "saved with cache 'mode=f16")


def test_fuzz_state_files(smollm2_path, saved, tmp_path):
    """Random corruption (caught by the checksum), truncation, and header fields rewritten with the
    checksum re-sealed (reaching the parser): always one EoqError, the sequence left empty."""
    data = saved["path"].read_bytes()
    body = data[:-8]
    rng = random.Random(1234)
    kv_len = struct.unpack_from("<I", body, 24)[0]
    tok_at = 28 + kv_len  # u32 n_tokens
    n_tok = struct.unpack_from("<I", body, tok_at)[0]
    logit_at = tok_at + 4 + 4 * n_tok
    pay_at = logit_at + 4 + 4 * 49152
    cases = []
    for _ in range(12):  # random byte flips
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(bytes(b))
    for cut in (9, 20, tok_at + 2, pay_at + 3, len(data) - 1):  # truncated
        cases.append(data[:cut])
    fields = [(8, "<I"), (12, "<I"), (16, "<Q"), (24, "<I"), (tok_at, "<I"), (logit_at, "<I"), (pay_at, "<Q")]
    for off, fmt in fields:  # header fields rewritten, checksum valid
        for v in (0, 1, 0xFFFFFFFF if fmt == "<I" else 0xFFFFFFFFFFFFFFFF, n_tok + 1, rng.getrandbits(31)):
            b = bytearray(body)
            struct.pack_into(fmt, b, off, v)
            if bytes(b) != body:
                cases.append(reseal(bytes(b)))
    b = bytearray(body)  # a token id out of range
    struct.pack_into("<i", b, tok_at + 4, 10**9)
    cases.append(reseal(bytes(b)))
    b = bytearray(body)  # a NaN logit
    struct.pack_into("<f", b, logit_at + 4, float("nan"))
    cases.append(reseal(bytes(b)))
    cases.append(reseal(body + b"\0"))  # trailing bytes
    with Engine(smollm2_path, n_ctx=512, n_threads=2) as e:
        for k, c in enumerate(cases):
            p = tmp_path / f"f{k}"
            p.write_bytes(c)
            e.core.eval([1, 2, 3])
            with pytest.raises(EoqError) as ei:
                e.load_state(p)
            assert ei.value.code == "format", (k, str(ei.value))
            assert e.n_past == 0
        e.load_state(saved["path"])  # and the good file still loads
        assert e.n_past == len(saved["held"])
