"""The cache's hand-over to nexusquant's attention function (``docs/gpu.md``, "Hand-over from
the cache"), checked on the CPU: on single-token decode steps ``NexusQuantCache.update`` returns
the raw sink/window slots with the layer's PackedKV attached instead of decoded K/V, and
``nexusquant_attention`` (on the CPU: scores and value sums straight from the codes,
``nexusquant.cache.attention_cpu``) gives the same generations as the cache's own decode path.
The CUDA kernels themselves run in ``tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import left_pad, make_tiny_llama, random_prompt, record_codec_threads

from nexusquant import NexusQuantCache, compress_kv_cache, gpu
from nexusquant._hf import cache_kwarg
from nexusquant.cache import NexusQuantLayer
from nexusquant.cache import layer as cache_layer
from nexusquant.errors import InvalidArgumentError
from nexusquant.gpu import attention

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SETTINGS = dict(key_bits=3, value_bits=2, sink_tokens=2, window=8, block=4)


def generate(model, ids, cache, mask=None, new=10):
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids) if mask is None else mask,
        max_new_tokens=new,
        do_sample=False,
        **{cache_kwarg(model): cache},
    )


def fused_model(**kwargs) -> torch.nn.Module:
    model = make_tiny_llama(**kwargs)
    model.set_attn_implementation(gpu.register_attention())
    return model


class Spy:
    """Counts the attention calls that found a PackedKV and the layers' decoding of codes."""

    def __init__(self, monkeypatch):
        self.handed, self.plain, self.materialised = [], 0, 0
        found = attention.packed_view
        materialise = NexusQuantLayer._materialise

        def packed_view(key):
            view = found(key)
            if view is None:
                self.plain += 1
            else:
                self.handed.append((tuple(key.shape), view.length))
            return view

        def counting(layer, *args, **kwargs):
            self.materialised += 1
            return materialise(layer, *args, **kwargs)

        monkeypatch.setattr(attention, "packed_view", packed_view)
        monkeypatch.setattr(NexusQuantLayer, "_materialise", counting)


def test_decode_steps_hand_over_the_packed_layer_and_generate_the_same_tokens(monkeypatch):
    model = fused_model()
    prompt = random_prompt(30, seed=4)
    ref = generate(model, prompt, NexusQuantCache(model.config, attention="dequantize", **SETTINGS))
    spy = Spy(monkeypatch)
    cache = NexusQuantCache(model.config, **SETTINGS)
    assert cache.hands_over()
    out = generate(model, prompt, cache)
    assert torch.equal(out, ref)
    # 2 layers x 9 decode steps handed over; the prefill ran plain SDPA on full K/V
    assert len(spy.handed) == 2 * 9 and spy.plain == 2
    assert spy.materialised == 2 * 2  # keys and values of each layer, prefill only
    for step, (shape, length) in enumerate(spy.handed[::2]):
        # raw slots only (2 sinks + window capacity), never a full-length K/V
        assert shape[2] == cache.layers[0].sink_keys.shape[2] + cache.layers[0].window_keys.shape[2]
        assert length == 31 + step


def test_handed_over_view_is_the_layers_own_storage():
    model = fused_model(layers=1)
    cache = NexusQuantCache(model.config, **SETTINGS)
    generate(model, random_prompt(25, seed=1), cache, new=1)
    layer = cache.layers[0]
    k, v = cache.update(torch.randn(1, 2, 1, 64), torch.randn(1, 2, 1, 64), 0)
    view = attention.packed_view(k)
    assert view is not None and v is view.raw_v
    assert view.k_codes is layer.key_codes and view.v_scales is layer.value_scales
    assert view.length == layer.cumulative_length == 26
    view.validate()
    keys, values = view.dequantize()
    assert keys.shape == values.shape == (1, 2, 26, 64)


def test_left_padded_batch_matches_the_dequantize_path(monkeypatch):
    model = fused_model()
    prompts = [random_prompt(n, seed=10 + n) for n in (29, 17, 23)]
    ids, mask = left_pad(prompts)
    outs = {}
    for mode in ("dequantize", "auto"):
        cache = NexusQuantCache(model.config, attention=mode, **SETTINGS)
        with cache.attach(model):
            outs[mode] = generate(model, ids, cache, mask=mask)
    assert torch.equal(outs["auto"], outs["dequantize"])


def test_sdpa_models_and_other_layer_kinds_decode_as_before(monkeypatch):
    plain = make_tiny_llama()
    spy = Spy(monkeypatch)
    cache = NexusQuantCache(plain.config, **SETTINGS)
    assert not cache.hands_over()
    generate(plain, random_prompt(20, seed=2), cache, new=3)
    assert spy.handed == [] and spy.materialised == 2 * 2 * 3

    model = fused_model()
    ref = generate(model, random_prompt(20, seed=2), NexusQuantCache(model.config, **SETTINGS), new=4)
    spy.handed.clear()
    spy.materialised = 0
    offloaded = NexusQuantCache(model.config, offload="host", **SETTINGS)
    assert torch.equal(generate(model, random_prompt(20, seed=2), offloaded, new=4), ref)
    assert spy.handed == [] and spy.materialised == 2 * 2 * 4


def test_attention_argument_is_checked():
    model = make_tiny_llama()
    with pytest.raises(InvalidArgumentError, match=r"attention must be one of \['auto', 'fused', 'dequantize'\]"):
        NexusQuantCache(model.config, attention="flash")
    cache = NexusQuantCache(model.config, attention="fused")
    with pytest.raises(InvalidArgumentError, match="attention='fused' needs .* this model uses 'sdpa'"):
        generate(model, random_prompt(10, seed=3), cache, new=2)
    fused = fused_model()
    assert NexusQuantCache(fused.config, attention="fused").hands_over()
    assert not NexusQuantCache(fused.config, attention="dequantize").hands_over()

    from transformers import DynamicCache

    source = DynamicCache()
    source.update(torch.randn(1, 2, 5, 64), torch.randn(1, 2, 5, 64), 0)
    with pytest.raises(InvalidArgumentError, match="attention='fused' needs the model's config"):
        compress_kv_cache(source, attention="fused")
    assert not compress_kv_cache(source).hands_over()


def test_cpu_fused_attention_runs_the_codec_on_the_configured_threads(monkeypatch):
    seen = record_codec_threads(monkeypatch, "attention_scores", "attention_values")
    model = fused_model()
    prompt = random_prompt(30, seed=6)
    for threads in (1, None):
        monkeypatch.setattr(cache_layer, "CODEC_THREADS", threads)
        seen.clear()
        generate(model, prompt, NexusQuantCache(model.config, **SETTINGS), new=3)
        # 2 layers x 2 decode steps, one scores and one values call each
        assert sorted(seen) == [("attention_scores", threads)] * 4 + [("attention_values", threads)] * 4
