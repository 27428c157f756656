#!/usr/bin/env python3
"""Greedy generations of eoq and llama.cpp side by side: how many leading tokens agree.

    PYTHONPATH=python:build python tools/compare_llamacpp.py \\
        --llama-completion /tmp/llamacpp/build/bin/llama-completion [-m model.gguf] [-n 48]
        [--prompts FILE] [--json]

For every prompt both engines generate up to -n tokens greedily (temperature 0) from the same
prompt tokens, with an f16 KV cache:
  * eoq: eoq.Engine(kv="f16").generate(prompt_ids, temperature=0), prompt_ids being the prompt
    tokenized as llama-completion tokenizes it (BOS when the model adds one, special-token texts
    such as <|im_start|> parsed as special tokens);
  * llama.cpp: llama-completion -p PROMPT --no-escape -n N --temp 0 -no-cnv --no-display-prompt
    --verbose-prompt (its prompt token ids are read from the --verbose-prompt listing and checked
    against eoq's; its generated text is read from stdout, " [end of text]" marking EOS).
llama-completion prints text, not generated ids, so its tokens are matched against eoq's: the
number of identical leading tokens is the number of eoq tokens whose text pieces, concatenated,
are a prefix of llama.cpp's output bytes (a divergence shows as a differing piece; the EOS token,
empty as text, counts as identical when llama.cpp also stopped there). Where they part, eoq's
logit gap between its top two tokens is printed: near-ties flip on rounding differences.

Chat-template prompts are written out in the model's template (ChatML for SmolLM2) and passed as
plain text to both engines.

--prompts FILE: a JSON list of strings, or a text file of prompts separated by lines "---".
Prints one line per prompt and a summary: prompts with >= 32 identical leading tokens, or where
both stopped at EOS with identical output.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

CHATML = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

DEFAULT_PROMPTS = [
    # prose
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "The history of the Roman Empire spans more than a thousand years. It began",
    "Photosynthesis is the process by which green plants",
    # code
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "#include <stdio.h>\n\nint main(void) {\n",
    "SELECT name, COUNT(*) AS orders\nFROM customers c\nJOIN orders o ON",
    # lists
    "Here is a list of the planets of the solar system:\n1. Mercury\n2.",
    "Ingredients for pancakes:\n-",
    # questions
    "Question: What is the capital of France?\nAnswer:",
    "Q: Why is the sky blue?\nA:",
    # chat-template formatted
    CHATML.format(system=SYSTEM, user="What is the capital of France?"),
    CHATML.format(system=SYSTEM, user="Write a Python function that reverses a string."),
    CHATML.format(system=SYSTEM, user="Give me three tips for sleeping better."),
]

_VP_COUNT = re.compile(r"number of tokens in prompt = (\d+)")
_VP_LINE = re.compile(r"^(?:[0-9.]+ [A-Z] )?\s*(-?\d+) -> '")
_EOT = b" [end of text]\n"


def load_prompts(path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".json"):
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return prompts
    return [p.strip("\n") for p in re.split(r"(?m)^---\s*$", text) if p.strip()]


def llama_generate(binary, model, prompt, n, threads, n_ctx):
    """-> (prompt ids as llama.cpp tokenized them, output bytes, stopped at EOS)"""
    # -p with --no-escape: the prompt exactly as given (-f would drop a final newline, and escape
    # processing would turn a literal backslash-n of a code prompt into a newline).
    cmd = [binary, "-m", model, "-p", prompt, "--no-escape", "-n", str(n), "--temp", "0", "--top-k", "1",
           "--repeat-penalty", "1", "-no-cnv", "--no-display-prompt", "--verbose-prompt",
           "-c", str(n_ctx), "-t", str(threads), "--seed", "0", "--simple-io", "--no-warmup"]
    r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    if r.returncode != 0:
        tail = r.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"llama-completion failed ({r.returncode}): " + " | ".join(tail))
    err = r.stderr.decode("utf-8", "replace")
    # --verbose-prompt: "number of tokens in prompt = N", then N lines "<id> -> '<piece>'" (log
    # prefixes before them; a piece with a newline continues on the next line)
    ids = []
    m = _VP_COUNT.search(err)
    if m:
        want = int(m.group(1))
        for line in err[m.end():].splitlines():
            t = _VP_LINE.match(line)
            if t:
                ids.append(int(t.group(1)))
                if len(ids) == want:
                    break
    # stdout: the generated text, " [end of text]\n" when it stopped at EOS, then "\n\n"
    out = r.stdout
    if out.endswith(b"\n\n"):
        out = out[:-2]
    eos = out.endswith(_EOT)
    if eos:
        out = out[:-len(_EOT)]
    return ids, out, eos


def leading_identical(engine, eoq_tokens, eoq_eos, llama_out, llama_eos):
    """Number of eoq tokens whose pieces, concatenated, are a prefix of llama.cpp's output."""
    pos = 0
    k = 0
    for t in eoq_tokens:
        piece = engine.core.token_to_piece(t, False)
        if llama_out[pos:pos + len(piece)] != piece:
            break
        pos += len(piece)
        k += 1
    full = k == len(eoq_tokens) and pos == len(llama_out)
    if full and eoq_eos and llama_eos:
        k += 1  # the EOS token itself
    return k, full


