"""GGUF reader: _core.GGUFFile against the independent gguf package (GGUFReader / GGUFWriter),
plus targeted malformed files built byte by byte, each of which must raise eoq.EoqError with a
message that says what is wrong."""
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
import eoq  # noqa: E402
from eoq import _core  # noqa: E402

GT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType

# ----------------------------------------------------------------------------------------------
# helpers


def reader_value(field):
    """A GGUFReader field as a plain Python value (str/int/float/bool/list)."""
    main = field.types[0]
    if main == GT.ARRAY:
        if len(field.data) == 0:
            return []
        return list(field.contents())
    return field.contents()


def assert_same_value(mine, ref, types, key):
    main = types[0]
    if main == GT.ARRAY:
        assert isinstance(mine, list), key
        assert len(mine) == len(ref), key
        sub = types[-1]
        for a, b in zip(mine, ref):
            assert_same_scalar(a, b, sub, key)
    else:
        assert_same_scalar(mine, ref, main, key)


def assert_same_scalar(a, b, vtype, key):
    if vtype == GT.STRING:
        assert isinstance(a, str) and a == b, key
    elif vtype == GT.BOOL:
        assert isinstance(a, bool) and a == bool(b), key
    elif vtype in (GT.FLOAT32, GT.FLOAT64):
        assert isinstance(a, float), key
        # FLOAT32 widened to double must be exactly the stored float
        assert a == float(b) or (np.isnan(a) and np.isnan(b)), (key, a, b)
    else:
        assert isinstance(a, int) and not isinstance(a, bool), key
        assert a == int(b), (key, a, b)


def compare_with_reader(path):
    """Every key, every tensor name/type/shape/offset/nbytes and raw bytes, vs GGUFReader."""
    f = _core.GGUFFile(str(path))
    r = gguf.GGUFReader(str(path))
    md = f.metadata
    ref_keys = {k for k in r.fields if not k.startswith("GGUF.")}
    assert set(md) == ref_keys
    for k in ref_keys:
        field = r.fields[k]
        assert_same_value(md[k], reader_value(field), field.types, k)
    assert f.version == int(r.fields["GGUF.version"].contents())
    assert len(f.tensors) == len(r.tensors)
    for mine, ref in zip(f.tensors, r.tensors):
        assert mine["name"] == ref.name
        assert mine["type"] == ref.tensor_type.name
        assert mine["type_id"] == int(ref.tensor_type)
        assert mine["shape"] == [int(x) for x in ref.shape]
        assert mine["offset"] + r.data_offset == ref.data_offset, ref.name
        assert mine["nbytes"] == int(ref.n_bytes)
    return f, r


# A minimal GGUF builder for targeted corruption. Its valid output is itself cross-checked
# against gguf.GGUFReader (test_builder_matches_reader), so the bytes it writes are GGUF.
def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", int(vtype)) + payload


def kv_u32(key, v):
    return kv(key, GT.UINT32, struct.pack("<I", v))


def kv_str(key, s):
    return kv(key, GT.STRING, gstr(s))


def tinfo(name, ne, ttype, offset, n_dims=None, ne_fmt="Q"):
    nd = len(ne) if n_dims is None else n_dims
    return (gstr(name) + struct.pack("<I", nd) + struct.pack(f"<{len(ne)}{ne_fmt}", *ne)
            + struct.pack("<I", int(ttype)) + struct.pack("<Q", offset))


def build(kvs, tinfos, data=b"", version=3, alignment=32, n_tensors=None, n_kv=None,
          magic=b"GGUF"):
    head = magic + struct.pack("<I", version) + struct.pack(
        "<QQ", len(tinfos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tinfos)
    return body + b"\0" * ((-len(body)) % alignment) + data


def q8_0_bytes(rows, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 32)).astype(np.float32)
    return gguf.quants.quantize(x, QT.Q8_0).tobytes()


