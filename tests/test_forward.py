"""The engine's logits against the independent NumPy reference (tests/ref_llama.py), on tiny
random models of every weight type and on SmolLM2 with real text."""
import numpy as np
import pytest

from eoq import _core
from ref_llama import RefLlama
from tiny_models import SUPPORTED_TYPES, write_tiny_llama

PROMPT_TOKENS = [5, 77, 300, 12, 99, 250, 31, 64, 7, 200, 150, 3, 42, 111, 222, 17]


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def tiny(tiny_dir, wtype="F32", **kw):
    name = wtype + "".join(f"_{k}{v}" for k, v in sorted(kw.items())) + ".gguf"
    path = tiny_dir / name
    if not path.exists():
        write_tiny_llama(path, wtype, **kw)
    return str(path)


@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
def test_tiny_model_logits_match_reference(tiny_dir, wtype):
    path = tiny(tiny_dir, wtype)
    ref = RefLlama.load(path).forward(PROMPT_TOKENS)  # float64 arithmetic
    e = _core.Engine(path, n_ctx=64, n_threads=2, kv="f32")
    e.eval(PROMPT_TOKENS, all_logits=True)
    got = e.all_logits()
    assert got.shape == ref.shape
    # float32 arithmetic over 2 layers: errors of a few ulps of the logit scale.
    assert rel_err(got, ref) < 2e-5, wtype
    np.testing.assert_array_equal(np.argmax(got, 1), np.argmax(ref, 1))


@pytest.mark.parametrize(
    "kw",
    [
        dict(rope_freqs=True),
        dict(tied=False),
        dict(n_head=4, n_head_kv=1),
        dict(n_head=4, n_head_kv=4),
        dict(n_layer=3, rope_base=500000.0),
    ],
    ids=["rope_freqs", "untied", "mqa", "mha", "3layers"],
)
def test_tiny_model_variants_match_reference(tiny_dir, kw):
    path = tiny(tiny_dir, "F32", **kw)
    ref = RefLlama.load(path).forward(PROMPT_TOKENS)
    e = _core.Engine(path, n_ctx=64, n_threads=2, kv="f32")
    e.eval(PROMPT_TOKENS, all_logits=True)
    assert rel_err(e.all_logits(), ref) < 2e-5


def test_f16_cache_is_close_to_exact(tiny_dir):
    path = tiny(tiny_dir, "Q8_0")
    ref = RefLlama.load(path).forward(PROMPT_TOKENS)
    e = _core.Engine(path, n_ctx=64, n_threads=2, kv="f16")
    e.eval(PROMPT_TOKENS, all_logits=True)
    # K and V rounded to f16 (11-bit mantissa): relative errors around 1e-3.
    assert rel_err(e.all_logits(), ref) < 5e-3


def test_prefill_equals_decode_steps_and_chunking(tiny_dir):
    path = tiny(tiny_dir, "Q4_K")
    whole = _core.Engine(path, n_ctx=64, n_threads=2, kv="f32")
    whole.eval(PROMPT_TOKENS, all_logits=True)
    want = whole.all_logits()

    steps = _core.Engine(path, n_ctx=64, n_threads=1, kv="f32")
    rows = []
    for t in PROMPT_TOKENS:
        steps.eval([t])
        rows.append(steps.logits())
    assert steps.n_past == len(PROMPT_TOKENS)
    np.testing.assert_allclose(np.stack(rows), want, rtol=0, atol=1e-5 * np.abs(want).max())

    chunked = _core.Engine(path, n_ctx=64, n_threads=2, kv="f32", n_batch=5)
    chunked.eval(PROMPT_TOKENS, all_logits=True)
    np.testing.assert_allclose(chunked.all_logits(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(chunked.logits(), chunked.all_logits()[-1])


def test_reset_and_context_full(tiny_dir):
    path = tiny(tiny_dir, "F16")
    e = _core.Engine(path, n_ctx=20, n_threads=2, kv="f16")
    e.eval(PROMPT_TOKENS[:4])
    first = e.logits()
    e.reset()
    assert e.n_past == 0
    e.eval(PROMPT_TOKENS[:4])
    np.testing.assert_array_equal(e.logits(), first)
    with pytest.raises(_core.EoqError) as ei:
        e.eval(PROMPT_TOKENS * 2)
    assert ei.value.code == "context_full"
    assert e.n_past == 4  # nothing was computed
    with pytest.raises(_core.EoqError):
        e.eval([10**6])


def test_smollm2_real_text_matches_reference(smollm2_path, wikitext):
    e = _core.Engine(smollm2_path, n_ctx=256, n_threads=2, kv="f32")
    text = wikitext[:2000]
    tokens = e.tokenize(text, add_special=True, parse_special=False)[:96]
    ref = RefLlama.load(smollm2_path, dtype=np.float32).forward(tokens)
    e.eval(tokens, all_logits=True)
    got = e.all_logits()
    # 30 layers in float32 on both sides (different summation orders).
    assert rel_err(got, ref) < 2e-3
    assert np.mean(np.argmax(got, 1) == np.argmax(ref, 1)) > 0.97

    e16 = _core.Engine(smollm2_path, n_ctx=256, n_threads=2, kv="f16")
    e16.eval(tokens, all_logits=True)
    assert np.mean(np.argmax(e16.all_logits(), 1) == np.argmax(ref, 1)) > 0.95
