"""Token eviction and the quality presets: ``nexusquant_evict``, ``solve_budget``, ``EvictionConfig``.

Models are tiny random Llamas built from configs in code (tests/conftest.py). Behaviour tests use
pass-through caches (``quantize=False``: eviction without coding, fast and exact); the ratio and
memory tests run the codec (the Rust core, or the pure-torch oracle when it is not built).
"""

from __future__ import annotations

import pytest
import torch
from conftest import left_pad, make_tiny_llama, random_prompt
from transformers import DynamicCache

import nexusquant
from nexusquant import NexusQuantCache, codec
from nexusquant._hf import cache_kwarg
from nexusquant.cache import NexusQuantLayer
from nexusquant.errors import InvalidArgumentError
from nexusquant.eviction import EvictableLayer, EvictionConfig, nexusquant_evict, solve_budget
from nexusquant.eviction.budget import RowCost
from nexusquant.presets import PRESETS

# one torch thread: the tiny models run several times faster that way on a loaded machine
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def generate(model, ids, mask=None, new=8, **kwargs):
    """Greedy ``generate``; ``kwargs`` may carry ``cache=``."""
    if "cache" in kwargs:
        kwargs[cache_kwarg(model)] = kwargs.pop("cache")
    return model.generate(
        ids, attention_mask=torch.ones_like(ids) if mask is None else mask,
        max_new_tokens=new, do_sample=False, **kwargs,
    )


#: Short observation window, so that the tiny prompts here can keep few tokens (the sinks and the
#: observation window are never evicted).
OBS = dict(observation_window=8)


def exact_cache(model, **kwargs):
    """A pass-through cache: eviction removes tokens, nothing is coded."""
    return NexusQuantCache(model.config, quantize=False, **kwargs)


# --------------------------------------------------------------------------------------------
# measured ratios of the presets


@pytest.mark.parametrize("head_dim", [64, 128])
def test_presets_hit_their_measured_ratio(head_dim):
    """At a 2k-token prompt every eviction preset lands on its target (within 5 %, in fact
    within one token's bytes) and holds exactly what it reports: no capacity slack."""
    model = make_tiny_llama(head_dim=head_dim, num_kv_heads=1, num_heads=2, layers=1)
    ids = random_prompt(2048, seed=1)
    for name in ("high", "balanced", "max"):
        preset = PRESETS[name]
        with nexusquant_evict(model, quality=name) as nq:
            generate(model, ids, new=1)
        report = nq.cache.memory_report()
        assert report.seq_length == 2048
        assert preset.target_ratio <= report.fp16_ratio <= preset.target_ratio * 1.05, (name, report)
        assert report.used_total == report.total
        kept = report.tokens_per_row[0]
        assert 4 + preset.window <= kept < 2048 * 0.4
        coded = nq.cache.layers[0].row_lengths()[0][1]
        codes = codec.code_bytes(head_dim, preset.key_bits) + codec.code_bytes(head_dim, preset.value_bits)
        assert report.allocated["codes"] == coded * codes
        # one more kept token would miss the target: the budget is the largest that meets it
        assert report.fp16_baseline_bytes / (report.total + codes + 4) < preset.target_ratio


def test_memory_is_freed_by_eviction():
    """Same prompt, same bits: the evicted cache holds the kept tokens' codes only, in buffers
    reallocated at their exact size."""
    model = make_tiny_llama(num_kv_heads=1, num_heads=2, layers=1)
    ids = random_prompt(320, seed=2)
    reports = {}
    for evict in (0.0, 0.75):
        with nexusquant_evict(model, quality="balanced", evict_ratio=evict) as nq:
            generate(model, ids, new=1)
        reports[evict] = (nq.cache.memory_report(), nq.cache.layers[0].row_lengths()[0])
    (full, (s0, c0, w0)), (small, (s1, c1, w1)) = reports[0.0], reports[0.75]
    assert full.tokens_per_row == (320,) and small.tokens_per_row == (80,)
    assert (s1, w1) == (s0, w0) and c1 == 80 - s0 - w0
    bits = PRESETS["balanced"].key_bits, PRESETS["balanced"].value_bits
    per_token = codec.code_bytes(64, bits[0]) + codec.code_bytes(64, bits[1]) + 2 * 2  # codes + 2 scales
    assert full.total - small.total == (c0 - c1) * per_token
    assert small.allocated["codes"] + small.allocated["scales"] == c1 * per_token
    assert small.used_total == small.total
    assert small.seq_length == full.seq_length == 320


