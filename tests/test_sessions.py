"""Sessions (issue 14): several sequences on one loaded model decoded in batched steps, prefix
reuse through KVCache::truncate, chunked prefill with progress and cancellation, two threads on
one sequence. References are sequential runs of the same engine code on one sequence (the
batched step's products do not depend on the batch size, so outputs must match bit for bit)."""
import threading

import numpy as np
import pytest

from eoq import Engine, EoqError

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 4,"]
N_GEN = 12


def _greedy_reference(eng, prompts, n_gen):
    """Greedy tokens of each prompt run alone on sequence 0 from an empty cache."""
    out = []
    for p in prompts:
        eng.reset()
        out.append(eng.generate(p, max_tokens=n_gen, temperature=0).tokens)
    eng.reset()
    return out


def _run_threads(fns):
    results, errors = [None] * len(fns), []

    def wrap(k, f):
        try:
            results[k] = f()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(k, f)) for k, f in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    return results


@pytest.fixture(scope="module", params=["f16", "eoq"])
def eng4(request, smollm2_path):
    with Engine(smollm2_path, n_ctx=512, n_threads=2, kv=request.param, n_seq=4, n_batch=64) as e:
        yield e


def test_eval_batch_logits_equal_sequential_bit_for_bit(eng4):
    """One explicit step over 4 sequences gives each the logits of its own sequential run."""
    core = eng4.core
    toks = [eng4.tokenize(p) for p in PROMPTS]
    ref = []
    for t in toks:
        core.reset()
        core.eval(t)
        rows = [core.logits()]
        for _ in range(4):
            core.eval([int(np.argmax(rows[-1]))])
            rows.append(core.logits())
        ref.append(rows)
    seqs = [core.sequence(i) for i in range(4)]
    for s in seqs:
        s.reset()
    core.eval_batch([0, 1, 2, 3], toks)  # 4 prompts of different lengths in one step
    for k in range(5):
        for i, s in enumerate(seqs):
            assert np.array_equal(s.logits(), ref[i][k]), (i, k)
        if k < 4:
            core.eval_batch([3, 1, 0, 2], [[int(np.argmax(seqs[i].logits()))] for i in (3, 1, 0, 2)])
    assert [s.n_past for s in seqs] == [len(t) + 4 for t in toks]


