"""The low-level contract of ``nexusquant._core``: shapes, dtypes, errors, golden bytes, GIL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from nexusquant import _core, reference
from nexusquant.errors import (
    BitsError,
    HeadDimError,
    InvalidArgumentError,
    ShapeError,
    UnsupportedDtypeError,
)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "codec_v1.json").read_text())


def golden_input(rows: int, d: int) -> np.ndarray:
    """The golden input, regenerated from the spec's splitmix64 (as the JSON describes it)."""
    raw = np.array(reference.splitmix64_outputs(GOLDEN["seed"], rows * d), dtype=np.uint64) >> np.uint64(40)
    vals = (raw.astype(np.float32) / np.float32(2**24) - np.float32(0.5)) * np.float32(4)
    return vals.reshape(rows, d)


def buffers(n: int, d: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, d * bits // 8), np.uint8), np.zeros(n, np.uint16)


def gaussian(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def sqnr(x: np.ndarray, y: np.ndarray) -> float:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return float(10 * np.log10((x64**2).sum() / ((x64 - y64) ** 2).sum()))


# ------------------------------------------------------------------------------------------
# golden vectors


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"d{c['head_dim']}b{c['bits']}")
def test_golden_vectors(case: dict) -> None:
    d, bits, rows = case["head_dim"], case["bits"], GOLDEN["rows"]
    x = golden_input(rows, d)
    assert x.tobytes().hex() == case["input_f32"]
    codes, scales = buffers(rows, d, bits)
    # The golden bytes were made with three clipping candidates (the KV cache's setting).
    _core.encode(x, codes, scales, bits=bits, seed=GOLDEN["seed"], dtype="float32", candidates=3)
    assert codes.tobytes().hex() == case["codes"]
    assert scales.astype("<u2").tobytes().hex() == case["scales"]
    out = np.empty((rows, d), np.float32)
    _core.decode(codes, scales, out, bits=bits, seed=GOLDEN["seed"], dtype="float32")
    assert out.tobytes().hex() == case["decoded_f32"]


# ------------------------------------------------------------------------------------------
# dtypes and round trips


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_float32_round_trip_quality(bits: int) -> None:
    x = gaussian(4096, 128)
    codes, scales = buffers(4096, 128, bits)
    _core.encode(x, codes, scales, bits=bits, seed=7, dtype="float32")
    y = np.empty_like(x)
    _core.decode(codes, scales, y, bits=bits, seed=7, dtype="float32")
    z = np.empty_like(x)
    _core.scalar_roundtrip(x, z, bits=bits, seed=7)
    e8, scalar = sqnr(x, y), sqnr(x, z)
    assert e8 > {2: 9.8, 3: 15.0, 4: 20.6}[bits]
    assert e8 > scalar + 0.3, (e8, scalar)


def test_float16_as_float16_or_uint16_bits_gives_identical_bytes() -> None:
    x = gaussian(100, 64).astype(np.float16)
    c1, s1 = buffers(100, 64, 3)
    c2, s2 = buffers(100, 64, 3)
    _core.encode(x, c1, s1, bits=3, seed=1, dtype="float16")
    _core.encode(x.view(np.uint16), c2, s2, bits=3, seed=1, dtype="float16")
    assert np.array_equal(c1, c2) and np.array_equal(s1, s2)
    # Widening float16 to float32 first gives the same codes (the codec widens exactly).
    c3, s3 = buffers(100, 64, 3)
    _core.encode(x.astype(np.float32), c3, s3, bits=3, seed=1, dtype="float32")
    assert np.array_equal(c1, c3) and np.array_equal(s1, s3)
    out16 = np.empty((100, 64), np.float16)
    _core.decode(c1, s1, out16, bits=3, seed=1, dtype="float16")
    out32 = np.empty((100, 64), np.float32)
    _core.decode(c1, s1, out32, bits=3, seed=1, dtype="float32")
    assert np.array_equal(out16, out32.astype(np.float16))


def test_bfloat16_bits() -> None:
    x32 = gaussian(50, 80)
    bf = (x32.view(np.uint32) >> 16).astype(np.uint16)  # truncation is fine for an input
    codes, scales = buffers(50, 80, 2)
    _core.encode(bf, codes, scales, bits=2, seed=3, dtype="bfloat16")
    widened = (bf.astype(np.uint32) << 16).view(np.float32)
    c2, s2 = buffers(50, 80, 2)
    _core.encode(widened, c2, s2, bits=2, seed=3, dtype="float32")
    assert np.array_equal(codes, c2) and np.array_equal(scales, s2)
    out = np.empty((50, 80), np.uint16)
    _core.decode(codes, scales, out, bits=2, seed=3, dtype="bfloat16")
    out32 = np.empty((50, 80), np.float32)
    _core.decode(codes, scales, out32, bits=2, seed=3, dtype="float32")
    # Round to nearest even from float32.
    u = out32.view(np.uint32).astype(np.uint64)
    want = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(out, want)


def test_nan_rows_are_isolated_and_zero_rows_are_zero() -> None:
    x = gaussian(20, 64)
    clean_codes, clean_scales = buffers(20, 64, 4)
    _core.encode(x, clean_codes, clean_scales, bits=4, seed=0, dtype="float32")
    x[3, 5] = np.nan
    x[7, 0] = np.inf
    x[9] = 0
    codes, scales = buffers(20, 64, 4)
    _core.encode(x, codes, scales, bits=4, seed=0, dtype="float32")
    assert scales[3] == scales[7] == 0x7E00 and scales[9] == 0
    assert not codes[[3, 7, 9]].any()
    keep = [r for r in range(20) if r not in (3, 7, 9)]
    assert np.array_equal(codes[keep], clean_codes[keep])
    assert np.array_equal(scales[keep], clean_scales[keep])
    out = np.empty((20, 64), np.float16)
    _core.decode(codes, scales, out, bits=4, seed=0, dtype="float16")
    assert np.isnan(out[[3, 7]]).all() and (out[9] == 0).all()
    assert np.isfinite(out[keep]).all()


def test_every_head_dim_and_width_runs() -> None:
    for d in (8, 24, 64, 80, 96, 128, 256, 512, 1024):
        for bits in range(1, 9):
            x = gaussian(9, d, seed=d + bits)
            codes, scales = buffers(9, d, bits)
            _core.encode(x, codes, scales, bits=bits, seed=5, dtype="float32")
            y = np.empty_like(x)
            _core.decode(codes, scales, y, bits=bits, seed=5, dtype="float32")
            assert sqnr(x, y) > 2.0, (d, bits)


def test_empty_batch() -> None:
    x = np.zeros((0, 128), np.float32)
    codes, scales = buffers(0, 128, 3)
    _core.encode(x, codes, scales, bits=3, seed=0, dtype="float32")
    _core.decode(codes, scales, x, bits=3, seed=0, dtype="float32")


# ------------------------------------------------------------------------------------------
# threads and the GIL


def test_thread_counts_give_identical_bytes() -> None:
    x = gaussian(3001, 128).astype(np.float16)
    results = []
    for threads in (1, 2, None):
        codes, scales = buffers(3001, 128, 3)
        _core.encode(x, codes, scales, bits=3, seed=9, dtype="float16", threads=threads)
        out = np.empty((3001, 128), np.float16)
        _core.decode(codes, scales, out, bits=3, seed=9, dtype="float16", threads=threads)
        results.append((codes, scales, out.view(np.uint16)))
    for r in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(r, results[0]))


