"""Q/K/V capture (Engine.capture_qkv) against the NumPy reference forward, the block study
(eoq-blockstudy) end to end on a tiny model, and the report (eoq-report) from small inputs."""
import json
import math
import sys

import numpy as np
import pytest

from eoq import _core
from eoq import blockstudy as bsm
from eoq import report as rpt
from ref_llama import RefLlama
from tiny_models import write_tiny_llama

TOKENS = [5, 77, 300, 12, 99, 250, 31, 64, 7, 200, 150, 3, 42, 111, 222, 17] * 3  # 48, over 3 batches


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("blockstudy")


@pytest.fixture(scope="module")
def tiny_gqa(tiny_dir):
    """F32 weights (no activation quantization in the matmul), GQA 4:2, rope_freqs, 3 layers."""
    path = tiny_dir / "gqa.gguf"
    write_tiny_llama(path, "F32", n_layer=3, n_head=4, n_head_kv=2, rope_freqs=True, n_ctx=256)
    return str(path)


@pytest.fixture(scope="module")
def tiny_d64(tiny_dir):
    """head_dim 64 like SmolLM2: n_embd 128, 2 query heads sharing 1 KV head, 2 layers."""
    path = tiny_dir / "d64.gguf"
    write_tiny_llama(path, "F32", n_layer=2, n_embd=128, n_head=2, n_head_kv=1, n_ctx=1024)
    return str(path)


# --- capture ------------------------------------------------------------------------------

def test_capture_qkv_matches_reference(tiny_gqa):
    """With an f32 capture cache every layer's q/k/v equals the float32 reference forward to
    float32 rounding; the engine's own (eoq) cache and state are left alone."""
    _, ref = RefLlama.load(tiny_gqa, np.float32).forward(TOKENS, return_kv=True)
    e = _core.Engine(tiny_gqa, n_ctx=64, n_threads=2, kv="eoq2", n_batch=16)
    e.eval(TOKENS[:5])
    logits = e.logits().copy()
    got = e.capture_qkv(TOKENS, kv="f32")
    assert e.n_past == 5 and np.array_equal(e.logits(), logits)
    assert set(got) == {"q", "k", "v"}
    assert got["q"].shape == (3, len(TOKENS), 4, 16) and got["q"].dtype == np.float32
    assert got["k"].shape == got["v"].shape == (3, len(TOKENS), 2, 16)
    for name in "qkv":
        r = np.stack(getattr(ref, name))
        for il in range(3):
            # float32 arithmetic in both, different summation orders: a few ulps of the scale.
            assert rel_err(got[name][il], r[il]) < 2e-5, (name, il)


def test_capture_qkv_default_f16_cache(tiny_gqa):
    """Default capture cache f16: layer 0 is exact (nothing cached yet feeds it); later layers
    see attention over f16-rounded K/V, so they differ by about f16 rounding (2^-11)."""
    _, ref = RefLlama.load(tiny_gqa, np.float32).forward(TOKENS, return_kv=True)
    got = _core.Engine(tiny_gqa, n_ctx=64, n_threads=2).capture_qkv(TOKENS)
    for name in "qkv":
        r = np.stack(getattr(ref, name))
        assert rel_err(got[name][0], r[0]) < 2e-5
        assert rel_err(got[name], r) < 2e-3


def test_capture_qkv_bad_arguments(tiny_gqa):
    e = _core.Engine(tiny_gqa, n_ctx=32, n_threads=1)
    with pytest.raises(_core.EoqError, match="no tokens"):
        e.capture_qkv([])
    with pytest.raises(_core.EoqError, match="n_ctx"):
        e.capture_qkv([1] * 33)
    with pytest.raises(_core.EoqError, match="out of range"):
        e.capture_qkv([1, 10 ** 6])
    with pytest.raises(_core.EoqError, match="unknown KV cache mode"):
        e.capture_qkv([1, 2], kv="f8")
    assert e.capture_qkv([1, 2])["k"].shape[1] == 2  # still usable