def test_evictable_layer_lengths_crop_and_validation():
    layer = EvictableLayer(key_bits=3, value_bits=2, sink_tokens=2, window=100, block=8, seed=0,
                           quantize=False)
    keys = torch.randn(1, 2, 20, 16)
    layer.update(keys, keys)
    assert layer.evictable_span() == [(2, 18, 0)]
    keep = torch.arange(0, 18, 2).expand(2, -1)
    layer.evict([keep])
    assert layer.row_lengths() == [(2, 0, 9)]
    assert torch.equal(layer.window_keys[0], keys[0, :, 2:20:2])
    assert (layer.cumulative_length, layer.get_seq_length(), layer.get_mask_sizes(1)) == (11, 20, (12, 9))
    assert layer.baseline_elements() == 2 * 20 * 32
    layer.crop(0)
    assert layer.get_seq_length() == 20
    layer.crop(-2)
    assert (layer.cumulative_length, layer.get_seq_length()) == (9, 18)
    layer.crop(18)  # legacy form: keep 18 positions
    assert layer.get_seq_length() == 18
    layer.crop(15)
    assert (layer.cumulative_length, layer.get_seq_length()) == (6, 15)
    with pytest.raises(InvalidArgumentError, match="at most the 6 stored positions"):
        layer.crop(-7)
    with pytest.raises(nexusquant.errors.ShapeError, match=r"keep\[0\] must be \(heads=2"):
        layer.evict([torch.arange(3)[None]])
    layer.reset()
    assert (layer.offset, layer.get_seq_length()) == (0, 0)


# --------------------------------------------------------------------------------------------
# budget


def test_solve_budget_meets_the_target_with_the_formula_of_the_memory_calculator():
    for head_dim in (64, 128):
        for kb, vb, ratio in ((3, 3, 10.0), (3, 2, 17.0), (2, 2, 33.0)):
            kept = solve_budget(seq_len=8192, head_dim=head_dim, key_bits=kb, value_bits=vb,
                                target_ratio=ratio, sink_tokens=4, window_tokens=32)
            coded_bytes = head_dim * (kb + vb) // 8 + 4
            held = 36 * 2 * head_dim * 2 + (kept - 36) * coded_bytes
            baseline = 8192 * 2 * head_dim * 2
            assert baseline / held >= ratio > baseline / (held + coded_bytes)


def test_solve_budget_bounds_and_errors():
    # a short context cannot reach 33x with 132 exact tokens: everything fixed is kept
    assert solve_budget(seq_len=1000, head_dim=64, key_bits=2, value_bits=2, target_ratio=33.0,
                        sink_tokens=4, window_tokens=128) == 132
    assert solve_budget(seq_len=50, head_dim=64, key_bits=2, value_bits=2, target_ratio=33.0,
                        sink_tokens=4, window_tokens=128) == 50
    with pytest.raises(InvalidArgumentError, match="target_ratio must be a finite number > 1"):
        solve_budget(seq_len=10, head_dim=64, key_bits=2, value_bits=2, target_ratio=0.5,
                     sink_tokens=4, window_tokens=8)
    with pytest.raises(nexusquant.errors.HeadDimError):
        solve_budget(seq_len=10, head_dim=60, key_bits=2, value_bits=2, target_ratio=5,
                     sink_tokens=4, window_tokens=8)


def test_memory_calculator_uses_solve_budget(monkeypatch):
    from nexusquant import memory

    # the codec's exact bytes (codes + one fp16 scale), so the test does not need the Rust core
    monkeypatch.setattr(memory, "measure_vector_bytes", lambda d, bits: d * bits / 8 + 2)
    report = memory.savings_report("SmolLM2-135M", 32_000, measured=True)
    assert "solve_budget" in report.row("balanced").basis
    assert report.row("balanced").ratio == pytest.approx(17.0, rel=0.01)


def test_row_cost_is_what_the_cache_holds():
    cost = RowCost(fixed_tokens=20, fixed_bytes=5000, coded_token_bytes=44, baseline_token_bytes=256)
    kept = cost.kept_tokens(2048, 17.0)
    assert 2048 * 256 / cost.held_bytes(kept) >= 17.0 > 2048 * 256 / cost.held_bytes(kept + 1)


