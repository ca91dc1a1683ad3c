"""Host offload of the packed codes (``NexusQuantCache(..., offload="host")``).

On the CPU an offloaded cache must behave exactly like a plain one (same generations, same memory
report) with its codes in host memory, and never call into CUDA. The ``gpu`` tests run the real
thing: codes pinned in host memory, prefetched to the device on a side stream.
"""

from __future__ import annotations

import pytest
import torch
from conftest import left_pad, make_tiny_gemma2, make_tiny_llama, random_prompt

from nexusquant import NexusQuantCache, errors
from nexusquant._hf import cache_kwarg
from nexusquant.cache import NexusQuantLayer
from nexusquant.cache.offload import CODE_BUFFERS, OffloadedLayer, layer_class, link_offload

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SETTINGS = dict(key_bits=3, value_bits=2, sink_tokens=2, window=8, block=8)


def generate(model, ids, cache, mask=None, new=8, **kwargs):
    return model.generate(
        ids, attention_mask=torch.ones_like(ids) if mask is None else mask, max_new_tokens=new,
        do_sample=False, **{cache_kwarg(model): cache}, **kwargs,
    )


def test_offload_argument_picks_the_layer_class():
    model = make_tiny_llama(layers=3)
    cache = NexusQuantCache(model.config, offload="host", **SETTINGS)
    assert [type(l) for l in cache.layers] == [OffloadedLayer] * 3
    assert [l.next_layer for l in cache.layers] == [cache.layers[1], cache.layers[2], cache.layers[0]]
    assert len({id(l.side_streams) for l in cache.layers}) == 1
    assert all(type(l) is NexusQuantLayer for l in NexusQuantCache(model.config, **SETTINGS).layers)
    assert layer_class(None) is NexusQuantLayer and layer_class("host") is OffloadedLayer
    with pytest.raises(errors.InvalidArgumentError, match=r"offload must be one of \[None, 'host'\], got 'disk'"):
        NexusQuantCache(model.config, offload="disk")


def test_prefetch_ring_skips_other_layers():
    model = make_tiny_gemma2(layers=4)
    cache = NexusQuantCache(model.config, offload="host", **SETTINGS)
    full = [l for l in cache.layers if isinstance(l, OffloadedLayer)]
    assert len(full) == 2 and full[0].next_layer is full[1] and full[1].next_layer is full[0]
    single = [OffloadedLayer(key_bits=3, value_bits=2, sink_tokens=0, window=4, block=4, seed=0,
                             quantize=True)]
    link_offload(single)
    assert single[0].next_layer is None


@pytest.mark.parametrize("batch", [1, 3])
def test_offloaded_cache_generates_and_reports_like_a_plain_one(batch):
    model = make_tiny_llama()
    prompts = [random_prompt(n, seed=20 + n) for n in (40, 27, 33)[:batch]]
    ids, mask = left_pad(prompts)
    plain = NexusQuantCache(model.config, **SETTINGS)
    offloaded = NexusQuantCache(model.config, offload="host", **SETTINGS)
    with plain.attach(model):
        expected = generate(model, ids, plain, mask, new=12)
    with offloaded.attach(model):
        got = generate(model, ids, offloaded, mask, new=12)
    assert torch.equal(got, expected)
    assert offloaded.memory_report() == plain.memory_report()
    assert offloaded.memory_report().used["codes"] > 0
    for layer in offloaded.layers:
        assert all(getattr(layer, name).device.type == "cpu" for name in CODE_BUFFERS)


def test_beam_search_and_row_selection_keep_codes_on_the_host():
    model = make_tiny_llama()
    prompt = random_prompt(40, seed=30)
    plain = NexusQuantCache(model.config, **SETTINGS)
    offloaded = NexusQuantCache(model.config, offload="host", **SETTINGS)
    expected = generate(model, prompt, plain, num_beams=3)
    got = generate(model, prompt, offloaded, num_beams=3)
    assert torch.equal(got, expected)
    offloaded.batch_select_indices(torch.tensor([0]))
    offloaded.batch_repeat_interleave(2)
    for layer in offloaded.layers:
        assert layer.batch == 2
        assert all(getattr(layer, name).device.type == "cpu" for name in CODE_BUFFERS)


def test_cpu_offload_never_calls_cuda(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a CPU run called into CUDA")

    for name in ("Stream", "Event", "current_stream", "stream"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, offload="host", **SETTINGS)
    out = generate(model, random_prompt(40, seed=31), cache, new=4)
    assert out.shape == (1, 44)
    cache.reorder_cache(torch.tensor([0]))
    cache.reset()


@pytest.mark.gpu
def test_cuda_offload_prefetches_pinned_codes_and_matches_the_plain_cache():
    model = make_tiny_llama(layers=3, dtype=torch.float16).cuda()
    prompt = random_prompt(300, seed=32).cuda()
    plain = NexusQuantCache(model.config, **SETTINGS)
    offloaded = NexusQuantCache(model.config, offload="host", **SETTINGS)
    expected = generate(model, prompt, plain, new=20)
    got = generate(model, prompt, offloaded, new=20)
    assert torch.equal(got, expected)
    for layer in offloaded.layers:
        for name in CODE_BUFFERS:
            t = getattr(layer, name)
            assert t.device.type == "cpu" and t.is_pinned()
            assert torch.equal(t[:, :, : int(layer.lengths[:, 1].max())].cuda(),
                               getattr(plain.layers[offloaded.layers.index(layer)], name)[
                                   :, :, : int(layer.lengths[:, 1].max())])
        assert layer.window_keys.is_cuda and layer.sink_keys.is_cuda
    # After a forward the last layer has prefetched the first one's codes for the next forward.
    staged = offloaded.layers[0]._staged
    assert staged is not None and staged.version == offloaded.layers[0]._version
    assert all(t.is_cuda for t in staged.tensors)
