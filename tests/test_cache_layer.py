"""NexusQuantLayer storage, fed with synthetic tensors through the Cache API: per-row semantics
under left padding, what attention receives, codes written once, batch operations, crop, reset,
awkward shapes and dtypes, and ``compress_kv_cache``. (Generation with real models is in
test_cache.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    centred,
    left_pad,
    make_tiny_gemma2,
    make_tiny_llama,
    make_tiny_llama_config,
    random_prompt,
    record_codec_threads,
)
from transformers import DynamicCache

from nexusquant import NexusQuantCache, codec, compress_kv_cache
from nexusquant._hf import cache_kwarg
from nexusquant.cache import NexusQuantLayer
from nexusquant.cache import layer as cache_layer
from nexusquant.cache.persist import cache_from_bytes, cache_to_bytes

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(sink_tokens=4, window=8, block=4)


def encode(x: torch.Tensor, bits: int) -> torch.Tensor:
    return codec.encode(x, bits, 0, backend=cache_layer.CODEC_BACKEND, candidates=cache_layer.CODEC_CANDIDATES)[0]


def roundtrip(x: torch.Tensor, bits: int) -> torch.Tensor:
    c, s = codec.encode(x, bits, 0, backend=cache_layer.CODEC_BACKEND, candidates=cache_layer.CODEC_CANDIDATES)
    return codec.decode(c, s, bits=bits, seed=0, head_dim=x.shape[-1], dtype=x.dtype,
                        backend=cache_layer.CODEC_BACKEND)


def centred_roundtrip(x: torch.Tensor, bits: int, first: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """What the cache decodes for keys or values ``x`` of rows whose first coded vectors were
    ``first``: the codec's round trip of what is coded (``x`` or ``x - centre``, see
    ``conftest.centred``), plus the centre where it was centred. ``unbiased`` (values coded with
    fewer bits than the keys; keys of a layer without sinks or window): each scale multiplied by
    |r|² / <r, r̂> for the coded vector r (r̂ its codec round trip), rounded to fp16."""
    coded, use, centre = centred(x, first)
    c, s = codec.encode(coded, bits, 0, backend=cache_layer.CODEC_BACKEND, candidates=cache_layer.CODEC_CANDIDATES)
    if unbiased:
        once = codec.decode(c, s, bits=bits, seed=0, head_dim=x.shape[-1], dtype=torch.float32,
                            backend=cache_layer.CODEC_BACKEND)
        factor = (coded * coded).sum(-1) / (coded * once).sum(-1)
        s = (s.float() * factor).to(torch.float16)
    out = codec.decode(c, s, bits=bits, seed=0, head_dim=x.shape[-1], dtype=torch.float32,
                       backend=cache_layer.CODEC_BACKEND)
    # The centre is added in float32, then the vector is rounded to the model dtype once.
    return torch.where(use[..., None], out + centre.float(), out).to(x.dtype)


def states(batch: int, heads: int, length: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, heads, length, d, generator=g).to(dtype)
    v = torch.randn(batch, heads, length, d, generator=g).to(dtype)
    return k, v


def row_storage(layer: NexusQuantLayer, row: int) -> list[torch.Tensor]:
    v = layer.packed_view()
    s, c, w = v.lengths[row].tolist()
    return [v.lengths[row], v.sink_keys[row, :, :s], v.sink_values[row, :, :s],
            v.key_codes[row, :, :c], v.value_codes[row, :, :c], v.key_scales[row, :, :c],
            v.value_scales[row, :, :c], v.window_keys[row, :, :w], v.window_values[row, :, :w]]


def assert_equal_lists(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and torch.equal(x, y)


# --------------------------------------------------------------------------------------------
# per-row semantics


def test_padded_rows_store_and_return_exactly_what_each_row_alone_does():
    """Left padding is never stored; each row's storage, block boundaries and returned K/V are
    bit-identical to feeding that row alone, over a prefill, single-token steps and a chunk."""
    cfg = make_tiny_llama_config(layers=1)
    heads, d = cfg.num_key_value_heads, cfg.head_dim
    pads = [0, 9, 21]
    prefill = 30
    steps = [1] * 9 + [5, 1, 1]
    total = prefill + sum(steps)
    k_all, v_all = states(3, heads, total, d, seed=1)
    for r, p in enumerate(pads):  # garbage at pad positions must not matter
        k_all[r, :, :p] = 1e4
        v_all[r, :, :p] = -1e4
    mask = torch.ones(3, total, dtype=torch.long)
    for r, p in enumerate(pads):
        mask[r, :p] = 0

    batch = NexusQuantCache(cfg, 3, 2, **SMALL)
    alone = [NexusQuantCache(cfg, 3, 2, **SMALL) for _ in pads]
    start = 0
    for q in [prefill, *steps]:
        end = start + q
        batch.set_attention_mask(mask[:, :end])
        keys, values = batch.update(k_all[:, :, start:end], v_all[:, :, start:end], 0)
        assert keys.shape == (3, heads, end, d)
        for r, p in enumerate(pads):
            lo = max(start, p)
            if lo < end:
                ak, av = alone[r].update(k_all[r:r + 1, :, lo:end], v_all[r:r + 1, :, lo:end], 0)
                assert torch.equal(keys[r:r + 1, :, p:], ak) and torch.equal(values[r:r + 1, :, p:], av)
            assert not keys[r, :, :p].any() and not values[r, :, :p].any()
            assert_equal_lists(row_storage(batch.layers[0], r), row_storage(alone[r].layers[0], 0))
        start = end
    assert batch.get_seq_length() == total
    lengths = batch.layers[0].packed_view().lengths.tolist()
    assert [sum(row) for row in lengths] == [total - p for p in pads]
    assert len({row[1] for row in lengths}) == 3  # different coded counts per row


def test_attention_sees_exact_sinks_window_and_new_tokens_and_decoded_codes():
    cfg = make_tiny_llama_config(layers=1)
    heads, d = cfg.num_key_value_heads, cfg.head_dim
    cache = NexusQuantCache(cfg, 4, 3, sink_tokens=2, window=4, block=4)
    k, v = states(1, heads, 21, d, seed=2)
    keys, values = cache.update(k[:, :, :20], v[:, :, :20], 0)
    assert torch.equal(keys, k[:, :, :20]) and torch.equal(values, v[:, :, :20])  # prompt: exact
    # 18 tokens after the sinks: 12 coded (3 blocks), 6 left in the window
    assert cache.layers[0].packed_view().lengths.tolist() == [[2, 12, 6]]
    keys, values = cache.update(k[:, :, 20:], v[:, :, 20:], 0)
    assert torch.equal(keys[:, :, :2], k[:, :, :2])
    # Exact sinks and window: the keys keep the codec's scale; K4V3: the values carry the unbiased
    # one (see test_values_with_fewer_bits_and_keys_of_fully_coded_layers_get_the_unbiased_scale).
    assert torch.equal(keys[:, :, 2:14], centred_roundtrip(k[:, :, 2:14], 4, k[:, :, 2:14]))
    assert torch.equal(values[:, :, 2:14], centred_roundtrip(v[:, :, 2:14], 3, v[:, :, 2:14], unbiased=True))
    assert torch.equal(keys[:, :, 14:], k[:, :, 14:]) and torch.equal(values[:, :, 14:], v[:, :, 14:])


def test_codes_are_written_once_from_the_exact_tokens():
    cfg = make_tiny_llama_config(layers=1)
    heads, d = cfg.num_key_value_heads, cfg.head_dim
    cache = NexusQuantCache(cfg, 3, 2, sink_tokens=1, window=3, block=2)
    k, v = states(1, heads, 40, d, seed=3)
    cache.update(k[:, :, :7], v[:, :, :7], 0)
    previous = None
    for t in range(7, 40):
        cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1], 0)
        view = cache.layers[0].packed_view()
        s, c, w = view.lengths[0].tolist()
        assert s == 1 and 3 <= w < 5 and c % 2 == 0
        codes = view.key_codes[:, :, :c].clone()
        # The first coded block (tokens 1, 2) fixed the centre.
        assert torch.equal(codes, encode(centred(k[:, :, 1:1 + c], k[:, :, 1:3])[0], 3))
        assert torch.equal(view.value_codes[:, :, :c], encode(centred(v[:, :, 1:1 + c], v[:, :, 1:3])[0], 2))
        if previous is not None:
            assert torch.equal(codes[:, :, : previous.shape[2]], previous)
        previous = codes


def test_block_one_window_zero_codes_every_token_on_arrival():
    cfg = make_tiny_llama_config(layers=1)
    cache = NexusQuantCache(cfg, 2, 2, sink_tokens=0, window=0, block=1)
    k, v = states(2, cfg.num_key_value_heads, 6, cfg.head_dim, seed=4)
    cache.update(k[:, :, :5], v[:, :, :5], 0)
    assert cache.layers[0].packed_view().lengths.tolist() == [[0, 5, 0]] * 2
    keys, _ = cache.update(k[:, :, 5:], v[:, :, 5:], 0)
    assert torch.equal(keys[:, :, :5], centred_roundtrip(k[:, :, :5], 2, k[:, :, :5], unbiased=True))
    assert cache.memory_report().allocated["window"] == 0
    assert cache.memory_report().allocated["sinks"] == 0


def test_rows_not_yet_real_hold_nothing():
    """A row whose positions are all padding so far stores nothing and returns zeros."""
    cfg = make_tiny_llama_config(layers=1)
    cache = NexusQuantCache(cfg, 3, 2, **SMALL)
    k, v = states(2, cfg.num_key_value_heads, 6, cfg.head_dim, seed=5)
    mask = torch.tensor([[1] * 6, [0, 0, 0, 0, 1, 1]])
    cache.set_attention_mask(mask[:, :3])
    keys, _ = cache.update(k[:, :, :3], v[:, :, :3], 0)
    assert not keys[1].any() and cache.layers[0].tokens_per_row() == [3, 0]
    cache.set_attention_mask(mask)
    keys, _ = cache.update(k[:, :, 3:], v[:, :, 3:], 0)
    assert torch.equal(keys[1, :, 4:], k[1, :, 4:]) and cache.layers[0].tokens_per_row() == [6, 2]


# --------------------------------------------------------------------------------------------
# batch operations, crop, reset


def filled(batch=3, seed=6, **settings) -> tuple[NexusQuantCache, torch.Tensor, torch.Tensor]:
    cfg = make_tiny_llama_config(layers=2)
    cache = NexusQuantCache(cfg, **({"key_bits": 3, "value_bits": 2, **SMALL} | settings))
    k, v = states(batch, cfg.num_key_value_heads, 26, cfg.head_dim, seed=seed)
    mask = torch.ones(batch, 26, dtype=torch.long)
    mask[1, :5] = 0
    cache.set_attention_mask(mask)
    for layer in range(2):
        cache.update(k, v, layer)
    return cache, k, v


def test_reorder_select_and_repeat_move_whole_rows():
    cache, _, _ = filled()
    rows = [[row_storage(layer, r) for r in range(3)] for layer in cache.layers]

    cache.reorder_cache(torch.tensor([2, 1, 1]))
    for i, layer in enumerate(cache.layers):
        for r, src in enumerate([2, 1, 1]):
            assert_equal_lists(row_storage(layer, r), rows[i][src])
    assert cache._pads.tolist() == [0, 5, 5]

    cache.batch_select_indices(torch.tensor([False, True, False]))
    assert cache.layers[0].batch == 1 and cache._pads.tolist() == [5]
    assert_equal_lists(row_storage(cache.layers[1], 0), rows[1][1])

    cache.batch_repeat_interleave(2)
    for r in range(2):
        assert_equal_lists(row_storage(cache.layers[0], r), rows[0][1])
    assert cache._pads.tolist() == [5, 5]


def test_select_indices_then_generation_continues_per_row():
    """After batch_select_indices the kept rows accept the next forward with the kept mask."""
    cache, k, v = filled()
    cache.batch_select_indices(torch.tensor([1]))
    nxt = torch.randn(1, k.shape[1], 1, k.shape[-1])
    mask = torch.ones(1, 27, dtype=torch.long)
    mask[0, :5] = 0
    cache.set_attention_mask(mask)
    keys, _ = cache.update(nxt, nxt, 0)
    assert keys.shape[2] == 27 and not keys[0, :, :5].any()


@pytest.mark.parametrize("remove", [2, 7, 15, 26])
def test_crop_removes_newest_tokens_per_row(remove):
    cache, _, _ = filled()
    before = [[int(x) for x in row] for row in cache.layers[0].packed_view().lengths.tolist()]
    cache.crop(-remove)
    assert cache.get_seq_length() == 26 - remove
    for (s, c, w), (s2, c2, w2) in zip(before, cache.layers[0].packed_view().lengths.tolist()):
        left = max(0, s + c + w - remove)
        assert s2 + c2 + w2 == left
        assert (s2, c2) == (min(s, left), min(c, max(0, left - s)))
    assert cache.layers[0].packed_view().seq_length == 26 - remove


def test_crop_accepts_the_legacy_positive_length():
    cache, _, _ = filled()
    cache.crop(20)
    assert cache.get_seq_length() == 20
    assert cache.layers[0].tokens_per_row() == [20, 15, 20]


def test_passthrough_crop_then_continue_equals_dynamic_cache():
    model = make_tiny_llama()
    ids = random_prompt(20, seed=11)
    exact, ours = DynamicCache(config=model.config), NexusQuantCache(model.config, quantize=False)
    key = cache_kwarg(model)
    for cache in (exact, ours):
        model(input_ids=ids, **{key: cache})
        cache.crop(-4)
    nxt = ids[:, 16:]
    a = model(input_ids=nxt, position_ids=torch.arange(16, 20)[None], **{key: exact}).logits
    b = model(input_ids=nxt, position_ids=torch.arange(16, 20)[None], **{key: ours}).logits
    assert torch.equal(a, b)


def test_reset_empties_the_cache_and_it_works_again():
    model = make_tiny_llama()
    ids = random_prompt(30, seed=12)
    cache = NexusQuantCache(model.config, 3, 2, **SMALL)
    key = cache_kwarg(model)
    first = model.generate(ids, max_new_tokens=5, do_sample=False, **{key: cache})
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.memory_report().total == 0
    again = model.generate(ids, max_new_tokens=5, do_sample=False, **{key: cache})
    assert torch.equal(first, again)


# --------------------------------------------------------------------------------------------
# shapes, dtypes, models


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
def test_head_dims(head_dim):
    cfg = make_tiny_llama_config(head_dim=head_dim, layers=1)
    cache = NexusQuantCache(cfg, 4, 2, sink_tokens=1, window=2, block=2)
    k, v = states(2, cfg.num_key_value_heads, 9, head_dim, seed=head_dim)
    cache.update(k[:, :, :8], v[:, :, :8], 0)
    keys, values = cache.update(k[:, :, 8:], v[:, :, 8:], 0)
    view = cache.layers[0].packed_view()
    assert view.key_codes.shape[-1] == head_dim * 4 // 8 and view.value_codes.shape[-1] == head_dim * 2 // 8
    assert view.lengths.tolist() == [[1, 6, 2]] * 2
    coded = slice(1, 7)
    err_k = (keys[:, :, coded] - k[:, :, coded]).pow(2).mean() / k[:, :, coded].pow(2).mean()
    err_v = (values[:, :, coded] - v[:, :, coded]).pow(2).mean() / v[:, :, coded].pow(2).mean()
    assert err_k < 10 ** (-1.8) and err_v < 10 ** (-0.8)  # about 20 dB at 4 bits, 10 dB at 2 bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_model_dtypes(dtype):
    model = make_tiny_llama(dtype=dtype)
    ids = random_prompt(18, seed=13)
    key = cache_kwarg(model)
    ref = model.generate(ids, max_new_tokens=6, do_sample=False, **{key: DynamicCache(config=model.config)})
    same = model.generate(ids, max_new_tokens=6, do_sample=False,
                          **{key: NexusQuantCache(model.config, quantize=False)})
    assert torch.equal(same, ref)
    cache = NexusQuantCache(model.config, 3, 2, **SMALL)
    model.generate(ids, max_new_tokens=6, do_sample=False, **{key: cache})
    view = cache.layers[0].packed_view()
    assert view.sink_keys.dtype == dtype and view.window_values.dtype == dtype
    assert view.key_scales.dtype == torch.float16 and int(view.lengths[0, 1]) > 0
    report = cache.memory_report()
    assert report.dtype == dtype
    assert report.baseline_bytes == report.fp16_baseline_bytes * (4 if dtype == torch.float32 else 2) // 2


def test_mqa_single_kv_head():
    model = make_tiny_llama(num_kv_heads=1, num_heads=4)
    ids, mask = left_pad([random_prompt(n, seed=n) for n in (17, 6)])
    key = cache_kwarg(model)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                         **{key: DynamicCache(config=model.config)})
    cache = NexusQuantCache(model.config, quantize=False)
    with cache.attach(model):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, **{key: cache})
    assert torch.equal(out, ref)
    cache = NexusQuantCache(model.config, 3, 2, **SMALL)
    with cache.attach(model):
        model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, **{key: cache})
    assert cache.layers[0].packed_view().key_codes.shape[1] == 1


def test_one_token_prompts():
    model = make_tiny_llama()
    key = cache_kwarg(model)
    one = random_prompt(1, seed=14)
    cache = NexusQuantCache(model.config, 3, 2, sink_tokens=0, window=0, block=1)
    out = model.generate(one, max_new_tokens=4, do_sample=False, **{key: cache})
    assert out.shape == (1, 5) and cache.layers[0].packed_view().lengths.tolist() == [[0, 4, 0]]
    ids, mask = left_pad([one, random_prompt(4, seed=15)])
    cache = NexusQuantCache(model.config, 3, 2, sink_tokens=1, window=0, block=1)
    with cache.attach(model):
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, **{key: cache})
    assert cache.layers[1].packed_view().lengths.tolist() == [[1, 2, 0], [1, 5, 0]]


def test_per_layer_bits_and_boundary_layers():
    cfg = make_tiny_llama_config(layers=5)
    cache = NexusQuantCache(cfg, 3, 2, boundary_layers=1, layer_bits={2: (2, 4)})
    bits = [(layer.key_bits, layer.value_bits) for layer in cache.layers]
    assert bits == [(4, 4), (3, 2), (2, 4), (3, 2), (4, 4)]
    cache = NexusQuantCache(cfg, 3, 2, boundary_layers=2, boundary_bits=(8, 5))
    assert [(layer.key_bits, layer.value_bits) for layer in cache.layers] == [(8, 5)] * 2 + [(3, 2)] + [(8, 5)] * 2
    k, v = states(1, cfg.num_key_value_heads, 70, cfg.head_dim, seed=16)
    for i in range(5):
        cache.update(k, v, i)
    assert cache.layers[0].packed_view().key_codes.shape[-1] == 64 * 8 // 8
    assert cache.layers[2].packed_view().value_codes.shape[-1] == 64 * 2 // 8


def test_packed_view_describes_the_storage():
    cache, _, _ = filled()
    view = cache.layers[1].packed_view()
    b, h, d = 3, 2, 64
    assert view.key_codes.shape[:2] == (b, h) and view.key_codes.dtype == torch.uint8
    assert view.key_scales.shape == view.key_codes.shape[:3] and view.key_scales.dtype == torch.float16
    assert view.sink_keys.shape == (b, h, 4, d) and view.window_keys.shape[:2] == (b, h)
    assert view.lengths.shape == (b, 3) and view.lengths.dtype == torch.int32
    assert (view.key_bits, view.value_bits, view.seed, view.head_dim, view.seq_length) == (3, 2, 0, d, 26)
    assert view.key_codes is cache.layers[1].key_codes  # not a copy


# --------------------------------------------------------------------------------------------
# compress_kv_cache


def test_compress_kv_cache_equals_a_cache_filled_directly():
    model = make_tiny_llama()
    key = cache_kwarg(model)
    ids, mask = left_pad([random_prompt(n, seed=20 + n) for n in (33, 24)])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    dynamic = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **{key: dynamic})
    direct = NexusQuantCache(model.config, 3, 2, **SMALL)
    direct.set_attention_mask(mask)
    model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **{key: direct})
    for config in (model.config, None):
        converted = compress_kv_cache(dynamic, 3, 2, config=config, attention_mask=mask, **SMALL)
        for a, b in zip(converted.layers, direct.layers):
            for r in range(2):
                assert_equal_lists(row_storage(a, r), row_storage(b, r))
    assert dynamic.layers[0].keys.shape[2] == 33  # the source is untouched
    # both continue the same way
    outs = []
    for cache in (converted, direct):
        with cache.attach(model):
            outs.append(model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                       **{key: cache}))
    assert torch.equal(outs[0], outs[1])


def test_compress_kv_cache_copies_sliding_layers():
    model = make_tiny_gemma2(sliding_window=8)
    key = cache_kwarg(model)
    dynamic = DynamicCache(config=model.config)
    model(input_ids=random_prompt(20, seed=30), **{key: dynamic})
    for config in (model.config, None):
        cache = compress_kv_cache(dynamic, 4, 4, config=config, **SMALL)
        for i in (0, 2):
            ours, theirs = cache.layers[i], dynamic.layers[i]
            assert type(ours) is type(theirs) and torch.equal(ours.keys, theirs.keys)
            assert ours.keys.data_ptr() != theirs.keys.data_ptr()
        assert isinstance(cache.layers[1], NexusQuantLayer)
        assert cache.get_seq_length() == 20


def test_early_initialization_and_empty_forwards():
    cfg = make_tiny_llama_config(layers=2)
    cache = NexusQuantCache(cfg, 3, 2, **SMALL)
    cache.early_initialization(batch_size=2, num_heads=2, head_dim=64, dtype=torch.float16,
                               device=torch.device("cpu"))
    assert cache.is_initialized and cache.get_seq_length() == 0
    empty = torch.zeros(2, 2, 0, 64, dtype=torch.float16)
    keys, values = cache.update(empty, empty, 0)
    assert keys.shape == (2, 2, 0, 64) and values.dtype == torch.float16
    k, v = states(2, 2, 3, 64, seed=40, dtype=torch.float16)
    keys, _ = cache.update(k, v, 0)
    assert torch.equal(keys, k) and cache.memory_report().tokens_per_row == (3, 3)


@pytest.mark.gpu
def test_cuda_cache_generates_and_reports_the_allocator_delta():
    model = make_tiny_llama(dtype=torch.float16).cuda()
    key = cache_kwarg(model)
    ids, mask = left_pad([random_prompt(n, seed=n) for n in (40, 25)])
    ids, mask = ids.cuda(), mask.cuda()
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                         **{key: DynamicCache(config=model.config)})
    def run(quantize):
        cache = NexusQuantCache(model.config, 3, 2, quantize=quantize, **SMALL)
        with cache.attach(model):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, **{key: cache})
        return out, cache.memory_report(), cache.layers[0].packed_view()

    out, report, view = run(False)
    assert torch.equal(out, ref)
    assert report.cuda_allocated_delta is not None and report.cuda_allocated_delta >= report.total
    out, report, view = run(True)
    assert view.key_codes.is_cuda and int(view.lengths[0, 1]) > 0
    assert report.cuda_allocated_delta is not None and report.cuda_allocated_delta >= report.total


@pytest.mark.parametrize("key_bits, value_bits", [(3, 2), (4, 2), (4, 3), (3, 3), (2, 2), (2, 3)])
@pytest.mark.parametrize("sinks, window", [(0, 0), (0, 8), (2, 0)])
def test_values_with_fewer_bits_and_keys_of_fully_coded_layers_get_the_unbiased_scale(
    key_bits, value_bits, sinks, window
):
    cfg = make_tiny_llama_config(head_dim=64, num_kv_heads=2, layers=1)
    cache = NexusQuantCache(cfg, key_bits, value_bits, sink_tokens=sinks, window=window, block=1)
    k, v = states(2, 2, sinks + 50 + window, 64, seed=9)
    coded = slice(sinks, sinks + 50)  # the tokens between the sinks and the window
    v[0, 0, sinks + 3] = float("nan")  # a NaN vector keeps its NaN scale
    v[1, 1, sinks + 5] = 0.0  # a zero vector keeps its zero scale
    k[1, 0, sinks + 7] = float("inf")
    cache.update(k, v, 0)
    view = cache.layers[0].packed_view()
    assert view.lengths.tolist() == [[sinks, 50, window]] * 2

    def check(x, codes, stored, bits, unbiased, special):
        x = x[:, :, coded]
        finite = torch.isfinite(x).all(-1, keepdim=True)  # the centre: mean of the finite vectors
        r, _, _ = centred(x, torch.where(finite, x, 0).sum(2, keepdim=True) / finite.sum(2, keepdim=True))
        ref_codes, ref_scales = codec.encode(r, bits, 0, backend=cache_layer.CODEC_BACKEND, candidates=cache_layer.CODEC_CANDIDATES)
        assert torch.equal(codes[:, :, :50], ref_codes)  # the codes are the codec's
        scales = stored[:, :, :50].abs()
        decoded = codec.decode(codes[:, :, :50], scales, bits=bits, seed=0, head_dim=64,
                               dtype=torch.float32, backend=cache_layer.CODEC_BACKEND)
        ok = torch.ones(2, 2, 50, dtype=torch.bool)
        for at in special:
            ok[at] = False
        along = ((decoded * r).sum(-1) / (r * r).sum(-1))[ok]  # <r̂, r> / |r|² of the coded vectors
        if unbiased:
            torch.testing.assert_close(along, torch.ones_like(along), rtol=0, atol=2e-3)
            torch.testing.assert_close(scales[~ok], ref_scales.abs()[~ok], rtol=0, atol=0, equal_nan=True)
        else:
            torch.testing.assert_close(scales, ref_scales.abs(), rtol=0, atol=0, equal_nan=True)
            assert along.mean() < 1 - 0.5 / 10 ** (6.02 * bits / 10)  # LS shrinks by ~1/SQNR

    # Keys: unbiased only when the layer keeps no exact tokens; values: when keys have more bits.
    check(k, view.key_codes, view.key_scales, key_bits, sinks == window == 0, [(1, 0, 7)])
    assert torch.isnan(view.key_scales[1, 0, 7])
    check(v, view.value_codes, view.value_scales, value_bits, value_bits < key_bits, [(0, 0, 3), (1, 1, 5)])
    assert torch.isnan(view.value_scales[0, 0, 3]) and view.value_scales[1, 1, 5] == 0


def test_keys_with_a_common_component_are_coded_relative_to_the_row_centre():
    """Post-RoPE keys share a large component; the first coded tokens of a row fix its centre and
    later keys are coded relative to it where that makes them shorter (sign bit of the scale)."""
    cfg = make_tiny_llama_config(head_dim=64, num_kv_heads=2, layers=1)
    k, v = states(2, 2, 70, 64, seed=12)
    offset = torch.linspace(-3, 3, 64)
    k = k + offset  # a common component 3x the keys' own spread
    k[0, 1, 0] = -4 * offset  # a key unlike the others (a sink) keeps its own norm
    k[1, 0, 2] = float("nan")  # a NaN key neither moves the centre nor gets centred
    cache = NexusQuantCache(cfg, 3, 2, sink_tokens=0, window=4, block=8)
    cache.update(k[:, :, :40], v[:, :, :40], 0)  # codes tokens 0..32 (4 blocks): fixes the centre
    layer = cache.layers[0]
    finite = k[:, :, :32].clone()
    finite[1, 0, 2] = 0
    want_centre = finite.sum(2) / torch.tensor([[32, 32], [31, 32]])[..., None]
    torch.testing.assert_close(layer.key_means, want_centre, rtol=0, atol=1e-6)
    for t in range(40, 70):  # decode steps code later blocks against the same centre
        cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1], 0)
    torch.testing.assert_close(layer.key_means, want_centre, rtol=0, atol=1e-6)
    view = layer.packed_view()
    c = int(view.lengths[0, 1])
    assert c == 64
    flags = view.key_scales[:, :, :c].view(torch.int16) < 0
    shifted = (k[:, :, :c] - layer.key_means[:, :, None]).norm(dim=-1)
    assert torch.equal(flags, shifted < k[:, :, :c].norm(dim=-1))
    assert not flags[0, 1, 0] and not flags[1, 0, 2] and flags.float().mean() > 0.9
    assert torch.isnan(view.key_scales[1, 0, 2])
    keys, _ = cache.update(k[:, :, 69:70], v[:, :, 69:70], 0)  # nothing new coded by this step
    seq = keys.shape[2]
    decoded = keys[:, :, seq - 71 + 0 : seq - 71 + c]
    err = (decoded - k[:, :, :c]).float().norm(dim=-1)
    err[1, 0, 2] = 0
    plain = roundtrip(k[:, :, :c], 3)
    plain_err = (plain - k[:, :, :c]).norm(dim=-1)
    plain_err[1, 0, 2] = 0
    # Centred keys are coded with the error of their own, much smaller, spread.
    assert err.sum() < 0.5 * plain_err.sum()
    assert torch.isnan(decoded[1, 0, 2]).all()
    # Loaded back from bytes, the cache holds the same centre and flags and decodes the same keys.
    again = cache_from_bytes(cache_to_bytes(cache), cfg)
    assert torch.equal(again.layers[0].key_means, layer.key_means)
    assert torch.equal(again.layers[0].key_scales.view(torch.int16)[:, :, :c], view.key_scales.view(torch.int16)[:, :, :c])
    k2, _ = again.update(k[:, :, 69:70], v[:, :, 69:70], 0)
    torch.testing.assert_close(k2[:, :, : seq - 1], keys[:, :, : seq - 1], rtol=0, atol=0, equal_nan=True)


def test_codec_calls_of_the_cache_use_the_configured_threads(monkeypatch):
    seen = record_codec_threads(monkeypatch, "encode_groups", "decode_groups")
    cfg = make_tiny_llama_config(layers=1)
    k, v = states(1, cfg.num_key_value_heads, 12, cfg.head_dim, seed=13)
    for threads in (1, 2):
        monkeypatch.setattr(cache_layer, "CODEC_THREADS", threads)
        seen.clear()
        cache = NexusQuantCache(cfg, 3, 2, sink_tokens=0, window=0, block=1)
        cache.update(k[:, :, :10], v[:, :, :10], 0)
        cache.update(k[:, :, 10:11], v[:, :, 10:11], 0)
        assert seen and {t for _, t in seen} == {threads}