# --------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(token_budget=64, evict_ratio=0.5), "give at most one of .*evict_ratio and token_budget"),
        (dict(target_ratio=12, token_budget=64), "target_ratio and token_budget"),
        (dict(quality="lossless", evict_ratio=0.5), "quality='lossless' .* evict_ratio=0.5"),
        (dict(quality="lossless", token_budget=9), "quality='lossless' .* token_budget=9"),
        (dict(quality="fast"), r"quality must be one of \['lossless', 'high', 'balanced', 'max'\]"),
        (dict(window_tokens=8), r"unexpected arguments \['window_tokens'\]"),
        (dict(evict_ratio=1.0), r"evict_ratio must be a number in \[0, 1\)"),
        (dict(key_bits=9), "key_bits must be one of"),
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(quality="lossless", decode_budget=True), "decode_budget=True needs a budget"),
    ],
)
def test_contradicting_or_invalid_arguments_are_errors(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        EvictionConfig.from_quality(**kwargs)
    model = make_tiny_llama(layers=1)
    with pytest.raises(InvalidArgumentError, match=message):
        with nexusquant_evict(model, **kwargs):
            pass  # pragma: no cover - never entered


def test_explicit_arguments_override_the_preset():
    config = EvictionConfig.from_quality("max", key_bits=3, token_budget=100, window=4)
    assert (config.key_bits, config.value_bits, config.window, config.sink_tokens) == (3, 2, 4, 4)
    assert config.token_budget == 100 and config.target_ratio is None
    assert EvictionConfig.from_quality("high").target_ratio == 10.0
    assert EvictionConfig.from_quality("high", target_ratio=12).target_ratio == 12.0
    assert not EvictionConfig.from_quality("lossless").evicts


# --------------------------------------------------------------------------------------------
# batches, positions


def test_padded_batch_rows_equal_single_runs():
    """Each row picks its own tokens and budget: a left-padded batch generates, row by row,
    what each prompt generates alone with the same settings - and eviction changed them."""
    model = make_tiny_llama()
    prompts = [random_prompt(n, seed=n) for n in (120, 80, 50, 30)]
    ids, mask = left_pad(prompts)
    with nexusquant_evict(model, quality="balanced", evict_ratio=0.6, **OBS) as nq:
        batch = generate(model, ids, mask, new=10, cache=exact_cache(model))
        prefill = nq.events[0]
        alone = [generate(model, p, new=10, cache=exact_cache(model)) for p in prompts]
    assert prefill.before == (120, 80, 50, 30) and prefill.after == (48, 32, 20, 12)
    changed = 0
    for r, (p, single) in enumerate(zip(prompts, alone)):
        assert torch.equal(batch[r, ids.shape[1]:], single[0, p.shape[1]:]), f"row {r}"
        full = generate(model, p, new=10)
        changed += not torch.equal(full, single)
    assert changed >= 2


def test_quantized_padded_batch_rows_equal_single_runs():
    model = make_tiny_llama(num_kv_heads=1, num_heads=2)
    prompts = [random_prompt(n, seed=n) for n in (96, 61)]
    ids, mask = left_pad(prompts)
    settings = dict(quality="balanced", token_budget=40, window=8, block=8)
    with nexusquant_evict(model, **settings) as nq:
        batch = generate(model, ids, mask, new=8)
        assert nq.cache.memory_report().tokens_per_row == (47, 47)
        alone = [generate(model, p, new=8) for p in prompts]
    for r, (p, single) in enumerate(zip(prompts, alone)):
        assert torch.equal(batch[r, ids.shape[1]:], single[0, p.shape[1]:]), f"row {r}"


def test_new_tokens_keep_their_absolute_positions():
    """After eviction the cache is compacted, yet every new token gets its original position:
    the position_ids the model receives count from the full prompt, and the first layer's
    stored keys of the generated tokens equal those of an un-evicted run (keys there depend on
    the token and its RoPE position only)."""
    model = make_tiny_llama()
    prompt = random_prompt(90, seed=4)
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["position_ids"][0].tolist()), with_kwargs=True)
    try:
        with nexusquant_evict(model, quality="balanced", token_budget=30, **OBS) as nq:
            out = generate(model, prompt, new=5, cache=exact_cache(model))
    finally:
        hook.remove()
    assert seen == [list(range(90)), [90], [91], [92], [93]]
    layer = nq.cache.layers[0]
    assert layer.cumulative_length == 34 and layer.get_seq_length() == 94
    ref = DynamicCache(config=model.config)
    model(out[:, :-1], **{cache_kwarg(model): ref})
    window = layer.row_lengths()[0][2]
    new_keys = layer.window_keys[:, :, window - 4 : window]
    # float noise only; a key at a wrong position differs by O(1)
    torch.testing.assert_close(new_keys, ref.layers[0].keys[:, :, 90:94], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["none", "positional"])
