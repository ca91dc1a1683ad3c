"""NexusQuantCache inside transformers ``generate``: pass-through equivalence with DynamicCache,
per-row semantics under left padding, beam search, multi-turn reuse, sliding-window models.

Models are tiny random Llama / Mistral / Gemma-2 built from configs in code (tests/conftest.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import centred, left_pad, make_tiny_gemma2, make_tiny_llama, random_prompt
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from nexusquant import NexusQuantCache, codec
from nexusquant._hf import cache_kwarg
from nexusquant.cache import NexusQuantLayer
from nexusquant.cache import layer as cache_layer

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Small window and block so that prompts of a few dozen tokens already hold coded tokens and
# decoding moves blocks out of the window.
SMALL = dict(sink_tokens=4, window=16, block=8)


def generate(model, ids, cache, mask=None, new=8, **kwargs):
    """Greedy ``generate`` with ``cache`` under the keyword this transformers takes."""
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids) if mask is None else mask,
        max_new_tokens=new,
        do_sample=False,
        **{cache_kwarg(model): cache},
        **kwargs,
    )


def row_state(cache: NexusQuantCache, row: int) -> list[tuple[str, torch.Tensor]]:
    """Everything row ``row`` stores, layer by layer: counts, sinks, codes, scales, window."""
    out = []
    for i, layer in enumerate(cache.layers):
        if not isinstance(layer, NexusQuantLayer):
            continue
        v = layer.packed_view()
        s, c, w = v.lengths[row].tolist()
        out += [
            (f"{i}.lengths", v.lengths[row]),
            (f"{i}.sink_keys", v.sink_keys[row, :, :s]), (f"{i}.sink_values", v.sink_values[row, :, :s]),
            (f"{i}.key_codes", v.key_codes[row, :, :c]), (f"{i}.value_codes", v.value_codes[row, :, :c]),
            (f"{i}.key_scales", v.key_scales[row, :, :c]), (f"{i}.value_scales", v.value_scales[row, :, :c]),
            (f"{i}.window_keys", v.window_keys[row, :, :w]),
            (f"{i}.window_values", v.window_values[row, :, :w]),
        ]
    return out


def assert_same_state(a, b, *, exact: bool = True) -> None:
    """Two rows store the same thing. ``exact=False`` allows float noise in the exact tensors
    (sinks, window, scales) and a code flipped by it in at most 1 % of head-vectors."""
    assert [name for name, _ in a] == [name for name, _ in b]
    for (name, x), (_, y) in zip(a, b):
        assert x.shape == y.shape, name
        if exact or "lengths" in name:
            assert torch.equal(x, y), name
        elif "codes" in name:
            same = (x == y).all(dim=-1)
            assert same.sum() >= 0.99 * same.numel(), name
        else:
            torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4, msg=name)


def prefill(model, ids, mask, **settings) -> NexusQuantCache:
    """One forward of a (padded) batch into a fresh cache, with generate's position ids."""
    mask = torch.ones_like(ids) if mask is None else mask
    cache = NexusQuantCache(model.config, **settings)
    cache.set_attention_mask(mask)
    model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
          **{cache_kwarg(model): cache})
    return cache


# --------------------------------------------------------------------------------------------
# pass-through reproduces DynamicCache


def test_passthrough_equals_dynamic_cache_single_prompt():
    model = make_tiny_llama()
    ids = random_prompt(24, seed=1)
    ref = generate(model, ids, DynamicCache(config=model.config), new=16)
    out = generate(model, ids, NexusQuantCache(model.config, quantize=False), new=16)
    assert torch.equal(out, ref)
    assert len(set(ref[0, 24:].tolist())) > 4  # the tiny model does not just repeat a token


def test_passthrough_equals_dynamic_cache_left_padded_batch():
    model = make_tiny_llama()
    ids, mask = left_pad([random_prompt(n, seed=n) for n in (21, 9, 15)])
    ref = generate(model, ids, DynamicCache(config=model.config), mask, new=12)
    cache = NexusQuantCache(model.config, quantize=False)
    with cache.attach(model):
        out = generate(model, ids, cache, mask, new=12)
    assert torch.equal(out, ref)
    assert cache.memory_report().tokens_per_row == (21 + 11, 9 + 11, 15 + 11)


@pytest.mark.parametrize("beams", [2, 3])
def test_passthrough_equals_dynamic_cache_beam_search(beams):
    model = make_tiny_llama()
    ids, mask = left_pad([random_prompt(n, seed=10 + n) for n in (14, 8)])
    kw = dict(num_beams=beams, num_return_sequences=beams)
    ref = generate(model, ids, DynamicCache(config=model.config), mask, new=10, **kw)
    cache = NexusQuantCache(model.config, quantize=False)
    with cache.attach(model):
        out = generate(model, ids, cache, mask, new=10, **kw)
    assert torch.equal(out, ref)


