"""``NexusQuantCache.memory_report()``: every byte held is counted, components add up, the ratio
matches the bit rates."""

from __future__ import annotations

import pytest
import torch
from conftest import left_pad, make_tiny_gemma2, make_tiny_llama, make_tiny_llama_config, random_prompt

from nexusquant import MemoryReport, NexusQuantCache
from nexusquant._hf import cache_kwarg
from nexusquant.eval import harness

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def fill(model, prompts, cache, new=7):
    ids, mask = left_pad(prompts)
    with cache.attach(model):
        model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                       **{cache_kwarg(model): cache})
    return ids


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_gemma2])
@pytest.mark.parametrize("quantize", [True, False])
def test_report_total_is_every_byte_the_cache_holds(make, quantize):
    model = make()
    cache = NexusQuantCache(model.config, 3, 2, sink_tokens=4, window=8, block=4, quantize=quantize)
    fill(model, [random_prompt(n, seed=n) for n in (37, 20, 9)], cache)
    report = cache.memory_report()
    assert report.total == harness.held_bytes(cache)
    assert report.total == sum(report.allocated.values())
    assert all(report.used[k] <= report.allocated[k] for k in report.allocated)
    assert report.tokens_per_row == (37 + 6, 20 + 6, 9 + 6) and report.tokens == 43 + 26 + 15
    assert report.seq_length == 43 and report.batch_size == 3
    assert report.allocated["bookkeeping"] > 0
    assert (report.allocated["codes"] > 0) == quantize


@pytest.mark.parametrize("head_dim", [64, 128])
def test_k3v2_ratio_matches_the_bit_rate(head_dim):
    """window=0, no sinks: codes (2.5 bits/element on average over K and V) and one fp16 scale per
    head-vector, against 16 bits per element in fp16; the prompt's buffers are allocated exactly."""
    cfg = make_tiny_llama_config(head_dim=head_dim, layers=2)
    cache = NexusQuantCache(cfg, 3, 2, sink_tokens=0, window=0, block=1)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 2, 200, head_dim, generator=g)
    for layer in range(2):
        cache.update(k, k, layer)
    report = cache.memory_report()
    tokens = 2 * 2 * 2 * 200  # layers x batch x heads x tokens, per K and V
    assert report.allocated["codes"] == tokens * head_dim * (3 + 2) // 8
    assert report.allocated["scales"] == tokens * 2 * 2
    # lengths: layers x (B, 3) int32; key and value centres: layers x 2 x (B, H, d) in the model
    # dtype (float32)
    assert report.allocated["bookkeeping"] == 2 * 2 * 3 * 4 + 2 * 2 * 2 * 2 * head_dim * 4
    assert report.used == report.allocated
    assert report.fp16_baseline_bytes == tokens * 2 * head_dim * 2
    assert report.baseline_bytes == 2 * report.fp16_baseline_bytes  # float32 model
    nominal = 16 / (2.5 + 16 / head_dim)
    coded = report.allocated["codes"] + report.allocated["scales"]
    assert report.fp16_baseline_bytes / coded == pytest.approx(nominal, rel=1e-12)
    # The bookkeeping (a key and a value centre per row, head and layer) costs what about 22
    # (d=64) or 12 (d=128) more tokens would: at 200 tokens the ratio is 6 % (3 %) below the
    # bit rate, at 2k tokens 0.6 % (0.3 %).
    with_centres = report.fp16_baseline_bytes / (coded + report.allocated["bookkeeping"])
    assert report.fp16_ratio == pytest.approx(with_centres, rel=2e-3)
    assert nominal * 0.92 < report.fp16_ratio < nominal
    assert report.ratio == pytest.approx(2 * report.fp16_ratio)


def test_capacity_slack_is_counted_as_held_not_used():
    cfg = make_tiny_llama_config(layers=1)
    cache = NexusQuantCache(cfg, 4, 4, sink_tokens=0, window=0, block=1)
    k = torch.randn(1, 2, 10, 64)
    cache.update(k, k, 0)
    assert cache.memory_report().allocated == cache.memory_report().used
    cache.update(k[:, :, :1], k[:, :, :1], 0)  # grows the code buffers by at least 64 tokens
    report = cache.memory_report()
    assert report.used["codes"] == 11 * 2 * 2 * 32
    assert report.allocated["codes"] == (10 + 64) * 2 * 2 * 32
    assert report.used_fp16_ratio > report.fp16_ratio


def test_default_settings_hold_sinks_and_window_in_the_model_dtype():
    model = make_tiny_llama(dtype=torch.bfloat16)
    cache = NexusQuantCache(model.config, 3, 2)  # sinks 4, window 128, block 64
    ids = random_prompt(300, seed=3)
    model(input_ids=ids, **{cache_kwarg(model): cache})
    report = cache.memory_report()
    # 300 tokens: 4 sinks, 128 coded (2 blocks), 168 in the window
    assert cache.layers[0].packed_view().lengths.tolist() == [[4, 128, 168]]
    per_token_exact = 2 * 2 * 64 * 2  # heads x (K + V) x head_dim x bf16, per layer
    assert report.used["sinks"] == 2 * 4 * per_token_exact
    assert report.used["window"] == 2 * 168 * per_token_exact
    assert report.dtype == torch.bfloat16 and report.baseline_bytes == report.fp16_baseline_bytes
    assert 1.0 < report.fp16_ratio < 2.0


def test_report_prints_a_table():
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, 3, 2, sink_tokens=2, window=4, block=2)
    fill(model, [random_prompt(12, seed=1)], cache, new=3)
    report = cache.memory_report()
    assert isinstance(report, MemoryReport)
    text = str(report)
    for word in ("codes", "scales", "sinks", "window", "bookkeeping", "other_layers", "total", "ratio"):
        assert word in text
    assert f"{report.total:,} B" in text
    assert report.cuda_allocated_delta is None


def test_empty_cache_reports_zero():
    report = NexusQuantCache(make_tiny_llama_config(), 3, 2).memory_report()
    assert report.total == 0 and report.tokens == 0 and report.baseline_bytes == 0