def main(argv=None):
    ap = argparse.ArgumentParser(prog="compare_llamacpp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-completion", required=True, metavar="PATH", help="llama.cpp's llama-completion")
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("-n", type=int, default=48, help="tokens to generate (default 48)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("--prompts", metavar="FILE", help="JSON list of prompts, or prompts separated by '---' lines")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    a = ap.parse_args(argv)

    import numpy as np

    import eoq

    model = a.model or str(eoq.default_model_path(download=True))
    prompts = load_prompts(a.prompts) if a.prompts else DEFAULT_PROMPTS
    eng = eoq.Engine(model, n_ctx=a.ctx_size, n_threads=a.threads, kv="f16", prefix_cache=False)
    results = []
    for i, prompt in enumerate(prompts):
        ids = eng.tokenize(prompt, add_special=True, parse_special=True)
        c = eng.generate(ids, max_tokens=a.n, temperature=0)
        eoq_tokens = list(c.tokens)
        # Completion.tokens excludes the end-of-generation token; finish_reason says why it stopped.
        eoq_eos = c.finish_reason == "stop"  # no stop strings here: an end-of-generation token
        l_ids, l_out, l_eos = llama_generate(a.llama_completion, model, prompt, a.n, a.threads, a.ctx_size)
        same_prompt = l_ids == ids
        k, full = leading_identical(eng, eoq_tokens, eoq_eos, l_out, l_eos)
        n_eoq = len(eoq_tokens) + (1 if eoq_eos else 0)
        gap = None
        if not full and k < len(eoq_tokens):
            # eoq's margin between its top two tokens where the outputs part: a near-tie (a few
            # hundredths of a logit) is rounding, a wide margin points at a real difference
            top = np.sort(eng.eval_logits(ids + eoq_tokens[:k])[-1])[-2:]
            gap = float(top[1] - top[0])
        res = dict(prompt=prompt, diverge_logit_gap=gap, prompt_tokens=len(ids), same_prompt_tokens=same_prompt, identical=k,
                   eoq_tokens=n_eoq, eoq_eos=eoq_eos, llama_eos=l_eos, identical_output=full and eoq_eos == l_eos,
                   eoq_text=eng.detokenize(eoq_tokens), llama_text=l_out.decode("utf-8", "replace"))
        results.append(res)
        short = prompt.replace("\n", "\\n")
        short = short if len(short) <= 48 else short[:45] + "..."
        note = "" if same_prompt else f"  (PROMPT TOKENS DIFFER: llama.cpp {len(l_ids)}, eoq {len(ids)})"
        stop = ("EOS both" if eoq_eos and l_eos else "EOS eoq only" if eoq_eos else "EOS llama.cpp only" if l_eos
                else "-")
        print(f"{i + 1:2d}. {short:<48}  identical {k:2d}/{n_eoq:2d}  {stop:<18}{note}", flush=True)
        if gap is not None:
            print(f"      diverges at token {k + 1}: eoq's top-2 logit gap there {gap:.3f}")
        if not res["identical_output"]:
            print(f"      eoq:       {res['eoq_text']!r}\n      llama.cpp: {res['llama_text']!r}", flush=True)

    ok = [r for r in results if r["identical"] >= 32 or (r["eoq_eos"] and r["llama_eos"] and r["identical_output"])]
    print(f"\n{len(ok)}/{len(results)} prompts reach >= 32 identical tokens or stop at EOS identically "
          f"({sum(r['identical_output'] for r in results)} fully identical; "
          f"{sum(r['same_prompt_tokens'] for r in results)}/{len(results)} with identical prompt tokens)")
    if a.json:
        print(json.dumps(results, indent=2))
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
