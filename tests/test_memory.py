"""The KV memory calculator (nexusquant.memory) and its model/GPU tables (nexusquant.specs).

Expected figures are computed by hand in the comments; none of these tests needs the Rust
extension except test_measured_codec_bytes, which skips without it.
"""

from __future__ import annotations

import json
import re
import struct
import sys
import types

import pytest

from nexusquant import memory, specs
from nexusquant.errors import BitsError, HeadDimError, InvalidArgumentError
from nexusquant.memory import (
    compressed_bytes_per_token,
    format_bytes,
    kv_cache_bytes,
    parse_bytes,
    parse_tokens,
    savings_report,
)

GIB = 2**30


# --------------------------------------------------------------------------------------------
# kv_cache_bytes


def test_mistral_7b_reference_figures():
    # 32 layers x 8 KV heads x 128 head_dim x 2 (K and V) x 2 bytes = 131,072 bytes per token
    assert kv_cache_bytes(32, 8, 128, 1) == 131_072
    assert kv_cache_bytes(32, 8, 128, 128_000) == 16_777_216_000
    report = savings_report("Mistral-7B", 128_000)
    assert report.kv_bytes_per_token == 131_072
    assert report.kv_bytes == 16_777_216_000


def test_smollm2_135m_per_token():
    assert kv_cache_bytes(30, 3, 64, 1) == 30 * 3 * 64 * 2 * 2 == 23_040
    assert savings_report("SmolLM2-135M", 1000).kv_bytes == 23_040_000


def test_gemma2_sliding_layers_capped_at_window():
    spec = specs.MODELS["Gemma-2-2B"]
    assert spec.head_dim == 256 and spec.num_kv_heads == 4 and spec.sliding_window == 4096
    assert spec.layer_types.count("sliding_attention") == 13
    assert spec.layer_types[:2] == ("sliding_attention", "full_attention")
    per_layer_token = 2 * 4 * 256 * 2  # 4,096 bytes
    # 13 full layers hold all 128,000 tokens, 13 sliding layers only 4,096
    expected = per_layer_token * (13 * 128_000 + 13 * 4096)
    assert expected == 7_033_847_808
    assert savings_report("Gemma-2-2B", 128_000).kv_bytes == expected
    assert kv_cache_bytes(26, 4, 256, 128_000, sliding_window=4096,
                          layer_types=spec.layer_types) == expected
    # below the window every layer holds every token
    assert kv_cache_bytes(26, 4, 256, 4096, sliding_window=4096,
                          layer_types=spec.layer_types) == 26 * per_layer_token * 4096
    # past it only the 13 full layers grow
    grow = (kv_cache_bytes(26, 4, 256, 8192, sliding_window=4096, layer_types=spec.layer_types)
            - kv_cache_bytes(26, 4, 256, 4096, sliding_window=4096,
                             layer_types=spec.layer_types))
    assert grow == 13 * per_layer_token * 4096


def test_sliding_window_alone_means_every_layer_slides():
    assert kv_cache_bytes(2, 1, 8, 100, sliding_window=10) == 2 * 2 * 10 * 8 * 2


def test_batch_and_dtype_scale_linearly():
    base = kv_cache_bytes(4, 2, 64, 1000)
    assert kv_cache_bytes(4, 2, 64, 1000, batch=3) == 3 * base
    assert kv_cache_bytes(4, 2, 64, 1000, 4) == 2 * base
    assert kv_cache_bytes(4, 2, 64, 1000, 1) == base // 2
    assert kv_cache_bytes(4, 2, 64, 0) == 0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_layers": 0}, "num_layers"),
        ({"num_kv_heads": -1}, "num_kv_heads"),
        ({"head_dim": 1.5}, "head_dim"),
        ({"seq_len": -1}, "seq_len"),
        ({"seq_len": True}, "seq_len"),
        ({"dtype_bytes": 3}, "dtype_bytes must be one of [1, 2, 4]"),
        ({"batch": 0}, "batch"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"layer_types": ["full_attention"]}, "layer_types must be a sequence of num_layers=2"),
        ({"layer_types": ["full_attention", "mamba"]}, "'mamba'"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_window must be"),
    ],
)
def test_kv_cache_bytes_validation_names_the_argument(kwargs, named):
    args = {"num_layers": 2, "num_kv_heads": 1, "head_dim": 8, "seq_len": 4, **kwargs}
    with pytest.raises(InvalidArgumentError, match=re.escape(named)):
        kv_cache_bytes(**args)


