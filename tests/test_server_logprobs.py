"""What eoq-server builds on in Engine.generate: logprobs=N (per-token log-probabilities and top-N
alternatives), logits_processor hooks and the stream_items stream. References are plain Python
(math.fsum log-softmax, sorted()) over logits the test records itself, perturbed with fresh random
noise each run so that the checks do not rest on one fixed output."""
import math
import random

import numpy as np
import pytest

from eoq import Engine, EoqError
from eoq.engine import StreamItem, TokenLogprob

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def eng(smollm2_path):
    with Engine(smollm2_path, n_ctx=256, n_threads=2) as e:
        yield e


def _log_softmax_ref(logits):
    """Plain-Python log-softmax of a list of floats (-inf allowed)."""
    xs = [float(v) for v in logits]
    m = max(xs)
    lse = m + math.log(math.fsum(math.exp(v - m) for v in xs if v != -math.inf))
    return [v - lse for v in xs]


class Recorder:
    """A logits processor that adds seeded random noise (fresh inputs) and records the result."""

    def __init__(self, seed, scale=2.0, ban=()):
        self.rng = np.random.default_rng(seed)
        self.scale = scale
        self.ban = list(ban)  # token ids set to -inf (the end-of-generation ones: a full-length run)
        self.seen = []  # (tokens so far, logits as sampled)

    def __call__(self, tokens, logits):
        logits += self.rng.standard_normal(logits.shape[0]).astype(np.float32) * self.scale
        logits[self.ban] = -np.inf
        self.seen.append((list(tokens), logits.copy()))


def test_logprobs_match_a_plain_reference(eng):
    seed = random.randrange(2**32)
    # the noise could make an end-of-generation token the greedy pick: banned, so 6 tokens come
    rec = Recorder(seed, ban=[t for t in range(eng.core.n_vocab) if eng.core.is_eog(t)])
    c = eng.generate(PROMPT, max_tokens=6, temperature=0, logprobs=5, logits_processor=rec)
    assert len(c.logprobs) == len(c.tokens) == 6, f"seed {seed}"
    prompt = eng.tokenize(PROMPT)
    for i, (lp, tok) in enumerate(zip(c.logprobs, c.tokens)):
        toks, logits = rec.seen[i]
        assert toks == prompt + c.tokens[:i]  # the processor sees the tokens so far
        ref = _log_softmax_ref(logits.tolist())
        assert isinstance(lp, TokenLogprob) and lp.id == tok
        assert lp.logprob == pytest.approx(ref[tok], abs=1e-9), f"seed {seed}"
        order = sorted(range(len(ref)), key=lambda j: (-ref[j], j))[:5]
        assert [t.id for t in lp.top_logprobs] == order, f"seed {seed}"
        assert [t.logprob for t in lp.top_logprobs] == pytest.approx([ref[j] for j in order], abs=1e-9)
        assert tok == order[0]  # greedy picks the most likely (noised) token
        raw = eng.core.token_to_piece(tok)
        assert lp.bytes == raw and lp.token == raw.decode("utf-8", errors="replace")


def test_logprobs_do_not_change_the_output_and_ignore_the_sampling_cuts(eng):
    plain = eng.generate(PROMPT, max_tokens=6, temperature=0)
    with_lp = eng.generate(PROMPT, max_tokens=6, temperature=0, logprobs=0)
    assert with_lp.tokens == plain.tokens and with_lp.text == plain.text and plain.logprobs is None
    assert all(lp.top_logprobs == [] for lp in with_lp.logprobs)
    # The first position has the same logits whatever the sampler does: same distribution.
    hot = eng.generate(PROMPT, max_tokens=1, temperature=1.7, top_k=3, top_p=0.5, seed=1, logprobs=4)
    cold = eng.generate(PROMPT, max_tokens=1, temperature=0, logprobs=4)
    assert [(t.id, t.logprob) for t in hot.logprobs[0].top_logprobs] == \
        [(t.id, t.logprob) for t in cold.logprobs[0].top_logprobs]
    # And it is the model's own distribution: eval_logits of the prompt, last row.
    row = eng.eval_logits(eng.tokenize(PROMPT))[-1]
    ref = _log_softmax_ref(row.tolist())
    assert cold.logprobs[0].logprob == pytest.approx(ref[cold.tokens[0]], abs=1e-3)


