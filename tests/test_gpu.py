"""nexusquant.gpu: the CUDA kernels on a device (marker ``gpu``) and the Python API around them.

Tests marked ``gpu`` need CuPy and a CUDA device; elsewhere they skip with the reason that
``nexusquant.gpu.diagnose()`` gives. The unmarked tests run everywhere: lazy import, error
types, argument checking, and the PackedKV / mask plumbing of the transformers integration.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nexusquant as nq
from cuda_host.cases import (
    make_view,
    random_scales,
    reference_attention,
    rows,
    same_bits,
    to_device,
)
from nexusquant import errors, gpu, reference
from nexusquant.gpu import attention, loader


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    report = gpu.diagnose(compile_kernels=False)
    return None if report["available"] else "; ".join(report["errors"])


SKIP_REASON = _skip_reason()


def on_gpu(test):
    """Mark ``gpu``; skip with the concrete reason when the GPU path is unavailable."""
    return pytest.mark.gpu(
        pytest.mark.skipif(SKIP_REASON is not None, reason=f"GPU path unavailable: {SKIP_REASON}")(
            test
        )
    )


HEAD_DIMS = [8, 64, 80, 96, 128, 256, 512, 1024]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _core_available() -> bool:
    try:
        import nexusquant._core  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# on a GPU


@on_gpu
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_encode_codes_equal_reference_and_core(d, bits):
    for k, dtype in enumerate(DTYPES):
        x = rows(d, dtype, seed=d * 100 + bits * 10 + k, n=131)
        seed = 0xDEADBEEF12345678 + d + bits + k
        # Three candidates, the KV cache's setting (the default of one is tested below).
        codes, scales = nq.codec.encode(x.cuda(), bits, seed, candidates=3)
        ref_codes, ref_scales = reference.encode(x, bits, seed, 3)
        assert torch.equal(codes.cpu(), ref_codes), f"codes differ from the reference, {dtype}"
        assert torch.equal(scales.cpu().view(torch.int16), ref_scales), f"scales differ, {dtype}"
        if _core_available():
            q = nq.quantize(x, bits, seed=seed, candidates=3)
            assert torch.equal(codes.cpu(), q.codes), dtype
            # bit patterns: the NaN rows' scales are NaN, and NaN != NaN as a float
            assert torch.equal(scales.cpu().view(torch.int16), q.scales.view(torch.int16)), dtype


@on_gpu
@pytest.mark.parametrize("candidates", [1, 2])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_encode_with_fewer_candidates_equals_reference(bits, candidates):
    x = rows(128, torch.float16, seed=bits * 7 + candidates, n=131)
    codes, scales = nq.codec.encode(x.cuda(), bits, 11, candidates=candidates)
    ref_codes, ref_scales = reference.encode(x, bits, 11, candidates)
    assert torch.equal(codes.cpu(), ref_codes)
    assert torch.equal(scales.cpu().view(torch.int16), ref_scales)


@on_gpu
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_decode_is_bit_exact(d, bits):
    gen = torch.Generator().manual_seed(d + bits)
    n = 517
    codes = torch.randint(0, 256, (n, d * bits // 8), generator=gen, dtype=torch.uint8)
    scales = random_scales(n, gen)
    for dtype in DTYPES:
        out = nq.codec.decode(
            codes.cuda(), scales.cuda(), bits=bits, seed=d, head_dim=d, dtype=dtype
        )
        ref = reference.decode(codes, scales.view(torch.int16), bits, d, d, dtype)
        assert same_bits(out.cpu(), ref), dtype


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_rows_take_the_element_path_with_the_same_bytes(dtype):
    """Rows that start 1 element past a 16-byte boundary: the kernels' 16-byte loads and stores
    fall back to element accesses, with the same codes and the same decoded bits."""
    n, d, bits, seed = 67, 128, 3, 5
    x = rows(d, dtype, seed=9, n=n)
    buf = torch.empty(n * d + 1, dtype=dtype, device="cuda")
    unaligned = buf[1:].view(n, d)
    unaligned.copy_(x.cuda())
    assert unaligned.data_ptr() % 16 != 0
    codes = torch.empty(n, d * bits // 8, dtype=torch.uint8, device="cuda")
    scales = torch.empty(n, dtype=torch.float16, device="cuda")
    gpu.encode(unaligned, codes, scales, bits=bits, seed=seed)
    ref_codes, ref_scales = reference.encode(x, bits, seed)
    assert torch.equal(codes.cpu(), ref_codes)
    assert torch.equal(scales.cpu().view(torch.int16), ref_scales)
    out = torch.empty(n * d + 1, dtype=dtype, device="cuda")[1:].view(n, d)
    gpu.decode(codes, scales, out, bits=bits, seed=seed)
    assert same_bits(out.cpu(), reference.decode(ref_codes, ref_scales, bits, seed, d, dtype))


@on_gpu
def test_quantize_on_cuda_tensors_of_any_shape_and_stride():
    x = torch.randn(3, 40, 5, 128, dtype=torch.float16).transpose(1, 2)  # not contiguous
    q = nq.quantize(x.cuda(), 3, seed=7)
    ref_codes, ref_scales = reference.encode(x.reshape(-1, 128), 3, 7)
    assert q.codes.is_cuda and q.codes.shape == (3, 5, 40, 48)
    assert torch.equal(q.codes.cpu().reshape(-1, 48), ref_codes)
    assert torch.equal(q.scales.cpu().reshape(-1).view(torch.int16), ref_scales)
    y = nq.dequantize(q)
    assert y.is_cuda and y.dtype == torch.float16 and y.shape == x.shape
    ref = reference.decode(ref_codes, ref_scales, 3, 7, 128, torch.float16).reshape(x.shape)
    assert same_bits(y.cpu(), ref)


@on_gpu
def test_kernels_run_on_torchs_current_stream():
    side = torch.cuda.Stream()
    x = torch.randn(4096, 128, device="cuda")
    torch.cuda.current_stream().synchronize()
    with torch.cuda.stream(side):
        y = x * 3  # queued on the side stream; the encode must run after it
        codes, scales = nq.codec.encode(y, 2, 1)
    side.synchronize()
    ref_codes, ref_scales = reference.encode(x.cpu() * 3, 2, 1)
    assert torch.equal(codes.cpu(), ref_codes) and torch.equal(
        scales.cpu().view(torch.int16), ref_scales
    )


GPU_ATTENTION_CASES = [
    # b, hq, hkv, d, tc, tr, sinks, k_bits, v_bits, dtype, lengths, masks
    (2, 32, 8, 128, 5000, 132, 4, 4, 2, torch.float16, True, False),  # Llama-style GQA, split-K
    (1, 32, 8, 128, 3000, 64, 4, 3, 3, torch.bfloat16, False, True),
    (3, 14, 2, 64, 1500, 40, 4, 2, 2, torch.float32, True, True),  # 7 heads per KV head
    (2, 8, 1, 80, 900, 17, 0, 4, 4, torch.float16, False, False),  # MQA, non-power-of-two d
    (1, 16, 4, 256, 700, 33, 2, 3, 2, torch.bfloat16, False, False),
    (1, 8, 2, 512, 400, 9, 1, 2, 2, torch.float16, True, False),
    (1, 4, 1, 1024, 300, 5, 1, 4, 8, torch.float32, False, False),
    (2, 8, 2, 128, 0, 200, 4, 3, 3, torch.float16, False, False),  # no coded tokens yet
    (2, 8, 2, 128, 600, 0, 0, 3, 3, torch.float16, False, False),  # no raw tokens
]


@on_gpu
@pytest.mark.parametrize(
    "case", GPU_ATTENTION_CASES, ids=lambda c: f"d{c[3]}-hq{c[1]}-hkv{c[2]}-tc{c[4]}-{c[9]}"
)
def test_fused_attention_within_twice_the_same_dtype_error(case):
    """flash-attention's rule: error vs float64 <= 2x that of SDPA computed in the same dtype on
    the dequantised K/V (plus a few float32 ulps for the kernel's binary32 accumulation)."""
    b, hq, hkv, d, tc, tr, sinks, kb, vb, dtype, lengths, use_masks = case
    gen = torch.Generator().manual_seed(d * 7 + tc)
    view = make_view(b, hkv, d, tc, tr, kb, vb, dtype, sinks, gen, lengths=lengths)
    query = torch.randn(b, hq, d, generator=gen).to(dtype)
    masks = {}
    if use_masks:
        masks = {
            "coded_mask": torch.rand(b, tc, generator=gen) > 0.2,
            "raw_mask": torch.rand(b, tr, generator=gen) > 0.2,
        }
    scaling = d**-0.5
    ref, keys, values, keep = reference_attention(
        query, view, scaling, masks.get("coded_mask"), masks.get("raw_mask")
    )

    out = gpu.fused_decode_attention(
        query.cuda(), to_device(view, "cuda"), scaling, **{k: v.cuda() for k, v in masks.items()}
    )
    assert out.dtype == dtype and out.shape == (b, hq, d)

    base = torch.nn.functional.scaled_dot_product_attention(
        query.cuda()[:, :, None],
        keys.to(dtype).cuda(),
        values.to(dtype).cuda(),
        attn_mask=keep[:, None, None, :].cuda(),
        scale=scaling,
    )[:, :, 0]
    base = base.nan_to_num(0.0)  # rows without any token
    err = (out.double().cpu() - ref).abs().amax()
    err_base = (base.double().cpu() - ref).abs().amax()
    floor = 4 * torch.finfo(torch.float32).eps * values.abs().amax()
    assert err <= 2 * err_base + floor, f"error {err:.3g} vs same-dtype SDPA {err_base:.3g}"


@on_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_attention_with_centred_keys_and_values(dtype):
    """Centred keys and values (sign bit of the scale, the row's centres in k_means / v_means) on
    the device against the float64 reference (tests/test_cuda_host.py on the CPU)."""
    gen = torch.Generator().manual_seed(33)
    b, hq, hkv, d, tc, tr = 2, 8, 2, 128, 900, 20
    view = make_view(b, hkv, d, tc, tr, 3, 2, dtype, 4, gen, lengths=True)
    view.k_scales.view(torch.int16)[torch.rand(b, hkv, tc, generator=gen) > 0.3] |= -0x8000
    view.v_scales.view(torch.int16)[torch.rand(b, hkv, tc, generator=gen) > 0.4] |= -0x8000
    view = dataclasses.replace(
        view,
        k_means=(torch.randn(b, hkv, d, generator=gen) * 0.5).to(dtype),
        v_means=(torch.randn(b, hkv, d, generator=gen) * 0.5).to(dtype),
    )
    query = torch.randn(b, hq, d, generator=gen).to(dtype)
    ref, _, values, _ = reference_attention(query, view, d**-0.5)
    out = gpu.fused_decode_attention(query.cuda(), to_device(view, "cuda"), d**-0.5)
    rounding = (ref.to(dtype).double() - ref).abs().amax()
    floor = 4 * torch.finfo(torch.float32).eps * values.abs().amax()
    assert (out.double().cpu() - ref).abs().amax() <= 2 * rounding + floor


class _Attn(torch.nn.Module):
    """What transformers' attention functions read from the calling module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@on_gpu
def test_attention_function_runs_fused_kernel_on_decode_steps(monkeypatch):
    pytest.importorskip("transformers")
    gen = torch.Generator().manual_seed(3)
    view = to_device(
        make_view(2, 2, 64, 700, 36, 3, 2, torch.float16, 4, gen, lengths=True), "cuda"
    )
    calls = []
    fused = attention.fused_decode_attention
    monkeypatch.setattr(
        attention, "fused_decode_attention", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    key = attention.attach_packed(view.raw_k, view)
    module = _Attn(groups=4)
    query = torch.randn(2, 8, 1, 64, generator=gen).to(torch.float16).cuda()
    keep = view.valid_positions()[:, None, None, :].clone()
    keep[0, ..., :10] = False  # mask the sinks and the first coded tokens of row 0
    out, _ = attention.nexusquant_attention(module, query, key, view.raw_v, keep, scaling=0.125)
    assert calls == [1] and out.shape == (2, 1, 8, 64)

    keys, values = view.dequantize()
    ref = torch.nn.functional.scaled_dot_product_attention(
        query.double(),
        keys.double().repeat_interleave(4, 1),
        values.double().repeat_interleave(4, 1),
        attn_mask=keep,
        scale=0.125,
    ).transpose(1, 2)
    err = (out.double() - ref).abs().amax()
    assert err <= 4 * torch.finfo(torch.float16).eps * values.abs().amax()

    prefill = torch.randn(2, 8, 5, 64, generator=gen).to(torch.float16).cuda()
    out, _ = attention.nexusquant_attention(module, prefill, key, view.raw_v, None, scaling=0.125)
    assert calls == [1] and out.shape == (2, 5, 8, 64)  # prefill: SDPA on dequantised K/V


@on_gpu
def test_cache_decodes_through_the_fused_kernel_in_generate(monkeypatch):
    """NexusQuantCache + attn_implementation="nexusquant" on CUDA: every decode step runs the
    fused kernel on the handed-over PackedKV (no decoded K/V), and the logits stay within fp16
    noise of the dequantize path's."""
    from conftest import make_tiny_llama, random_prompt

    from nexusquant._hf import cache_kwarg
    from nexusquant.cache import NexusQuantLayer

    model = make_tiny_llama(layers=2, dtype=torch.float16).cuda()
    model.set_attn_implementation(gpu.register_attention())
    prompt = random_prompt(300, seed=5).cuda()
    settings = dict(key_bits=3, value_bits=2, sink_tokens=4, window=32, block=16)
    calls, decoded = [], []
    fused = attention.fused_decode_attention
    monkeypatch.setattr(
        attention, "fused_decode_attention", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    materialise = NexusQuantLayer._materialise
    monkeypatch.setattr(
        NexusQuantLayer, "_materialise", lambda *a, **k: decoded.append(1) or materialise(*a, **k)
    )
    caches = {m: nq.NexusQuantCache(model.config, attention=m, **settings) for m in ("fused", "dequantize")}
    logits = {}
    for mode, cache in caches.items():
        calls.clear(), decoded.clear()
        kw = {cache_kwarg(model): cache, "use_cache": True}
        out = model(prompt, **kw)
        steps = [out.logits[:, -1].float()]
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(20):  # the same tokens for both caches: only the attention path differs
            out = model(token, **kw)
            steps.append(out.logits[:, -1].float())
            token = (token * 7 + 11) % model.config.vocab_size
        logits[mode] = torch.stack(steps)
        if mode == "fused":
            assert len(calls) == 2 * 20 and len(decoded) == 2 * 2  # decode: fused; prefill: SDPA
        else:
            assert calls == [] and len(decoded) == 2 * 2 * 21
    scale = logits["dequantize"].abs().amax()
    assert (logits["fused"] - logits["dequantize"]).abs().amax() <= 2e-2 * scale


# --------------------------------------------------------------------------------------------
# everywhere


def _gpu_check():
    """benches/gpu_check.py as a module (it imports without a GPU)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_check", Path(__file__).parents[1] / "benches" / "gpu_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_every_file_that_holds_gpu_tests():
    """benches/gpu_check.py names the files it runs on the device; a new GPU test elsewhere
    must not be left out of the only run that exercises it."""
    tests = Path(__file__).parent
    holders = {
        f"tests/{path.name}"
        for path in tests.glob("test_*.py")
        if re.search(r"^@(pytest\.mark\.gpu|on_gpu)\b", path.read_text(), re.M)
    }
    assert set(_gpu_check().GPU_TEST_FILES) == holders


def test_gpu_check_builds_a_valid_layer_and_launch():
    """The benchmark's synthetic layer passes the same validation the kernel launch does (its
    timings run only on a GPU; a stale field name would otherwise surface only there)."""
    view = _gpu_check().packed_layer(2, 300, 2, 128, 3, 132, device="cpu")
    view.validate()
    assert (view.coded_tokens, view.raw_tokens, view.sink_slots, view.length) == (168, 132, 4, 300)
    query = torch.randn(2, 8, 128, dtype=torch.float16)
    call = attention.attention_args(query, view, 128**-0.5, sm_count=132)
    assert call.out.shape == query.shape


def test_importing_the_package_does_not_import_cupy():
    code = (
        "import sys, nexusquant, nexusquant.gpu; assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(nq.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_missing_cupy_raises_gpu_unavailable_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(errors.GPUUnavailableError, match=r"pip install 'nexusquant-kv\[cuda\]'"):
        loader.cupy_module()
    assert gpu.available() is False
    report = gpu.diagnose()
    assert report["available"] is False and "CuPy" in report["errors"][0]


def test_gpu_entry_points_reject_cpu_tensors():
    x = torch.randn(4, 64)
    codes = torch.empty(4, 16, dtype=torch.uint8)
    scales = torch.empty(4, dtype=torch.float16)
    with pytest.raises(errors.DeviceError, match="CUDA"):
        gpu.encode(x, codes, scales, bits=2, seed=0)
    with pytest.raises(errors.DeviceError, match="CUDA"):
        gpu.decode(codes, scales, x, bits=2, seed=0)
    view = make_view(1, 1, 64, 4, 2, 2, 2, torch.float32, 0, torch.Generator().manual_seed(0))
    with pytest.raises(errors.DeviceError, match="CUDA"):
        gpu.fused_decode_attention(torch.randn(1, 2, 64), view, 0.125)


def test_kernel_arguments_are_checked_against_the_table():
    x = torch.randn(4, 64)
    codes = torch.empty(4, 16, dtype=torch.uint8)
    scales = torch.empty(4, dtype=torch.float16)
    values = gpu.ops.encode_args(x, codes, scales, 2, 5)
    args = loader.kernel_args("encode", torch.float32, values, x.device)
    assert [type(a).__name__ for a in args] == [
        "uint64",
        "uint64",
        "uint64",
        "int64",
        "int32",
        "int32",
        "uint64",
        "int32",
    ]
    # candidates: the codec's default (one) unless asked.
    assert int(args[0]) == x.data_ptr() and int(args[6]) == 5 and int(args[7]) == 1
    args = loader.kernel_args("encode", torch.float32, gpu.ops.encode_args(x, codes, scales, 2, 5, 3), x.device)
    assert int(args[7]) == 3
    with pytest.raises(errors.ShapeError, match="x must be torch.float16"):
        loader.kernel_args("encode", torch.float16, values, x.device)
    with pytest.raises(errors.ShapeError, match="do not match the kernel table"):
        loader.kernel_args("encode", torch.float32, {**values, "extra": 1}, x.device)
    with pytest.raises(errors.ShapeError, match="codes must be a contiguous uint8"):
        gpu.ops.encode_args(x, codes[:, :8], scales, 2, 5)
    with pytest.raises(errors.BitsError):
        gpu.ops.encode_args(x, codes, scales, 9, 5)
    view = make_view(1, 1, 64, 4, 2, 2, 2, torch.float32, 0, torch.Generator().manual_seed(0))
    call = attention.attention_args(torch.randn(1, 2, 64), view, 0.125, sm_count=4)
    args = loader.kernel_args("attn_partial", torch.float32, call.partial, torch.device("cpu"))
    assert int(args[5]) == 0 and int(args[6]) == 0  # no lengths, no mask: null pointers


def test_rotated_value_centres_are_reused_until_the_centres_change(monkeypatch):
    """R_v(value centres) is computed once per centres tensor and version: a decode step reuses
    it, an in-place write to the centres or another seed recomputes it, a freed tensor's entry
    goes away."""
    gen = torch.Generator().manual_seed(4)
    view = make_view(2, 2, 64, 40, 8, 3, 3, torch.float32, 2, gen)
    view = dataclasses.replace(
        view, k_means=torch.randn(2, 2, 64, generator=gen), v_means=torch.randn(2, 2, 64, generator=gen)
    )
    query = torch.randn(2, 4, 64, generator=gen)
    calls = []
    real = reference.rotate
    monkeypatch.setattr(reference, "rotate", lambda v, seed: calls.append(seed) or real(v, seed))

    def centre(v):
        return attention.attention_args(query, v, 0.125, sm_count=4).partial["v_centre"]

    first = centre(view)
    assert torch.equal(first, real(view.v_means.reshape(4, 64), view.v_seed).reshape(2, 2, 64))
    assert centre(view) is first and len(calls) == 1
    view.v_means[1, 0, 3] += 1.0  # a row sets its centres: in place, version bumped
    second = centre(view)
    assert len(calls) == 2
    assert torch.equal(second, real(view.v_means.reshape(4, 64), view.v_seed).reshape(2, 2, 64))
    reseeded = centre(dataclasses.replace(view, v_seed=view.v_seed + 1))
    assert len(calls) == 3 and not torch.equal(reseeded, second)
    key = id(view.v_means)
    assert key in attention._ROTATED_CENTRES
    del view, first, second, reseeded
    gc.collect()
    assert key not in attention._ROTATED_CENTRES


def test_packed_kv_validation_names_the_field():
    view = make_view(1, 2, 64, 4, 2, 2, 2, torch.float16, 0, torch.Generator().manual_seed(0))
    view.validate()
    with pytest.raises(errors.ShapeError, match="PackedKV.v_scales"):
        dataclasses.replace(view, v_scales=view.v_scales.float()).validate()
    with pytest.raises(errors.ShapeError, match=r"PackedKV.k_codes.*\(strided\)"):
        dataclasses.replace(
            view, k_codes=view.k_codes.transpose(1, 2).contiguous().transpose(1, 2)
        ).validate()
    with pytest.raises(errors.ShapeError, match="sink_slots"):
        dataclasses.replace(view, sink_slots=3).validate()
    with pytest.raises(errors.ShapeError, match="lengths"):
        dataclasses.replace(view, lengths=torch.zeros(1, 3, dtype=torch.int64)).validate()
    with pytest.raises(errors.ShapeError, match="multiple of the KV heads"):
        attention.attention_args(torch.randn(1, 3, 64).half(), view, 0.1, sm_count=1)


def _layout_view() -> attention.PackedKV:
    """3 code slots, 2 sink + 3 window slots; row 0 holds (2, 3, 3) tokens, row 1 (1, 2, 1),
    right-aligned to L = 9: row 0 from position 1, row 1 from position 5."""
    view = make_view(2, 1, 16, 3, 5, 3, 2, torch.float32, 2, torch.Generator().manual_seed(1))
    return dataclasses.replace(
        view, lengths=torch.tensor([[2, 3, 3], [1, 2, 1]], dtype=torch.int32), seq_length=9
    )


def test_segment_masks_follow_the_cache_layout():
    view = _layout_view()
    keep = torch.rand(2, 9, generator=torch.Generator().manual_seed(2)) > 0.5
    coded, raw = attention.segment_masks(view, keep[:, None, None, :])
    assert coded[0].tolist() == keep[0, 3:6].tolist()
    assert (
        raw[0, :2].tolist() == keep[0, 1:3].tolist()
        and raw[0, 2:].tolist() == keep[0, 6:9].tolist()
    )
    assert coded[1, :2].tolist() == keep[1, 6:8].tolist()
    assert raw[1, 0] == keep[1, 5] and raw[1, 2] == keep[1, 8]
    assert attention.segment_masks(view, None) == (None, None)
    assert (
        attention.segment_masks(view, keep[:, None, None, :].float()) is None
    )  # additive: fall back
    assert (
        attention.segment_masks(view, keep[:, None, None, :8]) is None
    )  # another length: fall back


def test_dequantize_and_fallback_mask_use_sequence_order():
    view = _layout_view()
    keys, values = view.dequantize(backend="reference")
    coded = reference.decode(
        view.k_codes.reshape(-1, 6),
        view.k_scales.reshape(-1).view(torch.int16),
        3,
        view.k_seed,
        16,
        torch.float32,
    ).reshape(2, 1, 3, 16)
    raw = view.raw_k
    assert keys.shape == values.shape == (2, 1, 9, 16)
    assert torch.equal(keys[0, :, 1:], torch.cat((raw[0, :, :2], coded[0], raw[0, :, 2:5]), 1))
    assert torch.equal(
        keys[1, :, 5:], torch.cat((raw[1, :, :1], coded[1, :, :2], raw[1, :, 2:3]), 1)
    )
    assert not keys[0, :, :1].any() and not keys[1, :, :5].any()
    valid = view.valid_positions()
    assert valid.tolist() == [[False] + [True] * 8, [False] * 5 + [True] * 4]
    mask = attention._fallback_mask(view, None, 2)  # causal over the last 2 positions, and valid
    assert mask.shape == (2, 1, 2, 9)
    assert mask[0, 0].tolist() == [[False] + [True] * 7 + [False], [False] + [True] * 8]
    assert mask[1, 0, 1].tolist() == valid[1].tolist()
    full = make_view(1, 1, 16, 3, 5, 3, 2, torch.float32, 2, torch.Generator().manual_seed(1))
    assert attention._fallback_mask(full, None, 2) is None  # full rows: transformers' mask as is


def test_packed_kv_from_the_cache_layer_view():
    from nexusquant.cache.layer import PackedLayerView

    v = _layout_view()
    layer = PackedLayerView(
        key_codes=v.k_codes,
        key_scales=v.k_scales,
        value_codes=v.v_codes,
        value_scales=v.v_scales,
        sink_keys=v.raw_k[:, :, :2],
        sink_values=v.raw_v[:, :, :2],
        window_keys=v.raw_k[:, :, 2:],
        window_values=v.raw_v[:, :, 2:],
        lengths=v.lengths,
        key_means=torch.zeros(v.raw_k.shape[0], v.raw_k.shape[1], 16, dtype=v.raw_k.dtype),
        value_means=torch.zeros(v.raw_k.shape[0], v.raw_k.shape[1], 16, dtype=v.raw_k.dtype),
        key_bits=3,
        value_bits=2,
        seed=11,
        head_dim=16,
        value_head_dim=16,
        seq_length=9,
    )
    p = attention.PackedKV.from_layer_view(layer)
    assert p.k_means is layer.key_means and p.centred_keys() is None
    assert p.v_means is layer.value_means and p.centred_values() is None
    p.validate()
    assert (
        torch.equal(p.raw_k, v.raw_k) and torch.equal(p.raw_v, v.raw_v) and p.raw_k.is_contiguous()
    )
    assert (p.sink_slots, p.seq_length, p.k_seed, p.v_seed, p.k_bits, p.v_bits) == (
        2,
        9,
        11,
        11,
        3,
        2,
    )
    assert p.lengths is v.lengths and p.k_codes is v.k_codes
    with pytest.raises(errors.ShapeError, match="equal key and value head dims"):
        attention.PackedKV.from_layer_view(dataclasses.replace(layer, value_head_dim=8))


def test_register_attention_registers_the_function_and_its_mask():
    pytest.importorskip("transformers")
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert gpu.register_attention() == "nexusquant"
    assert AttentionInterface._global_mapping["nexusquant"] is attention.nexusquant_attention
    assert "nexusquant" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def test_attention_function_without_packed_kv_is_sdpa():
    pytest.importorskip("transformers")
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16)
    out, _ = attention.nexusquant_attention(_Attn(2), q, k, v, None, scaling=0.25)
    ref, _ = sdpa_attention_forward(_Attn(2), q, k, v, None, scaling=0.25)
    assert torch.equal(out, ref)
