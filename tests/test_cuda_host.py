"""Host emulation of the CUDA kernels against nexusquant.reference. No GPU needed.

The kernels' math is ``__host__ __device__`` code (python/nexusquant/cuda/*.cuh). tests/cuda_host
compiles that very text with g++ (``-ffp-contract=off``, sanitizers on) together with a host
version of the warp primitives (lanes run one after the other; the shuffle butterfly runs on an
array in the order __shfl_xor_sync pairs lanes), and runs every CTA of the grid the Python
launch planner picks, with the argument dictionaries the GPU path builds. So this checks, on the
CPU: the FOLD-as-warp-reduction order, the lane/group mapping for every head_dim class, the
overload loop, the integer VDEC, packing, the shared-memory layouts and sizes, the launch
planner, split-K attention with GQA, sinks/window, masks and lengths.

What it cannot check: the CUDA intrinsics themselves (__fadd_rn & co. are IEEE by definition,
emulated by SSE float ops), the PTX conversion instructions (cvt.rn.f16.f32 and friends; the host
uses exact software conversions, checked here against torch), warp scheduling and memory
ordering on a real device. tests/test_gpu.py covers those on a GPU.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from cuda_host import harness
from cuda_host.cases import make_view, random_scales, reference_attention, rows, same_bits
from nexusquant import codec, reference
from nexusquant.cache import layer as cache_layer
from nexusquant.gpu import attention, kernels, ops

HEAD_DIMS = [8, 64, 80, 96, 128, 256]
BITS = list(range(1, 9))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS = 37  # not a multiple of any CTA's vector count: the bounds check runs


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    compiler = harness.find_compiler()
    if compiler is None:
        pytest.skip("no C++ compiler (g++ / c++ / $CXX) to build the host emulation")
    out = tmp_path_factory.mktemp("cuda_host")
    return harness.HostKernels(harness.build(compiler, out), out)


def host_encode(host, x: torch.Tensor, bits: int, seed: int, candidates: int = 3):
    """The encode kernel's body on the host for the (ROWS, d) rows ``x``: ``(codes, scales)``."""
    d = x.shape[1]
    codes = torch.empty(ROWS, d * bits // 8, dtype=torch.uint8)
    scales = torch.empty(ROWS, dtype=torch.float16)
    host.launch(
        "encode",
        x.dtype,
        kernels.codec_launch("encode", ROWS, d),
        ops.encode_args(x, codes, scales, bits, seed, candidates),
    )
    return codes, scales


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_encode_matches_reference(host, d, bits):
    for k, dtype in enumerate(DTYPES):
        x = rows(d, dtype, seed=1000 * d + 10 * bits + k)
        seed = 0x9E3779B97F4A7C15 * (d + bits + k) % 2**64
        codes, scales = host_encode(host, x, bits, seed)
        ref_codes, ref_scales = reference.encode(x, bits, seed, 3)
        assert torch.equal(codes, ref_codes), f"codes differ, {dtype}"
        assert torch.equal(scales.view(torch.int16), ref_scales), f"scales differ, {dtype}"


@pytest.mark.parametrize("candidates", [1, 2])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_encode_with_fewer_candidates_matches_reference_and_core(host, bits, candidates):
    x = rows(128, torch.float16, seed=77 * bits + candidates)
    codes, scales = host_encode(host, x, bits, 5, candidates)
    ref_codes, ref_scales = reference.encode(x, bits, 5, candidates)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(scales.view(torch.int16), ref_scales)
    core_codes, core_scales = codec.encode(x, bits, 5, candidates=candidates, backend="core")
    assert torch.equal(codes, core_codes)
    assert torch.equal(scales.view(torch.int16), core_scales.view(torch.int16))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_decode_matches_reference(host, d, bits):
    gen = torch.Generator().manual_seed(d * 31 + bits)
    codes = torch.randint(0, 256, (ROWS, d * bits // 8), generator=gen, dtype=torch.uint8)
    scales = random_scales(ROWS, gen)
    seed = 12345 + 7 * d + bits
    for dtype in DTYPES:
        out = torch.empty(ROWS, d, dtype=dtype)
        host.launch(
            "decode",
            dtype,
            kernels.codec_launch("decode", ROWS, d),
            ops.decode_args(codes, scales, out, bits, seed),
        )
        ref = reference.decode(codes, scales.view(torch.int16), bits, seed, d, dtype)
        assert same_bits(out, ref), f"decoded values differ, {dtype}"


@pytest.mark.parametrize("d", [16, 24, 40, 136, 264, 512, 520, 1024])
def test_other_head_dims_round_trip_like_reference(host, d):
    """Every group-size class: 2-4 lanes, 16-32 with padding, 2 and 4 blocks per lane."""
    bits = 3
    x = rows(d, torch.float32, seed=d)
    codes, scales = host_encode(host, x, bits, d)
    ref_codes, ref_scales = reference.encode(x, bits, d, 3)
    assert torch.equal(codes, ref_codes) and torch.equal(scales.view(torch.int16), ref_scales)
    out = torch.empty(ROWS, d, dtype=torch.bfloat16)
    host.launch(
        "decode",
        torch.bfloat16,
        kernels.codec_launch("decode", ROWS, d),
        ops.decode_args(codes, scales, out, bits, d),
    )
    assert same_bits(
        out, reference.decode(codes, scales.view(torch.int16), bits, d, d, torch.bfloat16)
    )


def test_rms_underflow_encodes_as_zero_vector(host):
    """ss > 0 but ss/d rounds to 0: the kernels (like the Rust core) store a zero vector.

    docs/codec.md does not cover this case (A/rms would be infinite) and reference.encode
    returns codes computed from NaN there; the kernels follow the Rust core."""
    x = torch.zeros(1, 8)
    x[0, 0], x[0, 1] = 2.0**-75, 2.0**-74
    v = reference.rotate(x, 0)
    ss = reference.fold_sum(v * v)
    assert ss.item() > 0 and torch.sqrt(ss / 8).item() == 0  # the premise
    codes = torch.full((1, 2), 0xAA, dtype=torch.uint8)
    scales = torch.full((1,), 1.0, dtype=torch.float16)
    host.launch(
        "encode",
        torch.float32,
        kernels.codec_launch("encode", 1, 8),
        ops.encode_args(x, codes, scales, 2, 0),
    )
    assert codes.tolist() == [[0, 0]] and scales.view(torch.int16).tolist() == [0]


def words_to_codes(words: np.ndarray, bits: int) -> torch.Tensor:
    w = torch.from_numpy(words.view(np.int64))
    return torch.stack([(w >> (bits * k)) & ((1 << bits) - 1) for k in range(8)], dim=-1)


@pytest.mark.parametrize("bits", BITS)
def test_integer_vdec_equals_float_vdec(host, bits):
    """The kernels' integer VDEC against the spec's binary32 VDEC: every code word for b <= 2,
    random words otherwise (plus the all-zero and all-ones words)."""
    if bits <= 2:
        words = np.arange(1 << (8 * bits), dtype=np.uint64)
    else:
        rng = np.random.default_rng(bits)
        words = rng.integers(0, 1 << (8 * bits), size=40000, dtype=np.uint64)
        words[:2] = [0, (1 << (8 * bits)) - 1]
    out = host.run("vdec", {"words": words}, {"out": np.int32}, bits=bits)["out"]
    ref = reference.vdec(words_to_codes(words, bits), 1 << bits)
    assert torch.equal(torch.from_numpy(out.astype(np.int64)).reshape(-1, 8), ref)


def test_fp16_bf16_conversions_match_torch(host):
    rng = np.random.default_rng(0)
    specials = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            65504.0,
            65519.996,
            65520.0,
            65536.0,
            1e9,
            2.0**-24,
            2.0**-25,
            2.0**-25 * 1.0000001,
            3 * 2.0**-26,
            2.0**-14,
            2.0**-14 * (1 - 2.0**-11),
            1.0 + 2.0**-11,
            1.0 + 3 * 2.0**-11,
            3.3895314e38,
            1e-45,
            1.0 + 2.0**-8,
            1.0 + 3 * 2.0**-8,
        ],
        dtype=np.float32,
    )
    randoms = (rng.standard_normal(200000) * np.exp(rng.uniform(-40, 40, 200000))).astype(
        np.float32
    )
    bits = rng.integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([specials, -specials, randoms, bits])
    out = host.run(
        "convert", {"f32": x}, {"f16": np.int16, "bf16": np.int16, "f16_all": np.float32}
    )
    t = torch.from_numpy(x)
    assert same_bits(torch.from_numpy(out["f16"]).view(torch.float16), t.to(torch.float16))
    assert same_bits(torch.from_numpy(out["bf16"]).view(torch.bfloat16), t.to(torch.bfloat16))
    all_f16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    assert same_bits(torch.from_numpy(out["f16_all"]), all_f16.to(torch.float32))


def test_launch_planner_fits_48k_shared_memory():
    for d in range(8, 1025, 8):
        for op in ("encode", "decode"):
            assert kernels.codec_launch(op, 1000, d).shared_mem <= 48 * 1024, (op, d)
        plan = kernels.attention_plan(4, 32, 8, d, 131072, 1024, 132)
        assert plan.partial.shared_mem <= 48 * 1024, d
        assert plan.combine.shared_mem <= 48 * 1024, d


# --------------------------------------------------------------------------------------------
# fused decode attention


def host_attention(host, query, view, scaling, sm_count, **masks):
    call = attention.attention_args(query, view, scaling, sm_count=sm_count, **masks)
    if call.plan.splits:
        host.launch("attn_partial", query.dtype, call.plan.partial, call.partial, bpl=call.plan.bpl)
        host.launch("attn_combine", query.dtype, call.plan.combine, call.combine)
    else:
        call.out.zero_()
    return call.out, call.plan


ATTENTION_CASES = [
    # b, hq, hkv, d, tc, tr, sinks, k_bits, v_bits, dtype, lengths, masks, sm_count
    (2, 8, 2, 64, 700, 40, 4, 2, 3, torch.float16, True, False, 64),  # GQA, 3 coded splits
    (1, 12, 1, 80, 300, 17, 0, 4, 4, torch.float32, False, True, 8),  # MQA: 2 head chunks
    (2, 4, 4, 8, 50, 0, 0, 3, 2, torch.bfloat16, True, False, 4),  # one lane per vector, no raw
    (1, 4, 2, 512, 100, 9, 2, 2, 2, torch.float16, False, False, 4),  # 2 blocks per lane
    (1, 2, 1, 1024, 40, 5, 1, 1, 8, torch.float32, False, True, 2),  # 4 blocks per lane
    (2, 6, 2, 96, 0, 300, 4, 3, 3, torch.float16, True, False, 4),  # no coded tokens, 2 raw splits
]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"d{c[3]}-tc{c[4]}-tr{c[5]}-{c[9]}")
def test_attention_matches_float64_reference(host, case):
    b, hq, hkv, d, tc, tr, sinks, kb, vb, dtype, lengths, use_masks, sm_count = case
    gen = torch.Generator().manual_seed(d + tc)
    view = make_view(b, hkv, d, tc, tr, kb, vb, dtype, sinks, gen, lengths=lengths)
    query = torch.randn(b, hq, d, generator=gen).to(dtype)
    masks = {}
    if use_masks:
        masks = {
            "coded_mask": torch.rand(b, tc, generator=gen) > 0.3,
            "raw_mask": torch.rand(b, tr, generator=gen) > 0.3,
        }
    scaling = d**-0.5
    out, plan = host_attention(host, query, view, scaling, sm_count, **masks)
    ref, _, vals, _ = reference_attention(
        query, view, scaling, masks.get("coded_mask"), masks.get("raw_mask")
    )
    assert out.dtype == dtype and out.shape == (b, hq, d)
    # At most twice the output dtype's own rounding of the exact result, plus a few float32
    # ulps of the values for the kernel's binary32 accumulation.
    rounding = (ref.to(dtype).double() - ref).abs().amax()
    tol = 2 * rounding + 4 * torch.finfo(torch.float32).eps * vals.abs().amax()
    err = (out.double() - ref).abs().amax()
    assert err <= tol, (
        f"max error {err:.3g} > {tol:.3g} (splits {plan.coded_splits}+{plan.raw_splits})"
    )