def test_logits_processor_bans_and_reshapes(eng):
    plain = eng.generate(PROMPT, max_tokens=4, temperature=0)
    first = plain.tokens[0]

    def ban(tokens, logits):
        logits[first] = -np.inf

    c = eng.generate(PROMPT, max_tokens=4, temperature=0, logits_processor=ban, logprobs=1)
    assert c.tokens[0] != first and first not in c.tokens
    assert all(t.id != first for lp in c.logprobs for t in lp.top_logprobs)
    # A processor may return a new array; a list applies in order (the second sees the first's).
    allowed = random.sample(range(eng.n_vocab), 50)

    def only(tokens, logits):
        out = np.full_like(logits, -np.inf)
        out[allowed] = logits[allowed]
        return out

    seen = []
    c = eng.generate(PROMPT, max_tokens=5, temperature=1.0, seed=3, logits_processor=[only, lambda t, l: seen.append(
        int(np.isfinite(l).sum()))], logprobs=0)
    assert all(t in allowed for t in c.tokens) and seen and all(n <= 50 for n in seen)
    for lp in c.logprobs:  # the distribution reported is the processed one
        assert lp.logprob > -math.inf


def test_logits_processor_errors(eng):
    with pytest.raises(EoqError, match="no token allowed"):
        eng.generate(PROMPT, max_tokens=2, logits_processor=lambda t, l: l.fill(-np.inf))
    with pytest.raises(EoqError, match="shape"):
        eng.generate(PROMPT, max_tokens=2, logits_processor=lambda t, l: l[:10])
    with pytest.raises(EoqError, match="callable"):
        eng.generate(PROMPT, max_tokens=2, logits_processor=[3])
    with pytest.raises(EoqError, match="logprobs"):
        eng.generate(PROMPT, max_tokens=2, logprobs=-1)
    with pytest.raises(EoqError, match="logprobs"):
        eng.generate(PROMPT, max_tokens=2, logprobs=True)
    with pytest.raises(ZeroDivisionError):  # the processor's own error reaches the caller
        eng.generate(PROMPT, max_tokens=2, logits_processor=lambda t, l: 1 / 0)
    assert eng.generate(PROMPT, max_tokens=2, temperature=0).tokens  # and the engine goes on


def test_stream_items(eng):
    want = eng.generate(PROMPT, max_tokens=8, temperature=0, logprobs=2, stop="zzz")
    s = eng.generate(PROMPT, max_tokens=8, temperature=0, logprobs=2, stop="zzz", stream=True, stream_items=True)
    items = list(s)
    assert all(isinstance(it, StreamItem) for it in items)
    assert "".join(it.text for it in items) == want.text == s.completion.text
    assert [t for it in items for t in it.tokens] == want.tokens
    lps = [lp for it in items if it.logprobs for lp in it.logprobs]
    assert [(lp.id, lp.logprob) for lp in lps] == [(lp.id, lp.logprob) for lp in want.logprobs]
    # The plain stream still yields text pieces.
    pieces = list(eng.generate(PROMPT, max_tokens=8, temperature=0, stream=True, logprobs=2))
    assert all(isinstance(p, str) for p in pieces) and "".join(pieces) == want.text
    # echo: the prompt comes first as a text-only item.
    items = list(eng.generate(PROMPT, max_tokens=2, temperature=0, echo=True, stream=True, stream_items=True))
    assert items[0].text == PROMPT and items[0].tokens == []


def test_top_logprobs_past_the_allowed_tokens(eng):
    """With fewer allowed tokens than asked for, the list is the allowed ones by probability,
    then banned ones (-inf) by lowest id, as a plain sort gives."""
    allowed = sorted(random.sample(range(100, eng.n_vocab), 3))

    def only(tokens, logits):
        keep = logits[allowed].copy()
        logits.fill(-np.inf)
        logits[allowed] = keep

    rec = []
    c = eng.generate(PROMPT, max_tokens=2, temperature=0, logprobs=6,
                     logits_processor=[only, lambda t, l: rec.append(l.copy())])
    for lp, logits in zip(c.logprobs, rec):
        ref = _log_softmax_ref(logits.tolist())
        order = sorted(range(len(ref)), key=lambda j: (-ref[j], j))[:6]
        assert [t.id for t in lp.top_logprobs] == order
        assert set(order[:3]) == set(allowed) and order[3:] == [0, 1, 2]
        assert [t.logprob for t in lp.top_logprobs][3:] == [-math.inf] * 3
