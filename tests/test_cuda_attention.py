"""The f16-cache CUDA attention kernels (kv_store_f16, attention_decode_f16, attention_prefill_f16)
against a float64 NumPy reference over the same f16-rounded cache.

Error measure: ||out - ref|| / ||ref|| over the whole output. Bounds:
  * decode, 1e-4: float math over f16 K/V (expected ~1e-6);
  * prefill, 3e-3: the tensor cores take Q and the probabilities P rounded to f16 (2^-11 relative
    each; expected a few 1e-4).
Cache positions past the last query are NaN, so a kernel that reads past the causal range fails.
"""
import os

import numpy as np
import pytest

from eoq import _core

reason = _core.cuda.unavailable_reason(0)
pytestmark = pytest.mark.skipif(bool(reason), reason=reason or "")

# (n_head, n_head_kv, head_dim): SmolLM2-135M, Llama-3.1-8B, and groups of 1, 7 and 8
SMOL = (9, 3, 64)
LLAMA = (32, 8, 128)
OTHER = [(8, 8, 64), (14, 2, 64), (16, 2, 128)]
SLACK = 5  # NaN positions after the last query's position


def rng():
    seed = np.random.SeedSequence().entropy
    print("seed", seed)
    return np.random.default_rng(seed)


def make_case(r, shape, n_tok, pos0):
    """q float32 [n_tok][n_head][hd]; caches float16 [n_head_kv][n_ctx][hd], NaN past pos0 + n_tok."""
    n_head, n_head_kv, hd = shape
    n_ctx = pos0 + n_tok + SLACK
    q = (2.0 * r.standard_normal((n_tok, n_head, hd))).astype(np.float32)
    k = r.standard_normal((n_head_kv, n_ctx, hd)).astype(np.float16)
    v = r.standard_normal((n_head_kv, n_ctx, hd)).astype(np.float16)
    k[:, pos0 + n_tok:] = np.float16(np.nan)
    v[:, pos0 + n_tok:] = np.float16(np.nan)
    return q, k, v