def test_passthrough_equals_dynamic_cache_sliding_window_models():
    for model in (make_tiny_gemma2(sliding_window=8), make_tiny_llama(sliding_window=8)):
        ids, mask = left_pad([random_prompt(n, seed=n) for n in (20, 13)])
        ref = generate(model, ids, DynamicCache(config=model.config), mask, new=12)
        cache = NexusQuantCache(model.config, quantize=False)
        with cache.attach(model):
            out = generate(model, ids, cache, mask, new=12)
        assert torch.equal(out, ref)


def test_past_key_values_keyword_also_works():
    """``past_key_values=`` is the keyword before transformers 5.24 and deprecated (still working)
    from 5.24 on, where ``cache=`` is the name."""
    model = make_tiny_llama()
    ids = random_prompt(12, seed=3)
    ref = generate(model, ids, DynamicCache(config=model.config), new=6)
    cache = NexusQuantCache(model.config, quantize=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                             max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == 12 + 5
    deprecated = any("past_key_values" in str(w.message) for w in caught)
    assert deprecated == (cache_kwarg(model) == "cache")


# --------------------------------------------------------------------------------------------
# quantized: per-row semantics


def test_quantized_padded_batch_rows_equal_single_runs():
    """Each row of a left-padded batch generates what it generates alone and stores the same
    tokens, sinks, codes and window (up to the float noise traced in the next test)."""
    model = make_tiny_llama()
    prompts = [random_prompt(n, seed=100 + n) for n in (41, 27, 12)]
    ids, mask = left_pad(prompts)
    batch_cache = NexusQuantCache(model.config, 3, 2, **SMALL)
    with batch_cache.attach(model):
        batch_out = generate(model, ids, batch_cache, mask, new=12)
    for r, prompt in enumerate(prompts):
        alone = NexusQuantCache(model.config, 3, 2, **SMALL)
        alone_out = generate(model, prompt, alone, new=12)
        assert torch.equal(batch_out[r, ids.shape[1]:], alone_out[0, prompt.shape[1]:]), f"row {r}"
        assert_same_state(row_state(batch_cache, r), row_state(alone, 0), exact=False)
    # block boundaries are per row: the rows hold different numbers of coded tokens
    # (41 + 11 tokens: 4 sinks, 32 coded, 16 in the window; 27 + 11: 4, 16, 18; 12 + 11: 4, 0, 19)
    assert batch_cache.layers[0].packed_view().lengths.tolist() == [[4, 32, 16], [4, 16, 18], [4, 0, 19]]


def test_row_differences_come_only_from_float_noise_upstream():
    """Trace of any batch-vs-alone difference: the cache codes exactly the tensors it is handed
    (codes == encode(inputs)), identical inputs give identical codes, and the inputs of a padded
    row differ from the row alone only by float noise of the batched attention upstream (none in
    layer 0, whose inputs do not go through attention)."""
    model = make_tiny_llama()
    prompts = [random_prompt(n, seed=100 + n) for n in (41, 27, 12)]
    ids, mask = left_pad(prompts)
    coded = dict(key_bits=3, value_bits=2, sink_tokens=0, window=0, block=1)
    batch_codes = prefill(model, ids, mask, **coded)
    batch_inputs = prefill(model, ids, mask, quantize=False, sink_tokens=0)
    noisy = 0
    for r, prompt in enumerate(prompts):
        n = prompt.shape[1]
        alone_codes = prefill(model, prompt, None, **coded)
        alone_inputs = prefill(model, prompt, None, quantize=False, sink_tokens=0)
        for i in range(model.config.num_hidden_layers):
            for kind, bits in (("key", 3), ("value", 2)):
                x_batch = getattr(batch_inputs.layers[i], f"window_{kind}s")[r, :, :n]
                x_alone = getattr(alone_inputs.layers[i], f"window_{kind}s")[0, :, :n]
                c_batch = getattr(batch_codes.layers[i], f"{kind}_codes")[r, :, :n]
                c_alone = getattr(alone_codes.layers[i], f"{kind}_codes")[0, :, :n]
                # Coded relative to the row's centres (test_cache_layer).
                x_batch_coded = centred(x_batch[None], x_batch[None])[0][0]
                x_alone_coded = centred(x_alone[None], x_alone[None])[0][0]
                assert torch.equal(c_batch, codec.encode(x_batch_coded, bits, 0, backend=cache_layer.CODEC_BACKEND, candidates=cache_layer.CODEC_CANDIDATES)[0])
                assert torch.equal(c_alone, codec.encode(x_alone_coded, bits, 0, backend=cache_layer.CODEC_BACKEND, candidates=cache_layer.CODEC_CANDIDATES)[0])
                same_input = (x_batch == x_alone).all(dim=-1)
                assert (c_batch == c_alone).all(dim=-1)[same_input].all()
                assert (x_batch - x_alone).abs().max() <= 1e-5 * x_alone.abs().max()
                if i == 0:
                    assert same_input.all()
                noisy += int((~same_input).sum())
    assert noisy > 0  # the batched path does add noise upstream in deeper layers


def test_quantized_cache_changes_generations_and_holds_codes():
    """The quantized cache really codes tokens (attention sees decoded values)."""
    model = make_tiny_llama()
    ids = random_prompt(48, seed=5)
    exact = generate(model, ids, DynamicCache(config=model.config), new=16)
    cache = NexusQuantCache(model.config, 2, 2, sink_tokens=0, window=0, block=1)
    out = generate(model, ids, cache, new=16)
    assert cache.layers[0].packed_view().lengths.tolist() == [[0, 48 + 15, 0]]
    assert not torch.equal(out, exact)


def test_quantized_beam_search_runs_and_reorders_rows():
    model = make_tiny_llama()
    ids, mask = left_pad([random_prompt(n, seed=n) for n in (30, 19)])
    cache = NexusQuantCache(model.config, 4, 4, **SMALL)
    with cache.attach(model):
        out = generate(model, ids, cache, mask, new=10, num_beams=3, num_return_sequences=3)
    assert out.shape == (6, ids.shape[1] + 10)
    lengths = cache.layers[0].packed_view().lengths
    # beams of one prompt hold that prompt's number of real tokens
    assert lengths.sum(dim=1).tolist() == [39] * 3 + [28] * 3


# --------------------------------------------------------------------------------------------
# multi-turn


def test_multi_turn_appends_and_never_requantizes():
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, 3, 2, **SMALL)
    first = generate(model, random_prompt(40, seed=7), cache, new=10)
    view = cache.layers[1].packed_view()
    coded = int(view.lengths[0, 1])
    before = [t[:, :, :coded].clone() for t in (view.key_codes, view.value_codes, view.key_scales,
                                                  view.value_scales)]
    turn = torch.cat([first, random_prompt(25, seed=8)], dim=1)
    second = generate(model, turn, cache, new=10)
    assert torch.equal(second[:, : turn.shape[1]], turn)
    assert cache.get_seq_length() == turn.shape[1] + 9
    after = cache.layers[1].packed_view()
    assert int(after.lengths[0, 1]) > coded
    for old, new in zip(before, (after.key_codes, after.value_codes, after.key_scales, after.value_scales)):
        assert torch.equal(new[:, :, :coded], old)


