"""eoq-needle: multi-needle retrieval ("needle in a haystack") by context length, needle depth
and KV cache mode.

    eoq-needle -f wikitext-2-test.txt -c 1024,2048 --kv f16,q4_0,eoq2 --depths 0.1,0.5,0.9
    eoq-needle -f wikitext-2-test.txt -c 4096 --needles 3 --trials 4 -o json > records.json

Short facts (needles) such as "The secret number of the city of Velmora is 4721." (made-up city
names, random 4-digit numbers, all drawn from --seed and the trial number) are put at chosen
depths of a filler text made of real prose (the -f file, wikitext-style markup undone, cut at
sentence boundaries), long enough that the whole prompt just fits the context. The model is then
asked for each value in turn, every question a fresh continuation of the same document: greedy
decoding, a few tokens; the answer is correct when it contains the value as a number.

Prompt (see PROMPT FORMAT below): the chat template with a short system message, a user message
holding "Document:", the document and the question ("What is the secret number of the city of
<key>? Answer with the number only."), and the assistant turn begun with "The secret number of
the city of <key> is", so that the answer is the number within a few tokens.

Needles and depths: each haystack holds --needles needles; the --depths list is dealt out over
them in turn (needle j of haystack h sits at depths[(h * needles + j) % len(depths)]), and each
trial builds lcm(needles, len(depths)) / needles haystacks, so every depth is asked equally often.
All KV modes see the very same prompts. Each question evaluates its whole prompt: the Engine's
prefix cache only extends what it holds, and it holds the previous question and answer.

Output: a Markdown table of accuracy by KV mode and context (a column per depth) on stdout, or
with -o json a list of records {mode, ctx, depth, trial, key, expected, answer, correct, ...}.
Progress goes to stderr. Exit status: 0 done; 2 usage errors (one line `eoq-needle: error: ...`);
1 other errors (unreadable file, model failure), also one line.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

PROG = "eoq-needle"

# --- filler: real prose cut at sentence boundaries ----------------------------------------

# Sentences outside these bounds are skipped: very short ones are list debris, very long ones
# would make the filler's length (and the needle positions) coarse.
MIN_SENTENCE_CHARS = 20
MAX_SENTENCE_CHARS = 400

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(\d])")


def clean_wikitext(paragraph: str) -> str:
    """Undo wikitext's tokenized spelling ("guest @-@ starring , the actor 's") for one line."""
    p = paragraph.strip()
    p = p.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    p = re.sub(r" ([.,;:!?%)\]])", r"\1", p)
    p = re.sub(r"([(\[]) ", r"\1", p)
    p = re.sub(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1", p)
    p = re.sub(r'" (.*?) "', r'"\1"', p)
    return p


@dataclass(frozen=True)
class Unit:
    """One filler sentence; `sep` is what joins it to the text before it ("" for the first
    sentence of a document, " " inside a paragraph, "\\n\\n" at a paragraph start)."""

    text: str
    para_start: bool


def load_sentences(text: str) -> List[Unit]:
    """The filler sentences of a text, in order. Wikitext headings (`= Title =` lines) are
    dropped, its markup undone; plain prose passes through. Raises ValueError when nothing is left."""
    units: List[Unit] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        first = True
        for s in _SENTENCE_END.split(clean_wikitext(line)):
            s = s.strip()
            if MIN_SENTENCE_CHARS <= len(s) <= MAX_SENTENCE_CHARS:
                units.append(Unit(s, first))
                first = False
    if not units:
        raise ValueError("the filler text has no usable sentences")
    return units


def _sep(unit: Unit, first: bool) -> str:
    return "" if first else "\n\n" if unit.para_start else " "


# --- needles ------------------------------------------------------------------------------

_SYLLABLES = ("vel", "mor", "ra", "tor", "bri", "dun", "kas", "len", "ith", "qua", "zar", "osh",
              "mir", "del", "fen", "gal", "hul", "jor", "nes", "pra", "rin", "sol", "tam", "wen",
              "yar", "cel", "dra", "eth", "lum", "vos", "ke", "na", "lo", "sa", "ri", "ta")


@dataclass(frozen=True)
class Needle:
    """A fact to retrieve: the secret number `value` (4 digits) of the made-up city `key`,
    placed at `depth` (a fraction 0..1 of the filler, in tokens)."""

    key: str
    value: str
    depth: float

    @property
    def sentence(self) -> str:
        return f"The secret number of the city of {self.key} is {self.value}."

    @property
    def question(self) -> str:
        return f"What is the secret number of the city of {self.key}? Answer with the number only."

    @property
    def answer_prefix(self) -> str:
        return f"The secret number of the city of {self.key} is"


def make_needles(rng: random.Random, depths: Sequence[float], avoid_text: str = "",
                 avoid_values: Iterable[str] = ()) -> List[Needle]:
    """One needle per entry of depths: distinct keys (2-3 made-up syllables, none occurring in
    avoid_text) and distinct values in 3000..9999 (none in avoid_values; no year-like numbers)."""
    banned = set(avoid_values)
    keys: List[str] = []
    values: List[str] = []
    while len(keys) < len(depths):
        k = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if k not in keys and len(k) >= 5 and k not in avoid_text:
            keys.append(k)
    while len(values) < len(depths):
        v = str(rng.randint(3000, 9999))
        if v not in values and v not in banned:
            values.append(v)
    return [Needle(k, v, float(d)) for k, v, d in zip(keys, values, depths)]


def numbers_in(text: str) -> set:
    """The 4-digit numbers written in text (a filler's possible distractors)."""
    return set(re.findall(r"(?<!\d)\d{4}(?!\d)", text))


# --- haystack -----------------------------------------------------------------------------

@dataclass
class Haystack:
    """A document: filler sentences with needle sentences inserted.

    text: the document. needles: in document order. positions[i]: the token offset (counted as
    the sum of each piece's tokens, separators included) where needle i's sentence starts;
    n_tokens: the document's tokens, counted the same way; start: the first filler sentence's
    index in the corpus."""

    text: str
    needles: List[Needle]
    positions: List[int]
    n_tokens: int
    start: int

    def token_depth(self, i: int) -> float:
        return self.positions[i] / max(1, self.n_tokens)


CountTokens = Callable[[str], int]


def build_haystack(units: Sequence[Unit], count_tokens: CountTokens, n_filler_tokens: int,
                   needles: Sequence[Needle], start: int) -> Haystack:
    """The document of about n_filler_tokens filler tokens (never more) taken from units from
    index `start` on (wrapping around), with each needle's sentence inserted at the sentence
    boundary closest to its depth * filler tokens. Needles at the same boundary keep their order.
    Deterministic: the same arguments give the same document. count_tokens(text) -> int must
    count text as it is tokenized in the middle of a prompt (no BOS)."""
    if n_filler_tokens < 0:
        raise ValueError(f"no room for filler ({n_filler_tokens} tokens)")
    # Filler: whole sentences while they fit.
    chosen: List[Unit] = []
    costs: List[int] = []
    total = 0
    for i in range(len(units)):
        u = units[(start + i) % len(units)]
        c = count_tokens(_sep(u, not chosen) + u.text)
        if total + c > n_filler_tokens:
            break
        chosen.append(u)
        costs.append(c)
        total += c
    bounds = [0]
    for c in costs:
        bounds.append(bounds[-1] + c)

    def boundary(depth: float) -> int:
        target = depth * total
        return min(range(len(bounds)), key=lambda k: (abs(bounds[k] - target), k))

    at: Dict[int, List[Needle]] = {}
    for n in needles:
        at.setdefault(boundary(n.depth), []).append(n)
    pieces: List[str] = []
    order: List[Needle] = []
    positions: List[int] = []
    pos = 0
    for k in range(len(chosen) + 1):
        for n in at.get(k, []):
            piece = ("" if not pieces else " ") + n.sentence
            order.append(n)
            positions.append(pos)
            pieces.append(piece)
            pos += count_tokens(piece)
        if k < len(chosen):
            u = chosen[k]
            piece = _sep(u, not pieces) + u.text
            pieces.append(piece)
            pos += count_tokens(piece)  # costs[k], unless a needle now precedes the first sentence
    text = "".join(pieces)
    return Haystack(text, order, positions, pos, start % len(units))


# --- prompt -------------------------------------------------------------------------------

# PROMPT FORMAT, tried on SmolLM2-135M-Instruct with an f16 cache: one needle per haystack it
# answers every question at 512-2048 tokens. Without the answer prefix it restates the question
# first ("The secret number of the city of Ethvoske is ...": about 20 tokens instead of 5) and
# is right and wrong on the same questions; the document in the system message instead of the
# user message made no difference either (4096 tokens, seed 0, trial 1: 2/3 for all three).
SYSTEM = "You are a helpful assistant. You answer questions about a document exactly."


def chat_messages(document: str, needle: Needle) -> List[Dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Document:\n{document}\n\n{needle.question}"}]


def prompt_tokens(engine, document: str, needle: Needle, answer_prefix: bool = True) -> List[int]:
    """The prompt asking for needle's value: the chat template, then (answer_prefix) the start
    of the assistant's answer."""
    tokens = engine.chat_tokens(chat_messages(document, needle))
    if answer_prefix:
        tokens += engine.tokenize(needle.answer_prefix, add_special=False)
    return tokens


def needle_depths(n_needles: int, depths: Sequence[float]) -> List[List[float]]:
    """The depths of the needles of each haystack of one trial: depths dealt out in turn,
    lcm(n_needles, len(depths)) / n_needles haystacks so that every depth is used equally."""
    n_hay = len(depths) // math.gcd(n_needles, len(depths))  # lcm(n_needles, D) / n_needles
    return [[depths[(h * n_needles + j) % len(depths)] for j in range(n_needles)]
            for h in range(n_hay)]


@dataclass
class Case:
    """One haystack of one trial, fitted to one context: the document and, per needle (in
    document order), the prompt tokens that ask for it."""

    trial: int
    haystack: Haystack
    prompts: List[List[int]]


def haystack_rng(seed: int, trial: int, index: int) -> random.Random:
    # A string seed is hashed (SHA-512) by random.Random: stable across runs and platforms.
    return random.Random(f"{PROG}:{seed}:{trial}:{index}")


def build_case(engine, units: Sequence[Unit], ctx: int, depths: Sequence[float], seed: int,
               trial: int, index: int, reserve: int, banned_values: Iterable[str] = (),
               answer_prefix: bool = True) -> Case:
    """The haystack `index` of `trial` fitted to a context of ctx tokens: every prompt has at most
    ctx - reserve tokens (reserve: room for the answer) and the longest is at most one filler
    sentence shorter. The needles and the filler's start depend on (seed, trial, index) only,
    not on ctx, so larger contexts extend the same document. Raises ValueError when ctx cannot
    hold the prompt without filler."""
    rng = haystack_rng(seed, trial, index)
    start = rng.randrange(len(units))
    needles = make_needles(rng, depths, avoid_values=banned_values)

    def count(text: str) -> int:
        return len(engine.tokenize(text, add_special=False))

    limit = ctx - reserve
    bare = max(len(prompt_tokens(engine, "", n, answer_prefix)) for n in needles)
    budget = limit - bare - sum(count(" " + n.sentence) for n in needles)
    if budget < 0:
        raise ValueError(f"a context of {ctx} tokens is too small: the prompt without filler "
                         f"already takes {limit - budget + reserve} tokens with the answer")
    for _ in range(8):  # shrink the filler by the overshoot (token merges at the seams)
        hay = build_haystack(units, count, budget, needles, start)
        prompts = [prompt_tokens(engine, hay.text, n, answer_prefix) for n in hay.needles]
        over = max(len(p) for p in prompts) - limit
        if over <= 0:
            return Case(trial, hay, prompts)
        budget -= over
    raise ValueError(f"could not fit the prompt into {ctx} tokens")  # pragma: no cover


# --- scoring ------------------------------------------------------------------------------

def extract_numbers(answer: str) -> List[str]:
    """The numbers written in answer, digits only: thousands separators ("4,721", "4 721")
    are joined."""
    joined = re.sub(r"(?<=\d)[,\u00a0\u202f ](?=\d{3}(?!\d))", "", answer)
    return re.findall(r"\d+", joined)


def is_correct(answer: str, expected: str) -> bool:
    """True when the answer writes the expected value as a number of its own: "4721", "It is
    4721." and "4,721" are right; "47210", "472" or "4 7 2 1" are not."""
    return expected in extract_numbers(answer)


# --- running ------------------------------------------------------------------------------

def ask(engine, prompt: List[int], max_tokens: int) -> Tuple[str, float]:
    """(answer text, prompt ms): greedy continuation of prompt, up to max_tokens or a newline.
    The Engine's prefix cache only extends what it holds and the previous question is in it,
    so each question evaluates its whole prompt again."""
    c = engine.generate(prompt, max_tokens=max_tokens, temperature=0.0, stop=["\n"])
    return c.text.strip(), float(c.timings.get("prompt_ms", 0.0))


def run_mode(engine, mode: str, ctx: int, cases: Sequence[Case], max_tokens: int,
             progress: Optional[Callable[[int, int, int], None]] = None) -> List[dict]:
    """Ask every needle of every case; one record per question."""
    records: List[dict] = []
    total = sum(len(c.prompts) for c in cases)
    for case in cases:
        for i, (needle, prompt) in enumerate(zip(case.haystack.needles, case.prompts)):
            answer, prompt_ms = ask(engine, prompt, max_tokens)
            records.append(dict(mode=mode, ctx=ctx, depth=needle.depth, trial=case.trial,
                                key=needle.key, expected=needle.value, answer=answer,
                                correct=is_correct(answer, needle.value),
                                token_depth=round(case.haystack.token_depth(i), 4),
                                needles=len(case.prompts), prompt_tokens=len(prompt),
                                prompt_ms=round(prompt_ms, 1)))
            if progress:
                progress(len(records), total, sum(r["correct"] for r in records))
    return records


# --- report -------------------------------------------------------------------------------

def markdown_table(records: Sequence[dict]) -> str:
    """Accuracy by KV mode and context (rows, in first-seen order) and needle depth (columns,
    ascending): `correct/asked` per cell, then the overall percentage and the prompt time."""
    depths = sorted({r["depth"] for r in records})
    rows: Dict[Tuple[str, int], List[dict]] = {}
    for r in records:
        rows.setdefault((r["mode"], r["ctx"]), []).append(r)
    head = ["KV cache", "ctx"] + [f"depth {d:g}" for d in depths] + ["accuracy", "prefill s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, ctx), rs in rows.items():
        cells = [mode, str(ctx)]
        for d in depths:
            at = [r for r in rs if r["depth"] == d]
            cells.append(f"{sum(r['correct'] for r in at)}/{len(at)}" if at else "-")
        cells.append(f"{100.0 * sum(r['correct'] for r in rs) / len(rs):.0f}%")
        cells.append(f"{sum(r.get('prompt_ms', 0.0) for r in rs) / 1e3:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------

class UsageError(Exception):
    """A bad command-line argument: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage too; one line is enough
        raise UsageError(" ".join(message.split()))


def _list(text: str, conv, what: str) -> list:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise UsageError(f"{what}: expected a comma-separated list, got {text!r}")
    out = []
    for t in items:
        try:
            out.append(conv(t))
        except ValueError:
            raise UsageError(f"{what}: {t!r} is not a valid value") from None
    return out


MIN_CTX = 128


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parsed and checked arguments; UsageError on a bad one (SystemExit(0) after --help)."""
    from .cli import KV_MODES
    from .perplexity import parse_mode

    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct, fetched)")
    ap.add_argument("-f", "--file", required=True, help="filler prose, UTF-8 (e.g. wikitext-2-test.txt)")
    ap.add_argument("-c", "--ctx-size", default="1024", metavar="LIST",
                    help="context lengths, comma-separated (default 1024)")
    ap.add_argument("--kv", default="f16", metavar="LIST",
                    help="KV cache modes with optional :key=value knobs, comma-separated "
                         "(e.g. f16,q4_0,eoq2:ring=0; default f16)")
    ap.add_argument("--needles", type=int, default=1, metavar="N", help="needles per haystack (default 1)")
    ap.add_argument("--depths", default="0.1,0.5,0.9", metavar="LIST",
                    help="needle depths, fractions 0..1 of the filler (default 0.1,0.5,0.9)")
    ap.add_argument("--trials", type=int, default=3, metavar="T",
                    help="trials: different needles and filler each (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("-n", "--max-tokens", type=int, default=8, metavar="N",
                    help="answer tokens at most (default 8)")
    ap.add_argument("-o", "--output", choices=("md", "json"), default="md",
                    help="md: a Markdown table (default); json: the list of records")
    ap.add_argument("-t", "--threads", type=int, default=None, help="compute threads (default: all)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("-b", "--batch-size", type=int, default=512, help="prompt tokens per forward pass")
    a = ap.parse_args(argv)

    a.ctx_list = _list(a.ctx_size, int, "-c/--ctx-size")
    for c in a.ctx_list:
        if c < MIN_CTX:
            raise UsageError(f"-c/--ctx-size: {c} is too small (at least {MIN_CTX})")
    a.depth_list = _list(a.depths, float, "--depths")
    for d in a.depth_list:
        if not 0.0 <= d <= 1.0:
            raise UsageError(f"--depths: {d:g} is not a fraction in [0, 1]")
    a.modes = _list(a.kv, str, "--kv")
    for spec in a.modes:
        try:
            mode, _ = parse_mode(spec)
        except ValueError as e:
            raise UsageError(f"--kv: {e}") from None
        if mode not in KV_MODES:
            raise UsageError(f"--kv: {mode!r} is not a KV cache mode (known: {', '.join(KV_MODES)})")
    if len(set(a.modes)) != len(a.modes):
        raise UsageError("--kv: a mode is listed twice")
    for name, v, lo, hi in (("--needles", a.needles, 1, 64), ("--trials", a.trials, 1, 10**6),
                            ("--max-tokens", a.max_tokens, 1, 256), ("--seed", a.seed, 0, 2**31 - 1),
                            ("--batch-size", a.batch_size, 1, 1 << 20)):
        if not lo <= v <= hi:
            raise UsageError(f"{name} must be in [{lo}, {hi}], got {v}")
    if a.threads is not None and a.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {a.threads}")
    return a


class _Status:
    """The progress line on stderr (rewritten in place with \\r)."""

    def __init__(self):
        self.open = False

    def show(self, text: str) -> None:
        print(f"\r{PROG}: {text}", end="", file=sys.stderr, flush=True)
        self.open = True

    def end(self) -> None:
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open = False


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        a = parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    status = _Status()
    try:
        return _run(a, status)
    except KeyboardInterrupt:
        status.end()
        return 130
    except (ValueError, OSError, ImportError) as e:  # EoqError is a ValueError
        status.end()
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return 1


def _run(a: argparse.Namespace, status: _Status) -> int:
    from . import Engine
    from .models import default_model_path
    from .perplexity import parse_mode

    with open(a.file, encoding="utf-8") as fh:
        corpus = fh.read()
    units = load_sentences(corpus)
    banned = numbers_in(corpus)
    model = a.model or str(default_model_path(download=True))
    layout = needle_depths(a.needles, a.depth_list)
    t_all = time.perf_counter()
    records: List[dict] = []
    for ctx in a.ctx_list:
        cases: List[Case] = []
        for mode_i, spec in enumerate(a.modes):
            mode, options = parse_mode(spec)
            engine = Engine(model, n_ctx=ctx, n_threads=a.threads, kv=mode, kv_options=options,
                            n_batch=a.batch_size, device=a.device)
            with engine:
                if not cases:  # the prompts do not depend on the KV mode: built once per ctx
                    cases = [build_case(engine, units, ctx, depths, a.seed, trial, h, a.max_tokens,
                                        banned)
                             for trial in range(a.trials) for h, depths in enumerate(layout)]
                t0 = time.perf_counter()

                def progress(i, n, ok, spec=spec, t0=t0):
                    status.show(f"ctx {ctx} kv {spec}: {i}/{n} asked, {ok} correct, "
                                f"{time.perf_counter() - t0:.0f}s")

                records += run_mode(engine, spec, ctx, cases, a.max_tokens, progress)
                status.end()
    print(f"{PROG}: done in {time.perf_counter() - t_all:.0f}s", file=sys.stderr, flush=True)
    if a.output == "json":
        json.dump(records, sys.stdout, indent=1)
        print()
    else:
        print(f"model {model}; {a.needles} needle(s) per haystack, {a.trials} trial(s), seed {a.seed}; "
              f"cells: correct/asked\n")
        print(markdown_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
