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
  * llama.cpp: llama-completion -p PROMPT --no-escape -n N --temp 0 --top-k 1 -no-cnv
    --no-display-prompt --verbose-prompt, as a user runs it. Its prompt ids come from
    --verbose-prompt (checked against eoq's); it prints text, not ids, so its generated ids are
    eoq's for as long as their text is a prefix of llama.cpp's, then the rest of llama.cpp's
    text tokenized by eoq (exact up to the first difference, which is what is counted).
    --session-ids reads exact ids from a --prompt-cache session file instead; llama-completion
    then evaluates the last prompt token on its own, which changes its rounding (and so its
    output) on prompts of 64 tokens or more.
The generated ids are compared one by one (eoq's end-of-generation token is appended when it
stopped there, as llama.cpp's -n counts it too). Where they part, eoq's logit gap between its own
choice and llama.cpp's is printed: a few hundredths of a logit is a near-tie that rounding
differences decide, a wide gap points at a real difference between the engines.

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
import struct
import sys
import tempfile

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


def load_prompts(path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".json"):
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return prompts
    return [p.strip("\n") for p in re.split(r"(?m)^---\s*$", text) if p.strip()]


def read_session_tokens(path):
    """Token ids of a llama.cpp session file (--prompt-cache): magic 'ggsn', version, count, ids."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12:
            raise RuntimeError(f"{path}: not a llama.cpp session file")
        magic, version, n = struct.unpack("<III", head)
        if magic != 0x6767736E:
            raise RuntimeError(f"{path}: not a llama.cpp session file (magic {magic:#x})")
        return list(struct.unpack(f"<{n}i", fh.read(4 * n)))


def llama_generate(binary, model, prompt, n, threads, n_ctx, session_ids=False):
    """-> (prompt ids llama.cpp evaluated, generated ids (EOS included when it stopped there),
    stdout text, prompt ids from --verbose-prompt)"""
    # -p with --no-escape: the prompt exactly as given (-f would drop a final newline, and escape
    # processing would turn a literal backslash-n of a code prompt into a newline).
    # --prompt-cache FILE --prompt-cache-all: at the end llama-completion saves every token it
    # evaluated or sampled (prompt, then the generated ids) to FILE: the exact ids.
    with tempfile.TemporaryDirectory() as tmp:
        session = os.path.join(tmp, "session.bin")
        cmd = [binary, "-m", model, "-p", prompt, "--no-escape", "-n", str(n), "--temp", "0", "--top-k", "1",
               "--repeat-penalty", "1", "-no-cnv", "--no-display-prompt", "--verbose-prompt",
               "-c", str(n_ctx), "-t", str(threads), "--seed", "0", "--simple-io", "--no-warmup",
               ] + (["--prompt-cache", session, "--prompt-cache-all"] if session_ids else [])
        r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
        if r.returncode != 0:
            tail = r.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise RuntimeError(f"llama-completion failed ({r.returncode}): " + " | ".join(tail))
        all_ids = read_session_tokens(session) if session_ids else None
    err = r.stderr.decode("utf-8", "replace")
    # --verbose-prompt: "number of tokens in prompt = N", then N lines "<id> -> '<piece>'" (log
    # prefixes before them; a piece with a newline continues on the next line)
    vp_ids = []
    m = _VP_COUNT.search(err)
    if m:
        want = int(m.group(1))
        for line in err[m.end():].splitlines():
            t = _VP_LINE.match(line)
            if t:
                vp_ids.append(int(t.group(1)))
                if len(vp_ids) == want:
                    break
    if all_ids is None:
        return vp_ids, None, r.stdout, vp_ids
    n_prompt = len(vp_ids) if vp_ids else 0
    return all_ids[:n_prompt], all_ids[n_prompt:], r.stdout, vp_ids


def ids_from_text(eng, eoq_gen, l_text, eoq_eos, n):
    """llama.cpp's generated ids recovered from its text (plain llama-completion prints text
    only): eoq's ids as long as their text is a prefix of llama.cpp's, then llama.cpp's
    remaining text tokenized by eoq (exact up to the first difference, which is what counts;
    beyond it only a guess at llama.cpp's next token, for the logit-gap note). When eoq stopped
    at EOS with exactly llama.cpp's text, llama.cpp stopped there too (it printed fewer than n
    tokens' worth)."""
    # at an end-of-generation token llama-completion prints " [end of text]" to stdout
    ended = re.search(rb" \[end of text\]\s*$", l_text)
    if ended:
        l_text = l_text[: ended.start()]
    out, k = [], 0
    while k < len(eoq_gen) and not eng.core.is_eog(eoq_gen[k]):
        if not l_text.startswith(eng.core.detokenize(eoq_gen[: k + 1])):
            break
        k += 1
    out = list(eoq_gen[:k])
    rest = l_text[len(eng.core.detokenize(out)):] if out else l_text
    if rest:
        out += eng.tokenize(rest.decode("utf-8", "replace"), add_special=False, parse_special=False)
    if ended:
        out.append(eoq_gen[-1] if eoq_eos and not rest and k == len(eoq_gen) - 1 else eng.core.eos)
    return out[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="compare_llamacpp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-completion", required=True, metavar="PATH", help="llama.cpp's llama-completion")
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("-n", type=int, default=48, help="tokens to generate (default 48)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("--prompts", metavar="FILE", help="JSON list of prompts, or prompts separated by '---' lines")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--session-ids", action="store_true",
                    help="read llama.cpp's generated ids from a --prompt-cache session file instead of "
                         "comparing text (note: llama-completion then evaluates the last prompt token "
                         "on its own, which changes its rounding on prompts of 64+ tokens)")
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
        eoq_gen = list(c.tokens)
        # Completion.tokens excludes the end-of-generation token; finish_reason says it stopped there
        # (no stop strings here). llama.cpp's -n counts that token, so it is compared as a token too.
        eoq_eos = c.finish_reason == "stop"
        if eoq_eos:
            eoq_gen.append(eng.core.eos)
        l_prompt, l_gen, l_out, vp_ids = llama_generate(a.llama_completion, model, prompt, a.n, a.threads,
                                                        a.ctx_size, a.session_ids)
        if l_gen is None:
            l_gen = ids_from_text(eng, eoq_gen, l_out, eoq_eos, a.n)
        l_gen = l_gen[:a.n]
        l_eos = bool(l_gen) and eng.core.is_eog(l_gen[-1])
        same_prompt = list(l_prompt) == list(ids) and vp_ids == ids
        k = 0
        while k < min(len(eoq_gen), len(l_gen)) and eoq_gen[k] == l_gen[k]:
            k += 1
        if eoq_eos and l_eos and k == len(eoq_gen) - 1 == len(l_gen) - 1:
            k += 1  # both stopped at an end-of-generation token (eos ids may differ: any EOG counts)
        full = k == len(eoq_gen) == len(l_gen)
        gap = None
        if not full and k < min(len(eoq_gen), len(l_gen)):
            # eoq's logits where the outputs part: the gap between its choice and llama.cpp's.
            # A few hundredths of a logit is a near-tie that rounding decides; a wide gap points at
            # a real difference between the engines.
            lg = eng.eval_logits(ids + eoq_gen[:k])[-1]
            gap = float(lg[eoq_gen[k]] - lg[l_gen[k]])
        text = lambda t: eng.detokenize([x for x in t if not eng.core.is_eog(x)])
        res = dict(prompt=prompt, prompt_tokens=len(ids), same_prompt_tokens=same_prompt, identical=k,
                   eoq_tokens=len(eoq_gen), llama_tokens=len(l_gen), eoq_eos=eoq_eos, llama_eos=l_eos,
                   identical_output=full, diverge_logit_gap=gap, eoq_ids=eoq_gen, llama_ids=l_gen,
                   eoq_text=text(eoq_gen), llama_text=text(l_gen))
        results.append(res)
        short = prompt.replace("\n", "\\n")
        short = short if len(short) <= 48 else short[:45] + "..."
        note = "" if same_prompt else f"  (PROMPT TOKENS DIFFER: llama.cpp {len(l_prompt)}, eoq {len(ids)})"
        stop = ("EOS both" if eoq_eos and l_eos else "EOS eoq only" if eoq_eos else "EOS llama.cpp only" if l_eos
                else "-")
        print(f"{i + 1:2d}. {short:<48}  identical {k:2d}/{max(len(eoq_gen), len(l_gen)):2d}  {stop:<18}{note}",
              flush=True)
        if gap is not None:
            print(f"      parts at token {k + 1}: eoq {eng.token_text(eoq_gen[k])!r}, llama.cpp "
                  f"{eng.token_text(l_gen[k])!r}; eoq's logit gap between the two {gap:.3f}", flush=True)
        if not full:
            print(f"      eoq:       {res['eoq_text']!r}\n      llama.cpp: {res['llama_text']!r}", flush=True)

    ok = [r for r in results if r["identical"] >= 32 or (r["eoq_eos"] and r["llama_eos"] and r["identical_output"])]
    gaps = [r["diverge_logit_gap"] for r in results if r["diverge_logit_gap"] is not None]
    print(f"\n{len(ok)}/{len(results)} prompts reach >= 32 identical tokens or stop at EOS identically "
          f"({sum(r['identical_output'] for r in results)} fully identical; "
          f"{sum(r['same_prompt_tokens'] for r in results)}/{len(results)} with identical prompt tokens)")
    if gaps:
        print(f"where they part, eoq's logit gap between the two choices: max {max(gaps):.3f}, "
              f"median {sorted(gaps)[len(gaps) // 2]:.3f}")
    if a.json:
        print(json.dumps(results, indent=2))
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