def test_gil_is_released_during_work() -> None:
    """Two Python threads encode concurrently; while they run, the main thread keeps running
    Python code (which needs the GIL), and both finish with the single-threaded bytes."""
    x = gaussian(20000, 128)
    want_codes, want_scales = buffers(20000, 128, 2)
    _core.encode(x, want_codes, want_scales, bits=2, seed=4, dtype="float32", threads=1)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    done = threading.Event()

    def work() -> None:
        codes, scales = buffers(20000, 128, 2)
        _core.encode(x, codes, scales, bits=2, seed=4, dtype="float32", threads=1)
        results.append((codes, scales))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    ticks = 0
    while any(w.is_alive() for w in workers):
        ticks += 1  # runs only while the workers do not hold the GIL
        done.wait(0.001)
    for w in workers:
        w.join(timeout=60)
    assert len(results) == 2 and ticks > 0
    for codes, scales in results:
        assert np.array_equal(codes, want_codes) and np.array_equal(scales, want_scales)


# ------------------------------------------------------------------------------------------
# errors: type and message


def encode_args(n: int = 4, d: int = 64, bits: int = 3) -> tuple:
    x = gaussian(n, d)
    return (x, *buffers(n, d, bits))


def test_bits_errors() -> None:
    x, c, s = encode_args()
    with pytest.raises(BitsError, match=r"bits must be in 1\.\.=8 \(2, 3, 4 tuned\), got 9"):
        _core.encode(x, c, s, bits=9, seed=0, dtype="float32")
    with pytest.raises(BitsError, match="got -1"):
        _core.encode(x, c, s, bits=-1, seed=0, dtype="float32")
    with pytest.raises(BitsError, match="bits must be an integer"):
        _core.encode(x, c, s, bits=2.5, seed=0, dtype="float32")


