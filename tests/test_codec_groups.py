"""Grouped encode/decode: codes and decoded values written straight into slices of larger buffers
(what the KV cache does per (row, head)), byte-identical to the plain calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nexusquant import _core, codec
from nexusquant.errors import DeviceError, ShapeError, UnsupportedDtypeError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("head_dim", "bits"), [(64, 3), (128, 2), (80, 4)])
def test_groups_match_plain_calls_in_slices_of_buffers(dtype, head_dim, bits) -> None:
    gen = torch.Generator().manual_seed(head_dim * 10 + bits)
    x = torch.randn(2, 3, 40, head_dim, generator=gen).to(dtype)
    x[1, 2, 7] = float("nan")
    codes, scales = codec.encode(x, bits, 5)
    cb = codes.shape[-1]
    # Encode tokens 10..30 of every (row, head) into the middle of bigger code buffers.
    buf_c = torch.full((2, 3, 50, cb), 0xAB, dtype=torch.uint8)
    buf_s = torch.full((2, 3, 50), 7.0, dtype=torch.float16)
    codec.encode_groups(x[:, :, 10:30].reshape(6, 20, head_dim), buf_c.view(6, 50, cb)[:, 5:25],
                        buf_s.view(6, 50)[:, 5:25], bits=bits, seed=5)
    assert torch.equal(buf_c[:, :, 5:25], codes[:, :, 10:30])
    assert torch.equal(buf_s[:, :, 5:25].view(torch.int16), scales[:, :, 10:30].view(torch.int16))
    assert (buf_c[:, :, :5] == 0xAB).all() and (buf_c[:, :, 25:] == 0xAB).all()
    assert (buf_s[:, :, :5] == 7).all() and (buf_s[:, :, 25:] == 7).all()
    # Decode them into the middle of an attention-shaped buffer.
    full = torch.full((2, 3, 64, head_dim), 3.0, dtype=dtype)
    codec.decode_groups(buf_c.view(6, 50, cb)[:, 5:25], buf_s.view(6, 50)[:, 5:25],
                        full.view(6, 64, head_dim)[:, 30:50], bits=bits, seed=5)
    want = codec.decode(codes, scales, bits=bits, seed=5, head_dim=head_dim, dtype=dtype)[:, :, 10:30]
    torch.testing.assert_close(full[:, :, 30:50], want, rtol=0, atol=0, equal_nan=True)
    assert (full[:, :, :30] == 3).all() and (full[:, :, 50:] == 3).all()


def test_groups_read_any_input_strides_and_thread_counts() -> None:
    x = torch.randn(5, 3, 33, 64)  # (q, H, T, d) -> transposed: groups not dense in memory
    xt = x.transpose(0, 1)
    c1, s1 = codec.encode(xt, 2, 1)
    for threads in (None, 1, 3):
        c = torch.empty(3, 5 * 33, 16, dtype=torch.uint8)
        s = torch.empty(3, 5 * 33, dtype=torch.float16)
        codec.encode_groups(xt.reshape(3, 5 * 33, 64), c, s, bits=2, seed=1, threads=threads)
        assert torch.equal(c, c1.reshape(3, -1, 16))
        assert torch.equal(s.view(torch.int16), s1.reshape(3, -1).view(torch.int16))


def test_empty_groups() -> None:
    out = torch.zeros(0, 4, 64)
    codec.decode_groups(torch.zeros(0, 4, 24, dtype=torch.uint8), torch.zeros(0, 4, dtype=torch.float16),
                        out, bits=3, seed=0)
    codec.encode_groups(torch.zeros(3, 0, 64), torch.zeros(3, 0, 24, dtype=torch.uint8),
                        torch.zeros(3, 0, dtype=torch.float16), bits=3, seed=0)


def test_group_errors_name_the_argument() -> None:
    codes = torch.zeros(2, 4, 24, dtype=torch.uint8)
    scales = torch.zeros(2, 4, dtype=torch.float16)
    with pytest.raises(ShapeError, match="codes"):
        codec.decode_groups(codes[:, :, :20], scales, torch.zeros(2, 4, 64), bits=3, seed=0)
    with pytest.raises(ShapeError, match="scales"):
        codec.decode_groups(codes, scales[:, :3], torch.zeros(2, 4, 64), bits=3, seed=0)
    with pytest.raises(ShapeError, match="out"):
        codec.decode_groups(codes, scales, torch.zeros(2, 64, 4).transpose(1, 2), bits=3, seed=0)
    with pytest.raises(UnsupportedDtypeError, match="out"):
        codec.decode_groups(codes, scales, torch.zeros(2, 4, 64, dtype=torch.float64), bits=3, seed=0)
    with pytest.raises(ShapeError, match="x"):
        codec.encode_groups(torch.zeros(8, 64), codes, scales, bits=3, seed=0)
    with pytest.raises(ShapeError, match="codes_out"):
        codec.encode_groups(torch.zeros(2, 4, 64), codes.transpose(0, 1), scales, bits=3, seed=0)
    with pytest.raises(ShapeError, match="scales_out"):
        codec.encode_groups(torch.zeros(2, 4, 64), codes, torch.zeros(4, 2, dtype=torch.float16).t(),
                            bits=3, seed=0)
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        with pytest.raises(DeviceError):
            codec.decode_groups(codes, scales, torch.zeros(2, 4, 64, device="cuda"), bits=3, seed=0)


def test_core_refuses_overlapping_groups() -> None:
    """A writable array whose groups alias each other (stride 0) is refused, never written."""
    out = np.lib.stride_tricks.as_strided(np.zeros(4 * 64, np.float32), shape=(3, 4, 64),
                                          strides=(0, 256, 4), writeable=True)
    codes = np.zeros((3, 4, 24), np.uint8)
    scales = np.zeros((3, 4), np.uint16)
    with pytest.raises(ShapeError, match="overlap"):
        _core.decode_groups(codes, scales, out, bits=3, seed=0, dtype="float32")
    with pytest.raises(ShapeError, match="overlap"):
        _core.encode_groups(np.zeros((3, 4, 64), np.float32),
                            np.lib.stride_tricks.as_strided(codes, shape=(3, 4, 24), strides=(24, 24, 1),
                                                            writeable=True),
                            scales, bits=3, seed=0, dtype="float32")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_centred_rows_get_their_group_centre(dtype) -> None:
    """With centres, a scale's sign bit marks a row coded relative to its group's centre: it
    decodes with |scale| plus the centre (float32, then rounded), the same in the core and the
    reference; unmarked rows decode bit for bit as without centres."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 30, 64, generator=gen)
    codes, scales = codec.encode(x, 3, 9)
    flags = torch.rand(4, 30, generator=gen) > 0.5
    flagged = (scales.view(torch.int16) | (flags.to(torch.int16) * -0x8000)).view(torch.float16)
    centres = torch.randn(4, 64, generator=gen) * 4
    got = torch.empty(4, 30, 64, dtype=dtype)
    codec.decode_groups(codes, flagged, got, bits=3, seed=9, centres=centres)
    ref = torch.empty(4, 30, 64, dtype=dtype)
    codec.decode_groups(codes, flagged, ref, bits=3, seed=9, centres=centres, backend="reference")
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    plain = codec.decode(codes, scales, bits=3, seed=9, head_dim=64, dtype=torch.float32)
    want = torch.where(flags[..., None], plain + centres[:, None], plain).to(dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ShapeError, match="centres"):
        codec.decode_groups(codes, flagged, got, bits=3, seed=9, centres=centres[:, :32])