def test_decoding_after_eviction_continues_from_the_compacted_cache(mask):
    """A manual forward outside generate (no position_ids) also gets the absolute position: the
    model counts from get_seq_length(), which is the absolute length; an absolute 2-D mask, even
    given positionally, is rewritten for the compacted cache."""
    model = make_tiny_llama()
    prompt = random_prompt(70, seed=6)
    with nexusquant_evict(model, quality="balanced", token_budget=20, **OBS) as nq:
        out = generate(model, prompt, new=3, cache=exact_cache(model))
        cache = nq.cache
        args = (out[:, -1:],) if mask == "none" else (out[:, -1:], torch.ones(1, 73, dtype=torch.long))
        logits = model(*args, **{cache_kwarg(model): cache}).logits
        seq = generate(model, prompt, new=4, cache=exact_cache(model))
    assert cache.get_seq_length() == 73
    assert int(logits[0, -1].argmax()) == int(seq[0, -1])


def test_handle_prefill_then_manual_decoding_equals_generate():
    """``handle.prefill`` evicts like generate's prefill; a hand-written greedy loop over the
    compacted cache then reproduces generate's tokens."""
    model = make_tiny_llama()
    prompt = random_prompt(75, seed=13)
    with nexusquant_evict(model, quality="balanced", token_budget=25, **OBS) as nq:
        reference = generate(model, prompt, new=6, cache=exact_cache(model))
        out = nq.prefill(prompt, cache=exact_cache(model))
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(5):
            out = model(torch.tensor([tokens[-1:]]), **{cache_kwarg(model): nq.cache})
            tokens.append(int(out.logits[0, -1].argmax()))
    assert tokens == reference[0, 75:].tolist()
    assert [e.after for e in nq.events] == [(25,)] * 4
    with pytest.raises(RuntimeError, match="only usable inside"):
        nq.prefill(prompt)


# --------------------------------------------------------------------------------------------
# when eviction fires


def test_eviction_fires_once_per_prompt_never_on_decode_steps():
    model = make_tiny_llama()
    with nexusquant_evict(model, quality="balanced", token_budget=30, **OBS) as nq:
        generate(model, random_prompt(80, seed=1), new=12, cache=exact_cache(model))
    assert [(e.kind, e.layer_idx, e.before, e.after) for e in nq.events] == [
        ("prefill", 0, (80,), (30,)), ("prefill", 1, (80,), (30,))]
    assert nq.cache.memory_report().tokens_per_row == (41,)


@pytest.mark.parametrize("speculation", ["assistant_model", "prompt_lookup_num_tokens"])
def test_no_eviction_on_speculative_verification_steps(speculation):
    """Assisted and prompt-lookup decoding: only the prompt's end evicts (draft tokens verified in
    that forward are kept for crop), and the output equals plain greedy decoding."""
    model = make_tiny_llama()
    prompt = random_prompt(100, seed=3)
    prompt = torch.cat([prompt, prompt[:, :30]], dim=1)  # repeats, for prompt lookup
    extra = {"assistant_model": dict(assistant_model=make_tiny_llama(layers=1, seed=1)),
             "prompt_lookup_num_tokens": dict(prompt_lookup_num_tokens=4)}[speculation]
    with nexusquant_evict(model, quality="balanced", token_budget=40) as nq:
        plain = generate(model, prompt, new=20, cache=exact_cache(model))
        plain_events = list(nq.events)
        nq.events.clear()
        spec = generate(model, prompt, new=20, cache=exact_cache(model), **extra)
    assert torch.equal(spec, plain)
    assert [e.kind for e in nq.events] == ["prefill", "prefill"]
    assert all(e.before[0] >= 130 for e in nq.events)
    drafts = nq.events[0].before[0] - 130
    assert [e.after for e in nq.events] == [(40 + drafts,)] * 2
    assert [e.after for e in plain_events] == [(40,)] * 2
    assert nq.cache.get_seq_length() == 130 + 19


