"""eoq-perplexity end to end: its perplexity equals one computed independently from the NumPy
reference forward over the same chunks (llama-perplexity's scoring: the second half of each
chunk), its KL-divergence mode is zero for an f16 cache against itself and positive for a
compressed one, and it writes the JSON the report tools read."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ref_llama import RefLlama
from tiny_models import TRAIN_TEXT, write_tiny_llama

CTX = 32


def run_ppl(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "eoq.perplexity", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppl")
    model = d / "tiny.gguf"
    write_tiny_llama(model, "F32", n_embd=128, n_head=4, n_head_kv=2)  # head_dim 32, F32: no activation quantization
    text = d / "text.txt"
    text.write_text((TRAIN_TEXT + "\n") * 6, encoding="utf-8")
    return str(model), str(text)


def reference_ppl(model, text, n_ctx, n_chunks):
    from eoq import _core
    e = _core.Engine(model, n_ctx=n_ctx, n_threads=1, kv="f16")
    toks = e.tokenize(open(text, encoding="utf-8", newline="").read(), add_special=True, parse_special=False)
    ref = RefLlama.load(model, np.float64)
    nll = []
    for i in range(min(n_chunks, len(toks) // n_ctx)):
        chunk = list(toks[i * n_ctx:(i + 1) * n_ctx])
        if e.add_bos and e.bos >= 0:
            chunk[0] = e.bos
        logits = ref.forward(chunk).astype(np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):  # logits at j predict token j + 1
            lp = logits[j] - logits[j].max()
            lp -= math.log(np.exp(lp).sum())
            nll.append(-lp[chunk[j + 1]])
    return math.exp(np.mean(nll)), len(nll)


def test_perplexity_matches_numpy_reference(tiny):
    model, text = tiny
    r = run_ppl("-m", model, "-f", text, "-c", CTX, "--chunks", 3, "-t", 1)
    assert r.returncode == 0, r.stderr
    m = re.search(r"PPL = ([0-9.]+)", r.stdout)
    n = re.search(r"scored tokens (\d+)", r.stdout)
    ppl_ref, n_ref = reference_ppl(model, text, CTX, 3)
    assert int(n.group(1)) == n_ref == 3 * (CTX // 2 - 1)
    assert float(m.group(1)) == pytest.approx(ppl_ref, rel=2e-3)  # f16 cache vs exact float64


def test_kl_divergence_mode_and_json(tiny, tmp_path):
    model, text = tiny
    out = tmp_path / "kld.json"
    r = run_ppl("-m", model, "-f", text, "-c", CTX, "--chunks", 2, "--kl-divergence", "--json", out,
                "--kv", "f16,eoq2:block=8:ring=0:sinks=2,turbo2:block=8:ring=0")
    assert r.returncode == 0, r.stderr
    assert "| f16 | 16.00 |" in r.stdout and "| eoq2:block=8:ring=0:sinks=2 |" in r.stdout
    res = json.loads(out.read_text())
    assert res["ctx"] == CTX
    f16, eoq, turbo = (res["modes"][k] for k in ("f16", "eoq2:block=8:ring=0:sinks=2", "turbo2:block=8:ring=0"))
    assert f16["kld_mean"] == 0 and f16["same_top"] == 1 and f16["cache"] == {}
    assert f16["scored"] == eoq["scored"] == 2 * (CTX // 2 - 1)
    for m in (eoq, turbo):
        assert 0 < m["kld_mean"] <= m["kld_p99"] <= m["kld_max"] and 0 < m["same_top"] <= 1
        assert m["ppl"] > 0 and m["ln_ratio"] == pytest.approx(math.log(m["ppl"] / m["ppl_f16"]), abs=1e-9)
        assert m["bits_per_entry"] < 16
        c = m["cache"]
        assert c["params"]["block"] == 8 and c["seal_ms_per_block"] > 0
        assert len(c["k"]["mean_rank_by_layer"]) == 2  # tiny model layers
    assert turbo["cache"]["k"]["mean_rank"] == 0 and turbo["cache"]["k"]["bits_per_entry_sealed"] == pytest.approx(
        2 + 16 / 32 + 64 / (8 * 32))


@pytest.mark.parametrize("args,msg", [
    (["-c", "4"], "ctx-size"),
    (["--kv", "eoq2,f16"], "kl-divergence"),
    (["--kv", "eoq2:ring"], "key=value"),
    (["--json", "x.json"], "--json needs"),
    (["--kv", "eoq9", "--kl-divergence"], "eoq9"),
])
def test_bad_arguments(tiny, args, msg):
    model, text = tiny
    r = run_ppl("-m", model, "-f", text, *args)
    assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