def test_unsegmented_backend_path(smollm2_path):
    """A backend without segmented steps (CUDA today; here EOQ_SEGMENTED_STEPS=0) runs a
    multi-sequence step one sequence at a time: the same logits, bit for bit."""
    import subprocess
    import sys

    code = f"""
import numpy as np
from eoq import _core
e = _core.Engine({smollm2_path!r}, n_ctx=128, n_threads=2, n_seq=3)
toks = [e.tokenize(p) for p in {PROMPTS[:3]!r}]
ref = []
for t in toks:
    e.reset(); e.eval(t); e.eval([7]); ref.append(e.logits())
e.reset()
e.eval_batch([0, 1, 2], toks)
e.eval_batch([2, 0, 1], [[7], [7], [7]])
print(all(np.array_equal(e.sequence(i).logits(), ref[i]) for i in range(3)), e.step_stats()["max_segments"])
"""
    import os

    env = dict(os.environ, EOQ_SEGMENTED_STEPS="0", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["True", "3"]


def test_concurrent_streams_batch_and_match_sequential(eng4):
    ref = _greedy_reference(eng4, PROMPTS, N_GEN)
    seqs = [eng4.sequence(i) for i in range(4)]
    for s in seqs:
        s.reset()
    before = eng4.core.step_stats()

    def stream(k):
        def f():
            st = seqs[k].generate(PROMPTS[k], max_tokens=N_GEN, temperature=0, stream=True)
            text = "".join(st)
            return st.completion, text

        return f

    out = _run_threads([stream(k) for k in range(4)])
    after = eng4.core.step_stats()
    for k, (c, text) in enumerate(out):
        assert c.tokens == ref[k], k
        assert text == c.text
    # The decode tokens shared steps: far fewer steps than tokens, and some step held all four.
    # (Steps: 4 prompts + 4 x (N_GEN - 1) decode tokens if none were batched.)
    steps = after["steps"] - before["steps"]
    assert after["max_segments"] == 4
    assert steps < 0.75 * (4 + 4 * (N_GEN - 1)), (steps, after)


def test_close_one_stream_leaves_the_others(eng4):
    ref = _greedy_reference(eng4, PROMPTS[:2], N_GEN)
    a, b = eng4.sequence(1), eng4.sequence(2)
    got = {}

    def closer():
        s = a.generate(PROMPTS[0], max_tokens=N_GEN, temperature=0, stream=True)
        next(s)
        next(s)
        s.close()
        got["closed_n_past"] = a.n_past
        # The sequence is free again at once, for this thread and others.
        got["again"] = a.generate(PROMPTS[0], max_tokens=N_GEN, temperature=0).tokens

    def runner():
        s = b.generate(PROMPTS[1], max_tokens=N_GEN, temperature=0, stream=True)
        list(s)
        return s.completion.tokens

    _, toks_b = _run_threads([closer, runner])
    assert toks_b == ref[1]
    assert got["again"] == ref[0]


def test_long_prefill_interleaves_with_decode(smollm2_path):
    """A 490-token prompt (chunks of 64) on one sequence while another decodes: both equal
    their sequential runs, and the decode tokens rode along with the prefill's chunks."""
    long_prompt = " ".join(f"item{i}" for i in range(150))
    with Engine(smollm2_path, n_ctx=1024, n_threads=2, n_seq=2, n_batch=64) as e:
        ref_long = _greedy_reference(e, [long_prompt], 4)[0]
        ref_short = _greedy_reference(e, [PROMPTS[1]], 24)[0]
        n_long = len(e.tokenize(long_prompt))
        assert n_long > 7 * 64
        before = e.core.step_stats()
        started = threading.Event()

        def decoder():
            def on():
                s = e.sequence(0).generate(PROMPTS[1], max_tokens=24, temperature=0, stream=True)
                out = []
                for piece in s:
                    out.append(piece)
                    started.set()
                return s.completion.tokens
            return on()

        def prefiller():
            started.wait(30)
            return e.sequence(1).generate(long_prompt, max_tokens=4, temperature=0).tokens

        toks_short, toks_long = _run_threads([decoder, prefiller])
        after = e.core.step_stats()
        assert toks_short == ref_short and toks_long == ref_long
        # Without interleaving: (n_long/64 chunks) + 24 decode steps + ~4 more.
        steps = after["steps"] - before["steps"]
        chunks = -(-n_long // 64)
        assert steps < chunks + 24 + 4, (steps, chunks)


@pytest.mark.parametrize("kv,opts", [("f16", {}), ("f32", {}), ("q8_0", {}),
                                     ("eoq", {"block": 16}), ("turbo3", {"block": 16, "ring": 8}),
                                     ("eoq2", {"block": 16, "ring": 0, "tail_bits": 4, "window": 6, "norm_bits": 8}),
                                     ("turbo2", {"block": 16, "ring": 4, "tail_bits": 3, "window": 30})])
def test_truncate_then_eval_equals_fresh(smollm2_path, kv, opts):
    """Cut a sequence at many positions and evaluate the rest again: the logits of the
    continuation equal a fresh run bit for bit (the cache's state equals a fresh run's)."""
    text = "In 1492 Columbus sailed the ocean blue, and many other things happened in that year " * 2
    with Engine(smollm2_path, n_ctx=256, n_threads=2, kv=kv, kv_options=opts) as e:
        toks = e.tokenize(text)
        n = len(toks)
        full = e.eval_logits(toks)
        stats_full = e.compression_stats()
        core = e.core
        for cut in (n - 1, n - 7, 37, 16, 5, 3, 0):
            core.reset()
            core.eval(toks)
            kept = core.truncate(cut)
            assert 0 <= kept <= cut
            if kv in ("f16", "f32", "q8_0"):
                assert kept == cut  # exact and per-token caches cut anywhere
            elif kv == "eoq":  # ring 0: past the 4 sinks, blocks of 16 sealed when full
                in_ring = cut <= 4 or (cut - 4) // 16 == (n - 4) // 16  # no sealed block dropped
                assert kept == (cut if in_ring else 4 + (cut - 4) // 16 * 16)
            assert core.n_past == kept == core.kv_info()["n_tokens"]
            assert core.cached_tokens() == toks[:kept]
            core.eval(toks[kept:], all_logits=True)
            assert np.array_equal(core.all_logits(), full[kept:]), (cut, kept)
            assert e.compression_stats()["bytes"] == stats_full["bytes"]
        with pytest.raises(EoqError, match="cannot keep"):
            core.truncate(n + 1)


def test_prefix_reuse_longest_common_prefix(smollm2_path):
    with Engine(smollm2_path, n_ctx=256, n_threads=2) as e:
        a = e.tokenize("The capital of Italy is Rome. The capital of Spain is")
        b = a[:-3] + e.tokenize(" Portugal is", add_special=False)
        e.generate(a, max_tokens=3, temperature=0)
        c = e.generate(b, max_tokens=6, temperature=0)
        common = next(i for i in range(len(a)) if a[i] != b[i])
        assert c.timings["prompt_cached_tokens"] == common
        e.reset()
        fresh = e.generate(b, max_tokens=6, temperature=0)
        assert fresh.timings["prompt_cached_tokens"] == 0 and fresh.tokens == c.tokens
        # The whole prompt held already: its last token is evaluated again.
        again = e.generate(b[:5], max_tokens=1, temperature=0)
        assert again.timings["prompt_cached_tokens"] == 4


def test_sequence_api_and_errors(smollm2_path):
    with Engine(smollm2_path, n_ctx=128, n_threads=2, n_seq=3) as e:
        assert e.n_seq == 3
        s = e.sequence(2)
        assert e.sequence(2) is s and s.index == 2
        assert s.tokenize("Hello") == e.tokenize("Hello")
        assert s.n_ctx == 128 and s.n_vocab == e.n_vocab
        s.generate("Hello", max_tokens=2, temperature=0)
        assert s.n_past > 0 and e.n_past == 0  # its own cache
        assert s.compression_stats()["n_tokens"] == s.n_past
        s.reset()
        assert s.n_past == 0
        assert e.sequence(0).generate("Hi", max_tokens=1, temperature=0).tokens == \
            e.generate("Hi", max_tokens=1, temperature=0).tokens
        for bad in (-1, 3, "1", 1.0, True):
            with pytest.raises(EoqError, match="sequence index"):
                e.sequence(bad)
        with pytest.raises(EoqError, match="out of range"):
            e.core.sequence(7)
        with pytest.raises(EoqError, match="appears twice"):
            e.core.eval_batch([1, 1], [[1], [2]])
        with pytest.raises(EoqError, match="context is full"):
            e.core.eval_batch([1], [[1] * 100 + [2] * 28 + [3]])
    with pytest.raises(ValueError, match="closed"):
        s.generate("Hello", max_tokens=1)
    for bad in (0, 257, "2", None):
        with pytest.raises(EoqError, match="n_seq"):
            Engine(smollm2_path, n_ctx=64, n_seq=bad)


def test_two_threads_on_one_sequence_are_serialized(smollm2_path):
    """A second thread's generate on a sequence that another thread's stream holds waits for it
    (no "interrupted" error); both get their sequential results."""
    with Engine(smollm2_path, n_ctx=256, n_threads=2) as e:
        ref = _greedy_reference(e, PROMPTS[:2], N_GEN)
        first_piece = threading.Event()
        order = []

        def holder():
            s = e.generate(PROMPTS[0], max_tokens=N_GEN, temperature=0, stream=True)
            for _ in s:
                first_piece.set()
            order.append("holder")
            return s.completion.tokens

        def second():
            first_piece.wait(30)
            c = e.generate(PROMPTS[1], max_tokens=N_GEN, temperature=0)
            order.append("second")
            return c.tokens

        a, b = _run_threads([holder, second])
        assert a == ref[0] and b == ref[1]
        assert order == ["holder", "second"]
        # The same thread taking its own unfinished stream over still interrupts it.
        s = e.generate(PROMPTS[0], max_tokens=N_GEN, temperature=0, stream=True)
        next(s)
        e.generate("Hello", max_tokens=1, temperature=0)
        with pytest.raises(EoqError, match="interrupted"):
            list(s)


def test_prefill_progress_and_cancel(smollm2_path):
    prompt = " ".join(f"word{i}" for i in range(200))
    with Engine(smollm2_path, n_ctx=1024, n_threads=2, n_batch=64) as e:
        n = len(e.tokenize(prompt))
        calls = []
        ref = e.generate(prompt, max_tokens=3, temperature=0,
                         progress=lambda d, t: calls.append((d, t))).tokens
        assert calls == [(64 * k, n) for k in range(1, -(-n // 64))]
        e.reset()

        def stop_after_two(done, total):
            return done < 128

        with pytest.raises(EoqError) as ei:
            e.generate(prompt, max_tokens=3, temperature=0, progress=stop_after_two)
        assert ei.value.code == "cancelled"
        assert e.n_past == 128  # usable at the last full chunk
        c = e.generate(prompt, max_tokens=3, temperature=0)
        assert c.timings["prompt_cached_tokens"] == 128 and c.tokens == ref

        # KeyboardInterrupt raised in the callback (as Ctrl-C is, at a chunk boundary) stops it
        # the same way and propagates as itself.
        e.reset()

        def interrupt(done, total):
            if done >= 192:
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            e.generate(prompt, max_tokens=3, temperature=0, progress=interrupt)
        assert e.n_past == 192
        assert e.generate(prompt, max_tokens=3, temperature=0).tokens == ref


def test_estimate_memory(smollm2_path, wikitext):
    est = Engine.estimate_memory(smollm2_path, n_ctx=4096, kv="f16", n_seq=2)
    assert est["kv_bytes"] == 2 * 2 * 30 * 3 * 4096 * 64 * 2 and est["kv_bits_per_entry"] == 16.0
    assert est["n_ctx_train"] == 8192 and est["fits"]
    import os
    assert est["weights"] == sum(t["nbytes"] for t in __import__("eoq")._core.GGUFFile(smollm2_path).tensors)
    assert est["weights"] < os.path.getsize(smollm2_path)
    # A compressed cache: the estimate bounds what a real text of that length takes, closely.
    with Engine(smollm2_path, n_ctx=2100, n_threads=2, kv="eoq") as e:
        toks = e.tokenize(wikitext[:20000])[:2052]  # 4 sinks + 8 sealed blocks of 256
        e.core.eval(toks)
        real = e.compression_stats()["bytes"]
    est = Engine.estimate_memory(smollm2_path, n_ctx=2052, kv="eoq")
    assert "upper bound" in est["kv_basis"]
    assert real <= est["kv_bytes"] <= 1.15 * real, (real, est["kv_bytes"])
    with pytest.raises(EoqError, match="n_seq"):
        Engine.estimate_memory(smollm2_path, n_seq=0)
    with pytest.raises(FileNotFoundError):
        Engine.estimate_memory("/nonexistent.gguf")