def test_multi_turn_padded_batch_keeps_row_state():
    """A second turn on a padded batch (mask extended) continues each row as if alone."""
    model = make_tiny_llama()
    prompts = [random_prompt(n, seed=200 + n) for n in (30, 18)]
    ids, mask = left_pad(prompts)
    cache = NexusQuantCache(model.config, 3, 3, **SMALL)
    extra = random_prompt(6, seed=9).expand(2, -1)
    with cache.attach(model):
        first = generate(model, ids, cache, mask, new=5)
        turn = torch.cat([first, extra], dim=1)
        turn_mask = torch.cat([mask, torch.ones(2, turn.shape[1] - mask.shape[1], dtype=torch.long)], 1)
        second = generate(model, turn, cache, turn_mask, new=5)
    for r, prompt in enumerate(prompts):
        alone = NexusQuantCache(model.config, 3, 3, **SMALL)
        a1 = generate(model, prompt, alone, new=5)
        a2 = generate(model, torch.cat([a1, extra[:1]], dim=1), alone, new=5)
        assert torch.equal(second[r, ids.shape[1]:], a2[0, prompt.shape[1]:])
        assert_same_state(row_state(cache, r), row_state(alone, 0), exact=False)


def test_mask_omitted_on_a_padded_cache_is_an_error():
    model = make_tiny_llama()
    ids, mask = left_pad([random_prompt(n, seed=n) for n in (10, 6)])
    cache = NexusQuantCache(model.config, quantize=False)
    with cache.attach(model):
        generate(model, ids, cache, mask, new=2)
    cache.set_attention_mask(None)
    with pytest.raises(ValueError, match="attention mask and cache disagree: row 1"):
        model(input_ids=torch.tensor([[5], [6]]), **{cache_kwarg(model): cache})


# --------------------------------------------------------------------------------------------
# sliding-window models and layer kinds


def test_gemma2_sliding_layers_stay_transformers_layers():
    model = make_tiny_gemma2(sliding_window=8)
    cache = NexusQuantCache(model.config, 3, 2, **SMALL)
    ids, mask = left_pad([random_prompt(n, seed=n) for n in (33, 21)])
    with cache.attach(model):
        out = generate(model, ids, cache, mask, new=8)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [DynamicSlidingWindowLayer, NexusQuantLayer] * 2
    report = cache.memory_report()
    assert report.compressed_layers == 2 and report.allocated["other_layers"] > 0
    assert report.allocated["codes"] > 0
    for r, n in enumerate((33, 21)):
        alone = NexusQuantCache(model.config, 3, 2, **SMALL)
        single = generate(model, random_prompt(n, seed=n), alone, new=8)
        assert torch.equal(out[r, ids.shape[1]:], single[0, n:])
        assert_same_state(row_state(cache, r), row_state(alone, 0), exact=False)


def test_attach_installs_an_instance_hook_and_removes_it():
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, quantize=False)
    class_hooks = dict(type(model).__dict__)
    assert not model._forward_pre_hooks
    with cache.attach(model):
        assert len(model._forward_pre_hooks) == 1
    assert not model._forward_pre_hooks
    assert dict(type(model).__dict__) == class_hooks
