"""The .nqkv format from Python: round trips, hostile bytes, every error class, inspect."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusquant import errors
from nexusquant.store import (
    COMPONENTS,
    LayerRecord,
    inspect_nqkv,
    nqkv_from_bytes,
    nqkv_to_bytes,
    read_nqkv,
    write_nqkv,
)

RAW = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def random_layer(rng, *, batch=2, heads=3, head_dim=64, key_bits=3, value_bits=2, sink=4,
                 compressed=300, window=7, raw_dtype="float16", layer_type="full", aux=None):
    def codes(bits):
        return rng.integers(0, 256, (batch, heads, compressed, head_dim * bits // 8), dtype=np.uint8)

    def raw(t):
        if raw_dtype == "bfloat16":
            return rng.integers(0, 2**16, (batch, heads, t, head_dim), dtype=np.uint16)
        return rng.standard_normal((batch, heads, t, head_dim)).astype(RAW[raw_dtype])

    return LayerRecord(
        key_bits=key_bits,
        value_bits=value_bits,
        head_dim=head_dim,
        k_codes=codes(key_bits),
        k_scales=rng.integers(0, 2**16, (batch, heads, compressed), dtype=np.uint16),
        v_codes=codes(value_bits),
        v_scales=rng.integers(0, 2**16, (batch, heads, compressed), dtype=np.uint16),
        k_sink=raw(sink),
        v_sink=raw(sink),
        k_window=raw(window),
        v_window=raw(window),
        raw_dtype=raw_dtype,
        key_seed=int(rng.integers(0, 2**63)),
        value_seed=int(rng.integers(0, 2**63)),
        layer_type=layer_type,
        sliding_window=4096 if layer_type == "sliding" else None,
        sink_tokens=4,
        window_tokens=128,
        aux=aux if aux is not None else {
            "lengths": rng.integers(0, 1000, (batch,), dtype=np.int32),
            "positions": rng.integers(0, 2**40, (batch, 3), dtype=np.int64),
        },
    )


def assert_same(a: LayerRecord, b: LayerRecord) -> None:
    for name in COMPONENTS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert x.dtype == y.dtype, name
        assert np.array_equal(x.view(np.uint8) if x.dtype == np.float16 else x,
                              y.view(np.uint8) if y.dtype == np.float16 else y), name
    for field in ("key_bits", "value_bits", "head_dim", "raw_dtype", "key_seed", "value_seed",
                  "layer_type", "sliding_window", "sink_tokens", "window_tokens", "codec"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.aux.keys() == b.aux.keys()
    for k in a.aux:
        assert a.aux[k].dtype == b.aux[k].dtype and np.array_equal(a.aux[k], b.aux[k]), k


META = {"model": "tiny-llama", "layers": 3, "nested": {"x": [1, 2.5, None]}, "name": "ü"}


@pytest.mark.parametrize("use_mmap", [True, False])
def test_round_trip(tmp_path, use_mmap):
    rng = np.random.default_rng(0)
    layers = [
        random_layer(rng),
        random_layer(rng, head_dim=80, key_bits=4, value_bits=4, compressed=1, sink=0,
                     window=0, raw_dtype="bfloat16", layer_type="sliding", aux={}),
        random_layer(rng, batch=1, heads=1, head_dim=96, compressed=0, window=129,
                     raw_dtype="float32"),
    ]
    path = tmp_path / "cache.nqkv"
    n = write_nqkv(path, META, layers)
    assert n == os.path.getsize(path)
    meta, back = read_nqkv(path, mmap=use_mmap)
    assert meta == META
    assert len(back) == 3
    for a, b in zip(layers, back):
        assert_same(a, b)
    assert back[0].batch == 2 and back[0].num_kv_heads == 3
    assert (back[0].n_sink, back[0].n_compressed, back[0].n_window) == (4, 300, 7)
    # Views of the file, not copies, and read-only.
    assert not back[0].k_codes.flags.writeable
    with pytest.raises(ValueError):
        back[0].k_codes[0, 0, 0, 0] = 1


def test_bytes_round_trip_matches_file(tmp_path):
    rng = np.random.default_rng(1)
    layers = [random_layer(rng, compressed=513)]
    blob = nqkv_to_bytes({"a": 1}, layers)
    write_nqkv(tmp_path / "x.nqkv", {"a": 1}, layers)
    assert (tmp_path / "x.nqkv").read_bytes() == blob
    meta, back = nqkv_from_bytes(blob)
    assert meta == {"a": 1}
    assert_same(layers[0], back[0])


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    rng = np.random.default_rng(2)
    layer = random_layer(rng)
    layer.k_codes = np.asfortranarray(layer.k_codes)
    layer.k_sink = layer.k_sink.astype(">f2")
    layer.aux = {"lengths": np.array([5, 6], dtype=">i4")}
    meta, (back,) = nqkv_from_bytes(nqkv_to_bytes({}, [layer]))
    assert np.array_equal(back.k_codes, layer.k_codes)
    assert np.array_equal(back.k_sink, layer.k_sink.astype(np.float16))
    assert back.aux["lengths"].tolist() == [5, 6]


def small_file() -> bytes:
    rng = np.random.default_rng(3)
    layer = random_layer(rng, batch=1, heads=1, head_dim=8, key_bits=2, value_bits=2,
                         sink=1, compressed=3, window=1, aux={"n": np.array([3], np.int32)})
    return nqkv_to_bytes({"m": 1}, [layer])


def test_every_single_bit_flip_is_rejected():
    data = small_file()
    assert len(data) < 2048
    nqkv_from_bytes(data)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(errors.FormatError):
            nqkv_from_bytes(bytes(flipped))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 2), st.sampled_from([8, 16, 24]),
                    st.integers(2, 4), st.integers(2, 4), st.integers(0, 3),
                    st.integers(0, 260), st.integers(0, 3)),
    raw_dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_round_trip_and_bit_flips_hypothesis(shape, raw_dtype, seed, data):
    b, h, d, kb, vb, ts, tc, tw = shape
    layer = random_layer(np.random.default_rng(seed), batch=b, heads=h, head_dim=d, key_bits=kb,
                         value_bits=vb, sink=ts, compressed=tc, window=tw, raw_dtype=raw_dtype)
    blob = nqkv_to_bytes({"seed": seed}, [layer])
    meta, (back,) = nqkv_from_bytes(blob)
    assert meta == {"seed": seed}
    assert_same(layer, back)
    bits = data.draw(st.lists(st.integers(0, len(blob) * 8 - 1), min_size=1, max_size=8))
    for bit in bits:
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(errors.FormatError):
            nqkv_from_bytes(bytes(flipped))


def test_truncation_at_every_length_is_rejected():
    data = small_file()
    for n in range(len(data)):
        with pytest.raises(errors.TruncatedError):
            nqkv_from_bytes(data[:n])


# --- crafted files: a CRC-32C and a re-sealer, to reach the checks behind the checksums ---

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def reseal(buf: bytearray) -> bytes:
    """Recomputes every section checksum, then the table's and the header's."""
    count = struct.unpack_from("<I", buf, 28)[0]
    for i in range(count):
        e = 64 + 40 * i
        off, length = struct.unpack_from("<QQ", buf, e + 16)
        struct.pack_into("<I", buf, e + 32, crc32c(bytes(buf[off:off + length])))
    struct.pack_into("<I", buf, 48, crc32c(bytes(buf[64:64 + 40 * count])))
    struct.pack_into("<I", buf, 60, crc32c(bytes(buf[:60])))
    return bytes(buf)


def section_offset(buf: bytes, i: int) -> int:
    return struct.unpack_from("<Q", buf, 64 + 40 * i + 16)[0]


def test_crc32c_matches_the_files():
    data = small_file()
    assert crc32c(data[:60]) == struct.unpack_from("<I", data, 60)[0]
    assert reseal(bytearray(data)) == data


def test_each_error_class_is_reachable():
    data = small_file()
    cases = []
    cases.append((errors.BadMagicError, b"GIF89a" + data[6:]))
    v2 = bytearray(data)
    struct.pack_into("<H", v2, 8, 2)
    cases.append((errors.UnsupportedVersionError, bytes(v2)))
    cases.append((errors.TruncatedError, data[:100]))
    flipped = bytearray(data)
    flipped[-1] ^= 1
    cases.append((errors.ChecksumError, bytes(flipped)))
    cases.append((errors.LayoutError, data + b"\0"))
    bits9 = bytearray(data)
    bits9[section_offset(data, 1) + 16] = 9  # key_bits of layer 0
    cases.append((errors.FormatError, reseal(bits9)))
    meta = bytearray(data)
    meta[section_offset(data, 0)] = ord("[")  # metadata no longer JSON
    cases.append((errors.FormatError, reseal(meta)))
    for cls, bad in cases:
        with pytest.raises(cls) as info:
            nqkv_from_bytes(bad)
        assert isinstance(info.value, errors.FormatError)
        assert isinstance(info.value, ValueError)
        if cls is errors.FormatError:
            assert type(info.value) is errors.FormatError
    with pytest.raises(errors.FormatError, match="key_bits must be one of"):
        nqkv_from_bytes(reseal(bits9))
    with pytest.raises(errors.UnsupportedVersionError, match="version 2.0"):
        nqkv_from_bytes(bytes(v2))


def test_writer_argument_errors(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "x.nqkv"

    def bad(**changes):
        layer = random_layer(rng, compressed=5)
        for k, v in changes.items():
            setattr(layer, k, v)
        return [layer]

    with pytest.raises(errors.BitsError, match="key_bits must be one of"):
        write_nqkv(path, {}, bad(key_bits=9))
    with pytest.raises(errors.HeadDimError, match="head_dim must be a multiple of 8"):
        write_nqkv(path, {}, bad(head_dim=12))
    with pytest.raises(errors.ShapeError, match="k_codes must be"):
        write_nqkv(path, {}, bad(k_codes=np.zeros((2, 3, 5, 23), np.uint8)))
    with pytest.raises(errors.ShapeError, match="v_scales"):
        write_nqkv(path, {}, bad(v_scales=np.zeros((2, 3, 4), np.uint16)))
    with pytest.raises(errors.ShapeError):
        write_nqkv(path, {}, bad(k_scales=np.zeros((2, 3), np.uint16)))
    with pytest.raises(errors.UnsupportedDtypeError, match="k_sink must have dtype"):
        write_nqkv(path, {}, bad(k_sink=np.zeros((2, 3, 4, 64), np.float64)))
    with pytest.raises(errors.UnsupportedDtypeError, match="raw_dtype must be one of"):
        write_nqkv(path, {}, bad(raw_dtype="float8"))
    with pytest.raises(errors.UnsupportedDtypeError, match="int32"):
        write_nqkv(path, {}, bad(aux={"x": np.zeros(3, np.float32)}))
    with pytest.raises(errors.InvalidArgumentError, match="meta must be a dict"):
        write_nqkv(path, [], bad())
    with pytest.raises(errors.InvalidArgumentError, match="JSON"):
        write_nqkv(path, {"x": object()}, bad())
    with pytest.raises(errors.InvalidArgumentError, match="name"):
        write_nqkv(path, {}, bad(aux={"n" * 33: np.zeros(1, np.int32)}))
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "x.nqkv"
    write_nqkv(path, {"v": 1}, [random_layer(rng)])
    before = path.read_bytes()
    layer = random_layer(rng)
    layer.key_bits = 0
    with pytest.raises(errors.BitsError):
        write_nqkv(path, {"v": 2}, [layer])
    assert path.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        write_nqkv(tmp_path / "missing" / "x.nqkv", {}, [random_layer(rng)])
    assert os.listdir(tmp_path) == ["x.nqkv"]


def test_read_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_nqkv(tmp_path / "nope.nqkv")
    (tmp_path / "empty.nqkv").write_bytes(b"")
    with pytest.raises(errors.TruncatedError):
        read_nqkv(tmp_path / "empty.nqkv")


def test_inspect_reports_corrupt_chunks_without_raising(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "x.nqkv"
    layers = [random_layer(rng, compressed=600), random_layer(rng, compressed=10)]
    write_nqkv(path, META, layers)
    info = inspect_nqkv(path)
    assert info["ok"] and info["version"] == "1.0"
    assert info["header"]["magic"] == b"NQKV\r\n\x1a\n"
    assert info["header"]["layer_count"] == 2
    assert info["metadata"] == META
    assert sum(info["bytes_by_component"].values()) == info["file_bytes"]
    k_chunks = [c for c in info["chunks"] if c["layer"] == 0 and c["component"] == "k_codes"]
    assert [c["tokens"] for c in k_chunks] == [256, 256, 88]
    assert info["bytes_by_component"]["k_codes"] == sum(l.k_codes.nbytes for l in layers)
    assert info["layers"][0]["n_compressed"] == 600
    # Damage one chunk: inspect reports it, read raises.
    target = k_chunks[1]
    data = bytearray(path.read_bytes())
    data[target["offset"] + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    info = inspect_nqkv(path)
    assert not info["ok"]
    assert [(c["layer"], c["component"], c["index"]) for c in info["corrupt_chunks"]] == [(0, "k_codes", 1)]
    with pytest.raises(errors.ChecksumError, match="layer 0 k_codes chunk 1"):
        read_nqkv(path)
    # A broken structure cannot be inspected.
    path.write_bytes(b"not a cache")
    with pytest.raises(errors.BadMagicError):
        inspect_nqkv(path)
