"""Attention arithmetic on the codes (``codec.attention_scores`` / ``codec.attention_values``):
the Rust core, which never decodes a head-vector, against decode-then-matmul."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nexusquant import _core, codec
from nexusquant.errors import InvalidArgumentError, ShapeError


def _coded(g: int, n: int, d: int, bits: int, seed: int, capacity: int | None = None):
    """``g`` groups of ``n`` coded head-vectors (scales spread over 3 decades) inside buffers of
    ``capacity`` slots filled with junk past ``n``."""
    gen = torch.Generator().manual_seed(g * 1000 + n + d + bits)
    x = torch.randn(g, n, d, generator=gen) * torch.logspace(-1, 1, n)[None, :, None]
    cap = n if capacity is None else capacity
    cb = codec.code_bytes(d, bits)
    codes = torch.randint(0, 256, (g, cap, cb), generator=gen, dtype=torch.uint8)
    scales = torch.full((g, cap), float("nan"), dtype=torch.float16)
    codec.encode_groups(x, codes[:, :n], scales[:, :n], bits=bits, seed=seed)
    return codes, scales


@pytest.mark.parametrize(("head_dim", "bits"), [(64, 2), (64, 3), (128, 4), (80, 3), (96, 2), (256, 4)])
@pytest.mark.parametrize("queries", [1, 3, 8])
def test_core_matches_decode_then_matmul(head_dim, bits, queries) -> None:
    g, n = 4, 203
    codes, scales = _coded(g, n, head_dim, bits, seed=11, capacity=n + 9)
    counts = torch.tensor([n, 0, 1, 150])
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(g, queries, head_dim, generator=gen)
    # The tokens a cache holds are the first slots of its buffers: slices, read in place.
    kc, ks = codes[:, :n], scales[:, :n]
    got = codec.attention_scores(q, kc, ks, counts, bits=bits, seed=11)
    want = codec.attention_scores(q, kc, ks, counts, bits=bits, seed=11, backend="reference")
    assert got.shape == (g, n, queries)
    valid = torch.arange(n)[None, :] < counts[:, None]
    assert torch.isneginf(got[~valid]).all() and torch.isneginf(want[~valid]).all()
    scale = want[valid].abs().max()
    torch.testing.assert_close(got[valid], want[valid], rtol=0, atol=float(scale) * 1e-5)

    w = torch.softmax(torch.randn(g, n, queries, generator=gen), dim=1)
    got = codec.attention_values(kc, ks, w, counts, bits=bits, seed=11)
    want = codec.attention_values(kc, ks, w, counts, bits=bits, seed=11, backend="reference")
    assert got.shape == (g, queries, head_dim)
    assert (got[1] == 0).all()  # no tokens: nothing summed
    torch.testing.assert_close(got, want, rtol=0, atol=float(want.abs().max()) * 1e-5)


def test_results_do_not_depend_on_threads() -> None:
    codes, scales = _coded(3, 3000, 64, 3, seed=2)
    counts = torch.tensor([3000, 2999, 1234])
    q = torch.randn(3, 3, 64)
    w = torch.rand(3, 3000, 3)
    one = codec.attention_scores(q, codes, scales, counts, bits=3, seed=2, threads=1)
    two = codec.attention_scores(q, codes, scales, counts, bits=3, seed=2, threads=2)
    assert torch.equal(one, two)  # each score is one task's sum, whatever the split
    a = codec.attention_values(codes, scales, w, counts, bits=3, seed=2, threads=2)
    b = codec.attention_values(codes, scales, w, counts, bits=3, seed=2, threads=2)
    assert torch.equal(a, b)  # partial sums are added in a fixed order
    c = codec.attention_values(codes, scales, w, counts, bits=3, seed=2, threads=1)
    torch.testing.assert_close(a, c, rtol=0, atol=float(c.abs().max()) * 3e-5)


def test_nan_scales_poison_what_attends_to_them() -> None:
    codes, scales = _coded(2, 30, 64, 2, seed=0)
    scales[0, 7] = float("nan")
    counts = torch.tensor([30, 30])
    s = codec.attention_scores(torch.randn(2, 2, 64), codes, scales, counts, bits=2, seed=0)
    assert torch.isnan(s[0, 7]).all() and not torch.isnan(s[0, :7]).any() and not torch.isnan(s[1]).any()
    v = codec.attention_values(codes, scales, torch.rand(2, 30, 2), counts, bits=2, seed=0)
    assert torch.isnan(v[0]).all() and torch.isfinite(v[1]).all()
    # The slot is not read once it is past the group's count.
    v = codec.attention_values(codes, scales, torch.rand(2, 30, 2), torch.tensor([7, 30]), bits=2, seed=0)
    assert torch.isfinite(v).all()


def test_errors_name_the_argument() -> None:
    codes, scales = _coded(2, 10, 64, 3, seed=0)
    q = torch.randn(2, 3, 64)
    counts = torch.tensor([10, 10])
    with pytest.raises(ShapeError, match="queries"):
        codec.attention_scores(q.double(), codes, scales, counts, bits=3, seed=0)
    with pytest.raises(ShapeError, match="codes"):
        codec.attention_scores(q, codes[:, :, :5], scales, counts, bits=3, seed=0)
    with pytest.raises(ShapeError, match="scales"):
        codec.attention_scores(q, codes, scales.float(), counts, bits=3, seed=0)
    with pytest.raises(ShapeError, match="counts"):
        codec.attention_scores(q, codes, scales, torch.tensor([10.0, 1.0]), bits=3, seed=0)
    with pytest.raises(InvalidArgumentError, match="counts"):
        codec.attention_scores(q, codes, scales, torch.tensor([11, 0]), bits=3, seed=0)
    with pytest.raises(ShapeError, match="weights"):
        codec.attention_values(codes, scales, torch.rand(2, 10, 3).double(), counts, bits=3, seed=0)
    with pytest.raises(ShapeError, match=r"codes must be .* shape \(2, 9, 24\)"):
        codec.attention_values(codes, scales, torch.rand(2, 9, 3), counts, bits=3, seed=0)
    # The core checks the same for direct callers.
    out = np.zeros((2, 10, 3), dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="counts"):
        _core.attention_scores(q.numpy(), codes.numpy(), scales.view(torch.int16).numpy().view(np.uint16),
                               np.array([3, 12]), out, bits=3, seed=0)
    with pytest.raises(ShapeError, match="out"):
        _core.attention_scores(q.numpy(), codes.numpy(), scales.view(torch.int16).numpy().view(np.uint16),
                               np.array([3, 2]), out[:, :, :2].copy(), bits=3, seed=0)
