"""The whole model on the GPU against the CPU: logits of tiny random models of every weight type
(prefill through the tensor-core GEMM and attention, decode through the mat-vec kernels, the
decode attention and CUDA graphs), SmolLM2's greedy text, graph replay against direct launches,
and the errors a user sees where CUDA cannot run or the model does not fit.

The GPU rows skip where no GPU is usable (CI); the error tests run everywhere."""
import os

import numpy as np
import pytest

from eoq import EoqError, Engine, _core
from tiny_models import SUPPORTED_TYPES, write_tiny_llama

REASON = _core.cuda.unavailable_reason(0)
gpu = pytest.mark.skipif(bool(REASON), reason=f"no usable GPU: {REASON}")

PROMPT = [5, 77, 300, 12, 99, 250, 31, 64, 7, 200, 150, 3, 42, 111, 222, 17, 8, 9, 10, 11]
# head_dim 64 (the GPU attention's smallest); K % 32 == 0 for the WMMA GEMM fallback
SHAPE = dict(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2, n_ctx=512)


def nerr(a, b):
    """||a - b|| / ||b||: the normalized error of test-backend-ops."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_gpu")


def tiny(tiny_dir, wtype, **kw):
    args = dict(SHAPE, **kw)
    path = tiny_dir / (wtype + "".join(f"_{k}{v}" for k, v in sorted(kw.items())) + ".gguf")
    if not path.exists():
        write_tiny_llama(path, wtype, **args)
    return str(path)


DECODE = [21, 140, 3, 250, 77, 9, 180, 64, 33, 5]


def run(path, device, tokens, n_decode, **kw):
    """All prompt logits, then the logits of n_decode single-token steps (fixed tokens, so that
    both devices see the same sequence even where their argmax would differ)."""
    e = _core.Engine(path, n_ctx=SHAPE["n_ctx"], n_threads=2, kv="f16", device=device, **kw)
    e.eval(tokens, all_logits=True)
    prompt = e.all_logits().copy()
    steps = []
    for tok in DECODE[:n_decode]:
        e.eval([tok])
        steps.append(e.logits().copy())
    return prompt, np.array(steps)


# Where the GPU differs from the CPU: prefill activations are rounded to f16 for the tensor cores
# (the CPU rounds them to Q8 blocks for quantized weights), decode activations of K-quant weights
# to Q8_1 blocks of 32 (the CPU: Q8_K blocks of 256), float sums run in another order, and the
# attention's softmax is blocked differently. These random 2-layer models carry that to a few
# 1e-2 of the logits' norm (measured: up to 4.5e-2 for Q6_K); a wrong kernel gives O(1).
TOL = {"F32": 2e-2, "F16": 2e-2, "BF16": 2e-2}


@gpu
@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
def test_tiny_model_gpu_matches_cpu(tiny_dir, wtype):
    path = tiny(tiny_dir, wtype)
    cpu_p, cpu_d = run(path, "cpu", PROMPT, 6)
    gpu_p, gpu_d = run(path, "cuda", PROMPT, 6)
    tol = TOL.get(wtype, 8e-2)
    assert nerr(gpu_p, cpu_p) < tol, wtype
    for i in range(len(cpu_d)):
        assert nerr(gpu_d[i], cpu_d[i]) < tol, (wtype, i)


@gpu
def test_rope_freqs_and_untied_output_on_gpu(tiny_dir):
    path = tiny(tiny_dir, "Q8_0", rope_freqs=True, tied=False)
    cpu_p, cpu_d = run(path, "cpu", PROMPT, 4)
    gpu_p, gpu_d = run(path, "cuda", PROMPT, 4)
    assert nerr(gpu_p, cpu_p) < 3e-2
    assert nerr(gpu_d, cpu_d) < 3e-2


@gpu
def test_decode_across_graph_buckets_and_splits(tiny_dir):
    # 300 single-token steps cross the 256-position bucket (a new graph, another split count).
    path = tiny(tiny_dir, "Q4_0")
    toks = [int(t) for t in np.random.default_rng(1).integers(0, 255, 300)]
    out = {}
    for dev in ("cpu", "cuda"):
        e = _core.Engine(path, n_ctx=SHAPE["n_ctx"], n_threads=2, kv="f16", device=dev)
        rows = []
        for t in toks:
            e.eval([t])
            rows.append(e.logits().copy())
        out[dev] = np.array(rows)
    for i in (0, 100, 254, 255, 256, 257, 299):
        assert nerr(out["cuda"][i], out["cpu"][i]) < 3e-2, i


@gpu
def test_graph_replay_equals_direct_launches(tiny_dir, monkeypatch):
    path = tiny(tiny_dir, "Q4_K")
    monkeypatch.setenv("EOQ_CUDA_GRAPHS", "0")
    direct_p, direct_d = run(path, "cuda", PROMPT, 8)
    monkeypatch.setenv("EOQ_CUDA_GRAPHS", "1")
    graph_p, graph_d = run(path, "cuda", PROMPT, 8)
    # The same kernels on the same data: the same bits.
    np.testing.assert_array_equal(graph_p, direct_p)
    np.testing.assert_array_equal(graph_d, direct_d)


@gpu
def test_prefill_equals_decode_steps_on_gpu(tiny_dir):
    # One batch of 20 prompt tokens and 20 single-token steps see the same cache; only the
    # product kernels differ (GEMM on f16 activations against integer mat-vec).
    path = tiny(tiny_dir, "Q8_0")
    batch, _ = run(path, "cuda", PROMPT, 0)
    e = _core.Engine(path, n_ctx=SHAPE["n_ctx"], n_threads=2, kv="f16", device="cuda")
    steps = []
    for t in PROMPT:
        e.eval([t])
        steps.append(e.logits().copy())
    assert nerr(np.array(steps), batch) < 3e-2


def _smollm2():
    """SmolLM2, or its first layers (EOQ_TEST_MODEL_GPU: ../shared/tools/cut_layers.py's cut, which
    fits a device call)."""
    p = os.environ.get("EOQ_TEST_MODEL_GPU") or os.environ.get("EOQ_TEST_MODEL")
    if not p:
        from eoq.models import default_model_path

        try:
            p = str(default_model_path(download=False))
        except FileNotFoundError as e:
            pytest.skip(str(e))
    if not os.path.exists(p):
        pytest.skip(f"{p} is missing")
    return p


def _greedy(core, toks, n):
    core.reset()
    core.eval(toks)
    out = []
    for _ in range(n):
        t = int(np.argmax(core.logits()))
        out.append(t)
        core.eval([t])
    return out


@gpu
def test_smollm2_greedy_text_gpu_vs_cpu():
    # Greedy decoding amplifies any float difference once two candidates are close: on this CPU the
    # f16 and f32 caches of the full SmolLM2 already part within 32 tokens on 7 of these 8 prompts
    # (on the 10-block cut, 1 of 8), at CPU logit margins up to 0.36 (tools/greedy_agreement.py
    # --a cpu:f16 --b cpu:f32 reproduces it). The GPU differs from the CPU's
    # f16 cache by about as much (float attention accumulators where the CPU keeps ggml's f16 ones,
    # another summation order). So the strict checks are teacher-forced: fed the CPU's greedy
    # tokens, the GPU picks the same next token at >= 95% of the steps (measured on the H200: 254 of
    # 256); and the free-running greedy texts are equal on most prompts (measured: 6 of 8; printed
    # with where they part).
    path = _smollm2()
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
               "The three laws of thermodynamics are", "1, 2, 3, 4, 5,", "Dear Sir or Madam, I am writing to",
               "The quick brown fox", "In 1492, Columbus"]
    cpu = _core.Engine(path, n_ctx=512, n_threads=2, kv="f16", device="cpu")
    gpu_e = _core.Engine(path, n_ctx=512, n_threads=2, kv="f16", device="cuda")
    same, agree, steps, report = 0, 0, 0, []
    for p in prompts:
        toks = cpu.tokenize(p)
        a, b = _greedy(cpu, toks, 32), _greedy(gpu_e, toks, 32)
        gpu_e.reset()
        gpu_e.eval(toks)
        for t in a:  # teacher forcing: the CPU's tokens
            agree += int(np.argmax(gpu_e.logits())) == t
            steps += 1
            gpu_e.eval([t])
        if a == b:
            same += 1
            report.append(f"{p!r}: equal")
            continue
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 32)
        cpu.reset()
        cpu.eval(toks + a[:i])
        lg = cpu.logits()
        report.append(f"{p!r}: parted at token {i}, CPU logit margin {float(lg[a[i]] - lg[b[i]]):.4f}")
    print(f"\ngreedy equal on {same} of {len(prompts)}; teacher-forced top-1 agreement {agree}/{steps}")
    print("\n".join(report))
    assert agree >= 0.95 * steps, (agree, steps, report)
    assert same * 2 > len(prompts), report


@gpu
def test_smollm2_logits_gpu_vs_cpu():
    path = _smollm2()
    logits = {}
    for dev in ("cpu", "cuda"):
        with Engine(path, n_ctx=512, device=dev) as e:
            toks = e.tokenize("Long contexts need compressed caches, because the cache grows with every token. " * 4)
            logits[dev] = e.eval_logits(toks)
    p = logits["cpu"].astype(np.float64)
    q = logits["cuda"].astype(np.float64)
    lp = p - p.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = q - q.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    kld = float(np.mean(np.sum(np.exp(lp) * (lp - lq), 1)))
    print(f"\nSmolLM2 prompt logits, GPU vs CPU: mean KLD {kld:.2e}, same top {np.mean(p.argmax(1) == q.argmax(1)):.3f}")
    assert kld < 2e-3, kld
    assert np.mean(p.argmax(1) == q.argmax(1)) > 0.9


@gpu
def test_gpu_refuses_what_does_not_fit_and_modes_it_lacks(tiny_dir):
    path = tiny(tiny_dir, "F16")
    with pytest.raises(EoqError, match=r"needs \d+ bytes .* free"):
        _core.Engine(path, n_ctx=1 << 30, kv="f16", device="cuda")
    with pytest.raises(EoqError, match="eoq modes are not on the GPU yet.*eigensolver"):
        _core.Engine(path, n_ctx=64, kv="eoq2", device="cuda")
    n = _core.cuda.unavailable_reason(99)
    assert "cuda:99 does not exist" in n
    with pytest.raises(EoqError, match="cuda:99"):
        Engine(path, n_ctx=64, device="cuda:99")


def test_cuda_where_it_cannot_run_is_one_clear_line(tiny_dir):
    # Runs everywhere: on a machine without a GPU (CI) every CUDA request fails in one line naming
    # why; on a GPU machine only the bad index does.
    path = tiny(tiny_dir, "F32")
    with pytest.raises(EoqError, match="not one of cpu, cuda, cuda:N"):
        Engine(path, n_ctx=64, device="tpu")
    if REASON:
        with pytest.raises(EoqError) as ei:
            Engine(path, n_ctx=64, device="cuda")
        msg = str(ei.value)
        assert "\n" not in msg and REASON in msg
        assert ei.value.code == "unsupported"
    else:
        assert _core.cuda.built()
