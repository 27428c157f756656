"""eoq-run / `python -m eoq` as a subprocess: output, stderr report, exit codes."""
import re
import os
import subprocess
import sys

import pytest

PROMPT = "The capital of France is"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_cli(*args, input=None, stdin=None, timeout=180, env=None):
    kw = dict(input=input) if input is not None else dict(stdin=stdin if stdin is not None
                                                          else subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "eoq", *map(str, args)], capture_output=True,
                          env={**_env(), **(env or {})}, timeout=timeout, **kw)


def _one_error_line(r, code=1):
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == code, (r.returncode, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("eoq-run: error: "), err
    return lines[-1]


@pytest.fixture(scope="module")
def greedy_text(smollm2_path):
    from eoq import Engine

    with Engine(smollm2_path, n_ctx=64, n_threads=2) as e:
        return e.generate(PROMPT, max_tokens=8, temperature=0, parse_special=True).text


def test_generate_prints_prompt_text_and_report(smollm2_path, greedy_text):
    r = run_cli("-m", smollm2_path, "-p", PROMPT, "-n", 8, "--temp", 0, "-c", 64, "-t", 2)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert r.stdout.decode("utf-8") == PROMPT + greedy_text
    assert "Paris" in greedy_text
    assert "load time" in err and " ms" in err
    assert "prompt eval" in err and "tokens/s" in err
    assert "generation" in err and "/     8 tokens" in err
    assert "KV cache" in err and "bytes" in err and "bits per entry" in err
    assert "seed =" not in err  # greedy: the seed is irrelevant


def test_no_display_prompt_and_file_and_stdin(smollm2_path, greedy_text, tmp_path):
    r = run_cli("-m", smollm2_path, "-p", PROMPT, "-n", 8, "--temp", 0, "-c", 64,
                "--no-display-prompt")
    assert r.returncode == 0 and r.stdout.decode() == greedy_text
    f = tmp_path / "p.txt"
    f.write_text(PROMPT, encoding="utf-8")
    r = run_cli("-m", smollm2_path, "-f", f, "-n", 8, "--temp", 0, "-c", 64, "--no-display-prompt")
    assert r.returncode == 0 and r.stdout.decode() == greedy_text
    r = run_cli("-m", smollm2_path, "-n", 8, "--temp", 0, "-c", 64, "--no-display-prompt",
                input=PROMPT.encode())
    assert r.returncode == 0 and r.stdout.decode() == greedy_text


def test_chat_stats_seed(smollm2_path):
    r = run_cli("-m", smollm2_path, "-p", "What is the capital of Germany?", "--chat", "-n", 24,
                "--temp", 0.7, "--top-k", 1, "-c", 128, "--stats", "--no-display-prompt")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "Berlin" in r.stdout.decode()
    assert "seed = " in err  # random seed reported
    m = re.search(r"stats: mode f16, (\d+) tokens, (\d+) bytes, 16\.000 bits per entry", err)
    assert m, err
    # 30 layers x 3 KV heads x 64 dims x (K and V) x 2 bytes per cached token
    assert int(m.group(2)) == int(m.group(1)) * 30 * 3 * 64 * 2 * 2
    r = run_cli("-m", smollm2_path, "-p", "Hi", "--system", "Answer in one word.", "-n", 4,
                "--temp", 0, "-c", 128)
    assert r.returncode == 0
    out = r.stdout.decode()
    assert out.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nHi")


def test_seed_reproducible_and_escape(smollm2_path):
    args = ("-m", smollm2_path, "-p", "Once upon a time", "-n", 6, "--temp", 0.9, "-s", 42, "-c", 64)
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0 and a.stdout == b.stdout
    r = run_cli("-m", smollm2_path, "-e", "-p", "Line one\\nLine two", "-n", 1, "--temp", 0, "-c", 64)
    assert r.returncode == 0 and r.stdout.decode().startswith("Line one\nLine two")


def test_default_model_from_cache(smollm2_path, greedy_text, tmp_path):
    from eoq.models import DEFAULT_MODEL_FILE

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / DEFAULT_MODEL_FILE).symlink_to(os.path.abspath(smollm2_path))
    r = run_cli("-p", PROMPT, "-n", 8, "--temp", 0, "-c", 64, "--no-display-prompt",
                env={"EOQ_CACHE_DIR": str(cache), "EOQ_PYPI_URL": "http://127.0.0.1:9/none"})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == greedy_text


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("eoq-run ")


def test_missing_model(tmp_path):
    line = _one_error_line(run_cli("-m", tmp_path / "nope.gguf", "-p", "hi", "-n", 1))
    assert "nope.gguf" in line


def test_truncated_model(smollm2_path, tmp_path):
    bad = tmp_path / "trunc.gguf"
    with open(smollm2_path, "rb") as f:
        bad.write_bytes(f.read(1 << 20))
    _one_error_line(run_cli("-m", bad, "-p", "hi", "-n", 1))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    _one_error_line(run_cli("-m", junk, "-p", "hi", "-n", 1))


