"""Checks of the NumPy reference (ref_llama.py) and the tiny GGUF writer (tiny_models.py) on their
own, independent of eoq: if these pass, the reference is a fair oracle for the engine."""

import copy
import dataclasses
import os

import numpy as np
import pytest
import gguf

from ref_llama import RefLlama
from tiny_models import (K_QUANTS, SUPPORTED_TYPES, TRAIN_TEXT, bytes_to_unicode, write_tiny_llama,
                         write_tiny_llama_spm)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """F32, 2 layers, GQA 4/2, rope_freqs, untied: the model most checks run on (float64)."""
    info = write_tiny_llama(tiny_dir / "tiny_f32.gguf", "F32", rope_freqs=True, tied=False, seed=1)
    return info, RefLlama.load(info.path, np.float64)


def _hf_bpe(tokens, merges):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(tokens)},
                               merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


# ---------------------------------------------------------------------------------------------
# (a) the real model


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    if not os.path.exists(smollm2_path):
        pytest.skip(f"test model not found: {smollm2_path}")
    return RefLlama.load(smollm2_path, np.float32)


def test_smollm2_config(smollm2):
    c = smollm2.cfg
    assert (c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab) == \
        (30, 576, 9, 3, 64, 1536, 49152)
    assert c.rope_base == 100000.0 and abs(c.norm_eps - 1e-5) < 1e-9
    assert smollm2.tied and smollm2.rope_factors is None


def test_smollm2_paris(smollm2):
    tok = _hf_bpe(smollm2.tokens, smollm2.merges)
    ids = tok.encode("The capital of France is").ids
    assert [smollm2.tokens[i] for i in ids] == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    out = smollm2.greedy(ids, 8)
    assert " Paris" in tok.decode(out), tok.decode(out)