def test_chunked_prefill_evicts_after_the_last_chunk_only():
    model = make_tiny_llama()
    prompt = random_prompt(100, seed=8)
    with nexusquant_evict(model, quality="balanced", token_budget=30, **OBS) as nq:
        chunked = generate(model, prompt, new=6, cache=exact_cache(model), prefill_chunk_size=32)
        assert [(e.kind, e.before) for e in nq.events] == [("prefill", (100,))] * 2
        whole = generate(model, prompt, new=6, cache=exact_cache(model))
    assert torch.equal(chunked, whole)


def test_decode_budget_evicts_a_block_past_the_budget():
    model = make_tiny_llama()
    with nexusquant_evict(model, quality="balanced", token_budget=40, block=8,
                          decode_budget=True) as nq:
        generate(model, random_prompt(80, seed=9), new=30, cache=exact_cache(model, block=8))
    kinds = [e.kind for e in nq.events]
    assert kinds[:2] == ["prefill", "prefill"] and "decode" in kinds
    for e in nq.events:
        assert e.after == (40,) and (e.kind == "prefill" or e.before == (48,))
    layer = nq.cache.layers[0]
    assert layer.decode_scores.shape == (1, 2, layer.cumulative_length)
    assert nq.cache.memory_report().allocated["bookkeeping"] >= 2 * layer.decode_scores.numel() * 4


def test_multi_turn_prefills_against_the_evicted_cache_and_never_recodes(monkeypatch):
    """Turn 2 is appended to the evicted cache, then evicted again; every key head-vector is
    coded once over both turns, and the codes kept from turn 1 are the same bytes."""
    model = make_tiny_llama(num_kv_heads=1, num_heads=2)
    coded_keys = []
    encode_groups = codec.encode_groups

    def spy(x, codes_out, scales_out, *, bits, **kwargs):
        if bits == 3:
            coded_keys.append(x.detach().reshape(-1, x.shape[-1]).clone())
        return encode_groups(x, codes_out, scales_out, bits=bits, **kwargs)

    monkeypatch.setattr(codec, "encode_groups", spy)
    # keys alone at 3 bits, so that the spy sees every key and no value
    with nexusquant_evict(model, quality="balanced", token_budget=48, window=8, block=8,
                          key_bits=3, value_bits=2) as nq:
        first = generate(model, random_prompt(120, seed=10), new=6)
        cache = nq.cache
        turn1 = {tuple(row.tolist()) for row in cache.layers[1].key_codes[0, 0]}
        turn = torch.cat([first, random_prompt(60, seed=11)], dim=1)
        second = generate(model, turn, new=6, cache=cache)
    assert torch.equal(second[:, : turn.shape[1]], turn)
    assert [(e.kind, e.before) for e in nq.events] == [("prefill", (120,))] * 2 + [("prefill", (114,))] * 2
    assert cache.get_seq_length() == turn.shape[1] + 5
    assert cache.memory_report().tokens_per_row == (48 + 5,)
    keys = torch.cat(coded_keys)
    assert torch.unique(keys, dim=0).shape[0] == keys.shape[0]
    after = [tuple(row.tolist()) for row in cache.layers[1].key_codes[0, 0]]
    assert len(turn1 & set(after)) > 0


# --------------------------------------------------------------------------------------------
# the context manager


def _snapshot(model):
    return (
        dict(vars(model)),
        {name: dict(getattr(model, name)) for name in vars(model) if name.endswith("hooks")},
        model.config._attn_implementation_internal,
        dict(type(model).__dict__),
        [dict(vars(m)) for m in model.modules()],
    )