def test_layer_types_error_lists_allowed_values():
    with pytest.raises(InvalidArgumentError) as err:
        kv_cache_bytes(1, 1, 8, 4, layer_types=["linear_attention"])
    assert "['full_attention', 'sliding_attention']" in str(err.value)


# --------------------------------------------------------------------------------------------
# compressed sizes


def test_compressed_bytes_per_token():
    assert compressed_bytes_per_token(128, 4, 4) == (64 + 2) * 2 == 132
    assert compressed_bytes_per_token(128, 3, 2) == (48 + 2) + (32 + 2) == 84
    assert compressed_bytes_per_token(64, 2, 2) == (16 + 2) * 2 == 36
    assert compressed_bytes_per_token(80, 3, 3) == (30 + 2) * 2


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        ((100, 4, 4), HeadDimError, "head_dim"),
        ((128, 9, 4), BitsError, "key_bits"),
        ((128, 4, 0), BitsError, "value_bits"),
    ],
)
def test_compressed_bytes_validation(args, error, named):
    with pytest.raises(error, match=named):
        compressed_bytes_per_token(*args)


# --------------------------------------------------------------------------------------------
# parsing and formatting


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("32768", 32768), ("128k", 128_000), ("128K", 128_000), ("128Ki", 131_072),
     ("1M", 1_000_000), ("1Mi", 1_048_576), ("1.5k", 1500), ("128,000", 128_000),
     ("128_000", 128_000)],
)
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["", "12x", "-5", "1.5", "0.0001k", "k"])
def test_parse_tokens_rejects(text):
    with pytest.raises(InvalidArgumentError, match="seq must be a token count"):
        parse_tokens(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("24GB", 24 * 10**9), ("80GiB", 80 * GIB), ("80 gib", 80 * GIB), ("512MiB", 512 * 2**20),
     ("1.5TB", 1_500_000_000_000), ("1000", 1000), ("64B", 64)],
)
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["24G", "abc", "24 GBs", ""])
def test_parse_bytes_requires_a_unit_it_knows(text):
    with pytest.raises(InvalidArgumentError, match="GiB"):
        parse_bytes(text)


def test_format_bytes_labels_both_units():
    assert format_bytes(16_777_216_000) == "16.78 GB = 15.62 GiB"
    assert format_bytes(80 * GIB, "GB") == "85.90 GB = 80.00 GiB"
    assert format_bytes(23_040_000) == "23.04 MB = 21.97 MiB"
    assert format_bytes(512) == "512 B"


def test_report_table_labels_every_size():
    text = savings_report("Mistral-7B", 128_000, gpu="H100").format()
    assert "GB = 10^9 bytes, GiB = 2^30 bytes" in text
    sizes = re.findall(r"(?<![\w.-])\d[\d,]*\.\d+ ?([A-Za-z]*)", text)
    assert sizes, text
    units = {"B", "kB", "KiB", "MB", "MiB", "GB", "GiB", "TB", "TiB", "x"}
    assert set(sizes) <= units, sizes  # every decimal figure is a size with a unit or a ratio
    # the decimal and binary figure of each size sit side by side
    assert "16.78 GB = 15.62 GiB" in text
    assert "85.90 GB = 80.00 GiB" in text


# --------------------------------------------------------------------------------------------
# built-in tables


@pytest.mark.parametrize("name", list(specs.MODELS))
def test_builtin_param_counts_match_the_dense_formula(name):
    spec = specs.MODELS[name]
    assert spec.param_basis == "published"
    assert specs.estimate_param_count(specs.builtin_config(name)) == spec.param_count
    assert spec.weights_bytes == 2 * spec.param_count


