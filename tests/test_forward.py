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


def kl_divergence(logits_p, logits_q):
    """Mean over rows of KL(softmax(p) || softmax(q)), in float64."""
    p = np.asarray(logits_p, np.float64)
    q = np.asarray(logits_q, np.float64)
    lp = p - p.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = q - q.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), 1)))


@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
def test_tiny_model_logits_match_reference(tiny_dir, wtype):
    # The engine quantizes the input of every weight product as llama.cpp does (Q8_0/Q8_1/Q8_K
    # blocks, f16/bf16 values); the reference models that exactly (act_quant, float64 otherwise).
    # What remains is float32 summation order -- errors of a few ulps of the logit scale, as for
    # exact activations -- except downstream of a rounding decision that sat within ~1 ulp of its
    # boundary (ref.last_uncertain): there a legitimate float difference may round one element
    # the other way, one quantum (amax/127 of its block), which these random models turn into up
    # to ~1e-2 of the logit scale. So: ulp-level agreement on the certain rows, 3e-2 on the rest.
    path = tiny(tiny_dir, wtype)
    m = RefLlama.load(path, act_quant=True)
    ref = m.forward(PROMPT_TOKENS)
    uncertain = m.last_uncertain
    e = _core.Engine(path, n_ctx=64, n_threads=2, kv="f32")
    e.eval(PROMPT_TOKENS, all_logits=True)
    got = e.all_logits()
    assert got.shape == ref.shape
    if wtype == "F16":
        # f16 rounding (11 bits) puts some element of almost every row within an ulp of a
        # rounding boundary; a flip there moves one element by one f16 ulp (2^-11 relative).
        assert rel_err(got, ref) < 1e-3
    else:
        assert wtype != "F32" or not uncertain.any()  # F32 activations are not quantized
        certain = ~uncertain
        if certain.any():
            assert rel_err(got[certain], ref[certain]) < 2e-5, (wtype, int(certain.sum()))
        assert rel_err(got, ref) < 3e-2, wtype
    # and the quantization is really modelled: exact activations are much further away
    if wtype != "F32":
        plain = RefLlama.load(path).forward(PROMPT_TOKENS)
        assert rel_err(got, plain) > 1e-4, wtype
    assert np.mean(np.argmax(got, 1) == np.argmax(ref, 1)) >= 0.9


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
    # F32 weights: their activations are not quantized, so the only rounding is the cache's
    # (with quantized activations, each cache rounding can also flip activation roundings).
    path = tiny(tiny_dir, "F32")
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
    ref = RefLlama.load(smollm2_path, dtype=np.float32, act_quant=True).forward(tokens)
    e.eval(tokens, all_logits=True)
    got = e.all_logits()
    # With quantized activations the 30-layer model is chaotic at the 1e-3 level: a last-ulp
    # difference flips some element's rounding by one quantum, and in the blocks that hold
    # SmolLM2's outlier dimensions a quantum is ~20% of a typical value. Two correct
    # implementations (this reference in float32 and in float64) differ by ~3e-2 of the logit
    # scale, mean KL ~3e-3 and ~95% argmax agreement; the engine must stay within that spread.
    assert rel_err(got, ref) < 0.1
    assert kl_divergence(got, ref) < 0.01
    assert np.mean(np.argmax(got, 1) == np.argmax(ref, 1)) > 0.9

    e16 = _core.Engine(smollm2_path, n_ctx=256, n_threads=2, kv="f16")
    e16.eval(tokens, all_logits=True)
    assert kl_divergence(e16.all_logits(), ref) < 0.01
    assert np.mean(np.argmax(e16.all_logits(), 1) == np.argmax(ref, 1)) > 0.9