def test_invalid_utf8_prompt_file(smollm2_path, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"hello \xff\xfe world")
    line = _one_error_line(run_cli("-m", smollm2_path, "-f", f, "-n", 1))
    assert "UTF-8" in line
    line = _one_error_line(run_cli("-m", smollm2_path, "-f", tmp_path / "absent.txt", "-n", 1))
    assert "absent.txt" in line


@pytest.mark.parametrize("args, word", [
    (("--temp", "-1"), "temperature"),
    (("--top-p", "1.5"), "top_p"),
    (("--min-p", "2"), "min_p"),
    (("--top-k", "-3"), "top_k"),
    (("--repeat-penalty", "0"), "repeat_penalty"),
    (("-n", "-7"), "-n"),
    (("-t", "0"), "n_threads"),
    (("-c", "-5"), "n_ctx"),
    (("-ctk", "q4_0"), "cache-type-k"),
    (("-ctv", "q8_0"), "cache-type-v"),
])
def test_bad_params_exit_1(smollm2_path, args, word):
    line = _one_error_line(run_cli("-m", smollm2_path, "-p", "hi", *args))
    assert word in line


@pytest.mark.parametrize("args", [("-n", "abc"), ("--temp", "x"), ("--no-such-flag",), ("-c",)])
def test_usage_errors_exit_2(smollm2_path, args):
    r = run_cli("-m", smollm2_path, "-p", "hi", *args)
    assert r.returncode == 2
    assert b"usage:" in r.stderr


def test_prompt_too_long_for_context(smollm2_path):
    line = _one_error_line(run_cli("-m", smollm2_path, "-p", "word " * 40, "-c", 16, "-n", 4))
    assert "context" in line


def test_prompt_sources(smollm2_path, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("x")
    line = _one_error_line(run_cli("-m", smollm2_path, "-p", "hi", "-f", f))
    assert "-p or -f" in line
    # Nothing on stdin (not a terminal): an empty prompt is an error, not a hang.
    line = _one_error_line(run_cli("-m", smollm2_path, "-n", 1, timeout=60))
    assert "empty" in line


def test_terminal_stdin_is_never_read(smollm2_path):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:
        r = run_cli("-m", smollm2_path, "-n", 1, stdin=slave, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    line = _one_error_line(r)
    assert "no prompt" in line


def test_kv_knob_flags_build_the_options():
    # eoq-run's --kv-* flags are the kv_options of Engine (the same names as the C API strings)
    from eoq.cli import build_parser, kv_config
    args = build_parser().parse_args(["--kv", "eoq2", "-ctk", "3", "--kv-ring", "0", "--kv-truncate",
                                      "--kv-exact-scores", "--kv-v-rank-cap", "0"])
    assert kv_config(args) == ("eoq2", {"k_bits": 3, "ring": 0, "shrink": False, "exact_scores": True,
                                        "v_rank_cap": 0})
    assert kv_config(build_parser().parse_args([])) == ("f16", {})


def test_device_flags_as_llama_cpp_users_type_them():
    # -ngl is one flag (not -n gl); N > 0 means the GPU, --device names it; they must agree.
    from eoq.cli import CliError, build_parser, device_from_args
    p = build_parser()
    assert device_from_args(p.parse_args([])) == "cpu"
    assert device_from_args(p.parse_args(["-ngl", "99"])) == "cuda"
    assert device_from_args(p.parse_args(["-ngl", "0"])) == "cpu"
    assert device_from_args(p.parse_args(["--device", "cuda:1"])) == "cuda:1"
    assert device_from_args(p.parse_args(["-ngl", "99", "--device", "cuda:0"])) == "cuda:0"
    args = p.parse_args(["-ngl", "99", "-n", "5"])
    assert args.n_predict == 5 and args.n_gpu_layers == 99
    with pytest.raises(CliError, match="disagree"):
        device_from_args(p.parse_args(["-ngl", "0", "--device", "cuda"]))
    with pytest.raises(CliError, match=">= 0"):
        device_from_args(p.parse_args(["-ngl", "-1"]))


def test_gpu_request_without_gpu_is_one_line(smollm2_path):
    from eoq import _core
    reason = _core.cuda.unavailable_reason(0)
    if not reason:
        pytest.skip("a GPU is usable here: tests/test_gpu_model.py covers it")
    r = run_cli("-m", smollm2_path, "-p", PROMPT, "-n", "4", "-ngl", "99")
    line = _one_error_line(r)
    assert "cuda" in line and reason in line


def test_context_that_cannot_fit_is_one_line(smollm2_path):
    # eoq-run -c 100000000 used to die with a Python MemoryError traceback.
    r = run_cli("-m", smollm2_path, "-p", PROMPT, "-n", "2", "-c", "100000000")
    line = _one_error_line(r)
    assert "needs" in line and "bytes" in line and "of memory" in line


def test_context_past_training_warns(smollm2_path):
    r = run_cli("-m", smollm2_path, "-p", PROMPT, "-n", "1", "-c", "9000", "--temp", "0")
    assert r.returncode == 0
    assert "training context 8192" in r.stderr.decode()
