"""Throughput of several sequences decoding together (issue 14's target: 4 sequences at depth
2048 at least 2.5x the tokens/s of one), and the cost of a second chat turn.

    python tools/bench_sessions.py [-m model.gguf] [--kv eoq] [-t 2] [-d 2048] [-n 32] [-s 1,2,4] [-r 3]

For each count of sequences S: S caches filled to depth d (each with its own text), then n decode
steps of all S together, two ways: explicit steps (Engine.core.eval_batch: one forward step per
token for all S) and S threads streaming Engine.sequence(i).generate (the scheduler batching
them). Reports tokens/s summed over the sequences (median of r repeats, decode only) and the
ratio to S = 1 measured in the same run. --turn: a second chat turn after a d-token history
(prefix reuse) against the first turn's prefill.
"""
import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))


def depth_tokens(eng, d, salt):
    words = " ".join(f"w{salt}_{i}" for i in range(d))
    return eng.tokenize(words)[:d]


def fill(eng, S, d):
    """Sequences 0..S-1 reset and filled to depth d, each with its own text."""
    core = eng.core
    for i in range(S):
        s = core.sequence(i)
        s.reset()
        s.eval(depth_tokens(eng, d, i))
    eng._bench_depth = {i: core.sequence(i).cached_tokens() for i in range(S)}


def bench_steps(eng, S, n):
    """n explicit batched decode steps over sequences 0..S-1 (filled by fill()), then the caches
    cut back to where they were: tokens/s (all S)."""
    core = eng.core
    base = [core.sequence(i).n_past for i in range(S)]
    cur = [[int(core.sequence(i).logits().argmax())] for i in range(S)]
    t0 = time.perf_counter()
    for _ in range(n):
        core.eval_batch(list(range(S)), cur)
        cur = [[int(core.sequence(i).logits().argmax())] for i in range(S)]
    tps = S * n / (time.perf_counter() - t0)
    for i in range(S):  # back to depth d (a compressed cache cuts at a block boundary: refilled)
        s = core.sequence(i)
        kept = s.truncate(base[i])
        s.eval(eng._bench_depth[i][kept:])
    return tps


def bench_threads(eng, S, d, n):
    """S threads generating n tokens each after a depth-d prompt: decode tokens/s (all S)."""
    prompts = [depth_tokens(eng, d, 100 + i) for i in range(S)]
    for i in range(S):
        eng.sequence(i).reset()
    gen_s = [0.0] * S
    barrier = threading.Barrier(S)

    def run(i):
        seq = eng.sequence(i)
        seq.generate(prompts[i], max_tokens=1, temperature=0)  # the prefill, outside the timing
        barrier.wait()
        t0 = time.perf_counter()
        c = seq.generate(prompts[i] + [int(seq.logits.argmax())], max_tokens=n, temperature=0)
        gen_s[i] = (time.perf_counter() - t0, len(c.tokens))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(S)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = max(g[0] for g in gen_s)
    return sum(g[1] for g in gen_s) / wall


def bench_turn(eng, d):
    """First turn: a history of about d tokens prefilled; second turn: that history plus the
    reply and a question, reusing the prefix. Returns (first prompt tokens, first prompt ms,
    second turn's reused tokens, second prompt ms)."""
    words, content = 0, ""
    while len(eng.tokenize(content)) < d:
        words += 100
        content = " ".join(f"fact{i}" for i in range(words))
    msgs = [{"role": "user", "content": content}]
    eng.reset()
    c1 = eng.chat(msgs, max_tokens=8, temperature=0)
    msgs += [{"role": "assistant", "content": c1.text}, {"role": "user", "content": "And the next one?"}]
    c2 = eng.chat(msgs, max_tokens=8, temperature=0)
    return c1.usage["prompt_tokens"], c1.timings["prompt_ms"], c2.timings["prompt_cached_tokens"], c2.timings["prompt_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--kv", default="eoq")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-d", "--depth", type=int, default=2048)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-s", "--seqs", default="1,2,4")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("--no-threads", action="store_true", help="explicit steps only")
    ap.add_argument("--turn", action="store_true", help="also the second-chat-turn figure")
    ap.add_argument("--turn-depth", type=int, default=4000, help="history tokens of --turn (4000)")
    a = ap.parse_args()
    from eoq import Engine

    counts = [int(x) for x in a.seqs.split(",")]
    eng = Engine(a.model, n_ctx=a.depth + a.n_gen + 64, n_threads=a.threads, kv=a.kv, n_seq=max(counts))
    print(f"model {Path(eng.model_path).name}, kv {a.kv}, {eng.backend}, depth {a.depth}, {a.n_gen} tokens, "
          f"median of {a.repeat}")
    # Explicit steps: the caches filled once; the counts measured in turn, repeat after repeat,
    # so that the machine's noise falls on all of them alike (medians reported).
    fill(eng, max(counts), a.depth)
    runs = {S: [] for S in counts}
    for _ in range(a.repeat):
        for S in counts:
            runs[S].append(bench_steps(eng, S, a.n_gen))
    one = statistics.median(runs[counts[0]])
    for S in counts:
        tps = statistics.median(runs[S])
        print(f"steps   S={S}: {tps:8.1f} tok/s  ({tps / one:.2f}x S={counts[0]}; runs "
              + " ".join(f"{x:.1f}" for x in runs[S]) + ")", flush=True)
    if not a.no_threads:
        base = None
        for S in counts:
            tps = statistics.median(bench_threads(eng, S, a.depth, a.n_gen) for _ in range(a.repeat))
            base = base or tps
            print(f"threads S={S}: {tps:8.1f} tok/s  ({tps / base:.2f}x S={counts[0]})", flush=True)
    if a.turn:
        eng.close()
        eng = Engine(a.model, n_ctx=a.turn_depth + 512, n_threads=a.threads, kv=a.kv)
        n1, ms1, cached, ms2 = bench_turn(eng, a.turn_depth)
        print(f"chat turn 2 after a {n1}-token history: prompt {ms2:.1f} ms ({cached} reused) vs turn 1 "
              f"{ms1:.1f} ms: {100 * ms2 / ms1:.1f}%")


if __name__ == "__main__":
    main()
