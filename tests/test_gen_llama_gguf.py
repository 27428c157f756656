"""tools/gen_llama_gguf.py (random-weight Llama GGUF files for speed runs), on the tiny shape:
tensor names, shapes and types, dequantized weights finite with std ~0.02, the tokenizer and
metadata, determinism, the printed weight bytes per token, and that eoq loads and runs every
type with finite logits."""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gen_llama_gguf.py"
WTYPES = ("q4_0", "q8_0", "f16", "q4_k_m")

# tiny: 2 layers, n_embd 256, 4 heads / 2 KV heads (head_dim 64), n_ff 512, vocab 1024, untied
N_LAYER, N_EMBD, HEAD_DIM, KV_DIM, N_FF, N_VOCAB = 2, 256, 64, 128, 512, 1024


def run_tool(*args) -> str:
    r = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen_llama")
    out = {}
    for t in WTYPES:
        p = d / f"tiny-{t}.gguf"
        out[t] = (p, run_tool("--shape", "tiny", "--type", t, "-o", p, "--threads", 2))
    return out


def expected_tensors(wtype):
    """name -> (GGUF shape (ne order), type)."""
    if wtype == "q4_k_m":
        fam = {f: QT.Q4_K for f in ("token_embd", "attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")}
        fam.update(attn_v=QT.Q6_K, ffn_down=QT.Q6_K, output=QT.Q6_K)
    else:
        one = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0, "f16": QT.F16}[wtype]
        fam = {f: one for f in ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output",
                                "ffn_gate", "ffn_up", "ffn_down")}
    e = {"token_embd.weight": ([N_EMBD, N_VOCAB], fam["token_embd"]),
         "output.weight": ([N_EMBD, N_VOCAB], fam["output"]),
         "output_norm.weight": ([N_EMBD], QT.F32),
         "rope_freqs.weight": ([HEAD_DIM // 2], QT.F32)}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        e[p + "attn_norm.weight"] = ([N_EMBD], QT.F32)
        e[p + "ffn_norm.weight"] = ([N_EMBD], QT.F32)
        e[p + "attn_q.weight"] = ([N_EMBD, N_EMBD], fam["attn_q"])
        e[p + "attn_k.weight"] = ([N_EMBD, KV_DIM], fam["attn_k"])
        e[p + "attn_v.weight"] = ([N_EMBD, KV_DIM], fam["attn_v"])
        e[p + "attn_output.weight"] = ([N_EMBD, N_EMBD], fam["attn_output"])
        e[p + "ffn_gate.weight"] = ([N_EMBD, N_FF], fam["ffn_gate"])
        e[p + "ffn_up.weight"] = ([N_EMBD, N_FF], fam["ffn_up"])
        e[p + "ffn_down.weight"] = ([N_FF, N_EMBD], fam["ffn_down"])
    return e


def field(r: gguf.GGUFReader, key):
    f = r.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


def llama3_factors(head_dim, base=500000.0, factor=8.0, lo=1.0, hi=4.0, orig=8192):
    out = []
    for i in range(0, head_dim, 2):
        wl = 2 * math.pi * base ** (i / head_dim)
        if wl < orig / hi:
            out.append(1.0)
        elif wl > orig / lo:
            out.append(factor)
        else:
            s = (orig / wl - lo) / (hi - lo)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out)


@pytest.mark.parametrize("wtype", WTYPES)
def test_tensors_and_weights(tiny_files, wtype):
    path, stdout = tiny_files[wtype]
    r = gguf.GGUFReader(str(path))
    want = expected_tensors(wtype)
    got = {t.name: t for t in r.tensors}
    assert sorted(got) == sorted(want)
    for name, (shape, qt) in want.items():
        t = got[name]
        assert [int(x) for x in t.shape] == shape and t.tensor_type == qt, (name, t.shape, t.tensor_type)
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        assert x.size == math.prod(shape) and np.isfinite(x).all(), name
        if name.endswith("norm.weight"):
            assert abs(x.mean() - 1) < 0.01 and 0 < x.std() < 0.1, name
        elif name == "rope_freqs.weight":
            np.testing.assert_allclose(x, llama3_factors(HEAD_DIM), rtol=1e-5)
        else:
            assert 0.005 <= x.std() <= 0.08 and abs(x.mean()) < 0.002, (name, x.mean(), x.std())

    # printed bytes per token: every matrix once (token_embd not: the output is separate) plus
    # one token_embd row
    emb = got["token_embd.weight"]
    per_tok = sum(int(t.n_bytes) for n, t in got.items() if n != "token_embd.weight"
                  and want[n][1] != QT.F32) + int(emb.n_bytes) // N_VOCAB
    m = re.search(r"weight bytes per token: (\d+)", stdout)
    assert m and int(m.group(1)) == per_tok, stdout
    m = re.search(r"file size: (\d+) bytes", stdout)
    assert m and int(m.group(1)) == path.stat().st_size


def test_metadata_and_tokenizer(tiny_files):
    r = gguf.GGUFReader(str(tiny_files["q4_0"][0]))
    assert field(r, "general.architecture") == "llama"
    assert field(r, "llama.block_count") == N_LAYER
    assert field(r, "llama.embedding_length") == N_EMBD
    assert field(r, "llama.feed_forward_length") == N_FF
    assert field(r, "llama.attention.head_count") == 4
    assert field(r, "llama.attention.head_count_kv") == 2
    assert field(r, "llama.rope.freq_base") == 500000.0
    assert field(r, "llama.rope.dimension_count") == HEAD_DIM
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    assert len(tokens) == len(types) == N_VOCAB == len(set(tokens))
    assert len(merges) == N_VOCAB - 256 - 256
    known = set(tokens)
    for mg in merges[:50] + merges[-50:]:
        a, b = mg.split(" ")
        assert a in known and b in known and a + b in known
    bos, eos = field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id")
    assert tokens[bos] == "<|begin_of_text|>" and tokens[eos] == "<|end_of_text|>"
    assert types[bos] == types[eos] == 3


def test_deterministic_and_overrides(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    args = ["--shape", "tiny", "--type", "q4_k_m", "--layers", 1, "--vocab", 600, "--ctx", 128]
    run_tool(*args, "-o", a, "--threads", 1)
    run_tool(*args, "-o", b, "--threads", 3)
    run_tool(*args, "-o", c, "--seed", 7)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]
    r = gguf.GGUFReader(str(a))
    assert field(r, "llama.block_count") == 1 and field(r, "llama.context_length") == 128
    assert len(field(r, "tokenizer.ggml.tokens")) == 600
    names = {t.name: t for t in r.tensors}
    assert "blk.1.attn_q.weight" not in names and [int(x) for x in names["output.weight"].shape] == [N_EMBD, 600]


@pytest.mark.parametrize("wtype", WTYPES)
def test_runs_in_eoq(tiny_files, wtype):
    from eoq import Engine

    path, _ = tiny_files[wtype]
    with Engine(str(path), n_ctx=64, n_threads=2) as e:
        assert e.n_vocab == N_VOCAB
        ids = e.tokenize("Hello world, the end.")
        assert ids and ids[0] == N_VOCAB - 256  # bos first (add_bos_token)
        logits = e.eval_logits(ids[:8])
        assert logits.shape == (min(8, len(ids)), N_VOCAB) and np.isfinite(logits).all()
        assert 0.05 < float(logits.std()) < 10
        c = e.generate([N_VOCAB - 256, 300, 301], max_tokens=3, temperature=0)
        assert len(c.tokens) == 3 and all(0 <= t < N_VOCAB for t in c.tokens)
