"""Greedy texts of two engine configurations, prompt by prompt: equal, or where they part and by
how much the first configuration preferred its own token (its logit margin there).

  python tools/greedy_agreement.py -m model.gguf --a cpu:f16 --b cpu:f32     # the CPU's caches
  python tools/greedy_agreement.py -m model.gguf --a cpu:f16 --b cuda:f16    # GPU against CPU

The prompts are tests/test_gpu_model.py's; 32 tokens each.
"""
import argparse

import numpy as np

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three laws of thermodynamics are", "1, 2, 3, 4, 5,", "Dear Sir or Madam, I am writing to",
           "The quick brown fox", "In 1492, Columbus"]


def greedy(core, toks, n):
    core.reset()
    core.eval(toks)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(core.logits())))
        core.eval([out[-1]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--a", default="cpu:f16", help="device:kv of the reference (default cpu:f16)")
    ap.add_argument("--b", default="cpu:f32", help="device:kv compared with it (default cpu:f32)")
    ap.add_argument("-n", type=int, default=32, help="tokens per prompt")
    a = ap.parse_args()
    from eoq import _core

    def make(spec):
        dev, _, kv = spec.rpartition(":")
        return _core.Engine(a.model, n_ctx=512, n_threads=2, kv=kv, device=dev or "cpu")

    ea, eb = make(a.a), make(a.b)
    same = 0
    for p in PROMPTS:
        toks = ea.tokenize(p)
        x, y = greedy(ea, toks, a.n), greedy(eb, toks, a.n)
        if x == y:
            same += 1
            print(f"{p!r}: equal")
            continue
        i = next(i for i, (u, v) in enumerate(zip(x, y)) if u != v)
        ea.reset()
        ea.eval(toks + x[:i])
        lg = ea.logits()
        print(f"{p!r}: parted at token {i}, margin {float(lg[x[i]] - lg[y[i]]):.4f}")
    print(f"equal on {same} of {len(PROMPTS)}")


if __name__ == "__main__":
    main()