def test_builtin_shapes():
    shapes = {n: (m.num_layers, m.num_kv_heads, m.head_dim) for n, m in specs.MODELS.items()}
    assert shapes == {
        "Mistral-7B": (32, 8, 128),
        "Llama-3-8B": (32, 8, 128),
        "Llama-3.1-70B": (80, 8, 128),
        "Llama-3.1-405B": (126, 8, 128),
        "Qwen2.5-7B": (28, 4, 128),
        "Gemma-2-2B": (26, 4, 256),
        "SmolLM2-135M": (30, 3, 64),
        "TinyLlama-1.1B": (22, 4, 64),
    }
    assert all(m.layer_types.count("sliding_attention") == 0
               for n, m in specs.MODELS.items() if n != "Gemma-2-2B")


def test_gpu_table_reads_marketed_gb_as_gib():
    assert specs.GPUS["H100"].bytes == 80 * GIB
    assert specs.GPUS["RTX 3090"].bytes == 24 * GIB
    assert specs.GPUS["H200"].bytes == 141 * GIB
    assert set(specs.GPUS) == {"RTX 3090", "A10G", "L4", "A100-40GB", "A100-80GB", "H100",
                               "H200", "B200"}
    for g in specs.GPUS.values():
        assert g.marketed_unit == "GiB"
        assert g.bytes == int(g.marketed.removesuffix("GB")) * GIB


@pytest.mark.parametrize(
    ("text", "name"),
    [("h100", "H100"), ("NVIDIA H100 80GB", "H100"), ("a100-80gb", "A100-80GB"),
     ("rtx3090", "RTX 3090"), ("GeForce RTX 3090", "RTX 3090")],
)
def test_gpu_names_are_forgiving(text, name):
    assert specs.gpu_spec(text).name == name


@pytest.mark.parametrize(
    ("text", "name"),
    [("mistral-7b", "Mistral-7B"), ("meta-llama/Llama-3.1-70B", "Llama-3.1-70B"),
     ("SmolLM2-135M-Instruct", "SmolLM2-135M"), ("qwen2.5_7b", "Qwen2.5-7B")],
)
def test_model_names_are_forgiving(text, name):
    assert specs.model_spec(text).name == name


def test_unknown_names_suggest_close_matches():
    with pytest.raises(InvalidArgumentError, match="did you mean Mistral-7B"):
        specs.model_spec("Mistral-8B")
    with pytest.raises(InvalidArgumentError, match="did you mean H100"):
        specs.gpu_spec("H10")
    with pytest.raises(InvalidArgumentError) as err:
        specs.model_spec("completely-unrelated")
    assert "did you mean" not in str(err.value)
    assert "'Llama-3.1-405B'" in str(err.value) and "config.json" in str(err.value)


def test_missing_config_path():
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        specs.model_spec("nowhere/config.json")


# --------------------------------------------------------------------------------------------
# config.json and model folders