# --- block study pieces -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["turbo3", "eoq2"])
def test_study_blocks_mirror_the_cache(mode):
    """Rotation seed, f16 rounding and sealing as the study does them reproduce the cache's own
    sealed blocks bit for bit (KVCacheTester.dequantized undoes the rotation)."""
    rng = np.random.default_rng(3)
    d, B, S, seed = 64, 128, 4, 1234
    n = S + B + 5
    t = _core.KVCacheTester({"mode": mode, "ring": 0, "block": B, "sinks": S, "seed": seed}, 2, 2, d, n, 1)
    for il in range(2):
        k = (rng.standard_normal((n, 2, d)) * np.linspace(0.2, 2, d)).astype(np.float32)
        k[:, :, 3] += 4  # a shared direction: eoq finds rank >= 1
        v = rng.standard_normal((n, 2, d)).astype(np.float32)
        t.append(il, k, v)
        dk, dv = t.dequantized(il)
        for g in range(2):
            rs = bsm.mix_seed(seed, il, g)
            for x, dx in ((k, dk), (v, dv)):
                X = bsm._f16(_core.rotation_apply(x[S:S + B, g], rs))
                r = _core.seal_block(X, bits=int(mode[-1]), rank_cap=3 if mode.startswith("eoq") else 0)
                np.testing.assert_array_equal(_core.rotation_apply(r["recon"], rs, transpose=True), dx[S:S + B, g])


def test_bits_for_error_log_linear():
    bits = [2.25, 3.25, 4.25]
    err = [4.0 ** -b for b in bits]  # exactly log-linear
    for b in (2.5, 3.0, 4.0):
        got, extra = bsm.bits_for_error(bits, err, 4.0 ** -b)
        assert abs(got - b) < 1e-12 and not extra
    got, extra = bsm.bits_for_error(bits[::-1], err[::-1], 4.0 ** -5)  # unsorted input, beyond the range
    assert abs(got - 5) < 1e-12 and extra
    got, extra = bsm.bits_for_error(bits, err, 4.0 ** -1.5)
    assert abs(got - 1.5) < 1e-12 and extra
    assert math.isnan(bsm.bits_for_error(bits[:1], err[:1], 0.1)[0])
    assert math.isnan(bsm.bits_for_error(bits, err, 0.0)[0])
    saved = bsm.bits_saved({"turbo2": {"bits": 2.25, "e": err[0]}, "turbo3": {"bits": 3.25, "e": err[1]},
                            "eoq2": {"bits": 2.5, "e": 4.0 ** -3.0}}, "e")
    assert abs(saved["eoq2"]["saved"] - 0.5) < 1e-12 and not saved["eoq2"]["extrapolated"]


def test_block_and_query_selection():
    assert bsm.block_starts(2048, 256, 4) == [4 + 256 * j for j in range(7)]  # 1796 + 256 > 2048 - 1
    assert bsm.block_starts(260, 256, 4) == []  # no later position
    assert bsm.block_starts(2048, 256, 4, max_blocks=2) == [4, 260]
    q = bsm.query_positions(1796, 2048, 128)
    assert q[0] == 1796 and q[-1] == 2047 and len(q) == 128 and np.all(np.diff(q) > 0)
    assert list(bsm.query_positions(10, 13, 128)) == [10, 11, 12]


def test_cache_defaults_follow_the_engine():
    cfg = bsm.cache_defaults(64)
    assert cfg["block"] == 256 and cfg["rank_cap"] == 3 and cfg["sinks"] == 4 and cfg["seed"] == 0x5EED
    assert bsm.cache_defaults(128)["block"] == 128