def test_head_dim_errors() -> None:
    x = gaussian(4, 100)
    codes, scales = np.zeros((4, 38), np.uint8), np.zeros(4, np.uint16)
    with pytest.raises(HeadDimError, match=r"head_dim must be a multiple of 8 in \[8, 1024\], got 100"):
        _core.encode(x, codes, scales, bits=3, seed=0, dtype="float32")
    out = np.empty((1, 2048), np.float32)
    with pytest.raises(HeadDimError, match="got 2048"):
        _core.decode(np.zeros((1, 768), np.uint8), np.zeros(1, np.uint16), out, bits=3, seed=0, dtype="float32")


def test_shape_errors() -> None:
    x, c, s = encode_args()
    with pytest.raises(ShapeError, match=r"codes_out must have shape \(4, 24\), got \(4, 23\)"):
        _core.encode(x, c[:, :23].copy(), s, bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match=r"codes_out must have shape \(4, 24\), got \(2, 48\)"):
        _core.encode(x, c.reshape(2, 48), s, bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match=r"scales_out must have shape \(4,\), got \(5,\)"):
        _core.encode(x, c, np.zeros(5, np.uint16), bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match=r"x must be 2-D"):
        _core.encode(x.reshape(-1), c, s, bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match="x must be C-contiguous"):
        _core.encode(np.asfortranarray(x), c, s, bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match=r"codes must have shape \(4, 24\)"):
        _core.decode(c[:3], s, np.empty((4, 64), np.float32), bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match=r"out must have shape \(4, 64\)"):
        _core.scalar_roundtrip(x, np.empty((4, 65), np.float32), bits=3, seed=0)


def test_dtype_errors() -> None:
    x, c, s = encode_args()
    with pytest.raises(UnsupportedDtypeError, match=r"dtype must be one of \['float32', 'float16', 'bfloat16'\], got 'int8'"):
        _core.encode(x, c, s, bits=3, seed=0, dtype="int8")
    with pytest.raises(UnsupportedDtypeError, match="x must have numpy dtype float32, got"):
        _core.encode(x.astype(np.float64), c, s, bits=3, seed=0, dtype="float32")
    with pytest.raises(UnsupportedDtypeError, match=r"x must have numpy dtype uint16 \(bfloat16 bit patterns\)"):
        _core.encode(x.astype(np.float16), c, s, bits=3, seed=0, dtype="bfloat16")
    with pytest.raises(UnsupportedDtypeError, match="codes_out must have numpy dtype uint8"):
        _core.encode(x, c.astype(np.int16), s, bits=3, seed=0, dtype="float32")
    with pytest.raises(UnsupportedDtypeError, match="scales_out must have numpy dtype uint16"):
        _core.encode(x, c, s.astype(np.float32), bits=3, seed=0, dtype="float32")
    # UnsupportedDtypeError is also a TypeError and an InvalidArgumentError.
    assert issubclass(UnsupportedDtypeError, TypeError)


def test_argument_errors() -> None:
    x, c, s = encode_args()
    with pytest.raises(InvalidArgumentError, match=r"seed must be an integer in \[0, 2\*\*64\), got -1"):
        _core.encode(x, c, s, bits=3, seed=-1, dtype="float32")
    with pytest.raises(InvalidArgumentError, match=r"threads must be in 1\.\.=1024 \(or unset for all cores\), got 0"):
        _core.encode(x, c, s, bits=3, seed=0, dtype="float32", threads=0)
    for bad in (0, 4, "3"):
        with pytest.raises(InvalidArgumentError, match=rf"candidates must be 1, 2 or 3 .*got {bad}"):
            _core.encode(x, c, s, bits=3, seed=0, dtype="float32", candidates=bad)
    with pytest.raises(InvalidArgumentError, match="x must be a numpy array"):
        _core.encode(x.tolist(), c, s, bits=3, seed=0, dtype="float32")
    c.flags.writeable = False
    with pytest.raises(InvalidArgumentError, match="codes_out must be a writeable array"):
        _core.encode(x, c, s, bits=3, seed=0, dtype="float32")


def test_build_info() -> None:
    info = _core.build_info()
    assert info["codec"] == "e8v1" and info["threads"] >= 1
    assert info["simd"] in ("avx2+f16c", "baseline")
    assert info["profile"] in ("debug", "release")
    assert set(info) >= {"version", "target_arch", "target_os"}
