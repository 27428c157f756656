"""eoq-bench (`python -m eoq.bench`) end to end on a tiny random model, and its parser of
llama-bench's JSON output. None of this needs llama.cpp: the --llama-bench path is exercised with a
stand-in script that prints llama-bench-format JSON."""
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest

from tiny_models import write_tiny_llama


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_bench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "eoq.bench", *map(str, args)], capture_output=True,
                          stdin=subprocess.DEVNULL, env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # head_dim 64, as SmolLM2 (the quantized caches need a multiple of 32)
    return str(write_tiny_llama(tmp_path_factory.mktemp("bench") / "tiny.gguf", n_embd=128, n_head=2, n_head_kv=1,
                                n_ff=256, n_ctx=256).path)


def _table(stdout: str):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "").strip()) == set()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(r) == len(header) for r in rows)
    return header, [dict(zip(header, r)) for r in rows]


def test_markdown_table(tiny):
    r = run_bench("-m", tiny, "-p", 16, "-n", 4, "-d", "0,24", "--kv", "f16,q8_0,eoq2:ring=0", "-t", 1, "-r", 2)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "[1/6]" in err and "[6/6]" in err  # progress on stderr
    header, rows = _table(r.stdout.decode())
    assert header == ["model", "kv", "threads", "test", "t/s", "KV MiB", "peak RSS MiB"]
    got = [(x["kv"], x["test"]) for x in rows]
    want = [(kv, t) for kv in ("f16", "q8_0", "eoq2:ring=0") for t in ("pp16", "tg4", "pp16 @ d24", "tg4 @ d24")]
    assert got == want
    for x in rows:
        assert x["model"] == "tiny" and x["threads"] == "1"
        m = re.fullmatch(r"([0-9.]+) ± ([0-9.]+)", x["t/s"])
        assert m and float(m.group(1)) > 0, x
        assert float(x["KV MiB"]) > 0 and float(x["peak RSS MiB"]) > 0
    kv = {(x["kv"], x["test"]): float(x["KV MiB"]) for x in rows}
    assert kv[("f16", "pp16 @ d24")] > kv[("f16", "pp16")]  # 40 tokens held vs 16
    assert kv[("q8_0", "pp16 @ d24")] < kv[("f16", "pp16 @ d24")]


def test_json_output(tiny):
    r = run_bench("-m", tiny, "-p", 8, "-n", 3, "-d", 16, "--kv", "q4_0", "-t", "1,2", "-r", 3, "-o", "json")
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout.decode())
    rows = doc["rows"]
    assert [(x["threads"], x["test"]) for x in rows] == [(1, "pp8 @ d16"), (1, "tg3 @ d16"),
                                                         (2, "pp8 @ d16"), (2, "tg3 @ d16")]
    for x in rows:
        assert x["kv"] == "q4_0" and x["n_depth"] == 16
        assert len(x["samples_ts"]) == 3 and all(s > 0 for s in x["samples_ts"])
        assert x["avg_ts"] > 0 and x["stddev_ts"] >= 0 and x["median_ts"] > 0
        assert x["kv_tokens"] == 16 + (8 if x["test"].startswith("pp") else 3)
        assert x["kv_bytes"] > 0 and x["peak_rss_bytes"] > x["kv_bytes"]
        assert 4 < x["bits_per_entry"] < 5
        assert "llama" not in x
    assert doc["llama_cpp_build"] is None


@pytest.mark.parametrize("args", [
    ["-p", "x"], ["-d", "0,abc"], ["-d", "-5"], ["--kv", "bogus"], ["--kv", "eoq2:ring"],
    ["-r", "0"], ["-t", "0"], ["-p", "0", "-n", "0"], ["-o", "csv"], ["--no-such-flag"],
    ["--llama-bench", "/nonexistent/llama-bench"], ["--llama-bench-args", "--poll 0"],
])
def test_usage_errors_exit_2(tiny, args):
    r = run_bench("-m", tiny, *args)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("eoq-bench: error: ")
    assert r.stdout == b""


def test_runtime_errors_one_line(tiny, tmp_path):
    r = run_bench("-m", tmp_path / "missing.gguf", "-p", 4, "-n", 2)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == [f"eoq-bench: error: model file "
                                                            f"{str(tmp_path / 'missing.gguf')!r} not found"]
    # a knob the KV cache does not know: reported by the worker, one line
    r = run_bench("-m", tiny, "-p", 4, "-n", 2, "--kv", "eoq2:no_such_knob=1", "-t", 1, "-r", 1)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("eoq-bench: error: kv eoq2:no_such_knob=1")
    # a depth beyond the model is fine (the engine's n_ctx is depth + max(p, n)), but a bad model file is not
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    r = run_bench("-m", bad, "-p", 4, "-n", 2, "-t", 1, "-r", 1)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("eoq-bench: error: ")]) == 1