def base_parts():
    """Two keys, tensors a: F32[8] at 0, b: Q8_0[32, 2] at 32; returns (kvs, tinfos, data)."""
    kvs = [kv_str("general.architecture", "llama"), kv_u32("test.n", 7)]
    a = np.arange(8, dtype=np.float32).tobytes()  # 32 bytes
    b = q8_0_bytes(2)  # 68 bytes
    tinfos = [tinfo("a", [8], QT.F32, 0), tinfo("b", [32, 2], QT.Q8_0, 32)]
    return kvs, tinfos, a + b


def base_file():
    return build(*base_parts())


def write(tmp_path, data, name="t.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def expect_error(tmp_path, data, *needles, code="format"):
    p = write(tmp_path, data)
    with pytest.raises(eoq.EoqError) as ei:
        _core.GGUFFile(p)
    msg = str(ei.value)
    assert ei.value.code == code, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ----------------------------------------------------------------------------------------------
# the real model


def test_real_model_matches_reader(smollm2_path):
    f, r = compare_with_reader(smollm2_path)
    assert f.version == 3
    assert f.alignment == 32
    assert len(f.tensors) == 272
    # numeric arrays and string arrays of the tokenizer
    assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
    # raw bytes and dequantized values of a few tensors of each type
    by_name = {t.name: t for t in r.tensors}
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight",
                 "output_norm.weight", "blk.3.attn_norm.weight"]:
        ref = by_name[name]
        assert f.raw(name) == ref.data.tobytes()
        expect = gguf.quants.dequantize(ref.data, ref.tensor_type)
        got = f.dequantize(name)
        assert got.dtype == np.float32
        assert got.shape == tuple(int(x) for x in reversed(ref.shape))
        np.testing.assert_array_equal(got.reshape(expect.shape), expect)


def test_real_model_types_supported(smollm2_path):
    f = _core.GGUFFile(smollm2_path)
    kinds = set()
    for t in f.tensors:
        f.require_supported(t["name"])
        kinds.add(t["type"])
    assert kinds == {"Q4_1", "Q8_0", "F32"}


# ----------------------------------------------------------------------------------------------
# files written by gguf.GGUFWriter


