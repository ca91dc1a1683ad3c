"""Decode attention over a packed layer on the CPU (``cpu_decode_attention``): straight from the
codes, against float64 attention on the dequantised K/V."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama_config
from cuda_host.cases import make_view, reference_attention

from nexusquant import NexusQuantCache
from nexusquant.cache.attention_cpu import cpu_decode_attention
from nexusquant.errors import ShapeError
from nexusquant.gpu.attention import PackedKV


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=0, atol=tol * max(scale, 1.0))


@pytest.mark.parametrize(
    ("b", "hkv", "hq", "d", "tc", "tr", "bits", "dtype", "sinks"),
    [
        (1, 3, 9, 64, 300, 20, (3, 2), torch.float32, 4),  # SmolLM2's GQA
        (2, 2, 2, 128, 77, 9, (4, 4), torch.float32, 0),  # MHA
        (3, 1, 8, 80, 130, 5, (2, 2), torch.float16, 2),  # MQA
        (2, 2, 4, 96, 64, 12, (2, 3), torch.bfloat16, 3),
        (2, 1, 2, 256, 17, 3, (3, 4), torch.float32, 1),
    ],
)
@pytest.mark.parametrize("lengths", [False, True])
def test_matches_attention_on_dequantised_kv(b, hkv, hq, d, tc, tr, bits, dtype, sinks, lengths):
    gen = torch.Generator().manual_seed(b * 100 + d + tc)
    view = make_view(b, hkv, d, tc, tr, *bits, dtype, sinks, gen, lengths=lengths)
    query = torch.randn(b, hq, d, generator=gen).to(dtype)
    scaling = d**-0.5
    got = cpu_decode_attention(query, view, scaling)
    want = reference_attention(query, view, scaling)[0]
    assert got.dtype == dtype and got.shape == (b, hq, d)
    _close(got, want, dtype)
    # Masks on top of the lengths; a row with every slot masked gives zeros.
    coded_mask = torch.rand(b, tc, generator=gen) > 0.3
    raw_mask = torch.rand(b, tr, generator=gen) > 0.3
    coded_mask[-1] = False
    raw_mask[-1] = False
    got = cpu_decode_attention(query, view, scaling, coded_mask=coded_mask, raw_mask=raw_mask.to(torch.uint8))
    want = reference_attention(query, view, scaling, coded_mask, raw_mask)[0]
    _close(got, want, dtype)
    assert (got[-1] == 0).all()


def test_centred_keys_and_values_of_a_cache_layer():
    """A real layer whose keys and values share a large component: the key centre enters the
    scores (q·centre), the value centre the sums, exactly as in the dequantised K/V."""
    cfg = make_tiny_llama_config(head_dim=64, num_kv_heads=2, layers=1)
    gen = torch.Generator().manual_seed(4)
    k = torch.randn(2, 2, 150, 64, generator=gen) + torch.linspace(-2, 2, 64)
    v = torch.randn(2, 2, 150, 64, generator=gen) + torch.linspace(1, -1, 64)
    cache = NexusQuantCache(cfg, 3, 2, sink_tokens=4, window=16, block=16)
    cache.update(k[:1].expand(2, -1, -1, -1).contiguous(), v[:1].expand(2, -1, -1, -1).contiguous(), 0)
    view = PackedKV.from_layer_view(cache.layers[0].packed_view())
    centred = view.centred_keys()
    assert centred is not None and centred[:, :, : int(view.lengths[0, 1])].float().mean() > 0.9
    assert view.centred_values() is not None
    query = torch.randn(2, 6, 64, generator=gen)
    got = cpu_decode_attention(query, view, 0.125)
    keys, values = view.dequantize()  # (B, Hkv, L, d) in sequence order, centres added back
    keys = keys.double().repeat_interleave(3, 1)
    values = values.double().repeat_interleave(3, 1)
    p = torch.softmax(torch.einsum("bhd,bhtd->bht", query.double(), keys) * 0.125, -1)
    want = torch.einsum("bht,bhtd->bhd", p, values)
    _close(got, want, torch.float32)
    # Without either centre the result is visibly different: the test can fail.
    for name in ("k_means", "v_means"):
        stripped = PackedKV(**{**view.__dict__, name: torch.zeros_like(getattr(view, name))})
        assert (cpu_decode_attention(query, stripped, 0.125) - want).abs().max() > 1e-3


def test_nan_and_errors():
    gen = torch.Generator().manual_seed(1)
    view = make_view(2, 1, 64, 40, 6, 3, 2, torch.float32, 2, gen)
    view.k_scales[0, 0, 5] = math.nan
    out = cpu_decode_attention(torch.randn(2, 2, 64), view, 0.125)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    with pytest.raises(ShapeError, match="query"):
        cpu_decode_attention(torch.randn(2, 2, 32), view, 0.125)
    with pytest.raises(ShapeError, match="multiple of the KV heads"):
        cpu_decode_attention(torch.randn(2, 3, 64), make_view(2, 2, 64, 4, 2, 2, 2, torch.float32, 0, gen), 0.1)