# --- block study end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tiny_d64, tiny_dir, wikitext):
    text = tiny_dir / "text.txt"
    text.write_text(wikitext[:20000], encoding="utf-8")
    out = tiny_dir / "bs.json"
    rc = bsm.main(["-m", tiny_d64, "-f", str(text), "-n", "300", "--block", "64", "-t", "2", "--queries", "32",
                   "-o", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_blockstudy_json_is_sane(study):
    cfg = study["config"]
    assert cfg["block"] == 64 and cfg["sinks"] == 4 and cfg["eoq_bits"] == [2, 3, 4] and cfg["turbo_bits"] == [2, 3, 4, 5]
    assert study["blocks_per_head"] == 4  # starts 4, 68, 132, 196; 260 + 64 > 299
    assert [(h["layer"], h["head"]) for h in study["heads"]] == [(0, 0), (1, 0)]
    assert [lay["layer"] for lay in study["layers"]] == [0, 1]
    for level in [study["overall"]] + study["layers"] + study["heads"]:
        for kind, attn in (("k", "ip_rel"), ("v", "out_rel")):
            modes = level[kind]["modes"]
            assert list(modes) == ["turbo2", "turbo3", "turbo4", "turbo5", "eoq2", "eoq3", "eoq4"]
            for fam, widths in (("turbo", (2, 3, 4, 5)), ("eoq", (2, 3, 4))):
                rows = [modes[f"{fam}{b}"] for b in widths]
                for metric in ("rel_mse", attn):
                    errs = [r[metric] for r in rows]
                    assert all(0 < e < 1 for e in errs), (fam, metric, errs)
                    assert all(a > b for a, b in zip(errs, errs[1:])), (fam, metric, errs)  # fall with bits
                assert all(b2["bits"] - b1["bits"] == pytest.approx(1) for b1, b2 in zip(rows, rows[1:]))
            for b in (2, 3, 4):
                t, e = modes[f"turbo{b}"], modes[f"eoq{b}"]
                assert t["rank"] == 0 and e["bits"] >= t["bits"]
                assert t["bits"] == pytest.approx(b + 16 / 64 + 8 * 8 / (64 * 64))  # codes + norm + header
            for metric in bsm.METRICS[kind]:
                assert set(level[kind]["bits_saved"][metric]) == {"eoq2", "eoq3", "eoq4"}
    blk = study["heads"][0]["k"]["blocks"][0]
    assert blk["start"] == 4 and blk["queries"] == 32 and "score_rms" in blk["modes"]["eoq2"]


def test_blockstudy_markdown(study):
    md = bsm.markdown(study)
    assert "### Overall" in md and "| K | eoq2 |" in md and "| V | turbo5 |" in md
    assert "### Bits saved per layer" in md and "\n| 1 | " in md


def test_blockstudy_bad_arguments(tiny_d64, tiny_dir, capsys):
    text = tiny_dir / "short.txt"
    text.write_text("hello world " * 200, encoding="utf-8")
    assert bsm.main(["-m", tiny_d64, "-f", str(text), "-n", "300", "--block", "32"]) == 1
    assert "must be >= head_dim" in capsys.readouterr().err
    assert bsm.main(["-m", tiny_d64, "-f", str(text), "-n", "60", "--block", "64"]) == 1
    assert "no complete block" in capsys.readouterr().err
    assert bsm.main(["-m", tiny_d64, "-f", str(text), "-n", "300", "--block", "64", "--layers", "5"]) == 1
    assert "layer 5 is out of range" in capsys.readouterr().err
    assert bsm.main(["-m", tiny_d64, "-f", str(text), "--turbo-bits", "3"]) == 1
    assert "at least two widths" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bsm.main(["-m", tiny_d64, "-f", str(text), "--eoq-bits", "two"])


# --- report -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stats():
    """Real compression statistics of a small eoq cache (3 layers x 2 KV heads, d 64)."""
    rng = np.random.default_rng(0)
    t = _core.KVCacheTester({"mode": "eoq2", "block": 64, "ring": 0}, 3, 2, 64, 200, 1)
    for il in range(3):
        k = rng.standard_normal((200, 2, 64)).astype(np.float32)
        k += 6 * rng.standard_normal((200, 2, 1)).astype(np.float32) * np.linspace(1, 0, 64, dtype=np.float32)
        t.append(il, k, rng.standard_normal((200, 2, 64)).astype(np.float32))
    return t.stats()


KLD = {"turbo2": dict(bits_per_entry=2.9, kld_mean=0.08, kld_p99=0.9, same_top=0.87, ppl=12.1),
       "eoq2": dict(bits_per_entry=3.1, kld_mean=0.035, kld_p99=0.4, same_top=0.92, ppl=11.5),
       "turbo4": dict(bits_per_entry=4.9, kld_mean=0.005, same_top=0.97)}
NEEDLE = [dict(mode=m, ctx=c, depth=d, correct=(m == "f16" or d < 0.5), trial=0)
          for m in ("f16", "eoq2") for c in (512, 1024) for d in (0.1, 0.5, 0.9)]

PNGS = {"ranks.png", "kld.png", "needle.png", "blockstudy_error.png", "blockstudy_layers.png"}


def test_report_all_sections(tmp_path, stats, study):
    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False
    res = rpt.write_report(tmp_path / "rep" / "report.md", stats=stats, kld=KLD, needle=NEEDLE, blockstudy=study)
    md = (tmp_path / "rep" / "report.md").read_text()
    for title in ("## eOptShrink ranks", "## Bits per entry against KL divergence", "## Needle retrieval",
                  "## Block study"):
        assert title in md
    assert "Skipped" not in md
    assert "| 2 | " in md  # rank table row of layer 2
    assert "| eoq2 | 3.10 | 0.0350 |" in md
    assert "| eoq2 | 512 | 1/1 | 0/1 | 0/1 | 33% |" in md and "| f16 | 1024 | 1/1 | 1/1 | 1/1 | 100% |" in md
    assert "| K | eoq2 |" in md
    assert res["plots"] == have_mpl
    if have_mpl:
        assert {p.name for p in (tmp_path / "rep").glob("*.png")} == PNGS
        for name in PNGS:
            assert f"]({name})" in md
    else:
        assert rpt.PLOTS_SKIPPED in md and not list((tmp_path / "rep").glob("*.png"))


def test_report_without_matplotlib(tmp_path, monkeypatch, stats):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = rpt.write_report(tmp_path / "report.md", stats=stats, needle=NEEDLE)
    md = (tmp_path / "report.md").read_text()
    assert not res["plots"] and not res["pngs"] and rpt.PLOTS_SKIPPED in md
    assert "| f16 | 512 |" in md


def test_report_skips_missing_inputs(tmp_path):
    res = rpt.write_report(tmp_path / "r.md", plots=False)
    md = (tmp_path / "r.md").read_text()
    assert md.count("Skipped: no") == 4 and len(res["notes"]) == 4
    assert rpt.PLOTS_SKIPPED not in md  # plots were not asked for


def test_report_cli(tmp_path, stats, study, capsys):
    files = {}
    for name, data in (("stats", stats), ("kld", {"results": KLD}), ("needle", NEEDLE), ("blockstudy", study)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    out = tmp_path / "out" / "report.md"
    assert rpt.main(["-o", str(out), "--no-plots"] + [a for k, p in files.items() for a in (f"--{k}", str(p))]) == 0
    md = out.read_text()
    assert "Skipped" not in md and "stats.json" in md
    # bad inputs give a clear error
    (tmp_path / "bad.json").write_text(json.dumps([{"mode": "f16", "ctx": 512}]))
    assert rpt.main(["-o", str(out), "--needle", str(tmp_path / "bad.json")]) == 1
    assert "lacks one of mode, ctx, depth, correct" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"eoq2": {"ppl": 3}}))
    assert rpt.main(["-o", str(out), "--kld", str(tmp_path / "bad.json")]) == 1
    assert "needs bits_per_entry and kld_mean" in capsys.readouterr().err
    assert rpt.main(["-o", str(out), "--run-stats"]) == 1
    assert "needs -f" in capsys.readouterr().err