# Two tests as llama-bench `-o json` prints them (fields abridged where llama-bench prints many).
LLAMA_BENCH_JSON = """[
  {
    "build_commit": "0c1e570",
    "build_number": 0,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama ?B Q4_1",
    "model_size": 92000000,
    "model_n_params": 134515008,
    "n_batch": 512,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "q8_0",
    "type_v": "q8_0",
    "n_gpu_layers": 99,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": 1,
    "tensor_split": "0.00",
    "use_mmap": true,
    "embeddings": false,
    "n_prompt": 512,
    "n_gen": 0,
    "n_depth": 2048,
    "test_time": "2026-05-01T10:00:00Z",
    "avg_ns": 4571428571,
    "stddev_ns": 100000000,
    "avg_ts": 112.000000,
    "stddev_ts": 2.500000,
    "samples_ns": [ 4500000000, 4600000000, 4614285714 ],
    "samples_ts": [ 113.778, 111.304, 110.959 ]
  },
  {
    "build_commit": "0c1e570",
    "build_number": 0,
    "model_filename": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama ?B Q4_1",
    "model_size": 92000000,
    "n_batch": 512,
    "n_threads": 2,
    "type_k": "q8_0",
    "type_v": "q8_0",
    "flash_attn": 1,
    "n_prompt": 0,
    "n_gen": 64,
    "n_depth": 2048,
    "test_time": "2026-05-01T10:00:09Z",
    "avg_ns": 810126582,
    "stddev_ns": 20000000,
    "avg_ts": 79.000000,
    "stddev_ts": 1.900000,
    "samples_ns": [ 800000000, 810126582, 820253164 ],
    "samples_ts": [ 80.0, 79.0, 78.0247 ]
  }
]
"""

LLAMA_VERBOSE_LOG = """llama_model_loader: loaded meta data with 33 key-value pairs
llama_kv_cache:        CPU KV buffer size =    31.88 MiB
llama_kv_cache: size =   31.88 MiB (  2560 cells,  30 layers,  1/1 seqs), K (q8_0):   15.94 MiB, V (q8_0):   15.94 MiB
llama_kv_cache:        CPU KV buffer size =    26.56 MiB
llama_kv_cache: size =   26.56 MiB (  2304 cells,  30 layers,  1/1 seqs), K (q8_0):   13.28 MiB, V (q8_0):   13.28 MiB
"""


def test_parse_llama_bench_json():
    from eoq.bench import parse_llama_bench_json, parse_llama_kv_sizes

    rows = parse_llama_bench_json(LLAMA_BENCH_JSON)
    assert [r["test"] for r in rows] == ["pp", "tg"]
    pp, tg = rows
    assert (pp["n_prompt"], pp["n_gen"], pp["n_depth"], pp["n_threads"]) == (512, 0, 2048, 2)
    assert (tg["n_prompt"], tg["n_gen"], tg["n_depth"]) == (0, 64, 2048)
    assert pp["type_k"] == pp["type_v"] == "q8_0" and pp["flash_attn"] == 1
    assert pp["avg_ts"] == 112.0 and pp["stddev_ts"] == 2.5
    assert pp["samples_ts"] == [113.778, 111.304, 110.959] and pp["median_ts"] == 111.304
    assert tg["median_ts"] == 79.0
    assert pp["build_commit"] == "0c1e570" and pp["build_number"] == 0
    # jsonl (-o jsonl) is accepted too; an empty output is no tests
    jsonl = "\n".join(json.dumps(t) for t in json.loads(LLAMA_BENCH_JSON))
    assert parse_llama_bench_json(jsonl) == rows
    assert parse_llama_bench_json("") == []
    with pytest.raises(ValueError):
        parse_llama_bench_json('[{"n_prompt": 1}]')
    assert parse_llama_kv_sizes(LLAMA_VERBOSE_LOG) == [(31.88, 2560), (26.56, 2304)]


def test_llama_bench_side_by_side(tiny, tmp_path):
    """--llama-bench with a stand-in that answers as llama-bench does (JSON on stdout, the
    verbose log on stderr): llama.cpp columns, ratio, and its build in the footer; modes llama.cpp
    lacks get '-'."""
    args_log = tmp_path / "args.txt"
    tests = json.loads(LLAMA_BENCH_JSON)
    fake = tmp_path / "llama-bench"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        a = sys.argv[1:]
        open({str(args_log)!r}, "a").write(" ".join(a) + "\\n")
        get = lambda f: a[a.index(f) + 1]
        tests = json.loads({json.dumps(json.dumps(tests))})
        out = []
        for t in tests:
            t = dict(t, n_threads=int(get("-t")), n_depth=int(get("-d")), type_k=get("-ctk"), type_v=get("-ctv"))
            if t["n_gen"]:
                t["n_gen"] = int(get("-n"))
            else:
                t["n_prompt"] = int(get("-p"))
            out.append(t)
        sys.stderr.write({LLAMA_VERBOSE_LOG!r})
        print(json.dumps(out, indent=2))
        """))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    r = run_bench("-m", tiny, "-p", 8, "-n", 2, "-d", "0,8", "--kv", "q8_0,turbo3", "-t", 1, "-r", 2,
                  "--llama-bench", fake, "--llama-bench-args", "--poll 0")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    out = r.stdout.decode()
    header, rows = _table(out)
    assert header[-4:] == ["llama.cpp t/s", "llama.cpp KV MiB", "llama.cpp peak RSS MiB", "eoq/llama.cpp"]
    assert len(rows) == 8
    for x in rows:
        if x["kv"] == "q8_0":
            assert x["llama.cpp t/s"] == ("79.00 ± 1.90" if x["test"].startswith("tg") else "112.00 ± 2.50")
            assert float(x["eoq/llama.cpp"]) > 0 and float(x["llama.cpp peak RSS MiB"]) > 0
            assert float(x["llama.cpp KV MiB"]) > 0
        else:
            assert x["llama.cpp t/s"] == "-" and x["eoq/llama.cpp"] == "-"
    assert "llama.cpp build: 0c1e570 (0)" in out
    calls = args_log.read_text().splitlines()
    assert len(calls) == 2  # one per q8_0 configuration (depth 0 and 8); none for turbo3
    for c in calls:
        assert "-ctk q8_0 -ctv q8_0" in c and "-fa 1" in c and "-o json" in c and "-r 2" in c
        assert "-p 8 -n 2" in c and "-t 1" in c and c.endswith(" --poll 0")
