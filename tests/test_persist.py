"""Saving and loading a NexusQuantCache (``nexusquant.cache.persist``) and ``nexusquant inspect``.

A loaded cache must continue generation exactly as the saved one does: same settings, same bytes,
same bookkeeping. Models are tiny random Llamas / Gemma-2s built in code (tests/conftest.py);
caches use a short window and block so that the prompts are mostly coded. The codec runs on the
default backend (the Rust core; conftest falls back to the torch oracle only when the extension is
missing, and this module needs the extension for the format anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import left_pad, make_tiny_gemma2, make_tiny_llama, make_tiny_llama_config, random_prompt

import nexusquant
from nexusquant import NexusQuantCache, errors
from nexusquant._hf import cache_kwarg
from nexusquant.cache import NexusQuantLayer
from nexusquant.cache.offload import OffloadedLayer
from nexusquant.cache.persist import (
    CACHE_FORMAT,
    cache_from_bytes,
    cache_to_bytes,
    load_cache,
    save_cache,
)
from nexusquant.store import format_inspect, inspect_cli, inspect_nqkv, read_nqkv, write_nqkv

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: Small window and block: most of a 40-token prompt is coded.
SETTINGS = dict(key_bits=3, value_bits=2, sink_tokens=2, window=8, block=8)
TESTS = Path(__file__).resolve().parent
#: Where the ``nexusquant`` this process imported lives, for the child processes.
PACKAGE_ROOT = str(Path(nexusquant.__file__).resolve().parents[1])


def generate(model, ids, cache, mask=None, new=8):
    """Greedy generation of ``new`` tokens continuing ``ids`` ``(B, n)`` through ``cache``."""
    return model.generate(
        ids, attention_mask=torch.ones_like(ids) if mask is None else mask, max_new_tokens=new,
        do_sample=False, **{cache_kwarg(model): cache},
    )


def layer_state(layer) -> dict:
    """Everything that decides a layer's future behaviour, as comparable Python/tensor values
    (stored slots only: capacity differs after a load)."""
    if isinstance(layer, NexusQuantLayer):
        rows = layer.lengths.tolist()
        state = {"kind": type(layer).__name__, "seq": layer.get_seq_length(), "lengths": rows,
                 "cumulative": layer.cumulative_length, "dtype": layer.dtype,
                 "settings": (layer.key_bits, layer.value_bits, layer.sink_tokens, layer.window,
                              layer.block, layer.seed, layer.quantize)}
        for r, (s, c, w) in enumerate(rows):
            state[f"row{r}"] = [
                layer.sink_keys[r, :, :s], layer.sink_values[r, :, :s],
                layer.key_codes[r, :, :c], layer.key_scales[r, :, :c],
                layer.value_codes[r, :, :c], layer.value_scales[r, :, :c],
                layer.window_keys[r, :, :w], layer.window_values[r, :, :w],
            ]
        return state
    return {"kind": type(layer).__name__, "seq": layer.get_seq_length(), "window": layer.sliding_window,
            "keys": layer.keys, "values": layer.values}


def assert_same_state(a: NexusQuantCache, b: NexusQuantCache) -> None:
    assert len(a.layers) == len(b.layers)
    for idx, (la, lb) in enumerate(zip(a.layers, b.layers)):
        sa, sb = layer_state(la), layer_state(lb)
        assert sa.keys() == sb.keys(), idx
        for key in sa:
            va, vb = sa[key], sb[key]
            if isinstance(va, list) and va and torch.is_tensor(va[0]):
                assert all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(va, vb)), (idx, key)
            elif torch.is_tensor(va):
                assert torch.equal(va.cpu(), vb.cpu()), (idx, key)
            else:
                assert va == vb, (idx, key)
    pads_a, pads_b = a._pads, b._pads
    assert (pads_a is None) == (pads_b is None)
    if pads_a is not None:
        assert torch.equal(pads_a, pads_b)


# --------------------------------------------------------------------------------------------
# save -> load -> continue


@pytest.mark.parametrize(
    ("dtype", "settings"),
    [
        (torch.float32, SETTINGS),
        (torch.bfloat16, SETTINGS),
        (torch.float16, dict(SETTINGS, key_bits=4, value_bits=3, sink_tokens=0)),
        (torch.float32, dict(quantize=False)),
    ],
    ids=["fp32-K3V2", "bf16-K3V2", "fp16-K4V3-nosinks", "pass-through"],
)
def test_loaded_cache_continues_exactly(tmp_path, dtype, settings):
    model = make_tiny_llama(dtype=dtype)
    prompt = random_prompt(40, seed=1)
    cache = NexusQuantCache(model.config, **settings)
    first = generate(model, prompt, cache)
    path = tmp_path / "cache.nqkv"
    size = save_cache(cache, path, metadata={"note": "turn 1"}, config=model.config)
    assert size == path.stat().st_size

    with_config = load_cache(path, model.config)
    without_config = load_cache(path)
    assert_same_state(cache, with_config)
    assert_same_state(cache, without_config)

    expected = generate(model, first, cache, new=10)
    assert torch.equal(generate(model, first, with_config, new=10), expected)
    assert torch.equal(generate(model, first, without_config, new=10), expected)


def test_cache_save_and_load_methods(tmp_path):
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, **SETTINGS)
    first = generate(model, random_prompt(40, seed=15), cache)
    assert cache.save(tmp_path / "m.nqkv", metadata={"k": 1}) == (tmp_path / "m.nqkv").stat().st_size
    loaded = NexusQuantCache.load(tmp_path / "m.nqkv", model.config)
    offloaded = NexusQuantCache.load(tmp_path / "m.nqkv", offload="host")
    assert_same_state(cache, loaded)
    assert all(isinstance(l, OffloadedLayer) for l in offloaded.layers)
    expected = generate(model, first, cache, new=10)
    assert torch.equal(generate(model, first, loaded, new=10), expected)
    assert torch.equal(generate(model, first, offloaded, new=10), expected)


def test_loaded_padded_batch_continues_exactly(tmp_path):
    model = make_tiny_llama()
    ids, mask = left_pad([random_prompt(40, seed=2), random_prompt(23, seed=3), random_prompt(31, seed=4)])
    cache = NexusQuantCache(model.config, **SETTINGS)
    with cache.attach(model):
        first = generate(model, ids, cache, mask)
    save_cache(cache, tmp_path / "batch.nqkv")
    loaded = load_cache(tmp_path / "batch.nqkv", model.config)
    assert_same_state(cache, loaded)
    # Rows of different lengths: a shorter row's unused slots are saved as zeros.
    rows = [sum(r) for r in loaded.layers[0].lengths.tolist()]
    assert len(set(rows)) == 3

    mask = torch.cat([mask, torch.ones(3, first.shape[1] - ids.shape[1], dtype=mask.dtype)], dim=1)
    with cache.attach(model):
        expected = generate(model, first, cache, mask, new=10)
    with loaded.attach(model):
        got = generate(model, first, loaded, mask, new=10)
    assert torch.equal(got, expected)


def test_sliding_window_layers_are_saved_raw(tmp_path):
    """Gemma-2 alternates sliding-window layers (kept by transformers' own layer class, stored
    raw) and full-attention layers (compressed)."""
    model = make_tiny_gemma2(sliding_window=16)
    cache = NexusQuantCache(model.config, **SETTINGS)
    first = generate(model, random_prompt(40, seed=5), cache)
    save_cache(cache, tmp_path / "g.nqkv", config=model.config)
    info = inspect_nqkv(tmp_path / "g.nqkv")
    assert [d["layer_type"] for d in info["layers"]] == ["sliding", "full"] * 2
    assert info["layers"][0]["n_window"] == 15 and info["layers"][0]["sliding_window"] == 16
    loaded = load_cache(tmp_path / "g.nqkv", model.config)
    assert_same_state(cache, loaded)
    assert torch.equal(generate(model, first, loaded, new=10), generate(model, first, cache, new=10))


def test_load_after_a_process_restart(tmp_path):
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, **SETTINGS)
    first = generate(model, random_prompt(40, seed=6), cache)
    path = tmp_path / "restart.nqkv"
    save_cache(cache, path)
    np.save(tmp_path / "first.npy", first.numpy())
    expected = generate(model, first, cache, new=10)

    code = f"""
        import numpy as np, torch
        torch.set_num_threads(1)
        from conftest import make_tiny_llama
        from nexusquant._hf import cache_kwarg
        from nexusquant.cache.persist import load_cache
        model = make_tiny_llama()
        cache = load_cache({os.fspath(path)!r}, model.config)
        first = torch.from_numpy(np.load({os.fspath(tmp_path / 'first.npy')!r}))
        out = model.generate(first, attention_mask=torch.ones_like(first), max_new_tokens=10,
                             do_sample=False, **{{cache_kwarg(model): cache}})
        print(" ".join(map(str, out[0].tolist())))
    """
    pythonpath = os.pathsep.join([PACKAGE_ROOT, str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-expected.shape[1]:] == [str(t) for t in expected[0].tolist()]


def test_bytes_round_trip_and_offloaded_load(tmp_path):
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, **SETTINGS)
    first = generate(model, random_prompt(40, seed=7), cache)
    blob = cache_to_bytes(cache)
    save_cache(cache, tmp_path / "c.nqkv")
    assert blob == (tmp_path / "c.nqkv").read_bytes()
    from_bytes = cache_from_bytes(blob, model.config)
    offloaded = load_cache(tmp_path / "c.nqkv", model.config, offload="host")
    assert all(isinstance(l, OffloadedLayer) for l in offloaded.layers)
    assert offloaded.layers[0].next_layer is offloaded.layers[1]
    assert_same_state(cache, from_bytes)
    expected = generate(model, first, cache, new=10)
    assert torch.equal(generate(model, first, from_bytes, new=10), expected)
    assert torch.equal(generate(model, first, offloaded, new=10), expected)


def test_evicted_cache_continues_exactly_inside_the_block(tmp_path):
    from nexusquant.eviction import EvictableLayer, nexusquant_evict

    model = make_tiny_llama()
    with nexusquant_evict(model, quality="balanced", token_budget=40, window=8, block=8,
                          observation_window=8, decode_budget=True) as nq:
        first = model.generate(random_prompt(80, seed=8), max_new_tokens=12, do_sample=False)
        cache = nq.cache
        assert cache.layers[0].offset > 0 and cache.layers[0].decode_scores is not None
        save_cache(cache, tmp_path / "evicted.nqkv")
        loaded = load_cache(tmp_path / "evicted.nqkv", model.config)
        assert all(type(l) is EvictableLayer for l in loaded.layers)
        for a, b in zip(cache.layers, loaded.layers):
            assert a.offset == b.offset and torch.equal(a.decode_scores, b.decode_scores)
        assert_same_state(cache, loaded)
        expected = generate(model, first, cache, new=20)
        got = generate(model, first, loaded, new=20)
    assert [e.kind for e in nq.events].count("decode") >= 4  # both continuations evicted again
    assert torch.equal(got, expected)


def test_saved_bytes_match_the_memory_report(tmp_path):
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, **SETTINGS)
    generate(model, random_prompt(200, seed=9), cache, new=4)
    save_cache(cache, tmp_path / "m.nqkv")
    by = inspect_nqkv(tmp_path / "m.nqkv")["bytes_by_component"]
    used = cache.memory_report().used
    assert by["k_codes"] + by["v_codes"] == used["codes"]
    assert by["k_scales"] + by["v_scales"] == used["scales"]
    assert by["k_sink"] + by["v_sink"] == used["sinks"]
    assert by["k_window"] + by["v_window"] == used["window"]


def test_metadata_records_settings_model_and_user_data(tmp_path):
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, seed=12345, **SETTINGS)
    generate(model, random_prompt(20, seed=10), cache, new=2)
    save_cache(cache, tmp_path / "meta.nqkv", metadata={"session": "abc", "turn": 3}, config=model.config)
    meta, records = read_nqkv(tmp_path / "meta.nqkv")
    assert meta["format"] == CACHE_FORMAT and meta["version"] == 1
    assert meta["cache"] == {"key_bits": 3, "value_bits": 2, "sink_tokens": 2, "window": 8, "block": 8,
                             "seed": 12345, "quantize": True}
    assert meta["user"] == {"session": "abc", "turn": 3}
    assert meta["model"]["model_type"] == "llama"
    assert meta["model"]["config"]["num_key_value_heads"] == 2
    assert meta["dtype"] == "float32" and meta["seq_length"] == 21
    assert [r.key_seed for r in records] == [12345, 12345]


def test_per_layer_bits_are_restored(tmp_path):
    model = make_tiny_llama(layers=3)
    cache = NexusQuantCache(model.config, layer_bits={1: (4, 4)}, boundary_layers=1, boundary_bits=(2, 3),
                            **SETTINGS)
    first = generate(model, random_prompt(40, seed=11), cache)
    save_cache(cache, tmp_path / "bits.nqkv")
    loaded = load_cache(tmp_path / "bits.nqkv")
    assert [(l.key_bits, l.value_bits) for l in loaded.layers] == [(2, 3), (4, 4), (2, 3)]
    assert torch.equal(generate(model, first, loaded), generate(model, first, cache))


# --------------------------------------------------------------------------------------------
# what cannot be saved or loaded


def test_save_rejects_what_it_cannot_store(tmp_path):
    model = make_tiny_llama()
    empty = NexusQuantCache(model.config, **SETTINGS)
    with pytest.raises(errors.InvalidArgumentError, match="layer 0 holds no tokens yet"):
        save_cache(empty, tmp_path / "x.nqkv")
    generate(model, random_prompt(10, seed=12), empty, new=1)
    with pytest.raises(errors.InvalidArgumentError, match="metadata must be a dict"):
        save_cache(empty, tmp_path / "x.nqkv", metadata=["not", "a", "dict"])
    with pytest.raises(errors.InvalidArgumentError, match="JSON-serializable"):
        save_cache(empty, tmp_path / "x.nqkv", metadata={"t": torch.zeros(1)})
    with pytest.raises(errors.InvalidArgumentError, match="cache must be a NexusQuantCache"):
        save_cache(object(), tmp_path / "x.nqkv")
    assert not (tmp_path / "x.nqkv").exists()


def test_load_with_a_config_that_does_not_match(tmp_path):
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, **SETTINGS)
    generate(model, random_prompt(20, seed=13), cache, new=2)
    save_cache(cache, tmp_path / "c.nqkv")
    with pytest.raises(errors.InvalidArgumentError, match="config describes 3 cache layers"):
        load_cache(tmp_path / "c.nqkv", make_tiny_llama_config(layers=3))
    with pytest.raises(errors.InvalidArgumentError, match="config has 1 KV heads"):
        load_cache(tmp_path / "c.nqkv", make_tiny_llama_config(num_kv_heads=1))
    with pytest.raises(errors.InvalidArgumentError, match="DynamicSlidingWindowLayer for the config but a full"):
        load_cache(tmp_path / "c.nqkv", make_tiny_llama_config(sliding_window=16))
    with pytest.raises(errors.InvalidArgumentError, match="offload must be one of"):
        load_cache(tmp_path / "c.nqkv", offload="disk")


@pytest.fixture
def saved(tmp_path):
    """A saved quantized cache: ``(path, file bytes)``."""
    model = make_tiny_llama()
    cache = NexusQuantCache(model.config, **SETTINGS)
    generate(model, random_prompt(300, seed=14), cache, new=2)
    path = tmp_path / "victim.nqkv"
    save_cache(cache, path)
    return path, path.read_bytes()


def test_corrupt_file_raises_format_errors(saved):
    path, data = saved
    info = inspect_nqkv(path)
    chunk = next(c for c in info["chunks"] if c["component"] == "k_codes" and c["index"] == 1)

    flipped = bytearray(data)
    flipped[chunk["offset"] + 7] ^= 0x10  # one bit in layer 0's second key-code chunk
    path.write_bytes(bytes(flipped))
    with pytest.raises(errors.ChecksumError, match="layer 0 k_codes chunk 1"):
        load_cache(path)

    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(errors.TruncatedError):
        load_cache(path)


@pytest.mark.parametrize("seed", range(3))
def test_any_single_bit_flip_or_truncation_is_a_format_error(saved, seed):
    path, data = saved
    rng = np.random.default_rng(seed)
    for position in rng.integers(0, len(data), 40):
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(errors.FormatError):
            cache_from_bytes(bytes(damaged))
    for length in rng.integers(0, len(data), 20):
        with pytest.raises(errors.FormatError):
            cache_from_bytes(data[:length])


def _resave(path: Path, edit) -> None:
    """Rewrite a saved cache with ``edit(meta, records)`` applied (valid checksums)."""
    meta, records = read_nqkv(path, mmap=False)
    records = [
        type(r)(**{**vars(r), "aux": {k: np.array(v) for k, v in r.aux.items()}}) for r in records
    ]
    edit(meta, records)
    write_nqkv(path, meta, records)


def _set(meta_path: tuple[str, ...], value):
    def edit(meta, records):
        target = meta
        for key in meta_path[:-1]:
            target = target[key]
        target[meta_path[-1]] = value
    return edit


def _aux(name: str, value):
    def edit(meta, records):
        records[0].aux[name] = value
    return edit


def _drop_aux(name: str):
    def edit(meta, records):
        del records[0].aux[name]
    return edit


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (_set(("format",), "something-else"), errors.FormatError, "not a saved NexusQuantCache"),
        (_set(("version",), 2), errors.UnsupportedVersionError, "layout version 2"),
        (_set(("cache", "key_bits"), 9), errors.FormatError, r"cache.key_bits must be an integer \[1, 8\]"),
        (_set(("cache", "block"), 0), errors.FormatError, "cache.block"),
        (_set(("cache", "quantize"), "yes"), errors.FormatError, "cache.quantize"),
        (_set(("cache", "seed"), 7), errors.FormatError, "key_seed is 0 but the cache settings say 7"),
        (_set(("cache", "window"), 9), errors.FormatError, "window_tokens is 8"),
        (_set(("layers",), []), errors.FormatError, "must list the file's 2 layers"),
        (_set(("layers", 0, "class"), "Mystery"), errors.FormatError, r"layers\[0\]"),
        (_set(("pads",), [0, 0]), errors.FormatError, "one entry per row"),
        (_set(("pads",), [-1]), errors.FormatError, r"pads\[0\]"),
        (_aux("lengths", np.array([[2, 300, 9]], dtype=np.int32)), errors.FormatError, "row 0 lengths"),
        (_aux("lengths", np.array([[2, 1, 1]], dtype=np.int64)), errors.FormatError, "'lengths' must be int32"),
        (_aux("seq_length", np.array(5, dtype=np.int64)), errors.FormatError, "at most seq_length 5"),
        (_drop_aux("seq_length"), errors.FormatError, "'seq_length' must be int64 \\(\\), got missing"),
    ],
)
def test_consistent_but_wrong_content_is_a_format_error(saved, edit, error, message):
    path, _ = saved
    _resave(path, edit)
    with pytest.raises(error, match=message):
        load_cache(path)


# --------------------------------------------------------------------------------------------
# nexusquant inspect


def test_inspect_cli_text_json_and_verify(saved, capsys):
    path, data = saved
    args = SimpleNamespace(path=os.fspath(path), verify=False, json=False)
    assert inspect_cli(args) == 0
    out = capsys.readouterr().out
    assert ".nqkv 1.0" in out and "2 layers" in out and "not verified" in out
    assert "k_codes" in out and CACHE_FORMAT in out

    assert inspect_cli(SimpleNamespace(path=os.fspath(path), verify=True, json=True)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["header"]["magic"] == "4e514b560d0a1a0a"
    assert doc["metadata"]["format"] == CACHE_FORMAT

    info = inspect_nqkv(path)
    chunk = next(c for c in info["chunks"] if c["component"] == "v_codes")
    damaged = bytearray(data)
    damaged[chunk["offset"]] ^= 0x01
    path.write_bytes(bytes(damaged))
    assert inspect_cli(SimpleNamespace(path=os.fspath(path), verify=True, json=False)) == 1
    out = capsys.readouterr().out
    assert "1 of" in out and "DAMAGED" in out and "layer 0 v_codes chunk 0" in out
    # Without --verify the damage is not looked for.
    assert inspect_cli(SimpleNamespace(path=os.fspath(path), verify=False, json=False)) == 0
    capsys.readouterr()

    assert inspect_cli(SimpleNamespace(path=os.fspath(path.with_name("missing.nqkv")), verify=False,
                                       json=False)) == 2
    assert "cannot read" in capsys.readouterr().err


def test_inspect_command_end_to_end(saved, capsys):
    from nexusquant import cli

    path, _ = saved
    assert cli.main(["inspect", os.fspath(path), "--verify"]) == 0
    assert "all OK" in capsys.readouterr().out
    path.write_bytes(b"not a cache at all")
    assert cli.main(["inspect", os.fspath(path)]) == 2
    assert "nexusquant inspect: error:" in capsys.readouterr().err


def test_format_inspect_cuts_long_metadata(saved):
    path, _ = saved
    text = format_inspect(inspect_nqkv(path), metadata_chars=20)
    assert "characters; --json prints all" in text
