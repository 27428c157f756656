"""eoq-run for sessions (issue 14): Ctrl-C during a long prompt stops it within one chunk,
interactive chat (-cnv) keeps the cache between turns, llama.cpp spellings (-sys, -fa, --kv
spec strings), --estimate before loading."""
import re
import signal
import subprocess
import sys
import time

from test_cli import _env, _one_error_line, run_cli


def test_sigint_stops_a_long_prompt_within_a_chunk(smollm2_path, tmp_path):
    f = tmp_path / "long.txt"
    f.write_text(" ".join(f"token{i}" for i in range(1500)), encoding="utf-8")  # ~ 6000 tokens
    p = subprocess.Popen([sys.executable, "-m", "eoq", "-m", smollm2_path, "-f", str(f), "-c", "8192",
                          "-b", "32", "-n", "4", "--temp", "0", "--verbose"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    line = p.stderr.readline().decode()  # "eoq: loaded ..." once the model is in
    assert "loaded" in line, line
    time.sleep(1.5)  # well into the prefill (6000 tokens take far longer)
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    rc = p.wait(60)
    elapsed = time.perf_counter() - t0
    err = p.stderr.read().decode()
    assert rc == 130, (rc, err)
    assert "Traceback" not in err
    assert elapsed < 5.0, elapsed  # a chunk of 32 tokens takes well under a second


def test_conversation_keeps_the_cache(smollm2_path):
    r = run_cli("-m", smollm2_path, "-cnv", "-sys", "Answer in one word.", "-n", 12, "--temp", 0, "-c", 512,
                "--verbose", "-fa", "on", input=b"What is the capital of France?\nAnd of Germany?\n")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    out = r.stdout.decode()
    assert "Paris" in out and "Berlin" in out and out.endswith("\n")
    turns = re.findall(r"turn: (\d+) prompt tokens \((\d+) reused\)", err)
    assert len(turns) == 2
    assert int(turns[0][1]) == 0 and int(turns[1][1]) > int(turns[0][0]) // 2  # the first turn reused


def test_kv_spec_strings_and_flag_spellings(smollm2_path):
    r = run_cli("-m", smollm2_path, "-p", "Hi", "-n", 2, "--temp", 0, "-c", 64, "--kv", "eoq2:ring=0:block=16",
                "--stats", "-ngl", 0, "-fa", "auto")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "stats: mode eoq2" in err and "ring=0" in err and "block=16" in err
    line = _one_error_line(run_cli("-m", smollm2_path, "-p", "Hi", "--kv", "eoq2:ring"))
    assert "not key=value" in line
    line = _one_error_line(run_cli("-m", smollm2_path, "-p", "Hi", "-fa", "maybe"))
    assert "on, off or auto" in line


def test_estimate_prints_before_loading(smollm2_path):
    r = run_cli("-m", smollm2_path, "--estimate", "-c", 100000000, "--kv", "f16")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "exceeds the model's training context 8192" in out
    m = re.search(r"KV cache\s+(\d+) bytes", out)
    assert m and int(m.group(1)) == 2 * 30 * 3 * 64 * 2 * 100000000
    assert "DOES NOT FIT" in out
    r = run_cli("-m", smollm2_path, "--estimate", "-c", 4096, "--kv", "eoq")
    assert r.returncode == 0 and "upper bound" in r.stdout.decode()


def test_prompt_cache_reuses_the_saved_session(smollm2_path, tmp_path):
    cache = tmp_path / "session.eoqstate"
    args = ("-m", smollm2_path, "-p", "The capital of France is", "-n", 6, "--temp", 0, "-c", 128,
            "--prompt-cache", cache)
    r1 = run_cli(*args)
    assert r1.returncode == 0, r1.stderr.decode()
    assert cache.is_file() and "(0 of the prompt reused)" in r1.stderr.decode()
    r2 = run_cli(*args)
    err = r2.stderr.decode()
    assert r2.returncode == 0, err
    assert r2.stdout == r1.stdout
    m = re.search(r"\((\d+) of the prompt reused\)", err)
    assert m and int(m.group(1)) == 4  # all 5 prompt tokens but the last, evaluated again for its logits
    # A cache from another configuration is ignored with a warning, not an error.
    r3 = run_cli("-m", smollm2_path, "-p", "Hi", "-n", 1, "--temp", 0, "-c", 128, "--kv", "f32",
                 "--prompt-cache", cache)
    assert r3.returncode == 0 and "prompt cache" in r3.stderr.decode() and "not used" in r3.stderr.decode()


def test_progress_line_on_a_terminal(smollm2_path, tmp_path):
    """With stderr on a terminal, a prompt longer than -b shows 'prompt done/total' updates,
    erased before the text; without a terminal (every other test) nothing of it appears."""
    import os
    import pty

    f = tmp_path / "p.txt"
    f.write_text(" ".join(f"w{i}" for i in range(60)), encoding="utf-8")
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "eoq", "-m", smollm2_path, "-f", str(f), "-b", "32", "-n", "2",
                          "--temp", "0", "-c", "512", "--no-display-prompt"],
                         stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=_env())
    os.close(slave)
    out = p.stdout.read()
    rc = p.wait(120)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert rc == 0, err
    m = re.findall(r"prompt (\d+)/(\d+) tokens", err)
    assert m and m[0][0] == "32" and int(m[0][1]) > 64, err
    assert "\x1b[K" in err  # the line is erased
    assert b"prompt 32/" not in out