def write_config(tmp_path, cfg, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def test_config_defaults_kv_heads_and_head_dim(tmp_path):
    path = write_config(tmp_path, {"num_hidden_layers": 4, "num_attention_heads": 8,
                                   "hidden_size": 512})
    spec = specs.model_spec(path)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (4, 8, 64)
    assert spec.layer_types == ("full_attention",) * 4
    assert spec.param_count is None and "lacks" in spec.param_basis
    assert savings_report(str(path), 10).kv_bytes == 4 * 8 * 64 * 2 * 2 * 10


def test_config_missing_fields_are_named(tmp_path):
    path = write_config(tmp_path, {"hidden_size": 512, "num_key_value_heads": 2})
    with pytest.raises(InvalidArgumentError) as err:
        specs.model_spec(path)
    assert "['num_hidden_layers', 'num_attention_heads']" in str(err.value)


def test_config_bad_values(tmp_path):
    path = write_config(tmp_path, {"num_hidden_layers": 0, "num_key_value_heads": 2,
                                   "head_dim": 64})
    with pytest.raises(InvalidArgumentError, match="num_hidden_layers must be a positive"):
        specs.model_spec(path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="cannot read .*bad.json"):
        specs.model_spec(bad_json)


def test_gemma2_config_alternates(tmp_path):
    path = write_config(tmp_path, specs.builtin_config("Gemma-2-2B"))
    spec = specs.model_spec(path)
    builtin = specs.MODELS["Gemma-2-2B"]
    assert spec.layer_types == builtin.layer_types
    assert spec.param_count == builtin.param_count  # estimate equals the published count
    assert spec.param_basis.startswith("estimated")


def test_sliding_window_pattern_and_layer_types(tmp_path):
    cfg = {"num_hidden_layers": 6, "num_key_value_heads": 1, "head_dim": 64,
           "sliding_window": 512, "sliding_window_pattern": 3}
    spec = specs.model_spec(write_config(tmp_path, cfg))
    assert spec.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
    cfg = {"num_hidden_layers": 2, "num_key_value_heads": 1, "head_dim": 64,
           "sliding_window": 512, "layer_types": ["attention", "sliding_attention"]}
    spec = specs.model_spec(write_config(tmp_path, cfg))
    assert spec.layer_types == ("full_attention", "sliding_attention")
    cfg["layer_types"] = ["full_attention", "linear_attention"]
    with pytest.raises(InvalidArgumentError, match="linear_attention"):
        specs.model_spec(write_config(tmp_path, cfg))
    cfg["layer_types"] = ["sliding_attention", "sliding_attention"]
    cfg["sliding_window"] = None
    with pytest.raises(InvalidArgumentError, match="sliding_window"):
        specs.model_spec(write_config(tmp_path, cfg))


def test_qwen2_sliding_window_rules(tmp_path):
    cfg = {"model_type": "qwen2", "num_hidden_layers": 4, "num_key_value_heads": 2,
           "head_dim": 64, "sliding_window": 128, "use_sliding_window": False,
           "max_window_layers": 2}
    assert specs.model_spec(write_config(tmp_path, cfg)).layer_types == ("full_attention",) * 4
    cfg["use_sliding_window"] = True
    assert specs.model_spec(write_config(tmp_path, cfg)).layer_types == (
        "full_attention", "full_attention", "sliding_attention", "sliding_attention")


def test_every_layer_sliding_is_unbounded(tmp_path):
    # Mistral v0.1: a 4096-token window on all 32 layers; the cache stops growing
    cfg = dict(specs.builtin_config("Mistral-7B"), sliding_window=4096)
    report = savings_report(str(write_config(tmp_path, cfg)), 128_000, gpu="H100")
    assert report.kv_bytes == 131_072 * 4096
    fp16 = report.row("fp16")
    assert fp16.max_tokens is None and fp16.max_tokens_unbounded
    assert "unbounded" in report.format()


def test_text_config_is_used(tmp_path):
    inner = {"num_hidden_layers": 3, "num_key_value_heads": 2, "head_dim": 32}
    spec = specs.model_spec(write_config(tmp_path, {"model_type": "vlm", "text_config": inner}))
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (3, 2, 32)


def write_safetensors(path, shapes):
    header = {name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}
              for name, shape in shapes.items()}
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def test_folder_counts_safetensors_params(tmp_path):
    write_config(tmp_path, {"num_hidden_layers": 2, "num_attention_heads": 4,
                            "hidden_size": 256})
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                      {"a": [256, 256], "b": [256]})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"c": [10, 3, 2]})
    spec = specs.model_spec(tmp_path)
    assert spec.param_count == 256 * 256 + 256 + 60
    assert "2 safetensors" in spec.param_basis
    assert savings_report(str(tmp_path), 16, vram_bytes=10**9).weights_bytes == 2 * (
        256 * 256 + 256 + 60)


def test_folder_index_names_the_shards(tmp_path):
    write_config(tmp_path, {"num_hidden_layers": 2, "num_key_value_heads": 1, "head_dim": 64})
    write_safetensors(tmp_path / "model-00001-of-00001.safetensors", {"a": [100, 10]})
    write_safetensors(tmp_path / "consolidated.safetensors", {"a": [100, 10]})  # a copy
    assert specs.model_spec(tmp_path).param_count == 2000  # both files, no index
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    assert specs.model_spec(tmp_path).param_count == 1000
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(InvalidArgumentError, match="weight_map"):
        specs.model_spec(tmp_path)


def test_hostile_safetensors_header(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InvalidArgumentError, match="header length"):
        specs.safetensors_param_count(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidArgumentError, match="too short"):
        specs.safetensors_param_count(path)
    write_safetensors(path, {"a": [2, -1]})
    with pytest.raises(InvalidArgumentError, match="no valid shape"):
        specs.safetensors_param_count(path)


