"""eoq-needle: the haystack builder, answer scoring, argument errors, and an end-to-end run on
the real SmolLM2 model."""
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import WIKITEXT

from eoq import needle as N

CTX = 1024
RESERVE = 8


@pytest.fixture(scope="module")
def engine(smollm2_path):
    """Tokenizer and chat template only: the builder never evaluates anything."""
    from eoq import Engine

    with Engine(smollm2_path, n_ctx=64, n_threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def corpus(wikitext):
    return N.load_sentences(wikitext), N.numbers_in(wikitext)


@pytest.fixture(scope="module")
def max_unit(engine, corpus):
    """The most tokens any filler sentence takes (115 on wikitext-2-test)."""
    return max(len(engine.tokenize(" " + u.text, add_special=False)) for u in corpus[0])


def case(engine, corpus, trial=0, depths=(0.1, 0.5, 0.9), ctx=CTX, seed=0, index=0):
    units, banned = corpus
    return N.build_case(engine, units, ctx, list(depths), seed, trial, index, RESERVE, banned)


# --- filler and needles -------------------------------------------------------------------

def test_load_sentences_undoes_wikitext():
    text = (" = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre "
            "actor . He had a guest @-@ starring role in 2000 . Boulter 's role was \" Craig \" , "
            "a 1 @,@ 485 lb part . \n = = Career = = \n In 2006 , he starred alongside Whishaw in "
            "a play ( a short one ) . \n")
    units = N.load_sentences(text)
    assert [u.text for u in units] == [
        "Robert Boulter is an English film, television and theatre actor.",
        "He had a guest-starring role in 2000.",
        "Boulter's role was \"Craig\", a 1,485 lb part.",
        "In 2006, he starred alongside Whishaw in a play (a short one).",
    ]
    assert [u.para_start for u in units] == [True, False, False, True]
    with pytest.raises(ValueError):
        N.load_sentences(" = Title = \n\n short . \n")


def test_make_needles_distinct_and_seeded():
    banned = {str(v) for v in range(3000, 9900)}  # leaves 9900..9999
    a = N.make_needles(N.haystack_rng(1, 2, 3), [0.1] * 20, avoid_text="Velmora", avoid_values=banned)
    b = N.make_needles(N.haystack_rng(1, 2, 3), [0.1] * 20, avoid_text="Velmora", avoid_values=banned)
    assert a == b
    assert len({n.key for n in a}) == 20 and len({n.value for n in a}) == 20
    for n in a:
        assert re.fullmatch(r"[A-Z][a-z]{4,}", n.key) and 9900 <= int(n.value) <= 9999
        assert n.value in n.sentence and n.key in n.sentence and n.key in n.question
    assert a != N.make_needles(N.haystack_rng(1, 2, 4), [0.1] * 20)


def test_needle_layout_covers_every_depth_equally():
    assert N.needle_depths(1, [0.1, 0.5, 0.9]) == [[0.1], [0.5], [0.9]]
    assert N.needle_depths(3, [0.1, 0.5, 0.9]) == [[0.1, 0.5, 0.9]]
    lay = N.needle_depths(2, [0.1, 0.5, 0.9])
    assert all(len(h) == 2 for h in lay)
    flat = [d for h in lay for d in h]
    assert sorted(flat) == [0.1, 0.1, 0.5, 0.5, 0.9, 0.9]
    assert N.needle_depths(4, [0.5]) == [[0.5] * 4]


def test_builder_with_word_counter():
    """The builder's contract with any token counter: never over budget, needles in order."""
    units = [N.Unit(f"Sentence number {i} has six words.", i % 3 == 0) for i in range(50)]

    def count(text):
        return len(text.split())

    needles = [N.Needle("Alpha", "1111", 0.0), N.Needle("Beta", "2222", 0.5),
               N.Needle("Gamma", "3333", 1.0)]
    h = N.build_haystack(units, count, 100, needles, start=45)
    assert h.text.startswith(needles[0].sentence)  # depth 0: before the first filler sentence
    assert h.text.rstrip().endswith(needles[2].sentence)  # depth 1: after the last
    assert [n.key for n in h.needles] == ["Alpha", "Beta", "Gamma"]
    filler = count(h.text) - sum(count(n.sentence) for n in needles)
    assert 100 - 7 < filler <= 100
    assert h.n_tokens == count(h.text)
    assert "Sentence number 45 " in h.text and "Sentence number 0 " in h.text  # wrapped around
    assert h == N.build_haystack(units, count, 100, needles, start=45)
    with pytest.raises(ValueError):
        N.build_haystack(units, count, -1, needles, start=0)


def test_case_deterministic_per_seed(engine, corpus):
    a, b = case(engine, corpus), case(engine, corpus)
    assert a.haystack == b.haystack and a.prompts == b.prompts
    c = case(engine, corpus, trial=1)
    assert c.haystack.text != a.haystack.text
    assert {n.key for n in c.haystack.needles}.isdisjoint({n.key for n in a.haystack.needles})
    d = case(engine, corpus, seed=1)
    assert d.haystack.text != a.haystack.text
    # The needles and the filler's start do not depend on the context: a larger one extends it.
    big = case(engine, corpus, ctx=2 * CTX)
    assert big.haystack.needles == a.haystack.needles and big.haystack.start == a.haystack.start


@pytest.mark.parametrize("ctx", [512, 1024, 4096])
def test_case_reaches_target_length(engine, corpus, max_unit, ctx):
    c = case(engine, corpus, ctx=ctx)
    # The filler stops before the sentence that would not fit: at most one sentence short.
    assert ctx - RESERVE - max_unit <= max(len(p) for p in c.prompts) <= ctx - RESERVE
    for p in c.prompts:
        assert ctx - RESERVE - max_unit - 16 <= len(p) <= ctx - RESERVE  # questions differ a bit
    # Each prompt is exactly what the chat template gives for the document and the question.
    for n, p in zip(c.haystack.needles, c.prompts):
        assert p == N.prompt_tokens(engine, c.haystack.text, n)
    assert abs(c.haystack.n_tokens - len(engine.tokenize(c.haystack.text, add_special=False))) <= 2


@pytest.mark.parametrize("trial", range(3))
def test_needles_intact_at_their_token_depths(engine, corpus, max_unit, trial):
    depths = (0.0, 0.25, 0.5, 0.9, 1.0)
    c = case(engine, corpus, trial=trial, depths=depths)
    doc = c.haystack.text
    doc_tokens = len(engine.tokenize(doc, add_special=False))
    needle_tokens = [len(engine.tokenize(" " + n.sentence, add_special=False))
                     for n in c.haystack.needles]
    filler_tokens = doc_tokens - sum(needle_tokens)
    assert [n.depth for n in c.haystack.needles] == list(depths)
    for i, (n, p) in enumerate(zip(c.haystack.needles, c.prompts)):
        assert doc.count(n.sentence) == 1 and doc.count(n.key) == 1
        # The needle's tokens appear unchanged in the prompt (no merge with its neighbours).
        sent = engine.tokenize(n.sentence if doc.startswith(n.sentence) else " " + n.sentence,
                               add_special=False)
        assert any(p[k:k + len(sent)] == sent for k in range(len(p) - len(sent) + 1)), n
        # Its position in real tokens: the filler before it is depth * the filler's tokens, up
        # to half a sentence (needles go between sentences) and a token per seam.
        at = len(engine.tokenize(doc[:doc.index(n.sentence)], add_special=False))
        filler_before = at - sum(needle_tokens[:i])
        assert abs(filler_before - n.depth * filler_tokens) <= max_unit / 2 + 2, (n, at)
        assert abs(c.haystack.token_depth(i) - at / doc_tokens) <= 0.01


def test_context_too_small(engine, corpus):
    with pytest.raises(ValueError, match="too small"):
        case(engine, corpus, ctx=100, depths=[0.5] * 8)


# --- scoring ------------------------------------------------------------------------------

@pytest.mark.parametrize("answer,ok", [
    ("4721", True), ("4721.", True), (" 4721", True), ("It is 4721!", True), ("4,721", True),
    ("4 721", True), ("The number is 1234 or 4721", True), ("\u202f4721", True),
    ("47210", False), ("14721", False), ("472", False), ("4 7 2 1", False), ("", False),
    ("four thousand", False), ("1234", False),
])
def test_is_correct(answer, ok):
    assert N.is_correct(answer, "4721") is ok


def test_markdown_table():
    recs = [dict(mode=m, ctx=c, depth=d, correct=ok, prompt_ms=500.0)
            for m, c, d, ok in [("f16", 512, 0.1, True), ("f16", 512, 0.9, False),
                                ("f16", 512, 0.9, True), ("q4_0", 512, 0.1, False)]]
    t = N.markdown_table(recs).splitlines()
    assert t[0] == "| KV cache | ctx | depth 0.1 | depth 0.9 | accuracy | prefill s |"
    assert t[1] == "|---|---|---|---|---|---|"
    assert t[2] == "| f16 | 512 | 1/1 | 1/2 | 67% | 1.5 |"
    assert t[3] == "| q4_0 | 512 | 0/1 | - | 0% | 0.5 |"


# --- command line -------------------------------------------------------------------------

def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_needle(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "eoq.needle", *map(str, args)], capture_output=True,
                          env=_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("eoq-needle: error: "), err
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["-c", "1024"], "-f/--file"),
    (["-f", "x.txt", "--bogus"], "unrecognized arguments"),
    (["-c", "1024,abc"], "'abc' is not a valid value"),
    (["-c", "1024,,2048"], "comma-separated"),
    (["-c", "64"], "too small"),
    (["--depths", "0.1,1.5"], "1.5 is not a fraction"),
    (["--depths", "x"], "--depths"),
    (["--kv", "f16,f17"], "'f17' is not a KV cache mode"),
    (["--kv", "eoq2:ring"], "not key=value"),
    (["--kv", "eoq2:ring=x"], "--kv"),
    (["--kv", "f16,f16"], "twice"),
    (["--needles", "0"], "--needles"),
    (["--trials", "0"], "--trials"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["-o", "xml"], "invalid choice"),
    (["-t", "0"], "--threads"),
])
def test_usage_errors(args, needle, capsys):
    """Checked before anything is read or loaded (x.txt does not exist)."""
    if "-f" not in args and needle != "-f/--file":
        args = ["-f", "x.txt", *args]
    assert N.main(args) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert needle in _one_error_line(cap.err)