def test_attention_plan_splits_long_contexts():
    plan = kernels.attention_plan(1, 32, 8, 128, 131072, 132, 132)
    assert plan.coded_splits >= 30 and plan.partial.grid[0] * plan.partial.grid[1] >= 2 * 132
    assert (
        plan.coded_chunk * plan.coded_splits >= 131072 > plan.coded_chunk * (plan.coded_splits - 1)
    )
    # 64 (batch, kv head) rows would take 33 splits to fill 16 CTAs per SM; 256 tokens each caps it
    assert kernels.attention_plan(8, 32, 8, 128, 4096, 0, 132).coded_splits == 4096 // 256
    assert kernels.attention_plan(8, 32, 8, 128, 131072, 0, 132).coded_splits == 33


def test_attention_nan_token_poisons_only_when_attended(host):
    gen = torch.Generator().manual_seed(7)
    view = make_view(1, 1, 64, 40, 8, 3, 3, torch.float32, 2, gen)
    view.k_scales[0, 0, 17] = math.nan
    query = torch.randn(1, 4, 64, generator=gen)
    out, _ = host_attention(host, query, view, 0.125, 4)
    assert torch.isnan(out).all()
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, 17] = False
    out, _ = host_attention(host, query, view, 0.125, 4, coded_mask=mask)
    ref = reference_attention(query, view, 0.125, coded_mask=mask)[0]
    assert torch.isfinite(out).all() and (out.double() - ref).abs().amax() < 1e-5