def write_with_writer(path, alignment=None):
    w = gguf.GGUFWriter(str(path), arch="llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("v.u8", 250)
    w.add_int8("v.i8", -100)
    w.add_uint16("v.u16", 65000)
    w.add_int16("v.i16", -32000)
    w.add_uint32("v.u32", 4_000_000_000)
    w.add_int32("v.i32", -2_000_000_000)
    w.add_float32("v.f32", 0.1)
    w.add_uint64("v.u64", 2**64 - 5)
    w.add_int64("v.i64", -(2**62))
    w.add_float64("v.f64", 1.0 / 3.0)
    w.add_bool("v.true", True)
    w.add_bool("v.false", False)
    w.add_string("v.str", "héllo wörld ✓")
    w.add_array("v.arr_str", ["a", "", "ünïcode", "x" * 300])
    w.add_array("v.arr_int", [1, -2, 3, 2**31 - 1])
    w.add_array("v.arr_float", [0.5, -1.25, 1e30])
    w.add_array("v.arr_bool", [True, False, True])
    w.add_key_value("v.arr_u64", [0, 2**64 - 1], GT.ARRAY, sub_type=GT.UINT64)
    w.add_key_value("v.arr_i8", [-128, 127], GT.ARRAY, sub_type=GT.INT8)
    w.add_key_value("v.arr_u16", [0, 65535], GT.ARRAY, sub_type=GT.UINT16)
    w.add_key_value("v.arr_f64", [1e300, -2.5], GT.ARRAY, sub_type=GT.FLOAT64)
    rng = np.random.default_rng(1)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((2, 7)).astype(np.float16),
        "v1d": rng.standard_normal(11).astype(np.float32),
        "t3d": rng.standard_normal((2, 3, 4)).astype(np.float32),
    }
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    qdata = {}
    for qt in [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.BF16]:
        x = rng.standard_normal((3, 64)).astype(np.float32)
        q = gguf.quants.quantize(x, qt)
        qdata[qt.name.lower()] = (q, qt)
        w.add_tensor(qt.name.lower(), q, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors, qdata


@pytest.mark.parametrize("alignment", [None, 1, 64, 256])
def test_writer_file_matches_reader(tmp_path, alignment):
    p = tmp_path / "w.gguf"
    tensors, qdata = write_with_writer(p, alignment)
    f, r = compare_with_reader(p)
    assert f.alignment == (alignment or 32)
    md = f.metadata
    # spot checks of Python value types independent of the reader
    assert md["v.u64"] == 2**64 - 5 and md["v.i64"] == -(2**62)
    assert md["v.true"] is True and md["v.false"] is False
    assert md["v.f32"] == float(np.float32(0.1))
    assert md["v.str"] == "héllo wörld ✓"
    assert md["v.arr_str"] == ["a", "", "ünïcode", "x" * 300]
    assert md["v.arr_u64"] == [0, 2**64 - 1]
    assert md["v.arr_bool"] == [True, False, True]
    # tensor data offsets are aligned; data start too
    for t, rt in zip(f.tensors, r.tensors):
        assert t["offset"] % f.alignment == 0
        assert rt.data_offset % f.alignment == 0
    for name, arr in tensors.items():
        np.testing.assert_array_equal(f.dequantize(name), arr.astype(np.float32))
    for name, (q, qt) in qdata.items():
        np.testing.assert_array_equal(f.dequantize(name), gguf.quants.dequantize(q, qt))


def test_typed_getters(tmp_path):
    p = tmp_path / "g.gguf"
    write_with_writer(p)
    f = _core.GGUFFile(str(p))
    assert f.get_str("general.architecture") == "llama"
    assert f.get_str("nope", "dflt") == "dflt"
    assert f.get_int("v.i8") == -100 and f.get_int("v.u32") == 4_000_000_000
    assert f.get_int("v.true") == 1  # bool is an integer scalar
    assert f.get_int("nope", 5) == 5
    assert f.get_float("v.f64") == 1.0 / 3.0
    assert f.get_float("v.u16") == 65000.0  # integers are accepted as floats
    assert f.get_bool("v.true", False) is True and f.get_bool("nope", True) is True
    assert f.has("v.str") and not f.has("nope")
    for call, needle in [(lambda: f.get_str("nope"), "missing metadata key 'nope'"),
                         (lambda: f.get_str("v.u8"), "'v.u8' has type UINT8, expected STRING"),
                         (lambda: f.get_int("v.str"), "expected an integer"),
                         (lambda: f.get_int("v.u64"), "does not fit int64"),
                         (lambda: f.get_float("v.arr_float"), "has type ARRAY"),
                         (lambda: f.get_bool("v.u8", True), "expected BOOL")]:
        with pytest.raises(eoq.EoqError) as ei:
            call()
        assert ei.value.code == "format" and needle in str(ei.value), str(ei.value)


def test_version2_file(tmp_path):
    data = bytearray(base_file())
    data[4:8] = struct.pack("<I", 2)
    p = write(tmp_path, bytes(data))
    f = _core.GGUFFile(p)
    assert f.version == 2 and len(f.tensors) == 2


def test_builder_matches_reader(tmp_path):
    kvs, tinfos, data = base_parts()
    kvs.append(kv("empty", GT.ARRAY, struct.pack("<IQ", int(GT.INT32), 0)))
    p = write(tmp_path, build(kvs, tinfos, data))
    f, r = compare_with_reader(p)
    assert f.metadata["empty"] == []
    np.testing.assert_array_equal(f.dequantize("a"), np.arange(8, dtype=np.float32))
    assert f.dequantize("b").shape == (2, 32)


def test_accessors_and_pathlike(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(base_file())
    f = _core.GGUFFile(p)  # os.PathLike accepted
    assert f.file_size == len(base_file())
    assert f.path == str(p)
    with pytest.raises(eoq.EoqError, match="no tensor named 'zzz'"):
        f.dequantize("zzz")


# ----------------------------------------------------------------------------------------------
# malformed files


def test_truncation_everywhere(tmp_path):
    data = base_file()
    # the last tensor ends exactly at the end of the file: every proper prefix is malformed
    for cut in range(len(data)):
        p = write(tmp_path, data[:cut])
        with pytest.raises(eoq.EoqError) as ei:
            _core.GGUFFile(p)
        assert ei.value.code == "format", (cut, str(ei.value))
        assert "GGUF" in str(ei.value)
    assert len(_core.GGUFFile(write(tmp_path, data)).tensors) == 2


def test_truncation_messages(tmp_path):
    data = base_file()
    expect_error(tmp_path, data[:0], "empty")
    expect_error(tmp_path, data[:6], "version", "needs 4 bytes")
    expect_error(tmp_path, data[:-1], "tensor 1 'b'", "past end of file", f"size {len(data) - 1}")


def test_bad_magic(tmp_path):
    expect_error(tmp_path, build(*base_parts(), magic=b"GGML"), "not a GGUF file", "47 47 4d 4c")


@pytest.mark.parametrize("version,needle", [(1, "version 1 is not supported"),
                                            (99, "unsupported GGUF version 99"),
                                            (0, "unsupported GGUF version 0")])
def test_bad_version(tmp_path, version, needle):
    expect_error(tmp_path, build(*base_parts(), version=version), needle)


def test_big_endian_rejected(tmp_path):
    data = bytearray(base_file())
    data[4:8] = struct.pack(">I", 3)
    expect_error(tmp_path, bytes(data), "big-endian")


@pytest.mark.parametrize("n_tensors,n_kv", [(2**60, 2), (2, 2**60), (2**64 - 1, 2**64 - 1),
                                            (10**6, 2), (2, 10**6)])
def test_huge_counts(tmp_path, n_tensors, n_kv):
    expect_error(tmp_path, build(*base_parts(), n_tensors=n_tensors, n_kv=n_kv), "cannot fit")


def test_string_length_past_eof(tmp_path):
    kvs, tinfos, data = base_parts()
    bad_key = struct.pack("<Q", 2**40) + b"abc" + struct.pack("<I", int(GT.UINT8)) + b"\1"
    expect_error(tmp_path, build([bad_key] + kvs, tinfos, data), "string length 1099511627776",
                 "past end of file", "metadata entry 0 key")
    bad_val = gstr("k") + struct.pack("<I", int(GT.STRING)) + struct.pack("<Q", 2**63) + b"x"
    expect_error(tmp_path, build(kvs + [bad_val], tinfos, data), "metadata entry 2 'k'",
                 "past end of file")
    bad_name = tinfo("a", [8], QT.F32, 0)
    bad_name = struct.pack("<Q", 2**64 - 1) + bad_name[9:]
    expect_error(tmp_path, build(kvs, [bad_name, tinfos[1]], data), "tensor 0 name",
                 "past end of file")


def test_bad_arrays(tmp_path):
    kvs, tinfos, data = base_parts()
    huge = kv("arr", GT.ARRAY, struct.pack("<IQ", int(GT.UINT32), 2**62))
    expect_error(tmp_path, build(kvs + [huge], tinfos, data), "'arr'", "array of", "cannot fit")
    huge_s = kv("arr", GT.ARRAY, struct.pack("<IQ", int(GT.STRING), 2**61 + 3))
    expect_error(tmp_path, build(kvs + [huge_s], tinfos, data), "cannot fit")
    nested = kv("arr", GT.ARRAY, struct.pack("<IQ", int(GT.ARRAY), 1)
                + struct.pack("<IQ", int(GT.UINT8), 1) + b"\1")
    expect_error(tmp_path, build(kvs + [nested], tinfos, data), "arrays of arrays")
    bad_elem = kv("arr", GT.ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)
    expect_error(tmp_path, build(kvs + [bad_elem], tinfos, data), "invalid array element type 99")


def test_nested_array_from_writer(tmp_path):
    p = tmp_path / "n.gguf"
    w = gguf.GGUFWriter(str(p), arch="llama")
    w.add_key_value("nested", [[1, 2], [3]], GT.ARRAY, sub_type=GT.ARRAY)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(eoq.EoqError, match="arrays of arrays are not supported"):
        _core.GGUFFile(str(p))


def test_bad_value_type(tmp_path):
    kvs, tinfos, data = base_parts()
    expect_error(tmp_path, build(kvs + [kv("k", 13, b"\0" * 8)], tinfos, data),
                 "invalid value type 13", "'k'")


def test_duplicates(tmp_path):
    kvs, tinfos, data = base_parts()
    expect_error(tmp_path, build(kvs + [kv_u32("test.n", 1)], tinfos, data),
                 "duplicate key", "'test.n'")
    dup = [tinfo("a", [8], QT.F32, 0), tinfo("a", [32, 2], QT.Q8_0, 32)]
    expect_error(tmp_path, build(kvs, dup, data), "duplicate tensor name", "tensor 1 'a'")


@pytest.mark.parametrize("info,needle", [
    (tinfo("b", [32, 2, 1, 1, 1], QT.Q8_0, 32), "n_dims 5"),
    (tinfo("b", [], QT.Q8_0, 32), "n_dims 0"),
    (tinfo("b", [32, 0], QT.Q8_0, 32), "ne[1] = 0 is not positive"),
    (tinfo("b", [32, -2], QT.Q8_0, 32, ne_fmt="q"), "ne[1] = -2 is not positive"),
    (tinfo("b", [2**32, 2**32], QT.F32, 32), "element count overflows"),
    (tinfo("b", [2**31, 2**31], QT.F32, 32), "byte size overflows"),
    (tinfo("b", [33, 2], QT.Q8_0, 32), "not a multiple of the Q8_0 block size 32"),
    (tinfo("b", [32, 2], QT.Q8_0, 4), "offset 4 is not a multiple of the alignment 32"),
    (tinfo("b", [32, 2], QT.Q8_0, 2**20), "past end of file"),
    (tinfo("b", [32, 2], QT.Q8_0, 2**64 - 32), "past end of file"),
    (tinfo("b", [32, 3], QT.Q8_0, 32), "past end of file"),
    (tinfo("b", [32, 2**40], QT.Q8_0, 32), "past end of file"),
])
def test_bad_tensor_info(tmp_path, info, needle):
    kvs, tinfos, data = base_parts()
    msg = expect_error(tmp_path, build(kvs, [tinfos[0], info], data), needle)
    assert "tensor 1 'b'" in msg


def test_data_range_message(tmp_path):
    kvs, tinfos, data = base_parts()
    raw = build(kvs, [tinfos[0], tinfo("b", [32, 3], QT.Q8_0, 32)], data)
    start = len(raw) - len(data)
    expect_error(tmp_path, raw, f"data [{start + 32}, {start + 32 + 102}) past end of file "
                 f"(size {len(raw)})")


@pytest.mark.parametrize("payload,needle", [
    (kv_u32("general.alignment", 0), "not a non-zero power of two"),
    (kv_u32("general.alignment", 48), "not a non-zero power of two"),
    (kv("general.alignment", GT.INT32, struct.pack("<i", -32)), "not a non-zero power of two"),
    (kv("general.alignment", GT.UINT64, struct.pack("<Q", 2**63)), "absurdly large"),
    (kv_str("general.alignment", "32"), "expected an integer"),
])
def test_bad_alignment(tmp_path, payload, needle):
    kvs, tinfos, data = base_parts()
    expect_error(tmp_path, build(kvs + [payload], tinfos, data), "general.alignment", needle)


def test_custom_alignment_data_start(tmp_path):
    kvs, tinfos, data = base_parts()
    a = np.arange(8, dtype=np.float32).tobytes()
    raw = build(kvs + [kv_u32("general.alignment", 128)],
                [tinfo("a", [8], QT.F32, 0), tinfo("b", [32, 2], QT.Q8_0, 128)],
                a + b"\0" * 96 + data[32:], alignment=128)
    p = write(tmp_path, raw)
    f, r = compare_with_reader(p)
    assert f.alignment == 128 and r.data_offset % 128 == 0
    np.testing.assert_array_equal(f.dequantize("a"), np.arange(8, dtype=np.float32))
    # offset 128 is not a multiple of a 256-byte alignment
    expect_error(tmp_path, build(kvs + [kv_u32("general.alignment", 256)],
                                 [tinfo("a", [8], QT.F32, 0), tinfo("b", [32, 2], QT.Q8_0, 128)],
                                 data, alignment=256), "not a multiple of the alignment 256")


def test_unsupported_type_kept_and_named(tmp_path):
    kvs, tinfos, data = base_parts()
    iq = bytes(range(74))  # one IQ2_XS block: 256 values in 74 bytes
    raw = build(kvs, tinfos + [tinfo("blk.0.attn_q.weight", [256], QT.IQ2_XS, 128),
                               tinfo("weird", [5], 200, 224)],
                data + b"\0" * (128 - len(data)) + iq + b"\0" * (96 - 74))
    p = write(tmp_path, raw)
    f = _core.GGUFFile(p)
    by = {t["name"]: t for t in f.tensors}
    assert by["blk.0.attn_q.weight"]["type"] == "IQ2_XS"
    assert by["blk.0.attn_q.weight"]["type_id"] == 17
    assert by["blk.0.attn_q.weight"]["nbytes"] == 74
    assert by["weird"]["type_id"] == 200 and by["weird"]["nbytes"] == 0
    with pytest.raises(eoq.EoqError) as ei:
        f.require_supported("blk.0.attn_q.weight")
    assert ei.value.code == "unsupported"
    assert str(ei.value) == ("tensor 'blk.0.attn_q.weight' has type IQ2_XS (17), "
                             "which eoq does not support")
    with pytest.raises(eoq.EoqError, match=r"tensor 'weird' has type unknown \(200\)"):
        f.require_supported("weird")
    with pytest.raises(eoq.EoqError, match="IQ2_XS"):
        f.dequantize("blk.0.attn_q.weight")
    f.require_supported("b")  # Q8_0 is fine


def test_io_errors(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    with pytest.raises(eoq.EoqError) as ei:
        _core.GGUFFile(missing)
    assert ei.value.code == "io" and "nope.gguf" in str(ei.value)
    with pytest.raises(eoq.EoqError) as ei:
        _core.GGUFFile(str(tmp_path))
    assert ei.value.code == "io"


def test_error_names_file(tmp_path):
    msg = expect_error(tmp_path, b"GGUF", "needs 4 bytes")
    assert "t.gguf" in msg


def test_non_utf8_names_in_messages(tmp_path):
    # Names are untrusted bytes; messages must still be valid text (bad bytes shown as \xNN)
    kvs, tinfos, data = base_parts()
    iq = bytes(74)
    raw = build(kvs, tinfos + [tinfo(b"bad\xff\xfe\xed\xa0\x80name", [256], QT.IQ2_XS, 128)],
                data + b"\0" * (128 - len(data)) + iq)
    f = _core.GGUFFile(write(tmp_path, raw))
    assert f.tensors[2]["name"] == "bad\ufffd\ufffd\ufffd\ufffd\ufffdname"  # decoded with replacement
    with pytest.raises(eoq.EoqError) as ei:
        f.require_supported(2)  # by index: the str name cannot address it
    assert str(ei.value) == ("tensor 'bad\\xff\\xfe\\xed\\xa0\\x80name' has type IQ2_XS (17), "
                             "which eoq does not support")
    dup = [tinfo("a", [8], QT.F32, 0), tinfo(b"\xc3\xa9\xff", [8], QT.F32, 0),
           tinfo(b"\xc3\xa9\xff", [8], QT.F32, 0)]
    expect_error(tmp_path, build(kvs, dup, data), "tensor 2 'é\\xff': duplicate tensor name")


def test_fifo_rejected_without_hanging(tmp_path):
    import os

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(eoq.EoqError) as ei:
        _core.GGUFFile(str(fifo))
    assert ei.value.code == "io" and "not a regular file" in str(ei.value)