def test_usage_error_subprocess():
    r = run_needle("-f", "x.txt", "--depths", "2")
    assert r.returncode == 2 and r.stdout == b""
    assert "--depths" in _one_error_line(r.stderr.decode())


def test_runtime_error_exit_1(tmp_path, smollm2_path, capsys):
    assert N.main(["-m", smollm2_path, "-f", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in _one_error_line(capsys.readouterr().err)


# --- end to end on SmolLM2 ----------------------------------------------------------------

# At 512 tokens, one needle per haystack, f16 SmolLM2-135M-Instruct answered every question
# right over seeds 0..4 x 3 trials x depths 0.1/0.5/0.9 (45 questions), so correctness is asserted.
E2E = ["-c", 512, "--kv", "f16", "--needles", 1, "--trials", 1, "-t", 2]


def test_end_to_end_json(smollm2_path, wikitext):  # wikitext: asserts that the file exists
    r = run_needle("-m", smollm2_path, "-f", WIKITEXT, *E2E, "--depths", "0.1,0.5,0.9", "--seed", 3,
                   "-o", "json")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    recs = json.loads(r.stdout.decode())
    assert len(recs) == 3
    for rec, depth in zip(recs, (0.1, 0.5, 0.9)):
        assert {"mode", "ctx", "depth", "trial", "key", "expected", "answer", "correct"} <= set(rec)
        assert rec["mode"] == "f16" and rec["ctx"] == 512 and rec["depth"] == depth
        assert rec["trial"] == 0 and re.fullmatch(r"\d{4}", rec["expected"])
        assert isinstance(rec["answer"], str) and isinstance(rec["correct"], bool)
        assert rec["correct"] == N.is_correct(rec["answer"], rec["expected"])
        assert 512 - 8 - 128 <= rec["prompt_tokens"] <= 512 - 8  # max_unit: 115
        assert rec["correct"], rec
    assert "done in" in err


def test_end_to_end_markdown(smollm2_path, wikitext):
    r = run_needle("-m", smollm2_path, "-f", WIKITEXT, *E2E, "--depths", 0.5, "--seed", 4)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().strip().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert table == ["| KV cache | ctx | depth 0.5 | accuracy | prefill s |", "|---|---|---|---|---|",
                     table[2]]
    assert re.fullmatch(r"\| f16 \| 512 \| 1/1 \| 100% \| \d+\.\d \|", table[2]), table[2]
