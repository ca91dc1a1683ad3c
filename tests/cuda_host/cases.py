"""Test data and float64 references shared by tests/test_cuda_host.py and tests/test_gpu.py."""

from __future__ import annotations

import dataclasses
import math

import torch

from nexusquant import reference
from nexusquant.gpu.attention import PackedKV


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, except that NaN only has to meet NaN (payloads are not portable)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = torch.isnan(a), torch.isnan(b)
    if not torch.equal(na, nb):
        return False
    ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return torch.equal(a[~na].view(ints[a.dtype]), b[~nb].view(ints[b.dtype]))


def rows(d: int, dtype: torch.dtype, seed: int, n: int = 37) -> torch.Tensor:
    """Gaussian rows over 8 decades, plus NaN, ±Inf, zero, spike, constant and saturating rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x *= torch.logspace(-3, 4 if dtype == torch.float16 else 5, n, dtype=torch.float64)[:, None]
    x[1, d // 2] = math.nan
    x[2, 0] = math.inf
    x[3, d - 1] = -math.inf
    x[4] = 0
    x[5] = 0
    x[5, 3] = 7.0  # a single spike: flat after the rotation
    x[6] = 0.5  # constant
    if dtype != torch.float16:
        x[7] *= 1e7  # a scale beyond fp16: saturates at 65504
        x[8] = 1e-30  # every square underflows: ss == 0
    if dtype == torch.float32:
        x[9] = 1e20  # finite, but the squared norm overflows: NaN scale
    return x.to(dtype)


def random_scales(n: int, gen: torch.Generator) -> torch.Tensor:
    s = (torch.rand(n, generator=gen) * 4 + 0.01) * torch.logspace(-6, 4, n)
    s = s.to(torch.float16)
    s[:6] = torch.tensor([0.0, -0.0, math.nan, math.inf, 6e-8, 65504.0], dtype=torch.float16)
    s[6::5] = -s[6::5]
    return s


def make_view(b, hkv, d, tc, tr, k_bits, v_bits, dtype, sinks, gen, *, lengths=False) -> PackedKV:
    """Random codes (every code word decodes to a codebook point) and moderate scales; with
    ``lengths``, random sink/coded/window counts per row (row 0 full) and two padding positions."""

    def codes(bits):
        return torch.randint(0, 256, (b, hkv, tc, d * bits // 8), generator=gen, dtype=torch.uint8)

    def scales():
        return (torch.rand(b, hkv, tc, generator=gen) * 0.2 + 0.05).to(torch.float16)

    sinks = min(sinks, tr)
    counts = None
    if lengths:
        counts = torch.stack(
            [torch.randint(0, n + 1, (b,), generator=gen) for n in (sinks, tc, tr - sinks)], 1
        )
        counts[0] = torch.tensor([sinks, tc, tr - sinks])
        counts = counts.to(torch.int32)
    return PackedKV(
        k_codes=codes(k_bits),
        k_scales=scales(),
        v_codes=codes(v_bits),
        v_scales=scales(),
        k_bits=k_bits,
        v_bits=v_bits,
        k_seed=int(torch.randint(0, 2**62, (1,), generator=gen)),
        v_seed=2**64 - 1 - b * tc,
        raw_k=torch.randn(b, hkv, tr, d, generator=gen).to(dtype),
        raw_v=torch.randn(b, hkv, tr, d, generator=gen).to(dtype),
        sink_slots=sinks,
        lengths=counts,
        seq_length=tc + tr + 2 if lengths else None,
    )


def reference_attention(query, view, scaling, coded_mask=None, raw_mask=None):
    """float64 attention on the dequantised K/V (reference.decode), GQA by repetition.

    Returns (output (B, Hq, d), keys and values (B, Hq, Tc + Tr, d), keep (B, Tc + Tr)); token
    order: coded, then raw."""
    b, hq, d = query.shape
    hkv, tc, tr = view.raw_k.shape[1], view.coded_tokens, view.raw_tokens

    def dequant(codes, scales, bits, seed):
        flat = reference.decode(
            codes.reshape(-1, codes.shape[-1]),
            scales.reshape(-1).view(torch.int16),
            bits,
            seed,
            d,
            torch.float32,
        )
        return flat.reshape(b, hkv, tc, d).double()

    k_scales, centred = view.k_scales, view.centred_keys()
    if centred is not None:  # centred keys: |scale|, then the row's centre added back
        k_scales = k_scales.view(torch.int16).bitwise_and(0x7FFF).view(torch.float16)
    coded_keys = dequant(view.k_codes, k_scales, view.k_bits, view.k_seed)
    if centred is not None:
        coded_keys = coded_keys + centred[..., None].double() * view.k_means.double()[:, :, None]
    keys = torch.cat((coded_keys, view.raw_k.double()), 2)
    v_scales, v_centred = view.v_scales, view.centred_values()
    if v_centred is not None:  # centred values likewise
        v_scales = v_scales.view(torch.int16).bitwise_and(0x7FFF).view(torch.float16)
    coded_vals = dequant(view.v_codes, v_scales, view.v_bits, view.v_seed)
    if v_centred is not None:
        coded_vals = coded_vals + v_centred[..., None].double() * view.v_means.double()[:, :, None]
    vals = torch.cat((coded_vals, view.raw_v.double()), 2)
    keep = torch.ones(b, tc + tr, dtype=torch.bool)
    if view.lengths is not None:
        s, c, w = view.lengths.long().unbind(1)
        slot = torch.arange(tr)[None]
        keep[:, :tc] &= torch.arange(tc)[None] < c[:, None]
        keep[:, tc:] &= (slot < s[:, None]) | (
            (slot >= view.sink_slots) & (slot < view.sink_slots + w[:, None])
        )
    if coded_mask is not None:
        keep[:, :tc] &= coded_mask.bool()
    if raw_mask is not None:
        keep[:, tc:] &= raw_mask.bool()
    group = hq // hkv
    keys = keys.repeat_interleave(group, dim=1)
    vals = vals.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", query.double(), keys) * scaling
    scores = scores.masked_fill(~keep[:, None, :], -math.inf)
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows without any token: zeros
    return torch.einsum("bht,bhtd->bhd", p, vals), keys, vals, keep


def to_device(view: PackedKV, device) -> PackedKV:
    """The same PackedKV with every tensor on ``device``."""
    moved = {
        f.name: getattr(view, f.name).to(device)
        for f in dataclasses.fields(view)
        if isinstance(getattr(view, f.name), torch.Tensor)
    }
    return dataclasses.replace(view, **moved)