def test_smollm2_nll(smollm2):
    """Mean next-token NLL on a factual sentence: 1.83 with the right conventions; the Paris test
    alone survives a wrong RoPE (rotate-half gives 3.22, no RoPE 3.82), this does not."""
    tok = _hf_bpe(smollm2.tokens, smollm2.merges)
    ids = tok.encode("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
                     "France. It is named after the engineer Gustave Eiffel, whose company designed "
                     "and built the tower from 1887 to 1889.").ids
    lg = smollm2.forward(ids).astype(np.float64)
    lg -= lg.max(-1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    assert nll < 2.3, nll


def test_smollm2_float32_vs_float64(smollm2):
    """The float32 path tracks the float64 one closely on the real model (tolerance hint for
    engine comparisons)."""
    ids = [504, 3575, 282, 4649, 314, 7042, 30]
    l32 = smollm2.forward(ids)
    l64 = smollm2.with_dtype(np.float64).forward(ids)
    err = np.abs(l32 - l64).max() / np.abs(l64).max()
    assert err < 1e-4, err
    assert (l32.argmax(-1) == l64.argmax(-1)).all()


# ---------------------------------------------------------------------------------------------
# (b) RoPE


def _rope_hf(x, positions, inv_freq):
    """Hugging Face convention on un-permuted heads: rotate the two halves (x[i], x[i + d/2])."""
    half = x.shape[-1] // 2
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def _unpermute(w, n_head):
    """Undo the llama GGUF converter's Q/K row permutation: GGUF row 2i+j of a head is HF row
    j*(d/2)+i."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def test_rope_unit_vectors(tiny):
    info, m = tiny
    hd = m.cfg.head_dim
    i = np.arange(hd // 2)
    theta = info.rope_base ** (-2.0 * i / hd) / m.rope_factors.astype(np.float64)
    for pair in (0, 3, hd // 2 - 1):
        x = np.zeros((1, 1, hd))
        x[0, 0, 2 * pair] = 1.0
        y = m.rope(x, [5])[0, 0]
        expect = np.zeros(hd)
        expect[2 * pair] = np.cos(5 * theta[pair])
        expect[2 * pair + 1] = np.sin(5 * theta[pair])
        np.testing.assert_allclose(y, expect, atol=1e-12)
    assert m.rope_factors.min() == 1.0 and m.rope_factors.max() == 8.0


def test_rope_relative_positions(tiny):
    """q(m) . k(n) depends only on m - n."""
    _, m = tiny
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, m.cfg.head_dim))
    k = rng.standard_normal((1, 1, m.cfg.head_dim))

    def score(pm, pn):
        return float((m.rope(q, [pm]) * m.rope(k, [pn])).sum())

    for pm, pn in [(3, 1), (10, 2), (40, 40), (7, 0)]:
        for shift in (1, 17, 200):
            assert abs(score(pm, pn) - score(pm + shift, pn + shift)) < 1e-9
    assert abs(score(3, 1) - score(4, 1)) > 1e-6  # rotation is not trivial


def test_model_shift_invariance(tiny):
    """Without earlier context the whole model depends only on relative positions: the same tokens
    placed at positions 0.. and 37.. give the same logits, though the queries differ."""
    _, m = tiny
    toks = [5, 77, 200, 3, 150, 42, 9]
    l0, kv0 = m.forward(toks, return_kv=True)
    l1, kv1 = m.forward(toks, pos0=37, return_kv=True)
    np.testing.assert_allclose(l0, l1, rtol=1e-9, atol=1e-9)
    assert np.abs(kv0.q[0] - kv1.q[0]).max() > 1e-3


def test_rope_matches_hf_convention(tiny):
    """Scores from the GGUF adjacent-pair RoPE equal those of HF's rotate-half RoPE applied to the
    un-permuted weights: an independent second implementation of RoPE + layout."""
    info, m = tiny
    c = m.cfg
    toks = [10, 20, 30, 40, 50, 60]
    _, kv = m.forward(toks, return_kv=True)
    x = m.rms_norm(m.w("token_embd.weight")[toks].astype(np.float64), m.w("blk.0.attn_norm.weight"))
    qh = (x @ _unpermute(m.w("blk.0.attn_q.weight"), c.n_head).T).reshape(len(toks), c.n_head, -1)
    kh = (x @ _unpermute(m.w("blk.0.attn_k.weight"), c.n_head_kv).T).reshape(len(toks), c.n_head_kv, -1)
    pos = np.arange(len(toks))
    qh, kh = _rope_hf(qh, pos, m.inv_freq), _rope_hf(kh, pos, m.inv_freq)
    group = c.n_head // c.n_head_kv
    for h in range(c.n_head):
        s_ref = kv.q[0][:, h] @ kv.k[0][:, h // group].T
        s_hf = qh[:, h] @ kh[:, h // group].T
        np.testing.assert_allclose(s_ref, s_hf, rtol=1e-9, atol=1e-9)


def test_gqa_equals_expanded_mha(tiny):
    """GQA (query head h reads kv head h // group) equals MHA with each kv head's weights copied
    to its group of heads."""
    _, m = tiny
    c = m.cfg
    group = c.n_head // c.n_head_kv
    mha = copy.copy(m)
    mha.tensors = dict(m.tensors)
    mha.cfg = dataclasses.replace(c, n_head_kv=c.n_head)
    for l in range(c.n_layer):
        for name in ("attn_k", "attn_v"):
            w = m.w(f"blk.{l}.{name}.weight").reshape(c.n_head_kv, c.head_dim, c.n_embd)
            mha.tensors[f"blk.{l}.{name}.weight"] = np.repeat(w, group, axis=0).reshape(-1, c.n_embd)
    toks = [1, 2, 3, 100, 250, 7]
    np.testing.assert_allclose(m.forward(toks), mha.forward(toks), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# (c) the tiny writer


@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
def test_tiny_types_roundtrip(tiny_dir, wtype):
    info = write_tiny_llama(tiny_dir / f"t_{wtype}.gguf", wtype, seed=3)
    r = gguf.GGUFReader(info.path)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.embedding_length"].contents() == info.n_embd
    assert info.n_embd == (256 if wtype in K_QUANTS else 64)
    names = {t.name: t for t in r.tensors}
    assert "output.weight" not in names
    assert len(names) == 1 + 1 + 9 * info.n_layer
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(w).all(), t.name
        if t.name.endswith("norm.weight"):
            assert t.tensor_type.name == "F32"
            continue
        assert t.tensor_type.name == wtype, t.name
        assert 0.02 < w.std() < 0.1, (t.name, w.std())
        assert abs(w.mean()) < 0.01, (t.name, w.mean())
    assert list(names["token_embd.weight"].shape) == [info.n_embd, info.n_vocab]
    assert list(names["blk.0.attn_k.weight"].shape) == [info.n_embd, info.n_head_kv * info.head_dim]
    assert list(names["blk.0.ffn_down.weight"].shape) == [info.n_ff, info.n_embd]
    m = RefLlama.load(info.path)
    logits = m.forward([1, 2, 300, 4, 5])
    assert np.isfinite(logits).all() and 0.05 < logits.std() < 20


def test_tiny_mixed_types(tiny_dir):
    info = write_tiny_llama(tiny_dir / "mix.gguf", "Q4_K", types={"ffn_down": "Q6_K", "attn_v": "Q6_K",
                                                                   "token_embd": "Q8_0"}, tied=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(info.path).tensors}
    assert types["blk.1.ffn_down.weight"] == "Q6_K" and types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "Q4_K"
    assert np.isfinite(RefLlama.load(info.path).forward([3, 4, 5])).all()


@pytest.mark.parametrize("tied,rope_freqs", [(True, False), (False, False), (True, True)])
def test_tiny_variants_logits(tiny_dir, tied, rope_freqs):
    info = write_tiny_llama(tiny_dir / f"v_{tied}_{rope_freqs}.gguf", "Q8_0", tied=tied,
                            rope_freqs=rope_freqs)
    m = RefLlama.load(info.path)
    assert m.tied == tied and (m.rope_factors is not None) == rope_freqs
    if tied:
        assert m.output is m.w("token_embd.weight")
    logits = m.forward(list(range(0, 300, 23)))
    assert logits.shape == (14, info.n_vocab) and np.isfinite(logits).all()


def test_tiny_deterministic(tiny_dir):
    a = write_tiny_llama(tiny_dir / "da.gguf", "Q4_K", seed=5)
    b = write_tiny_llama(tiny_dir / "db.gguf", "Q4_K", seed=5)
    assert open(a.path, "rb").read() == open(b.path, "rb").read()


def test_tiny_gpt2_tokenizer(tiny_dir):
    info = write_tiny_llama(tiny_dir / "tok.gguf")
    r = gguf.GGUFReader(info.path)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    ttypes = r.fields["tokenizer.ggml.token_type"].contents()
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "<|im_start|>" in r.fields["tokenizer.chat_template"].contents()
    assert len(tokens) == info.n_vocab == len(ttypes) and len(set(tokens)) == len(tokens)
    b2u = bytes_to_unicode()
    assert tokens[:256] == [b2u[b] for b in range(256)]
    for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert ttypes[tokens.index(s)] == 3
    assert ttypes.count(3) == 3
    assert tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()] == "<|im_end|>"
    vocab = set(tokens)
    for i, mg in enumerate(merges):
        a, b = mg.split(" ")
        assert a in vocab and b in vocab and tokens[256 + i] == a + b
    tok = _hf_bpe(tokens, merges)
    text = "The robot is happy. Paris? ünïcode 123"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(tok.encode(TRAIN_TEXT).ids) < 0.6 * len(TRAIN_TEXT.encode())  # merges do merge


def test_tiny_spm_tokenizer(tiny_dir):
    info = write_tiny_llama_spm(tiny_dir / "spm.gguf", "Q4_0")
    r = gguf.GGUFReader(info.path)
    f = lambda k: r.fields[k].contents()  # noqa: E731
    assert f("tokenizer.ggml.model") == "llama" and f("tokenizer.ggml.add_bos_token") is True
    tokens, ttypes, scores = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.token_type"), f("tokenizer.ggml.scores")
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and ttypes[:3] == [2, 3, 3]
    assert tokens[3 + 0x41] == "<0x41>" and ttypes[3:259] == [6] * 256
    assert f("tokenizer.ggml.bos_token_id") == 1 and f("tokenizer.ggml.eos_token_id") == 2
    assert len(tokens) == len(set(tokens)) == len(scores) == info.n_vocab
    vocab = set(tokens)
    merged = [t for t, s in zip(tokens, scores) if s > -1000 and t not in tokens[:259]]
    assert merged and all(any(t[:j] in vocab and t[j:] in vocab for j in range(1, len(t))) for t in merged)
    assert "▁the" in vocab
    assert np.isfinite(RefLlama.load(info.path).forward([1, 300, 301])).all()


# ---------------------------------------------------------------------------------------------
# (d) causality and the incremental path


def test_causal_prefix_invariance(tiny):
    _, m = tiny
    toks = [7, 260, 33, 99, 1, 150, 151, 152, 3, 64]
    full = m.forward(toks)
    for k in (1, 2, 5, 9):
        np.testing.assert_allclose(m.forward(toks[:k]), full[:k], rtol=1e-10, atol=1e-10)


def test_incremental_cache_matches_full(tiny):
    _, m = tiny
    toks = [7, 260, 33, 99, 1, 150, 151, 152, 3, 64]
    full, kv = m.forward(toks, return_kv=True)
    cache = m.new_cache()
    parts = [m.forward(toks[:4], cache=cache), m.forward(toks[4:5], cache=cache),
             m.forward(toks[5:], cache=cache)]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-10, atol=1e-10)
    assert cache.n_past == len(toks)
    for l in range(m.cfg.n_layer):
        np.testing.assert_allclose(cache.k[l], kv.k[l], atol=1e-12)
        np.testing.assert_allclose(cache.v[l], kv.v[l], atol=1e-12)
        assert kv.k[l].shape == (len(toks), m.cfg.n_head_kv, m.cfg.head_dim)
        assert kv.q[l].shape == (len(toks), m.cfg.n_head, m.cfg.head_dim)


def test_greedy_matches_full_recompute(tiny):
    _, m = tiny
    toks = [7, 260, 33]
    out = m.greedy(toks, 5)
    seq = list(toks)
    for _ in range(5):
        seq.append(int(m.forward(seq)[-1].argmax()))
    assert out == seq[3:]


def test_float32_tracks_float64(tiny):
    _, m = tiny
    toks = list(range(1, 300, 17))
    l64 = m.forward(toks)
    l32 = m.with_dtype(np.float32).forward(toks)
    assert np.abs(l32 - l64).max() < 1e-4 * np.abs(l64).max()