def test_report_run_stats(tmp_path, tiny_d64, wikitext):
    text = tmp_path / "t.txt"
    text.write_text(wikitext[:5000], encoding="utf-8")
    out = tmp_path / "r" / "report.md"
    assert rpt.main(["-o", str(out), "--run-stats", "-m", tiny_d64, "-f", str(text), "-n", "600",
                     "--stats-kv", "eoq2:block=64:ring=64", "--no-plots"]) == 0
    st = json.loads((tmp_path / "r" / "stats.json").read_text())
    assert st["mode"] == "eoq2" and st["summary"]["k"]["blocks"] > 0
    assert "| 1 | " in out.read_text()


def test_report_reads_perplexity_and_sweep_json():
    """eoq-perplexity --json ({"modes": ...}) and tools/kv_sweep.py ({"results": {ctx: ...}}) files
    are read as they are written."""
    from eoq import report as rpt
    assert dict(rpt.kld_rows({"model": "m", "ctx": 512, "modes": KLD})) == KLD
    rows = dict(rpt.kld_rows({"results": {"512": {"eoq2": KLD["eoq2"]}, "2048": {"turbo2": KLD["turbo2"]}}}))
    assert rows == {"eoq2 @512": KLD["eoq2"], "turbo2 @2048": KLD["turbo2"]}
    assert dict(rpt.kld_rows({"results": {"2048": KLD}})) == KLD
