"""Fuzz the whole model loader (GGUF reader, llama config and weight checks, tokenizer
metadata) through _core.Engine: a tiny valid model, its header region mutated a few hundred
ways. Every case must load and run or raise eoq.EoqError; a crash kills pytest and fails CI.
EOQ_FUZZ_CASES scales the count (default 400); the run is deterministic."""
import os
import random
import struct

import numpy as np

from eoq import EoqError, _core
from tiny_models import write_tiny_llama

N_CASES = int(os.environ.get("EOQ_ENGINE_FUZZ_CASES", "400"))
EDGES = [0, 1, 2, 3, 7, 8, 31, 32, 63, 64, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]


def mutate(base: bytes, limit: int, r: random.Random) -> bytes:
    d = bytearray(base)
    for _ in range(r.choice((1, 1, 2, 3))):
        op = r.randrange(5)
        pos = r.randrange(min(limit, len(d)))
        if op == 0:  # flip a byte
            d[pos] ^= 1 << r.randrange(8)
        elif op == 1:  # random byte
            d[pos] = r.randrange(256)
        elif op == 2 and pos + 8 <= len(d):  # boundary 64-bit integer
            d[pos:pos + 8] = struct.pack("<Q", r.choice(EDGES))
        elif op == 3 and pos + 4 <= len(d):  # boundary 32-bit integer
            d[pos:pos + 4] = struct.pack("<I", r.choice(EDGES) & 0xFFFFFFFF)
        else:  # truncate
            del d[pos:]
    return bytes(d)


def test_engine_loader_never_crashes(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf", "Q8_0", n_layer=1)
    base = open(model.path, "rb").read()
    info = _core.GGUFFile(model.path)
    data_start = min(t["offset"] for t in info.tensors)  # offsets are relative to the data section
    limit = len(base) - sum(t["nbytes"] for t in info.tensors) + data_start  # header + tensor table
    assert 0 < limit < len(base)
    r = random.Random(1234)
    target = tmp_path / "case.gguf"
    loaded = rejected = 0
    for case in range(N_CASES):
        target.write_bytes(mutate(base, limit, r))
        try:
            e = _core.Engine(str(target), n_ctx=32, n_threads=1)
            ids = e.tokenize("hello world", add_special=True, parse_special=True)[:8] or [0]
            e.eval(ids, all_logits=True)
            assert e.all_logits().shape[0] == len(ids)
            loaded += 1
        except EoqError as err:
            assert str(err), f"case {case}: empty error message"
            rejected += 1
    print(f"loaded {loaded}, rejected {rejected}")
    assert loaded > 0 and rejected > 0  # the mutations reach both outcomes