def test_folder_without_config(tmp_path):
    with pytest.raises(InvalidArgumentError, match="has no config.json"):
        specs.model_spec(tmp_path)


def test_moe_config_needs_explicit_weights(tmp_path):
    cfg = dict(specs.builtin_config("Mistral-7B"), num_local_experts=8)
    path = str(write_config(tmp_path, cfg))
    assert specs.model_spec(path).param_count is None
    with pytest.raises(InvalidArgumentError, match="weights_bytes"):
        savings_report(path, 1000, gpu="H100")
    report = savings_report(path, 1000, gpu="H100", weights_bytes=50 * 10**9)
    assert report.free_bytes == 80 * GIB - 50 * 10**9


# --------------------------------------------------------------------------------------------
# savings_report


def test_report_nominal_ratios():
    report = savings_report("Mistral-7B", 128_000)
    assert [r.name for r in report.rows] == ["fp16", "lossless", "high", "balanced", "max"]
    assert report.row("lossless").ratio == pytest.approx(512 / 132)
    assert report.row("lossless").kv_bytes == 32 * 8 * 132 * 128_000
    for name, target in (("high", 10), ("balanced", 17), ("max", 33)):
        assert report.row(name).ratio == pytest.approx(target, rel=1e-9)
    assert report.capacity_bytes is None and report.row("fp16").max_tokens is None


def test_report_capacity_figures():
    report = savings_report("Mistral-7B", 128_000, gpu="H100")
    free = 80 * GIB - 2 * 7_248_023_552
    assert report.weights_bytes == 14_496_047_104
    assert report.free_bytes == free
    fp16 = report.row("fp16")
    assert fp16.max_tokens == free // 131_072 == 544_763
    assert fp16.max_sessions == free // 16_777_216_000 == 4
    for row in report.rows:
        assert report.kv_bytes_at(row.name, row.max_tokens) <= free
        assert report.kv_bytes_at(row.name, row.max_tokens + 1) > free
        assert row.max_sessions == free // (row.kv_bytes // report.batch)


def test_report_batch():
    one = savings_report("Llama-3-8B", 8192, vram_bytes=24 * 10**9)
    two = savings_report("Llama-3-8B", 8192, vram_bytes=24 * 10**9, batch=2)
    assert two.kv_bytes == 2 * one.kv_bytes
    assert two.kv_bytes_per_token == one.kv_bytes_per_token
    assert two.row("fp16").max_tokens == one.row("fp16").max_tokens // 2
    assert two.row("fp16").max_sessions == one.row("fp16").max_sessions


def test_weights_that_do_not_fit():
    report = savings_report("Llama-3.1-405B", 1000, gpu="B200")
    assert report.free_bytes == 0
    assert all(r.max_tokens == 0 and r.max_sessions == 0 for r in report.rows)
    assert any("do not fit" in n for n in report.notes)


def test_report_argument_errors():
    with pytest.raises(InvalidArgumentError, match="not both"):
        savings_report("Mistral-7B", 10, gpu="H100", vram_bytes=10**9)
    with pytest.raises(InvalidArgumentError, match="seq_len"):
        savings_report("Mistral-7B", 0)
    with pytest.raises(InvalidArgumentError, match="quality must be one of"):
        savings_report("Mistral-7B", 10, presets=["extreme"])
    with pytest.raises(InvalidArgumentError, match="name must be one of"):
        savings_report("Mistral-7B", 10).row("extreme")


def test_to_dict_is_json_ready():
    report = savings_report("Gemma-2-2B", 128_000, gpu="L4", presets=["lossless", "max"])
    d = json.loads(json.dumps(report.to_dict()))
    assert d["kv_bytes_per_token"] == report.kv_bytes / 128_000
    assert d["kv_bytes"] == 7_033_847_808
    assert list(d["caches"]) == ["fp16", "lossless", "max"]
    assert list(savings_report("Gemma-2-2B", 10, presets="max").to_dict()["caches"]) == [
        "fp16", "max"]
    assert d["caches"]["max"]["target_ratio"] == 33.0
    for entry in d["caches"].values():
        assert {"kv_bytes_per_token", "kv_bytes", "ratio", "max_tokens", "max_sessions",
                "key_bits", "value_bits", "basis"} <= set(entry)
    assert d["gpu"]["marketed_unit"] == "GiB"
    assert d["model"]["sliding_layers"] == 13
    assert d["capacity_bytes"] == 24 * GIB


