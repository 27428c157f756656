"""Fuzz the GGUF reader: a small valid file written by gguf.GGUFWriter, mutated thousands of
ways (byte flips, truncation, boundary-valued 4/8-byte integers, splices). Every case must
either load (and then every supported tensor must dequantize) or raise eoq.EoqError. Anything
else fails the test; a crash kills the pytest process, which fails the run too.

EOQ_FUZZ_CASES (default 3000) and EOQ_FUZZ_SEED (default 1) pick the cases; a failure names
its seed and case index, and the run is deterministic given both."""
import os
import random

import numpy as np
import pytest

import gguf  # noqa: E402  (a test dependency: a missing package must fail, not skip)
import eoq  # noqa: E402
from eoq import _core  # noqa: E402

QT = gguf.GGMLQuantizationType
N_CASES = int(os.environ.get("EOQ_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("EOQ_FUZZ_SEED", "1"))
SUPPORTED = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}

U64_EDGES = [0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 255, 256, 4096, 2**31 - 1, 2**31,
             2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**60, 2**62, 2**63 - 1, 2**63, 2**63 + 1,
             2**64 - 32, 2**64 - 2, 2**64 - 1]
U32_EDGES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 14, 15, 16, 17, 30, 31, 39, 200, 2**16,
             2**31 - 1, 2**31, 2**32 - 1]


def seed_file(path):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_string("general.name", "fuzz")
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "bc", "déf"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.5, -3.0, -4.0])
    w.add_array("tokenizer.ggml.token_type", [3, 3, 1, 1, 1])
    w.add_tensor("norm.weight", rng.standard_normal(16).astype(np.float32))
    w.add_tensor("emb.weight", gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32),
                                                    QT.Q8_0), raw_dtype=QT.Q8_0)
    w.add_tensor("q.weight", gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32),
                                                  QT.Q4_1), raw_dtype=QT.Q4_1)
    w.add_tensor("h.weight", rng.standard_normal((2, 8)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def mutate(base, r):
    d = bytearray(base)
    for _ in range(r.choice((1, 1, 1, 2, 3))):
        op = r.randrange(7)
        n = len(d)
        if n == 0:
            d += bytes(r.randrange(256) for _ in range(r.randrange(1, 16)))
            continue
        # most of the structure lives in the header: bias positions there
        hot = r.random() < 0.7
        pos = r.randrange(min(n, 400)) if hot else r.randrange(n)
        if op == 0:  # random bytes
            for _ in range(r.randrange(1, 9)):
                d[r.randrange(n)] = r.randrange(256)
        elif op == 1:  # bit flip
            d[pos] ^= 1 << r.randrange(8)
        elif op == 2:  # truncate
            del d[r.randrange(n):]
        elif op == 3:  # 8-byte little-endian integer with an edge value
            v = r.choice(U64_EDGES + [n, n - pos, r.randrange(2**64), (-r.randrange(1, 9)) % 2**64])
            d[pos:pos + 8] = v.to_bytes(8, "little")
        elif op == 4:  # 4-byte integer (types, n_dims, version)
            v = r.choice(U32_EDGES + [r.randrange(2**32)])
            d[pos:pos + 4] = v.to_bytes(4, "little")
        elif op == 5:  # splice: copy a chunk over/into another place
            a = r.randrange(n)
            chunk = bytes(d[a:a + r.randrange(1, 64)])
            if r.random() < 0.5:
                d[pos:pos + len(chunk)] = chunk
            else:
                d[pos:pos] = chunk
        else:  # delete a range
            del d[pos:pos + r.randrange(1, 32)]
    return bytes(d)


def exercise(path):
    """Load and touch everything; returns True if the file loaded."""
    try:
        f = _core.GGUFFile(path)
    except eoq.EoqError as e:
        assert str(e).startswith("GGUF"), str(e)
        assert e.code == "format", (e.code, str(e))
        return False
    try:
        f.metadata
        # by index: a mutated name need not be valid UTF-8, so its str may not name it
        for i, t in enumerate(f.tensors):
            assert t["offset"] % f.alignment == 0
            assert t["offset"] + t["nbytes"] <= f.file_size
            if t["type"] in SUPPORTED:
                f.require_supported(i)
                x = f.dequantize(i)
                assert x.size == int(np.prod(t["shape"]))
                assert len(f.raw(i)) == t["nbytes"]
            else:
                with pytest.raises(eoq.EoqError, match="which eoq does not support"):
                    f.require_supported(i)
        return True
    finally:
        del f  # unmap before the file is rewritten


def test_fuzz_gguf(tmp_path):
    base = seed_file(tmp_path / "seed.gguf")
    assert exercise(str(tmp_path / "seed.gguf"))
    path = str(tmp_path / "case.gguf")
    loaded = rejected = 0
    for i in range(N_CASES):
        r = random.Random(SEED * 1_000_003 + i)
        data = mutate(base, r)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            ok = exercise(path)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"fuzz case seed={SEED} i={i}: {type(e).__name__}: {e}") from e
        loaded += ok
        rejected += not ok
    print(f"fuzz: {N_CASES} cases, {loaded} loaded, {rejected} rejected (seed {SEED})")
    # the mutations must exercise both outcomes, or the fuzz is not testing much
    assert loaded > N_CASES // 50 and rejected > N_CASES // 4
