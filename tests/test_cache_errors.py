"""Bad arguments to NexusQuantCache and its helpers raise nexusquant.errors types whose messages
name the argument and the allowed values."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_gemma2, make_tiny_llama_config
from transformers import DynamicCache, PretrainedConfig

from nexusquant import NexusQuantCache, compress_kv_cache, errors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(key_bits=9), errors.BitsError, r"key_bits must be one of \[1, 2, 3, 4, 5, 6, 7, 8\] \(2, 3, 4 are tuned\), got 9"),
        (dict(value_bits=0), errors.BitsError, r"value_bits must be one of \[1, .*8\] \(2, 3, 4 are tuned\), got 0"),
        (dict(key_bits="3"), errors.BitsError, r"key_bits must be an integer in 1..8 \(2, 3, 4 are tuned\), got '3'"),
        (dict(window=-1), errors.InvalidArgumentError, r"window must be an integer >= 0, got -1"),
        (dict(sink_tokens=-2), errors.InvalidArgumentError, r"sink_tokens must be an integer >= 0, got -2"),
        (dict(block=0), errors.InvalidArgumentError, r"block must be an integer >= 1, got 0"),
        (dict(block=2.5), errors.InvalidArgumentError, r"block must be an integer >= 1, got 2.5"),
        (dict(seed=-1), errors.InvalidArgumentError, r"seed must be an integer in \[0, 2\*\*64\)"),
        (dict(quantize="yes"), errors.InvalidArgumentError, r"quantize must be True or False"),
        (dict(boundary_layers=3), errors.InvalidArgumentError, r"boundary_layers must be in \[0, 2\]"),
        (dict(boundary_bits=(4,)), errors.InvalidArgumentError, r"boundary_bits must be a \(key_bits, value_bits\) pair"),
        (dict(boundary_bits=(4, 12)), errors.BitsError, r"boundary_bits\[1\] \(value bits\) must be one of"),
        (dict(layer_bits={5: (2, 2)}), errors.InvalidArgumentError, r"layer_bits keys must be layer indices in \[0, 1\], got 5"),
        (dict(layer_bits={0: (2, 9)}), errors.BitsError, r"layer_bits\[0\]\[1\] \(value bits\) must be one of"),
        (dict(layer_bits=[(2, 2)]), errors.InvalidArgumentError, r"layer_bits must be a dict"),
    ],
)
def test_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        NexusQuantCache(make_tiny_llama_config(), **kwargs)


def test_bits_errors_are_value_errors():
    with pytest.raises(ValueError):
        NexusQuantCache(make_tiny_llama_config(), key_bits=9)


def test_config_without_head_information():
    with pytest.raises(errors.InvalidArgumentError, match="config must define num_hidden_layers, "
                       "num_attention_heads and head_dim or hidden_size .*lacks num_hidden_layers, "
                       "num_attention_heads, head_dim or hidden_size"):
        NexusQuantCache(PretrainedConfig())
    with pytest.raises(errors.InvalidArgumentError, match="got None"):
        NexusQuantCache(None)
    cfg = make_tiny_llama_config()
    cfg.num_attention_heads = 0
    with pytest.raises(errors.InvalidArgumentError, match="config.num_attention_heads must be a positive integer, got 0"):
        NexusQuantCache(cfg)


def test_head_dim_the_codec_cannot_take():
    cfg = make_tiny_llama_config(head_dim=60)
    with pytest.raises(errors.HeadDimError, match="config head_dim must be a multiple of 8 in \\[8, 1024\\], got 60"):
        NexusQuantCache(cfg)
    NexusQuantCache(cfg, quantize=False)  # pass-through stores any head_dim


def test_layer_bits_for_a_sliding_layer():
    config = make_tiny_gemma2().config
    with pytest.raises(errors.InvalidArgumentError, match="layer_bits\\[0\\]: layer 0 is a sliding_attention layer"):
        NexusQuantCache(config, layer_bits={0: (4, 4)})


def test_attention_mask_must_be_two_d_and_left_padded():
    cache = NexusQuantCache(make_tiny_llama_config(), 3, 2)
    with pytest.raises(errors.InvalidArgumentError, match="attention_mask must be left-padded .*rows \\[1\\]"):
        cache.set_attention_mask(torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(errors.InvalidArgumentError, match="attention_mask must be a 2-D \\(batch, seq\\) tensor"):
        cache.set_attention_mask(torch.ones(1, 1, 3, 3))


def test_batch_size_changes_are_refused():
    cfg = make_tiny_llama_config(layers=1)
    cache = NexusQuantCache(cfg, 3, 2)
    k = torch.randn(2, 2, 5, 64)
    cache.update(k, k, 0)
    with pytest.raises(errors.ShapeError, match="use batch_select_indices"):
        cache.update(k[:1], k[:1], 0)
    cache.set_attention_mask(torch.ones(3, 6))
    with pytest.raises(errors.ShapeError, match="the recorded attention mask has 3 rows but the forward has 2"):
        cache.update(k[:, :, :1], k[:, :, :1], 0)


def test_dtype_changes_are_refused():
    cache = NexusQuantCache(make_tiny_llama_config(layers=1), 3, 2)
    k = torch.randn(1, 2, 5, 64)
    cache.update(k, k, 0)
    with pytest.raises(errors.ShapeError, match="key_states must be torch.float32"):
        cache.update(k.half(), k.half(), 0)


def test_packed_view_before_any_token():
    cache = NexusQuantCache(make_tiny_llama_config(), 3, 2)
    with pytest.raises(errors.InvalidArgumentError, match="packed_view\\(\\) needs an initialized layer"):
        cache.layers[0].packed_view()


def test_compress_kv_cache_arguments():
    with pytest.raises(errors.InvalidArgumentError, match="dynamic_cache must be a transformers Cache"):
        compress_kv_cache({"keys": None})
    with pytest.raises(errors.InvalidArgumentError, match="unexpected arguments \\['windows'\\]"):
        compress_kv_cache(DynamicCache(), windows=3)
    dynamic = DynamicCache(config=make_tiny_llama_config(layers=3))
    with pytest.raises(errors.InvalidArgumentError, match="config describes 2 cache layers but dynamic_cache has 3"):
        compress_kv_cache(dynamic, config=make_tiny_llama_config(layers=2))
    with pytest.raises(errors.BitsError, match="key_bits"):
        compress_kv_cache(dynamic, key_bits=10)