# --------------------------------------------------------------------------------------------
# measured mode


def fake_vector_bytes(head_dim, bits):
    return head_dim * bits / 8 + 2


def test_measured_overheads_without_eviction_layer(monkeypatch):
    monkeypatch.setattr(memory, "measure_vector_bytes", fake_vector_bytes)
    monkeypatch.setitem(sys.modules, "nexusquant.eviction", None)
    report = savings_report("Mistral-7B", 128_000, measured=True)
    # lossless: 132 tokens (4 sinks + 128 window) in fp16, the rest at 132 bytes per head
    per_head = 132 * 512 + (128_000 - 132) * 132
    assert report.row("lossless").kv_bytes == 32 * 8 * per_head
    for name, target in (("high", 10), ("balanced", 17), ("max", 33)):
        row = report.row(name)
        assert target <= row.ratio < target * 1.001, (name, row.ratio)
        assert "computed here" in row.basis
    assert any("nexusquant.eviction is not installed" in n for n in report.notes)


def test_measured_target_out_of_reach(monkeypatch):
    monkeypatch.setattr(memory, "measure_vector_bytes", fake_vector_bytes)
    monkeypatch.setitem(sys.modules, "nexusquant.eviction", None)
    # 1,000 tokens: 132 fp16 tokens alone are 1000/132 = 7.6x, short of 10x
    report = savings_report("Mistral-7B", 1000, measured=True)
    assert report.row("max").ratio == pytest.approx(1000 / 132)
    assert any(n.startswith("max: the 33x target is out of reach") for n in report.notes)


def test_measured_uses_eviction_solve_budget(monkeypatch):
    calls = []

    def solve_budget(**kwargs):
        calls.append(kwargs)
        return 1132

    monkeypatch.setattr(memory, "measure_vector_bytes", fake_vector_bytes)
    monkeypatch.setitem(sys.modules, "nexusquant.eviction",
                        types.SimpleNamespace(solve_budget=solve_budget))
    report = savings_report("SmolLM2-135M", 10_000, measured=True, presets=["max"])
    assert calls[0] == {"seq_len": 10_000, "head_dim": 64, "key_bits": 2, "value_bits": 2,
                        "target_ratio": 33.0, "sink_tokens": 4, "window_tokens": 128}
    per_head = 132 * 2 * 64 * 2 + 1000 * (16 + 2) * 2
    assert report.row("max").kv_bytes == 30 * 3 * per_head
    assert "solve_budget" in report.row("max").basis


def test_measured_rejects_a_bad_budget(monkeypatch):
    monkeypatch.setattr(memory, "measure_vector_bytes", fake_vector_bytes)
    monkeypatch.setitem(sys.modules, "nexusquant.eviction",
                        types.SimpleNamespace(solve_budget=lambda **_: 10**9))
    with pytest.raises(RuntimeError, match="solve_budget returned"):
        savings_report("SmolLM2-135M", 10_000, measured=True, presets=["max"])


def test_measured_codec_bytes():
    pytest.importorskip("nexusquant._core", reason="nexusquant._core (Rust extension) not built")
    for head_dim, bits in ((64, 2), (128, 3), (128, 4), (256, 2), (80, 3)):
        assert memory.measure_vector_bytes(head_dim, bits) == head_dim * bits / 8 + 2
    report = savings_report("Mistral-7B", 128_000, measured=True, gpu="H100")
    assert report.measured
    assert report.row("lossless").ratio == pytest.approx(
        128_000 * 512 / (132 * 512 + (128_000 - 132) * 132))
    assert report.row("balanced").ratio >= 17.0
    assert "measured" in report.format()


# --------------------------------------------------------------------------------------------
# plot


def test_plot_report_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    report = savings_report("Mistral-7B", 32_000, gpu="A100-40GB")
    out = tmp_path / "memory.png"
    memory.plot_report(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