def test_attention_row_without_tokens_is_zero(host):
    gen = torch.Generator().manual_seed(8)
    view = make_view(2, 2, 32, 30, 6, 2, 2, torch.float16, 2, gen)
    view = dataclasses.replace(
        view, lengths=torch.tensor([[2, 30, 4], [0, 0, 0]], dtype=torch.int32)
    )
    query = torch.randn(2, 4, 32, generator=gen).to(torch.float16)
    out, _ = host_attention(host, query, view, 32**-0.5, 4)
    ref, _, vals, _ = reference_attention(query, view, 32**-0.5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert (out[0].double() - ref[0]).abs().amax() <= 2 * torch.finfo(
        torch.float16
    ).eps * vals.abs().amax()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_attention_with_centred_keys_and_values(host, dtype):
    """Keys flagged as centred (sign bit of the scale) score with |scale| plus q·centre (the
    k_bias argument), flagged values add their centre (v_centre, rotated); unflagged vectors and
    raw tokens are unchanged."""
    gen = torch.Generator().manual_seed(21)
    b, hq, hkv, d, tc, tr = 2, 6, 2, 64, 300, 12
    view = make_view(b, hkv, d, tc, tr, 3, 2, dtype, 4, gen, lengths=True)
    flags = torch.rand(b, hkv, tc, generator=gen) > 0.3
    bits = view.k_scales.view(torch.int16)
    bits[flags] |= -0x8000
    view.v_scales.view(torch.int16)[torch.rand(b, hkv, tc, generator=gen) > 0.4] |= -0x8000
    view = dataclasses.replace(
        view,
        k_means=(torch.randn(b, hkv, d, generator=gen) * 0.5).to(dtype),
        v_means=(torch.randn(b, hkv, d, generator=gen) * 0.5).to(dtype),
    )
    assert view.centred_keys() is not None and view.centred_values() is not None
    query = torch.randn(b, hq, d, generator=gen).to(dtype)
    out, _ = host_attention(host, query, view, d**-0.5, 4)
    ref, _, vals, _ = reference_attention(query, view, d**-0.5)
    rounding = (ref.to(dtype).double() - ref).abs().amax()
    tol = 2 * rounding + 4 * torch.finfo(torch.float32).eps * vals.abs().amax()
    assert (out.double() - ref).abs().amax() <= tol
    # The centres matter: without either the reference is far from the kernel's output.
    for name in ("k_means", "v_means"):
        plain = dataclasses.replace(view, **{name: torch.zeros_like(getattr(view, name))})
        assert (reference_attention(query, plain, d**-0.5)[0] - ref).abs().amax() > 10 * tol


def test_attention_with_centres_but_no_centred_vector(host, monkeypatch):
    """A layer with centres whose scales carry no sign bit: the centre arguments are passed
    anyway (the launch never scans the scales, which would wait for the device every step) and
    change nothing."""
    gen = torch.Generator().manual_seed(22)
    b, hq, hkv, d, tc, tr = 1, 4, 2, 64, 200, 10
    plain = make_view(b, hkv, d, tc, tr, 3, 3, torch.float32, 2, gen)
    view = dataclasses.replace(
        plain,
        k_means=torch.randn(b, hkv, d, generator=gen),
        v_means=torch.randn(b, hkv, d, generator=gen),
    )
    query = torch.randn(b, hq, d, generator=gen)

    def no_scan(scales):
        raise AssertionError("attention_args scanned the scales for centred flags")

    monkeypatch.setattr(cache_layer, "centred_flags", no_scan)
    call = attention.attention_args(query, view, d**-0.5, sm_count=4)
    assert call.partial["k_bias"] is not None and call.partial["v_centre"] is not None
    monkeypatch.undo()
    out, _ = host_attention(host, query, view, d**-0.5, 4)
    ref, _, vals, _ = reference_attention(query, plain, d**-0.5)
    rounding = (ref.to(torch.float32).double() - ref).abs().amax()
    assert (out.double() - ref).abs().amax() <= 2 * rounding + 4 * torch.finfo(
        torch.float32
    ).eps * vals.abs().amax()