def reference(q, k16, v16, pos0):
    """Causal softmax attention in float64: query t sees positions [0, pos0 + t], head h reads KV
    head h // group, scores scaled by 1/sqrt(head_dim)."""
    n_tok, n_head, hd = q.shape
    group = n_head // k16.shape[0]
    n_kv = pos0 + n_tok
    k = k16[:, :n_kv].astype(np.float64)
    v = v16[:, :n_kv].astype(np.float64)
    visible = np.arange(n_kv)[None, :] <= pos0 + np.arange(n_tok)[:, None]  # [n_tok][n_kv]
    out = np.empty((n_tok, n_head, hd))
    for h in range(n_head):
        s = q[:, h].astype(np.float64) @ k[h // group].T / np.sqrt(hd)
        s = np.where(visible, s, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p @ v[h // group]) / p.sum(axis=1, keepdims=True)
    return out


def rel_err(out, ref):
    assert out.shape == ref.shape
    assert np.isfinite(out).all()
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


# ---- kv_store_f16 ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_head_kv,hd", [(3, 64), (8, 128), (2, 6)])  # hd 6: the scalar path
@pytest.mark.parametrize("n_tok,pos0", [(1, 0), (1, 9), (5, 0), (5, 3)])
def test_kv_store_f16_rounds_like_numpy(n_head_kv, hd, n_tok, pos0):
    r = rng()
    n_ctx = pos0 + n_tok + 4
    k = r.standard_normal((n_tok, n_head_kv, hd)).astype(np.float32)
    v = (r.standard_normal((n_tok, n_head_kv, hd)) * 1e3).astype(np.float32)
    # rounding corners: overflow to inf, subnormals, an exact tie, signed zero
    k.flat[:6] = [70000.0, -1e-6, 3e-8, 1.0 + 2.0**-11, -0.0, 65519.0]
    kc, vc = _core.cuda.kv_store_f16(k, v, n_ctx, pos0)
    assert kc.dtype == np.float16 and kc.shape == (n_head_kv, n_ctx, hd) and vc.shape == kc.shape
    for cache, x in ((kc, k), (vc, v)):
        bits = cache.view(np.uint16)
        with np.errstate(over="ignore"):  # 70000 -> inf on purpose
            want = x.transpose(1, 0, 2).astype(np.float16).view(np.uint16)
        np.testing.assert_array_equal(bits[:, pos0:pos0 + n_tok], want)
        assert (bits[:, :pos0] == 0xFFFF).all() and (bits[:, pos0 + n_tok:] == 0xFFFF).all()


# ---- decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SMOL, LLAMA], ids=["smol", "llama"])
@pytest.mark.parametrize("pos0", [0, 1, 255, 1000, 5000])
@pytest.mark.parametrize("n_tok", [1, 4])
@pytest.mark.parametrize("n_split", [1, 7, 64])
def test_decode_matches_reference(shape, pos0, n_tok, n_split):
    r = rng()
    q, k, v = make_case(r, shape, n_tok, pos0)
    out = _core.cuda.attention(q, k, v, pos0, n_split)
    assert rel_err(out, reference(q, k, v, pos0)) < 1e-4


@pytest.mark.parametrize("shape", OTHER, ids=["g1", "g7", "g8"])
@pytest.mark.parametrize("pos0,n_tok,n_split", [(0, 1, 3), (700, 2, 5), (3000, 3, 64)])
def test_decode_other_groups(shape, pos0, n_tok, n_split):
    r = rng()
    q, k, v = make_case(r, shape, n_tok, pos0)
    out = _core.cuda.attention(q, k, v, pos0, n_split)
    assert rel_err(out, reference(q, k, v, pos0)) < 1e-4


def test_decode_in_a_graph_follows_the_device_position():
    # one capture, replayed at other positions: the grid must not depend on pos0
    r = rng()
    n_tok, n_split = 2, 7
    pos0s = [1000, 5, 300, 999]
    q, k, v = make_case(r, LLAMA, n_tok, max(pos0s))
    outs = _core.cuda.attention_decode_graph(q, k, v, pos0s, n_split)
    assert outs.shape == (len(pos0s),) + q.shape
    for out, pos0 in zip(outs, pos0s):
        assert rel_err(out, reference(q, k, v, pos0)) < 1e-4


def test_decode_splits_helper():
    s = _core.cuda.attention_decode_splits
    assert s(8, 131072, 132) == 99  # 792 blocks: 6 per SM
    assert s(8, 4096, 132) == 16  # >= 256 positions per split
    assert s(3, 1, 132) == 1
    assert s(8, 131072) >= 1  # from the device's SM count


def test_decode_refuses_bad_shapes():
    r = rng()
    q, k, v = make_case(r, (9, 3, 64), 1, 10)
    with pytest.raises(_core.EoqError):  # head_dim 48
        _core.cuda.attention(q[:, :, :48].copy(), k[:, :, :48].copy(), v[:, :, :48].copy(), 10, 4)
    with pytest.raises(_core.EoqError):  # 9 query heads over 2 KV heads
        _core.cuda.attention(q, k[:2].copy(), v[:2].copy(), 10, 4)


# ---- prefill ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SMOL, LLAMA], ids=["smol", "llama"])
@pytest.mark.parametrize("n_tok", [1, 17, 64, 200])
@pytest.mark.parametrize("pos0", [0, 300])
def test_prefill_matches_reference(shape, n_tok, pos0):
    r = rng()
    q, k, v = make_case(r, shape, n_tok, pos0)
    out = _core.cuda.attention(q, k, v, pos0, 0)
    assert rel_err(out, reference(q, k, v, pos0)) < 3e-3


@pytest.mark.parametrize("shape", OTHER, ids=["g1", "g7", "g8"])
@pytest.mark.parametrize("n_tok,pos0", [(33, 0), (130, 77)])
def test_prefill_other_groups(shape, n_tok, pos0):
    r = rng()
    q, k, v = make_case(r, shape, n_tok, pos0)
    out = _core.cuda.attention(q, k, v, pos0, 0)
    assert rel_err(out, reference(q, k, v, pos0)) < 3e-3


def test_prefill_full_batch_at_depth():
    # the backend's prefill batch: 512 tokens of the 8B shape after 1000 cached positions
    r = rng()
    q, k, v = make_case(r, LLAMA, 512, 1000)
    out = _core.cuda.attention(q, k, v, 1000, 0)
    assert rel_err(out, reference(q, k, v, 1000)) < 3e-3


def test_prefill_agrees_with_decode_at_depth():
    # the last 3 queries of a prefill at depth 2000 against the decode kernel on the same cache
    r = rng()
    n_tok, pos0 = 40, 2000
    q, k, v = make_case(r, LLAMA, n_tok, pos0)
    pre = _core.cuda.attention(q, k, v, pos0, 0)
    dec = _core.cuda.attention(q[-3:].copy(), k, v, pos0 + n_tok - 3, 16)
    assert rel_err(pre[-3:], dec.astype(np.float64)) < 3e-3


def test_prefill_refuses_positions_past_the_cache():
    r = rng()
    q, k, v = make_case(r, SMOL, 8, 0)  # n_ctx = 8 + SLACK
    with pytest.raises(_core.EoqError):
        _core.cuda.attention(q, k, v, SLACK + 1, 0)


# ---- speed (EOQ_CUDA_BENCH=1 only: a benchmark, printed with -s, not a test) ---------------------


@pytest.mark.skipif(not os.environ.get("EOQ_CUDA_BENCH"), reason="set EOQ_CUDA_BENCH=1 to time the attention")
def test_print_speed():
    t = _core.cuda.attention_time
    n_head, n_head_kv, hd = LLAMA
    for n_ctx in (8192, 32768, 131072):
        n_split = _core.cuda.attention_decode_splits(n_head_kv, n_ctx)
        d = t(1, n_head, n_head_kv, hd, n_ctx, n_ctx - 1, n_split, 20)
        print(f"decode 8B layer @ {n_ctx}: n_split {n_split}, {d['ms'] * 1e3:.1f} us, "
              f"{d['gb_per_s']:.0f} GB/s = {d['gb_per_s'] / 4270 * 100:.0f}% of 4.27 TB/s")
        assert d["ms"] > 0
    for depth in (0, 32768):
        d = t(512, n_head, n_head_kv, hd, depth + 512, depth, 0, 5)
        print(f"prefill 8B layer, 512 tokens @ {depth}: {d['ms']:.3f} ms, {d['tflops']:.0f} TFLOP/s")
        assert d["ms"] > 0