def test_model_is_restored_exactly_on_exit_and_on_error():
    model = make_tiny_llama()
    before = _snapshot(model)
    with nexusquant_evict(model, quality="max", token_budget=20, **OBS):
        assert model.config._attn_implementation == "nexusquant_snapkv"
        assert "generate" in vars(model)
        generate(model, random_prompt(40, seed=1), new=2, cache=exact_cache(model))
    assert _snapshot(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with nexusquant_evict(model, quality="high"):
            generate(model, random_prompt(40, seed=1), new=2)
            raise RuntimeError("boom")
    assert _snapshot(model) == before
    assert "generate" not in vars(model) and not model._forward_pre_hooks and not model._forward_hooks


def test_nesting_on_one_model_is_an_error_and_restores():
    model = make_tiny_llama(layers=1)
    before = _snapshot(model)
    with nexusquant_evict(model):
        with pytest.raises(InvalidArgumentError, match="already inside a nexusquant_evict block"):
            with nexusquant_evict(model):
                pass  # pragma: no cover - never entered
        assert model.config._attn_implementation == "nexusquant_snapkv"
    assert _snapshot(model) == before


def test_two_models_do_not_interfere():
    a, b = make_tiny_llama(seed=1), make_tiny_llama(head_dim=32, seed=2)
    pa, pb = random_prompt(60, seed=1), random_prompt(70, seed=2)
    ref_b = generate(b, pb, new=6)
    with nexusquant_evict(a, quality="balanced", token_budget=24, **OBS) as na:
        alone_a = generate(a, pa, new=6, cache=exact_cache(a))
        assert torch.equal(generate(b, pb, new=6), ref_b)  # b is untouched
        with nexusquant_evict(b, quality="balanced", token_budget=30, **OBS) as nb:
            out_a = generate(a, pa, new=6, cache=exact_cache(a))
            out_b = generate(b, pb, new=6, cache=exact_cache(b))
        alone_b_events = [e.after for e in nb.events]
    assert torch.equal(out_a, alone_a)
    assert alone_b_events == [(30,), (30,)]
    assert [e.after for e in na.events] == [(24,), (24,)] * 2
    assert b.config._attn_implementation == a.config._attn_implementation == "sdpa"


def test_each_generate_gets_a_fresh_cache_from_the_preset_and_given_caches_are_used():
    model = make_tiny_llama(layers=1)
    with nexusquant_evict(model, quality="lossless") as nq:
        generate(model, random_prompt(20, seed=1), new=2)
        first = nq.cache
        generate(model, random_prompt(20, seed=2), new=2)
        assert nq.cache is not first
        assert (first.key_bits, first.value_bits, first.window) == (4, 4, 128)
        assert type(first.layers[0]) is NexusQuantLayer  # lossless: nothing to evict
        mine = NexusQuantCache(model.config, 2, 2, window=16)
        generate(model, random_prompt(20, seed=3), new=2, cache=mine)
        assert nq.cache is mine and mine.key_bits == 2
        dynamic = DynamicCache(config=model.config)
        generate(model, random_prompt(20, seed=3), new=2, cache=dynamic)
        assert nq.cache is mine and dynamic.get_seq_length() == 21
    assert nq.events == []


def test_offloaded_caches_are_not_evicted_but_run_lossless():
    model = make_tiny_llama(layers=1)
    with nexusquant_evict(model, quality="balanced"):
        with pytest.raises(InvalidArgumentError, match="does not combine with offload='host'"):
            generate(model, random_prompt(20, seed=1), new=2,
                     cache=NexusQuantCache(model.config, offload="host"))
    with nexusquant_evict(model, quality="lossless") as nq:
        generate(model, random_prompt(20, seed=1), new=2,
                 cache=NexusQuantCache(model.config, offload="host"))
    assert nq.cache.get_seq_length() == 21


def test_eager_attention_is_wrapped_too():
    model = make_tiny_llama()
    model.set_attn_implementation("eager")
    prompt = random_prompt(60, seed=12)
    with nexusquant_evict(model, quality="balanced", token_budget=24, **OBS) as nq:
        eager = generate(model, prompt, new=6, cache=exact_cache(model))
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    with nexusquant_evict(model, quality="balanced", token_budget=24, **OBS):
        sdpa = generate(model, prompt, new=6, cache=exact_cache(model))
    assert [e.after for e in nq.events] == [(24,), (24,)]
    assert torch.equal(eager, sdpa)


def test_models_with_sliding_layers_are_rejected_for_eviction(tiny_gemma2):
    model = tiny_gemma2()
    with pytest.raises(InvalidArgumentError, match="all full attention"):
        with nexusquant_evict(model, quality="balanced"):
            pass  # pragma: no cover - never entered
    with nexusquant_evict(model, quality="lossless") as nq:
        generate(model, random_prompt(30, seed=1), new=3)
    assert nq.cache.memory_report().compressed_layers == 2
