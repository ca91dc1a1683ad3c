"""The codec's Python API: round trips, exactness against the reference, errors, NaN handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nexusquant as nq
from nexusquant import errors, reference
from nexusquant.codec import code_bytes

ROOT = Path(__file__).resolve().parents[1]

HEAD_DIMS = [8, 16, 24, 64, 80, 96, 128, 256, 512]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# Gaussian SQNR targets at d = 128 (docs/codec.md; design.md "Performance targets").
SQNR_TARGET = {2: 10.0, 3: 15.2, 4: 20.8}


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x.double()
    return float(10 * torch.log10(x.pow(2).sum() / (x - y.double()).pow(2).sum()))


@st.composite
def codec_inputs(draw, max_vectors=6):
    d = draw(st.sampled_from(HEAD_DIMS))
    dtype = draw(st.sampled_from(DTYPES))
    bits = draw(st.integers(1, 8))
    lead = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3))
    if int(np.prod(lead)) > max_vectors:
        lead = [max_vectors]
    seed = draw(st.integers(0, 2**64 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = (torch.randn(*lead, d, generator=gen) * scale).to(dtype)
    return x, bits, seed


@given(codec_inputs())
def test_round_trip_shape_dtype_and_error(args):
    x, bits, seed = args
    q = nq.quantize(x, bits, seed=seed)
    y = nq.dequantize(q)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert q.codes.shape == (*x.shape[:-1], code_bytes(x.shape[-1], bits))
    assert q.scales.shape == x.shape[:-1] and q.scales.dtype == torch.float16
    if x.numel():
        # Never worse than coding nothing (the least-squares scale guarantees it), up to the
        # output dtype's rounding.
        xf, yf = x.double(), y.double()
        err = (xf - yf).pow(2).sum(-1)
        eps = torch.finfo(x.dtype).eps
        assert torch.all(err <= xf.pow(2).sum(-1) * (1 + 8 * eps) + 1e-30)


@given(codec_inputs(max_vectors=4))
def test_core_is_bit_exact_with_reference(args):
    x, bits, seed = args
    q_core = nq.quantize(x, bits, seed=seed, backend="core")
    q_ref = nq.quantize(x, bits, seed=seed, backend="reference")
    assert torch.equal(q_core.codes, q_ref.codes)
    assert torch.equal(q_core.scales.view(torch.int16), q_ref.scales.view(torch.int16))
    y_core = nq.dequantize(q_core, backend="core")
    y_ref = nq.dequantize(q_ref, backend="reference")
    assert torch.equal(y_core.view(torch.uint8), y_ref.view(torch.uint8))


@given(codec_inputs(max_vectors=4), st.sampled_from([1, 2]))
def test_fewer_candidates_core_is_bit_exact_with_reference(args, candidates):
    x, bits, seed = args
    q_core = nq.quantize(x, bits, seed=seed, backend="core", candidates=candidates)
    q_ref = nq.quantize(x, bits, seed=seed, backend="reference", candidates=candidates)
    assert torch.equal(q_core.codes, q_ref.codes)
    assert torch.equal(q_core.scales.view(torch.int16), q_ref.scales.view(torch.int16))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_one_candidate_meets_the_sqnr_targets_and_three_do_better(bits):
    x = torch.randn(4096, 128, generator=torch.Generator().manual_seed(12))
    one = sqnr_db(x, nq.dequantize(nq.quantize(x, bits, seed=3)))  # the default
    assert torch.equal(nq.quantize(x, bits, seed=3).codes, nq.quantize(x, bits, seed=3, candidates=1).codes)
    three = sqnr_db(x, nq.dequantize(nq.quantize(x, bits, seed=3, candidates=3)))
    assert one >= SQNR_TARGET[bits]
    assert three > one
    # Grouped encoding passes the setting through.
    codes = torch.empty(1, 4096, 128 * bits // 8, dtype=torch.uint8)
    scales = torch.empty(1, 4096, dtype=torch.float16)
    nq.codec.encode_groups(x[None], codes, scales, bits=bits, seed=3, candidates=1)
    assert torch.equal(codes[0], nq.quantize(x, bits, seed=3, candidates=1).codes)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gaussian_sqnr_meets_targets(bits):
    x = torch.randn(4096, 128, generator=torch.Generator().manual_seed(11))
    q = nq.quantize(x, bits, seed=3)
    assert sqnr_db(x, nq.dequantize(q)) >= SQNR_TARGET[bits]
    # Exactly b bits per element for codes, 16 bits per vector for the scale.
    assert q.codes.numel() * 8 == x.numel() * bits


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_every_head_dim_round_trips_well_at_4_bits(d):
    x = torch.randn(256, d, generator=torch.Generator().manual_seed(d))
    y = nq.dequantize(nq.quantize(x, 4, seed=1))
    assert sqnr_db(x, y) > 19.0


def test_same_seed_same_bytes_other_seed_other_bytes():
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    a, b, c = (nq.quantize(x, 3, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    assert not torch.equal(a.codes, c.codes)


@pytest.mark.parametrize("shape", [(7, 64), (2, 3, 5, 80), (1, 96), (0, 128), (3, 0, 64)])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nbytes_is_the_exact_formula(shape, bits):
    x = torch.randn(*shape)
    q = nq.quantize(x, bits)
    n = int(np.prod(shape[:-1]))
    d = shape[-1]
    assert q.nbytes == n * (d * bits // 8 + 2) + 16 + 8 * len(shape)
    assert q.head_dim == d and q.bits == bits and q.shape == x.shape and q.dtype == x.dtype


def test_non_contiguous_input_equals_contiguous():
    x = torch.randn(4, 128, 6, generator=torch.Generator().manual_seed(2)).transpose(1, 2)
    assert not x.is_contiguous()
    a = nq.quantize(x, 3, seed=9)
    b = nq.quantize(x.contiguous(), 3, seed=9)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_empty_tensor():
    q = nq.quantize(torch.empty(0, 64, dtype=torch.float16), 2)
    y = nq.dequantize(q)
    assert y.shape == (0, 64) and y.dtype == torch.float16


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_vector_is_isolated(bad):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 64, generator=gen)
    x_bad = x.clone()
    x_bad[2, 17] = bad
    q_bad = nq.quantize(x_bad, 3, seed=1)
    q_ok = nq.quantize(x, 3, seed=1)
    keep = torch.tensor([0, 1, 3, 4])
    assert torch.equal(q_bad.codes[keep], q_ok.codes[keep])
    assert torch.equal(q_bad.scales[keep], q_ok.scales[keep])
    assert torch.isnan(q_bad.scales[2]) and not q_bad.codes[2].any()
    y = nq.dequantize(q_bad)
    assert torch.isnan(y[2]).all()
    assert torch.isfinite(y[keep]).all()


def test_zero_vector_decodes_to_zero():
    x = torch.zeros(3, 128, dtype=torch.bfloat16)
    q = nq.quantize(x, 2)
    assert not q.codes.any() and not q.scales.view(torch.int16).any()
    assert torch.equal(nq.dequantize(q), x)


def test_huge_finite_values_saturate_not_corrupt():
    x = torch.randn(3, 64)
    x[1] *= 1e30  # squares overflow binary32: documented as a NaN vector
    q = nq.quantize(x, 3)
    y = nq.dequantize(q)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


def test_errors_name_the_argument_and_allowed_values():
    x = torch.randn(2, 64)
    with pytest.raises(errors.BitsError, match=r"bits must be one of \[1, 2, 3, 4, 5, 6, 7, 8\].*got 9"):
        nq.quantize(x, 9)
    with pytest.raises(errors.BitsError, match="bits must be an integer"):
        nq.quantize(x, 2.5)
    with pytest.raises(errors.HeadDimError, match="multiple of 8 in \\[8, 1024\\], got 100"):
        nq.quantize(torch.randn(2, 100), 3)
    with pytest.raises(errors.HeadDimError, match="got 2048"):
        nq.quantize(torch.randn(1, 2048), 3)
    with pytest.raises(errors.UnsupportedDtypeError, match="x.dtype must be one of .*got torch.int32"):
        nq.quantize(torch.ones(2, 64, dtype=torch.int32), 3)
    with pytest.raises(errors.DeviceError, match="'cpu' or 'cuda'"):
        nq.quantize(torch.empty(2, 64, device="meta"), 3)
    with pytest.raises(errors.InvalidArgumentError, match="seed must be"):
        nq.quantize(x, 3, seed=-1)
    with pytest.raises(errors.InvalidArgumentError, match="x must be a torch.Tensor"):
        nq.quantize(np.zeros((2, 64), np.float32), 3)
    with pytest.raises(errors.ShapeError, match="at least 1 dimension"):
        nq.quantize(torch.tensor(1.0), 3)
    for bad in (0, 4, True, 2.0):
        with pytest.raises(errors.InvalidArgumentError, match=r"candidates must be 1, 2 or 3 .*got"):
            nq.quantize(x, 3, candidates=bad)
    q = nq.quantize(x, 3)
    with pytest.raises(errors.ShapeError, match="codes.shape\\[-1\\] must be"):
        nq.codec.decode(q.codes[:, :-1], q.scales, bits=3, seed=0, head_dim=64)
    with pytest.raises(errors.ShapeError, match="scales.shape must be"):
        nq.codec.decode(q.codes, q.scales[:1], bits=3, seed=0, head_dim=64)
    with pytest.raises(errors.UnsupportedDtypeError, match="dtype must be one of"):
        nq.codec.decode(q.codes, q.scales, bits=3, seed=0, head_dim=64, dtype=torch.float64)
    # Every error is also a ValueError (or RuntimeError for devices), as documented.
    assert issubclass(errors.BitsError, ValueError) and issubclass(errors.DeviceError, RuntimeError)


def test_cuda_tensor_without_gpu_stack_fails_with_the_fix():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU tests cover this path")
    with pytest.raises(errors.InvalidArgumentError, match="backend must be one of"):
        nq.quantize(torch.randn(2, 64), 3, backend="gpu")
    with pytest.raises(errors.DeviceError, match="backend='cuda' needs CUDA tensors"):
        nq.quantize(torch.randn(2, 64), 3, backend="cuda")


def test_out_argument_is_written_in_place():
    x = torch.randn(4, 64, dtype=torch.float16)
    q = nq.quantize(x, 4)
    out = torch.empty(4, 64, dtype=torch.float16)
    y = nq.dequantize(q, out=out)
    assert y.data_ptr() == out.data_ptr()
    with pytest.raises(errors.ShapeError, match="out must be"):
        nq.dequantize(q, out=torch.empty(4, 64, dtype=torch.float32))


def test_threads_do_not_change_bytes():
    x = torch.randn(1000, 128, generator=torch.Generator().manual_seed(8), dtype=torch.float16)
    a = nq.quantize(x, 3, threads=1)
    b = nq.quantize(x, 3)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    assert torch.equal(nq.dequantize(a, threads=1), nq.dequantize(a))


# ------------------------------------------------------------------------------------------
# the reference's building blocks


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_codebook_points_are_in_the_cell_and_re_encode_to_themselves(bits):
    q = 1 << bits
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, q, (4096, 8), generator=gen)
    p = reference.vdec(codes, q)
    assert torch.all(p % 2 == 1)  # quarter-units of E8 + 1/4 are odd
    y = (p - 1) // 2  # half-units of the E8 point
    assert torch.all((y % 2 == 0).all(-1) | (y % 2 == 1).all(-1))  # one coset of D8 in E8
    assert torch.all(y.sum(-1) % 4 == 0)  # even coordinate sum: a point of E8
    assert torch.equal(reference.coords(y, q), codes)
    # Inside the Voronoi cell of qE8: reducing again changes nothing.
    assert torch.equal(reference.vdec(reference.coords(y, q), q), p)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_unclipped_blocks_are_within_the_covering_radius(bits):
    q = 1 << bits
    z = torch.randn(20000, 8, generator=torch.Generator().manual_seed(bits)) * (q / 4)
    code, p = reference._quantize_blocks(z, q)
    y = reference.qe8(z - 0.25)
    inside = (p == 2 * y + 1).all(-1)
    dist = (z - p.float() * 0.25).pow(2).sum(-1).sqrt()
    assert inside.float().mean() > 0.5
    assert torch.all(dist[inside] <= 1.0 + 1e-5)  # covering radius of E8
    # Overloaded blocks were pulled inside the cell: their codes reproduce their points.
    assert torch.equal(reference.vdec(code, q), p)


def test_qe8_is_the_nearest_lattice_point():
    z = torch.randn(3000, 8, generator=torch.Generator().manual_seed(1)) * 3
    y = reference.qe8(z).double() / 2
    best = (z.double() - y).pow(2).sum(-1)
    # Compare with every E8 point within one step of the answer (roots and their sums).
    roots = []
    for i in range(8):
        for j in range(i + 1, 8):
            for si in (-1, 1):
                for sj in (-1, 1):
                    r = torch.zeros(8, dtype=torch.float64)
                    r[i], r[j] = si, sj
                    roots.append(r)
    for mask in range(256):
        if bin(mask).count("1") % 2 == 0:
            roots.append(torch.tensor([-0.5 if mask >> k & 1 else 0.5 for k in range(8)], dtype=torch.float64))
    roots = torch.stack(roots)  # the 240 minimal vectors
    cand = y.unsqueeze(1) + roots.unsqueeze(0)
    d_cand = (z.double().unsqueeze(1) - cand).pow(2).sum(-1).min(1).values
    assert torch.all(best <= d_cand + 1e-9)


def test_pack_layout_matches_the_spec_drawing():
    # b = 3: byte0 = c0 | c1<<3 | (c2&3)<<6 ; byte1 = c2>>2 | c3<<1 | c4<<4 | (c5&1)<<7 ; ...
    c = torch.tensor([[1, 2, 7, 3, 4, 5, 6, 7]])
    b = reference.pack(c, 3)[0].tolist()
    assert b[0] == (1 | 2 << 3 | (7 & 3) << 6)
    assert b[1] == (7 >> 2 | 3 << 1 | 4 << 4 | (5 & 1) << 7)
    assert b[2] == (5 >> 1 | 6 << 2 | 7 << 5)
    for bits in range(1, 9):
        codes = torch.randint(0, 1 << bits, (5, 64), generator=torch.Generator().manual_seed(bits))
        assert torch.equal(reference.unpack(reference.pack(codes, bits), bits, 64), codes)


def test_golden_vectors():
    """The frozen bytes of ``tests/golden/codec_v1.json`` (also checked by the Rust core's
    ``tests/codec_golden.rs``): codes, fp16 scales and decoded float32 values, for the core and
    the torch reference alike. The stored input must equal the spec's splitmix64 input."""
    golden = json.loads((ROOT / "tests" / "golden" / "codec_v1.json").read_text())
    assert golden["codec"] == "e8v1" and golden["cases"]
    seed, rows = golden["seed"], golden["rows"]
    for case in golden["cases"]:
        d, bits = case["head_dim"], case["bits"]
        x = torch.from_numpy(np.frombuffer(bytes.fromhex(case["input_f32"]), dtype="<f4").copy()).reshape(rows, d)
        assert torch.equal(x, golden_input(rows, d, seed)), (d, bits)
        decoded = np.frombuffer(bytes.fromhex(case["decoded_f32"]), dtype="<f4").reshape(rows, d)
        for backend in ("core", "reference"):
            # The golden bytes were made with three clipping candidates (the KV cache's setting).
            q = nq.quantize(x, bits, seed=seed, backend=backend, candidates=3)
            assert q.codes.numpy().tobytes().hex() == case["codes"], (backend, d, bits)
            assert q.scales.view(torch.int16).numpy().astype("<i2").tobytes().hex() == case["scales"], (backend, d, bits)
            out = nq.dequantize(q, backend=backend).numpy()
            assert out.view("<u4").tobytes() == decoded.view("<u4").tobytes(), (backend, d, bits)


def golden_input(n: int, d: int, seed: int) -> torch.Tensor:
    """The golden input: ((next() >> 40) / 2^24 - 0.5) * 4 from splitmix64(seed)."""
    words = reference.splitmix64_outputs(seed, n * d)
    vals = [((w >> 40) / float(1 << 24) - 0.5) * 4.0 for w in words]
    return torch.tensor(vals, dtype=torch.float32).reshape(n, d)
